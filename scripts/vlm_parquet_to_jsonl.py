#!/usr/bin/env python3
"""Converts a vision-language benchmark's Hugging Face parquet files (the lmms-lab datasets
lmms-eval loads: lmms-lab/ai2d, lmms-lab/ChartQA, lmms-lab/DocVQA, lmms-lab/MMBench, lmms-lab/MME)
into the layout `lowbit vlm-eval` reads: OUT/TASK.jsonl, one JSON object per row with the
dataset's columns, and each row's image written to OUT/TASK_images/NNNNNN.png|jpg with its path
(relative to the jsonl) in the "image" field.

  python3 scripts/vlm_parquet_to_jsonl.py --task ai2d --out DIR FILE.parquet [FILE.parquet ...]

e.g. for DocVQA, the DocVQA config's validation-*.parquet files; for MMBench, the en config's
dev-*.parquet files. Rows keep the files' order (the order lmms-eval evaluates). Values map to
JSON as pandas would show them to lmms-eval's code: a missing value (NaN/None) becomes null, lists
stay lists. PNG and JPEG bytes are written as they are; an image in another format is converted
with Pillow to RGB (what lmms-eval's doc_to_visual hands the model: .convert("RGB")) and written
as PNG. Needs pyarrow (and Pillow for such images).
"""
import argparse
import json
import math
import os
import sys

TASKS = {"ai2d", "chartqa", "docvqa", "mmbench_en", "mme"}


def image_bytes(value, where):
    """The bytes of an HF Image cell ({"bytes": ..., "path": ...}) or a raw binary cell."""
    if isinstance(value, dict):
        data = value.get("bytes")
        if data is None and value.get("path") and os.path.exists(value["path"]):
            data = open(value["path"], "rb").read()
    else:
        data = value
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise SystemExit(f"{where}: the image column holds no image bytes")
    return bytes(data)


def write_image(data, path_noext):
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        path = path_noext + ".png"
        open(path, "wb").write(data)
    elif data[:3] == b"\xff\xd8\xff":
        path = path_noext + ".jpg"
        open(path, "wb").write(data)
    else:
        import io

        from PIL import Image

        path = path_noext + ".png"
        Image.open(io.BytesIO(data)).convert("RGB").save(path)
    return path


def plain(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (bytes, bytearray)):
        return None
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, choices=sorted(TASKS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--image-column", default="image")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    import pyarrow.parquet as pq

    os.makedirs(a.out, exist_ok=True)
    img_dir_name = f"{a.task}_images"
    os.makedirs(os.path.join(a.out, img_dir_name), exist_ok=True)
    out_path = os.path.join(a.out, f"{a.task}.jsonl")
    tmp = out_path + ".tmp"
    n = 0
    with open(tmp, "w", encoding="utf-8") as out:
        for file in a.files:
            pf = pq.ParquetFile(file)
            if a.image_column not in pf.schema_arrow.names:
                raise SystemExit(f"{file}: no column '{a.image_column}' (columns: {', '.join(pf.schema_arrow.names)})")
            row_in_file = 0
            for batch in pf.iter_batches(batch_size=64):
                for row in batch.to_pylist():
                    where = f"{file} row {row_in_file}"
                    data = image_bytes(row.pop(a.image_column), where)
                    path = write_image(data, os.path.join(a.out, img_dir_name, f"{n:06d}"))
                    doc = {k: plain(v) for k, v in row.items()}
                    doc["image"] = os.path.relpath(path, a.out)
                    out.write(json.dumps(doc, ensure_ascii=False) + "\n")
                    n += 1
                    row_in_file += 1
    os.replace(tmp, out_path)
    print(f"{out_path}: {n} items", file=sys.stderr)


if __name__ == "__main__":
    main()
