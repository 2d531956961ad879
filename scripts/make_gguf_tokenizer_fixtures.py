#!/usr/bin/env python3
"""Write the fixtures that lowbit's GGUF tokenizer (src/formats/tokenizer_gguf.h) is tested against.

The reference is transformers' tokenizer built from a GGUF file,
AutoTokenizer.from_pretrained(dir, gguf_file=NAME), on these files:

  smollm2        SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-smollm2.sh): model gpt2, pre smollm
  llama3         a tokenizer-only GGUF written here from tokenizers/llama3/tokenizer.json the way
                 llama.cpp's convert_hf_to_gguf.py exports a BPE vocabulary: model gpt2, pre llama-bpe
  llama3-default the same vocabulary with pre "default" and add_bos_token/add_eos_token true
  llama2         a tokenizer-only GGUF written here from tokenizers/llama2/tokenizer.model the way
                 convert_hf_to_gguf.py exports a SentencePiece vocabulary: model llama, tokens,
                 scores and token types, no merges (transformers derives them from the scores)
  smollm2-tiny,  the first 1200 tokens of smollm2 / llama2 (with the merges among them, the
  llama2-tiny    scores, types and special ids), written as <case>.gguf beside the fixtures so
                 that the GGUF reading is tested without the 100 MB model
  llama2-renamed llama2-tiny with tokens 1 and 2 spelled <bos> and <eos> (LlamaTokenizer's own
                 <s> and </s> then get ids after the vocabulary)

Usage:
    python3 scripts/make_gguf_tokenizer_fixtures.py --data-dir DATA --models-dir MODELS \
        --smollm2 PATH/SmolLM2-135M-Instruct.Q4_1.gguf --out tests/fixtures/gguf_tokenizer

Output:
  <case>.data.json.zst   the GGUF's tokenizer metadata as lowbit's GgufTokenizerData (keys:
                         architecture, model, pre, tokens, scores, token_type, merges, bos_id,
                         eos_id, unk_id, pad_id, sep_id, add_bos_token, add_eos_token,
                         add_space_prefix, chat_template; absent keys omitted), read back from the
                         GGUF with the gguf package's reader. For llama3 the tokens, token types
                         and merges are replaced by their SHA-256 ("\\0" after each string; the
                         types as int32 little-endian) and "derive_from" names the tokenizer.json
                         the test rebuilds them from (tokens by id, CONTROL for the special added
                         tokens, NORMAL otherwise; the merges as listed). llama3-default shares
                         llama3's file and names its overrides in the manifest.
  <case>.<text>.ids.zst  int32 little-endian ids of the text (add_special_tokens=False), committed
                         where the compressed file is under --max-ids-bytes
  manifest.json          per case: the data file and overrides, per text the count and SHA-256 of
                         the ids, whether decode(encode(x)) == x, short texts encoded with and
                         without special tokens, the added tokens, bos/eos, the pipeline pieces
                         transformers built (normalizer, pre_tokenizer, decoder, post_processor,
                         model options) and the SHA-256 of its merges as "left right\\n" lines.
Texts (as lowbit builds them, see PROTOCOL.md and scripts/make_tokenizer_fixtures.py):
  wikitext2  lines of wikitext2/wiki.test.raw with "\\n" kept, whitespace-only lines as "", joined "\\n\\n"
  ptb        lines of ptb/ptb.test.txt stripped, joined "\\n\\n"
  stress     tests/fixtures/tokenizer/stress.txt
"""
import argparse
import hashlib
import json
import os
import shutil
import struct
import sys
import subprocess
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def wikitext2_text(data_dir):
    with open(os.path.join(data_dir, "wikitext2", "wiki.test.raw"), encoding="utf-8", newline="") as f:
        rows = [line if line.strip() else "" for line in f]
    return "\n\n".join(rows)


def ptb_text(data_dir):
    with open(os.path.join(data_dir, "ptb", "ptb.test.txt"), encoding="utf-8", newline="") as f:
        return "\n\n".join(line.strip() for line in f)


