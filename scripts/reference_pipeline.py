#!/usr/bin/env python3
"""Whole-model reference runs of PB-LLM, BiLLM, SliM-LLM and QuIP, on the GPU (--device cuda, as
their repositories run) or on the CPU, for comparison with lowbit's.

Drives the official quantizer classes (imported from the checkouts given on the command line:
PB-LLM's gptq_pb LowHighGPT / LowQuantizer / HighQuantizer, BiLLM's BRAGPTQ / Binarization,
SliM-LLM's slim-llm SliMGPTQ / utils.mixed_quantizer.Quantizer, QuIP's bal.Balance /
quant.Quantizer) block by block as each repository's driver does (PB-LLM's and BiLLM's run.py
quant_sequential, SliM-LLM's run.py quant_sequential with its second, salience pass, QuIP's
llama.py llama_sequential), with the changes that
transformers 5 needs (METHODS.md sections 1.7 and 2.7): the model loads from a local directory
(torch_dtype="auto"), the Catcher keeps every keyword argument of the first decoder layer
(position embeddings included) and passes them on, and the calibration text comes from the local
PTB train file (rows stripped and joined with " ", as both repositories' get_ptb do), 128 random
2048-token windows drawn with random.seed(seed). The quantized ("fake", dequantized) model is
saved with save_pretrained so that `lowbit ppl` evaluates it exactly as it evaluates lowbit's.

Calibration windows: --ptb draws them as the repositories do (their tokenizer, their text);
--windows FILE takes the very windows lowbit quantizes on, the file `lowbit quantize
--save-calib FILE` writes (I32 "windows" [nsamples, seqlen]), so that both sides calibrate on the
same tokens whatever the tokenizer (scripts/device/compare_reference_methods.sh does that).

--device cuda runs everything as the repositories' drivers do on their GPU: the quantizers'
torch.cuda calls are the real ones, TF32 is off (as their modules set it), the Hessians, the
searches and the block forwards run on the GPU. The whole model is moved to the GPU at once
instead of block by block (the same arithmetic; a small model fits), and back to the CPU to be
saved. With --device cpu (the default), the torch.cuda.synchronize that fasterquant calls is
replaced by a no-op (a machine without a GPU refuses it); nothing else changes.

  python3 scripts/reference_pipeline.py --method pbllm --repo /tmp/pbllm \
      --model ../shared/models/testbed-44m --ptb ../shared/data/ptb/ptb.train.txt -o /tmp/ref_pbllm
  lowbit quantize --model M --method pbllm --calib ptb --save-calib /tmp/w.safetensors -o /tmp/lb_pbllm
  python3 scripts/reference_pipeline.py --method pbllm --repo /tmp/pbllm --model M_HF \
      --windows /tmp/w.safetensors --device cuda -o /tmp/ref_pbllm

Options follow the repositories' command lines: PB-LLM `xnor --low_frac F --high_bit 8
--salient_metric hessian --groupsize 128`, BiLLM `braq --blocksize 128 --salient_metric hessian`,
SliM-LLM `{wbits}bit --groupsize 128` (salience-determined allocation, metric mse, lambda 1),
QuIP `--quant ldlq --wbits W --npasses 0 --pre_gptqH --pre_rescale --pre_proj --qfn b`. QuIP draws
its rotations from torch's unseeded generator: --seed also seeds torch here, and a spread over
seeds is what compares with lowbit's (whose butterflies are seeded by its own generator). QuIP's
butterflies are drawn on the CPU (torch's generator, and numpy's for scipy's special_ortho_group,
both seeded with --seed) and then moved, so a seed gives the same ones on either device.
The model loads with torch_dtype="auto" (QuIP: float16), or --dtype.

Timing: reference_run.json records quantize_seconds (from the calibration pass to the last
quantized layer), seconds_per_layer (each decoder layer's statistics pass, quantization and
propagation, the GPU synchronized at its end), layers_run, device_name and, on the GPU, torch's
peak_gpu_bytes. --layers N quantizes the first N decoder layers and stops (the calibration pass
runs as for the whole model); --no-save skips saving the model and prints the record as one JSON
line on stdout (-o then optional: it gets reference_run.json alone). bench/gpu/methods_8b.sh uses
both on an 8B-shaped model.

  python3 scripts/reference_pipeline.py --method slim --repo /tmp/slim/slim-llm --wbits 3 ...
  python3 scripts/reference_pipeline.py --method quip --repo /tmp/quip --wbits 2 --seed 1 ...
"""
import argparse
import importlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import types

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbllm_billm_reference import TorchProxy  # noqa: E402

