#!/usr/bin/env python3
"""Regenerates tests/fixtures/quant/*.pbqf: dequantisation references for
tests/test_quant.c, computed with gguf-py (gguf.quants.dequantize).

Usage: .venv/bin/python scripts/make_quant_fixture.py MODEL.gguf [OUT_DIR]

Every file holds, for one ggml type, a few cases: random blocks (seeded, with
every fp16 scale field a finite value) and, where the model has tensors of
that type, the first blocks of a real tensor.

File layout (little-endian):
    magic     "PBQF"
    version   u32 (1)
    generator u32 length + bytes ("scripts/make_quant_fixture.py")
    type      u32 ggml type id
    n_cases   u32
    per case: name (u32 length + bytes), n_elements u64, n_bytes u64,
              raw block bytes, expected float32[n_elements]
"""
import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

GENERATOR = "scripts/make_quant_fixture.py"
VERSION = 1
SEED = 20250207

# Byte offsets of the fp16 fields inside one block (d, m, dmin): random
# bytes there could be NaN or Inf, which says nothing about the decoder.
HALF_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
N_RANDOM_BLOCKS = {"small": 64, "k": 32}
# (type, tensor) pairs taken from the real model: first 64 blocks.
REAL = [(T.F32, "blk.0.attn_norm.weight"), (T.Q8_0, "token_embd.weight"),
        (T.Q4_1, "blk.0.attn_q.weight"), (T.Q4_1, "blk.0.ffn_down.weight")]
N_REAL_BLOCKS = 64


def random_case(qtype, rng):
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if qtype == T.F32:
        raw = (rng.standard_normal(2048) * 10.0 ** rng.integers(-8, 8, 2048)).astype("<f4").tobytes()
    elif qtype in (T.F16, T.BF16):
        # All finite encodings, subnormals included: any exponent field but
        # the all-ones one (inf/NaN, tested exactly in C).
        bits = rng.integers(0, 1 << 16, 4096, dtype=np.uint32).astype(np.uint16)
        exp_mask, exp_all = (0x7C00, 0x7C00) if qtype == T.F16 else (0x7F80, 0x7F80)
        bits = bits[(bits & exp_mask) != exp_all][:2048]
        raw = bits.astype("<u2").tobytes()
    else:
        n_blocks = N_RANDOM_BLOCKS["k" if block_size == 256 else "small"]
        blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint16).astype(np.uint8)
        for off in HALF_FIELDS[qtype]:
            # Normal values spread over several decades; cast to fp16 keeps
            # them finite.
            vals = (rng.standard_normal(n_blocks) * 10.0 ** rng.integers(-4, 2, n_blocks)).astype("<f2")
            blocks[:, off:off + 2] = vals.view(np.uint8).reshape(n_blocks, 2)
        raw = blocks.tobytes()
    return "random", raw


def expected_values(qtype, raw):
    # dequantize() takes the packed bytes as one row and returns its values.
    out = dequantize(np.frombuffer(raw, dtype=np.uint8).reshape(1, -1), qtype)
    return np.ascontiguousarray(out, dtype="<f4").reshape(-1)


def put_str(f, s):
    b = s.encode()
    f.write(struct.pack("<I", len(b)))
    f.write(b)


def write_fixture(path, qtype, cases):
    with open(path, "wb") as f:
        f.write(b"PBQF")
        f.write(struct.pack("<I", VERSION))
        put_str(f, GENERATOR)
        f.write(struct.pack("<II", int(qtype), len(cases)))
        for name, raw in cases:
            expected = expected_values(qtype, raw)
            put_str(f, name)
            f.write(struct.pack("<QQ", expected.size, len(raw)))
            f.write(raw)
            f.write(expected.tobytes())


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    model = Path(sys.argv[1])
    out_dir = Path(sys.argv[2]) if len(sys.argv) == 3 else Path(__file__).resolve().parent.parent / "tests/fixtures/quant"
    out_dir.mkdir(parents=True, exist_ok=True)
    reader = GGUFReader(model)
    tensors = {t.name: t for t in reader.tensors}
    rng = np.random.default_rng(SEED)
    types = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
             T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
    for qtype in types:
        cases = [random_case(qtype, rng)]
        for real_type, name in REAL:
            if real_type != qtype:
                continue
            t = tensors[name]
            if t.tensor_type != qtype:
                sys.exit(f"{name}: expected {qtype.name}, file has {t.tensor_type.name}")
            block_size, type_size = GGML_QUANT_SIZES[qtype]
            n_blocks = N_REAL_BLOCKS if block_size > 1 else min(int(t.n_elements), 1024)
            raw = np.asarray(t.data).view(np.uint8).reshape(-1)[: n_blocks * type_size].tobytes()
            cases.append((f"real:{name}", raw))
        path = out_dir / f"{qtype.name.lower()}.pbqf"
        write_fixture(path, qtype, cases)
        print(f"{path}: {', '.join(c[0] for c in cases)}")


if __name__ == "__main__":
    main()
