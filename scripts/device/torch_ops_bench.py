#!/usr/bin/env python3
"""PyTorch's time for the matrix products and the attention of one LLaMA-3-8B block at
bench_cuda_ops' shapes (4 windows x 2048 tokens): the same shapes through torch.nn.functional.linear
and scaled_dot_product_attention (causal, GQA), for side-by-side reading with bench_cuda_ops.

  python3 torch_ops_bench.py [--batch 4] [--seqlen 2048]
"""
import argparse

import torch
import torch.nn.functional as F


def time_ms(f, reps=20):
    f()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        f()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=2048)
    a = ap.parse_args()
    B, T, H, Fd, nh, nkv, hd, V = a.batch, a.seqlen, 4096, 14336, 32, 8, 128, 128256
    N = B * T
    dev, dt = "cuda", torch.bfloat16
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    for name, M, n, k in [("q_proj", N, 4096, H), ("k/v_proj", N, 1024, H), ("o_proj", N, H, 4096),
                          ("gate/up", N, Fd, H), ("down", N, H, Fd)]:
        x = torch.randn(M, k, device=dev, dtype=dt)
        w = torch.randn(n, k, device=dev, dtype=dt)
        ms = time_ms(lambda: F.linear(x, w))
        print(f"{name:<10} [{M}x{k}] x [{n}x{k}]^T  {ms:8.3f} ms  {2 * M * n * k / ms / 1e9:6.0f} TFLOP/s")
    q = torch.randn(B, nh, T, hd, device=dev, dtype=dt)
    k = torch.randn(B, nkv, T, hd, device=dev, dtype=dt)
    v = torch.randn(B, nkv, T, hd, device=dev, dtype=dt)
    flops = 2 * 2 * B * nh * T * T / 2 * hd
    ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    print(f"sdpa causal GQA B{B} T{T} heads {nh}/{nkv} hd {hd}  {ms:8.3f} ms  {flops / ms / 1e9:6.0f} TFLOP/s")
    kr, vr = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
    ms = time_ms(lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=True))
    print(f"sdpa causal (kv repeated)  {ms:8.3f} ms  {flops / ms / 1e9:6.0f} TFLOP/s")


if __name__ == "__main__":
    main()
