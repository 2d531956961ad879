#!/usr/bin/env python3
"""Greedy decode speed of a LlamaForCausalLM in transformers (bf16, sdpa, the default dynamic KV
cache) on one GPU: the baseline bench/gpu/decode_8b.sh puts beside lowbit's packed decode.

  python3 transformers_decode.py CONFIG_JSON --prompt-tokens 128 --new 128 [--model DIR]

Without --model the weights are drawn at random on the GPU from CONFIG_JSON (the speed of a
dense bf16 forward does not depend on the values). Decode time is measured as lowbit's generate
measures it: the prompt's forward (which gives the first new token) timed apart, then the
one-token steps. Prints one JSON line: prompt and decode tokens/s, peak GPU memory.
"""
import argparse
import json
import time

import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--model", help="a checkpoint directory (else random weights from CONFIG)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up; the median is printed")
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.model:
        model = transformers.AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.bfloat16,
                                                                  attn_implementation="sdpa").cuda()
    else:
        cfg = json.load(open(a.config))
        config = transformers.LlamaConfig(**{k: v for k, v in cfg.items()
                                             if k not in ("architectures", "model_type", "torch_dtype")})
        config._attn_implementation = "sdpa"
        with torch.device("cuda"):
            model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.eval()
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (1, a.prompt_tokens), device="cuda")

    def one_round():
        with torch.no_grad():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(prompt, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            prompt_s = time.perf_counter() - t0
            past = out.past_key_values
            t0 = time.perf_counter()
            for _ in range(a.new - 1):
                out = model(nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            return prompt_s, time.perf_counter() - t0

    one_round()
    torch.cuda.reset_peak_memory_stats()
    rounds = sorted((one_round() for _ in range(a.rounds)), key=lambda r: r[1])
    prompt_s, decode_s = rounds[len(rounds) // 2]
    print(json.dumps({"engine": "transformers", "transformers": transformers.__version__, "torch": torch.__version__,
                      "gpu": torch.cuda.get_device_name(), "prompt_tokens": a.prompt_tokens,
                      "prompt_tokens_per_s": a.prompt_tokens / prompt_s, "decode_steps": a.new - 1,
                      "decode_tokens_per_s": (a.new - 1) / decode_s,
                      "peak_gpu_bytes": torch.cuda.max_memory_allocated()}))


if __name__ == "__main__":
    main()
