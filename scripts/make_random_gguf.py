#!/usr/bin/env python3
"""Writes a random-weight Llama GGUF at a real model's shape, for benchmarks
of models larger than memory (no real weights need to be downloaded).

  .venv/bin/python scripts/make_random_gguf.py --out /tmp/llama3-8b-8l-q8_0.gguf \
      --layers 8 --type q8_0 [--seed 1] [--shape llama3-8b] [--tokenizer none|bytes]

Shapes:
  llama3-8b  d_model 4096, 32 heads, 8 KV heads, head_dim 128, d_mlp 14336,
             vocab 128256, context 8192, rms eps 1e-5, rope_theta 500000,
             untied output (output.weight present), no rope scaling (no
             rope_freqs tensor: the Llama-3.1 "llama3" scaling is not written)
  tiny       d_model 64, 4 heads, 2 KV heads, head_dim 16, d_mlp 128, vocab
             512 (same other values): a quick self-check
--layers defaults to the shape's full depth (32 for llama3-8b, 2 for tiny).

The file is laid out as llama.cpp's convert_hf_to_gguf.py writes a Llama
checkpoint: general.architecture "llama", the llama.* hyperparameter keys
patchbay's GGUF loader reads (host/formats/gguf_source.c), tensors
token_embd.weight, blk.N.{attn_norm, ffn_down, ffn_gate, ffn_up, ffn_norm,
attn_k, attn_output, attn_q, attn_v}.weight (the converter's order: Hugging
Face's per-layer names sorted), output.weight, output_norm.weight. 1-D
tensors (the norms) are F32; every 2-D matrix is --type (q8_0, f16, bf16 or
f32; all of llama3-8b's and tiny's row widths are multiples of 32, so Q8_0
applies to every matrix, embedding and output included, as the converter's
--outtype q8_0 does).

Weights: numpy default_rng, one generator per tensor seeded by (seed, crc32 of
the tensor name), so a tensor's values do not depend on --layers or --type
(the first L layers of a deeper file are the same weights). Matrices are
N(0, std^2) with std 0.02 (--std); norm weights 1 + 0.1 N(0, 1). With these
magnitudes the llama3-8b logits stay finite and O(1) (RMSNorm before every
projection keeps each sublayer's input at unit scale). The converter permutes
each Q/K head's rows (interleaved RoPE) and patchbay un-permutes them at load;
the values here are i.i.d. random, so whether they count as permuted or not is
immaterial (the file is a valid converter-layout file of *some* random Hugging
Face checkpoint either way).

Tokenizer: none by default. patchbay loads a GGUF without tokenizer.ggml.*
keys (vocab_size comes from llama.vocab_size / token_embd.weight) and then
takes token ids only (--ids / --ids-file). --tokenizer bytes writes a minimal
byte-level "gpt2" vocabulary instead: the 256 GPT-2 byte tokens, then
"<|reserved_special_token_N|>" fillers up to vocab_size, no merges.

Memory: the tensor infos are declared first, then each tensor is generated,
quantised and written in row chunks (about 16M floats), so the peak RSS is a
few hundred MB whatever the model size (the llama3-8b embedding alone is
2.1 GB as float32).
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np

import gguf
from gguf.gguf_writer import WriterState

SHAPES = {
    "llama3-8b": dict(n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8, head_dim=128, d_mlp=14336,
                      vocab=128256, context=8192, rms_eps=1e-5, rope_theta=500000.0,
                      name="Meta-Llama-3-8B shape"),
    "tiny": dict(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_mlp=128,
                 vocab=512, context=8192, rms_eps=1e-5, rope_theta=500000.0, name="tiny llama shape"),
}

QTYPES = {
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
}

CHUNK_FLOATS = 1 << 24  # floats generated and quantised at a time (64 MB as float32)


def tensor_plan(s: dict, n_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, numpy shape (rows, cols) / (n,)) in the converter's order.
    A weight (out, in) is stored as ggml ne = [in, out]: numpy (out, in)."""
    d, hd, f = s["d_model"], s["head_dim"], s["d_mlp"]
    q_out, kv_out = s["n_heads"] * hd, s["n_kv_heads"] * hd
    plan: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (s["vocab"], d))]
    for layer in range(n_layers):
        p = f"blk.{layer}."
        plan += [
            (p + "attn_norm.weight", (d,)),
            (p + "ffn_down.weight", (d, f)),
            (p + "ffn_gate.weight", (f, d)),
            (p + "ffn_up.weight", (f, d)),
            (p + "ffn_norm.weight", (d,)),
            (p + "attn_k.weight", (kv_out, d)),
            (p + "attn_output.weight", (d, q_out)),
            (p + "attn_q.weight", (q_out, d)),
            (p + "attn_v.weight", (kv_out, d)),
        ]
    plan += [("output.weight", (s["vocab"], d)), ("output_norm.weight", (d,))]
    return plan


