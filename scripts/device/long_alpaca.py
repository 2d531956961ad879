#!/usr/bin/env python3
"""Alpaca-format records (instruction/input/output) whose prompt and response are each far longer
than QLoRA's limits, so that `lowbit finetune --source-max-len S --target-max-len T` truncates
every record to exactly S + T tokens (for S <= ~1000 and T <= ~700 with a LLaMA-3 or SmolLM2
tokenizer): the fixed sequence length the GPU training benchmarks measure at.

  python3 long_alpaca.py OUT.json N
"""
import json
import sys

WORDS = ("the model reads a long instruction about quantization and training of language models "
         "with low bit weights and adapters on every linear layer of each block").split()


def text(n, k):
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for i in range(n))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    n = int(sys.argv[2])
    recs = [{"instruction": text(1200, k), "input": "", "output": text(900, k + 1)} for k in range(n)]
    with open(sys.argv[1], "w") as f:
        json.dump(recs, f)


if __name__ == "__main__":
    main()
