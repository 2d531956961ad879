#!/usr/bin/env python3
"""Per-linear errors of QuIP along the official code's block chain: which linears a seed got wrong.

Runs the decoder layers as scripts/reference_pipeline.py runs QuIP (the model in fp16, every
linear's H = sum x x^T / N from one statistics pass of its block, the block's outputs recomputed
with its quantized linears and fed to the next block) and, per linear, prints one JSON line with
the relative output error tr(dW H dW^T) / tr(W H W^T) and the relative weight error
||dW||_F / ||W||_F, H being the linear's Hessian in that chain (before QuIP's preprocessing).
The quantized linears come either from the official quantizer itself (--repo, QuIP's bal.Balance
with `--quant ldlq --npasses 0 --pre_gptqH --pre_rescale --pre_proj --qfn b`, torch and numpy
seeded with --seed) or from a fake-quantized checkpoint (--quantized: a directory whose
model.safetensors holds the dense weights, e.g. `lowbit export LOWBIT_DIR --format hf --dtype f32
-o DIR` of lowbit's quip output, or the reference's own output); both then see the same chain, so
the two lists compare linear by linear. --dump FILE --dump-layer L writes layer L's W, H (fp64)
and quantized W per linear.

  python3 scripts/quip_layer_errors.py --model WORK/source-hf --windows WORK/quip-4/windows.safetensors \\
      --repo REFS/QuIP --wbits 4 --seed 0 > ref.jsonl
  python3 scripts/quip_layer_errors.py --model WORK/source-hf --windows WORK/quip-4/windows.safetensors \\
      --quantized /tmp/lowbit-quip4-dense > lowbit.jsonl
"""
import argparse
import importlib
import json
import os
import sys

import numpy
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the 16-bit model (HF directory) both sides quantized")
    ap.add_argument("--windows", required=True, help="the calibration windows (lowbit quantize --save-calib)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--repo", help="QuIP's work tree (Cornell-RelaxML/QuIP): quantize with the official code")
    src.add_argument("--quantized", help="a fake-quantized model directory (model.safetensors, dense weights)")
    ap.add_argument("--wbits", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="torch's and numpy's seed (the reference's butterflies)")
    ap.add_argument("--layers", type=int, help="the first N decoder layers (default: all)")
    ap.add_argument("--dump", help="write layer --dump-layer's W, H and quantized W to this .safetensors file")
    ap.add_argument("--dump-layer", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    numpy.random.seed(a.seed)
    if a.threads:
        torch.set_num_threads(a.threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    rp = importlib.import_module("reference_pipeline")
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float16)
    model.config.use_cache = False
    windows = rp.windows_of(a.windows)
    quantized = load_file(os.path.join(a.quantized, "model.safetensors")) if a.quantized else None
    # The official modules and the block loop print progress: stdout keeps the JSON lines alone.
    import builtins
    real_print = builtins.print
    builtins.print = lambda *p, **k: real_print(*p, **k) if p and str(p[0]).startswith("{") else None
    if a.repo:
        sys.path.insert(0, a.repo)
        Balance = importlib.import_module("bal").Balance
        QuipQuantizer = importlib.import_module("quant").Quantizer

    names, dump, state = {}, {}, {"layer": 0, "done": 0}

    def make(layer):
        if not a.repo:
            from types import SimpleNamespace
            g = SimpleNamespace(layer=layer, H=None, n=0)
            g.add_batch = lambda inp, out, g=g: accumulate(g, inp)
            g.post_batch = lambda g=g: setattr(g, "H", (g.H / g.n).to(torch.float32))
            g.free = lambda: None
            return g
        b = Balance(layer)
        b.configure("ldlq", a.wbits, 0, unbiased=False)
        b.quantizer = QuipQuantizer()
        b.quantizer.configure(a.wbits, perchannel=True, sym=False, qfn="b", mse=False)
        return b

    def accumulate(g, inp):
        # method.py QuantMethod.add_batch: fp64 sum over one window's tokens.
        x = inp.reshape(-1, inp.shape[-1]).t().to(torch.float64)
        g.H = x @ x.t() if g.H is None else g.H + x @ x.t()
        g.n += 1

    def between(gpts):
        for name, g in gpts.items():
            g.post_batch()
            names[id(g)] = name
        return None

    def quantize(g):
        name, layer = names[id(g)], state["layer"]
        w0, h0 = g.layer.weight.data.clone().double(), g.H.clone().double()
        if a.repo:
            g.preproc(preproc_gptqH=True, percdamp=0.01, preproc_rescale=True, preproc_proj=True, preproc_proj_extra=0)
            g.fasterquant()
        else:
            key = f"model.layers.{layer}.{name}.weight"
            if key not in quantized:
                raise SystemExit(f"{a.quantized}: no tensor {key}")
            g.layer.weight.data = quantized[key].to(g.layer.weight.dtype)
        d = w0 - g.layer.weight.data.double()
        rec = {"layer": layer, "linear": name, "out_rel": ((d @ h0 * d).sum() / (w0 @ h0 * w0).sum()).item(),
               "w_rel": (d.norm() / w0.norm()).item()}
        print(json.dumps(rec), flush=True)
        if a.dump and layer == a.dump_layer:
            dump[f"{name}.w"] = w0.float()
            dump[f"{name}.h"] = h0
            dump[f"{name}.q"] = g.layer.weight.data.float().clone()
        state["done"] += 1
        if state["done"] % len(names) == 0:
            state["layer"] += 1

    try:
        rp.quant_sequential(model, windows, make, quantize, between=between, nlayers=a.layers)
    finally:
        builtins.print = real_print
    if a.dump:
        save_file({k: v.contiguous() for k, v in dump.items()}, a.dump)


if __name__ == "__main__":
    main()
