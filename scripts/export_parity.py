#!/usr/bin/env python3
"""Export parity: lowbit's exports unpacked by the consumers' own conventions.

For every quantized linear of a lowbit checkpoint this dequantizes each export the way its
consumer does and compares the result with lowbit:

  gptq                GPTQModel's / AutoGPTQ's torch dequantization (bit shifts over int32 words,
                      qzeros + 1 for checkpoint_format "gptq", scales[g_idx] * (w - zeros[g_idx]))
  awq                 AutoAWQ's own dequantize_gemm (awq/utils/packing_utils.py of the autoawq
                      package, loaded from its file: the package's __init__ needs a GPU stack);
                      and, for 4-bit v1 GPTQ beside an AWQ export, AutoAWQ's unpack_reorder_pack,
                      its AWQ -> GPTQ/ExLlama repacking (zero - 1), must give the GPTQ export's
                      qweight and qzeros bit for bit
  compressed-tensors  compressed_tensors' own PackedQuantizationCompressor.decompress
  gguf                the gguf package's dequantize (gguf.quants); Q4_1's held weights are
                      code * fp16(scale) + fp16(-scale * zero)

Two comparisons per linear and format:
  held   the consumer's fp32 weights == scale_f * (code - zero), computed here from the lowbit
         checkpoint's own tensors (qcodes unpacked LSB-first, scales, zeros, g_idx) with the
         scale rounded to the type the format stores (fp16; fp32 for compressed-tensors): exact,
         or the export is wrong.
  fq     the consumer's weights rounded to the model's 16-bit type == lowbit's fake-quant
         weights (the "hf" export): the number of differing weights and the largest difference,
         which is zero when the format stores the scales exactly.

Usage: export_parity.py --lowbit QDIR --hf HFDIR [--gptq DIR] [--awq DIR] [--ct DIR] [--gguf FILE]
Exits 1 when a "held" comparison fails, or a "fq" comparison does for an exact format
(compressed-tensors with fp32 scales). Prints one line per format.
"""
import argparse
import json
import sys

import numpy as np
import torch
from safetensors import safe_open


def load_st(path):
    out = {}
    with safe_open(path, "pt") as f:
        for k in f.keys():
            out[k] = f.get_tensor(k)
        meta = f.metadata()
    return out, meta


def unpack_lowbit_codes(packed, rows, cols, bits):
    # lowbit's qcodes: row r is ceil(cols*bits/8) bytes, code c at bits [c*bits, (c+1)*bits) LSB-first.
    b = packed.numpy().astype(np.uint8).reshape(rows, -1)
    bitsarr = np.unpackbits(b, axis=1, bitorder="little")[:, : cols * bits].reshape(rows, cols, bits)
    weights = (1 << np.arange(bits)).astype(np.int64)
    return torch.from_numpy((bitsarr.astype(np.int64) * weights).sum(-1))


def lowbit_linears(qdir):
    t, meta = load_st(f"{qdir}/model.safetensors")
    q = json.loads(meta["lowbit.quantization"])
    out = {}
    for base, lay in q["linears"].items():
        if lay["format"] != "int":
            continue
        rows, cols, bits, gs = lay["rows"], lay["cols"], lay["bits"], lay["group_size"]
        codes = unpack_lowbit_codes(t[base + ".qcodes"], rows, cols, bits)
        ngroups = (cols + gs - 1) // gs
        scales = t[base + ".scales"].reshape(rows, ngroups)
        zeros = t[base + ".zeros"].reshape(rows, ngroups)
        if base + ".g_idx" in t:
            g_idx = t[base + ".g_idx"].long()
        else:
            g_idx = torch.arange(cols) // gs
        out[base] = dict(codes=codes, scales=scales, zeros=zeros, g_idx=g_idx, bits=bits, rows=rows, cols=cols,
                         dtype=lay["dequant_dtype"])
    return out


def held(lin, scale_dtype):
    s = lin["scales"].to(scale_dtype).float()
    r = torch.arange(lin["rows"])[:, None]
    g = lin["g_idx"][None, :]
    return s[r, g] * (lin["codes"].float() - lin["zeros"][r, g])


TORCH_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


