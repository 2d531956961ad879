#!/usr/bin/env python3
"""Fixture for lowbit's 8-bit packing of a dense matrix (pack::pack_q8_dense, the LM head of packed
execution): ggml's Q8_0 of the same matrix, computed by the gguf package's quantizer (bit-exact
with ggml-quants.c's quantize_row_q8_0_ref).

Writes tests/fixtures/pack/q8_dense.safetensors:
  w      F32 [rows, cols]       the matrix (normal values, an outlier per row, an all-zero block)
  codes  I8  [rows, cols]       Q8_0's qs, in column order
  d      F16 [rows, cols / 32]  Q8_0's block scales (ggml stores them in fp16)
  codes150, d150                the same for w[:, :150] padded with zeros to 160 columns (lowbit
                                pads a partial last block with zeros)
"""
import os

import numpy as np
from gguf import GGMLQuantizationType, quants
from safetensors.numpy import save_file

rows, cols = 7, 160
rng = np.random.default_rng(0)
w = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.05)
w[:, 3] *= 30  # one block per row whose scale an outlier sets
w[2, 64:96] = 0  # an all-zero block: d = 0, codes 0
w[4, 100] = 0.0125  # values on exact halves of the code grid test the rounding direction


def q8_0(m):
    q = quants.quantize(m, GGMLQuantizationType.Q8_0).reshape(rows, cols // 32, 34)
    assert np.allclose(quants.dequantize(q.reshape(rows, -1), GGMLQuantizationType.Q8_0), m,
                       atol=float(np.abs(m).max()) / 200)
    return q[:, :, 2:].copy().view(np.int8).reshape(rows, cols), q[:, :, :2].copy().view(np.float16).reshape(rows, -1)


codes, d = q8_0(w)
w150 = w.copy()
w150[:, 150:] = 0
codes150, d150 = q8_0(w150)
out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "pack", "q8_dense.safetensors")
save_file({"w": w, "codes": codes, "d": d, "codes150": codes150, "d150": d150}, out)
print(out, w.shape)
