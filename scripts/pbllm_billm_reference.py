#!/usr/bin/env python3
"""Parity fixtures for lowbit's pbllm and billm methods, made by running the official code.

The official repositories are imported from checkouts given on the command line (nothing is
fetched or copied): hahnyuan/PB-LLM (its gptq_pb/ directory: LowHighGPT, LowQuantizer,
HighQuantizer) and Aaronhuang-778/BiLLM (BRAGPTQ, Binarization, utils/). Each method quantizes one
fixed weight W [96, 256] with the Hessian H = 2/N sum x x^T of fixed random inputs (the reference's
own add_batch), on the CPU in fp32 with TF32 off, exactly as its run.py calls it:

  PB-LLM: LowHighGPT(layer, LowQuantizer(W, "xnor", groupsize=128),
                     HighQuantizer(8, perchannel=True, sym=False, mse=False), metric)
          .fasterquant(low_frac, blocksize=128, percdamp=0.01)
  BiLLM:  BRAGPTQ(layer, Binarization(W, "braq", groupsize=128), metric)
          .fasterquant(blocksize=128, percdamp=0.01, orders=(1, 1, 2))

Intermediate values are recorded by wrapping the reference's own functions, never recomputed:
the upper Cholesky factor of the damped inverse Hessian (torch.linalg.cholesky(..., upper=True)
inside fasterquant), PB-LLM's mask (the argument of LowQuantizer.calibrate) and its quantizers'
buffers, BiLLM's per-block masks (structural_guassian_distribution's result), its split
candidates (each generate_structural_mask threshold, in call order) and chosen split
(structural_searching's result), and the per-row means and scales of the final quantization
(every torch.nanmean inside high_order_residual while Binarization.quantize runs, NaN -> 0 as the
reference does).

  python3 scripts/pbllm_billm_reference.py --pbllm /tmp/pbllm --billm /tmp/billm \
      --out tests/fixtures/quant/binarize.safetensors

where /tmp/pbllm and /tmp/billm are work trees of the two repositories
(`git --git-dir=<mirror> archive HEAD | tar -x -C /tmp/pbllm`). Needs torch and numpy only;
transformers is stubbed when absent, as are BiLLM's unused imports (exceptiongroup, pyparsing).
"""
import argparse
import importlib
import os
import subprocess
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quant_reference import write_safetensors  # noqa: E402

ROWS, COLS = 96, 256
PBLLM_CASES = [("pbllm_h90", "hessian", 0.9), ("pbllm_h86", "hessian", 6 / 7), ("pbllm_m90", "magnitude", 0.9)]
BILLM_CASES = [("billm_h", "hessian"), ("billm_m", "magnitude")]


def stub_module(name, **attrs):
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
        return
    except ImportError:
        pass
    m = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(m, k, v)
    sys.modules[name] = m


def original(module, name):
    """module.name as the reference defines it, even after an earlier case wrapped it."""
    key = "_reference_" + name
    if not hasattr(module, key):
        setattr(module, key, getattr(module, name))
    return getattr(module, key)


class TorchProxy(types.ModuleType):
    """The torch module as a reference file sees it, with hooks on a few functions."""

    def __init__(self, hooks):
        super().__init__("torch")
        self._hooks = hooks

    def __getattr__(self, name):
        if name in self._hooks:
            return self._hooks[name]
        return getattr(torch, name)


class LinalgProxy:
    def __init__(self, record):
        self._record = record

    def __getattr__(self, name):
        return getattr(torch.linalg, name)

    def cholesky(self, a, upper=False, **kw):
        out = torch.linalg.cholesky(a, upper=upper, **kw)
        if upper:
            self._record.append(out.clone())
        return out


def make_inputs():
    """W with a few outlier columns and rows; H from inputs with uneven channel scales and two dead
    channels (their H row and column are 0, so both references zero those weight columns)."""
    g = torch.Generator().manual_seed(1234)
    w = torch.randn(ROWS, COLS, generator=g) * 0.02
    w[:, torch.randperm(COLS, generator=g)[:9]] *= 6.0
    w[torch.randperm(ROWS, generator=g)[:3], :] *= 3.0
    nseq, seqlen = 8, 64
    x = torch.randn(nseq, seqlen, COLS, generator=g) * (0.3 + 2.0 * torch.rand(COLS, generator=g))
    x[:, :, 17] = 0.0
    x[:, :, 200] = 0.0
    return w.contiguous(), x