TOKENIZER_FILES = ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]

# fasterquant ends with torch.cuda.synchronize(), which a machine without a GPU refuses.
NO_CUDA = types.SimpleNamespace(synchronize=lambda: None, empty_cache=lambda: None)


def stub_module(name, **attrs):
    try:
        importlib.import_module(name)
    except ImportError:
        m = types.ModuleType(name)
        for k, v in attrs.items():
            setattr(m, k, v)
        sys.modules[name] = m


def windows_of(path):
    """The windows `lowbit quantize --save-calib` wrote: a list of [1, seqlen] int64 tensors."""
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        if "windows" not in f.keys():
            raise SystemExit(f"{path}: no 'windows' tensor (write it with lowbit quantize --save-calib)")
        w = f.get_tensor("windows")
    if w.dim() != 2 or w.dtype != torch.int32:
        raise SystemExit(f"{path}: 'windows' is {w.dtype} {list(w.shape)}, expected int32 [nsamples, seqlen]")
    return [w[i:i + 1].long() for i in range(w.shape[0])]


def calibration(tok, path, nsamples, seqlen, seed):
    with open(path) as f:
        rows = [line.strip() for line in f.read().splitlines(True)]
    # The repositories' LlamaTokenizer (transformers 4.35) put BOS before the joined text.
    enc = torch.tensor([[tok.bos_token_id] + tok(" ".join(rows), add_special_tokens=False).input_ids])
    random.seed(seed)
    out = []
    for _ in range(nsamples):
        i = random.randint(0, enc.shape[1] - seqlen - 1)
        out.append(enc[:, i:i + seqlen])
    return out


@torch.no_grad()
def first_layer_inputs(model, windows, dtype, dev="cpu"):
    """The first decoder layer's inputs [len(windows), T, H] (dtype, on dev) and keyword arguments
    (attention mask, position embeddings) for the windows, caught as the repositories' Catcher
    catches them."""
    layers = model.model.layers
    inps = torch.zeros((len(windows), windows[0].shape[1], model.config.hidden_size), dtype=dtype, device=dev)
    cache = {"i": 0, "kwargs": None}

    class Catcher(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, inp, *args, **kwargs):
            inps[cache["i"]] = inp
            cache["i"] += 1
            cache["kwargs"] = kwargs
            raise ValueError

    layers[0] = Catcher(layers[0])
    for w in windows:
        try:
            model(w.to(dev))
        except ValueError:
            pass
    layers[0] = layers[0].module
    return inps, cache["kwargs"]


def layer_output(layer, x, kwargs):
    """A decoder layer's output for one sequence x [T, H] with the caught keyword arguments."""
    y = layer(x.unsqueeze(0), **kwargs)
    y = y[0] if isinstance(y, tuple) else y  # transformers 5 returns the tensor itself
    return y[0]


