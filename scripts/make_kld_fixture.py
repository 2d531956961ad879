#!/usr/bin/env python3
"""KL-divergence reference for tests/model/test_kl_divergence.cpp.

lowbit quantizes stories260K with RTN and writes both models' logits on fixed token windows
(`lowbit quantize`, `lowbit logits`); PyTorch then computes, independently of lowbit's code, the
statistics eval/kl_divergence.h defines over positions 0..T-2 of each window:
  KLD_t = sum_v softmax(b)_v * (log_softmax(b)_v - log_softmax(q)_v)   (float64)
  mean, its standard error sqrt(var/N) (unbiased var), median and p99 (torch.quantile, linear
  interpolation), max, top-1 agreement (argmax b == argmax q) and its standard error
  sqrt(p(1-p)/(N-1)).
Writes tests/fixtures/kld/stories260K-rtn.safetensors: tokens [W, T] int32, base_logits and
logits [W, T, V] float32, and the statistics as JSON in the metadata key "reference".

  python3 scripts/make_kld_fixture.py --lowbit build/tools/lowbit/lowbit \
      --model ../shared/models/stories260K/stories260K.bin
"""
import argparse
import json
import os
import random
import subprocess
import tempfile

import torch
from safetensors.torch import load_file, save_file

SPEC = "rtn:w=3,g=32"
WINDOWS, T = 2, 48


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lowbit", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "kld",
                                                  "stories260K-rtn.safetensors"))
    args = ap.parse_args()

    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        q = os.path.join(tmp, "q")
        subprocess.run([args.lowbit, "quantize", "--model", args.model, "--method", SPEC, "-o", q], check=True,
                       capture_output=True)
        vocab = json.loads(subprocess.run([args.lowbit, "inspect", "--json", args.model], check=True,
                                          capture_output=True, text=True).stdout)["architecture"]["vocab_size"]
        tokens, base, quant = [], [], []
        for w in range(WINDOWS):
            ids = [rng.randrange(vocab) for _ in range(T)]
            out = {}
            for name, model in (("base", args.model), ("q", q)):
                path = os.path.join(tmp, f"{name}{w}.safetensors")
                subprocess.run([args.lowbit, "logits", "--model", model, "--ids", ",".join(map(str, ids)), "-o", path],
                               check=True, capture_output=True)
                out[name] = load_file(path)["logits"]
            tokens.append(torch.tensor(ids, dtype=torch.int32))
            base.append(out["base"])
            quant.append(out["q"])

    b = torch.stack(base)[:, :-1].reshape(-1, vocab).double()
    q = torch.stack(quant)[:, :-1].reshape(-1, vocab).double()
    lb, lq = torch.log_softmax(b, dim=-1), torch.log_softmax(q, dim=-1)
    kld = (lb.exp() * (lb - lq)).sum(dim=-1)
    agree = (b.argmax(dim=-1) == q.argmax(dim=-1)).double()
    n = kld.numel()
    p = agree.mean().item()
    ref = {
        "spec": SPEC,
        "positions": n,
        "mean": kld.mean().item(),
        "stderr": (kld.std(unbiased=True) / n ** 0.5).item(),
        "median": torch.quantile(kld, 0.5).item(),
        "p99": torch.quantile(kld, 0.99).item(),
        "max": kld.max().item(),
        "top1": p,
        "top1_stderr": (p * (1 - p) / (n - 1)) ** 0.5,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file({"tokens": torch.stack(tokens), "base_logits": torch.stack(base).contiguous(),
               "logits": torch.stack(quant).contiguous()}, args.out,
              metadata={"reference": json.dumps(ref), "model": os.path.basename(args.model)})
    print(json.dumps(ref, indent=1))


if __name__ == "__main__":
    main()
