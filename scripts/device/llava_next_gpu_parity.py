#!/usr/bin/env python3
"""LLaVA-Next GPU parity: `lowbit vlm-logits --device cuda` (the CLIP tower, projector and LLaMA in
bf16 with fp32 accumulation) against transformers' LlavaNextForConditionalGeneration on the same GPU
in bf16 and in fp32, on a random-weight model with llava-hf/llama3-llava-next-8b-hf's dimensions
(CLIP ViT-L/14 at 336 px, LLaMA-3-8B: hidden 4096, 14336 MLP, 32 heads / 8 KV heads, vocabulary
128320, image token 128256, the five 336-px pinpoints) and fewer layers, on real images.

  python3 scripts/device/llava_next_gpu_parity.py LOWBIT [IMAGE...] [--dir DIR] [--text-layers 2]
      [--vision-layers 4] [--device cuda|cpu] [--shape real|tiny] [--build-only] [--save-dtype D]
      [--tokenizer TOKENIZER_JSON] [--ids-out DIR]

Per image, one JSON line: the token and image-token counts, max |diff| and top-1 agreement of
lowbit vs transformers bf16, lowbit vs transformers fp32, and transformers bf16 vs fp32 (what bf16
itself costs: the noise floor lowbit's bf16 differences are read against), the logits' range, and
lowbit's seconds. The prompt is token ids (no tokenizer ships with a random model): BOS, 8 random
ids, the image's tokens, 8 random ids, as scripts/llava_next_real_config_parity.py builds them.

The checkpoint is written once into --dir (fp32 by default: both sides round the same weights to
bf16) and reused by later runs with the same shape. --build-only writes it and stops (e.g. a
full-depth model, --text-layers 32 --vision-layers 24 --save-dtype bfloat16, for
llava_next_quantize_gpu.sh). --device cpu with --shape tiny (the fixture's small dimensions)
checks the script itself on a machine without a GPU: lowbit on the CPU, transformers on the CPU.
--ids-out writes each image's prompt ids (comma-separated, as `--ids` takes them) to
DIR/<image file name>.ids. --tokenizer copies a tokenizer.json beside the weights (for `vlm-generate --prompt` and
`quantize --calib`; any tokenizer whose ids fit the 128320-token vocabulary, e.g. the repository's
byte-level tests/fixtures/vlm/tokenizer.json or LLaMA-3's). Images default to the repository's
tests/fixtures/vision JPEGs and PNG.
"""
import argparse
import json
import os
import shutil
import subprocess
import time

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import load_file
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

try:  # transformers 5: the PIL processor (the PIL bicubic resize lowbit reproduces)
    from transformers.models.llava_next.image_processing_pil_llava_next import \
        LlavaNextImageProcessorPil as Processor
except ImportError:  # transformers 4
    from transformers import LlavaNextImageProcessor as Processor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE_TOKEN = 128256
# (vision, text, pinpoint unit): llava-hf/llama3-llava-next-8b-hf's dimensions, or small ones.
SHAPES = {
    "real": dict(tile=336, vision=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                       image_size=336, patch_size=14, projection_dim=768),
                 text=dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                           num_key_value_heads=8, vocab_size=128320, max_position_embeddings=8192)),
    "tiny": dict(tile=56, vision=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, image_size=56,
                                      patch_size=14, projection_dim=32),
                 text=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                           vocab_size=128320, max_position_embeddings=8192)),
}


def pinpoints(tile):
    return [[tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile], [3 * tile, tile], [tile, 3 * tile]]


