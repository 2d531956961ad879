#!/usr/bin/env python3
"""LLaVA-Next parity at the real model's shapes: a random-weight LlavaNextForConditionalGeneration with
llava-hf/llama3-llava-next-8b-hf's dimensions (CLIP ViT-L/14 at 336 px, LLaMA-3-8B: hidden 4096,
14336 MLP, 32 heads / 8 KV heads, vocabulary 128320, image token 128256, the five 336-px pinpoints)
but fewer layers, fp32 on the CPU, on real images; lowbit's `vlm-logits` on the same checkpoint,
images and token ids; max |diff| of the logits and top-1 agreement per image.

Too large for a committed fixture (the embeddings and LM head alone are 4 GB in fp32); run by hand:

  python3 scripts/llava_next_real_config_parity.py --lowbit build/tools/lowbit/lowbit \\
      [--text-layers 2] [--vision-layers 4] [--dir /tmp/llava-next-real] IMAGE...

The checkpoint is written once into --dir and reused on later runs with the same layer counts.
"""
import argparse
import json
import os
import subprocess

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import load_file
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
IMAGE_TOKEN = 128256


def build(args):
    marker = os.path.join(args.dir, "layers.json")
    want = {"text": args.text_layers, "vision": args.vision_layers}
    if os.path.exists(marker) and json.load(open(marker)) == want:
        return LlavaNextForConditionalGeneration.from_pretrained(args.dir, dtype=torch.float32).eval()
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=args.vision_layers,
                              num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
                              hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=args.text_layers,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128320,
                       max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
                       tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128009)
    cfg = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                          image_grid_pinpoints=PINPOINTS, vision_feature_layer=-2,
                          vision_feature_select_strategy="default", projector_hidden_act="gelu",
                          multimodal_projector_bias=True, tie_word_embeddings=False)
    model = LlavaNextForConditionalGeneration(cfg).float().eval()
    with torch.no_grad():  # every weight random, norms around 1: no path is an identity
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "embedding" in name or "image_newline" in name or "embed_tokens" in name:
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    os.makedirs(args.dir, exist_ok=True)
    model.save_pretrained(args.dir, safe_serialization=True)
    LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                               image_grid_pinpoints=PINPOINTS).save_pretrained(args.dir)
    json.dump(want, open(marker, "w"))
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lowbit", required=True)
    ap.add_argument("--dir", default="/tmp/llava-next-real")
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    model = build(args)
    proc = LlavaNextImageProcessorPil.from_pretrained(args.dir)
    rng = np.random.default_rng(0)
    for path in args.images:
        with Image.open(path) as im:
            im.load()
            batch = proc(im, return_tensors="pt")
        with torch.no_grad():
            n = model.model.get_image_features(batch["pixel_values"], batch["image_sizes"]).pooler_output[0].shape[0]
        ids = [128000] + list(rng.integers(1000, 100000, 8)) + [IMAGE_TOKEN] * n + list(rng.integers(1000, 100000, 8))
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([ids]), pixel_values=batch["pixel_values"],
                        image_sizes=batch["image_sizes"]).logits[0].numpy()
        out = os.path.join(args.dir, "lowbit_logits.safetensors")
        subprocess.run([args.lowbit, "vlm-logits", "--model", args.dir, "--image", path, "--ids",
                        ",".join(map(str, ids)), "-o", out], check=True)
        got = load_file(out)["logits"]
        diff = np.abs(got - ref)
        top1 = (got.argmax(-1) == ref.argmax(-1)).mean()
        print(f"{os.path.basename(path)}: {len(ids)} tokens ({n} image), logits max|diff| {diff.max():.3g} "
              f"(|logit| up to {np.abs(ref).max():.3g}), mean |diff| {diff.mean():.3g}, top-1 {100 * top1:.2f}%")


if __name__ == "__main__":
    main()
