#!/usr/bin/env python3
"""GPU logit parity: lowbit (`lowbit logits --device cuda`, bf16 weights and activations, fp32
accumulation) against transformers on the same GPU in bf16 (sdpa) and in fp32, for the fixture
models' token sequences (tests/fixtures/models/*/logits.safetensors) and any other model given
with the ids to run.

  python3 gpu_logits_parity.py LOWBIT MODEL_DIR... [--ids-from FIXTURE_LOGITS]

Prints one JSON line per model: max |diff| and top-1 agreement of lowbit vs transformers bf16,
lowbit vs transformers fp32, and transformers bf16 vs transformers fp32 (the bf16 noise floor).
"""
import argparse
import json
import os
import subprocess
import tempfile

import torch
import transformers
from safetensors.torch import load_file


def compare(a, b):
    return {"max_abs": (a - b).abs().max().item(), "top1": (a.argmax(-1) == b.argmax(-1)).float().mean().item()}


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lowbit")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--ids-from", help="a logits.safetensors whose `tokens` to use for models without one")
    a = ap.parse_args()
    for m in a.models:
        fx = os.path.join(m, "logits.safetensors")
        ids = load_file(fx if os.path.exists(fx) else a.ids_from)["tokens"].long().flatten()
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "logits.safetensors")
            subprocess.run([a.lowbit, "logits", "--model", m, "--ids", ",".join(map(str, ids.tolist())), "--device",
                            "cuda", "-o", out], check=True, stdout=subprocess.DEVNULL)
            lb = load_file(out)["logits"].float().cuda().reshape(len(ids), -1)
        res = {"model": os.path.basename(os.path.normpath(m)), "tokens": len(ids)}
        x = ids.cuda().unsqueeze(0)
        logits = {}
        for dtype in (torch.bfloat16, torch.float32):
            model = transformers.LlamaForCausalLM.from_pretrained(m, dtype=dtype, attn_implementation="sdpa").cuda().eval()
            logits[dtype] = model(x).logits[0].float()
            del model
        res["lowbit_vs_transformers_bf16"] = compare(lb, logits[torch.bfloat16])
        res["lowbit_vs_transformers_fp32"] = compare(lb, logits[torch.float32])
        res["transformers_bf16_vs_fp32"] = compare(logits[torch.bfloat16], logits[torch.float32])
        res["logit_range"] = logits[torch.float32].abs().max().item()
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