def build(args):
    marker = os.path.join(args.dir, "layers.json")
    want = {"text": args.text_layers, "vision": args.vision_layers, "shape": args.shape, "dtype": args.save_dtype}
    if args.tokenizer:
        os.makedirs(args.dir, exist_ok=True)
        shutil.copyfile(args.tokenizer, os.path.join(args.dir, "tokenizer.json"))
    if os.path.exists(marker) and json.load(open(marker)) == want:
        return
    shape = SHAPES[args.shape]
    torch.manual_seed(0)
    vision = CLIPVisionConfig(num_hidden_layers=args.vision_layers, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                              **shape["vision"])
    text = LlamaConfig(num_hidden_layers=args.text_layers, rms_norm_eps=1e-5, rope_theta=500000.0,
                       tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128009, **shape["text"])
    cfg = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                          image_grid_pinpoints=pinpoints(shape["tile"]), vision_feature_layer=-2,
                          vision_feature_select_strategy="default", projector_hidden_act="gelu",
                          multimodal_projector_bias=True, tie_word_embeddings=False)
    dtype = getattr(torch, args.save_dtype)
    torch.set_default_dtype(dtype)  # a full-depth model is built in the dtype it is saved in
    # Built on the GPU when there is one: the initialization and the random draws of the 8B
    # config's ~8.4 billion parameters take seconds there and many minutes on the host.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlavaNextForConditionalGeneration(cfg).eval()
    torch.set_default_dtype(torch.float32)
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
    tile = shape["tile"]
    Processor(size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile},
              image_grid_pinpoints=pinpoints(tile)).save_pretrained(args.dir)
    json.dump(want, open(marker, "w"))
    del model


def compare(a, b):
    return {"max_abs": float((a - b).abs().max()), "top1": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lowbit")
    ap.add_argument("images", nargs="*")
    ap.add_argument("--dir", default="/tmp/llava-next-8b-config")
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="real")
    ap.add_argument("--save-dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--device", default="cuda", help="cuda (the parity run) or cpu (a check of the script)")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--tokenizer", help="a tokenizer.json to copy beside the weights")
    ap.add_argument("--ids-out", help="a directory for each image's prompt ids")
    args = ap.parse_intermixed_args()
    build(args)
    if args.build_only:
        print(json.dumps({"built": args.dir, "text_layers": args.text_layers, "vision_layers": args.vision_layers}))
        return
    images = args.images or [os.path.join(ROOT, "tests/fixtures/vision", f)
                             for f in ("tall_150x420.jpg", "wide_1100x300.jpg", "rgb_240x180.png")]
    proc = Processor.from_pretrained(args.dir)
    dev = torch.device(args.device)
    models = {}
    for dtype in (torch.bfloat16, torch.float32):
        models[dtype] = LlavaNextForConditionalGeneration.from_pretrained(
            args.dir, dtype=dtype, attn_implementation="sdpa").to(dev).eval()
    rng = np.random.default_rng(0)
    for path in images:
        with Image.open(path) as im:
            im.load()
            batch = proc(im.convert("RGB"), return_tensors="pt")
        pv, sizes = batch["pixel_values"].to(dev), batch["image_sizes"].to(dev)
        m32 = models[torch.float32]
        feats = m32.model.get_image_features(pv, sizes)
        feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats  # transformers 5 / 4
        n = int(feats[0].shape[0])
        ids = [128000] + list(map(int, rng.integers(1000, 100000, 8))) + [IMAGE_TOKEN] * n + \
            list(map(int, rng.integers(1000, 100000, 8)))
        if args.ids_out:
            os.makedirs(args.ids_out, exist_ok=True)
            with open(os.path.join(args.ids_out, os.path.basename(path) + ".ids"), "w") as f:
                f.write(",".join(map(str, ids)) + "\n")
        x = torch.tensor([ids], device=dev)
        ref = {}
        for dtype, model in models.items():
            ref[dtype] = model(input_ids=x, pixel_values=pv.to(dtype), image_sizes=sizes).logits[0].float()
        out = os.path.join(args.dir, "lowbit_logits.safetensors")
        t0 = time.time()
        run = subprocess.run([args.lowbit, "vlm-logits", "--model", args.dir, "--image", path, "--ids",
                              ",".join(map(str, ids)), "--device", args.device, "-o", out],
                             check=True, capture_output=True, text=True)
        seconds = time.time() - t0
        got = torch.from_numpy(load_file(out)["logits"]).to(dev)
        os.remove(out)
        res = {"image": os.path.basename(path), "device": args.device, "shape": args.shape,
               "text_layers": args.text_layers, "vision_layers": args.vision_layers,
               "tokens": len(ids), "image_tokens": n,
               "lowbit_vs_transformers_bf16": compare(got, ref[torch.bfloat16]),
               "lowbit_vs_transformers_fp32": compare(got, ref[torch.float32]),
               "transformers_bf16_vs_fp32": compare(ref[torch.bfloat16], ref[torch.float32]),
               "logit_range": float(ref[torch.float32].abs().max()),
               "lowbit_seconds": round(seconds, 2), "lowbit_stderr": run.stderr.strip().splitlines()[-1:]}
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
