#!/usr/bin/env python3
"""Writes the GGUF reader and ggml dequantization fixtures (tests/unit/test_gguf.cpp).

Reference: the `gguf` package (llama.cpp's gguf-py): its GGUFWriter writes the file and its NumPy
quantizers/dequantizers (gguf.quants) give the blocks and the expected floats.

  tests/fixtures/gguf/quants.safetensors
      <TYPE>.blocks    U8  [rows, row_bytes]  packed ggml blocks
      <TYPE>.expected  F32 [rows, cols]       gguf.quants.dequantize of those blocks
    for F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (quantized from random floats) and Q2_K,
    Q3_K, Q4_K, Q5_K, Q6_K (random bytes with finite fp16 scales: gguf.quants cannot quantize
    them). Some scales are fp16 subnormals and negatives.
  tests/fixtures/gguf/reader.gguf
      metadata of every value type (and nested arrays), general.alignment 64, and one tensor
      "q.<TYPE>" of each type above holding the same blocks (dims [cols, rows], innermost first)
  tests/fixtures/gguf/reader.json
      the metadata the writer was given, and each tensor's name, dims and type id

It also writes the seed corpus of fuzz/fuzz_gguf.cpp (fuzz/corpus/gguf: the reader fixture, an
empty file and a 1-layer Q8_0 llama).

Usage: python3 scripts/make_gguf_fixtures.py [OUT_DIR]   (default tests/fixtures/gguf)
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from safetensors.numpy import save_file

rng = np.random.default_rng(20240601)

SIMPLE = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
KQUANTS = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
# Byte offsets of the fp16 scale fields in each K-quant block (ggml-common.h).
FP16_FIELDS = {T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}


def fp16_scales(n):
    """n finite fp16 scales: mostly ordinary magnitudes, with a few subnormals and negatives."""
    s = rng.uniform(1e-4, 0.5, n).astype(np.float16)
    s[rng.random(n) < 0.2] *= -1
    sub = rng.random(n) < 0.15
    s[sub] = (rng.integers(1, 1023, sub.sum()).astype(np.uint16)).view(np.float16)  # subnormal bit patterns
    return s


def blocks_for(t, rows, cols):
    bs, ts = GGML_QUANT_SIZES[t]
    if t == T.F32:
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        x[0, :4] = [0.0, -0.0, 1e-40, -3.0e38]
        return x.view(np.uint8).reshape(rows, cols * 4)
    if t in (T.F16, T.BF16):
        bits = rng.integers(0, 1 << 16, (rows, cols), dtype=np.uint32).astype(np.uint16)
        # keep values finite (exponent not all ones)
        exp_mask = 0x7C00 if t == T.F16 else 0x7F80
        bits[(bits & exp_mask) == exp_mask] &= np.uint16(~0x4000 & 0xFFFF)
        return bits.view(np.uint8).reshape(rows, cols * 2)
    if t in SIMPLE:
        x = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 3, (rows, 1))).astype(np.float32)
        x[0, :bs] = 0.0  # an all-zero block (d = 0)
        return gguf.quants.quantize(x, t)
    nb = rows * cols // bs
    raw = rng.integers(0, 256, (nb, ts), dtype=np.uint16).astype(np.uint8)
    for off in FP16_FIELDS[t]:
        raw[:, off:off + 2] = fp16_scales(nb).view(np.uint8).reshape(nb, 2)
    return raw.reshape(rows, cols // bs * ts)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "gguf")
    os.makedirs(out, exist_ok=True)
    tensors = {}
    qtensors = []
    for t in SIMPLE + KQUANTS:
        bs, _ = GGML_QUANT_SIZES[t]
        rows, cols = (3, 512) if bs == 256 else (4, 96 if bs == 32 else 64)
        blocks = blocks_for(t, rows, cols)
        expected = gguf.quants.dequantize(blocks, t).astype(np.float32)
        assert expected.shape == (rows, cols), (t.name, expected.shape)
        tensors[f"{t.name}.blocks"] = np.ascontiguousarray(blocks)
        tensors[f"{t.name}.expected"] = np.ascontiguousarray(expected)
        qtensors.append((t, blocks, rows, cols))
    save_file(tensors, os.path.join(out, "quants.safetensors"))

    w = gguf.GGUFWriter(os.path.join(out, "reader.gguf"), arch="lowbit-test")
    w.add_custom_alignment(64)
    V = gguf.GGUFValueType
    meta = [
        ("test.u8", 250, V.UINT8), ("test.i8", -120, V.INT8), ("test.u16", 65000, V.UINT16),
        ("test.i16", -32000, V.INT16), ("test.u32", 4000000000, V.UINT32), ("test.i32", -2000000000, V.INT32),
        ("test.f32", 0.15625, V.FLOAT32), ("test.bool", True, V.BOOL), ("test.string", "héllo, GGUF", V.STRING),
        ("test.u64", 2**63 + 5, V.UINT64), ("test.i64", -(2**62) - 3, V.INT64), ("test.f64", 2.718281828459045, V.FLOAT64),
        ("test.empty_string", "", V.STRING),
    ]
    arrays = [
        ("test.arr_i16", [-3, 0, 7, 32767], V.INT16), ("test.arr_u8", [1, 2, 255], V.UINT8),
        ("test.arr_f32", [0.5, -1.25, 3.0], V.FLOAT32), ("test.arr_f64", [1e-300, 2.5], V.FLOAT64),
        ("test.arr_i64", [-(2**40), 2**40], V.INT64), ("test.arr_u32", [0, 4294967295], V.UINT32),
        ("test.arr_bool", [True, False, True], V.BOOL), ("test.arr_str", ["a", "", "ñé 漢字"], V.STRING),
    ]
    for k, v, t in meta:
        w.add_key_value(k, v, t)
    for k, v, t in arrays:
        w.add_key_value(k, v, V.ARRAY, sub_type=t)
    nested = [[1, 2], [3], [4, 5, 6]]
    w.add_key_value("test.arr_nested", nested, V.ARRAY)
    for t, blocks, rows, cols in qtensors:
        w.add_tensor(f"q.{t.name}", blocks, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    desc = {
        "version": 3,
        "alignment": 64,
        "architecture": "lowbit-test",
        "scalars": [{"key": k, "type": t.name, "value": v} for k, v, t in meta],
        "arrays": [{"key": k, "type": t.name, "value": v} for k, v, t in arrays],
        "nested": {"key": "test.arr_nested", "value": nested},
        "tensors": [{"name": f"q.{t.name}", "ne": [cols, rows], "type": int(t)} for t, _, rows, cols in qtensors],
    }
    with open(os.path.join(out, "reader.json"), "w", encoding="utf-8") as f:
        json.dump(desc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    # Check the file with the package's own reader.
    r = gguf.GGUFReader(os.path.join(out, "reader.gguf"))
    for t, blocks, rows, cols in qtensors:
        rt = next(x for x in r.tensors if x.name == f"q.{t.name}")
        assert np.array_equal(np.asarray(rt.data).view(np.uint8).reshape(-1), blocks.reshape(-1)), t.name
        assert [int(n) for n in rt.shape] == [cols, rows], (t.name, rt.shape)
    print("wrote", out, ":", ", ".join(sorted(os.listdir(out))))
    write_fuzz_seeds(os.path.join(os.path.dirname(__file__), "..", "fuzz", "corpus", "gguf"), os.path.join(out, "reader.gguf"))


def write_fuzz_seeds(seeds, reader):
    """Seeds for fuzz/fuzz_gguf.cpp: the reader fixture, an empty file and a 1-layer llama."""
    os.makedirs(seeds, exist_ok=True)
    with open(reader, "rb") as src, open(os.path.join(seeds, "all_types.gguf"), "wb") as dst:
        dst.write(src.read())
    with open(os.path.join(seeds, "empty.gguf"), "wb") as f:
        f.write(b"GGUF" + (3).to_bytes(4, "little") + bytes(16))
    w = gguf.GGUFWriter(os.path.join(seeds, "tiny_llama.gguf"), arch="llama")
    H, F, V, heads, kv = 32, 64, 16, 2, 1
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(H)
    w.add_feed_forward_length(F)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(H // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_token_list([f"t{i}" for i in range(V)])
    hd = H // heads
    shapes = {"token_embd.weight": (V, H), "blk.0.attn_norm.weight": (H,), "blk.0.attn_q.weight": (heads * hd, H),
              "blk.0.attn_k.weight": (kv * hd, H), "blk.0.attn_v.weight": (kv * hd, H),
              "blk.0.attn_output.weight": (H, heads * hd), "blk.0.ffn_norm.weight": (H,),
              "blk.0.ffn_gate.weight": (F, H), "blk.0.ffn_up.weight": (F, H), "blk.0.ffn_down.weight": (H, F),
              "output_norm.weight": (H,)}
    for name, shape in shapes.items():
        x = rng.standard_normal(shape).astype(np.float32)
        if len(shape) == 1:
            w.add_tensor(name, x)
        else:
            w.add_tensor(name, gguf.quants.quantize(x, T.Q8_0), raw_dtype=T.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
