#!/usr/bin/env python3
"""Checks that PEFT loads an adapter lowbit wrote and gives lowbit's logits.

Loads MODEL (a Hugging Face directory) in fp32 with transformers, applies ADAPTER with
peft.PeftModel.from_pretrained (unmerged), computes the logits of TEXT, and compares them with
`lowbit logits --model MODEL --adapter ADAPTER --text TEXT` (lowbit merges the adapter into the
weights). Prints the largest absolute difference and exits non-zero above --tol.

An IR-QLoRA adapter (IEC scalars "...lora_default_{A,B}_scale" beside A and B, which PEFT does not
load) runs with the official IRQLoraLinear4bit's IEC forward on every adapted linear
(make_irqlora_train_fixtures.iec_forward), the scalars set from the adapter file.

Usage: python3 scripts/check_peft_adapter.py MODEL ADAPTER [--lowbit build/tools/lowbit/lowbit]
                                             [--text "..."] [--tol 1e-3]
"""
import argparse
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("adapter")
    ap.add_argument("--lowbit", default=os.path.join(os.path.dirname(__file__), "..", "build", "tools", "lowbit",
                                                     "lowbit"))
    ap.add_argument("--text", default="Below is an instruction that describes a task. Write a response that "
                                      "appropriately completes the request.\n\n### Instruction:\nName three colors."
                                      "\n\n### Response: Red, green and blue.")
    ap.add_argument("--tol", type=float, default=1e-3)
    a = ap.parse_args()
    import peft
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.safetensors")
        subprocess.run([a.lowbit, "logits", "--model", a.model, "--adapter", a.adapter, "--text", a.text, "-o", out],
                       check=True)
        got = load_file(out)
    ids = got["tokens"].long()[None]
    base = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(base, a.adapter).eval()
    tensors = load_file(os.path.join(a.adapter, "adapter_model.safetensors"))
    scales = {k: v for k, v in tensors.items() if k.endswith("_A_scale") or k.endswith("_B_scale")}
    if scales:
        import types
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from make_irqlora_train_fixtures import iec_forward
        n = 0
        for name, mod in model.named_modules():
            if isinstance(mod, peft.tuners.lora.Linear):
                for which in ("A", "B"):
                    key = f"{name}.lora_default_{which}_scale"
                    mod.register_parameter(f"lora_default_{which}_scale",
                                           torch.nn.Parameter(scales.pop(key).float().reshape(1)))
                mod.forward = types.MethodType(iec_forward, mod)
                n += 1
        assert not scales, f"IEC scalars of no adapted linear: {sorted(scales)[:3]}"
        print(f"IR-QLoRA adapter: IEC on {n} linears")
    with torch.no_grad():
        want = model(input_ids=ids).logits[0]
        with model.disable_adapter():
            plain = model(input_ids=ids).logits[0]
    diff = (got["logits"] - want).abs().max().item()
    effect = (want - plain).abs().max().item()
    print(f"tokens {ids.shape[1]}: max |lowbit - PEFT| logit difference {diff:.3g}; "
          f"the adapter moves the logits by up to {effect:.3g}")
    sys.exit(0 if diff <= a.tol else 1)


if __name__ == "__main__":
    main()
