#!/usr/bin/env python3
"""Where lowbit's PB-LLM, BiLLM or SliM-LLM model and the official code's part ways: both block
chains side by side, linear by linear.

Two chains run through the decoder layers at once, in fp32 on the CPU, from the same embedded
calibration windows (the file `lowbit quantize --save-calib` wrote):
  - the reference chain: the official quantizer (scripts/reference_pipeline.py's, the same classes
    and options) quantizes each block from the statistics of its inputs, and the block with its
    quantized linears produces the next block's inputs, as the repositories' drivers run;
  - lowbit's chain: the block inputs of lowbit's own quantized model, the blocks before it taking
    their weights from lowbit's output (--lowbit: a dense directory, `lowbit export OUT --format hf
    --dtype f32`). On these inputs the official quantizer quantizes the block too (the "cross"
    run): what the reference would have decided where lowbit stood.
Per linear it prints one JSON line:
  x_rel      ||x_lb - x_ref|| / ||x_ref|| of the block's inputs (the chains' distance so far)
  h_rel      ||H_lb - H_ref||_F / ||H_ref||_F of the linear's Hessian (the reference's add_batch on
             each chain's inputs)
  err_ref    tr(dW H dW^T) / tr(W H W^T) of the reference's linear on the reference chain (H_ref)
  err_lb_on_ref  the same for lowbit's linear, measured with H_ref
  err_lb     lowbit's linear on its own chain (H_lb)
  err_cross  the official quantizer's linear on lowbit's chain (H_lb)
  same_cross fraction of weights where lowbit's linear equals the cross run's exactly (both decided
             from the same W and, up to the forward's fp32 rounding, the same H)
  near_cross fraction within 1e-6 * max|W| of it
  same_ref   fraction equal to the reference chain's linear
  bits_ref, bits_cross, bits_lb  (slim) the bits of each group of 128 columns: the official
             allocation on the reference chain and on lowbit's chain, and lowbit's (--lowbit-packed:
             as stored; else as its weights imply); alloc_same: bits_lb == bits_cross
Where same_cross stays near 1 while x_rel grows, both sides take the same decisions and the
chains part through the propagation alone; a linear with same_cross far below 1 on the first
block (x_rel 0) is a decision that differs.

--order SEED feeds the reference chain the windows in another order (a permutation drawn with
torch's generator seeded by SEED): the same Hessians up to fp32 rounding, the official code against
itself. --perturb EPS multiplies the reference chain's calibration inputs of block 0 by
(1 + EPS * u), u ~ N(0, 1) seeded by --seed. Either shows how far a rounding-sized change travels. --save DIR writes
the reference chain's quantized model (fake-quant, fp32, with the source's tokenizer files) for
`lowbit ppl`, so that perturbed runs can be evaluated; --save-cross DIR the cross run's linears
(the official quantizer's decisions on lowbit's chain) in the same form.

--lowbit-stats FILE (`lowbit stats --layer 0` on the same windows) also runs the official
quantizer on lowbit's own block-0 Hessians (same_lbH, near_lbH, err_lbH): lowbit's chain Hessians
are otherwise the reference's add_batch on lowbit's block inputs, computed by torch's forward of
lowbit's weights.

--factor-fp64 has the official quantizer compute its inverse-Hessian factor (torch.linalg.cholesky,
torch.cholesky_inverse) in fp64 and round it to fp32, as lowbit does (obs_hinv.h); with
--lowbit-stats this separates what the fp32 factorization of an ill-conditioned H decides from
everything else.

--compare A B skips the chains: per decoder layer, the fraction of linear weights that two
quantized models (dense directories: the reference's output, lowbit's export) hold equal, and
||A - B||_F / ||A||_F over the layer's linears.

  python3 scripts/reference_chain_diff.py --method pbllm --repo REFS/PB-LLM --low_frac 0.8571428571428571 \\
      --groupsize 64 --blocksize 64 --model WORK/source-hf --windows w.safetensors --lowbit LB_DENSE > pbllm.jsonl
"""
import argparse
import copy
import importlib
import json
import math
import os
import shutil
import sys
import time

import torch
import torch.nn as nn


def out_rel(w, q, h):
    d = (w - q).double()
    w = w.double()
    return ((d @ h * d).sum() / (w @ h * w).sum()).item()


