#!/usr/bin/env python3
"""Reference logits and perplexities from transformers, for lowbit's parity tests.

Builds LlamaForCausalLM models with seeded random weights, saves them as Hugging Face
checkpoints and records transformers' fp32 logits (eager attention, no TF32) for fixed inputs:

  --mini DIR    small models committed as test fixtures (tests/fixtures/models): LLaMA-3-style
                (GQA, llama3 RoPE scaling with a short original context so the test sequence runs
                past it) in fp32 and bf16, LLaMA-2-style (MHA, default RoPE, untied) and a
                linear-RoPE one. Each gets logits.safetensors (tokens [T] I32, logits [T, V] F32).
  --full DIR    full-width models from the real configs (Llama-3.2-1B and 3B at depth 2, fp32 and
                bf16, and an untied 1B variant; a LLaMA-2-7B-shaped one at depth 2): logits for a
                fixed text, compared with `lowbit logits` when --lowbit is given, and WikiText2
                perplexity on the first windows, compared with `lowbit ppl`.
  --ppl-model   a trained checkpoint whose WikiText2 / PTB perplexity transformers computes in full.

Perplexity follows GPTQ's llama_eval: windows of 2048 tokens of the whole tokenized text, mean
cross-entropy per window, ppl = exp(mean of window means).
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def randomize(model, seed, emb_std):
    """Seeded weights: unit-scale activations, logits of standard deviation about 3 (clear top-1
    margins, and perplexities small enough to compare to 4 significant digits)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(emb_std * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def build(out_dir, cfg, dtype, seed):
    config = transformers.LlamaConfig(**cfg)
    model = transformers.LlamaForCausalLM(config)
    randomize(model, seed, 3.0 / math.sqrt(cfg["hidden_size"]))
    model = model.to(dtype)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def load_fp32(path, device):
    model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    return model.to(device).eval()


@torch.no_grad()
def logits_of(model, ids, device):
    return model(torch.tensor([ids], device=device)).logits[0].float().cpu()


def wikitext2_text(data_dir):
    with open(os.path.join(data_dir, "wikitext2", "wiki.test.raw"), encoding="utf-8", newline="") as f:
        return "\n\n".join(line if line.strip() else "" for line in f)


def ptb_text(data_dir, split, sep):
    with open(os.path.join(data_dir, "ptb", f"ptb.{split}.txt"), encoding="utf-8", newline="") as f:
        return sep.join(line.strip() for line in f)


@torch.no_grad()
def gptq_ppl(model, ids, seqlen, device, limit=None):
    n = len(ids) // seqlen
    if limit:
        n = min(n, limit)
    means = []
    for i in range(n):
        x = torch.tensor([ids[i * seqlen:(i + 1) * seqlen]], device=device)
        logits = model(x).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:], reduction="mean")
        means.append(loss.item())
    return {"ppl": math.exp(sum(means) / n), "windows": n, "tokens": n * seqlen, "window_nll": means}


def mini(args, device):
    base3 = dict(vocab_size=1024, hidden_size=128, intermediate_size=448, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=64, rms_norm_eps=1e-5,
                 max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                 rope_theta=500000.0,
                 rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    base2 = dict(vocab_size=1024, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-6, max_position_embeddings=512,
                 tie_word_embeddings=False, rope_theta=10000.0)
    lin = dict(base2, num_key_value_heads=2, rope_scaling={"rope_type": "linear", "factor": 4.0},
               tie_word_embeddings=True)
    specs = [("llama3-mini-f32", base3, torch.float32, 1), ("llama3-mini-bf16", base3, torch.bfloat16, 1),
             ("llama2-mini-f32", base2, torch.float32, 2), ("llama2-mini-f16", base2, torch.float16, 2),
             ("linear-mini-f32", lin, torch.float32, 3)]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1024, (192,), generator=g).tolist()
    report = {}
    for name, cfg, dtype, seed in specs:
        d = build(os.path.join(args.mini, name), cfg, dtype, seed)
        model = load_fp32(d, device)
        logits = logits_of(model, ids, device)
        save_file({"tokens": torch.tensor(ids, dtype=torch.int32), "logits": logits.contiguous()},
                  os.path.join(d, "logits.safetensors"))
        report[name] = {"dtype": str(dtype), "logit_abs_max": logits.abs().max().item()}
    return report


def run_lowbit(args, *cmd):
    out = subprocess.run([args.lowbit, *cmd], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"lowbit {' '.join(cmd)} failed: {out.stderr[-2000:]}")
    return out.stdout


