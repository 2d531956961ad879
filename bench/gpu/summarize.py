#!/usr/bin/env python3
"""Side-by-side summary of the GPU benchmarks (bench/gpu/*.sh).

  summarize.py ppl CONFIG TRANSFORMERS_JSON LOWBIT_JSON
  summarize.py gptq CONFIG LOWBIT_JSON [REFERENCE_JSON]
  summarize.py methods CONFIG WORK NAME...   (bench/gpu/methods_8b.sh: WORK/NAME/config.txt,
                                            lowbit.json, reference/reference_run.json)

Model FLOPs per token follow PaLM's accounting for a forward pass: 2 x (parameters of every
linear, LM head included) + 4 x layers x (heads x head_dim) x seqlen (attention scores and
values, no discount for the causal mask). MFU divides by the GPU's dense bf16 peak.
"""
import json
import os
import statistics
import sys

PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989.4e12, "H200": 989.4e12}


def peak_for(name):
    for key, value in PEAK_BF16.items():
        if key in name:
            return value, key
    return None, None


def flops_per_token(cfg, seqlen):
    h, f, layers, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or h // heads
    per_layer = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * f
    linear = layers * per_layer + h * v
    return 2 * linear + 4 * layers * heads * hd * seqlen


def load(path):
    with open(path) as f:
        text = f.read().strip()
    return json.loads(text)


def gib(b):
    return b / 2**30


