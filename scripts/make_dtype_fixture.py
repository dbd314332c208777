#!/usr/bin/env python3
"""Regenerates tests/fixtures/dtype/conversions.pbdt: fp32 -> bf16 and
fp32 -> fp16 rounding references for tests/test_dtype.c.

Usage: .venv/bin/python scripts/make_dtype_fixture.py [OUT_DIR]

The expected bits come from libraries, not from patchbay: bf16 from torch
(`tensor.to(torch.bfloat16)`, round to nearest even) and fp16 from numpy
(`astype(np.float16)`, IEEE round to nearest even, overflow to Inf).

Inputs (as fp32 bit patterns): hand-picked edge cases (exact ties with an
even and an odd kept bit, one ulp either side of a tie, fp32 subnormals,
results that land in the fp16 subnormal range, the fp16 overflow boundary
65504 / 65519.99 / 65520, max float, +-Inf, NaNs, +-0), then seeded random
bit patterns: uniform over all exponents, concentrated in the fp16 range,
and with the dropped bits forced to exact ties.

NaN inputs: torch 2.x returns 0xffff for every NaN, positive ones included
(sign and payload dropped), and numpy keeps a truncated payload (0x7f800001
becomes the signalling 0x7c01), so for NaN inputs the test checks only that
the result is a NaN with the input's sign; the stored bits are informational.

File layout (little-endian):
    magic     "PBDT"
    version   u32 (1)
    generator u32 length + bytes ("scripts/make_dtype_fixture.py")
    n         u32
    input     u32[n]   fp32 bit patterns
    bf16      u16[n]   torch's result
    fp16      u16[n]   numpy's result
"""
import struct
import sys
from pathlib import Path

import numpy as np
import torch

GENERATOR = "scripts/make_dtype_fixture.py"
VERSION = 1
SEED = 20250311
N_RANDOM = 1500  # per random family


def f2u(x):
    return int(np.array([x], dtype=np.float32).view(np.uint32)[0])


def edge_cases():
    bits = []
    # zeros, infinities, max float, smallest normal, subnormals (fp32)
    bits += [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0xFF7FFFFF,
             0x00800000, 0x80800000, 0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF,
             0x00400000, 0x00008000, 0x00018000, 0x00010000]
    # NaNs: quiet, signalling (payload only in the low bits, which bf16
    # truncation would turn into Inf if done naively), negative
    bits += [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FBFFFFF, 0x7F8000FF, 0xFFFFFFFF, 0x7FFFFFFF]
    # bf16 ties: low 16 bits exactly 0x8000 with even and odd kept bit, and
    # one ulp either side
    for base in (0x3F800000, 0x3F810000, 0x40490000, 0xC2C80000, 0xC2C90000, 0x7F7F0000,
                 0x7F7E0000, 0x00010000, 0x00020000):
        base &= 0xFFFF0000
        for low in (0x8000, 0x7FFF, 0x8001, 0x0000, 0xFFFF):
            bits.append(base | low)
    # max float rounds up to Inf in bf16; 0x7F7F8000 is a tie to odd -> Inf
    bits += [0x7F7F7FFF, 0x7F7F8000, 0x7F7FC000]
    # fp16 ties: low 13 bits exactly 0x1000 with even and odd kept bit
    for value in (1.0, 1.0009765625, 3.140625, -100.0, 2048.0, 2049.0, 6.103515625e-05, 32768.0):
        base = f2u(value) & 0xFFFFE000
        for low in (0x1000, 0x0FFF, 0x1001, 0x0000, 0x1FFF):
            bits.append(base | low)
    # fp16 overflow boundary: 65504 (max), just below and at the tie
    # 65520 (-> Inf), and beyond
    for value in (65504.0, 65505.0, 65519.0, 65519.99, 65520.0, 65520.01, 65536.0, 1e5, 1e10, 3.0e38):
        bits.append(f2u(value))
        bits.append(f2u(-value))
    # fp16 subnormal results and the subnormal/normal boundary
    for value in (6.097555160522461e-05, 6.103515625e-05, 6.1e-05, 5.960464477539063e-08, 2.98023223876953e-08,
                  2.9802322387695312e-08, 2.98023224e-08, 8.940696716308594e-08, 1.1920928955078125e-07,
                  1.7881393432617188e-07, 1e-8, 1e-20, 3.0e-5, 4.5e-6, 6.0975e-05):
        bits.append(f2u(value))
        bits.append(f2u(-value))
    # exact fp16 subnormal ties: (k + 0.5) * 2^-24
    for k in (0, 1, 2, 3, 1022, 1023):
        bits.append(f2u(np.float32((k + 0.5) * 2.0 ** -24)))
        bits.append(f2u(np.float32((k + 0.5) * 2.0 ** -24)) + 1)
        bits.append(f2u(np.float32((k + 0.5) * 2.0 ** -24)) - 1)
    return bits


def random_cases(rng):
    # uniform over every bit pattern (every exponent; some NaNs)
    every = rng.integers(0, 1 << 32, N_RANDOM, dtype=np.uint64).astype(np.uint32)
    # exponents of the fp16 range and around it (2^-26 .. 2^17)
    exps = rng.integers(127 - 26, 127 + 17, N_RANDOM, dtype=np.uint32)
    mant = rng.integers(0, 1 << 23, N_RANDOM, dtype=np.uint32)
    sign = rng.integers(0, 2, N_RANDOM, dtype=np.uint32) << 31
    fp16_range = sign | (exps << 23) | mant
    # forced ties: low 16 bits 0x8000 (bf16) or low 13 bits 0x1000 (fp16)
    ties_bf16 = (rng.integers(0, 1 << 32, N_RANDOM // 3, dtype=np.uint64).astype(np.uint32) & 0xFFFF0000) | 0x8000
    ties_fp16 = (fp16_range[: N_RANDOM // 3] & 0xFFFFE000) | 0x1000
    return [int(b) for b in np.concatenate([every, fp16_range, ties_bf16, ties_fp16])]


def main() -> int:
    out_dir = (Path(sys.argv[1]) if len(sys.argv) > 1
               else Path(__file__).resolve().parent.parent / "tests/fixtures/dtype")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    bits = np.array(edge_cases() + random_cases(rng), dtype=np.uint32)
    values = bits.view(np.float32)
    bf16 = torch.from_numpy(values.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    with np.errstate(over="ignore", invalid="ignore"):
        fp16 = values.astype(np.float16).view(np.uint16)
    # sanity on a few known answers, so a library change cannot pass silently
    expect = {0x3F808000: (0x3F80, 0x3C04), 0x3F818000: (0x3F82, 0x3C0C), 0x477FF000: (0x4780, 0x7C00),
              f2u(65519.99): (0x4780, 0x7BFF), 0x7F7F8000: (0x7F80, 0x7C00)}
    for i, b in enumerate(bits):
        if int(b) in expect:
            assert (int(bf16[i]), int(fp16[i])) == expect[int(b)], (hex(b), hex(bf16[i]), hex(fp16[i]))
    path = out_dir / "conversions.pbdt"
    with open(path, "wb") as f:
        f.write(b"PBDT")
        f.write(struct.pack("<I", VERSION))
        g = GENERATOR.encode()
        f.write(struct.pack("<I", len(g)))
        f.write(g)
        f.write(struct.pack("<I", len(bits)))
        f.write(bits.astype("<u4").tobytes())
        f.write(bf16.astype("<u2").tobytes())
        f.write(fp16.astype("<u2").tobytes())
    n_nan = int(np.isnan(values).sum())
    print(f"wrote {path}: {len(bits)} values ({n_nan} NaN), torch {torch.__version__}, numpy {np.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
