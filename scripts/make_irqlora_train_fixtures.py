#!/usr/bin/env python3
"""Reference for IR-QLoRA training in lowbit: PEFT LoRA with the Information Elastic Connection
(IEC) of htqin/IR-QLoRA's IRQLoraLinear4bit on every adapted linear, on the tiny random LLaMA of
tests/fixtures/train/tiny-llama3 (fp32, CPU, eager attention; written by make_train_fixtures.py).

IEC as the official module's forward computes it (utils.IRQLoraLinear4bit.forward), per linear,
with two trainable parameters named as the official ones, lora_default_A_scale and
lora_default_B_scale ([1] each, initialized to 0):

  h = lora_A(dropout(x)) + A_scale * x.reshape(..., r, in / r).mean(-1)
  y = base(x) + (lora_B(h).reshape(..., r, out / r) + B_scale * h[..., None]).reshape(..., out) * scaling

Only the base differs from the official module: here it is the fp32 linear (the quantized base,
ICQ, has its own fixture, tests/fixtures/quant/icq.safetensors.zst). Before anything is written,
the per-linear function below is run on tests/fixtures/train/iec.safetensors (the official module
itself, scripts/iec_reference.py) and must reproduce its LoRA path to 1e-6, so that this script's
IEC is the official one.

Writes tests/fixtures/train/:

  tiny_irqlora.safetensors
    grad.*    PEFT LoRA r=4, alpha=8 on all seven linears + IEC, A from PEFT's init, B and both
              scalars of every linear seeded random (so that every gradient is non-zero), on the
              batch of tiny_grads.safetensors: "grad.loss", the adapters under "grad.<key>" and
              autograd's gradients under "grad.grad.<key>" (keys as PEFT's state dict names them:
              "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
              "...q_proj.lora_default_A_scale").
    train.*   three optimizer steps from IR-QLoRA's init (PEFT's A, B = 0, both scalars 0) with
              torch's AdamW (weight decay 0.01), transformers' constant schedule with warmup ratio
              0.34 (ceil(0.34 * 3) = 2 warmup steps: lr 0, then lr / 2), clipping at global norm 0.3 and two accumulated
              micro-batches per step, each micro-batch's summed loss divided by the step's target
              tokens: "train.tokens", "train.targets" [micro, B, T], per step "train.loss",
              "train.grad_norm", "train.lr" (f64), "train.init.<key>", "train.final.<key>", and the
              gradients (before clipping) of the last step, "train.grad.<key>".
  irqlora-adapter/  the adapter of the grad case as PEFT's save_pretrained writes it (the IEC
              scalars under the official parameter names), and
  tiny_irqlora_logits.safetensors  the model's logits with that adapter on the batch's first
              sequence ("logits" [70, V]).

Usage: python3 scripts/make_irqlora_train_fixtures.py [OUT_DIR]   (default tests/fixtures/train)
"""
import math
import os
import sys
import types

import peft
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file

torch.set_default_dtype(torch.float32)

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "train")
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R, ALPHA = 4, 8


def g(seed):
    return torch.Generator().manual_seed(seed)


def iec_path(x, lora_a, lora_b, drop, a_scale, b_scale, scaling):
    """The LoRA path of IRQLoraLinear4bit.forward (fp32, no autocast)."""
    r = lora_a.out_features
    h = lora_a(drop(x)) + a_scale * x.reshape(list(x.shape[:-1]) + [r, -1]).mean(dim=-1)
    y = (lora_b(h).reshape(list(h.shape) + [-1]) + b_scale * h.unsqueeze(-1)).reshape(list(h.shape[:-1]) + [-1])
    return y * scaling


def iec_forward(self, x, *args, **kwargs):
    result = self.base_layer(x)
    if self.disable_adapters:
        return result
    name = self.active_adapters[0]
    return result + iec_path(x, self.lora_A[name], self.lora_B[name], self.lora_dropout[name],
                             self.lora_default_A_scale, self.lora_default_B_scale, self.scaling[name])


def check_against_official(fixture):
    """iec_path on the official module's inputs must give its LoRA path (y - y_base)."""
    f = load_file(fixture)
    out_f, in_f = f["w"].shape
    r = f["lora_a"].shape[0]
    a = torch.nn.Linear(in_f, r, bias=False)
    b = torch.nn.Linear(r, out_f, bias=False)
    with torch.no_grad():
        a.weight.copy_(f["lora_a"])
        b.weight.copy_(f["lora_b"])
        got = iec_path(f["x"], a, b, torch.nn.Identity(), f["a_scale"], f["b_scale"], float(f["scaling"][0]))
    want = f["y"] - f["y_base"]
    err = float((got - want).abs().max() / want.abs().max())
    assert err < 1e-6, f"IEC path differs from the official module's by {err}"
    print(f"IEC path against the official module (iec.safetensors): max relative error {err:.3g}")


