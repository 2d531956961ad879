#!/usr/bin/env python3
"""Write the token-id fixtures that lowbit's tokenizers are tested against.

The references are Hugging Face `tokenizers` (for tokenizer.json), `transformers`
(AutoTokenizer / LlamaTokenizer, what lm-evaluation-harness and GPTQ use) and Google's
`sentencepiece`. Run it where those packages are installed:

    python3 scripts/make_tokenizer_fixtures.py --data-dir DATA --models-dir MODELS --out DIR

DATA holds wikitext2/wiki.test.raw, ptb/ptb.test.txt and mmlu/test/*.csv; MODELS holds
tokenizers/llama3/{tokenizer.json, bos-template/tokenizer.json} and tokenizers/llama2/tokenizer.model.

Output, per (tokenizer, text): `<tok>.<text>.ids` (int32 little-endian; for mmlu the ids of every
question concatenated, preceded by a second file `<tok>.mmlu.lens` of int32 lengths), and
`manifest.json` with the count and SHA-256 of each ids file (the llama3-bos ids equal the llama3
ones, same vocabulary, and are not committed), the short cases encoded with the
tokenizer's default special tokens, and the decode of each text. The texts are rebuilt from the
data exactly as lowbit's own loaders build them (see PROTOCOL.md):
  wikitext2: lines of wiki.test.raw with "\n" kept, whitespace-only lines as "", joined "\n\n"
  ptb:       lines of ptb.test.txt stripped, joined "\n\n" (GPTQ's get_ptb); ptb-new joined " "
  mmlu:      the question field of every row of mmlu/test/*.csv, files in sorted order
  stress:    tests/fixtures/tokenizer/stress.txt
References: llama3 / llama3-bos (AutoTokenizer on the tokenizer.json folders), llama2
(LlamaTokenizer.from_pretrained on a folder holding tokenizer.model), llama2-auto (AutoTokenizer
on a model folder with config.json and tokenizer.model, given by --model-config), and the
sentencepiece library.
"""
import argparse
import csv
import glob
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
import time


def wikitext2_text(data_dir):
    with open(os.path.join(data_dir, "wikitext2", "wiki.test.raw"), encoding="utf-8", newline="") as f:
        rows = [line if line.strip() else "" for line in f]
    return "\n\n".join(rows)


def ptb_sentences(data_dir, split):
    with open(os.path.join(data_dir, "ptb", f"ptb.{split}.txt"), encoding="utf-8", newline="") as f:
        return [line.strip() for line in f]


def mmlu_questions(data_dir):
    out = []
    for path in sorted(glob.glob(os.path.join(data_dir, "mmlu", "test", "*_test.csv"))):
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.reader(f):
                out.append(row[0])
    return out


