#!/usr/bin/env python3
"""Reference gradients from PyTorch autograd, transformers and PEFT, for lowbit's training tests.

Writes tests/fixtures/train/ (all fp32, CPU, eager attention, no TF32):

  ops_backward.safetensors  each backward op of backend/ops_backward.h on seeded inputs: the
                            inputs, the upstream gradient `dy` and autograd's input gradients,
                            under keys "<op>.<case>.<tensor>". Shapes cross the forward's tile
                            edges (attention's blocks of 64 queries).
  tiny-llama3/              a LlamaForCausalLM with seeded random weights (GQA, llama3 RoPE
                            scaling run past its original context, untied LM head):
                            config.json + model.safetensors.
  tiny_grads.safetensors    one batch (tokens, targets shifted as lowbit takes them: -100 where
                            there is no target), transformers' mean cross-entropy over the target
                            tokens and the gradient of every parameter ("grad.<hf name>").
  tiny_lora.safetensors     PEFT LoRA over the same frozen model, two cases: "all" (r=4, alpha=8,
                            all seven linears) and "qv" (r=2, alpha=4, q_proj and v_proj): the
                            adapters (PEFT's init for A; B set to seeded random values so that A's
                            gradient is not zero), the loss and every adapter's gradient, under
                            "<case>.<peft key>" and "<case>.grad.<peft key>".
  tiny_train.safetensors    eight optimizer steps of LoRA training (PEFT r=4, alpha=8, all seven
                            linears, PEFT's init) with torch's AdamW (weight decay 0.01),
                            transformers' constant schedule with warmup ratio 0.2, clipping at
                            global norm 0.3 and two accumulated micro-batches per step, each
                            micro-batch's summed loss divided by the step's target tokens (the
                            Trainer's num_items_in_batch): the batches, the initial adapters, the
                            loss, gradient norm and learning rate of each step, the final adapters.
  alpaca_llama3.safetensors the first 40 records of ../shared/data/alpaca/alpaca_5000.json as
                            qlora.py's DataCollatorForCausalLM tokenizes them with the LLaMA-3
                            tokenizer (../shared/models/tokenizers/llama3): source = bos + Alpaca
                            prompt, target = output + eos, truncated separately, at the limits
                            384/128 and 48/16 ("l<src>.ids" concatenated, "l<src>.source_len",
                            "l<src>.len" per record).
  peft-adapter/              an adapter directory written by PEFT's save_pretrained (r=3,
                            alpha=6, q_proj, v_proj and down_proj, B seeded random), and
  tiny_peft.safetensors     the logits of the tiny model with that adapter on the batch's first
                            sequence ("logits" [70, V]) and the batch's loss ("loss").
  tiny_qlora.safetensors    QLoRA's frozen base: every linear of the tiny model quantized by
                            bitsandbytes' own quantize_4bit (NF4, blocksize 64, double
                            quantization) and decoded as NF4 code value (bnb's own table,
                            QuantState.code) x absmax (bnb's dequantize_blockwise of the
                            double-quantized absmax, plus its offset) ("bnb.<hf name>", fp32). Its
                            CPU dequantize_4bit is not used: in bitsandbytes 0.50.2 it disagrees
                            with its own codes on weights whose rows are not a multiple of the
                            block (max error 2.0 on unit-normal weights, against 0.45 for the
                            decoded codes). Then PEFT LoRA
                            (r=4, alpha=8, all seven linears, B seeded random) over that base: the
                            adapters, the loss and the adapter gradients ("qlora.*").

Usage: python3 scripts/make_train_fixtures.py [OUT_DIR]   (default tests/fixtures/train)
"""
import math
import os
import sys

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file

torch.backends.cuda.matmul.allow_tf32 = False
torch.set_default_dtype(torch.float32)

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "train")

TINY = dict(
    vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
    rope_theta=500000.0, bos_token_id=1, eos_token_id=2,
    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=32),
)


def g(seed):
    return torch.Generator().manual_seed(seed)


def randn(shape, seed, scale=1.0):
    return torch.randn(shape, generator=g(seed)) * scale


def grads_of(fn, inputs, dy):
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    y.backward(dy)
    return [l.grad for l in leaves]