@torch.no_grad()
def quant_sequential(model, windows, make_quantizer, quantize, between=None, dev="cpu", nlayers=None):
    """Quantizes the first nlayers decoder layers (all by default) in order; returns each one's
    seconds (its statistics pass, quantization and propagation, the GPU synchronized)."""
    layers = model.model.layers
    nlayers = len(layers) if nlayers is None else nlayers
    inps, kwargs = first_layer_inputs(model, windows, next(iter(model.parameters())).dtype, dev)
    outs = torch.zeros_like(inps)

    def run(layer, x):
        return layer_output(layer, x, kwargs)

    seconds = []
    for i in range(nlayers):
        layer = layers[i]
        t0 = time.time()
        # The decoder layer's linears in module order (q, k, v, o, gate, up, down), as the
        # repositories' modelutils.find_layers lists them.
        subset = {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
        gpts = {name: make_quantizer(subset[name]) for name in subset}
        handles = []
        for name in gpts:
            def hook(_, inp, out, name=name):
                gpts[name].add_batch(inp[0].data, out.data)
            handles.append(subset[name].register_forward_hook(hook))
        for j in range(len(windows)):
            outs[j] = run(layer, inps[j])
        for h in handles:
            h.remove()
        if between is not None:
            # Work between the statistics pass and the quantization (SliM-LLM: the salience, then
            # a second pass over the windows whose hook gets each linear's input and output).
            hook_of = between(gpts)
            if hook_of is not None:
                handles = [subset[name].register_forward_hook(
                    lambda _, inp, out, name=name: hook_of(gpts[name], inp[0].data, out.data)) for name in gpts]
                for j in range(len(windows)):
                    outs[j] = run(layer, inps[j])
                for h in handles:
                    h.remove()
        for name in gpts:
            quantize(gpts[name])
            gpts[name].free()
        for j in range(len(windows)):
            outs[j] = run(layer, inps[j])
        inps, outs = outs, inps
        if dev == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.time() - t0)
        print(f"block {i + 1}/{nlayers} done in {seconds[-1]:.0f} s", flush=True)
    return seconds


