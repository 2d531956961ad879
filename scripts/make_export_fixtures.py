#!/usr/bin/env python3
"""Fixtures for tests/unit/test_export.cpp: int32 packings computed by the consumers' own code.

  dense_b{1..8}        compressed_tensors' pack_to_int32 (pack-quantized's packing, used along
                       rows): values U8 [5, 70] (unsigned, < 2^b) -> words I32 [5, ceil(70b/32)]
  gptq_b{2,4,8}        AutoAWQ's pack_exllama (GPTQ/ExLlama layout): iweight [64, 16] and izeros
                       [2, 16] -> qweight I32 [64b/32, 16] packed along rows, qzeros I32
                       [2, 16b/32] packed along columns (values as given: the caller subtracts 1
                       for GPTQ v1)
  awq_words/awq_values AutoAWQ's unpack_awq + reverse_awq_order: random words I32 [6, 4] ->
                       values [6, 32] in output order; packing the values back in AWQ's order must
                       give the words

Writes tests/fixtures/export/packing.safetensors. Needs torch, compressed-tensors and autoawq
(its packing_utils.py is loaded from its file; the package's __init__ needs a GPU stack).
"""
import importlib.machinery
import importlib.util
import os

import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
from safetensors.torch import save_file


def autoawq_packing():
    spec = importlib.machinery.PathFinder.find_spec("awq")
    path = os.path.join(list(spec.submodule_search_locations)[0], "utils", "packing_utils.py")
    mspec = importlib.util.spec_from_file_location("autoawq_packing_utils", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod


def main():
    g = torch.Generator().manual_seed(21)
    out = {}
    for b in range(1, 9):
        v = torch.randint(0, 1 << b, (5, 70), generator=g, dtype=torch.int32)
        out[f"dense_b{b}_values"] = v.to(torch.uint8)
        out[f"dense_b{b}_words"] = pack_to_int32((v - (1 << (b - 1))).to(torch.int8), b)
    pu = autoawq_packing()
    for b in (2, 4, 8):
        w = torch.randint(0, 1 << b, (64, 16), generator=g, dtype=torch.int32)
        z = torch.randint(0, 1 << b, (2, 16), generator=g, dtype=torch.int32)
        qw, qz = pu.pack_exllama(w, z, b)
        out[f"gptq_b{b}_iweight"] = w.to(torch.uint8)
        out[f"gptq_b{b}_izeros"] = z.to(torch.uint8)
        out[f"gptq_b{b}_qweight"] = qw.contiguous()
        out[f"gptq_b{b}_qzeros"] = qz.contiguous()
    words = torch.randint(-(1 << 31), (1 << 31) - 1, (6, 4), generator=g, dtype=torch.int64).to(torch.int32)
    iw, _ = pu.unpack_awq(words, words[:1], 4)
    iw, _ = pu.reverse_awq_order(iw, words[:1].repeat(1, 8)[:, :32].to(torch.int8), 4)
    out["awq_words"] = words
    out["awq_values"] = torch.bitwise_and(iw.to(torch.int32), 0xF).to(torch.uint8).contiguous()
    here = os.path.dirname(os.path.abspath(__file__))
    save_file(out, os.path.join(here, "..", "tests", "fixtures", "export", "packing.safetensors"))


if __name__ == "__main__":
    main()
