#!/usr/bin/env python3
"""Reference RTN, NF4 and GPTQ in PyTorch, written from the definitions (GPTQ paper and its
quantizer; QLoRA's NF4 with bitsandbytes' blockwise absmax), for lowbit's parity tests.

Input: a statistics file written by `lowbit stats` (a block's fp32 weights and the Hessians
2/N sum X^T X of its linears' inputs on real calibration data). Output: a safetensors fixture
with the inputs the tests use (a row subset of the weights, the Hessian) and the reference
results (codes, scales, zero-points, GPTQ losses), and a report comparing every linear of the
block when --report is given.

  python3 scripts/quant_reference.py --stats stats.safetensors --fixture tests/fixtures/quant/layer0.safetensors
  python3 scripts/quant_reference.py --stats stats.safetensors --compare lowbit_codes.safetensors

Runs on the CPU with any PyTorch >= 1.13 and numpy; no other package.
"""
import argparse
import json
import struct
import sys

import numpy as np
import torch

DTYPES = {"F64": np.float64, "F32": np.float32, "I32": np.int32, "U8": np.uint8, "I64": np.int64,
          "BF16": None, "F16": np.float16}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        raw = data[base + b:base + end]
        if e["dtype"] == "BF16":
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=DTYPES[e["dtype"]])
        out[name] = torch.from_numpy(arr.copy().reshape(e["shape"]))
    return out, header.get("__metadata__", {})


def write_safetensors(path, tensors, metadata=None):
    names = {torch.float64: "F64", torch.float32: "F32", torch.int32: "I32", torch.uint8: "U8"}
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        raw = t.numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
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


# ---- the min-max affine grid (GPTQ's quantizer) -------------------------------------------

def affine_params(x, maxq, sym):
    """x: [rows, n] float32 -> scale, zero [rows]."""
    zero_t = torch.zeros(x.shape[0], dtype=torch.float32)
    xmin = torch.minimum(x.min(1).values, zero_t)
    xmax = torch.maximum(x.max(1).values, zero_t)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        neg = xmin < 0
        xmin[neg] = -xmax[neg]
    both = (xmin == 0) & (xmax == 0)
    xmin[both] = -1.0
    xmax[both] = 1.0
    scale = (xmax - xmin) / float(maxq)
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale, zero


def affine_codes(x, scale, zero, maxq):
    return torch.clamp(torch.round(x / scale.unsqueeze(1)) + zero.unsqueeze(1), 0, maxq)


def rtn(w, bits, group, sym):
    maxq = 2 ** bits - 1
    rows, cols = w.shape
    g = cols if group < 0 else group
    codes = torch.zeros_like(w)
    scales, zeros = [], []
    for c0 in range(0, cols, g):
        x = w[:, c0:c0 + g]
        s, z = affine_params(x, maxq, sym)
        codes[:, c0:c0 + g] = affine_codes(x, s, z, maxq)
        scales.append(s)
        zeros.append(z)
    return codes.to(torch.uint8), torch.stack(scales, 1), torch.stack(zeros, 1)


# ---- NF4 ----------------------------------------------------------------------------------

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0]


def dynamic_map():
    """bitsandbytes' signed dynamic 8-bit map, from its definition, in fp64 then fp32."""
    data = []
    for i in range(7):
        n = 2 ** i + 1
        b = [0.1 + 0.9 * j / (n - 1) for j in range(n)]
        means = [(b[j] + b[j + 1]) / 2 for j in range(n - 1)]
        data += [10.0 ** (-6 + i) * m for m in means]
        data += [-(10.0 ** (-6 + i)) * m for m in means]
    data += [0.0, 1.0]
    return torch.tensor(sorted(data), dtype=torch.float64).float()


def nearest_lower(table, x):
    """Index of the nearest table value to each x, ties to the lower index."""
    d = (x.unsqueeze(1) - table.unsqueeze(0)).abs()
    # argmin returns the first minimum: the lower index on ties.
    return d.argmin(1)


