#!/usr/bin/env python3
"""Tokens/s of a LoRA training step in transformers + PEFT: bf16 LoRA on a bf16 base (the
comparison point of lowbit's QLoRA step, bench/gpu/qlora_vs_peft.sh). One optimizer step is
ACCUM micro-batches of BATCH sequences of SEQ tokens, forward and backward, then AdamW; the
loss is the causal LM loss over every position. Timing is wall time with the device synchronized,
over the steps after WARMUP.

  python3 peft_lora_step_bench.py --config bench/configs/llama3-8b.json --layers 4 --seq 512
  python3 peft_lora_step_bench.py --model ~/.cache/lowbit/models/SmolLM2-135M-Instruct.Q4_1.gguf
  python3 peft_lora_step_bench.py --config bench/configs/llama3-tiny.json --device cpu --steps 2   # a check

The model has the shape of --config (with --layers) or of --model (a Hugging Face directory or a
GGUF file; only its config is read) and random weights: a step's time does not depend on the
values. LoRA: r, alpha, dropout and the seven target linears of lowbit's QLoRA defaults (r 64,
alpha 16, dropout 0, q/k/v/o/gate/up/down).

PEFT is used when it imports. When it does not, --impl auto falls back to "plain-torch LoRA": the
same computation PEFT's LoraLayer does for a Linear (y = base(x) + lora_B(lora_A(dropout(x))) *
alpha / r, A Kaiming-uniform, B zero, the base frozen), written here; the output names which one
ran. --impl peft refuses to run without PEFT.

Prints one JSON line: {"impl", "model", "layers", "seq", "batch", "accum", "steps", "dtype",
"gradient_checkpointing", "tokens_per_second", "step_seconds", "peak_memory_bytes", "device"}.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import transformers

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class PlainLoraLinear(torch.nn.Module):
    """PEFT's LoRA Linear forward, in plain torch: base(x) + lora_B(lora_A(dropout(x))) * scaling."""

    def __init__(self, base, r, alpha, dropout):
        super().__init__()
        self.base_layer = base
        self.lora_A = torch.nn.Linear(base.in_features, r, bias=False, dtype=base.weight.dtype,
                                      device=base.weight.device)
        self.lora_B = torch.nn.Linear(r, base.out_features, bias=False, dtype=base.weight.dtype,
                                      device=base.weight.device)
        torch.nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        torch.nn.init.zeros_(self.lora_B.weight)
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
        self.scaling = alpha / r

    def forward(self, x):
        return self.base_layer(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling


def plain_lora(model, r, alpha, dropout):
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in list(model.named_modules()):
        for t in TARGETS:
            child = getattr(module, t, None)
            if isinstance(child, torch.nn.Linear):
                setattr(module, t, PlainLoraLinear(child, r, alpha, dropout))
    return model


def load_config(a):
    if a.config:
        cfg = json.load(open(a.config))
        if a.layers:
            cfg["num_hidden_layers"] = a.layers
        return transformers.LlamaConfig(**{k: v for k, v in cfg.items()
                                           if k not in ("architectures", "model_type", "torch_dtype")})
    path = os.path.expanduser(a.model)
    if path.endswith(".gguf"):
        cfg = transformers.AutoConfig.from_pretrained(os.path.dirname(path) or ".", gguf_file=os.path.basename(path))
    else:
        cfg = transformers.AutoConfig.from_pretrained(path)
    if a.layers:
        cfg.num_hidden_layers = a.layers
    return cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a config.json (bench/configs/llama3-8b.json)")
    src.add_argument("--model", help="a Hugging Face directory or a GGUF file (its config only)")
    ap.add_argument("--layers", type=int, help="override num_hidden_layers")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--accum", type=int, default=4, help="micro-batches per optimizer step")
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps before them")
    ap.add_argument("--r", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--no-gradient-checkpointing", action="store_true",
                    help="keep every block's activations (QLoRA's script checkpoints, as lowbit does)")
    ap.add_argument("--impl", default="auto", choices=["auto", "peft", "torch"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    try:
        import peft  # noqa: F401
        have_peft = True
    except ImportError:
        have_peft = False
    if a.impl == "peft" and not have_peft:
        sys.exit("peft_lora_step_bench.py: --impl peft, but the peft package does not import (pip install peft)")
    use_peft = have_peft and a.impl != "torch"
    if not use_peft:
        why = "requested" if a.impl == "torch" else "the peft package is not installed"
        print(f"peft_lora_step_bench.py: running plain-torch LoRA ({why}): PEFT's LoRA Linear forward written "
              "in plain torch, not PEFT itself", file=sys.stderr)

    torch.manual_seed(a.seed)
    dtype = getattr(torch, a.dtype)
    cfg = load_config(a)
    with torch.device(a.device):
        model = transformers.LlamaForCausalLM(cfg).to(dtype)
    if use_peft:
        import peft
        lcfg = peft.LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=TARGETS,
                               bias="none", task_type="CAUSAL_LM")
        model = peft.get_peft_model(model, lcfg)
    else:
        model = plain_lora(model, a.r, a.alpha, a.dropout)
    ckpt = not a.no_gradient_checkpointing
    if ckpt:
        # As QLoRA's script (prepare_model_for_kbit_training): checkpointing with inputs that
        # require grad, so the frozen embedding's output carries the graph into the blocks.
        base = model.get_base_model() if use_peft else model
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        base.enable_input_require_grads()
    model.config.use_cache = False
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=a.lr)
    g = torch.Generator(device="cpu").manual_seed(a.seed)

    def sync():
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    def step():
        for _ in range(a.accum):
            ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), generator=g).to(a.device)
            loss = model(input_ids=ids, labels=ids).loss / a.accum
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if a.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for _ in range(a.warmup):
        step()
    sync()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    tokens = a.accum * a.batch * a.seq * a.steps
    out = {
        "impl": "peft " + __import__("peft").__version__ if use_peft else "plain-torch LoRA (no PEFT)",
        "model": a.config or a.model, "layers": cfg.num_hidden_layers, "seq": a.seq, "batch": a.batch,
        "accum": a.accum, "steps": a.steps, "dtype": a.dtype, "gradient_checkpointing": ckpt,
        "trainable_parameters": trainable, "tokens_per_second": tokens / sum(times), "step_seconds": times,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if a.device.startswith("cuda") else None,
        "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else a.device,
        "transformers": transformers.__version__, "torch": torch.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
