#!/usr/bin/env python3
"""transformers' perplexity pass (sdpa attention, bf16, one window per forward) over WikiText2 as
GPTQ evaluates it: the anchor lowbit's GPU perplexity is compared with, on the same GPU.

The pass is timed whole, from the first forward (which carries the one-time costs: cuBLAS's
kernel choice, loading kernels, the allocator's growth) to the last loss, as lowbit times its
own; the first forward's seconds are reported too, so that the rates after it can be compared.

  python3 transformers_ppl.py MODEL_DIR --data-dir DATA [--limit N]
"""
import argparse
import json
import math
import os
import time

import torch
import transformers


def wikitext2(data_dir):
    with open(os.path.join(data_dir, "wikitext2", "wiki.test.raw"), encoding="utf-8", newline="") as f:
        return "\n\n".join(line if line.strip() else "" for line in f)


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--limit", type=int, default=0)
    a = ap.parse_args()
    tok = transformers.AutoTokenizer.from_pretrained(a.model)
    ids = tok.encode(wikitext2(a.data_dir))
    t_load = time.time()
    model = transformers.LlamaForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16,
                                                          attn_implementation="sdpa").to("cuda").eval()
    t_load = time.time() - t_load
    n = len(ids) // a.seqlen
    if a.limit:
        n = min(n, a.limit)
    x = torch.tensor(ids[: n * a.seqlen], device="cuda").view(n, a.seqlen)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    nlls = []
    first = 0.0
    for i in range(n):
        logits = model(x[i:i + 1]).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], x[i, 1:])
        nlls.append(loss)
        if i == 0:
            torch.cuda.synchronize()
            first = time.time() - t0
    torch.cuda.synchronize()
    secs = time.time() - t0
    mean = torch.stack(nlls).mean().item()
    tokens = n * a.seqlen
    print(json.dumps({"tool": "transformers", "version": transformers.__version__, "torch": torch.__version__,
                      "attn": "sdpa", "dtype": "bfloat16", "windows": n, "tokens": tokens, "seconds": secs,
                      "tokens_per_second": tokens / secs, "first_forward": {"windows": 1, "seconds": first},
                      "ppl": math.exp(mean), "load_seconds": t_load,
                      "peak_gpu_bytes": torch.cuda.max_memory_allocated(), "device": torch.cuda.get_device_name()}))


if __name__ == "__main__":
    main()
