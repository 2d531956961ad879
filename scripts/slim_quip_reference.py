#!/usr/bin/env python3
"""Parity fixtures for lowbit's slim and quip methods, computed by the methods' official code.

The official repositories are imported from checkouts given on the command line (nothing of
them is copied into lowbit):
  --slim  <SliM-LLM checkout>/slim-llm   (Aaronhuang-778/SliM-LLM: slim_gptq.py, utils/)
  --quip  <QuIP checkout>                (Cornell-RelaxML/QuIP: method.py, bal.py, quant.py,
                                          vector_balance.py; needs primefac and scipy)

Inputs (stored in the fixture): rows of testbed-44m's layer-0 down_proj (bf16 values) and
synthetic calibration inputs X (bf16-representable, fixed numpy seed, a few heavy channels and
one quiet 128-column group so that SliM's first group is the least salient). Everything runs on
the CPU in fp32, where the references run on a GPU with the model in bf16 (SliM) or fp16 (QuIP):
  - SliM: the linear is fp32, so get_salience's W^2 and the search's quantization and X W^T are
    fp32 here (bf16 in a real run); lowbit's functions take the square's dtype as a parameter.
  - QuIP: the weight is fp16 as in the reference (its fp16 round trips are reproduced); H is
    the fp64-accumulated sum divided by the number of windows, cast to fp32 (post_batch).
QuIP draws its rotations from unseeded RNGs; here the butterfly factors (block rotations and
permutations) are drawn once with numpy/torch seeded generators, stored, and injected into the
reference by replacing method.rand_ortho_butterfly, so lowbit can build the same U and V.

  python3 scripts/slim_quip_reference.py --slim /tmp/slim/slim-llm --quip /tmp/quip \
      --model ../shared/models/testbed-44m --out /tmp/slim_quip.safetensors
  zstd -19 /tmp/slim_quip.safetensors -o tests/fixtures/quant/slim_quip.safetensors.zst
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch

ROWS, COLS, WINDOWS, TOKENS, GROUP = 64, 1024, 4, 512, 128


def write_safetensors(path, tensors, metadata=None):
    names = {torch.float64: "F64", torch.float32: "F32", torch.int32: "I32", torch.uint8: "U8",
             torch.int8: "I8", torch.float16: "F16"}
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        if t.dtype == torch.bfloat16:
            raw = t.view(torch.int16).numpy().tobytes()
            dt = "BF16"
        else:
            raw = t.numpy().tobytes()
            dt = names[t.dtype]
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def gpu_division():
    """On the GPU the references' 0-dim tensors (maxq, Hinv[i, i]) live on the device, so a
    division by one is a true division; on the CPU a 0-dim divisor is turned into a
    multiplication by its reciprocal, which rounds differently. Expanding such a divisor keeps the
    GPU's arithmetic on the CPU."""
    def wrap(orig):
        def div(a, b):
            if isinstance(b, torch.Tensor) and b.dim() == 0 and a.dim() > 0:
                return orig(a, b.expand(a.shape))
            return orig(a, b)
        return div

    torch.Tensor.__truediv__ = wrap(torch.Tensor.__truediv__)
    torch.Tensor.__itruediv__ = wrap(torch.Tensor.__itruediv__)


def mix32(h):
    h &= 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    h ^= h >> 12
    h = (h * 0x297A2D39) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def synthetic_x(cols=COLS, windows=WINDOWS, tokens=TOKENS):
    """X [windows, tokens, cols]: integer-hash uniform values in [-1, 1) with 16 significant
    bits, times a power of two per channel (2^-2 .. 2^2; every 97th channel 16 times more; the
    first group 16 times less), so that lowbit's tests regenerate it exactly (test_slim_quip.cpp
    synthetic_x) instead of storing 8 MB."""
    t = np.arange(windows * tokens, dtype=np.uint64)[:, None]
    c = np.arange(cols, dtype=np.uint64)[None, :]
    h = mix32(t * np.uint64(0x9E3779B1) + c * np.uint64(0x85EBCA77) + np.uint64(0x165667B1))
    u = ((h & np.uint64(0xFFFF)).astype(np.float64) - 32768.0) / 32768.0
    cc = np.arange(cols, dtype=np.uint64)
    k = (mix32(cc * np.uint64(0x27D4EB2F) + np.uint64(1)) % np.uint64(5)).astype(np.float64) - 2.0
    chan = np.exp2(k)
    chan[np.arange(cols) % 97 == 13] *= 16.0
    chan[:GROUP] /= 16.0
    return torch.tensor((u * chan[None, :]).astype(np.float32).reshape(windows, tokens, cols))


def load_inputs(model_dir):
    from safetensors.torch import load_file
    sd = load_file(os.path.join(model_dir, "model.safetensors"))
    w = sd["model.layers.0.mlp.down_proj.weight"][:ROWS, :COLS].to(torch.bfloat16)
    return w, synthetic_x()


# ---- SliM-LLM ----------------------------------------------------------------------------------