def op_fixtures():
    out = {}
    # RMSNorm, transformers' LlamaRMSNorm arithmetic.
    def rmsnorm(x, w, eps=1e-5):
        var = x.pow(2).mean(-1, keepdim=True)
        return w * (x * torch.rsqrt(var + eps))
    for dim in (7, 64, 513):
        rows = 5
        x, w, dy = randn((rows, dim), 1), 1 + 0.1 * randn((dim,), 2), randn((rows, dim), 3)
        dx, dw = grads_of(rmsnorm, [x, w], dy)
        out.update({f"rmsnorm.d{dim}.x": x, f"rmsnorm.d{dim}.w": w, f"rmsnorm.d{dim}.dy": dy,
                    f"rmsnorm.d{dim}.dx": dx, f"rmsnorm.d{dim}.dw": dw})
    # Linear (torch's F.linear without bias).
    for rows, i, o in ((1, 1, 1), (3, 17, 5), (65, 33, 130)):
        c = f"r{rows}i{i}o{o}"
        x, w, dy = randn((rows, i), 4), randn((o, i), 5, 1 / math.sqrt(i)), randn((rows, o), 6)
        dx, dw = grads_of(lambda a, b: F.linear(a, b), [x, w], dy)
        out.update({f"linear.{c}.x": x, f"linear.{c}.w": w, f"linear.{c}.dy": dy, f"linear.{c}.dx": dx,
                    f"linear.{c}.dw": dw})
    # RoPE with llama3 scaling, transformers' own rotary embedding and apply_rotary_pos_emb.
    from transformers.models.llama import modeling_llama as ml
    cfg = transformers.LlamaConfig(**TINY)
    rot = ml.LlamaRotaryEmbedding(cfg)
    for T in (1, 70):
        heads, hd = 3, TINY["head_dim"]
        x, dy = randn((1, heads, T, hd), 7), randn((1, heads, T, hd), 8)
        pos = torch.arange(T)[None]
        cos, sin = rot(x, pos)
        def rope(a):
            return ml.apply_rotary_pos_emb(a, a, cos, sin)[0]
        (dx,) = grads_of(rope, [x], dy)
        # lowbit's layout: [T, heads * hd].
        lay = lambda t: t[0].transpose(0, 1).reshape(T, heads * hd).contiguous()
        out.update({f"rope.t{T}.x": lay(x), f"rope.t{T}.dy": lay(dy), f"rope.t{T}.dx": lay(dx)})
    # Causal GQA attention as transformers' eager path computes it (repeat_kv, fp32 softmax).
    for T in (1, 63, 64, 65, 130):
        nh, nkv, hd = 4, 2, 16
        q, k, v = randn((T, nh * hd), 9), randn((T, nkv * hd), 10), randn((T, nkv * hd), 11)
        dy = randn((T, nh * hd), 12)
        def attn(q_, k_, v_):
            qh = q_.view(T, nh, hd).transpose(0, 1)
            kh = k_.view(T, nkv, hd).transpose(0, 1).repeat_interleave(nh // nkv, dim=0)
            vh = v_.view(T, nkv, hd).transpose(0, 1).repeat_interleave(nh // nkv, dim=0)
            s = qh @ kh.transpose(1, 2) / math.sqrt(hd)
            s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
            p = torch.softmax(s, dim=-1, dtype=torch.float32)
            return (p @ vh).transpose(0, 1).reshape(T, nh * hd)
        dq, dk, dv = grads_of(attn, [q, k, v], dy)
        c = f"attention.t{T}"
        out.update({f"{c}.q": q, f"{c}.k": k, f"{c}.v": v, f"{c}.dy": dy, f"{c}.dq": dq, f"{c}.dk": dk,
                    f"{c}.dv": dv})
    # SwiGLU (LlamaMLP's act_fn(gate) * up).
    n = 1000
    gt, up, dy = randn((n,), 13, 3.0), randn((n,), 14), randn((n,), 15)
    dg, du = grads_of(lambda a, b: F.silu(a) * b, [gt, up], dy)
    out.update({"swiglu.n1000.gate": gt, "swiglu.n1000.up": up, "swiglu.n1000.dy": dy, "swiglu.n1000.dgate": dg,
                "swiglu.n1000.dup": du})
    # Cross-entropy, mean over the rows whose target is not -100 (transformers' loss).
    rows, V = 70, 300
    logits = randn((rows, V), 16, 3.0)
    tg = torch.randint(0, V, (rows,), generator=g(17))
    tg[torch.rand(rows, generator=g(18)) < 0.4] = -100
    lg = logits.clone().requires_grad_(True)
    loss = F.cross_entropy(lg, tg, ignore_index=-100)
    loss.backward()
    out.update({"xent.r70v300.logits": logits, "xent.r70v300.targets": tg.to(torch.int32),
                "xent.r70v300.loss": loss.detach().reshape(1), "xent.r70v300.dlogits": lg.grad})
    # Embedding rows (repeated tokens add up).
    V, H, n = 20, 8, 30
    table, toks, dy = randn((V, H), 19), torch.randint(0, V, (n,), generator=g(20)), randn((n, H), 21)
    (dt,) = grads_of(lambda t: F.embedding(toks, t), [table], dy)
    out.update({"embedding.v20.tokens": toks.to(torch.int32), "embedding.v20.dy": dy, "embedding.v20.dtable": dt})
    return {k: v.contiguous() for k, v in out.items()}


def build_tiny(out_dir):
    cfg = transformers.LlamaConfig(**TINY)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    gen = g(100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 3.0 / math.sqrt(TINY["hidden_size"]))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    return transformers.LlamaForCausalLM.from_pretrained(out_dir, dtype=torch.float32,
                                                         attn_implementation="eager").eval()


def tiny_batch():
    """Two sequences of 70 tokens: a source part without loss, a target part with loss, and (in
    the second) right padding without loss, as instruction tuning lays a batch out."""
    B, T = 2, 70
    ids = torch.randint(3, TINY["vocab_size"], (B, T), generator=g(200))
    labels = ids.clone()
    labels[0, :25] = -100
    labels[1, :40] = -100
    labels[1, 60:] = -100
    ids[1, 60:] = 0
    return ids, labels


def shifted_targets(labels):
    """lowbit's targets: position t predicts labels[t + 1]; the last position predicts nothing."""
    t = torch.full_like(labels, -100)
    t[:, :-1] = labels[:, 1:]
    return t.to(torch.int32)


def model_grads(model, ids, labels):
    model.zero_grad()
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    res = {"tokens": ids.to(torch.int32).contiguous(), "targets": shifted_targets(labels).contiguous(),
           "loss": out.loss.detach().reshape(1)}
    for name, p in model.named_parameters():
        res["grad." + name] = p.grad.detach().clone().contiguous()
    return res


def lora_case(model, ids, labels, case, r, alpha, targets, seed):
    import peft
    torch.manual_seed(seed)
    lcfg = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, bias="none",
                           task_type="CAUSAL_LM")
    pm = peft.get_peft_model(model, lcfg)
    gen = g(seed + 1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    out = pm(input_ids=ids, labels=labels)
    out.loss.backward()
    sd = peft.get_peft_model_state_dict(pm)
    res = {f"{case}.loss": out.loss.detach().reshape(1)}
    named = dict(pm.named_parameters())
    for key, val in sd.items():
        res[f"{case}.{key}"] = val.detach().clone().contiguous()
        # get_peft_model_state_dict drops the adapter name: ...lora_A.weight <- ...lora_A.default.weight
        pname = "base_model.model." + key[len("base_model.model."):].replace(".weight", ".default.weight")
        res[f"{case}.grad.{key}"] = named[pname].grad.detach().clone().contiguous()
    pm.unload()
    return res


def train_case(model, seed=500, steps=8, accum=2, B=2, T=40):
    import peft
    torch.manual_seed(seed)
    all7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=all7,
                                                    bias="none", task_type="CAUSAL_LM"))
    res = {f"train.init.{k}": v.detach().clone().contiguous() for k, v in peft.get_peft_model_state_dict(pm).items()}
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, foreach=False)
    sched = transformers.get_constant_schedule_with_warmup(opt, num_warmup_steps=math.ceil(0.2 * steps))
    gen = g(seed + 7)
    ids = torch.randint(3, TINY["vocab_size"], (steps * accum, B, T), generator=gen)
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
            l = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[i, :, 1:].reshape(-1),
                                ignore_index=-100, reduction="sum")
            (l / total).backward()
            loss_sum += float(l.detach())
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
    for k, v in peft.get_peft_model_state_dict(pm).items():
        res[f"train.final.{k}"] = v.detach().clone().contiguous()
    pm.unload()
    return res