class Layer(torch.nn.Linear):
    def __init__(self, w):
        super().__init__(w.shape[1], w.shape[0], bias=False)
        self.weight.data = w.clone()
        self.global_name = "fixture"


def run_pbllm(root, w, x, metric, low_frac):
    sys.path.insert(0, os.path.join(root, "gptq_pb"))
    try:
        gptq = importlib.import_module("gptq")
        low_quant = importlib.import_module("low_quant")
        high_quant = importlib.import_module("high_quant")
    finally:
        sys.path.pop(0)
    gptq.OUTPUTMASK = 0
    hinv = []
    gptq.torch = TorchProxy({"linalg": LinalgProxy(hinv),
                             "cuda": types.SimpleNamespace(synchronize=lambda: None, empty_cache=lambda: None)})
    layer = Layer(w)
    lq = low_quant.LowQuantizer(layer.weight, method="xnor", groupsize=128)
    hq = high_quant.HighQuantizer(8, True, False, False)
    masks = {}
    orig_calibrate = lq.calibrate

    def calibrate(wm, mask=None, groupi=0):
        masks[groupi] = mask.clone()
        return orig_calibrate(wm, mask, groupi=groupi)

    lq.calibrate = calibrate
    g = gptq.LowHighGPT(layer, lq, hq, salient_metric=metric)
    for s in range(x.shape[0]):
        g.add_batch(x[s:s + 1], None)
    h = g.H.clone()
    info = g.fasterquant(low_frac, blocksize=128, percdamp=0.01)
    mask = torch.cat([masks[i] for i in range(lq.n_groups)], dim=1)
    return {
        "h": h,
        "hinv": hinv[0],
        "mask": mask.to(torch.uint8),
        "mu": lq.mean[:, :, 0].t().contiguous(),      # [rows, ngroups]
        "alpha": lq.scale[:, :, 0].t().contiguous(),
        "high_scale": hq.scale.reshape(-1).clone(),
        "high_zero": hq.zero.reshape(-1).clone(),
        "out": layer.weight.data.clone(),
        "loss": torch.tensor([info["error"]], dtype=torch.float64),
    }


