#!/usr/bin/env python3
"""Perplexity of a GGUF model loaded by transformers (AutoModelForCausalLM with gguf_file: the
weights dequantized by the gguf package), under GPTQ's conventions as lowbit computes them: the
set's text tokenized once with the tokenizer transformers builds from the same GGUF,
floor(n / seqlen) windows, the mean NLL of positions 0..T-2 per window, PPL = exp(mean over
windows). The texts are assembled as lowbit's datasets do (src/formats/text_datasets.cpp):
WikiText2 test rows (blank rows empty) and PTB validation rows (stripped), joined with "\\n\\n".

  python3 gguf_ppl.py FILE.gguf --data-dir DATA [--device cuda|cpu] [--dtype bfloat16|float32]
                      [--sets wikitext2,ptb] [--seqlen 2048] [--limit N] [--batch 8]

Prints one JSON object per set.
"""
import argparse
import json
import math
import os
import time

import torch
import transformers


def text_of(name, data_dir):
    if name == "wikitext2":
        with open(os.path.join(data_dir, "wikitext2", "wiki.test.raw"), encoding="utf-8", newline="") as f:
            return "\n\n".join(line if line.strip() else "" for line in f)
    if name == "ptb":
        with open(os.path.join(data_dir, "ptb", "ptb.valid.txt"), encoding="utf-8", newline="") as f:
            return "\n\n".join(line.strip() for line in f)
    raise SystemExit(f"unknown set {name}")


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--sets", default="wikitext2,ptb")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    d, name = os.path.split(os.path.abspath(a.gguf))
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
    dtype = getattr(torch, a.dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=dtype).to(a.device).eval()
    for s in a.sets.split(","):
        ids = tok.encode(text_of(s, a.data_dir))
        n = len(ids) // a.seqlen
        if a.limit:
            n = min(n, a.limit)
        x = torch.tensor(ids[: n * a.seqlen], device=a.device).view(n, a.seqlen)
        t0 = time.time()
        nll = []
        for i in range(0, n, a.batch):
            xb = x[i:i + a.batch]
            logits = model(xb).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1),
                                                     reduction="none").view(xb.shape[0], -1).mean(dim=1)
            nll += loss.double().tolist()
        secs = time.time() - t0
        mean = sum(nll) / len(nll)
        print(json.dumps({"tool": "transformers", "version": transformers.__version__, "set": s, "device": a.device,
                          "dtype": a.dtype, "windows": n, "tokens": n * a.seqlen, "ids": len(ids),
                          "seconds": secs, "ppl": math.exp(mean), "mean_nll": mean}), flush=True)


if __name__ == "__main__":
    main()