ALPACA_PROMPT_DICT = {
    # qlora.py's templates.
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response: "
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response: "
    ),
}


def alpaca_case(shared, n=40):
    import json
    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(shared, "models", "tokenizers", "llama3"))
    with open(os.path.join(shared, "data", "alpaca", "alpaca_5000.json"), encoding="utf-8") as f:
        records = json.load(f)[:n]
    res = {}
    for smax, tmax in ((384, 128), (48, 16)):
        ids, slen, tot = [], [], []
        for r in records:
            key = "prompt_input" if r.get("input", "") != "" else "prompt_no_input"
            src = tok.bos_token + ALPACA_PROMPT_DICT[key].format(**r)
            tgt = r["output"] + tok.eos_token
            s = tok(src, max_length=smax, truncation=True, add_special_tokens=False)["input_ids"]
            t = tok(tgt, max_length=tmax, truncation=True, add_special_tokens=False)["input_ids"]
            ids += s + t
            slen.append(len(s))
            tot.append(len(s) + len(t))
        res[f"l{smax}.ids"] = torch.tensor(ids, dtype=torch.int32)
        res[f"l{smax}.source_len"] = torch.tensor(slen, dtype=torch.int32)
        res[f"l{smax}.len"] = torch.tensor(tot, dtype=torch.int32)
    return res