def run_billm(root, w, x, metric):
    stub_module("exceptiongroup", catch=None)
    stub_module("pyparsing", line=None)
    sys.path.insert(0, root)
    try:
        bigptq = importlib.import_module("bigptq")
        binary = importlib.import_module("binary")
        structure = importlib.import_module("utils.structure")
        autosearch = importlib.import_module("utils.autosearch")
    finally:
        sys.path.pop(0)
    hinv = []
    bigptq.torch = TorchProxy({"linalg": LinalgProxy(hinv),
                               "cuda": types.SimpleNamespace(synchronize=lambda: None, empty_cache=lambda: None)})
    rec = {"on": False, "nanmean": [], "candidates": [], "split": [], "masks": []}

    def nanmean(*a, **kw):
        out = torch.nanmean(*a, **kw)
        if rec["on"]:
            rec["nanmean"].append(torch.where(torch.isnan(out), torch.zeros_like(out), out).clone())
        return out

    binary.torch = TorchProxy({"nanmean": nanmean})
    orig_gsm = original(autosearch, "generate_structural_mask")

    def gsm(origin, mask3, border):
        rec["candidates"].append(float(border))
        return orig_gsm(origin, mask3, border)

    autosearch.generate_structural_mask = gsm
    orig_search = original(structure, "structural_searching")

    def search(target, up_lim=30):
        rec["candidates"].clear()
        split, mask3 = orig_search(target, up_lim)
        cands = torch.tensor(rec["candidates"], dtype=torch.float32)
        idx = int(torch.nonzero(cands == split.to(torch.float32))[0, 0])
        rec["split"].append((int(mask3[0].sum()), idx, float(split), cands.clone(),
                             mask3[0].clone()))
        return split, mask3

    structure.structural_searching = search
    orig_sgd = original(bigptq, "structural_guassian_distribution")

    def sgd(tmp, H=None, metric="magnitude", up_lim=30):
        m1, m2, m3 = orig_sgd(tmp, H, metric, up_lim)
        rec["masks"].append((m1.clone(), m2.clone(), m3.clone()))
        return m1, m2, m3

    bigptq.structural_guassian_distribution = sgd
    layer = Layer(w)
    quantizer = binary.Binarization(layer.weight, method="braq", groupsize=128)
    orig_quantize = quantizer.quantize

    def quantize(w_, mask, order=2, groupi=0):
        rec["on"] = True
        try:
            return orig_quantize(w_, mask, order=order, groupi=groupi)
        finally:
            rec["on"] = False

    quantizer.quantize = quantize
    g = bigptq.BRAGPTQ(layer, quantizer, salient_metric=metric)
    for s in range(x.shape[0]):
        g.add_batch(x[s:s + 1], None)
    h = g.H.clone()
    info = g.fasterquant(blocksize=128, percdamp=0.01, partition=3, orders=(1, 1, 2))
    nblk = len(rec["masks"])
    assert len(rec["nanmean"]) == nblk * 8, len(rec["nanmean"])
    params = torch.stack([torch.stack(rec["nanmean"][b * 8:(b + 1) * 8], dim=1) for b in range(nblk)], dim=1)
    # group: 1 = mask1 (small saliency), 2 = mask2, 3 = mask3 (salient columns)
    group = torch.cat([m1.to(torch.uint8) + 2 * m2.to(torch.uint8) + 3 * m3.to(torch.uint8)
                       for m1, m2, m3 in rec["masks"]], dim=1)
    return {
        "h": h,
        "hinv": hinv[0],
        "group": group,
        "params": params.contiguous(),  # [rows, nblk, 8]: mu1 a1 mu2 a2 mu3a a3a mu3b a3b
        "salient": torch.tensor([s[0] for s in rec["split"]], dtype=torch.int32),
        "split_index": torch.tensor([s[1] for s in rec["split"]], dtype=torch.int32),
        "split": torch.tensor([s[2] for s in rec["split"]], dtype=torch.float32),
        "candidates": torch.stack([s[3] for s in rec["split"]]),
        "out": layer.weight.data.clone(),
        "loss": torch.tensor([info["error"]], dtype=torch.float64),
    }


def git_head(root):
    try:
        return subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pbllm", required=True, help="work tree of hahnyuan/PB-LLM")
    ap.add_argument("--billm", required=True, help="work tree of Aaronhuang-778/BiLLM")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(1)
    stub_module("transformers", Conv1D=type("Conv1D", (), {}))

    w, x = make_inputs()
    tensors = {"input.w": w}
    h_ref, hinv_ref = None, None
    for name, metric, low_frac in PBLLM_CASES:
        r = run_pbllm(os.path.abspath(args.pbllm), w, x, metric, low_frac)
        h_ref = r.pop("h") if h_ref is None else h_ref
        hinv_ref = r.pop("hinv") if hinv_ref is None else hinv_ref
        r.pop("hinv", None)
        for k, v in r.items():
            tensors[f"{name}.{k}"] = v
        tensors[f"{name}.low_frac"] = torch.tensor([low_frac], dtype=torch.float64)
    for name, metric in BILLM_CASES:
        r = run_billm(os.path.abspath(args.billm), w, x, metric)
        assert torch.equal(r.pop("h"), h_ref), "both references must see the same Hessian"
        assert torch.equal(r.pop("hinv"), hinv_ref), "both references must factor it alike"
        for k, v in r.items():
            tensors[f"{name}.{k}"] = v
    tensors["input.hessian"] = h_ref
    tensors["input.hinv"] = hinv_ref
    tensors["torch_linspace"] = torch.linspace(0.10, 0.90, 81)
    meta = {"pbllm_commit": git_head(args.pbllm), "billm_commit": git_head(args.billm),
            "torch": torch.__version__, "numpy": np.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    write_safetensors(args.out, {k: v.contiguous() for k, v in tensors.items()}, meta)
    for name, *_ in BILLM_CASES:
        print(name, "salient", tensors[f"{name}.salient"].tolist(), "split index",
              tensors[f"{name}.split_index"].tolist())
    for name, *_ in PBLLM_CASES:
        print(name, "binarized fraction", float(tensors[f"{name}.mask"].float().mean()))


if __name__ == "__main__":
    main()
