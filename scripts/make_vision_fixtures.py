#!/usr/bin/env python3
"""Image-preprocessing reference for tests/unit/test_image_processor.cpp.

Writes small generated images of varied sizes, aspect ratios and modes under
tests/fixtures/vision/ (PNG: RGB, L, RGBA, P, 1-bit; JPEG: 4:2:0 colour, 4:4:4 colour, greyscale)
and runs transformers' LlavaNextImageProcessorPil (the PIL backend: PIL's bicubic resampling) on
each file as PIL opens it, with two processor configurations:

  small: size/crop 56, pinpoints [[56,112],[112,56],[112,112],[168,56],[56,168]] (the tiny model's)
         -> "<image>.small.pixel_values" float32 [N, 3, 56, 56] as the processor returns them
  real:  llava-hf/llama3-llava-next-8b-hf's preprocessor_config.json (336 px, its five pinpoints),
         for two of the images -> "<image>.real.levels" uint8 [N, 3, 336, 336]: the 8-bit level
         each value came from. The script checks, value by value, that the processor's float32
         equals float32((float32(level * (1/255)) - mean) / std) computed as transformers does, so
         the levels are a lossless encoding of the processor's output (a float32 fixture of
         336-px tiles would be megabytes).
  plus "select_best.real" int64 [n, 6]: (height, width, best pinpoint height, width, the size
  get_patch_output_size fits the image to) for a list of sizes, and "<image>.image_size" int64 [2] (height, width) and, for the JPEGs and the PNGs that are not
  plain RGB or greyscale, "<image>.rgb" uint8 [H, W, 3]: the image after the processor's RGB
  conversion (PIL's decoder, palette expansion, alpha compositing onto white).

Also writes a grey+alpha PNG, a palette PNG with a transparent entry and 16-bit RGB and RGBA PNGs,
whose RGB conversion alone is recorded, and two images lowbit must refuse as unsupported modes: a 16-bit greyscale PNG and a
CMYK JPEG.

  python3 scripts/make_vision_fixtures.py     # writes tests/fixtures/vision/{*.png,*.jpg,processor.safetensors.zst}
"""
import json
import os
import struct
import subprocess
import zlib

import numpy as np
import PIL
from PIL import Image
from safetensors.numpy import save_file
from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
from transformers.image_transforms import convert_to_rgb
from transformers.image_utils import ChannelDimension
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "vision")

SMALL = dict(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56},
             image_grid_pinpoints=[[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]])
# llava-hf/llama3-llava-next-8b-hf preprocessor_config.json
REAL = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
            image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]])
COMMON = dict(do_center_crop=True, do_convert_rgb=True, do_normalize=True, do_rescale=True, do_resize=True,
              do_pad=True, resample=3, rescale_factor=1 / 255,
              image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])


