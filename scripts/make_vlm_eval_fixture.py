#!/usr/bin/env python3
"""A tokenizer for the tiny random-weight LLaVA-Next of tests/fixtures/llava_next (vocabulary 320),
so that `lowbit vlm-eval` can run end to end on it: LLaMA-3's tokenizer.json layout (its
pre-tokenizer, byte-level decoder and special tokens) with the 256 byte tokens as ids 0-255, no
merges, and special tokens at 256-319 (<|begin_of_text|> 256, <|end_of_text|> 257,
<|start_header_id|> 258, <|end_header_id|> 259, <|eot_id|> 260, <image> 300 (the config's
image_token_index), reserved tokens elsewhere).

  python3 scripts/make_vlm_eval_fixture.py [--llama3 ../shared/models/tokenizers/llama3/tokenizer.json]
      [--out tests/fixtures/vlm/tokenizer.json]

The result is loaded back with the tokenizers library and a chat prompt round-trips through it.
"""
import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama3", default=os.path.join(HERE, "..", "..", "shared", "models", "tokenizers", "llama3",
                                                     "tokenizer.json"))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "fixtures", "vlm", "tokenizer.json"))
    a = ap.parse_args()
    t = json.load(open(a.llama3))
    b2u = bytes_to_unicode()
    t["model"]["vocab"] = {b2u[b]: b for b in range(256)}
    t["model"]["merges"] = []
    names = {256: "<|begin_of_text|>", 257: "<|end_of_text|>", 258: "<|start_header_id|>", 259: "<|end_header_id|>",
             260: "<|eot_id|>", 300: "<image>"}
    added = []
    for i in range(256, 320):
        added.append({"id": i, "content": names.get(i, f"<|reserved_special_token_{i - 256}|>"), "single_word": False,
                      "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    t["added_tokens"] = added
    with open(a.out, "w") as f:
        json.dump(t, f, ensure_ascii=False, indent=1)
        f.write("\n")

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(a.out)
    text = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is it?<|eot_id|>"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert ids[:2] == [256, 258] and ids[-1] == 260, ids
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.decode([72, 105, 256, 0xC3, 0xA9], skip_special_tokens=True) == "Hi\u00e9"
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
