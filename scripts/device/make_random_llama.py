#!/usr/bin/env python3
"""A LlamaForCausalLM with random weights from a config.json, written by transformers as a
Hugging Face checkpoint (bf16 safetensors) with a tokenizer beside it: the 8B-shaped model the
GPU benchmarks compare lowbit and transformers on.

  python3 make_random_llama.py bench/configs/llama3-8b.json OUT_DIR --tokenizer ../shared/models/tokenizers/llama3
  python3 make_random_llama.py bench/configs/llama3-8b.json OUT_DIR --tokenizer ... --layers 4   # 8B shapes, 4 layers
"""
import argparse
import json
import os
import shutil
import time

import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("out")
    ap.add_argument("--tokenizer", required=True, help="a directory with tokenizer.json / tokenizer_config.json")
    ap.add_argument("--layers", type=int, help="override num_hidden_layers")
    ap.add_argument("--device", default="cuda", help="where the weights are drawn (cuda; cpu for small checks)")
    a = ap.parse_args()
    cfg = json.load(open(a.config))
    if a.layers:
        cfg["num_hidden_layers"] = a.layers
    config = transformers.LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype")})
    t0 = time.time()
    torch.manual_seed(0)
    with torch.device(a.device):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(a.out, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        src = os.path.join(a.tokenizer, f)
        if os.path.exists(src):
            shutil.copy(src, a.out)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"out": a.out, "parameters": n, "seconds": time.time() - t0}))


if __name__ == "__main__":
    main()