def irqlora_model(model, seed):
    """PEFT LoRA (r R, alpha ALPHA) on all seven linears, each made an IEC linear."""
    torch.manual_seed(seed)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=ALL7,
                                                    bias="none", task_type="CAUSAL_LM"))
    n = 0
    for _, mod in pm.named_modules():
        if isinstance(mod, peft.tuners.lora.Linear):
            mod.register_parameter("lora_default_A_scale", torch.nn.Parameter(torch.zeros([1])))
            mod.register_parameter("lora_default_B_scale", torch.nn.Parameter(torch.zeros([1])))
            mod.forward = types.MethodType(iec_forward, mod)
            n += 1
    assert n == 7 * model.config.num_hidden_layers
    return pm


def state(pm):
    sd = peft.get_peft_model_state_dict(pm)
    assert any(k.endswith("lora_default_A_scale") for k in sd), "PEFT's state dict dropped the IEC scalars"
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def param_of(pm, key):
    """The parameter behind a PEFT state-dict key (which drops the adapter name)."""
    named = dict(pm.named_parameters())
    if key.endswith("_scale"):
        return named[key]
    return named[key.replace(".weight", ".default.weight")]


def shifted_targets(labels):
    t = torch.full_like(labels, -100)
    t[:, :-1] = labels[:, 1:]
    return t.to(torch.int32)


def grad_case(model, ids, labels, out_dir, seed=800):
    pm = irqlora_model(model, seed)
    gen = g(seed + 1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            elif name.endswith("_scale"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    out = pm(input_ids=ids, labels=labels)
    out.loss.backward()
    res = {"grad.loss": out.loss.detach().reshape(1)}
    for key, val in state(pm).items():
        res[f"grad.{key}"] = val
        res[f"grad.grad.{key}"] = param_of(pm, key).grad.detach().clone().contiguous()
    with torch.no_grad():
        pm.peft_config["default"].base_model_name_or_path = "tiny-llama3"
        pm.save_pretrained(out_dir)
        readme = os.path.join(out_dir, "README.md")
        if os.path.exists(readme):
            os.remove(readme)  # PEFT's model card template
        logits = {"logits": pm(input_ids=ids[:1]).logits[0].contiguous()}
    pm.unload()
    return res, logits


def train_case(model, seed=900, steps=3, accum=2, B=2, T=40):
    pm = irqlora_model(model, seed)
    res = {f"train.init.{k}": v for k, v in state(pm).items()}
    params = [p for p in pm.parameters() if p.requires_grad]
    assert len(params) == 4 * 7 * model.config.num_hidden_layers
    opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, foreach=False)
    sched = transformers.get_constant_schedule_with_warmup(opt, num_warmup_steps=math.ceil(0.34 * steps))
    gen = g(seed + 7)
    V = model.config.vocab_size
    ids = torch.randint(3, V, (steps * accum, B, T), generator=gen)
    labels = ids.clone()
    src = torch.randint(5, 20, (steps * accum, B), generator=gen)
    for i in range(steps * accum):
        for b in range(B):
            labels[i, b, : src[i, b]] = -100
    losses, norms, lrs = [], [], []
    for s in range(steps):
        mbs = range(s * accum, (s + 1) * accum)
        total = sum(int((labels[i, :, 1:] != -100).sum()) for i in mbs)
        loss_sum = 0.0
        for i in mbs:
            logits = pm(input_ids=ids[i]).logits
            l = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[i, :, 1:].reshape(-1), ignore_index=-100,
                                reduction="sum")
            (l / total).backward()
            loss_sum += float(l.detach())
        if s == steps - 1:
            for key in state(pm):
                res[f"train.grad.{key}"] = param_of(pm, key).grad.detach().clone().contiguous()
        losses.append(loss_sum / total)
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, 0.3)))
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        opt.zero_grad()
    res["train.tokens"] = ids.to(torch.int32).contiguous()
    res["train.targets"] = torch.stack([shifted_targets(labels[i]) for i in range(steps * accum)]).contiguous()
    res["train.loss"] = torch.tensor(losses, dtype=torch.float64)
    res["train.grad_norm"] = torch.tensor(norms, dtype=torch.float64)
    res["train.lr"] = torch.tensor(lrs, dtype=torch.float64)
    for k, v in state(pm).items():
        res[f"train.final.{k}"] = v
    pm.unload()
    return res


def main():
    check_against_official(os.path.join(OUT, "iec.safetensors"))
    model = transformers.LlamaForCausalLM.from_pretrained(os.path.join(OUT, "tiny-llama3"), dtype=torch.float32,
                                                          attn_implementation="eager").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    batch = load_file(os.path.join(OUT, "tiny_grads.safetensors"))
    ids = batch["tokens"].long()
    # Labels back from lowbit's shifted targets: position t + 1's label is targets[t].
    labels = torch.full_like(ids, -100)
    labels[:, 1:] = batch["targets"][:, :-1].long()
    res, logits = grad_case(model, ids, labels, os.path.join(OUT, "irqlora-adapter"))
    res.update(train_case(model))
    save_file(res, os.path.join(OUT, "tiny_irqlora.safetensors"))
    save_file(logits, os.path.join(OUT, "tiny_irqlora_logits.safetensors"))
    print("wrote", OUT, f"grad loss {float(res['grad.loss']):.6f}, train losses {res['train.loss'].tolist()}")


if __name__ == "__main__":
    main()