# GPTQModel / AutoGPTQ: qweight [in*b/32, out], qzeros [G, out*b/32], scales [G, out], g_idx [in].
def unpack_dense_words(words, n, bits):
    # words: int32 [..., W]; values packed LSB-first as one bit stream per row (AutoGPTQ's layout
    # for 2/4/8 bits, and the cross-word 3-bit layout of its pack()).
    w = words.numpy().view(np.uint32)
    bytes_ = w.astype("<u4").view(np.uint8).reshape(*w.shape[:-1], -1)
    bitsarr = np.unpackbits(bytes_, axis=-1, bitorder="little")[..., : n * bits]
    bitsarr = bitsarr.reshape(*w.shape[:-1], n, bits).astype(np.int64)
    return torch.from_numpy((bitsarr * (1 << np.arange(bits))).sum(-1))


def gptq_dequant(t, base, bits, v1, rows, cols):
    qweight, qzeros, scales, g_idx = (t[base + s] for s in (".qweight", ".qzeros", ".scales", ".g_idx"))
    if bits in (2, 4, 8):
        # GPTQModel's torch kernel: shifts by [0, b, 2b, ...] within each int32, mask 2^b - 1.
        wf = torch.arange(0, 32, bits, dtype=torch.int32)
        maxq = (1 << bits) - 1
        z = torch.bitwise_and(torch.bitwise_right_shift(qzeros.unsqueeze(2).expand(-1, -1, 32 // bits),
                                                         wf.unsqueeze(0)), maxq).reshape(scales.shape)
        w = torch.bitwise_and(torch.bitwise_right_shift(qweight.unsqueeze(1).expand(-1, 32 // bits, -1),
                                                        wf.unsqueeze(-1)), maxq).reshape(-1, qweight.shape[1])
    else:
        z = unpack_dense_words(qzeros, rows, bits)
        w = unpack_dense_words(qweight.t().contiguous(), cols, bits).t()
    if v1:
        z = z + 1
    g = g_idx.long()
    wt = scales.float()[g] * (w.float() - z.float()[g])  # [in, out]
    return wt.t()


def autoawq_packing():
    """AutoAWQ's packing_utils module, or None when the autoawq package is not installed."""
    import importlib.machinery
    import importlib.util
    import os
    spec = importlib.machinery.PathFinder.find_spec("awq")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "utils", "packing_utils.py")
    if not os.path.exists(path):
        return None
    mspec = importlib.util.spec_from_file_location("autoawq_packing_utils", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod


def awq_dequant(t, base, group):
    pu = autoawq_packing()
    if pu is not None:
        qweight, qzeros, scales = (t[base + s] for s in (".qweight", ".qzeros", ".scales"))
        g = group if group > 0 else qweight.shape[0]
        # fp32 arithmetic on the stored fp16 scale values, to compare exactly.
        return pu.dequantize_gemm(qweight, qzeros, scales.float(), 4, g).float().t()
    return awq_dequant_by_hand(t, base, group)


def awq_dequant_by_hand(t, base, group):
    qweight, qzeros, scales = (t[base + s] for s in (".qweight", ".qzeros", ".scales"))
    shifts = torch.arange(0, 32, 4)
    iw = torch.bitwise_right_shift(qweight[:, :, None], shifts[None, None, :]).to(torch.int8).view(qweight.shape[0], -1)
    iz = torch.bitwise_right_shift(qzeros[:, :, None], shifts[None, None, :]).to(torch.int8).view(qzeros.shape[0], -1)
    order = torch.arange(iw.shape[-1]).view(-1, 8)[:, [0, 4, 1, 5, 2, 6, 3, 7]].view(-1)
    iw = torch.bitwise_and(iw[:, order], 0xF)
    iz = torch.bitwise_and(iz[:, order], 0xF)
    if group < 0:
        group = iw.shape[0]
    iz = iz.repeat_interleave(group, dim=0)
    s = scales.float().repeat_interleave(group, dim=0)
    return ((iw.float() - iz.float()) * s).t()


def ct_dequant(t, base, cfg):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme, QuantizationArgs
    groups = cfg["config_groups"]
    module = base
    scheme = None
    for g in groups.values():
        if g["targets"] == ["Linear"] or module in g["targets"]:
            scheme = QuantizationScheme(targets=g["targets"], weights=QuantizationArgs(**g["weights"]))
    assert scheme is not None, base
    sd = {k[len(base) + 1:]: v for k, v in t.items() if k.startswith(base + ".weight")}
    out = PackedQuantizationCompressor.decompress(sd, scheme)
    w = out["weight"]
    if "weight_g_idx" in sd and w.shape == sd["weight_scale"].shape:
        raise AssertionError("unexpected")
    return w.float()


def ct_dequant_gidx(t, base, cfg, lin):
    # compressed-tensors with actorder "group": the weight's group of column c is g_idx[c]; its
    # decompress path applies g_idx through dequantize(..., g_idx=...) in the loaders; apply the
    # same formula here on its unpacked values.
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    bits = lin["bits"]
    shape = torch.Size(t[base + ".weight_shape"].tolist())
    q = unpack_from_int32(t[base + ".weight_packed"], bits, shape).float()
    s = t[base + ".weight_scale"]
    if base + ".weight_zero_point" in t:
        zp = unpack_from_int32(t[base + ".weight_zero_point"], bits, (shape[0], s.shape[1]), packed_dim=0).float()
    else:
        zp = torch.zeros_like(s, dtype=torch.float32)
    g = t[base + ".weight_g_idx"].long()
    return (q - zp[:, g]) * s.float()[:, g]


def compare(name, lin, got, scale_dtype, fq, stats):
    want = held(lin, scale_dtype)
    stats["held_n"] += 1
    if not torch.equal(got.float(), want):
        d = (got.float() - want).abs()
        stats["held_fail"].append(f"{name}: {int((d > 0).sum())} of {d.numel()} differ, max {float(d.max()):.3g}")
    rounded = got.float().to(TORCH_DTYPES[lin["dtype"]]).float()
    d = (rounded - fq.float()).abs()
    stats["fq_diff"] += int((d > 0).sum())
    stats["fq_max"] = max(stats["fq_max"], float(d.max()))
    stats["n"] += d.numel()


def new_stats():
    return {"held_fail": [], "held_n": 0, "fq_diff": 0, "fq_max": 0.0, "n": 0, "linears": 0}


def held_text(stats):
    if stats["held_fail"]:
        return "FAILED " + "; ".join(stats["held_fail"][:3])
    if stats["held_n"] < stats["linears"]:
        return f"exact for {stats['held_n']} (the others' type computes q * d + m, compared with the fake-quant only)"
    return "all exact"


def report(fmt, stats, exact):
    ok = not stats["held_fail"] and (not exact or stats["fq_diff"] == 0)
    print(f"{fmt}: {stats['linears']} linears, {stats['n']} weights; consumer == lowbit held weights: "
          f"{held_text(stats)}; "
          f"vs fake-quant: {stats['fq_diff']} differ (max {stats['fq_max']:.3g}){' [must be 0]' if exact else ''}"
          f" -> {'ok' if ok else 'FAIL'}")
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lowbit", required=True)
    ap.add_argument("--hf", required=True)
    ap.add_argument("--gptq")
    ap.add_argument("--awq")
    ap.add_argument("--ct")
    ap.add_argument("--gguf")
    a = ap.parse_args()
    lins = lowbit_linears(a.lowbit)
    hf, _ = load_st(f"{a.hf}/model.safetensors")
    ok = True
    if a.gptq:
        t, _ = load_st(f"{a.gptq}/model.safetensors")
        qc = json.load(open(f"{a.gptq}/quantize_config.json"))
        v1 = qc["checkpoint_format"] == "gptq"
        st = new_stats()
        for base, lin in lins.items():
            got = gptq_dequant(t, base, qc["bits"], v1, lin["rows"], lin["cols"])
            compare(base, lin, got, torch.float16, hf[base + ".weight"], st)
            st["linears"] += 1
        ok &= report("gptq", st, False)
    if a.awq:
        t, _ = load_st(f"{a.awq}/model.safetensors")
        qc = json.load(open(f"{a.awq}/config.json"))["quantization_config"]
        st = new_stats()
        for base, lin in lins.items():
            compare(base, lin, awq_dequant(t, base, qc["group_size"]), torch.float16, hf[base + ".weight"], st)
            st["linears"] += 1
        ok &= report("awq", st, False)
        pu = autoawq_packing()
        if a.gptq and pu is not None:
            g, _ = load_st(f"{a.gptq}/model.safetensors")
            gqc = json.load(open(f"{a.gptq}/quantize_config.json"))
            if gqc["bits"] == 4 and gqc["checkpoint_format"] == "gptq" and not gqc["desc_act"]:
                same = 0
                for base in lins:
                    qw, qz = pu.unpack_reorder_pack(t[base + ".qweight"], t[base + ".qzeros"], 4)
                    same += int(torch.equal(qw, g[base + ".qweight"]) and torch.equal(qz, g[base + ".qzeros"]))
                print(f"gptq vs AutoAWQ's unpack_reorder_pack of the awq export: {same} of {len(lins)} linears "
                      f"identical -> {'ok' if same == len(lins) else 'FAIL'}")
                ok &= same == len(lins)
        elif pu is None:
            print("awq: the autoawq package is not installed; unpacked by hand from AutoAWQ's conventions")
    if a.ct:
        t, _ = load_st(f"{a.ct}/model.safetensors")
        qc = json.load(open(f"{a.ct}/config.json"))["quantization_config"]
        st = new_stats()
        scale_dtype = None
        for base, lin in lins.items():
            got = ct_dequant_gidx(t, base, qc, lin) if base + ".weight_g_idx" in t else ct_dequant(t, base, qc)
            scale_dtype = t[base + ".weight_scale"].dtype
            compare(base, lin, got, scale_dtype, hf[base + ".weight"], st)
            st["linears"] += 1
        ok &= report("compressed-tensors", st, scale_dtype == torch.float32)
    if a.gguf:
        ok &= gguf_check(a.gguf, lins, hf)
    return 0 if ok else 1


def gguf_check(path, lins, hf):
    import gguf
    from gguf.quants import dequantize
    r = gguf.GGUFReader(path)
    tensors = {t.name: t for t in r.tensors}
    cfg_heads = int(r.fields["llama.attention.head_count"].parts[-1][0])
    cfg_kv = int(r.fields["llama.attention.head_count_kv"].parts[-1][0])
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    st = new_stats()
    exact_types = {"F32", "F16", "BF16", "Q8_0", "Q4_0"}
    for base, lin in lins.items():
        layer = int(base.split(".")[2])
        kind = ".".join(base.split(".")[3:])
        t = tensors[f"blk.{layer}.{names[kind]}.weight"]
        w = dequantize(t.data, t.tensor_type).reshape(lin["rows"], lin["cols"]).astype(np.float32)
        w = torch.from_numpy(w.copy())
        if kind in ("self_attn.q_proj", "self_attn.k_proj"):
            heads = cfg_heads if kind == "self_attn.q_proj" else cfg_kv
            d = lin["rows"] // heads
            # llama.cpp's converter stored HF row h*d + j*d/2 + i at h*d + 2i + j; undo it.
            idx = torch.arange(lin["rows"]).view(heads, 2, d // 2).transpose(1, 2).reshape(-1)
            back = torch.empty_like(idx)
            back[idx] = torch.arange(lin["rows"])
            w = w[back]
        tname = t.tensor_type.name
        if tname in exact_types and tname not in ("F32", "F16", "BF16"):
            compare(base, lin, w, torch.float16, hf[base + ".weight"], st)
        elif tname == "Q4_1":
            # ggml's q * d + m with d = fp16(scale), m = fp16(-scale * zero), in fp32.
            r = torch.arange(lin["rows"])[:, None]
            gi = lin["g_idx"][None, :]
            d = lin["scales"].to(torch.float16).float()[r, gi]
            m = (-lin["scales"] * lin["zeros"]).to(torch.float16).float()[r, gi]
            want = lin["codes"].float() * d + m
            st["held_n"] += 1
            if not torch.equal(w, want):
                dd = (w - want).abs()
                st["held_fail"].append(f"{base}: {int((dd > 0).sum())} differ from q * d + m, max {float(dd.max()):.3g}")
            rounded = w.to(TORCH_DTYPES[lin["dtype"]]).float()
            dq = (rounded - hf[base + ".weight"].float()).abs()
            st["fq_diff"] += int((dq > 0).sum())
            st["fq_max"] = max(st["fq_max"], float(dq.max()))
            st["n"] += dq.numel()
        else:
            rounded = w.to(TORCH_DTYPES[lin["dtype"]]).float()
            d = (rounded - hf[base + ".weight"].float()).abs()
            st["fq_diff"] += int((d > 0).sum())
            st["fq_max"] = max(st["fq_max"], float(d.max()))
            st["n"] += d.numel()
        st["linears"] += 1
    return report("gguf", st, False)


if __name__ == "__main__":
    sys.exit(main())
