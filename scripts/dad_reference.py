#!/usr/bin/env python3
"""Gradient fixture for DB-LLM's training pieces (src/train/dad.h, src/train/fdb_train.h), from
PyTorch autograd on fixed random inputs:

  - the DAD loss: teacher logits zt and student logits zs [N, V]; for each weighting
    (none, teacher, cross) and gamma in {1, 2}:
        p = softmax(zt), logq = log_softmax(zs), KL_t = sum p (log p - logq),
        w_t = 1 | H(p) | H(p, q) = -sum p logq, raised to gamma, detached (stop-gradient),
        loss = scale * sum_t w_t KL_t  (scale = 1 / N),
    the loss and d loss / d zs;
  - the fdb linear: W = alpha1 * b1 + alpha2 * b2 + beta per group of G columns of a row,
    y = x W^T, L = sum(y * dy); autograd's d L / d (alpha1, alpha2, beta) [groups, 3], with x, dy,
    the planes and the group parameters.

  python3 scripts/dad_reference.py --out tests/fixtures/train/dad.safetensors
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quant_reference import write_safetensors  # noqa: E402

N, V = 6, 97
ROWS, COLS, G, NX = 8, 256, 64, 5


def dad(zt, zs, weight, gamma):
    p = torch.softmax(zt.double(), -1)
    logp = torch.log_softmax(zt.double(), -1)
    logq = torch.log_softmax(zs.double(), -1)
    kl = (p * (logp - logq)).sum(-1)
    if weight == "none":
        w = torch.ones_like(kl)
    elif weight == "teacher":
        w = -(p * logp).sum(-1)
    else:
        w = -(p * logq).sum(-1)
    w = w.detach() ** gamma
    return (w * kl).sum() / N


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(20)
    out = {}
    zt = torch.randn(N, V, generator=g) * 3
    zs = (zt + torch.randn(N, V, generator=g) * 1.5).clone()
    out["dad.teacher"] = zt
    out["dad.student"] = zs
    for weight in ("none", "teacher", "cross"):
        for gamma in (1, 2):
            x = zs.clone().requires_grad_(True)
            loss = dad(zt, x, weight, gamma)
            loss.backward()
            out[f"dad.{weight}.g{gamma}.loss"] = loss.detach().double().reshape(1)
            out[f"dad.{weight}.g{gamma}.grad"] = x.grad.float()

    b1 = (torch.rand(ROWS, COLS, generator=g) < 0.5).to(torch.uint8)
    b2 = (torch.rand(ROWS, COLS, generator=g) < 0.5).to(torch.uint8)
    alpha = (torch.randn(ROWS * COLS // G, 3, generator=g) * 0.05).requires_grad_(True)
    x = torch.randn(NX, COLS, generator=g)
    dy = torch.randn(NX, ROWS, generator=g)
    ar = alpha.reshape(ROWS, COLS // G, 3)
    a1 = ar[:, :, 0].repeat_interleave(G, dim=1)
    a2 = ar[:, :, 1].repeat_interleave(G, dim=1)
    be = ar[:, :, 2].repeat_interleave(G, dim=1)
    w = a1 * b1.float() + a2 * b2.float() + be
    y = x @ w.T
    (y * dy).sum().backward()
    out.update({"fdb.b1": b1, "fdb.b2": b2, "fdb.alpha": alpha.detach(), "fdb.x": x, "fdb.dy": dy,
                "fdb.w": w.detach(), "fdb.dalpha": alpha.grad})
    write_safetensors(a.out, out, {"source": "scripts/dad_reference.py", "torch": torch.__version__})


if __name__ == "__main__":
    main()
