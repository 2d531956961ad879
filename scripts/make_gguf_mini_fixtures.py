#!/usr/bin/env python3
"""Writes a GGUF copy of a random-weight fixture model (tests/fixtures/models, written by
scripts/make_model_fixtures.py --mini) for tests/unit/test_gguf.cpp:

  tests/fixtures/gguf/llama3-mini-bf16.gguf.zst  GQA (2 heads, 1 KV head), tied embeddings,
                                                 llama3 RoPE scaling (as a rope_freqs tensor)
(Other models of tests/fixtures/models convert too: add them to MODELS.)

The conversion follows llama.cpp's convert_hf_to_gguf.py for LlamaForCausalLM: the same metadata
keys, tensor names and types (1-D tensors F32, matrices in the checkpoint's 16-bit type), q/k rows
permuted by LlamaModel.permute, and llama3 scaling written as rope_freqs.weight by
LlamaModel.generate_extra_tensors. Each file is then checked against transformers' own GGUF loader
(which undoes the permutation independently): every tensor it reads must equal the Hugging Face
checkpoint's. The test compares lowbit's weights with the checkpoint's and its logits with the
checkpoint's transformers logits (tests/fixtures/models/*/logits.safetensors).

Usage: python3 scripts/make_gguf_mini_fixtures.py
"""
import json
import math
import os
import subprocess
import tempfile

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as T
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODELS = ["llama3-mini-bf16"]


def permute(w, n_head, n_head_kv):
    # convert_hf_to_gguf.py LlamaModel.permute
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(cfg, rope):
    # convert_hf_to_gguf.py LlamaModel.generate_extra_tensors
    base = rope.get("rope_theta", 10000.0)
    dim = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    low_wl, high_wl = old / low, old / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wl:
            out.append(1)
        elif wavelen > low_wl:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32)


NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
         "lm_head.weight": "output.weight"}
BLOCK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
         "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(hf):
    if hf in NAMES:
        return NAMES[hf]
    parts = hf.split(".")  # model.layers.N.<a>[.<b>].weight
    return f"blk.{parts[2]}.{BLOCK['.'.join(parts[3:-1])]}.weight"


def convert(src, out):
    cfg = json.load(open(os.path.join(src, "config.json")))
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim", cfg["hidden_size"] // n_head)
    w = gguf.GGUFWriter(out, arch="llama")
    w.add_name(os.path.basename(src))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_rope_dimension_count(head_dim)
    if rope_type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if "bf16" in src else gguf.LlamaFileType.MOSTLY_F16)
    # A placeholder vocabulary: these models have no tokenizer; the test feeds token ids.
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>".encode() for i in range(cfg["vocab_size"])])
    w.add_token_scores([0.0] * cfg["vocab_size"])
    w.add_token_types([1] * cfg["vocab_size"])
    sd = load_file(os.path.join(src, "model.safetensors"))
    if rope_type == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg, rope).numpy())
    for name in sorted(sd, key=lambda n: (n.split(".")[2].zfill(4) if n.startswith("model.layers.") else "", n)):
        t = sd[name]
        if name.endswith("q_proj.weight"):
            t = permute(t, n_head, n_head)
        elif name.endswith("k_proj.weight"):
            t = permute(t, n_head, n_kv)
        if t.ndim == 1:
            w.add_tensor(gguf_name(name), t.float().numpy())
        elif t.dtype == torch.bfloat16:
            raw = t.contiguous().view(torch.uint16).numpy().view(np.uint8)
            w.add_tensor(gguf_name(name), raw, raw_dtype=T.BF16)
        else:
            w.add_tensor(gguf_name(name), t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sd


def check_with_transformers(path, sd):
    m = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                             dtype=torch.float32)
    got = m.state_dict()
    for name, want in sd.items():
        assert torch.equal(got[name], want.float()), name
    print(f"  transformers reads {len(sd)} tensors of {os.path.basename(path)} equal to the checkpoint's")


def main():
    out_dir = os.path.join(ROOT, "tests", "fixtures", "gguf")
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            path = os.path.join(tmp, name + ".gguf")
            sd = convert(os.path.join(ROOT, "tests", "fixtures", "models", name), path)
            check_with_transformers(path, sd)
            dst = os.path.join(out_dir, name + ".gguf.zst")
            subprocess.run(["zstd", "-q", "-19", "-f", path, "-o", dst], check=True)
            print("wrote", dst, os.path.getsize(dst), "bytes")


if __name__ == "__main__":
    main()