def compare_logits(ref, got):
    diff = (ref - got).abs()
    return {"max_abs_err": diff.max().item(), "ref_abs_max": ref.abs().max().item(),
            "top1_agree": int((ref.argmax(-1) == got.argmax(-1)).sum().item()), "positions": ref.shape[0]}


def full(args, device):
    cfgdir = os.path.join(args.models_dir, "configs")
    l1 = json.load(open(os.path.join(cfgdir, "Llama-3.2-1B-finetune-bnb8.config.json")))
    l3 = json.load(open(os.path.join(cfgdir, "Llama-3.2-3B-Instruct.config.json")))
    keep = ["vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling", "max_position_embeddings",
            "tie_word_embeddings", "bos_token_id", "eos_token_id"]
    c1 = {k: l1[k] for k in keep if k in l1}
    c3 = {k: l3[k] for k in keep if k in l3}
    c1["num_hidden_layers"] = c3["num_hidden_layers"] = 2
    llama2 = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=2,
                  num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-5, rope_theta=10000.0,
                  max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    tok3 = [os.path.join(args.models_dir, "tokenizers", "llama3", f) for f in ("tokenizer.json", "tokenizer_config.json")]
    tok2 = [os.path.join(args.models_dir, "tokenizers", "llama2", "tokenizer.model")]
    specs = [("llama3.2-1b-depth2-f32", c1, torch.float32, tok3), ("llama3.2-1b-depth2-bf16", c1, torch.bfloat16, tok3),
             ("llama3.2-1b-depth2-untied-bf16", dict(c1, tie_word_embeddings=False), torch.bfloat16, tok3),
             ("llama3.2-3b-depth2-bf16", c3, torch.bfloat16, tok3),
             ("llama2-7b-shape-depth2-bf16", llama2, torch.bfloat16, tok2)]
    text = wikitext2_text(args.data_dir)
    report = {}
    for name, cfg, dtype, tok in specs:
        d = build(os.path.join(args.full, name), cfg, dtype, 7)
        for f in tok:
            shutil.copy(f, d)
        model = load_fp32(d, device)
        tk = transformers.AutoTokenizer.from_pretrained(d)
        # (Positions past the original context of llama3 RoPE scaling are covered by the mini fixtures.)
        ids = tk.encode(text[:4000], add_special_tokens=False)[:600]
        ref = logits_of(model, ids, device)
        r = {"tokens": len(ids)}
        enc = tk.encode(text)
        r["transformers_ppl"] = gptq_ppl(model, enc, 2048, device, limit=args.full_ppl_windows)
        if args.lowbit:
            path = os.path.join(args.full, name + ".logits.safetensors")
            run_lowbit(args, "logits", "--model", d, "--ids", ",".join(map(str, ids)), "-o", path)
            r["logits"] = compare_logits(ref, load_file(path)["logits"])
            out = run_lowbit(args, "ppl", "--model", d, "--data-dir", args.data_dir, "--limit",
                             str(args.full_ppl_windows), "--json")
            r["lowbit_ppl"] = json.loads(out)["ppl"]
        report[name] = r
        print(name, json.dumps(r)[:400], flush=True)
        del model
        shutil.rmtree(d)
    return report


def trained(args, device):
    d = args.ppl_model
    model = load_fp32(d, device)
    tk = transformers.AutoTokenizer.from_pretrained(d)
    report = {"tokenizer_class": type(tk).__name__}
    for name, text in [("wikitext2", wikitext2_text(args.data_dir)),
                       ("ptb", ptb_text(args.data_dir, "valid", "\n\n")),
                       ("ptb-new", ptb_text(args.data_dir, "test", " "))]:
        enc = tk.encode(text)
        r = gptq_ppl(model, enc, 2048, device)
        r["n_tokens"] = len(enc)
        r["first_ids"] = enc[:8]
        report[name] = r
        print(name, r["ppl"], r["windows"], flush=True)
    return report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--mini")
    ap.add_argument("--full")
    ap.add_argument("--full-ppl-windows", type=int, default=3)
    ap.add_argument("--ppl-model")
    ap.add_argument("--lowbit", help="a lowbit binary to compare with on this machine")
    ap.add_argument("--report", required=True)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__}, "device": device}
    if args.mini:
        report["mini"] = mini(args, device)
    if args.ppl_model:
        report["trained"] = trained(args, device)
    if args.full:
        report["full"] = full(args, device)
    with open(args.report, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