def group_bits(q, groupsize):
    """The bits each column group's weights imply: ceil(log2) of the most distinct values in any one
    row of the group (SliM-LLM quantizes a group to 2^b levels per row, 1-bit groups to 2). A 1-bit
    row holds a third value, its mean, where an updated weight lands on the mean exactly (the sign of
    0 is 0, on both sides), and then reads as 2 bits: --lowbit-packed reads lowbit's stored bits."""
    bits = []
    for c in range(0, q.shape[1], groupsize):
        s = q[:, c:c + groupsize].sort(dim=1).values
        n = int((1 + (s[:, 1:] != s[:, :-1]).sum(1)).max())
        bits.append(max(1, math.ceil(math.log2(n))))
    return bits


def compare(a, b):
    from safetensors.torch import load_file
    ta, tb = (load_file(os.path.join(d, "model.safetensors")) for d in (a, b))
    layers = sorted({int(k.split(".")[2]) for k in ta if k.startswith("model.layers.") and k.endswith("proj.weight")})
    for i in layers:
        keys = [k for k in ta if k.startswith(f"model.layers.{i}.") and k.endswith("proj.weight")]
        same = sum((ta[k].float() == tb[k].float()).sum().item() for k in keys)
        total = sum(ta[k].numel() for k in keys)
        num = sum((ta[k].double() - tb[k].double()).pow(2).sum().item() for k in keys)
        den = sum(ta[k].double().pow(2).sum().item() for k in keys)
        print(json.dumps({"layer": i, "same": same / total, "w_rel": (num / den) ** 0.5}))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--compare":
        compare(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two quantized models' weights")
    ap.add_argument("--method", choices=["pbllm", "billm", "slim"], required=True)
    ap.add_argument("--repo", required=True, help="the official work tree (as reference_pipeline.py's --repo)")
    ap.add_argument("--model", required=True, help="the fp32 source model (HF directory) both sides quantized")
    ap.add_argument("--windows", required=True, help="the calibration windows (lowbit quantize --save-calib)")
    ap.add_argument("--lowbit", help="lowbit's quantized model, dense (lowbit export --format hf --dtype f32); "
                    "without it only the reference chain runs")
    ap.add_argument("--lowbit-packed", help="slim: lowbit's quantized model as `lowbit quantize` wrote it; "
                    "bits_lb is then its stored allocation (extra.group_bits) instead of the bits its weights imply")
    ap.add_argument("--no-cross", action="store_true", help="skip the official quantizer on lowbit's chain")
    ap.add_argument("--layers", type=int, help="the first N decoder layers (default: all)")
    ap.add_argument("--perturb", type=float, default=0.0, help="relative noise on block 0's reference inputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--order", type=int, help="permute the reference chain's windows with this seed")
    ap.add_argument("--lowbit-stats", help="`lowbit stats --layer L` of the same model and windows: on layer "
                    "L the official quantizer also runs on lowbit's own Hessians (fp64 sums, rounded to fp32); "
                    "lowbit stats runs the blocks before L unquantized, so only L = 0 is lowbit's chain, "
                    "reported as same_lbH / near_lbH / err_lbH")
    ap.add_argument("--factor-fp64", action="store_true", help="the official quantizer's Cholesky factorizations "
                    "in fp64 (rounded back to fp32)")
    ap.add_argument("--save", help="write the reference chain's quantized model here")
    ap.add_argument("--save-cross", help="write the cross run's model here: every linear as the official quantizer "
                    "decided it on lowbit's chain (after --save's model is written)")
    ap.add_argument("--wbits", type=int, default=2)
    ap.add_argument("--low_frac", type=float, default=0.9)
    ap.add_argument("--high_bit", type=int, default=8)
    ap.add_argument("--groupsize", type=int, default=128)
    ap.add_argument("--blocksize", type=int, default=128)
    ap.add_argument("--salient_metric", default="hessian")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    rp = importlib.import_module("reference_pipeline")
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.config.use_cache = False
    windows = rp.windows_of(a.windows)
    lowbit = load_file(os.path.join(a.lowbit, "model.safetensors")) if a.lowbit else None
    packed_bits = None
    if a.lowbit_packed:
        from safetensors import safe_open
        with safe_open(os.path.join(a.lowbit_packed, "model.safetensors"), framework="pt") as f:
            packed_bits = {k[:-len(".extra.group_bits")]: f.get_tensor(k).tolist()
                           for k in f.keys() if k.endswith(".extra.group_bits")}
    lb_stats, lb_stats_layer = None, -1
    if a.lowbit_stats:
        from safetensors import safe_open
        lb_stats = load_file(a.lowbit_stats)
        with safe_open(a.lowbit_stats, framework="pt") as f:
            lb_stats_layer = json.loads(f.metadata()["lowbit.stats"])["layer"]
        site = {"q_proj": "qkv_input", "k_proj": "qkv_input", "v_proj": "qkv_input", "o_proj": "o_input",
                "gate_proj": "gate_up_input", "up_proj": "gate_up_input", "down_proj": "down_input"}
    make, between, quantize = rp.reference_method(a, cuda=False)
    if a.factor_fp64:
        from pbllm_billm_reference import TorchProxy
        import types
        module = {"pbllm": "gptq", "billm": "bigptq", "slim": "slim_gptq"}[a.method]
        linalg = types.SimpleNamespace(
            cholesky=lambda x, upper=False: torch.linalg.cholesky(x.double(), upper=upper).to(x.dtype))
        sys.modules[module].torch = TorchProxy({
            "cuda": rp.NO_CUDA, "linalg": linalg,
            "cholesky_inverse": lambda x: torch.cholesky_inverse(x.double()).to(x.dtype)})

    layers = model.model.layers
    nlayers = a.layers or len(layers)
    inps, kwargs = rp.first_layer_inputs(model, windows, torch.float32)
    x_ref = inps.clone()
    if a.order is not None:
        x_ref = x_ref[torch.randperm(len(windows), generator=torch.Generator().manual_seed(a.order))]
    if a.perturb:
        x_ref *= 1 + a.perturb * torch.randn(x_ref.shape)
    x_lb = inps.clone()

    def run(layer, x):
        return rp.layer_output(layer, x, kwargs)

    import builtins
    real_print = builtins.print

    @torch.no_grad()
    def quantize_block(layer, x, h_override=None):
        """The official quantizer on one block and its inputs x: {name: (W, H fp64, Q)}; the
        layer's linears are left quantized. h_override: {name: H} replaces the Hessians of the
        statistics pass (in the reference's fp32)."""
        subset = {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
        gpts = {name: make(subset[name]) for name in subset}
        handles = [subset[n].register_forward_hook(lambda _, i, o, n=n: gpts[n].add_batch(i[0].data, o.data))
                   for n in gpts]
        for j in range(x.shape[0]):
            run(layer, x[j])
        for h in handles:
            h.remove()
        if h_override is not None:
            for n, g in gpts.items():
                g.H = h_override[n].to(torch.float32).clone()
        # The Hessians as the statistics pass left them (SliM-LLM's salience pass damps its H in place).
        hs = {n: g.H.double().clone() for n, g in gpts.items()}
        if between is not None:
            hook_of = between(gpts)
            if hook_of is not None:
                handles = [subset[n].register_forward_hook(lambda _, i, o, n=n: hook_of(gpts[n], i[0].data, o.data))
                           for n in gpts]
                for j in range(x.shape[0]):
                    run(layer, x[j])
                for h in handles:
                    h.remove()
        res = {}
        for n, g in gpts.items():
            w0 = subset[n].weight.data.clone()
            builtins.print = lambda *p, **k: None  # the quantizers print per-linear timings
            try:
                bits = quantize(g)
            finally:
                builtins.print = real_print
            g.free()
            res[n] = (w0, hs[n], subset[n].weight.data.clone(), bits)
        return res

    @torch.no_grad()
    def forward_all(layer, x):
        return torch.stack([run(layer, x[j]) for j in range(x.shape[0])])

    cross_weights = {}
    for i in range(nlayers):
        t0 = time.time()
        layer = layers[i]
        layer_lb = copy.deepcopy(layer) if lowbit is not None else None
        layer_lb_orig = copy.deepcopy(layer) if i == lb_stats_layer else None
        x_lb_in = x_lb
        x_rel = ((x_lb - x_ref).norm() / x_ref.norm()).item() if lowbit is not None else 0.0
        ref = quantize_block(layer, x_ref)
        cross = None
        if lowbit is not None:
            if not a.no_cross:
                probe = copy.deepcopy(layer_lb)
                cross = quantize_block(probe, x_lb)
            else:
                # the Hessians of lowbit's chain alone (the statistics pass, no quantization)
                cross = None
            subset_lb = {n: m for n, m in layer_lb.named_modules() if isinstance(m, nn.Linear)}
            if cross is None:
                hs = {}
                hooks = []
                for n, m in subset_lb.items():
                    hs[n] = torch.zeros(m.in_features, m.in_features, dtype=torch.float64)
                    def acc(_, inp, out, n=n):  # a hook that returns nothing leaves the output alone
                        t = inp[0].reshape(-1, inp[0].shape[-1]).double()
                        hs[n].add_(t.t() @ t)
                    hooks.append(m.register_forward_hook(acc))
                forward_all(layer_lb, x_lb)
                for h in hooks:
                    h.remove()
                for n in hs:
                    hs[n] *= 2 / x_lb.shape[0]
            for n, m in subset_lb.items():
                key = f"model.layers.{i}.{n}.weight"
                if key not in lowbit:
                    raise SystemExit(f"{a.lowbit}: no tensor {key}")
                m.weight.data = lowbit[key].to(torch.float32).clone()
        lbh = None
        if lb_stats is not None and i == lb_stats_layer and lowbit is not None:
            probe = copy.deepcopy(layer_lb_orig)
            names = [n for n, m in probe.named_modules() if isinstance(m, nn.Linear)]
            lbh = quantize_block(probe, x_lb_in, {n: lb_stats[site[n.split(".")[-1]] + ".hessian"] for n in names})
        for n, (w0, h_ref, q_ref, bits_ref) in ref.items():
            rec = {"layer": i, "linear": n, "x_rel": x_rel, "err_ref": out_rel(w0, q_ref, h_ref)}
            if bits_ref is not None:
                rec["bits_ref"] = "".join(map(str, bits_ref))
            if lowbit is not None:
                q_lb = lowbit[f"model.layers.{i}.{n}.weight"].to(torch.float32)
                h_lb = cross[n][1] if cross is not None else hs[n]
                rec["h_rel"] = ((h_lb - h_ref).norm() / h_ref.norm()).item()
                rec["err_lb_on_ref"] = out_rel(w0, q_lb, h_ref)
                rec["err_lb"] = out_rel(w0, q_lb, h_lb)
                rec["same_ref"] = (q_lb == q_ref).double().mean().item()
                if cross is not None:
                    q_x = cross[n][2]
                    if a.save_cross:
                        cross_weights[f"model.layers.{i}.{n}.weight"] = q_x
                    rec["err_cross"] = out_rel(w0, q_x, h_lb)
                    rec["same_cross"] = (q_lb == q_x).double().mean().item()
                    rec["near_cross"] = ((q_lb - q_x).abs() <= 1e-6 * w0.abs().max()).double().mean().item()
                    if cross[n][3] is not None:
                        # the official allocation on lowbit's chain against the bits lowbit's
                        # weights imply (checked on the cross run's own weights: bits_cross_implied)
                        rec["bits_cross"] = "".join(map(str, cross[n][3]))
                        rec["bits_cross_implied"] = "".join(map(str, group_bits(q_x, a.groupsize)))
                        if packed_bits is not None:
                            rec["bits_lb"] = "".join(map(str, packed_bits[f"model.layers.{i}.{n}"]))
                        else:
                            rec["bits_lb"] = "".join(map(str, group_bits(q_lb, a.groupsize)))
                        rec["alloc_same"] = rec["bits_lb"] == rec["bits_cross"]
                if lbh is not None:
                    rec["same_lbH"] = (q_lb == lbh[n][2]).double().mean().item()
                    rec["near_lbH"] = ((q_lb - lbh[n][2]).abs() <= 1e-6 * w0.abs().max()).double().mean().item()
                    rec["err_lbH"] = out_rel(w0, lbh[n][2], lbh[n][1])
            print(json.dumps(rec), flush=True)
        x_ref = forward_all(layer, x_ref)
        if lowbit is not None:
            x_lb = forward_all(layer_lb, x_lb)
        print(f"block {i} done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

    def save(path):
        if os.path.exists(path):
            shutil.rmtree(path)
        model.config.use_cache = True
        model.save_pretrained(path)
        for name in rp.TOKENIZER_FILES:
            if os.path.exists(os.path.join(a.model, name)):
                shutil.copy(os.path.join(a.model, name), path)

    if a.save:
        save(a.save)
    if a.save_cross:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for key, w in cross_weights.items():
                params[key].copy_(w)
        save(a.save_cross)


if __name__ == "__main__":
    main()
