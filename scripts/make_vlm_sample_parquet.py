#!/usr/bin/env python3
"""Small parquet files in the layout of the lmms-lab benchmark datasets (the columns lmms-eval
reads, the image as the datasets library stores it: a struct of bytes and path), a few items per
task with tiny PNG and JPEG images, for tests/cli/test_vlm_eval.sh to run through
scripts/vlm_parquet_to_jsonl.py and `lowbit vlm-eval`.

  python3 scripts/make_vlm_sample_parquet.py --images tests/fixtures/vision --out DIR
writes DIR/{ai2d,chartqa,docvqa,mmbench_en,mme}.parquet. Needs pyarrow.
"""
import argparse
import os

import pyarrow as pa
import pyarrow.parquet as pq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)

    def img(name):
        return {"bytes": open(os.path.join(a.images, name), "rb").read(), "path": name}

    png, jpg, rgba = img("la_24x20.png"), img("gray_20x13.jpg"), img("rgba_64x48.png")
    tables = {
        "ai2d": [
            {"question": "Which label shows the sun?", "options": ["A", "B", "C", "D"], "answer": "1", "image": png},
            {"question": "What eats the grasshopper?", "options": ["frog", "grass", "sun"], "answer": "0", "image": jpg},
            {"question": "Which is a producer?", "options": ["owl", "tree"], "answer": "1", "image": rgba},
        ],
        "chartqa": [
            {"type": "human_test", "question": "What is the highest value?", "answer": "42", "image": png},
            {"type": "augmented_test", "question": "Which year had the lowest sales?", "answer": "2019", "image": jpg},
        ],
        "docvqa": [
            {"questionId": 337, "question": "What is the date?", "question_types": ["form"], "docId": 279,
             "answers": ["March 5, 1968", "5 March 1968"], "data_split": "val", "image": jpg},
            {"questionId": 338, "question": "Who signed the letter?", "question_types": ["handwritten"], "docId": 280,
             "answers": ["Dr. Smith"], "data_split": "val", "image": png},
        ],
        "mmbench_en": [
            {"index": 0, "question": "What is the main object?", "hint": None, "A": "teddy bear", "B": "rabbit",
             "C": "cat", "D": "dog", "answer": "A", "category": "image_topic", "image": png, "source": "MMBench",
             "L2-category": "coarse_perception", "comment": None, "split": "dev"},
            {"index": 1, "question": "Which color is the car?", "hint": "The car is parked.", "A": "red", "B": "blue",
             "C": None, "D": None, "answer": "B", "category": "attribute_recognition", "image": jpg,
             "source": "MMBench", "L2-category": "finegrained_perception", "comment": None, "split": "dev"},
            {"index": 1000000, "question": "What is the main object?", "hint": None, "A": "rabbit", "B": "cat",
             "C": "dog", "D": "teddy bear", "answer": "D", "category": "image_topic", "image": png,
             "source": "MMBench", "L2-category": "coarse_perception", "comment": None, "split": "dev"},
        ],
        "mme": [
            {"question_id": "count/000.png", "image": png, "question": "Are there two cats? Please answer yes or no.",
             "answer": "Yes", "category": "count"},
            {"question_id": "count/000.png", "image": png, "question": "Are there three cats? Please answer yes or no.",
             "answer": "No", "category": "count"},
            {"question_id": "code_reasoning/001.png", "image": jpg,
             "question": "Does the code print 3? Please answer yes or no.", "answer": "No",
             "category": "code_reasoning"},
            {"question_id": "code_reasoning/001.png", "image": jpg,
             "question": "Does the code print 5? Please answer yes or no.", "answer": "Yes",
             "category": "code_reasoning"},
        ],
    }
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for task, rows in tables.items():
        cols = list(rows[0].keys())
        arrays = {}
        for c in cols:
            vals = [r[c] for r in rows]
            arrays[c] = pa.array(vals, type=image_type) if c == "image" else pa.array(vals)
        pq.write_table(pa.table(arrays), os.path.join(a.out, f"{task}.parquet"))
    print(f"wrote {len(tables)} parquet files to {a.out}")


if __name__ == "__main__":
    main()