def reference_method(args, cuda):
    """The official quantizer of args.method as (make, between, quantize): make(linear) builds its
    per-linear object, between(gpts) runs between the statistics pass and the quantization (and may
    return the hook of a second pass over the windows), quantize(gpt) quantizes the linear in place.
    args holds the command line's options (method, repo, wbits, low_frac, high_bit, groupsize,
    blocksize, salient_metric)."""
    # BiLLM's bigptq.py imports names it never uses from packages a bare environment may lack.
    stub_module("exceptiongroup", catch=None)
    stub_module("pyparsing", line=None)
    between = None
    if args.method == "pbllm":
        sys.path.insert(0, os.path.join(args.repo, "gptq_pb"))
        gptq = importlib.import_module("gptq")
        gptq.OUTPUTMASK = 0
        if not cuda:
            gptq.torch = TorchProxy({"cuda": NO_CUDA})
        LowQuantizer = importlib.import_module("low_quant").LowQuantizer
        HighQuantizer = importlib.import_module("high_quant").HighQuantizer

        def make(layer):
            return gptq.LowHighGPT(layer, LowQuantizer(layer.weight, method="xnor", groupsize=args.groupsize),
                                   HighQuantizer(args.high_bit, True, False, False),
                                   salient_metric=args.salient_metric)

        def quantize(g):
            g.fasterquant(args.low_frac, percdamp=0.01, blocksize=args.blocksize)
    elif args.method == "slim":
        sys.path.insert(0, args.repo)
        if not cuda:
            torch.cuda.synchronize = lambda *a, **k: None  # fasterquant synchronizes a GPU
        SliMGPTQ = importlib.import_module("slim_gptq").SliMGPTQ
        Quantizer = importlib.import_module("utils.mixed_quantizer").Quantizer
        index = {"n": 0}

        def make(layer):
            # run.py counts every linear of the model in order (layer_index, unused by fasterquant).
            index["n"] += 1
            q = Quantizer(layer.weight, method=f"{args.wbits}bit", groupsize=args.groupsize, metric="mse",
                          lambda_salience=1)
            return SliMGPTQ(layer, q, disable_gptq=False, layer_index=index["n"], salient_block=-1,
                            nonsalient_block=-1, bit_width=args.wbits)

        def between(gpts):
            for g in gpts.values():
                g.get_salience(blocksize=args.groupsize)
            return lambda g, inp, out: g.get_block(inp, out, blocksize=args.groupsize)

        def quantize(g):
            # fasterquant returns (block_precision, scales, zeros, g_idx): the bits of each group
            return g.fasterquant(percdamp=0.01, blocksize=args.groupsize, layer_name="",
                                 saved_block_precision=None)[0]
    elif args.method == "quip":
        sys.path.insert(0, args.repo)
        Balance = importlib.import_module("bal").Balance
        QuipQuantizer = importlib.import_module("quant").Quantizer

        def make(layer):
            b = Balance(layer)
            b.configure("ldlq", args.wbits, 0, unbiased=False)
            b.quantizer = QuipQuantizer()
            b.quantizer.configure(args.wbits, perchannel=True, sym=False, qfn="b", mse=False)
            return b

        def between(gpts):
            for g in gpts.values():
                g.post_batch()
            return None

        def quantize(g):
            g.preproc(preproc_gptqH=True, percdamp=0.01, preproc_rescale=True, preproc_proj=True,
                      preproc_proj_extra=0)
            g.fasterquant()
    else:
        sys.path.insert(0, args.repo)
        bigptq = importlib.import_module("bigptq")
        if not cuda:
            bigptq.torch = TorchProxy({"cuda": NO_CUDA})
        Binarization = importlib.import_module("binary").Binarization

        def make(layer):
            return bigptq.BRAGPTQ(layer, Binarization(layer.weight, method="braq", groupsize=args.blocksize),
                                  salient_metric=args.salient_metric)

        def quantize(g):
            g.fasterquant(percdamp=0.01, blocksize=args.blocksize)

    return make, between, quantize


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=["pbllm", "billm", "slim", "quip"], required=True)
    ap.add_argument("--repo", required=True, help="work tree of hahnyuan/PB-LLM, Aaronhuang-778/BiLLM, "
                    "Cornell-RelaxML/QuIP, or the slim-llm directory of Aaronhuang-778/SliM-LLM")
    ap.add_argument("--wbits", type=int, default=2, help="slim, quip: weight bits")
    ap.add_argument("--model", required=True)
    cal = ap.add_mutually_exclusive_group(required=True)
    cal.add_argument("--ptb", help="ptb.train.txt: draw the windows as the repositories do")
    cal.add_argument("--windows", help="the windows lowbit calibrates on (lowbit quantize --save-calib FILE)")
    ap.add_argument("-o", "--output", help="the quantized model's directory (with --no-save: only reference_run.json)")
    ap.add_argument("--layers", type=int, help="quantize only the first N decoder layers, then stop (timing)")
    ap.add_argument("--no-save", action="store_true", help="do not save the model; print the run's record as one "
                    "JSON line (and write -o/reference_run.json if -o is given)")
    ap.add_argument("--nsamples", type=int, default=128, help="with --ptb")
    ap.add_argument("--seqlen", type=int, default=2048, help="with --ptb")
    ap.add_argument("--seed", type=int, default=0, help="the windows' random.seed (with --ptb) and torch's")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["auto", "float16", "bfloat16", "float32"], default=None,
                    help="the model's type while it is quantized (default: auto; QuIP float16, as its llama.py)")
    ap.add_argument("--low_frac", type=float, default=0.9)
    ap.add_argument("--high_bit", type=int, default=8)
    ap.add_argument("--groupsize", type=int, default=128)
    ap.add_argument("--blocksize", type=int, default=128)
    ap.add_argument("--salient_metric", default="hessian")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if not args.output and not args.no_save:
        ap.error("give -o OUTPUT or --no-save")
    torch.manual_seed(args.seed)
    # QuIP draws the butterflies' factors other than 2 x 2 with scipy's special_ortho_group, from
    # numpy's global generator: seeded too, so that a run can be repeated.
    import numpy
    numpy.random.seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no GPU")
        # GPTQ's and the four repositories' drivers turn TF32 off.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    from transformers import AutoModelForCausalLM, LlamaTokenizer

    # QuIP's llama.py loads the model in fp16, the other three with torch_dtype="auto".
    dtype = args.dtype or ("float16" if args.method == "quip" else "auto")
    model = AutoModelForCausalLM.from_pretrained(args.model,
                                                 torch_dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    model.config.use_cache = False
    if args.windows:
        windows = windows_of(args.windows)
    else:
        # Both repositories load LLaMA tokenizers with LlamaTokenizer (datautils.get_tokenizer). On a
        # folder holding only tokenizer.model it converts the model as LlamaTokenizer does (lowbit's
        # --spm-convention llama); beside config.json transformers 5 would pick another conversion.
        tok_dir = tempfile.mkdtemp()
        shutil.copy(os.path.join(args.model, "tokenizer.model"), tok_dir)
        tok = LlamaTokenizer.from_pretrained(tok_dir)
        windows = calibration(tok, args.ptb, args.nsamples, args.seqlen, args.seed)
    if max(int(w.max()) for w in windows) >= model.config.vocab_size:
        raise SystemExit(f"calibration ids reach {max(int(w.max()) for w in windows)}, beyond the model's "
                         f"vocabulary of {model.config.vocab_size}: the windows are another tokenizer's")
    nlayers = model.config.num_hidden_layers
    if args.layers is not None:
        if not 1 <= args.layers <= nlayers:
            raise SystemExit(f"--layers {args.layers}: the model has {nlayers} decoder layers")
        nlayers = args.layers
    print(f"calibration: {len(windows)} windows of {windows[0].shape[1]} tokens; model {dtype} on {args.device}",
          flush=True)
    if cuda:
        model.to("cuda")

    make, between, quantize = reference_method(args, cuda)

    # The references print per-linear timings; keep the log to the block lines.
    import builtins
    real_print = builtins.print
    builtins.print = lambda *a, **k: real_print(*a, **k) if a and str(a[0]).startswith("block") else None
    t0 = time.time()
    per_layer = quant_sequential(model, windows, make, quantize, between=between, dev=args.device,
                                 nlayers=nlayers)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.time() - t0
    builtins.print = real_print

    # quantize_seconds: from the calibration pass to the last quantized layer's outputs.
    record = {"method": args.method, "repo": os.path.abspath(args.repo), "args": vars(args),
              "windows": [len(windows), int(windows[0].shape[1])], "dtype": dtype,
              "model_dtype": str(next(iter(model.parameters())).dtype).removeprefix("torch."), "device": args.device,
              "device_name": torch.cuda.get_device_name() if cuda else "cpu",
              "quantize_seconds": seconds, "layers_run": nlayers,
              "model_layers": model.config.num_hidden_layers, "seconds_per_layer": per_layer,
              "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else 0}
    if args.output and os.path.exists(args.output):
        shutil.rmtree(args.output)
    if args.no_save:
        if args.output:
            os.makedirs(args.output)
    else:
        model.to("cpu")
        model.config.use_cache = True
        model.save_pretrained(args.output)
        # The source's tokenizer files themselves, so that every evaluation tokenizes as it does for
        # the 16-bit model.
        for name in TOKENIZER_FILES:
            if os.path.exists(os.path.join(args.model, name)):
                shutil.copy(os.path.join(args.model, name), args.output)
    if args.output:
        with open(os.path.join(args.output, "reference_run.json"), "w") as f:
            json.dump(record, f, indent=1)
    if args.no_save:
        print(json.dumps(record))
    else:
        print(f"saved {args.output}: quantized in {seconds:.1f} s on {args.device}")


if __name__ == "__main__":
    main()