def slim_codes(q, scales, zeros, bits):
    """The codes behind a reference weight q [rows, cols] (scale * (code - zero) per group, or
    sign(w - mu) * alpha + mu for 1-bit groups: 0 below mu, 1 above, 2 at mu). A width that is not
    a multiple of GROUP ends in a partial group, as the reference's column blocks do."""
    codes = torch.zeros(q.shape, dtype=torch.uint8)
    for g, b in enumerate(bits):
        sl = slice(g * GROUP, min((g + 1) * GROUP, q.shape[1]))
        s, z = scales[:, g:g + 1], zeros[:, g:g + 1]
        if b == 1:
            c = torch.full(q[:, sl].shape, 2, dtype=torch.uint8)
            c[q[:, sl] > z] = 1
            c[q[:, sl] < z] = 0
        else:
            c = torch.round(q[:, sl].double() / s.double() + z.double()).to(torch.uint8)
        codes[:, sl] = c
    return codes


def slim_fixtures(slim_dir, w16, x16, out):
    sys.path.insert(0, slim_dir)
    import torch.nn as nn
    torch.cuda.synchronize = lambda *a, **k: None  # fasterquant synchronizes a GPU
    from slim_gptq import SliMGPTQ
    from utils.mixed_quantizer import Quantizer
    import utils.mixed_quantizer as mq
    import utils.bitsearch as bs


    w = w16.float()
    x = x16.float()

    def make(bits):
        layer = nn.Linear(COLS, ROWS, bias=False)
        layer.weight.data = w.clone()
        q = Quantizer(layer.weight, method=f"{bits}bit", groupsize=GROUP, lambda_salience=1)
        return layer, q

    def collect(g, layer):
        for s in range(WINDOWS):
            inp = x[s:s + 1]
            g.add_batch(inp, layer(inp))

    out["slim.linspace"] = torch.cat([torch.ones(1), torch.linspace(1.0, 1.1, 51)[1:], torch.linspace(1.0, 0.9, 51)[1:]])

    for bits in (2, 3, 4):
        # SBA + GPTQ, the default path.
        layer, quant = make(bits)
        g = SliMGPTQ(layer, quant, bit_width=bits)
        collect(g, layer)
        g.get_salience(blocksize=GROUP)
        for s in range(WINDOWS):
            inp = x[s:s + 1]
            g.get_block(inp, layer(inp), blocksize=GROUP)
        key = f"slim.w{bits}.sba"
        out[key + ".salience"] = torch.tensor(g.block_salience, dtype=torch.float64)
        out[key + ".errors"] = torch.tensor(g.block_errors, dtype=torch.float64)
        prec, scales, zeros, _ = g.fasterquant(percdamp=0.01, blocksize=GROUP)
        out[key + ".bits"] = torch.tensor(prec, dtype=torch.int32)
        out[key + ".scales"] = scales.float()
        out[key + ".zeros"] = zeros.float()
        out[key + ".codes"] = slim_codes(layer.weight.data.float(), scales, zeros, prec)
        # The reference's allocation injected (the precomputed-file path: no H edit, every group
        # asymmetric).
        layer, quant = make(bits)
        g = SliMGPTQ(layer, quant, bit_width=bits)
        collect(g, layer)
        prec2, scales, zeros, _ = g.fasterquant(percdamp=0.01, blocksize=GROUP, saved_block_precision=list(prec))
        key = f"slim.w{bits}.alloc"
        out[key + ".scales"] = scales.float()
        out[key + ".zeros"] = zeros.float()
        out[key + ".codes"] = slim_codes(layer.weight.data.float(), scales, zeros, prec2)
        # A fixed count without the search (salient_block = nonsalient_block = 3): the labels
        # path of fasterquant with the stale `sym` flag, on an unedited H.
        layer, quant = make(bits)
        g = SliMGPTQ(layer, quant, bit_width=bits, salient_block=3, nonsalient_block=3)
        collect(g, layer)
        prec3, scales, zeros, _ = g.fasterquant(percdamp=0.01, blocksize=GROUP)
        key = f"slim.w{bits}.count3"
        out[key + ".bits"] = torch.tensor(prec3, dtype=torch.int32)
        out[key + ".scales"] = scales.float()
        out[key + ".zeros"] = zeros.float()
        out[key + ".codes"] = slim_codes(layer.weight.data.float(), scales, zeros, prec3)
        print(f"slim w{bits}: sba {prec}, count3 {prec3}", file=sys.stderr)

    # The quantizer fit alone on the first block, sym off and on, every width: scale and zero per
    # row; the Hinv diagonal it reads is stored.
    hd = torch.linspace(0.05, 0.4, GROUP) ** 0.5
    out["slim.fit.hinv_diag"] = hd
    for bits in (1, 2, 3, 4, 5):
        for sym in (0, 1):
            if bits == 1 and sym:
                continue
            q = Quantizer(w, method=f"{bits}bit", groupsize=GROUP, sym=bool(sym), lambda_salience=1)
            q.fit(w[:, :GROUP].clone(), torch.diag(hd), bit_width=bits)
            out[f"slim.fit.b{bits}.sym{sym}.scale"] = q.scale.flatten().float()
            out[f"slim.fit.b{bits}.sym{sym}.zero"] = q.zero.flatten().float()
    # lambda != 1: the salient weights weigh more
    q = Quantizer(w, method="3bit", groupsize=GROUP, sym=False, lambda_salience=4)
    q.fit(w[:, :GROUP].clone(), torch.diag(hd), bit_width=3)
    out["slim.fit.b3.lambda4.scale"] = q.scale.flatten().float()
    out["slim.fit.b3.lambda4.zero"] = q.zero.flatten().float()


