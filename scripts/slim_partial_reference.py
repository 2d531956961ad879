#!/usr/bin/env python3
"""SliM-LLM parity fixtures for linears whose input width is not a multiple of the group size,
computed by the official code (Aaronhuang-778/SliM-LLM, slim-llm/: slim_gptq.py, utils/).

The reference walks the columns in blocks of 128 with `range(0, columns, blocksize)` and
`min(col_st + blocksize, columns)`, so a width of 576 gives four groups of 128 and a last group
of 64 columns, 192 one of 128 and one of 64. Everything per group (the salience sum, the
search's round-to-nearest or binarization, the quantizer fit, the GPTQ error feedback) then runs
on the narrower block as is. The search has floor(ngroups / 2) - 1 candidates: one at 576 (five
groups), none at 192 (two groups), where fasterquant's argmin over an empty error list fails; the
fixture records that failure and covers 192 through the fixed-count and injected-allocation
paths instead.

Inputs: rows of testbed-44m's layer-0 down_proj, its first 576 or 192 columns (bf16 values), and
the synthetic calibration inputs of scripts/slim_quip_reference.py (synthetic_x) at that width,
which lowbit's test regenerates. CPU, fp32, with the GPU's division semantics (gpu_division), as
slim_quip_reference.py runs the reference.

  python3 scripts/slim_partial_reference.py --slim /tmp/slim/slim-llm \
      --model ../shared/models/testbed-44m --out /tmp/slim_partial.safetensors
  zstd -19 /tmp/slim_partial.safetensors -o tests/fixtures/quant/slim_partial.safetensors.zst
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slim_quip_reference as sq  # noqa: E402  (write_safetensors, gpu_division, mix32)

ROWS, WINDOWS, TOKENS, GROUP = 64, 4, 256, 128
WIDTHS = (576, 192)


def fixtures(slim_dir, wfull, out):
    sys.path.insert(0, slim_dir)
    import torch.nn as nn
    torch.cuda.synchronize = lambda *a, **k: None  # fasterquant synchronizes a GPU
    from slim_gptq import SliMGPTQ
    from utils.mixed_quantizer import Quantizer

    for cols in WIDTHS:
        w16 = wfull[:, :cols].contiguous()
        w, x = w16.float(), sq.synthetic_x(cols, WINDOWS, TOKENS)
        out[f"c{cols}.input.w"] = w16
        out[f"c{cols}.input.x_head"] = x.flatten()[:4096].clone()
        out[f"c{cols}.input.x_shape"] = torch.tensor(list(x.shape), dtype=torch.int32)

        def make(bits, **kw):
            layer = nn.Linear(cols, ROWS, bias=False)
            layer.weight.data = w.clone()
            q = Quantizer(layer.weight, method=f"{bits}bit", groupsize=GROUP, lambda_salience=1)
            g = SliMGPTQ(layer, q, bit_width=bits, **kw)
            for s in range(WINDOWS):
                g.add_batch(x[s:s + 1], layer(x[s:s + 1]))
            return layer, g

        def store(key, layer, prec, scales, zeros):
            out[key + ".bits"] = torch.tensor(prec, dtype=torch.int32)
            out[key + ".scales"] = scales.float()
            out[key + ".zeros"] = zeros.float()
            codes = sq.slim_codes(layer.weight.data.float(), scales, zeros, prec)
            # The codes, scales and zeros give back the reference's weight exactly (the test
            # compares through the format's dequantization).
            for gi, b in enumerate(prec):
                sl = slice(gi * GROUP, min((gi + 1) * GROUP, cols))
                s, z, c = scales[:, gi:gi + 1], zeros[:, gi:gi + 1], codes[:, sl].float()
                deq = (torch.where(c == 1, 1.0, torch.where(c == 0, -1.0, 0.0)) * s + z if b == 1
                       else s * (c - z))
                assert torch.equal(deq, layer.weight.data[:, sl].float()), (key, gi)
            out[key + ".codes"] = codes

        for bits in (2, 3):
            pre = f"c{cols}.w{bits}"
            # SBA + GPTQ, the default path.
            layer, g = make(bits)
            g.get_salience(blocksize=GROUP)
            for s in range(WINDOWS):
                g.get_block(x[s:s + 1], layer(x[s:s + 1]), blocksize=GROUP)
            out[pre + ".sba.salience"] = torch.tensor(g.block_salience, dtype=torch.float64)
            try:
                prec, scales, zeros, _ = g.fasterquant(percdamp=0.01, blocksize=GROUP)
                out[pre + ".sba.errors"] = torch.tensor(g.block_errors, dtype=torch.float64)
                store(pre + ".sba", layer, prec, scales, zeros)
                print(f"c{cols} w{bits} sba: {prec}", file=sys.stderr)
            except ValueError as e:  # min() of the empty error list: no candidate count
                out[pre + ".sba.fails"] = torch.ones(1, dtype=torch.int32)
                print(f"c{cols} w{bits} sba: the reference fails ({e})", file=sys.stderr)
            # A fixed count of one (salient_block = nonsalient_block = 1): the labels path with
            # the stale `sym` flag, unedited H.
            layer, g = make(bits, salient_block=1, nonsalient_block=1)
            prec, scales, zeros, _ = g.fasterquant(percdamp=0.01, blocksize=GROUP)
            store(pre + ".count1", layer, prec, scales, zeros)
            print(f"c{cols} w{bits} count1: {prec}", file=sys.stderr)
            # Injected allocations (the precomputed-file path: every group asymmetric) with the
            # partial last group at N-1 bits (binarized at N = 2) and at N+1 bits.
            ng = (cols + GROUP - 1) // GROUP
            for name, last in (("alloc_lo", bits - 1), ("alloc_hi", bits + 1)):
                alloc = [bits] * ng
                alloc[-1] = last
                alloc[0] = 2 * bits - last
                layer, g = make(bits)
                prec, scales, zeros, _ = g.fasterquant(percdamp=0.01, blocksize=GROUP,
                                                       saved_block_precision=list(alloc))
                store(f"{pre}.{name}", layer, prec, scales, zeros)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slim", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(0)
    sq.gpu_division()
    from safetensors.torch import load_file
    sd = load_file(os.path.join(a.model, "model.safetensors"))
    wfull = sd["model.layers.0.mlp.down_proj.weight"][:ROWS, :max(WIDTHS)].to(torch.bfloat16)
    out = {}
    fixtures(a.slim, wfull, out)
    sq.write_safetensors(a.out, out, {"source": "scripts/slim_partial_reference.py on testbed-44m layer 0 "
                                                "down_proj rows, first 576 / 192 columns"})


if __name__ == "__main__":
    main()