def scene(h, w, seed):
    """Smooth gradients, hard-edged shapes and mild noise: resampling has edges and ramps to get wrong."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * (x / max(w - 1, 1))
    g = 255 * (y / max(h - 1, 1))
    b = 128 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0)
    img = np.stack([r, g, b], -1)
    for _ in range(4):
        cy, cx, rad = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, max(4, min(h, w) / 3))
        img[(y - cy) ** 2 + (x - cx) ** 2 < rad ** 2] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 2, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_images():
    os.makedirs(OUT, exist_ok=True)
    files = {}
    a = scene(180, 240, 1)
    Image.fromarray(a).save(os.path.join(OUT, "rgb_240x180.png"))
    files["rgb_240x180.png"] = True
    a = scene(420, 150, 2)
    Image.fromarray(a).save(os.path.join(OUT, "tall_150x420.jpg"), quality=90, subsampling=2)  # 4:2:0
    files["tall_150x420.jpg"] = True
    a = scene(97, 333, 3)[..., 1]
    Image.fromarray(a, "L").save(os.path.join(OUT, "gray_333x97.png"))
    files["gray_333x97.png"] = False
    a = scene(48, 64, 4)
    alpha = np.clip(np.mgrid[0:48, 0:64][1] * 4, 0, 255).astype(np.uint8)
    Image.fromarray(np.dstack([a, alpha]), "RGBA").save(os.path.join(OUT, "rgba_64x48.png"))
    files["rgba_64x48.png"] = False
    a = scene(200, 200, 5)
    Image.fromarray(a).quantize(colors=32, method=Image.Quantize.MEDIANCUT).save(os.path.join(OUT, "palette_200x200.png"))
    files["palette_200x200.png"] = False
    a = scene(31, 45, 6)[..., 0] > 128
    Image.fromarray(a).save(os.path.join(OUT, "bilevel_45x31.png"))
    files["bilevel_45x31.png"] = False
    a = scene(300, 1100, 7)
    Image.fromarray(a).save(os.path.join(OUT, "wide_1100x300.jpg"), quality=85, subsampling=0)  # 4:4:4
    files["wide_1100x300.jpg"] = False
    a = scene(13, 20, 8)[..., 2]
    Image.fromarray(a, "L").save(os.path.join(OUT, "gray_20x13.jpg"), quality=95)
    files["gray_20x13.jpg"] = False
    # Modes whose RGB conversion alone is checked (".rgb", no pixel values): grey with alpha, and a
    # palette with a transparent entry (tRNS), both composited onto white.
    a = scene(20, 24, 11)
    alpha = np.clip(np.mgrid[0:20, 0:24][1] * 11, 0, 255).astype(np.uint8)
    Image.fromarray(np.dstack([a[..., 1], alpha]), "LA").save(os.path.join(OUT, "la_24x20.png"))
    p = Image.fromarray(a).quantize(colors=8, method=Image.Quantize.MEDIANCUT)
    p.save(os.path.join(OUT, "palette_trns_24x20.png"), transparency=3)
    # 16-bit colour PNGs (PIL cannot write them; a minimal encoder): PIL reads their high bytes.
    for ct, ch, name in [(2, 3, "rgb16_7x5.png"), (6, 4, "rgba16_7x5.png")]:
        a = np.random.default_rng(12 + ch).integers(0, 65536, (5, 7, ch), dtype=np.uint16)
        raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(5))
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 7, 5, 16, ct, 0, 0, 0)) +
                    png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))
    # Images lowbit refuses (unsupported modes), not run through the processor.
    Image.fromarray(scene(8, 8, 9)[..., 0].astype(np.uint16) * 257).save(os.path.join(OUT, "gray16_8x8.png"))
    Image.fromarray(scene(8, 8, 10)).convert("CMYK").save(os.path.join(OUT, "cmyk_8x8.jpg"))
    return files


def main():
    files = write_images()
    small = LlavaNextImageProcessorPil(**COMMON, **SMALL)
    real = LlavaNextImageProcessorPil(**COMMON, **REAL)
    mean = np.array(COMMON["image_mean"], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(COMMON["image_std"], dtype=np.float32).reshape(1, 3, 1, 1)
    tensors = {}
    for name, with_real in sorted(files.items()):
        with Image.open(os.path.join(OUT, name)) as im:
            im.load()
            # A lossless RGB/L file is its own reference; the wide JPEG's decoded pixels would be most of
            # the fixture (its pixel values still check the decoder).
            if (name.endswith(".jpg") and not name.startswith("wide")) or im.mode not in ("RGB", "L"):
                tensors[f"{name}.rgb"] = convert_to_rgb(im, return_numpy=True)
            tensors[f"{name}.image_size"] = np.array([im.height, im.width], dtype=np.int64)
            pv = small(im, return_tensors="np")["pixel_values"][0]
            tensors[f"{name}.small.pixel_values"] = np.ascontiguousarray(pv.astype(np.float32))
            if with_real:
                pv = real(im, return_tensors="np")["pixel_values"][0].astype(np.float32)
                levels = np.rint((pv * std + mean) * 255).astype(np.int64)
                assert levels.min() >= 0 and levels.max() <= 255
                again = (((levels.astype(np.float64) * (1 / 255)).astype(np.float32) - mean) / std).astype(np.float32)
                assert np.array_equal(again.view(np.uint32), pv.view(np.uint32)), name
                tensors[f"{name}.real.levels"] = levels.astype(np.uint8)
    # PIL's bicubic resize on its own, over random sizes both ways (both pass orders, up- and
    # downscaling, one axis alone): "resize.<i>" uint8 [h2, w2, 3] of a crop [h1, w1] of
    # rgb_240x180.png, with "resize.cases" int64 [n, 4] = (h1, w1, h2, w2).
    rng = np.random.default_rng(7)
    src = np.array(Image.open(os.path.join(OUT, "rgb_240x180.png")).convert("RGB"))
    cases = []
    for i in range(24):
        h1, w1 = int(rng.integers(1, 181)), int(rng.integers(1, 241))
        h2 = h1 if i % 6 == 0 else int(rng.integers(1, 49))
        w2 = w1 if i % 6 == 1 else int(rng.integers(1, 49))
        if (h2, w2) == (h1, w1):
            w2 = w1 + 1
        out = np.array(Image.fromarray(np.ascontiguousarray(src[:h1, :w1])).resize((w2, h2), Image.BICUBIC))
        tensors[f"resize.{i}"] = out
        cases.append([h1, w1, h2, w2])
    tensors["resize.cases"] = np.array(cases, dtype=np.int64)
    # select_best_resolution and get_patch_output_size on their own, over the real pinpoints:
    # rows (height, width, best height, best width, fitted height, fitted width).
    rows = []
    for h, w in [(420, 150), (180, 240), (97, 333), (1, 1), (1000, 10), (336, 336), (300, 1100), (13, 20),
                 (5000, 3000), (672, 672), (337, 1009), (700, 350)]:
        best = select_best_resolution((h, w), REAL["image_grid_pinpoints"])
        fit = get_patch_output_size(np.zeros((3, h, w), np.uint8), best, ChannelDimension.FIRST)
        rows.append([h, w, *best, *fit])
    tensors["select_best.real"] = np.array(rows, dtype=np.int64)
    for name in ["la_24x20.png", "palette_trns_24x20.png", "rgb16_7x5.png", "rgba16_7x5.png"]:
        with Image.open(os.path.join(OUT, name)) as im:
            im.load()
            tensors[f"{name}.rgb"] = convert_to_rgb(im, return_numpy=True)
            tensors[f"{name}.image_size"] = np.array([im.height, im.width], dtype=np.int64)
    meta = {"reference": json.dumps({"transformers_class": "LlavaNextImageProcessorPil", "pillow": PIL.__version__,
                                     "small": SMALL, "real": REAL, "common": COMMON})}
    path = os.path.join(OUT, "processor.safetensors")
    save_file(tensors, path, metadata=meta)
    subprocess.run(["zstd", "-19", "-f", "--rm", "-q", path], check=True)
    for k, v in sorted(tensors.items()):
        print(k, v.shape, v.dtype)


if __name__ == "__main__":
    main()
