#!/usr/bin/env python3
"""Reference multiple-choice requests and log-likelihoods, built the way lm-evaluation-harness
0.4.x builds them (task YAMLs and utils for piqa, arc, hellaswag, winogrande, mmlu; HFLM
_encode_pair and _loglikelihood_tokens), scored with transformers in fp32, for lowbit's
item-level parity tests. Written from the harness's task definitions; the harness itself is not
needed.

  python3 scripts/make_mc_fixtures.py --model MODEL_DIR --data-dir DATA --out fixture.json
  python3 scripts/make_mc_fixtures.py ... --lowbit BIN      # also runs `lowbit eval` and compares

BOS follows the tokenizer's default (add_special_tokens=True, lowbit's --bos auto) unless
--bos off (add_special_tokens=False).
"""
import argparse
import csv
import json
import os
import re
import subprocess
import sys

import torch
import transformers

torch.backends.cuda.matmul.allow_tf32 = False

MMLU_SUBJECTS = ["abstract_algebra", "high_school_european_history", "college_physics", "marketing",
                 "professional_law", "high_school_psychology", "world_religions", "econometrics"]


# ---- tasks, as the harness's YAMLs define them ---------------------------------------------

def jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def item(task, iid, contexts, continuations, choices, gold, subject=""):
    return {"task": task, "id": iid, "contexts": contexts, "continuations": continuations, "choices": choices,
            "gold": gold, "subject": subject}


def piqa(d, n):
    docs = jsonl(os.path.join(d, "piqa", "valid.jsonl"))
    with open(os.path.join(d, "piqa", "valid-labels.lst")) as f:
        labels = [int(x) for x in f.read().split()]
    out = []
    for i, (doc, lab) in enumerate(list(zip(docs, labels))[:n]):
        choices = [doc["sol1"], doc["sol2"]]
        out.append(item("piqa", str(i), ["Question: {}\nAnswer:".format(doc["goal"])], [" " + c for c in choices],
                        choices, lab))
    return out


def arc(d, name, n):
    docs = jsonl(os.path.join(d, "arc", "ARC-V1-Feb2018", name, name + "-Test.jsonl"))[:n]
    out = []
    for doc in docs:
        texts = [c["text"] for c in doc["question"]["choices"]]
        labels = [c["label"] for c in doc["question"]["choices"]]
        out.append(item("arc_easy" if name == "ARC-Easy" else "arc_challenge", doc["id"],
                        ["Question: {}\nAnswer:".format(doc["question"]["stem"])], [" " + t for t in texts], texts,
                        labels.index(doc["answerKey"])))
    return out


def preprocess(text):
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag(path, n):
    out = []
    for i, doc in enumerate(jsonl(path)[:n]):
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        choices = [preprocess(e) for e in doc["endings"]]
        out.append(item("hellaswag", str(i), [preprocess(doc["activity_label"] + ": " + ctx)],
                        [" " + c for c in choices], choices, int(doc["label"])))
    return out


def winogrande(d, n):
    out = []
    for doc in jsonl(os.path.join(d, "winogrande", "winogrande_1.1", "dev.jsonl"))[:n]:
        s = doc["sentence"]
        idx = s.index("_")
        contexts = [s[:idx] + o for o in (doc["option1"], doc["option2"])]
        out.append(item("winogrande", doc["qID"], contexts, [" " + s[idx + 1:].strip()], contexts,
                        {"1": 0, "2": 1}[doc["answer"]]))
    return out


def mmlu_text(row):
    return "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:".format(row[0].strip(), row[1], row[2], row[3], row[4])


def mmlu(d, per_subject, shots=5):
    out = []
    for subject in MMLU_SUBJECTS:
        with open(os.path.join(d, "mmlu", "dev", subject + "_dev.csv"), newline="", encoding="utf-8") as f:
            dev = [r for r in csv.reader(f) if r]
        with open(os.path.join(d, "mmlu", "test", subject + "_test.csv"), newline="", encoding="utf-8") as f:
            test = [r for r in csv.reader(f) if r]
        desc = "The following are multiple choice questions (with answers) about {}.\n\n".format(
            " ".join(subject.split("_")))
        shots_text = "".join(mmlu_text(r) + " " + r[5] + "\n\n" for r in dev[:shots])
        for i, r in enumerate(test[:per_subject]):
            out.append(item("mmlu_" + subject, "{}/{}".format(subject, i), [desc + shots_text + mmlu_text(r)],
                            [" A", " B", " C", " D"], ["A", "B", "C", "D"], "ABCD".index(r[5]), subject))
    return out


