#!/usr/bin/env python3
"""A tokenizer for the tiny random-weight LLaVA-Next of tests/fixtures/llava_next (vocabulary 320),
so that `lowbit vlm-eval` can run end to end on it: LLaMA-3's tokenizer.json layout (its
pre-tokenizer, byte-level decoder and special tokens) with the 256 byte tokens as ids 0-255, no
merges, and special tokens at 256-319 (<|begin_of_text|> 256, <|end_of_text|> 257,
<|start_header_id|> 258, <|end_header_id|> 259, <|eot_id|> 260, <image> 300 (the config's
image_token_index), reserved tokens elsewhere).

  python3 scripts/make_vlm_eval_fixture.py [--llama3 ../shared/models/tokenizers/llama3]
      [--out tests/fixtures/vlm]

The result is loaded back with the tokenizers library and a chat prompt round-trips through it.
Beside it, prompts.json: benchmark questions (as the tasks' doc_to_text give them) rendered by
transformers' apply_chat_template with Meta-Llama-3's chat template (the llama3 tokenizer_config)
the two ways lmms-eval's LLaVA-Next models build them: `llava` (LLaVA-NeXT's conv_llava_llama_3:
its system turn, then "<image>\n" + question) and `llava_hf` (the user turn alone).
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


# conv_llava_llama_3's system message (LLaVA-NeXT, llava/conversation.py).
SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content that the "
          "user provides, and assist the user with a variety of tasks using natural language.")
# doc_to_text outputs of the five tasks (ai2d, chartqa, docvqa, mmbench_en with its blank line, mme).
QUESTIONS = [
    "Which label shows the sun?\nA. A\nB. B\nC. C\nD. D\nAnswer with the option's letter from the given choices "
    "directly.",
    "What is the highest value?\nAnswer the question with a single word.",
    "What is the date?\nAnswer the question using a single word or phrase.",
    "The car is parked. Which color is the car? There are several options:\nA. red\nB. blue\n\nAnswer with the "
    "option's letter from the given choices directly.",
    "Are there two cats?\nAnswer the question using a single word or phrase.",
    "  Question with spaces around it \u00e9  \n",
]


def write_prompts(llama3_dir, path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama3_dir)
    cases = []
    for q in QUESTIONS:
        user = "<image>\n" + q
        llava = tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
                                        tokenize=False, add_generation_prompt=True)
        llava_hf = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                           add_generation_prompt=True)
        cases.append({"question": q, "llava": llava, "llava_hf": llava_hf})
    with open(path, "w") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama3", default=os.path.join(HERE, "..", "..", "shared", "models", "tokenizers", "llama3"))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "fixtures", "vlm"))
    a = ap.parse_args()
    write_prompts(a.llama3, os.path.join(a.out, "prompts.json"))
    t = json.load(open(os.path.join(a.llama3, "tokenizer.json")))
    a.out = os.path.join(a.out, "tokenizer.json")
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
