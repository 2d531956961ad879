#!/usr/bin/env python3
"""Reference AWQ and SmoothQuant in PyTorch, written from the papers and their reference code's
definitions (llm-awq auto_scale/auto_clip/quantizer; smoothquant smooth.py), for lowbit's
parity tests.

Block 0 of a Hugging Face LLaMA checkpoint, its inputs the embeddings of given token windows:
  - AWQ: per scaling group the chosen exponent, the scales and the grid losses; per clipped
    linear the chosen max |w| per (row, group);
  - SmoothQuant: the smoothing factors of the q/k/v and gate/up inputs.

  python3 scripts/awq_smoothquant_reference.py --model tests/fixtures/models/llama2-mini-f32 \
      --random-windows 8x128 --out tests/fixtures/quant/awq_sq_llama2_mini.safetensors
  python3 scripts/awq_smoothquant_reference.py --model ../shared/models/testbed-44m \
      --ids windows.i32 --windows 16x512 --out /tmp/awq_sq_testbed.safetensors

The block runs in fp32 with transformers' conventions (RMSNorm in fp32, rotate_half RoPE with
default/linear/llama3 frequencies, causal softmax attention with grouped KV heads, SwiGLU).
"""
import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quant_reference import read_safetensors, write_safetensors  # noqa: E402


# ---- the block -----------------------------------------------------------------------------