def ppl(cfg_path, tf_path, lb_path):
    cfg = load(cfg_path)
    tf, lb = load(tf_path), load(lb_path)
    seqlen = lb.get("seqlen", 2048)
    fpt = flops_per_token(cfg, seqlen)
    peak, peak_name = peak_for(tf["device"])
    print(f"device: {tf['device']}; model FLOPs per token {fpt / 1e9:.2f} GFLOP (seqlen {seqlen})")
    print("| run | windows | seconds | tokens/s | MFU | after the first forward: seconds, tokens/s | PPL | peak GPU memory |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rates = []
    for name, r in (("transformers (sdpa, bf16, batch 1)", tf), (f"lowbit (batch {lb.get('batch', 1)})", lb)):
        w, t, s = r["windows"], r["tokens"], r["seconds"]
        first = r.get("first_forward", {"windows": 0, "seconds": 0.0})
        rest_s = s - first["seconds"]
        rest_rate = (w - first["windows"]) * (t / w) / rest_s if rest_s > 0 else float("nan")
        rates.append((t / s, rest_rate))
        mfu = f"{100 * fpt * t / s / peak:.1f}%" if peak else "n/a"
        print(f"| {name} | {w} | {s:.2f} | {t / s:,.0f} | {mfu} | {rest_s:.2f}, {rest_rate:,.0f} | {r['ppl']:.4f} | "
              f"{gib(r.get('peak_gpu_bytes', 0)):.1f} GiB |")
    print(f"lowbit / transformers tokens/s: {rates[1][0] / rates[0][0]:.2f}x over the whole pass, "
          f"{rates[1][1] / rates[0][1]:.2f}x after the first forward"
          + (f" (MFU against the {peak_name} dense bf16 peak, {peak / 1e12:.0f} TFLOP/s)" if peak else ""))


def gptq(cfg_path, lb_path, ref_path=None):
    cfg = load(cfg_path)
    lb = load(lb_path)
    layers = cfg["num_hidden_layers"]
    print(f"lowbit: GPTQ {lb['method']['spec']} of {layers} layers, calibration {lb['calibration']['nsamples']} x "
          f"{lb['calibration']['seqlen']}: {lb['wall_seconds']:.1f} s in all ({lb['quantize_seconds']:.1f} s quantizing), "
          f"peak GPU memory {gib(lb['peak_gpu_bytes']):.1f} GiB, peak host memory {gib(lb['peak_rss_bytes']):.1f} GiB, "
          f"on {lb['device']}")
    for ph in lb.get("phases", []):  # LOWBIT_PHASE_PROFILE=1: "a/b" runs within "a"
        print(f"  phase {ph['phase']:<40} {ph['seconds']:9.2f} s  ({ph['count']} x)")
    if ref_path:
        ref = load(ref_path)
        est = ref["estimated_model_seconds"]
        print(f"PyTorch reference: {', '.join(f'{s:.1f}' for s in ref['seconds_per_layer'])} s per layer over "
              f"{ref['layers_run']} layers -> {est:.0f} s estimated for {layers} layers, "
              f"peak GPU memory {gib(ref['peak_gpu_bytes']):.1f} GiB")
        print(f"speed-up: {est / lb['wall_seconds']:.1f}x")


def plural(n, word):
    return f"{n} {word}" if str(n) == "1" else f"{n} {word}s"


def lowbit_per_layer(lb, layers):
    """lowbit's seconds per decoder layer: its block_seconds, or (an older lowbit without them) the
    whole quantization's seconds spread over the layers."""
    if lb.get("block_seconds"):
        if len(lb["block_seconds"]) != layers:
            sys.exit(f"lowbit reports {len(lb['block_seconds'])} block times for a model of {layers} layers")
        return lb["block_seconds"]
    return [lb["quantize_seconds"] / layers] * layers


def methods(cfg_path, work, *names):
    cfg = load(cfg_path)
    layers = cfg["num_hidden_layers"]
    rows, devices, details = [], set(), []
    for name in names:
        d = os.path.join(work, name)
        with open(os.path.join(d, "config.txt")) as f:
            method, desc = f.read().split("\n")[:2]
        lb, ref = load(os.path.join(d, "lowbit.json")), load(os.path.join(d, "reference", "reference_run.json"))
        cal = lb["calibration"]
        if [cal["nsamples"], cal["seqlen"]] != ref["windows"]:
            sys.exit(f"{name}: lowbit calibrated on {cal['nsamples']} x {cal['seqlen']} tokens, the reference on "
                     f"{ref['windows'][0]} x {ref['windows'][1]}")
        if ref["model_layers"] != layers:
            sys.exit(f"{name}: the reference quantized a model of {ref['model_layers']} layers, not {layers}")
        lb_layers = lowbit_per_layer(lb, layers)
        ref_layers = ref["seconds_per_layer"]
        lb_s, ref_s = statistics.mean(lb_layers), statistics.mean(ref_layers)
        devices.add((lb["device"], ref["device_name"]))
        rows.append([method, f"{desc} (`{lb['method']['spec']}`)", f"{lb_s:.2f}", f"{ref_s:.2f}", f"{ref_s / lb_s:.1f}x",
                     f"{gib(lb['peak_gpu_bytes']):.1f} GiB" if lb.get("peak_gpu_bytes") else "n/a",
                     f"{gib(ref['peak_gpu_bytes']):.1f} GiB" if ref.get("peak_gpu_bytes") else "n/a"])
        details.append(f"{name}: lowbit {', '.join(f'{t:.2f}' for t in lb_layers)} s "
                       f"({lb['quantize_seconds']:.1f} s quantizing, {lb['wall_seconds']:.1f} s in all); "
                       f"reference {', '.join(f'{t:.2f}' for t in ref_layers)} s "
                       f"({ref['quantize_seconds']:.1f} s quantizing {plural(ref['layers_run'], 'layer')}, "
                       f"{ref.get('model_dtype', ref['dtype'])})")
        if lb.get("phases"):  # LOWBIT_PHASE_PROFILE=1: lowbit's wall seconds by phase ("a/b" within "a")
            details.append(f"{name}: lowbit phases " + ", ".join(f"{p['phase']} {p['seconds']:.2f} s"
                                                                  for p in lb["phases"]))
    if len(devices) != 1:
        sys.exit(f"the runs were made on different devices: {sorted(devices)}")
    (lb_dev, ref_dev), = devices
    first = load(os.path.join(work, names[0], "lowbit.json"))["calibration"]
    ref_layers = {load(os.path.join(work, n, "reference", "reference_run.json"))["layers_run"] for n in names}
    print(f"{cfg['hidden_size']} hidden, {cfg['intermediate_size']} intermediate, {cfg['num_attention_heads']} heads "
          f"({cfg.get('num_key_value_heads', cfg['num_attention_heads'])} KV), random weights; calibration "
          f"{first['nsamples']} x {first['seqlen']} PTB tokens, the same windows on both sides; lowbit on {lb_dev}, "
          f"the reference on {ref_dev}. Seconds per decoder layer (each layer's statistics, quantization and "
          f"propagation), averaged over lowbit's {plural(layers, 'layer')} and the reference's first "
          f"{plural('/'.join(str(n) for n in sorted(ref_layers)), 'layer')}.")
    print()
    head = ["method", "configuration", "lowbit s/layer", "reference s/layer", "reference / lowbit",
            "lowbit peak GPU memory", "reference peak GPU memory"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * 2 + "---:|" * (len(head) - 2))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    for line in details:
        print(line)


if __name__ == "__main__":
    if sys.argv[1] == "ppl":
        ppl(*sys.argv[2:5])
    elif sys.argv[1] == "methods":
        methods(*sys.argv[2:])
    else:
        gptq(*sys.argv[2:])
