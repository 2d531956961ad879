#!/usr/bin/env python3
"""Loads lowbit exports with transformers on the CPU and compares their logits with lowbit's.

  --logits L.safetensors   `lowbit logits --model QDIR ... -o L.safetensors` of the fake-quant
                           model (tensors "logits" [T, vocab] fp32 and "tokens" [T])
  --ct DIR                 a compressed-tensors export (transformers + compressed-tensors
                           decompress it at load)
  --gguf FILE              a GGUF export (transformers' gguf_file= loader dequantizes it with the
                           gguf package)
  --hf DIR                 the dense fake-quant export

Prints, per model, the largest |logit difference| and the agreement of the argmax over the
positions; the model runs in fp32 (torch_dtype=float32) as lowbit's CPU path does.
"""
import argparse
import os

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def run(model, tokens):
    with torch.no_grad():
        return model(tokens[None, :].long()).logits[0].float()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--logits", required=True)
    ap.add_argument("--ct")
    ap.add_argument("--gguf")
    ap.add_argument("--hf")
    a = ap.parse_args()
    ref = load_file(a.logits)
    want, tokens = ref["logits"].float(), ref["tokens"]
    models = []
    if a.hf:
        models.append(("hf", lambda: AutoModelForCausalLM.from_pretrained(a.hf, dtype=torch.float32)))
    if a.ct:
        models.append(("compressed-tensors", lambda: AutoModelForCausalLM.from_pretrained(a.ct, dtype=torch.float32)))
    if a.gguf:
        models.append(("gguf", lambda: AutoModelForCausalLM.from_pretrained(
            os.path.dirname(os.path.abspath(a.gguf)), gguf_file=os.path.basename(a.gguf), dtype=torch.float32)))
    for name, load in models:
        got = run(load().eval(), tokens)
        d = (got - want).abs()
        agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
        print(f"{name}: {tokens.numel()} positions, max |logit diff| {d.max().item():.3g}, "
              f"mean {d.mean().item():.3g}, argmax agreement {agree * 100:.1f}%")


if __name__ == "__main__":
    main()
