#!/usr/bin/env python3
"""Single-threaded LLaMA-3 encode throughput of the reference tokenizers on WikiText2.

The anchor for bench/bench_tokenizer: HF tokenizers (Rust, through its Python binding),
transformers' tokenizer on top of it, and tiktoken, on the WikiText2 test text joined as
PROTOCOL.md says. Run on the same CPU as bench_tokenizer:

    RAYON_NUM_THREADS=1 python3 scripts/bench_reference_tokenizers.py --data-dir DATA --models-dir MODELS
"""
import argparse
import json
import os
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with open(os.path.join(args.data_dir, "wikitext2", "wiki.test.raw"), encoding="utf-8", newline="") as f:
        text = "\n\n".join(line if line.strip() else "" for line in f)
    mb = len(text.encode("utf-8")) / 1e6
    tok_dir = os.path.join(args.models_dir, "tokenizers", "llama3")

    import tokenizers
    import transformers
    results = {"text_MB": mb}
    raw = tokenizers.Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    t, ids = best_of(lambda: raw.encode(text, add_special_tokens=False).ids, args.repeats)
    results["hf-tokenizers " + tokenizers.__version__] = {"s": t, "MB/s": mb / t, "tokens": len(ids)}
    auto = transformers.AutoTokenizer.from_pretrained(tok_dir)
    t, ids2 = best_of(lambda: auto.encode(text, add_special_tokens=False), args.repeats)
    results["transformers " + transformers.__version__] = {"s": t, "MB/s": mb / t, "same_ids": ids2 == ids}
    try:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
        pat = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
        enc = tiktoken.Encoding("llama3", pat_str=pat,
                                mergeable_ranks=load_tiktoken_bpe(os.path.join(tok_dir, "tokenizer.model")),
                                special_tokens={})
        t, ids3 = best_of(lambda: enc.encode_ordinary(text), args.repeats)
        results["tiktoken " + tiktoken.__version__] = {"s": t, "MB/s": mb / t, "same_ids": ids3 == ids}
    except ImportError as e:
        results["tiktoken"] = {"error": repr(e)}
    with open("/proc/cpuinfo") as f:
        results["cpu"] = next(l for l in f if l.startswith("model name")).split(":", 1)[1].strip()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
