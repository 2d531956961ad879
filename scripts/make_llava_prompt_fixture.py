#!/usr/bin/env python3
"""Prompt reference for LLaVA-NeXT's LLaMA-3 conversation (tests/unit/test_llava_prompt.cpp).

LLaVA-NeXT's llama3 models (llama3-llava-next-8b) were trained with the conversation
conv_llava_llama_3 of the LLaVA-NeXT repository, which lmms-eval's llava model applies: its system
message, the user turn "<image>\\n" + question, rendered with Meta-Llama-3's own chat template
(the tokenizer's, here from ../shared/models/tokenizers/llama3/tokenizer_config.json, through
transformers' apply_chat_template), then tokenized the way LLaVA-NeXT's tokenizer_image_token does:
the text split at each "<image>", each piece tokenized on its own, the image token(s) between them.
For each case: the rendered prompt and the ids with `count` copies of image id 128256 per image.
"processor_cases": the same prompts through transformers' LlavaNextProcessor (llava-hf's settings,
"<image>" an added token) with blank images of given sizes: its input_ids, image tokens expanded.

  python3 scripts/make_llava_prompt_fixture.py   # writes tests/fixtures/llava_next/prompts.json.zst
"""
import json
import os
import subprocess

from PIL import Image
from transformers import AutoTokenizer, LlavaNextProcessor
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "..", "..", "shared", "models", "tokenizers", "llama3")
OUT = os.path.join(HERE, "..", "tests", "fixtures", "llava_next", "prompts.json")
# conv_llava_llama_3's system message (LLaVA-NeXT, llava/conversation.py).
SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content that the "
          "user provides, and assist the user with a variety of tasks using natural language.")
IMAGE_ID = 128256

CASES = [
    ("What is shown in this image?", 1, [7]),
    ("Which option is correct?\nA. cat\nB. dog\nAnswer with the option's letter from the given choices directly.  ",
     1, [3]),
    ("  Compare the two charts. ", 2, [2, 4]),
    ("Describe the scene — quickly, s'il vous plaît.", 1, [1]),
]


def main():
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    out = []
    for question, n_images, counts in CASES:
        messages = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": "<image>\n" * n_images + question}]
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        pieces = prompt.split("<image>")
        ids = []
        for i, piece in enumerate(pieces):
            ids += tok(piece, add_special_tokens=False).input_ids
            if i < len(pieces) - 1:
                ids += [IMAGE_ID] * counts[i]
        out.append({"question": question, "n_images": n_images, "counts": counts, "prompt": prompt, "ids": ids})
    # The same prompts through transformers' LlavaNextProcessor as llava-hf's checkpoints configure it
    # (336-px tiles, patch 14, "default" strategy, one CLS token; "<image>" an added token, id
    # 128256), with blank images of given sizes: the input_ids it writes, image tokens expanded.
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    assert tok.convert_tokens_to_ids("<image>") == IMAGE_ID
    proc = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
            image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]),
        tokenizer=tok, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    processor_cases = []
    for case, sizes in zip(out, [[(480, 640)], [(1080, 1920)], [(97, 333), (600, 200)], [(336, 336)]]):
        images = [Image.new("RGB", (w, h)) for h, w in sizes]
        ids = proc(images=images, text=case["prompt"], return_tensors="np")["input_ids"][0].tolist()
        processor_cases.append({"prompt": case["prompt"], "sizes": sizes, "ids": ids})
    with open(OUT, "w") as f:
        json.dump({"system": SYSTEM, "image_token_id": IMAGE_ID, "cases": out, "processor_cases": processor_cases},
                  f, separators=(",", ":"), ensure_ascii=False)
        f.write("\n")
    subprocess.run(["zstd", "-19", "-f", "--rm", "-q", OUT], check=True)


if __name__ == "__main__":
    main()
