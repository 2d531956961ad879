#!/usr/bin/env python3
"""A straightforward PyTorch GPTQ (Frantar et al. 2023, written from the paper: H = 2/N X^T X from
the layer's calibration inputs, Cholesky of the damped inverse, the column loop with lazy batch
updates of 128 columns, groups of 128, true-sequential order) on the first layers of a Hugging
Face LLaMA checkpoint on the GPU: the anchor for lowbit's GPU GPTQ timing.

Calibration: `nsamples` windows of `seqlen` tokens of PTB train joined with "\\n\\n", starts drawn
with Python's random.seed(0) (GPTQ's get_ptb), the same windows lowbit draws.

  python3 gptq_torch_reference.py MODEL_DIR --data-dir DATA --layers 2
"""
import argparse
import json
import math
import os
import random
import time

import torch
import transformers

torch.backends.cuda.matmul.allow_tf32 = False


def ptb_windows(tok, data_dir, n, seqlen, seed=0):
    with open(os.path.join(data_dir, "ptb", "ptb.train.txt"), encoding="utf-8") as f:
        text = "\n\n".join(line.strip() for line in f)
    ids = tok.encode(text)
    random.seed(seed)
    out = []
    for _ in range(n):
        i = random.randint(0, len(ids) - seqlen - 1)
        out.append(ids[i:i + seqlen])
    return torch.tensor(out)


def quantize_grid(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


def find_params(w, maxq):
    xmin = torch.minimum(w.min(1).values, torch.zeros(w.shape[0], device=w.device))
    xmax = torch.maximum(w.max(1).values, torch.zeros(w.shape[0], device=w.device))
    both = (xmin == 0) & (xmax == 0)
    xmin[both], xmax[both] = -1, 1
    scale = (xmax - xmin) / maxq
    zero = torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def gptq(W, H, bits=4, group=128, block=128, percdamp=0.01):
    W = W.clone().float()
    maxq = 2 ** bits - 1
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    H += damp * torch.eye(cols, device=W.device)
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            if (i1 + i) % group == 0:
                scale, zero = find_params(W[:, i1 + i:i1 + i + group], maxq)
            w = W1[:, i]
            d = Hinv1[i, i]
            q = quantize_grid(w.unsqueeze(1), scale, zero, maxq).flatten()
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return Q


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    a = ap.parse_args()
    tok = transformers.AutoTokenizer.from_pretrained(a.model)
    model = transformers.LlamaForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16).to("cuda").eval()
    windows = ptb_windows(tok, a.data_dir, a.nsamples, a.seqlen).to("cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t_all = time.time()
    inps = model.model.embed_tokens(windows)  # [n, T, H] bf16
    pos = torch.arange(a.seqlen, device="cuda").unsqueeze(0)
    emb = model.model.rotary_emb(inps[:1], pos)
    per_layer = []
    groups = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
              ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    for li in range(a.layers):
        t0 = time.time()
        layer = model.model.layers[li]
        mods = dict(layer.named_modules())
        for names in groups:
            Hs = {n: torch.zeros(mods[n].in_features, mods[n].in_features, device="cuda") for n in names}
            counts = {n: 0 for n in names}

            def hook(name):
                def f(m, inp, out):
                    x = inp[0].reshape(-1, inp[0].shape[-1]).float()
                    n = counts[name]
                    Hs[name] *= n / (n + 1)
                    counts[name] = n + 1
                    x = math.sqrt(2 / counts[name]) * x
                    Hs[name] += x.t() @ x
                return f
            hs = [mods[n].register_forward_hook(hook(n)) for n in names]
            for j in range(a.nsamples):
                layer(inps[j:j + 1], position_embeddings=emb)
            for h in hs:
                h.remove()
            for n in names:
                Q = gptq(mods[n].weight.data, Hs[n])
                mods[n].weight.data = Q.to(mods[n].weight.dtype)
        outs = torch.empty_like(inps)
        for j in range(a.nsamples):
            o = layer(inps[j:j + 1], position_embeddings=emb)
            outs[j:j + 1] = o[0] if isinstance(o, tuple) else o
        inps = outs
        torch.cuda.synchronize()
        per_layer.append(time.time() - t0)
        print(json.dumps({"layer": li, "seconds": per_layer[-1]}), flush=True)
    total = time.time() - t_all
    L = model.config.num_hidden_layers
    print(json.dumps({"tool": "pytorch reference gptq", "layers_run": a.layers, "seconds_per_layer": per_layer,
                      "seconds_run": total, "estimated_model_seconds": sum(per_layer) / len(per_layer) * L,
                      "peak_gpu_bytes": torch.cuda.max_memory_allocated(), "nsamples": a.nsamples,
                      "seqlen": a.seqlen, "device": torch.cuda.get_device_name()}))


if __name__ == "__main__":
    main()