def pack(ids):
    return struct.pack(f"<{len(ids)}i", *ids)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--stress", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                     "fixtures", "tokenizer", "stress.txt"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--model-config", help="config.json of a LLaMA-2-vocabulary model (testbed-44m's)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    with open(args.stress, encoding="utf-8", newline="") as f:
        stress = f.read()
    texts = {
        "wikitext2": wikitext2_text(args.data_dir),
        "ptb": "\n\n".join(ptb_sentences(args.data_dir, "test")),
        "ptb-new": " ".join(ptb_sentences(args.data_dir, "test")),
        "stress": stress,
    }
    questions = mmlu_questions(args.data_dir)

    import tokenizers
    import transformers
    import sentencepiece as spm

    tok_dir = os.path.join(args.models_dir, "tokenizers")
    refs = {}
    # LLaMA-3: tokenizer.json through the Rust library, as transformers loads it.
    refs["llama3"] = transformers.AutoTokenizer.from_pretrained(os.path.join(tok_dir, "llama3"))
    refs["llama3-bos"] = transformers.AutoTokenizer.from_pretrained(
        os.path.join(tok_dir, "llama3", "bos-template"))
    # LLaMA-2: transformers' LlamaTokenizer built from tokenizer.model (what the harness uses)
    # and the sentencepiece library itself.
    # (LlamaTokenizer(vocab_file=...) yields empty encodings in transformers 5; from_pretrained
    # on a folder holding tokenizer.model converts it the way AutoTokenizer does.)
    llama2_model = os.path.join(tok_dir, "llama2", "tokenizer.model")
    llama2_dir = tempfile.mkdtemp()
    shutil.copy(llama2_model, llama2_dir)
    refs["llama2"] = transformers.LlamaTokenizer.from_pretrained(llama2_dir)
    refs["llama2"].backend_tokenizer.save(os.path.join(args.out, "llama2.transformers-tokenizer.json"))
    sp = spm.SentencePieceProcessor(model_file=llama2_model)
    # AutoTokenizer on a model directory with config.json and tokenizer.model but no
    # tokenizer_config.json (testbed-44m's layout) builds transformers' generic SentencePiece
    # conversion instead of LlamaTokenizer's.
    if args.model_config:
        auto_dir = tempfile.mkdtemp()
        shutil.copy(llama2_model, auto_dir)
        shutil.copy(args.model_config, os.path.join(auto_dir, "config.json"))
        refs["llama2-auto"] = transformers.AutoTokenizer.from_pretrained(auto_dir)
        refs["llama2-auto"].backend_tokenizer.save(os.path.join(args.out, "llama2-auto.transformers-tokenizer.json"))

    manifest = {
        "versions": {"tokenizers": tokenizers.__version__, "transformers": transformers.__version__,
                     "sentencepiece": spm.__version__},
        "classes": {k: type(v).__name__ for k, v in refs.items()},
        "files": {}, "short_cases": {}, "agreement": {}, "decode_roundtrip": {},
    }

    def write_ids(name, ids):
        raw = pack(ids)
        with open(os.path.join(args.out, name), "wb") as f:
            f.write(raw)
        manifest["files"][name] = {"count": len(ids), "sha256": hashlib.sha256(raw).hexdigest()}

    for tname, tok in refs.items():
        for text_name, text in texts.items():
            ids = tok.encode(text, add_special_tokens=False)
            write_ids(f"{tname}.{text_name}.ids", ids)
            manifest["decode_roundtrip"][f"{tname}.{text_name}"] = (
                tok.decode(ids, clean_up_tokenization_spaces=False) == text)
        all_ids, lens = [], []
        for q in questions:
            ids = tok.encode(q, add_special_tokens=False)
            all_ids += ids
            lens.append(len(ids))
        write_ids(f"{tname}.mmlu.ids", all_ids)
        write_ids(f"{tname}.mmlu.lens", lens)

    # The sentencepiece library on the same texts, to record where transformers departs from it.
    for text_name, text in texts.items():
        ids = sp.encode(text)
        other = refs["llama2"].encode(text, add_special_tokens=False)
        manifest["agreement"][f"sentencepiece-vs-transformers.{text_name}"] = ids == other
        write_ids(f"sentencepiece.{text_name}.ids", ids)

    short = ["Hello world", "", " ", "The quick brown fox", "  two leading spaces",
             "<|begin_of_text|>Hi", "<s>Hi</s>", "\n\nline", "Once upon a time"]
    for tname in [t for t in refs if t.startswith("llama2")]:
        j = json.loads(refs[tname].backend_tokenizer.to_str())
        manifest.setdefault("pipelines", {})[tname] = {
            k: j.get(k) for k in ("normalizer", "pre_tokenizer", "decoder", "post_processor", "added_tokens")}
        manifest["pipelines"][tname]["model"] = {k: v for k, v in j["model"].items() if k not in ("vocab", "merges")}
        manifest["pipelines"][tname]["model"]["merges_sha256"] = hashlib.sha256(
            json.dumps(j["model"]["merges"]).encode()).hexdigest()
    for tname, tok in refs.items():
        manifest["short_cases"][tname] = [
            {"text": s, "default": tok.encode(s), "plain": tok.encode(s, add_special_tokens=False)}
            for s in short]

    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
    print(json.dumps({k: manifest[k] for k in ("versions", "classes", "agreement", "decode_roundtrip")},
                     indent=1))


if __name__ == "__main__":
    sys.exit(main())