def nf4(w, block, dq):
    flat = w.reshape(-1)
    n = flat.numel()
    nb = (n + block - 1) // block
    pad = torch.zeros(nb * block, dtype=torch.float32)
    pad[:n] = flat
    blocks = pad.reshape(nb, block)
    absmax = blocks.abs().max(1).values
    inv = torch.where(absmax > 0, 1.0 / absmax, torch.zeros_like(absmax))
    normed = blocks * inv.unsqueeze(1)
    nf = torch.tensor(NF4, dtype=torch.float64)
    mids = ((nf[:-1] + nf[1:]) / 2).float()
    codes = (normed.unsqueeze(2) > mids.view(1, 1, -1)).sum(2)
    codes[absmax == 0] = 7
    codes = codes.reshape(-1)[:n].reshape(w.shape).to(torch.uint8)
    out = {"codes": codes}
    if not dq:
        out["scales"] = absmax
        return out
    offset = torch.tensor(absmax.double().mean().item(), dtype=torch.float32)
    centered = absmax - offset
    nb2 = (nb + 255) // 256
    m2 = torch.zeros(nb2, dtype=torch.float32)
    codes2 = torch.zeros(nb, dtype=torch.uint8)
    eff = torch.zeros(nb, dtype=torch.float32)
    table = dynamic_map()
    for b in range(nb2):
        part = centered[b * 256:(b + 1) * 256]
        m = part.abs().max()
        m2[b] = m
        x = part * (1.0 / m) if m > 0 else torch.zeros_like(part)
        idx = nearest_lower(table, x)
        codes2[b * 256:(b + 1) * 256] = idx.to(torch.uint8)
        eff[b * 256:(b + 1) * 256] = table[idx] * m + offset
    out.update({"scales": eff, "absmax_codes": codes2, "absmax_scales": m2, "absmax_offset": offset.reshape(1)})
    return out


# ---- GPTQ ---------------------------------------------------------------------------------

