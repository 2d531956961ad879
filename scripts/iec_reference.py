#!/usr/bin/env python3
"""Parity fixture for IR-QLoRA's Information Elastic Connection (IEC), made by running the
official module htqin/IR-QLoRA utils.IRQLoraLinear4bit on the CPU.

A base Linear(256 -> 128) with fixed weights becomes a bitsandbytes Linear4bit (NF4, double
quantization, fp32 compute), PEFT wraps it in LoRA (r 64, alpha 16, dropout 0, on this one
module), and the reference replaces the PEFT module by IRQLoraLinear4bit (which runs ICQ's
search() on the fp weight, tau_n 100). Then A, B and the two IEC scalars are set to fixed random
values and the module's forward runs on fixed random inputs; the fixture holds the fp weight,
A, B, a_s, b_s, the inputs and the outputs (base and LoRA path together, as the module returns
them), plus the base output alone (adapters disabled), and autograd's gradients for a fixed
upstream gradient dy: A, B, the two scalars, and the LoRA path's share of the input gradient
(the input gradient with the adapters minus the one without).

Substitutions, each only where the reference cannot run here as written:
  - utils.bnb.nn.Params4bit(...).cuda(0) quantizes on the CPU with bitsandbytes' quantize_4bit
    (as scripts/icq_reference.py does);
  - PEFT >= 0.7 keeps the active adapter as the string 'default' behind a read-only property,
    where the reference (written for PEFT 0.6) indexes a list: the module's _active_adapter is set
    to ['default'] so that its active_adapter[0] names the adapter as it did.

  python3 scripts/iec_reference.py --irqlora /tmp/irqlora --out tests/fixtures/train/iec.safetensors
"""
import argparse
import importlib.util
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from icq_reference import CpuParams4bit  # noqa: E402
from quant_reference import write_safetensors  # noqa: E402

import bitsandbytes as bnb  # noqa: E402
import peft  # noqa: E402

IN, OUT, R, ALPHA = 256, 128, 64, 16


class Holder(torch.nn.Module):
    def __init__(self, proj):
        super().__init__()
        self.proj = proj

    def forward(self, x):
        return self.proj(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--irqlora", required=True, help="work tree of htqin/IR-QLoRA")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("irqlora_utils", os.path.join(args.irqlora, "utils.py"))
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)

    g = torch.Generator().manual_seed(1)
    w = torch.randn(OUT, IN, generator=g) * 0.05
    fp = torch.nn.Linear(IN, OUT, bias=False)
    fp.weight.data.copy_(w)
    q = bnb.nn.Linear4bit(IN, OUT, bias=False, compute_dtype=torch.float32, compress_statistics=True,
                          quant_type="nf4")
    q.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, compress_statistics=True, quant_type="nf4")
    q = q.to("cpu")
    model = peft.get_peft_model(Holder(q), peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                                                          target_modules=["proj"], bias="none"))
    lora_module = model.base_model.model.proj
    utils.bnb.nn.Params4bit = CpuParams4bit  # (the bitsandbytes module itself: set after the base exists)
    irq = utils.IRQLoraLinear4bit(lora_module, model_fp=fp, blocksize2=256, tau_range=0.1, tau_n=100)
    irq._active_adapter = ["default"]
    a = torch.randn(R, IN, generator=g) * 0.05
    b = torch.randn(OUT, R, generator=g) * 0.05
    a_s, b_s = torch.tensor([0.3]), torch.tensor([-0.2])
    with torch.no_grad():
        irq.lora_A["default"].weight.copy_(a)
        irq.lora_B["default"].weight.copy_(b)
        irq.lora_default_A_scale.copy_(a_s)
        irq.lora_default_B_scale.copy_(b_s)
    x = torch.randn(5, IN, generator=g)
    dy = torch.randn(5, OUT, generator=g)
    # Forward and autograd backward with the adapters, then with them disabled (the base's share
    # of the input gradient, to subtract).
    xg = x.clone().requires_grad_(True)
    y = irq(xg)
    y.backward(dy)
    grads = {"grad.lora_a": irq.lora_A["default"].weight.grad.clone(),
             "grad.lora_b": irq.lora_B["default"].weight.grad.clone(),
             "grad.a_scale": irq.lora_default_A_scale.grad.clone(),
             "grad.b_scale": irq.lora_default_B_scale.grad.clone()}
    irq._disable_adapters = True
    xb = x.clone().requires_grad_(True)
    y_base = irq(xb)
    y_base.backward(dy)
    irq._disable_adapters = False
    grads["grad.x_lora"] = (xg.grad - xb.grad).detach()
    print(f"y {tuple(y.shape)}, |y - base| max {float((y - y_base).abs().max()):.4g}, "
          f"grad a_s {float(grads['grad.a_scale']):.6g}, b_s {float(grads['grad.b_scale']):.6g}")
    write_safetensors(args.out, {"w": w, "lora_a": a, "lora_b": b, "a_scale": a_s, "b_scale": b_s, "x": x,
                                 "y": y.detach().float(), "y_base": y_base.detach().float(), "dy": dy,
                                 "scaling": torch.tensor([irq.scaling["default"]], dtype=torch.float64),
                                 **{k: v.float().contiguous() for k, v in grads.items()}})


if __name__ == "__main__":
    main()
