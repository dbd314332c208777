#!/usr/bin/env python3
"""Seed corpora for the libFuzzer harnesses of tests/fuzz/ (scripts/fuzz.sh).

    make_seeds.py FIXTURES OUT

Writes OUT/<harness>/ for each harness: the small fixtures of
tests/fixtures as they are (configs, specs, chat templates, tokenizer
variants, .npy files), plus small files made here with the standard
library only, so that every seed is a few KiB and the fuzzer mutates
headers rather than megabytes of weights: GGUF files with a byte-level
and a SentencePiece vocabulary and a few tensors, a safetensors file and a
two-shard checkpoint, .npy files of each dtype, a cut-down tokenizer.json,
chat templates followed by messages. The checkpoint seed is written by
the harness itself (PB_FUZZ_WRITE_SEED). Fixtures regenerate nothing here.
"""
import glob
import json
import os
import shutil
import struct
import sys

FIXTURES, OUT = sys.argv[1], sys.argv[2]


def put(harness, name, data):
    folder = os.path.join(OUT, harness)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def copy(harness, pattern, max_bytes=64 * 1024):
    for path in sorted(glob.glob(os.path.join(FIXTURES, pattern))):
        if os.path.getsize(path) <= max_bytes:
            rel = os.path.relpath(path, FIXTURES).replace("/", "_")
            put(harness, rel, open(path, "rb").read())


# ---- GGUF -------------------------------------------------------------
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
          U64: "<Q", I64: "<q", F64: "<d"}


def gguf_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_value(kind, value):
    if kind == STR:
        return gguf_str(value)
    if kind == ARR:
        elem, items = value
        body = b"".join(gguf_value(elem, v) for v in items)
        return struct.pack("<IQ", elem, len(items)) + body
    return struct.pack(SCALAR[kind], value)


def gguf(kvs, tensors, alignment=32):
    """kvs: [(key, kind, value)]; tensors: [(name, ne, ggml_type, bytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for key, kind, value in kvs:
        out += gguf_str(key) + struct.pack("<I", kind) + gguf_value(kind, value)
    offset, blobs = 0, b""
    for name, ne, kind, data in tensors:
        out += gguf_str(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", kind, offset)
        pad = -len(data) % alignment
        blobs += data + b"\0" * pad
        offset += len(data) + pad
    out += b"\0" * (-len(out) % alignment)
    return out + blobs


def llama_kvs(n_vocab):
    return [("general.architecture", STR, "llama"), ("general.alignment", U32, 32),
            ("llama.block_count", U32, 1), ("llama.context_length", U32, 64),
            ("llama.embedding_length", U32, 4), ("llama.feed_forward_length", U32, 8),
            ("llama.attention.head_count", U32, 2), ("llama.attention.head_count_kv", U32, 1),
            ("llama.rope.freq_base", F32, 10000.0), ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
            ("llama.vocab_size", U32, n_vocab), ("general.file_type", U32, 0)]


def byte_level_tokens():
    """GPT-2's byte-to-unicode table: every byte is one printable character."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def tensors_small():
    q8_0 = struct.pack("<e", 0.5) + bytes(range(32))  # one Q8_0 block of 32
    return [("token_embd.weight", [4, 2], 0, struct.pack("<8f", *range(8))),
            ("output_norm.weight", [4], 1, struct.pack("<4e", 1, 1, 1, 1)),
            ("blk.0.ffn_down.weight", [32, 1], 8, q8_0)]


def tensors_quantized():
    """One block of every type the loader dequantises (ggml id, elements,
    bytes per block), filled with bytes that vary, so fuzz_gguf reaches each
    dequantiser from a seed instead of waiting for a mutation of the type."""
    kinds = [(1, 1, 2), (30, 1, 2), (2, 32, 18), (3, 32, 20), (6, 32, 22), (7, 32, 24), (8, 32, 34),
             (10, 256, 84), (11, 256, 110), (12, 256, 144), (13, 256, 176), (14, 256, 210)]
    out = []
    for kind, elements, size in kinds:
        blob = bytes((i * 37 + kind) % 251 for i in range(size))
        if elements == 1:  # F16 / BF16: a small row of ordinary values
            elements, blob = 8, struct.pack("<8e", *[i / 4 - 1 for i in range(8)])
            if kind == 30:
                blob = b"".join(struct.pack("<f", i / 4 - 1)[2:] for i in range(8))
        out.append(("q.%d.weight" % kind, [elements, 1], kind, blob))
    return out