def tensor_type(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    if len(shape) == 1:
        return gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block != 0:  # the converter's fallback (gguf.QuantError)
        return gguf.GGMLQuantizationType.F16
    return qtype


def tensor_nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    assert n % block == 0
    return n // block * type_size


def tensor_chunks(name: str, shape: tuple[int, ...], qtype, seed: int, std: float):
    """The tensor's bytes as stored, in row chunks."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if len(shape) == 1:
        yield (1.0 + 0.1 * rng.standard_normal(shape[0], dtype=np.float32)).astype(np.float32)
        return
    rows, cols = shape
    step = max(1, CHUNK_FLOATS // cols)
    for r0 in range(0, rows, step):
        n = min(step, rows - r0)
        x = rng.standard_normal((n, cols), dtype=np.float32)
        x *= np.float32(std)
        q = gguf.quants.quantize(x, qtype)
        del x
        yield q


def write_tensor_streamed(writer: gguf.GGUFWriter, name: str, chunks, nbytes: int) -> None:
    """gguf-py's write_tensor_data, for a tensor given in pieces: the next
    declared tensor's data, aligned and padded the same way."""
    fout = writer.fout[0]
    tensors = writer.tensors[0]
    first = next(iter(tensors))
    assert first == name, (first, name)
    ti = tensors.pop(first)
    assert ti.nbytes == nbytes, (name, ti.nbytes, nbytes)
    writer.write_padding(fout, fout.tell())
    written = 0
    for chunk in chunks:
        chunk = np.ascontiguousarray(chunk)
        fout.write(memoryview(chunk).cast("B"))
        written += chunk.nbytes
    assert written == nbytes, (name, written, nbytes)
    writer.write_padding(fout, nbytes)
    writer.state = WriterState.WEIGHTS


def byte_vocab(vocab: int) -> tuple[list[str], list[int]]:
    """GPT-2's byte-to-unicode tokens 0..255, then reserved specials."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    by_byte = dict(zip(bs, cs))
    tokens = [chr(by_byte[b]) for b in range(256)]
    types = [gguf.TokenType.NORMAL] * 256
    for i in range(256, vocab):
        tokens.append(f"<|reserved_special_token_{i - 256}|>")
        types.append(gguf.TokenType.CONTROL)
    return tokens[:vocab], [int(t) for t in types[:vocab]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=None, help="layers (default: the shape's full depth)")
    ap.add_argument("--type", default="q8_0", choices=sorted(QTYPES), help="storage of the 2-D matrices")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--std", type=float, default=0.02, help="std of the matrices' normal entries")
    ap.add_argument("--tokenizer", default="none", choices=["none", "bytes"])
    args = ap.parse_args()

    s = SHAPES[args.shape]
    n_layers = args.layers if args.layers is not None else s["n_layers"]
    if n_layers < 1:
        ap.error("--layers must be at least 1")
    qtype, file_type = QTYPES[args.type]
    plan = [(name, shape, tensor_type(shape, qtype)) for name, shape in tensor_plan(s, n_layers)]

    t0 = time.monotonic()
    writer = gguf.GGUFWriter(str(args.out), "llama")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(f"random {s['name']}, {n_layers} layers, {args.type}")
    writer.add_description(f"random weights written by scripts/make_random_gguf.py "
                           f"(shape {args.shape}, seed {args.seed}, std {args.std}); for benchmarks only")
    writer.add_block_count(n_layers)
    writer.add_context_length(s["context"])
    writer.add_embedding_length(s["d_model"])
    writer.add_feed_forward_length(s["d_mlp"])
    writer.add_head_count(s["n_heads"])
    writer.add_head_count_kv(s["n_kv_heads"])
    writer.add_rope_freq_base(s["rope_theta"])
    writer.add_layer_norm_rms_eps(s["rms_eps"])
    writer.add_file_type(file_type)
    writer.add_vocab_size(s["vocab"])
    writer.add_rope_dimension_count(s["head_dim"])
    if args.tokenizer == "bytes":
        tokens, types = byte_vocab(s["vocab"])
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("llama-bpe")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges([])
        writer.add_add_bos_token(False)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, shape, t in plan:
        writer.add_tensor_info(name, shape, np.dtype(np.float32), tensor_nbytes(shape, t), raw_dtype=t)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    total = 0
    for i, (name, shape, t) in enumerate(plan):
        nbytes = tensor_nbytes(shape, t)
        write_tensor_streamed(writer, name, tensor_chunks(name, shape, t, args.seed, args.std), nbytes)
        total += nbytes
        if name in ("token_embd.weight", "output.weight") or name.endswith("attn_v.weight"):
            print(f"  {name:28s} {t.name:5s} {shape} {nbytes / 2**20:9.1f} MiB  "
                  f"({time.monotonic() - t0:6.1f} s)", file=sys.stderr, flush=True)
    writer.close()
    size = args.out.stat().st_size
    print(f"wrote {args.out}: {len(plan)} tensors, {total / 2**20:.1f} MiB of tensor data, "
          f"{size} bytes ({size / 2**30:.2f} GiB) in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
