#!/usr/bin/env python3
"""Reference items and requests of the hellaswag_derived task: llama.cpp's HellaSwag text
(hellaswag/hellaswag_val_full.txt, described in the data directory's PROVENANCE.md), read as
llama.cpp's `perplexity --hellaswag` reads it (6 lines per task: context, gold label 0-3, the 4
endings, each line verbatim), with the requests built as lm-evaluation-harness builds HellaSwag's
(context, " " + ending; acc_norm by the ending's length). Independent of lowbit's parser.

  python3 scripts/make_hellaswag_derived_fixture.py --data-dir DATA --out tests/fixtures/mc/hellaswag_derived.json
"""
import argparse
import collections
import hashlib
import json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", default="0,1,2,3,4,1000,5000,10041", help="item indices to record")
    a = ap.parse_args()
    path = a.data_dir + "/hellaswag/hellaswag_val_full.txt"
    raw = open(path, "rb").read()
    # llama.cpp: std::getline over the file; the last line ends with "\n".
    lines = raw.decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    assert len(lines) % 6 == 0, len(lines)
    tasks = []
    for i in range(0, len(lines), 6):
        ctx, label, endings = lines[i], int(lines[i + 1]), lines[i + 2:i + 6]
        assert 0 <= label <= 3
        tasks.append({"contexts": [ctx], "continuations": [" " + e for e in endings], "choices": endings,
                      "gold": label})
    picked = []
    for k in [int(x) for x in a.items.split(",")]:
        t = dict(tasks[k])
        t["id"] = str(k)
        picked.append(t)
    out = {
        "file": "hellaswag/hellaswag_val_full.txt",
        "sha256": hashlib.sha256(raw).hexdigest(),
        "items_total": len(tasks),
        "gold_counts": [collections.Counter(t["gold"] for t in tasks)[g] for g in range(4)],
        "items": picked,
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{a.out}: {len(tasks)} tasks, gold counts {out['gold_counts']}, {len(picked)} items recorded")


if __name__ == "__main__":
    main()
