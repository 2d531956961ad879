#!/usr/bin/env python3
"""LLaVA-Next parity reference for tests/model/test_llava_next.cpp.

Builds a tiny random-weight LlavaNextForConditionalGeneration in transformers, fp32 on the CPU:
  vision: CLIP ViT, 56-px images, 14-px patches (16 patches + CLS), hidden 32, 3 layers, 4 heads,
          quick-GELU; features from layer -2, strategy "default" (CLS dropped)
  projector: Linear(32 -> 64), GELU, Linear(64 -> 64), with biases
  text:   LLaMA, hidden 64, 2 layers, 4 heads, 2 KV heads, vocab 320, llama3 RoPE scaling
  pinpoints [[56,112],[112,56],[112,112],[168,56],[56,168]] (the small processor of
  scripts/make_vision_fixtures.py), image token 300.
Every weight is drawn at random (norm weights around 1), so no path is an identity.

For two images of tests/fixtures/vision (a tall JPEG and a wide JPEG: both branches of
unpad_image), preprocessed by LlavaNextImageProcessorPil, and a prompt of random text tokens
around the image's placeholder tokens (as many as the model's features), records:
  "<image>.input_ids" int32 [T], "<image>.image_features" float32 [N, 64] (packed: base tile,
  unpadded grid with newline columns), "<image>.logits" float32 [T, 320].
Writes tests/fixtures/llava_next/{config.json, preprocessor_config.json,
model.safetensors.zst, reference.safetensors.zst} and cli_tall_150x420.txt (the tall image's
input ids and generated ids as comma-separated lines, for tests/cli/test_vlm.sh).

  python3 scripts/make_llava_next_fixture.py
"""
import json
import os
import subprocess
import tempfile
import types

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_next.modeling_llava_next import LlavaNextModel, image_size_to_num_patches

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "llava_next")
IMAGES = os.path.join(HERE, "..", "tests", "fixtures", "vision")
PINPOINTS = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]
IMAGE_TOKEN = 300
GENERATE = 12
SIZES = [(1, 1), (13, 20), (150, 420), (420, 150), (300, 1100), (1100, 300), (336, 336), (337, 1009), (672, 672),
         (1000, 1), (1, 1000), (480, 640), (640, 480), (768, 1024), (1080, 1920), (2000, 3000), (97, 333),
         (500, 499), (999, 1000), (56, 57)]


def main():
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=56, patch_size=14, projection_dim=32, hidden_act="quick_gelu",
                              layer_norm_eps=1e-5)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=320, max_position_embeddings=1024, rms_norm_eps=1e-5,
                       rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                       rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    cfg = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                          image_grid_pinpoints=PINPOINTS, vision_feature_layer=-2,
                          vision_feature_select_strategy="default", projector_hidden_act="gelu",
                          multimodal_projector_bias=True, tie_word_embeddings=False)
    model = LlavaNextForConditionalGeneration(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "embedding" in name or "image_newline" in name:
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5 if p.dim() > 1 else 0.1 * torch.randn_like(p))

    proc = LlavaNextImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56},
                                      image_grid_pinpoints=PINPOINTS, do_center_crop=True, do_pad=True,
                                      resample=3, rescale_factor=1 / 255)
    rng = np.random.default_rng(0)
    tensors = {}
    for name in ["tall_150x420.jpg", "wide_1100x300.jpg"]:
        with Image.open(os.path.join(IMAGES, name)) as im:
            im.load()
            batch = proc(im, return_tensors="pt")
        with torch.no_grad():
            feats = model.model.get_image_features(batch["pixel_values"], batch["image_sizes"]).pooler_output[0]
        n = feats.shape[0]
        ids = [1] + list(rng.integers(3, 300, 5)) + [IMAGE_TOKEN] * n + list(rng.integers(3, 300, 7))
        input_ids = torch.tensor([ids], dtype=torch.long)
        with torch.no_grad():
            out = model(input_ids=input_ids, pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"])
        # Greedy decoding with transformers' generate (KV cache, image features in the prefill),
        # without stopping at EOS so that every step is compared.
        model.generation_config.eos_token_id = None
        with torch.no_grad():
            gen = model.generate(input_ids=input_ids, pixel_values=batch["pixel_values"],
                                 image_sizes=batch["image_sizes"], max_new_tokens=GENERATE, do_sample=False,
                                 pad_token_id=0)
        tensors[f"{name}.generated"] = gen[0, len(ids):].numpy().astype(np.int32)
        tensors[f"{name}.input_ids"] = np.array(ids, dtype=np.int32)
        tensors[f"{name}.image_features"] = feats.numpy().astype(np.float32)
        tensors[f"{name}.logits"] = out.logits[0].numpy().astype(np.float32)
        print(name, "image tokens", n, "sequence", len(ids))

    # The language model alone: text-only ids (no image tokens, no pixel values).
    text_ids = [1] + list(rng.integers(3, 300, 23))
    with torch.no_grad():
        tensors["text_only.logits"] = model(input_ids=torch.tensor([text_ids])).logits[0].numpy().astype(np.float32)
    tensors["text_only.input_ids"] = np.array(text_ids, dtype=np.int32)

    # Image token counts over many sizes, from transformers' own packing (pack_image_features on
    # zero features) for the tiny config and for LLaVA-Next-8B's (336-px tiles, 24 x 24 patches):
    # rows (height, width, tokens).
    for key, size, patch, pins in [("small", 56, 14, PINPOINTS),
                                   ("real", 336, 14, [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]])]:
        fake = types.SimpleNamespace(config=types.SimpleNamespace(
            vision_config=types.SimpleNamespace(image_size=size, patch_size=patch), image_grid_pinpoints=pins))
        rows = []
        for h, w in SIZES:
            n = image_size_to_num_patches((h, w), pins, size)
            feats = [torch.zeros(n, (size // patch) ** 2, 2)]
            _, lens = LlavaNextModel.pack_image_features(fake, feats, torch.tensor([[h, w]]), "default",
                                                         torch.zeros(2))
            rows.append([h, w, int(lens[0])])
        tensors[f"token_counts.{key}"] = np.array(rows, dtype=np.int64)

    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        proc.save_pretrained(tmp)
        for f in ["config.json", "preprocessor_config.json"]:
            with open(os.path.join(tmp, f)) as src, open(os.path.join(OUT, f), "w") as dst:
                dst.write(src.read())
        subprocess.run(["zstd", "-19", "-f", "-q", os.path.join(tmp, "model.safetensors"), "-o",
                        os.path.join(OUT, "model.safetensors.zst")], check=True)
    # The tall image's case as text, for the CLI test: input ids, then the generated ids.
    with open(os.path.join(OUT, "cli_tall_150x420.txt"), "w") as f:
        for key in ["input_ids", "generated"]:
            f.write(",".join(str(int(x)) for x in tensors[f"tall_150x420.jpg.{key}"]) + "\n")
    ref = os.path.join(OUT, "reference.safetensors")
    save_file(tensors, ref, metadata={"transformers": __import__("transformers").__version__,
                                      "torch": torch.__version__})
    subprocess.run(["zstd", "-19", "-f", "--rm", "-q", ref], check=True)


if __name__ == "__main__":
    main()
