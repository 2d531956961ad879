#!/usr/bin/env python3
"""Parity fixture for lowbit's NF4 (bitsandbytes' quantize_4bit) and IR-QLoRA's ICQ, made by
running bitsandbytes and the official IR-QLoRA code.

The official repository htqin/IR-QLoRA is imported from a work tree given on the command line
(nothing is fetched or copied): its utils.search() runs unchanged on each fixed weight, with
tau_range 0.1, tau_n 100 and blocksize2 256 as the study ran it. The one substitution is the
device step: utils.nf4_quant moves bnb.nn.Params4bit to the GPU, which quantizes it there; here
Params4bit is replaced in the imported module by a class whose .cuda() quantizes on the CPU with
bitsandbytes' own quantize_4bit (blocksize 64, nf4, the same compress_statistics), returning the
same packed bytes with the quant_state attached. bitsandbytes' CPU kernel is therefore the NF4
reference here (the GPU kernel uses the same midpoints and ties, but is not run).

Values are recorded from the reference, never recomputed: tau0, absmax and the chosen factor
per block are the locals of search() at its return (a profile hook reads the frame), the final
tau is the argument of the last nf4_quant call, the codes are the packed bytes of its result
(element 2k in the high nibble), tau_q and tau_absmax are its return values. The index of the
chosen factor is its position among np.linspace(-0.1 sigma, 0.1 sigma, 201) as float32.

Plain bitsandbytes NF4 with double quantization is recorded on the same weights (codes, absmax
codes, the second-level absmax, the offset, the dequantized weight), and its dynamic map.

  python3 scripts/icq_reference.py --irqlora /tmp/irqlora --out /tmp/icq.safetensors
  zstd -19 /tmp/icq.safetensors -o tests/fixtures/quant/icq.safetensors.zst

where /tmp/irqlora is a work tree of htqin/IR-QLoRA (`git --git-dir=<mirror> archive HEAD | tar
-x -C /tmp/irqlora`). Needs torch, numpy, scipy, peft and bitsandbytes (>= 0.46, CPU support).
"""
import argparse
import importlib.util
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quant_reference import write_safetensors  # noqa: E402

import bitsandbytes.functional as bnb_F  # noqa: E402

TAU_RANGE, TAU_N, BLOCKSIZE2 = 0.1, 100, 256


def weights():
    """Fixed weights whose sizes are whole groups of 256 blocks of 64 (the reference's reshape)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(128, 256, generator=g) * 0.02
    # heavy tails and shifted blocks, where the entropy search has something to find
    b = torch.distributions.Laplace(0.0, 0.01).sample((64, 512))
    b[:, :64] += 0.015
    b[::7] *= 3.0
    c = torch.randn(256, 192, generator=g) * 0.05  # 3 groups of 256 blocks
    c.view(-1)[::97] = 0.0
    return {"a": a.contiguous(), "b": b.contiguous().float(), "c": c.contiguous()}


class CpuParams4bit:
    """Stands in for bnb.nn.Params4bit(...).cuda(0): quantizes on the CPU with quantize_4bit."""

    def __init__(self, data, requires_grad=False, compress_statistics=True, quant_type="nf4"):
        self.data, self.compress_statistics, self.quant_type = data, compress_statistics, quant_type

    def cuda(self, device=None):
        packed, state = bnb_F.quantize_4bit(self.data.contiguous(), blocksize=64,
                                            compress_statistics=self.compress_statistics,
                                            quant_type=self.quant_type)
        packed.quant_state = state
        return packed


def unpack(packed):
    p = packed.reshape(-1).to(torch.int32)
    return torch.stack([p // 16, p % 16], 1).reshape(-1).to(torch.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--irqlora", required=True, help="work tree of htqin/IR-QLoRA")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    spec = importlib.util.spec_from_file_location("irqlora_utils", os.path.join(args.irqlora, "utils.py"))
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    utils.bnb.nn.Params4bit = CpuParams4bit

    nf4_calls = []
    real_nf4_quant = utils.nf4_quant

    def recording_nf4_quant(weight, weight_shape, tau, *rest):
        out = real_nf4_quant(weight, weight_shape, tau, *rest)
        nf4_calls.append((tau.clone(), out))
        return out

    utils.nf4_quant = recording_nf4_quant

    search_locals = {}
    inner_search = getattr(utils.search, "__wrapped__", utils.search).__code__  # under @torch.no_grad()

    def profiler(frame, event, arg):
        if event == "return" and frame.f_code is inner_search:
            search_locals.update({k: frame.f_locals[k] for k in ("tau0", "absmax", "factor_best")})

    factors = np.linspace(-TAU_RANGE * utils.sigma, TAU_RANGE * utils.sigma, TAU_N * 2 + 1)
    out = {
        "sigma": torch.tensor([utils.sigma], dtype=torch.float64),
        "factors": torch.tensor(factors, dtype=torch.float64),
        "dynamic_map": bnb_F.create_dynamic_map().float(),
    }
    for name, w in weights().items():
        # bitsandbytes NF4 with double quantization, alone.
        packed, st = bnb_F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
        out[f"{name}.w"] = w
        out[f"{name}.nf4.codes"] = unpack(packed)
        out[f"{name}.nf4.absmax_codes"] = st.absmax.clone()
        out[f"{name}.nf4.absmax_scales"] = st.state2.absmax.clone()
        out[f"{name}.nf4.offset"] = st.offset.reshape(1).float()
        out[f"{name}.nf4.dequant"] = bnb_F.dequantize_4bit(packed, st).float()
        # ICQ: the reference search().
        nf4_calls.clear()
        search_locals.clear()
        sys.setprofile(profiler)
        try:
            nf4_weight, tau1, tau2 = utils.search(w, w.shape, True, "nf4", "cpu", tau_range=TAU_RANGE, tau_n=TAU_N,
                                                  blocksize2=BLOCKSIZE2)
        finally:
            sys.setprofile(None)
        assert len(nf4_calls) == TAU_N * 2 + 2, len(nf4_calls)
        final_tau, _ = nf4_calls[-1]
        fb = search_locals["factor_best"].reshape(-1)
        f32 = torch.tensor(factors, dtype=torch.float32)
        index = torch.tensor([int(torch.nonzero(f32 == v)[0, 0]) for v in fb.tolist()], dtype=torch.int32)
        st = nf4_weight.quant_state
        out[f"{name}.icq.tau0"] = search_locals["tau0"].reshape(-1).float()
        out[f"{name}.icq.absmax"] = search_locals["absmax"].reshape(-1).float()
        out[f"{name}.icq.factor"] = fb.float()
        out[f"{name}.icq.factor_index"] = index
        out[f"{name}.icq.tau"] = final_tau.reshape(-1).float()
        out[f"{name}.icq.codes"] = unpack(nf4_weight)
        out[f"{name}.icq.absmax_codes"] = st.absmax.clone()
        out[f"{name}.icq.absmax_scales"] = st.state2.absmax.clone()
        out[f"{name}.icq.offset"] = st.offset.reshape(1).float()
        out[f"{name}.icq.tau_q"] = tau1.reshape(-1).to(torch.uint8)
        out[f"{name}.icq.tau_absmax"] = tau2.reshape(-1).float()
        moved = int((index != TAU_N).sum())
        print(f"{name} {tuple(w.shape)}: {fb.numel()} blocks, {moved} with a factor other than 0, "
              f"factor indices {int(index.min())}..{int(index.max())}")
    write_safetensors(args.out, out)


if __name__ == "__main__":
    main()