def peft_adapter_case(model, ids, labels, out_dir, seed=600):
    import peft
    torch.manual_seed(seed)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=3, lora_alpha=6, lora_dropout=0.0, bias="none",
                                                    target_modules=["q_proj", "v_proj", "down_proj"],
                                                    task_type="CAUSAL_LM"))
    gen = g(seed + 1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        pm.peft_config["default"].base_model_name_or_path = "tiny-llama3"
        pm.save_pretrained(out_dir)
        os.remove(os.path.join(out_dir, "README.md"))  # PEFT's model card template
        res = {"logits": pm(input_ids=ids[:1]).logits[0].contiguous(),
               "loss": pm(input_ids=ids, labels=labels).loss.reshape(1)}
    pm.unload()
    return res


def qlora_case(model, ids, labels, seed=700):
    import bitsandbytes.functional as bnbf
    import copy
    import peft
    base = copy.deepcopy(model)
    res = {}
    with torch.no_grad():
        for name, mod in base.named_modules():
            if isinstance(mod, torch.nn.Linear) and "lm_head" not in name:
                q, st = bnbf.quantize_4bit(mod.weight.data.contiguous(), blocksize=64, compress_statistics=True,
                                           quant_type="nf4")
                packed = q.reshape(-1)
                # Element 2k in the high nibble, 2k+1 in the low.
                codes = torch.stack([packed >> 4, packed & 15], 1).reshape(-1).long()[: mod.weight.numel()]
                absmax = bnbf.dequantize_blockwise(st.absmax, st.state2) + st.offset
                deq = (st.code[codes].reshape(-1, 64) * absmax.float().unsqueeze(1)).reshape(mod.weight.shape)
                mod.weight.copy_(deq)
                res[f"bnb.{name}.weight"] = deq.contiguous().clone()
    all7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    torch.manual_seed(seed)
    pm = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=all7,
                                                   bias="none", task_type="CAUSAL_LM"))
    gen = g(seed + 1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    out = pm(input_ids=ids, labels=labels)
    out.loss.backward()
    res["qlora.loss"] = out.loss.detach().reshape(1)
    named = dict(pm.named_parameters())
    for key, val in peft.get_peft_model_state_dict(pm).items():
        res[f"qlora.{key}"] = val.detach().clone().contiguous()
        pname = "base_model.model." + key[len("base_model.model."):].replace(".weight", ".default.weight")
        res[f"qlora.grad.{key}"] = named[pname].grad.detach().clone().contiguous()
    return res


def main():
    os.makedirs(OUT, exist_ok=True)
    save_file(op_fixtures(), os.path.join(OUT, "ops_backward.safetensors"))
    model = build_tiny(os.path.join(OUT, "tiny-llama3"))
    ids, labels = tiny_batch()
    save_file(model_grads(model, ids, labels), os.path.join(OUT, "tiny_grads.safetensors"))
    lora = {}
    all7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for p in model.parameters():
        p.requires_grad_(False)
    lora.update(lora_case(model, ids, labels, "all", 4, 8, all7, 300))
    lora.update(lora_case(model, ids, labels, "qv", 2, 4, ["q_proj", "v_proj"], 400))
    save_file(lora, os.path.join(OUT, "tiny_lora.safetensors"))
    save_file(train_case(model), os.path.join(OUT, "tiny_train.safetensors"))
    save_file(peft_adapter_case(model, ids, labels, os.path.join(OUT, "peft-adapter")),
              os.path.join(OUT, "tiny_peft.safetensors"))
    save_file(qlora_case(model, ids, labels), os.path.join(OUT, "tiny_qlora.safetensors"))
    shared = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")
    save_file(alpaca_case(shared), os.path.join(OUT, "alpaca_llama3.safetensors"))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