def f32(*shape):
    """A tensor of shape ne (ggml order) holding small distinct values."""
    count = 1
    for n in shape:
        count *= n
    return struct.pack("<%df" % count, *[((i % 7) - 3) / 16 for i in range(count)])


def model_tensors(n_vocab):
    """Every tensor of a one-layer llama_kvs model: d_model 4, two query heads
    and one key-value head of 2, MLP 8, tied embeddings."""
    shapes = [("token_embd.weight", [4, n_vocab]), ("output_norm.weight", [4]),
              ("blk.0.attn_norm.weight", [4]), ("blk.0.attn_q.weight", [4, 4]), ("blk.0.attn_k.weight", [4, 2]),
              ("blk.0.attn_v.weight", [4, 2]), ("blk.0.attn_output.weight", [4, 4]), ("blk.0.ffn_norm.weight", [4]),
              ("blk.0.ffn_gate.weight", [4, 8]), ("blk.0.ffn_up.weight", [4, 8]), ("blk.0.ffn_down.weight", [8, 4])]
    return [(name, ne, 0, f32(*ne)) for name, ne in shapes]


def make_gguf():
    chars = byte_level_tokens()
    merges = ["\u0120 t", "h e", "\u0120t he", "i n", "e r", "\u0120 a"]
    tokens = chars + [m.replace(" ", "") for m in merges] + ["<|im_start|>", "<|im_end|>", "<s>"]
    n = len(tokens)
    types = [1] * (n - 3) + [3, 3, 3]
    kvs = llama_kvs(n) + [
        ("tokenizer.ggml.model", STR, "gpt2"), ("tokenizer.ggml.pre", STR, "smollm"),
        ("tokenizer.ggml.tokens", ARR, (STR, tokens)), ("tokenizer.ggml.token_type", ARR, (I32, types)),
        ("tokenizer.ggml.merges", ARR, (STR, merges)), ("tokenizer.ggml.bos_token_id", U32, n - 3),
        ("tokenizer.ggml.eos_token_id", U32, n - 2),
        ("tokenizer.chat_template", STR, "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                                         "{{ m['content'] }}<|im_end|>\n{% endfor %}")]
    put("gguf", "byte_level.gguf", gguf(kvs, tensors_small()))
    put("gguf", "quantized.gguf", gguf(llama_kvs(4), tensors_quantized()))
    put("model_gguf", "one_layer.gguf", gguf(kvs, model_tensors(n)))
    put("gguf_vocab", "byte_level.gguf", gguf(kvs, []))

    pieces = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    words = ["\u2581", "\u2581t", "he", "\u2581the", "in", "er", "\u2581a", "a", "t", "h", "e", "i", "n", "r"]
    pieces += words
    scores = [0.0] * 259 + [-float(i) for i in range(len(words))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(words)
    kvs = llama_kvs(len(pieces)) + [
        ("tokenizer.ggml.model", STR, "llama"), ("tokenizer.ggml.tokens", ARR, (STR, pieces)),
        ("tokenizer.ggml.scores", ARR, (F32, scores)), ("tokenizer.ggml.token_type", ARR, (I32, types)),
        ("tokenizer.ggml.bos_token_id", U32, 1), ("tokenizer.ggml.eos_token_id", U32, 2),
        ("tokenizer.ggml.unknown_token_id", U32, 0), ("tokenizer.ggml.add_bos_token", BOOL, True),
        ("some.u64.array", ARR, (U64, [1, 2, 3])), ("some.f64", F64, 0.25), ("some.i16", I16, -3)]
    put("gguf", "sentencepiece.gguf", gguf(kvs, tensors_small()[:1]))
    put("gguf_vocab", "sentencepiece.gguf", gguf(kvs, []))
    copy("gguf_vocab", "tokenizer/spm_bpe.gguf")
    copy("gguf", "tokenizer/spm_bpe.gguf")


# ---- safetensors --------------------------------------------------------
def safetensors(entries, metadata=None):
    """entries: [(name, dtype, shape, bytes)] in data order."""
    header, data = {}, b""
    for name, dtype, shape, blob in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def make_safetensors():
    a = ("model.embed_tokens.weight", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4))
    b = ("model.norm.weight", "BF16", [3], b"\x80\x3f" * 3)
    c = ("lm_head.weight", "F16", [1, 2], struct.pack("<2e", 0.5, -2))
    put("safetensors", "three.safetensors", safetensors([a, b, c], {"format": "pt"}))
    put("safetensors", "scalar.safetensors", safetensors([("s", "F32", [], struct.pack("<f", 7))]))
    put("safetensors", "empty.safetensors", safetensors([]))
    index = {"metadata": {"total_size": 30},
             "weight_map": {a[0]: "model-00001-of-00002.safetensors", b[0]: "model-00001-of-00002.safetensors",
                            c[0]: "model-00002-of-00002.safetensors"}}
    sep = b"\n--shard--\n"
    put("safetensors_index", "two_shards",
        json.dumps(index).encode() + sep + safetensors([a, b]) + sep + safetensors([c]))


def make_model_hf():
    """config.json, model.safetensors and tokenizer_config.json of a
    one-layer model (d_model 4, two query heads and one key-value head of 2,
    MLP 8, vocab 16, tied embeddings) for fuzz_model_hf, in HF [out, in]
    shapes; one variant in BF16 with an untied lm_head."""
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4,
              "intermediate_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 2,
              "num_hidden_layers": 1, "vocab_size": 16, "max_position_embeddings": 32, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2}
    layer = "model.layers.0."
    shapes = [("model.embed_tokens.weight", [16, 4]), ("model.norm.weight", [4]),
              (layer + "input_layernorm.weight", [4]), (layer + "self_attn.q_proj.weight", [4, 4]),
              (layer + "self_attn.k_proj.weight", [2, 4]), (layer + "self_attn.v_proj.weight", [2, 4]),
              (layer + "self_attn.o_proj.weight", [4, 4]), (layer + "post_attention_layernorm.weight", [4]),
              (layer + "mlp.gate_proj.weight", [8, 4]), (layer + "mlp.up_proj.weight", [8, 4]),
              (layer + "mlp.down_proj.weight", [4, 8])]
    template = {"chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                                 "<|im_end|>\n{% endfor %}"}
    sep = b"\n--file--\n"
    weights = safetensors([(name, "F32", shape, f32(*shape)) for name, shape in shapes])
    put("model_hf", "one_layer", json.dumps(config).encode() + sep + weights + sep + json.dumps(template).encode())
    config["tie_word_embeddings"] = False
    bf16 = [(name, "BF16", shape, f32(*shape)[: len(f32(*shape)) // 2]) for name, shape in shapes]
    bf16.append(("lm_head.weight", "BF16", [16, 4], f32(16, 4)[:128]))
    put("model_hf", "untied_bf16", json.dumps(config).encode() + sep + safetensors(bf16))


# ---- .npy ---------------------------------------------------------------
def npy(descr, shape, data, version=1):
    dims = "".join("%d," % n for n in shape) if len(shape) == 1 else ", ".join(str(n) for n in shape)
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (descr, dims)
    pre = 10 if version == 1 else 12
    header += " " * (-(pre + len(header) + 1) % 64) + "\n"
    size = struct.pack("<H", len(header)) if version == 1 else struct.pack("<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + size + header.encode() + data


def make_npy():
    put("npy", "f4.npy", npy("<f4", [3], struct.pack("<3f", 1, 2, 3)))
    put("npy", "i4.npy", npy("<i4", [2, 2], struct.pack("<4i", 1, 2, 3, 4)))
    put("npy", "f8.npy", npy("<f8", [2], struct.pack("<2d", 0.5, 1e300)))
    put("npy", "i8.npy", npy("<i8", [3], struct.pack("<3q", 1, -1, 1 << 40)))
    put("npy", "v2.npy", npy("<f4", [1, 1, 1], struct.pack("<f", 9), version=2))
    put("npy", "scalar.npy", npy("<i4", [], struct.pack("<i", 5)))
    for path in ["patching/tiny_bias_projection/direction.npy", "random_model/ids.npy", "tiny_gqa/ids.npy"]:
        copy("npy", path)


# ---- JSON and text ------------------------------------------------------
def make_tokenizer_json():
    """Each tokenizer variant cut down to its first 300 ids and the merges
    among them (a few KiB instead of 30: the fuzzer runs ten times faster)."""
    for path in sorted(glob.glob(os.path.join(FIXTURES, "tokenizer/bpe_variants/*.json"))):
        if path.endswith("_corpus.json"):
            continue
        with open(path) as f:
            full = json.load(f)
        vocab = {k: v for k, v in full["model"]["vocab"].items() if v < 300}
        merges = []
        for m in full["model"]["merges"]:
            a, b = m.split(" ") if isinstance(m, str) else m
            if a in vocab and b in vocab and a + b in vocab:
                merges.append(m)
        full["model"]["vocab"], full["model"]["merges"] = vocab, merges
        full["added_tokens"] = [t for t in full["added_tokens"] if t["id"] < 300] + full["added_tokens"][:2]
        put("tokenizer_json", os.path.basename(path), json.dumps(full))


def make_text_seeds():
    copy("hf_config", "tiny_*/config.json")
    copy("hf_config", "tiny_*/generation_config.json")
    copy("sweep_spec", "patching/*/spec.json")
    specs = {
        "text_chat": {"mode": "noising", "pairs": [
            {"clean": {"text": "The sky is", "chat": True, "system": "Be brief."},
             "corrupted": {"text": "The sea is", "chat": True, "system": "Be brief."}}],
            "sites": [{"component": "z", "layers": [0, 3], "heads": [0, 3], "positions": [[0, 1], [-1]]}],
            "metric": {"kind": "refusal_score", "tokens": ["I", "S"], "position": -1},
            "significance_threshold": 0.2, "effect_floor": 0.001},
        "interchange_map": {"mode": "interchange", "pairs": [
            {"base": {"ids": [1, 2, 3, 4]}, "source": {"ids": [5, 6, 7]}, "position_map": [[3, 2], [2, 1]]}],
            "sites": [{"component": "v", "layers": "all", "heads": "all", "positions": [3, -2]},
                      {"component": "mlp_out", "layers": [1], "positions": "last"}],
            "metric": {"kind": "logprob", "tokens": [7, 8]}},
        "noise_groups": {"mode": "denoising", "pairs": [
            {"clean": {"ids": [1, 2, 3, 4, 5]},
             "corrupted": {"noise": {"scale": 3.0, "positions": [1, 2], "seed": 7}}}],
            "sites": [{"component": "resid_mid", "layers": [2, 3], "positions": [[1, 2, 3], [0], [4]]}],
            "metric": {"kind": "projection", "direction": "direction.npy", "layer": 2, "hook": "resid_post"}},
    }
    for name, spec in specs.items():
        put("sweep_spec", name + ".json", json.dumps(spec, indent=1))
    sep = "\n--msg--\n"
    for path in sorted(glob.glob(os.path.join(FIXTURES, "chat_templates/*.jinja"))):
        text = open(path).read()
        name = os.path.basename(path)
        put("chat_template", name, text)
        put("chat_template", name + ".msgs", text + sep + "You are terse." + sep + "  Hello there!  ")
    put("tokenize", "ascii", "\x00Hello, world! It's 12345 o'clock.\n\n  x")
    put("tokenize", "special", "\x02<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    put("tokenize", "spm", "\x01 The quick brown fox. caf\u00e9 \u4f60\u597d \U0001f600")
    put("tokenize", "spm_special", "\x03<s>[INST] hi [/INST]</s>")


make_gguf()
make_safetensors()
make_model_hf()
make_npy()
make_tokenizer_json()
make_text_seeds()