# ---- HFLM's request encoding and scoring ----------------------------------------------------

def encode_pair(tok, context, continuation, special):
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok.encode(context + continuation, add_special_tokens=special)
    ctx = tok.encode(context, add_special_tokens=special)
    return ctx, whole[len(ctx):]


@torch.no_grad()
def loglik(model, ctx, cont, max_length, device):
    inp = (ctx + cont)[-(max_length + 1):][:-1]
    logits = model(torch.tensor([inp], device=device)).logits[0].float()
    logp = torch.log_softmax(logits.double(), -1)
    rows = logp[len(inp) - len(cont):]
    target = torch.tensor(cont, device=device)
    ll = rows.gather(1, target.unsqueeze(1)).sum().item()
    greedy = bool((rows.argmax(-1) == target).all().item())
    return ll, greedy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--hellaswag", help="a hellaswag_val.jsonl (default: the data directory's)")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--mmlu-per-subject", type=int, default=3)
    ap.add_argument("--bos", choices=["auto", "off"], default="auto")
    ap.add_argument("--out", required=True)
    ap.add_argument("--lowbit", help="a lowbit binary: run `lowbit eval` on the same items and compare")
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = transformers.AutoTokenizer.from_pretrained(a.model)
    model = transformers.LlamaForCausalLM.from_pretrained(a.model, dtype=torch.float32,
                                                          attn_implementation="eager").to(device).eval()
    max_length = model.config.max_position_embeddings
    hs = a.hellaswag or os.path.join(a.data_dir, "hellaswag", "hellaswag_val.jsonl")
    items = piqa(a.data_dir, a.n) + arc(a.data_dir, "ARC-Easy", a.n) + arc(a.data_dir, "ARC-Challenge", a.n)
    if os.path.exists(hs):
        items += hellaswag(hs, a.n)
    items += winogrande(a.data_dir, a.n) + mmlu(a.data_dir, a.mmlu_per_subject)
    special = a.bos == "auto"
    correct = {}
    for it in items:
        n = max(len(it["contexts"]), len(it["continuations"]))
        it["requests"], it["loglik"], it["greedy"] = [], [], []
        for i in range(n):
            c = it["contexts"][0 if len(it["contexts"]) == 1 else i]
            k = it["continuations"][0 if len(it["continuations"]) == 1 else i]
            ctx, cont = encode_pair(tok, c, k, special)
            ll, g = loglik(model, ctx, cont, max_length, device)
            it["requests"].append({"context_tokens": ctx, "continuation_tokens": cont})
            it["loglik"].append(ll)
            it["greedy"].append(g)
        it["pred"] = max(range(n), key=lambda j: (it["loglik"][j], -j))
        correct.setdefault(it["task"], []).append(1.0 if it["pred"] == it["gold"] else 0.0)
    report = {"model": a.model, "tokenizer_class": type(tok).__name__, "bos": a.bos,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
              "device": device, "accuracy": {t: sum(v) / len(v) for t, v in correct.items()}, "items": items}
    if a.lowbit:
        report["lowbit"] = compare_with_lowbit(a, items)
    with open(a.out, "w") as f:
        json.dump(report, f, indent=0)
    print(json.dumps({"accuracy": report["accuracy"], "lowbit": report.get("lowbit", {})}, indent=1))


def compare_with_lowbit(a, items):
    samples = a.out + ".lowbit.jsonl"
    tasks = sorted({it["task"] for it in items})
    limits = {}
    for it in items:
        limits[it["task"]] = limits.get(it["task"], 0) + 1
    got = {}
    for t in tasks:
        cmd = [a.lowbit, "eval", "--model", a.model, "--data-dir", a.data_dir, "--tasks", t, "--bos", a.bos,
               "--log-samples", samples, "--limit", str(limits[t])]
        if t == "hellaswag" and a.hellaswag:
            cmd[cmd.index("--data-dir") + 1] = os.path.dirname(os.path.dirname(a.hellaswag))
        subprocess.run(cmd, check=True, capture_output=True)
        with open(samples) as f:
            for line in f:
                j = json.loads(line)
                got[(j["task"], j["id"])] = j
    worst, mismatched_pred, n = 0.0, 0, 0
    for it in items:
        j = got.get((it["task"], it["id"]))
        if j is None:
            continue
        n += 1
        for x, y in zip(it["loglik"], j["loglik"]):
            worst = max(worst, abs(x - y))
        mismatched_pred += int(j["pred"] != it["pred"])
    return {"items_compared": n, "max_abs_loglik_diff": worst, "prediction_mismatches": mismatched_pred}


if __name__ == "__main__":
    sys.exit(main())