class Block:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            self.cfg = json.load(f)
        t, _ = read_safetensors(os.path.join(model_dir, "model.safetensors"))
        self.embed = t["model.embed_tokens.weight"].float()
        p = "model.layers.0."
        self.w = {
            "input_norm": t[p + "input_layernorm.weight"].float(),
            "post_norm": t[p + "post_attention_layernorm.weight"].float(),
            "q": t[p + "self_attn.q_proj.weight"].float(), "k": t[p + "self_attn.k_proj.weight"].float(),
            "v": t[p + "self_attn.v_proj.weight"].float(), "o": t[p + "self_attn.o_proj.weight"].float(),
            "gate": t[p + "mlp.gate_proj.weight"].float(), "up": t[p + "mlp.up_proj.weight"].float(),
            "down": t[p + "mlp.down_proj.weight"].float(),
        }
        c = self.cfg
        self.H = c["hidden_size"]
        self.nh = c["num_attention_heads"]
        self.nkv = c.get("num_key_value_heads", self.nh)
        self.hd = c.get("head_dim") or self.H // self.nh
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.inv_freq = self.rope_inv_freq()

    def rope_inv_freq(self):
        c = self.cfg
        # transformers 5 writes "rope_parameters" (with rope_theta inside); older files
        # "rope_theta" and "rope_scaling".
        rs = c.get("rope_parameters") or c.get("rope_scaling") or {}
        theta = rs.get("rope_theta", c.get("rope_theta", 10000.0))
        inv = 1.0 / (theta ** (torch.arange(0, self.hd, 2, dtype=torch.int64).float() / self.hd))
        kind = rs.get("rope_type", rs.get("type", "default"))
        if kind == "linear":
            inv = inv / rs["factor"]
        elif kind == "llama3":
            factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
            old = rs["original_max_position_embeddings"]
            lo_wl, hi_wl = old / lo, old / hi
            wl = 2 * math.pi / inv
            inv_l = torch.where(wl > lo_wl, inv / factor, inv)
            smooth = (old / wl - lo) / (hi - lo)
            smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
            medium = ~(wl < hi_wl) * ~(wl > lo_wl)
            inv = torch.where(medium, smoothed, inv_l)
        return inv

    def rmsnorm(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def attention(self, w, x, T):
        """x: [nseq * T, H] normalized -> [nseq * T, H] after o_proj."""
        n = x.shape[0] // T
        q = (x @ w["q"].T).view(n, T, self.nh, self.hd).transpose(1, 2)
        k = (x @ w["k"].T).view(n, T, self.nkv, self.hd).transpose(1, 2)
        v = (x @ w["v"].T).view(n, T, self.nkv, self.hd).transpose(1, 2)
        pos = torch.arange(T).float()
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat([freqs, freqs], -1)
        cos, sin = emb.cos(), emb.sin()

        def rot(t):
            h = t.shape[-1] // 2
            return torch.cat([-t[..., h:], t[..., :h]], -1)

        q = q * cos + rot(q) * sin
        k = k * cos + rot(k) * sin
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        s = s.masked_fill(mask, float("-inf"))
        a = torch.softmax(s, -1) @ v
        a = a.transpose(1, 2).reshape(n * T, self.nh * self.hd)
        return a, a @ w["o"].T

    def mlp(self, w, x):
        g = x @ w["gate"].T
        u = x @ w["up"].T
        h = torch.nn.functional.silu(g) * u
        return h, h @ w["down"].T

    def features(self, ids):
        """The inputs of every linear of block 0 (16-bit model), [N, in] each."""
        nseq, T = ids.shape
        x = self.embed[ids.reshape(-1).long()]
        w = self.w
        xn = self.rmsnorm(x, w["input_norm"])
        att_in, att = self.attention(w, xn, T)
        h = x + att
        hn = self.rmsnorm(h, w["post_norm"])
        down_in, _ = self.mlp(w, hn)
        return {"qkv": xn, "o": att_in, "gate_up": hn, "down": down_in}, T


# ---- AWQ -----------------------------------------------------------------------------------

def awq_fake_quant(w, bits, group):
    shape = w.shape
    g = shape[1] if group < 0 else group
    x = w.reshape(-1, g)
    mx = x.amax(1, keepdim=True)
    mn = x.amin(1, keepdim=True)
    maxq = 2 ** bits - 1
    s = (mx - mn).clamp(min=1e-5) / maxq
    z = (-torch.round(mn / s)).clamp(0, maxq)
    return ((torch.clamp(torch.round(x / s) + z, 0, maxq) - z) * s).reshape(shape)


def awq_search(blk, T, kind, linears, x, bits, group, grid):
    w0 = blk.w

    def inspect(w):
        if kind == "attention":
            return blk.attention(w, x, T)[1]
        if kind == "mlp":
            return blk.mlp(w, x)[1]
        return x @ w[linears[0]].T

    org = inspect(w0)
    x_mean = x.abs().view(-1, x.shape[-1]).mean(0)
    best, best_ratio, best_s, losses = float("inf"), -1, None, []
    for i in range(grid):
        ratio = i / grid
        s = x_mean.pow(ratio).clamp(min=1e-4).view(-1)
        s = s / (s.max() * s.min()).sqrt()
        w = dict(w0)
        for name in linears:
            w[name] = awq_fake_quant(w0[name] * s.view(1, -1), bits, group) / s.view(1, -1)
        loss = (org - inspect(w)).double().pow(2).mean().item()
        losses.append(loss)
        if loss < best:
            best, best_ratio, best_s = loss, ratio, s
    return best_ratio, best_s, losses


def awq_clip(w, x, bits, group, n_grid=20, max_shrink=0.5, n_tokens=512):
    rows, cols = w.shape
    g = cols if group < 0 else group
    stride = max(1, x.shape[0] // n_tokens)
    xs = x[0::stride].reshape(1, -1, cols // g, g)
    ww = w.reshape(rows, 1, cols // g, g)
    org_max = ww.abs().amax(-1, keepdim=True)
    best = org_max.clone()
    min_err = torch.ones_like(org_max) * 1e9
    org_out = (xs * ww).sum(-1)
    for i in range(int(max_shrink * n_grid)):
        mx = org_max * (1 - i / n_grid)
        cur = torch.clamp(ww, -mx, mx)
        q = awq_fake_quant(cur.reshape(rows, cols), bits, group).reshape(rows, 1, cols // g, g)
        out = (xs * q).sum(-1)
        err = (out - org_out).pow(2).mean(1).view(min_err.shape)
        better = err < min_err
        min_err[better] = err[better]
        best[better] = mx[better]
    return best.reshape(rows, cols // g)


def awq(blk, feats, T, bits, group, grid=20):
    out = {}
    w = blk.w
    groups = [("qkv", "attention", ["q", "k", "v"], "qkv")]
    if w["v"].shape == w["o"].shape:
        groups.append(("v_o", "linear", ["o"], "o"))
    groups += [("gate_up", "mlp", ["gate", "up"], "gate_up"), ("up_down", "linear", ["down"], "down")]
    chosen = {}
    for name, kind, lins, feat in groups:
        ratio, s, losses = awq_search(blk, T, kind, lins, feats[feat], bits, group, grid)
        chosen[name] = s
        out["awq.{}.ratio".format(name)] = torch.tensor([ratio], dtype=torch.float64)
        out["awq.{}.scales".format(name)] = s.contiguous()
        out["awq.{}.losses".format(name)] = torch.tensor(losses, dtype=torch.float64)
    # fold, then clip every linear but q and k on the scaled inputs
    sw = dict(w)
    f = dict(feats)
    s = chosen["qkv"]
    for k in ("q", "k", "v"):
        sw[k] = sw[k] * s.view(1, -1)
    f["qkv"] = f["qkv"] / s.view(1, -1)
    if "v_o" in chosen:
        s = chosen["v_o"]
        sw["v"] = sw["v"] / s.view(-1, 1)
        sw["o"] = sw["o"] * s.view(1, -1)
        f["o"] = f["o"] / s.view(1, -1)
    s = chosen["gate_up"]
    for k in ("gate", "up"):
        sw[k] = sw[k] * s.view(1, -1)
    f["gate_up"] = f["gate_up"] / s.view(1, -1)
    s = chosen["up_down"]
    sw["up"] = sw["up"] / s.view(-1, 1)
    sw["down"] = sw["down"] * s.view(1, -1)
    f["down"] = f["down"] / s.view(1, -1)
    for lin, feat in (("v", "qkv"), ("o", "o"), ("gate", "gate_up"), ("up", "gate_up"), ("down", "down")):
        out["awq.clip.{}".format(lin)] = awq_clip(sw[lin], f[feat], bits, group).contiguous()
    return out


# ---- SmoothQuant ---------------------------------------------------------------------------

def smoothquant_factors(act_max, weights, alpha):
    wmax = torch.cat([w.abs().max(0, keepdim=True).values for w in weights], 0).max(0).values.clamp(min=1e-5)
    return (act_max.pow(alpha) / wmax.pow(1 - alpha)).clamp(min=1e-5)


def clip_unit(path):
    """AWQ's clipping search alone on fixed inputs (weights with outlier rows, activations with
    outlier channels), for an exact comparison: both sides start from the same bits."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 128, generator=g) * (1 + 3 * torch.rand(64, 1, generator=g))
    w[::9, ::13] *= 6.0
    x = torch.randn(256, 128, generator=g) * (0.2 + 2 * torch.rand(1, 128, generator=g))
    out = {"input.w": w.contiguous(), "input.x": x.contiguous()}
    for bits, group in ((3, -1), (4, 32), (2, 64)):
        out["clip.w{}.g{}".format(bits, group)] = awq_clip(w, x, bits, group).contiguous()
    write_safetensors(path, out, {"writer": "scripts/awq_smoothquant_reference.py --clip-unit"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clip-unit", help="write the clipping-search fixture to this path and stop")
    ap.add_argument("--model")
    ap.add_argument("--random-windows", help="NxT: N windows of T random token ids (seed 0)")
    ap.add_argument("--ids", help="a file of little-endian int32 token ids")
    ap.add_argument("--windows", help="NxT: the shape of --ids")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group", type=int, default=-1)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(2)
    if a.clip_unit:
        clip_unit(a.clip_unit)
        return
    blk = Block(a.model)
    if a.random_windows:
        n, t = map(int, a.random_windows.split("x"))
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, blk.embed.shape[0], (n, t), generator=g, dtype=torch.int64).to(torch.int32)
    else:
        n, t = map(int, a.windows.split("x"))
        import numpy as np
        ids = torch.from_numpy(np.fromfile(a.ids, dtype="<i4")[: n * t].reshape(n, t).copy())
    feats, T = blk.features(ids)
    out = {"input.ids": ids.contiguous()}
    out.update(awq(blk, feats, T, a.bits, a.group))
    w = blk.w
    out["sq.qkv"] = smoothquant_factors(feats["qkv"].abs().amax(0), [w["q"], w["k"], w["v"]], a.alpha).contiguous()
    out["sq.gate_up"] = smoothquant_factors(feats["gate_up"].abs().amax(0), [w["gate"], w["up"]], a.alpha).contiguous()
    meta = {"writer": "scripts/awq_smoothquant_reference.py", "torch": torch.__version__, "model": a.model,
            "bits": str(a.bits), "group": str(a.group), "alpha": str(a.alpha)}
    write_safetensors(a.out, out, meta)
    for k, v in out.items():
        if k.endswith(".ratio"):
            print(k, v.item())


if __name__ == "__main__":
    sys.exit(main())