def gptq(w, h, bits, group, sym, act_order, static_groups, damp, block, solve_dtype=torch.float64):
    """GPTQ (Frantar et al. 2023, Algorithm 1 with lazy batch updates), in the reference code's
    order of operations: columns in blocks, each column quantized onto its group's affine grid,
    its scaled error propagated to the rest of the block, then to all later columns at once."""
    maxq = 2 ** bits - 1
    W = w.clone().float()
    rows, cols = W.shape
    H = h.clone().double()
    per_channel = group < 0
    g = cols if per_channel else group
    if per_channel:
        cur_s, cur_z = affine_params(W, maxq, sym)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    ngroups = (cols + g - 1) // g
    scales = torch.zeros(rows, ngroups)
    zeros = torch.zeros(rows, ngroups)
    if static_groups and not per_channel:
        stat = [affine_params(W[:, c0:c0 + g], maxq, sym) for c0 in range(0, cols, g)]
        for i, (s, z) in enumerate(stat):
            scales[:, i] = s
            zeros[:, i] = z
    perm = torch.arange(cols)
    if act_order:
        d = torch.diag(H)
        # descending, ties by index (a stable order)
        perm = torch.tensor(sorted(range(cols), key=lambda j: (-d[j].item(), j)))
        W = W[:, perm]
        H = H[perm][:, perm]
    H = H.to(solve_dtype)
    dmp = damp * torch.mean(torch.diag(H))
    H = H + dmp * torch.eye(cols, dtype=solve_dtype)
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    Hinv = torch.linalg.cholesky(Hinv, upper=True).float()
    codes = torch.zeros(rows, cols, dtype=torch.uint8)
    loss = 0.0
    if per_channel:
        scales[:, 0] = cur_s
        zeros[:, 0] = cur_z
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if not per_channel:
                if static_groups:
                    gi = perm[col].item() // g
                    cur_s, cur_z = scales[:, gi], zeros[:, gi]
                elif col % g == 0:
                    cur_s, cur_z = affine_params(W[:, col:col + g], maxq, sym)
                    scales[:, col // g] = cur_s
                    zeros[:, col // g] = cur_z
            x = W1[:, i]
            q = affine_codes(x.unsqueeze(1), cur_s, cur_z, maxq).flatten()
            qv = cur_s * (q - cur_z)
            codes[:, perm[col]] = q.to(torch.uint8)
            d = Hinv[col, col]
            loss += ((x - qv) ** 2 / d ** 2).double().sum().item()
            err = (x - qv) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv[col, i1 + i:i2].unsqueeze(0))
            Err1[:, i] = err
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    g_idx = None
    if act_order and not per_channel and not static_groups:
        g_idx = torch.zeros(cols, dtype=torch.int32)
        for i in range(cols):
            g_idx[perm[i]] = i // g
    return codes, scales, zeros, loss / 2, g_idx


# ---- the fixture ---------------------------------------------------------------------------

RTN_CONFIGS = [(b, g, s) for b in (2, 3, 4, 8) for g in (-1, 128) for s in (0, 1)]
GPTQ_CONFIGS = [  # bits, group, sym, act_order, static_groups
    (4, 128, 0, 0, 0), (3, 128, 0, 0, 0), (2, 128, 0, 0, 0), (4, -1, 0, 0, 0), (3, -1, 1, 0, 0),
    (4, 128, 0, 1, 0), (4, 128, 0, 1, 1), (4, 64, 0, 0, 0), (3, 128, 1, 1, 0)]


def gptq_name(c):
    return "gptq.w{}.g{}.sym{}.act{}.static{}".format(*c)


def make_fixture(stats, out_path, rows):
    t = {}
    wq = stats["weight.q_proj"][:rows].contiguous()
    wd = stats["weight.down_proj"][: rows // 2].contiguous()
    t["input.q_proj"] = wq
    t["input.down_proj"] = wd
    t["input.hessian"] = stats["qkv_input.hessian"].float()  # fp32: both sides start from the same values
    h = t["input.hessian"].double()
    for name, w in (("q_proj", wq), ("down_proj", wd)):
        for b, g, s in RTN_CONFIGS:
            c, sc, z = rtn(w, b, g, s)
            key = "rtn.{}.w{}.g{}.sym{}".format(name, b, g, s)
            t[key + ".codes"], t[key + ".scales"], t[key + ".zeros"] = c, sc, z
        for dq in (0, 1):
            r = nf4(w, 64, dq)
            for k, v in r.items():
                t["nf4.{}.dq{}.{}".format(name, dq, k)] = v
    for c in GPTQ_CONFIGS:
        codes, sc, z, loss, g_idx = gptq(wq, h, *c, damp=0.01, block=128)
        key = gptq_name(c)
        t[key + ".codes"], t[key + ".scales"], t[key + ".zeros"] = codes, sc, z
        t[key + ".loss"] = torch.tensor([loss], dtype=torch.float64)
        if g_idx is not None:
            t[key + ".g_idx"] = g_idx
    meta = {"writer": "scripts/quant_reference.py", "torch": torch.__version__,
            "source": "lowbit stats of testbed-44m layer 0 (see tests/fixtures/quant/README.md)"}
    write_safetensors(out_path, t, meta)


def compare(stats, lowbit_path):
    """Per-linear GPTQ comparison: lowbit's codes (written by test_quant's --dump) vs this file's."""
    got, _ = read_safetensors(lowbit_path)
    sites = {"q_proj": "qkv_input", "k_proj": "qkv_input", "v_proj": "qkv_input", "o_proj": "o_input",
             "gate_proj": "gate_up_input", "up_proj": "gate_up_input", "down_proj": "down_input"}
    report = {}
    for lin, site in sites.items():
        w = stats["weight." + lin]
        h = stats[site + ".hessian"]
        for c in [(4, 128, 0, 0, 0), (3, 128, 0, 0, 0), (4, 128, 0, 1, 0)]:
            key = "{}.{}".format(gptq_name(c), lin)
            if key + ".codes" not in got:
                continue
            codes, _, _, loss, _ = gptq(w, h, *c, damp=0.01, block=128)
            mine = got[key + ".codes"]
            mism = (codes != mine).sum().item()
            report[key] = {"shape": list(w.shape), "mismatch": mism, "mismatch_rate": mism / codes.numel(),
                           "loss_reference": loss, "loss_lowbit": got[key + ".loss"].item()}
            print(key, json.dumps(report[key]), flush=True)
    return report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stats", required=True)
    ap.add_argument("--fixture")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--compare")
    ap.add_argument("--report")
    a = ap.parse_args()
    torch.set_num_threads(2)
    stats, _ = read_safetensors(a.stats)
    if a.fixture:
        make_fixture(stats, a.fixture, a.rows)
    if a.compare:
        rep = compare(stats, a.compare)
        if a.report:
            with open(a.report, "w") as f:
                json.dump(rep, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