# ---- QuIP -------------------------------------------------------------------------------------

def quip_fixtures(quip_dir, w16, x16, out):
    sys.path.insert(0, quip_dir)
    import torch.nn as nn
    import method
    import bal
    import vector_balance
    from quant import Quantizer

    out["quip.factors"] = torch.tensor([[n, *method.butterfly_factors(n)] for n in
                                        (64, 128, 512, 1024, 1792, 4096, 8192, 11008, 14336, 28672)], dtype=torch.int32)
    # Fixed butterflies (the reference's own generator, seeded) injected for U and V.
    np.random.seed(1)
    torch.manual_seed(1)
    bpp = {n: method.gen_rand_ortho_butterfly(n) for n in (ROWS, COLS)}
    for name, n in (("u", ROWS), ("v", COLS)):
        B, p_in, p_out = bpp[n]
        out[f"quip.{name}.blocks0"] = B[0].flatten().float()
        out[f"quip.{name}.blocks1"] = B[1].flatten().float()
        out[f"quip.{name}.perm_in"] = p_in.to(torch.int32)
        out[f"quip.{name}.perm_out"] = p_out.to(torch.int32)
        out[f"quip.{name}.dense_head"] = method.mul_ortho_butterfly(bpp[n], torch.eye(n)).float()[:8].clone()
    method.rand_ortho_butterfly = lambda n: method.mul_ortho_butterfly(bpp[n], torch.eye(n))

    captured = {}
    orig_round_ldl = vector_balance.round_ldl

    def round_ldl(w, H, nbits, n_greedy_passes=9, unbiased=False):
        captured["wt"] = w.clone()
        r = orig_round_ldl(w, H, nbits, n_greedy_passes, unbiased)
        captured["codes"] = r.clone()
        return r

    vector_balance.round_ldl = round_ldl
    orig_vecbal = bal.quantize_weight_vecbal

    def vecbal(**kw):
        r = orig_vecbal(**kw)
        captured["qw"] = r.clone()
        return r

    bal.quantize_weight_vecbal = vecbal

    for bits, npasses in ((2, 0), (3, 0), (4, 0), (2, 2)):
        layer = nn.Linear(COLS, ROWS, bias=False).half()
        layer.weight.data = w16.to(torch.float16).clone()
        m = bal.Balance(layer)
        m.configure("ldlq", bits, npasses, unbiased=False)
        m.quantizer = Quantizer()
        m.quantizer.configure(bits, perchannel=True, sym=False, qfn="b", mse=False)
        for s in range(WINDOWS):
            m.add_batch(x16[s:s + 1].float(), None)
        m.post_batch()
        m.preproc(preproc_gptqH=True, percdamp=0.01, preproc_rescale=True, preproc_proj=True, preproc_proj_extra=0)
        w_rot = layer.weight.data.clone()
        h_rot = m.H.data.clone().float()
        m.fasterquant()
        key = f"quip.w{bits}.p{npasses}"
        if bits == 2 and npasses == 0:
            out["quip.s"] = m.scaleWH.float() if m.scaleWH is not None else None
            out["quip.w_rot"] = w_rot.half()
            out["quip.h_rot_diag"] = torch.diag(h_rot).clone()
            out["quip.h_rot_row0"] = h_rot[0].clone()
        out[key + ".wt"] = captured["wt"].half()
        out[key + ".codes"] = captured["codes"].to(torch.uint8)
        out[key + ".final"] = layer.weight.data.half().clone()
        dw = captured["qw"].float() - w_rot.float()
        out[key + ".proxy"] = torch.tensor([vector_balance.hessian_loss(dw, h_rot).item()], dtype=torch.float64)
        print(f"quip w{bits} npasses {npasses}: proxy {out[key + '.proxy'].item():.6g}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slim", required=True)
    ap.add_argument("--quip")
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(0)
    gpu_division()
    w16, x16 = load_inputs(a.model)
    out = {"input.w": w16, "input.x_head": x16.flatten()[:4096].clone(),
           "input.x_shape": torch.tensor(list(x16.shape), dtype=torch.int32)}
    slim_fixtures(a.slim, w16, x16, out)
    if a.quip:
        quip_fixtures(a.quip, w16, x16, out)
    write_safetensors(a.out, out, {"source": "scripts/slim_quip_reference.py on testbed-44m layer 0 down_proj rows"})


if __name__ == "__main__":
    main()