def write_tiny_llama_header(w, n_vocab):
    # transformers reads a model config from the file before it builds the tokenizer.
    w.add_context_length(2048)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(8)
    w.add_vocab_size(n_vocab)


def finish(w, n_vocab):
    w.add_tensor("token_embd.weight", np.zeros((n_vocab, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_llama3_gguf(path, tok_dir, pre, add_bos=None, add_eos=None):
    """convert_hf_to_gguf.py's get_vocab_base() + SpecialVocab for a BPE tokenizer.json."""
    import gguf
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    vocab = tok.get_vocab()
    n_vocab = max(vocab.values()) + 1
    reverse = {i: t for t, i in vocab.items()}
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        t = reverse[i]
        if t in added:
            if decoder[i].special:
                types.append(gguf.TokenType.CONTROL)
            else:
                t = t.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(t)
    w = gguf.GGUFWriter(path, "llama")
    write_tiny_llama_header(w, n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    sv = gguf.SpecialVocab(tok_dir, load_merges=True, n_vocab=n_vocab)
    if add_bos is not None:
        sv.add_special_token["bos"] = add_bos
    if add_eos is not None:
        sv.add_special_token["eos"] = add_eos
    sv.add_to_gguf(w)
    finish(w, n_vocab)


def write_llama2_gguf(path, model_file):
    """convert_hf_to_gguf.py's _create_vocab_sentencepiece() for a bare tokenizer.model."""
    import gguf
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=model_file)
    n = sp.vocab_size()
    tokens, scores, types = [], [], []
    for i in range(n):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        t = gguf.TokenType.NORMAL
        if sp.is_unknown(i):
            t = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            t = gguf.TokenType.CONTROL
        elif sp.is_unused(i):
            t = gguf.TokenType.UNUSED
        elif sp.is_byte(i):
            t = gguf.TokenType.BYTE
        types.append(t)
    w = gguf.GGUFWriter(path, "llama")
    write_tiny_llama_header(w, n)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_space_prefix(True)
    finish(w, n)


def write_tiny_gguf(path, data, keep, rename=None):
    """A tokenizer-only GGUF with the first `keep` tokens of `data` (read_tokenizer_data's dict),
    the merges among them, and every other key as it is; `rename` maps ids to new spellings."""
    import gguf
    tokens = data["tokens"][:keep]
    for i, t in (rename or {}).items():
        tokens[i] = t
    kept = set(tokens)
    merges = [m for m in data.get("merges", []) if
              all(p in kept for p in m.split(" ")) and m.replace(" ", "") in kept]
    w = gguf.GGUFWriter(path, data["architecture"])
    write_tiny_llama_header(w, keep)
    w.add_tokenizer_model(data["model"])
    if "pre" in data:
        w.add_tokenizer_pre(data["pre"])
    w.add_token_list(tokens)
    if "scores" in data:
        w.add_token_scores(data["scores"][:keep])
    w.add_token_types(data["token_type"][:keep])
    if merges:
        w.add_token_merges(merges)
    for key, add in (("bos_id", w.add_bos_token_id), ("eos_id", w.add_eos_token_id),
                     ("unk_id", w.add_unk_token_id), ("pad_id", w.add_pad_token_id),
                     ("add_bos_token", w.add_add_bos_token), ("add_eos_token", w.add_add_eos_token),
                     ("add_space_prefix", w.add_add_space_prefix), ("chat_template", w.add_chat_template)):
        if key in data and (not key.endswith("_id") or data[key] < keep):
            add(data[key])
    finish(w, keep)


def read_tokenizer_data(path):
    """The tokenizer metadata of a GGUF file, key by key, as lowbit's GgufTokenizerData."""
    import gguf
    r = gguf.GGUFReader(path)
    keys = {
        "general.architecture": "architecture", "tokenizer.ggml.model": "model", "tokenizer.ggml.pre": "pre",
        "tokenizer.ggml.tokens": "tokens", "tokenizer.ggml.scores": "scores",
        "tokenizer.ggml.token_type": "token_type", "tokenizer.ggml.merges": "merges",
        "tokenizer.ggml.bos_token_id": "bos_id", "tokenizer.ggml.eos_token_id": "eos_id",
        "tokenizer.ggml.unknown_token_id": "unk_id", "tokenizer.ggml.padding_token_id": "pad_id",
        "tokenizer.ggml.seperator_token_id": "sep_id", "tokenizer.ggml.add_bos_token": "add_bos_token",
        "tokenizer.ggml.add_eos_token": "add_eos_token", "tokenizer.ggml.add_space_prefix": "add_space_prefix",
        "tokenizer.chat_template": "chat_template",
    }
    out = {}
    for key, name in keys.items():
        f = r.fields.get(key)
        if f is None:
            continue
        v = f.contents()
        if name == "scores":
            # float32 values, written as the shortest decimal that reads back to the same float32
            v = [float(np.format_float_positional(np.float32(x), unique=True)) for x in v]
        out[name] = v
    return out


def zstd(raw):
    return subprocess.run(["zstd", "-19", "-q", "-c", f"--stream-size={len(raw)}"], input=raw, stdout=subprocess.PIPE, check=True).stdout


def pack(ids):
    return struct.pack(f"<{len(ids)}i", *ids)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--smollm2", required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--stress", default=os.path.join(HERE, "..", "tests", "fixtures", "tokenizer", "stress.txt"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-ids-bytes", type=int, default=100_000)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    import gguf
    import tokenizers
    import transformers

    with open(args.stress, encoding="utf-8", newline="") as f:
        stress = f.read()
    texts = {"wikitext2": wikitext2_text(args.data_dir), "ptb": ptb_text(args.data_dir), "stress": stress}

    work = tempfile.mkdtemp()
    tok_dir = os.path.join(args.models_dir, "tokenizers")
    cases = {}  # name -> (gguf dir, gguf name, data file, overrides)
    smol_dir = os.path.join(work, "smollm2")
    os.makedirs(smol_dir)
    os.symlink(os.path.abspath(args.smollm2), os.path.join(smol_dir, "model.gguf"))
    cases["smollm2"] = (smol_dir, "model.gguf", "smollm2", {})
    for name, kw, over in [("llama3", {"pre": "llama-bpe"}, {}),
                           ("llama3-default", {"pre": "default", "add_bos": True, "add_eos": True},
                            {"pre": "default", "add_bos_token": True, "add_eos_token": True})]:
        d = os.path.join(work, name)
        os.makedirs(d)
        write_llama3_gguf(os.path.join(d, "model.gguf"), os.path.join(tok_dir, "llama3"), **kw)
        cases[name] = (d, "model.gguf", "llama3", over)
    d = os.path.join(work, "llama2")
    os.makedirs(d)
    write_llama2_gguf(os.path.join(d, "model.gguf"), os.path.join(tok_dir, "llama2", "tokenizer.model"))
    cases["llama2"] = (d, "model.gguf", "llama2", {})
    # Small tokenizer-only GGUFs committed as they are, for the reader: SmolLM2's first 1200
    # tokens with the merges among them, and LLaMA-2's first 1200 pieces with their scores.
    # llama2-renamed: the same with <s> and </s> spelled <bos> and <eos>, so that LlamaTokenizer's
    # own <s> and </s> come after the vocabulary (data only).
    llama2_gguf = os.path.join(work, "llama2", "model.gguf")
    for name, src, keep, rename in (("smollm2-tiny", args.smollm2, 1200, None),
                                    ("llama2-tiny", llama2_gguf, 1200, None),
                                    ("llama2-renamed", llama2_gguf, 1200, {1: "<bos>", 2: "<eos>"})):
        d = os.path.join(work, name)
        os.makedirs(d)
        write_tiny_gguf(os.path.join(d, "model.gguf"), read_tokenizer_data(src), keep, rename)
        if name.endswith("-tiny"):
            shutil.copy(os.path.join(d, "model.gguf"), os.path.join(args.out, f"{name}.gguf"))
        cases[name] = (d, "model.gguf", name, {})

    manifest = {
        "versions": {"tokenizers": tokenizers.__version__, "transformers": transformers.__version__,
                     "gguf": getattr(gguf, "__version__", "?")},
        "smollm2_sha256": hashlib.sha256(open(args.smollm2, "rb").read()).hexdigest(),
        "cases": {},
    }
    short = ["Hello world", "", " ", "The quick brown fox", "  two leading spaces", "\n\nline", "Once upon a time",
             "<|begin_of_text|>Hi", "<s>Hi</s>", "<|im_start|>user\nHi<|im_end|>\n", "x<|endoftext|>y",
             " 12345 abc 3.14159", "caf\u00e9 \u00fcber \u4e2d\u6587 \U0001F600", "<bos>a<eos>b<unk>"]
    for name, (d, fname, data_name, over) in cases.items():
        data_file = f"{data_name}.data.json.zst"
        if not os.path.exists(os.path.join(args.out, data_file)) or data_name == name:
            data = read_tokenizer_data(os.path.join(d, fname))
            if data_name == "llama3":
                # The vocabulary is tokenizer.json's; the test rebuilds it from there and checks
                # it against these hashes instead of committing 1.4 MB of it.
                data["derive_from"] = "tokenizers/llama3/tokenizer.json"
                for key in ("tokens", "merges"):
                    data[key + "_sha256"] = hashlib.sha256("".join(t + "\0" for t in data.pop(key)).encode()).hexdigest()
                data["token_type_sha256"] = hashlib.sha256(pack(data.pop("token_type"))).hexdigest()
            raw = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
            with open(os.path.join(args.out, data_file), "wb") as f:
                f.write(zstd(raw))
        tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=fname)
        j = json.loads(tok.backend_tokenizer.to_str())
        merges = j["model"]["merges"]
        merge_lines = "".join(f"{m[0]} {m[1]}\n" if isinstance(m, list) else m + "\n" for m in merges)
        c = {
            "data": data_file, "overrides": over, "class": type(tok).__name__,
            "gguf": f"{name}.gguf" if name.endswith("-tiny") else None,
            "bos_token": tok.bos_token, "eos_token": tok.eos_token,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "add_bos_token": tok.add_bos_token, "add_eos_token": tok.add_eos_token,
            "vocab_size": len(tok),
            "pipeline": {k: j.get(k) for k in ("normalizer", "pre_tokenizer", "decoder", "post_processor")},
            "model": {k: v for k, v in j["model"].items() if k not in ("vocab", "merges")},
            "merges_count": len(merges),
            "merges_sha256": hashlib.sha256(merge_lines.encode()).hexdigest(),
            "added_tokens": [{k: a[k] for k in ("id", "content", "special")} for a in j["added_tokens"]],
            "texts": {}, "short_cases": [],
        }
        for text_name, text in texts.items():
            ids = tok.encode(text, add_special_tokens=False)
            raw = pack(ids)
            entry = {"count": len(ids), "sha256": hashlib.sha256(raw).hexdigest(),
                     "decode_roundtrip": tok.decode(ids, clean_up_tokenization_spaces=False) == text}
            comp = zstd(raw)
            if len(comp) <= args.max_ids_bytes:
                entry["ids"] = f"{name}.{text_name}.ids.zst"
                with open(os.path.join(args.out, entry["ids"]), "wb") as f:
                    f.write(comp)
            c["texts"][text_name] = entry
        for s in short:
            default = tok.encode(s)
            plain = tok.encode(s, add_special_tokens=False)
            c["short_cases"].append({"text": s, "default": default, "plain": plain,
                                     "decode_default": tok.decode(default, clean_up_tokenization_spaces=False)})
        manifest["cases"][name] = c
        print(name, c["class"], {t: (e["count"], e["decode_roundtrip"], "ids" in e) for t, e in c["texts"].items()},
              flush=True)

    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
    shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
