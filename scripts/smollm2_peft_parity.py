#!/usr/bin/env python3
"""LoRA training on SmolLM2-135M-Instruct: lowbit's `finetune` against transformers + PEFT + torch.

Both sides train the same LoRA (r, alpha 16, dropout 0, all seven linears) over the same frozen
fp32 weights, from the same initial adapters, on the same batches, CPU, fp32:

  1. the GGUF is exported by lowbit (`lowbit export GGUF --format hf --dtype f32`): the exact fp32
     weights lowbit trains over, as a directory transformers loads (eager attention);
  2. PEFT builds the LoRA (its own init under --seed, then every B set to seeded N(0, 0.01^2)
     values, so that A's gradient at the first step is not zero) and writes it with
     save_pretrained;
  3. `lowbit finetune --method lora:... --init-adapter` that directory, with --save-batches (every
     micro-batch it trains on) and --dump-grads (the first step's gradient before clipping);
  4. PEFT trains on those batches: torch.optim.AdamW with lowbit's hyper-parameters (lr, betas,
     eps, weight decay 0), transformers' get_constant_schedule_with_warmup with
     ceil(warmup_ratio * steps) warmup steps, torch.nn.utils.clip_grad_norm_ at 0.3, the loss the
     mean cross-entropy over the step's target tokens.

Compared: (a) the gradient of every A and B at step 1, per tensor ||g_lowbit - g_peft|| /
||g_peft||, and over all tensors, against three references on the same weights, adapters and
batch: PEFT as it trains (fp32, torch's fp32 cross-entropy), PEFT's fp32 model with the
cross-entropy taken on its logits cast to float64, and PEFT in float64 throughout (which tells
rounding from a difference of the computation); (b) the loss of every step (lowbit's
OUT/lowbit/lowbit_adapter.json "log"), max |diff| and the first step where it passes --loss-tol;
also the gradient norms and the final adapters. Writes OUT/parity.json and prints a summary;
exits non-zero when lowbit's step-1 gradients are farther than --grad-tol (worst tensor) from
PEFT's fp32 model with the float64 cross-entropy, or (b) exceeds --loss-tol.

Usage: python3 scripts/smollm2_peft_parity.py [--gguf ~/.cache/lowbit/models/SmolLM2-135M-Instruct.Q4_1.gguf]
           [--lowbit build/tools/lowbit/lowbit] [--data ../shared/data/alpaca/alpaca_5000.json]
           [--out build/smollm2-peft] [--steps 50] [--batch 2] [--r 8] [--threads 2]
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
HERE = os.path.dirname(os.path.abspath(__file__))


def sh(cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def read_batches(path):
    """{step: [(tokens [B, T], targets [B, T]) per micro-batch]} from lowbit's --save-batches."""
    steps = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            steps.setdefault(r["step"], []).append(
                (torch.tensor(r["tokens"], dtype=torch.long), torch.tensor(r["targets"], dtype=torch.long)))
    return steps


def param_name(key):
    """PEFT's state-dict key -> the module parameter's name (adapter name "default")."""
    return key.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def reference_gradients(model_dir, init_dir, keys, micro, total, dtype, loss_dtype):
    """The step-1 loss and gradient with the model (and adapters) in `dtype` and the cross-entropy
    taken on the logits cast to `loss_dtype`: float64 throughout is the exact reference both fp32
    gradients are measured against; an fp32 model with the loss in float64 separates the rounding
    of torch's fp32 cross-entropy from the rest."""
    import peft
    m = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager")
    pm = peft.PeftModel.from_pretrained(m, init_dir, is_trainable=True).to(dtype).eval()
    named = dict(pm.named_parameters())
    loss_sum = 0.0
    for tokens, targets in micro:
        logits = pm(input_ids=tokens).logits.to(loss_dtype)
        l = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                            reduction="sum")
        (l / total).backward()
        loss_sum += float(l.detach())
    return loss_sum / total, {k: named[param_name(k)].grad.detach().clone() for k in keys}


def error_summary(got, ref, keys):
    per = {k: rel(got[k], ref[k]) for k in keys}
    worst = max(per, key=per.get)
    g = torch.cat([got[k].double().flatten() for k in keys])
    r = torch.cat([ref[k].double().flatten() for k in keys])
    return {"tensors": len(per), "worst": worst, "worst_rel_err": per[worst],
            "median_rel_err": sorted(per.values())[len(per) // 2], "all_rel_err": float((g - r).norm() / r.norm()),
            "per_tensor": per}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.expanduser("~/.cache/lowbit/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--lowbit", default=os.path.join(HERE, "..", "build", "tools", "lowbit", "lowbit"))
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "alpaca", "alpaca_5000.json"))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "build", "smollm2-peft"))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup-ratio", type=float, default=0.03)
    ap.add_argument("--max-grad-norm", type=float, default=0.3)
    ap.add_argument("--source-max-len", type=int, default=384)
    ap.add_argument("--target-max-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2, help="lowbit's threads")
    # torch's OpenMP pool slows down ~10x with 2 threads on a loaded 2-core machine; 1 is steadier.
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--grad-tol", type=float, default=1e-4)
    ap.add_argument("--loss-tol", type=float, default=1e-3)
    ap.add_argument("--reuse-lowbit", action="store_true", help="keep OUT/lowbit's run if it is there")
    a = ap.parse_args()
    import peft

    torch.set_num_threads(a.torch_threads)
    torch.set_default_dtype(torch.float32)
    os.makedirs(a.out, exist_ok=True)
    model_dir = os.path.join(a.out, "model")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        sh([a.lowbit, "export", a.gguf, "--format", "hf", "--dtype", "f32", "-o", model_dir])

    # 2. PEFT's adapters: its init, then B nonzero.
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    torch.manual_seed(a.seed)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=0.0, bias="none",
                                                    target_modules=ALL7, task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(a.seed + 1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(0.01 * torch.randn(p.shape, generator=gen))
    init_dir = os.path.join(a.out, "init")
    pm.save_pretrained(init_dir)
    if os.path.exists(os.path.join(init_dir, "README.md")):
        os.remove(os.path.join(init_dir, "README.md"))  # PEFT's model card template

    # 3. lowbit's run.
    run_dir = os.path.join(a.out, "lowbit")
    batches_path = os.path.join(a.out, "batches.jsonl")
    grads_path = os.path.join(a.out, "grads_step1.safetensors")
    summary_path = os.path.join(run_dir, "lowbit_adapter.json")
    t0 = time.time()
    if not (a.reuse_lowbit and os.path.exists(summary_path)):
        sh([a.lowbit, "finetune", "--model", model_dir, "--data", a.data, "-o", run_dir, "--force",
            "--method", f"lora:r={a.r},alpha={a.alpha:g},dropout=0,targets=all", "--init-adapter", init_dir,
            "--steps", str(a.steps), "--batch", str(a.batch), "--grad-accum", str(a.grad_accum), "--lr", str(a.lr),
            "--warmup-ratio", str(a.warmup_ratio), "--max-grad-norm", str(a.max_grad_norm), "--weight-decay", "0",
            "--source-max-len", str(a.source_max_len), "--target-max-len", str(a.target_max_len),
            "--seed", str(a.seed), "--data-seed", str(a.data_seed), "--save-batches", batches_path,
            "--dump-grads", grads_path, "--threads", str(a.threads)])
    lowbit_seconds = time.time() - t0
    log = json.load(open(summary_path))["log"]
    lowbit_grads = load_file(grads_path)
    batches = read_batches(batches_path)
    assert sorted(batches) == list(range(1, a.steps + 1)), "the batches file does not hold every step"

    # 4. PEFT's run over the same batches.
    keys = list(peft.get_peft_model_state_dict(pm).keys())
    named = dict(pm.named_parameters())
    params = [named[param_name(k)] for k in keys]
    assert all(p.requires_grad for p in params) and len(params) == sum(p.requires_grad for p in pm.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, foreach=False)
    sched = transformers.get_constant_schedule_with_warmup(opt, num_warmup_steps=math.ceil(a.warmup_ratio * a.steps))
    steps = []
    grad_report = None
    t0 = time.time()
    for s in range(1, a.steps + 1):
        micro = batches[s]
        total = sum(int((tg >= 0).sum()) for _, tg in micro)
        loss_sum = 0.0
        for tokens, targets in micro:
            logits = pm(input_ids=tokens).logits
            l = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                                reduction="sum")
            (l / total).backward()
            loss_sum += float(l.detach())
        if s == 1:
            for k in keys:
                assert k in lowbit_grads, f"lowbit's gradient file has no '{k}'"
            peft_grads = {k: p.grad.detach().clone() for k, p in zip(keys, params)}
            grad_report = error_summary(lowbit_grads, peft_grads, keys)
            first_loss_peft = loss_sum / total
            print(f"step 1 gradients: {grad_report['tensors']} tensors, worst relative error "
                  f"{grad_report['worst_rel_err']:.3g} ({grad_report['worst']}), all together "
                  f"{grad_report['all_rel_err']:.3g}", flush=True)
        norm = float(torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm))
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        opt.zero_grad()
        rec = log[s - 1]
        steps.append({"step": s, "loss_peft": loss_sum / total, "loss_lowbit": rec["loss"],
                      "grad_norm_peft": norm, "grad_norm_lowbit": rec["grad_norm"], "lr_peft": lr,
                      "lr_lowbit": rec["lr"], "targets": total, "tokens": sum(t.numel() for t, _ in micro)})
        d = steps[-1]
        print(f"step {s}: loss peft {d['loss_peft']:.6f} lowbit {d['loss_lowbit']:.6f} diff "
              f"{d['loss_lowbit'] - d['loss_peft']:+.2e}; |g| peft {norm:.5f} lowbit {rec['grad_norm']:.5f}",
              flush=True)
    peft_seconds = time.time() - t0

    # The same step-1 gradient in float64: how far each fp32 computation is from it; and PEFT's
    # fp32 model with the cross-entropy in float64.
    loss64, grads64 = reference_gradients(model_dir, init_dir, keys, batches[1], steps[0]["targets"], torch.float64,
                                          torch.float64)
    fp64 = {"loss": loss64, "loss_err_lowbit": abs(log[0]["loss"] - loss64),
            "loss_err_peft": abs(first_loss_peft - loss64), "lowbit": error_summary(lowbit_grads, grads64, keys),
            "peft": error_summary(peft_grads, grads64, keys)}
    for side in ("lowbit", "peft"):
        e = fp64[side]
        print(f"step 1 against float64: {side} fp32 gradients worst relative error {e['worst_rel_err']:.3g} "
              f"({e['worst']}), median {e['median_rel_err']:.3g}, all together {e['all_rel_err']:.3g}; "
              f"loss error {fp64['loss_err_' + side]:.3g}", flush=True)
    loss_ce64, grads_ce64 = reference_gradients(model_dir, init_dir, keys, batches[1], steps[0]["targets"],
                                                torch.float32, torch.float64)
    ce64 = error_summary(lowbit_grads, grads_ce64, keys)
    ce64.update({"loss": loss_ce64, "loss_diff_lowbit": abs(log[0]["loss"] - loss_ce64),
                 "peft_fp32_loss_rel_err": error_summary(peft_grads, grads_ce64, keys)["worst_rel_err"]})
    print(f"step 1 against PEFT fp32 with the cross-entropy in float64: worst relative error "
          f"{ce64['worst_rel_err']:.3g} ({ce64['worst']}), median {ce64['median_rel_err']:.3g}, all together "
          f"{ce64['all_rel_err']:.3g}; loss diff {ce64['loss_diff_lowbit']:.3g}", flush=True)

    diffs = [abs(d["loss_lowbit"] - d["loss_peft"]) for d in steps]
    over = [d["step"] for d, x in zip(steps, diffs) if x > a.loss_tol]
    final_ref = peft.get_peft_model_state_dict(pm)
    final_lowbit = load_file(os.path.join(run_dir, "adapter_model.safetensors"))
    final = {k: rel(final_lowbit[k], final_ref[k]) for k in keys}
    worst_final = max(final, key=final.get)
    report = {
        "model": a.gguf, "r": a.r, "alpha": a.alpha, "steps": a.steps, "batch": a.batch, "grad_accum": a.grad_accum,
        "lr": a.lr, "warmup_steps": math.ceil(a.warmup_ratio * a.steps), "max_grad_norm": a.max_grad_norm,
        "threads": a.threads, "torch_threads": a.torch_threads,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "step1_gradients": grad_report, "step1_float64": fp64,
        "step1_fp32_loss_float64": ce64,
        "loss": {"max_abs_diff": max(diffs), "argmax_step": steps[diffs.index(max(diffs))]["step"],
                 "first_step_over_tol": over[0] if over else None, "steps_over_tol": len(over)},
        "grad_norm_max_rel_diff": max(abs(d["grad_norm_lowbit"] - d["grad_norm_peft"]) / d["grad_norm_peft"]
                                      for d in steps),
        "lr_max_abs_diff": max(abs(d["lr_lowbit"] - d["lr_peft"]) for d in steps),
        "final_adapters": {"worst": worst_final, "worst_rel_err": final[worst_final],
                           "median_rel_err": sorted(final.values())[len(final) // 2]},
        "seconds": {"lowbit": lowbit_seconds, "peft": peft_seconds},
        "steps_log": steps,
    }
    with open(os.path.join(a.out, "parity.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"(a) step-1 gradients of {grad_report['tensors']} tensors: worst relative error "
          f"{grad_report['worst_rel_err']:.3g} ({grad_report['worst']}), median {grad_report['median_rel_err']:.3g}, "
          f"all together {grad_report['all_rel_err']:.3g}")
    print(f"(b) {a.steps} steps: loss max |diff| {report['loss']['max_abs_diff']:.3g} (step "
          f"{report['loss']['argmax_step']}), gradient norm max relative diff {report['grad_norm_max_rel_diff']:.3g}, "
          f"final adapters worst relative error {final[worst_final]:.3g} ({worst_final}); "
          f"lowbit {lowbit_seconds:.0f} s, PEFT {peft_seconds:.0f} s")
    # The gradients are held to PEFT's fp32 model with the cross-entropy in float64: torch's fp32
    # cross-entropy over the 49,152-token vocabulary alone puts PEFT's plain fp32 gradients ~3e-4
    # from the float64 ones (and its loss 8e-6 off), where lowbit (which sums the softmax in
    # double) is within 2e-5.
    ok = ce64["worst_rel_err"] <= a.grad_tol and report["loss"]["max_abs_diff"] <= a.loss_tol
    print(f"gradient check against PEFT fp32 with the loss in float64: worst {ce64['worst_rel_err']:.3g}; against "
          f"float64: {fp64['lowbit']['worst_rel_err']:.3g} (PEFT fp32: {fp64['peft']['worst_rel_err']:.3g})")
    print("PASS" if ok else f"FAIL (tolerances: gradients {a.grad_tol}, loss {a.loss_tol})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
