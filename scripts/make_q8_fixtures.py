#!/usr/bin/env python3
"""Writes model.q8_0.gguf next to model.gguf in each tiny test model folder,
and tests/fixtures/q8_0_manifest.json describing them.

  tests/fixtures/tiny_{gemma,gemma2,gemma3,qwen3}/   (make_tiny_arch_models.py)
  tests/fixtures/tiny_{gpt2,gpt_neox,phi3,phi3_longrope,olmo2}/   (make_tiny_classic_models.py)
      The folder's HF checkpoint (config.json + model.safetensors + tokenizer
      files) converted by the same pinned llama.cpp convert_hf_to_gguf.py as
      model.gguf (make_tiny_arch_models.convert: same pre-tokenizer override /
      raw_keys per family), with --outtype q8_0 instead of f32.
  tests/fixtures/tiny_{gqa,bias}/   (make_tiny_models.py)
      These two folders have no tokenizer files: their model.gguf is not
      converter output but written by make_tiny_models.write_gguf (the
      converter's tensor layout, a built-in vocabulary). model.q8_0.gguf is
      written by the same function with outtype "q8_0", which applies the
      converter's per-tensor type rule (make_tiny_models.converter_qtype).

What the q8_0 conversion does to a tensor (conversion/base.py
ModelBase.prepare_tensors): 1-D tensors and *_norm.weight stay F32, so do a
few named kinds (position_embd for gpt2); every other .weight becomes Q8_0,
or F16 where its rows (ne0, the last numpy axis) are not a multiple of 32
(gguf.quants raises QuantError; the converter falls back to F16).

Checks, before the manifest is written (any failure raises):
  * f32 reproduction: the same route with outtype f32 (into a temporary
    folder) gives a file byte-identical to the committed model.gguf, so the
    q8_0 file is the committed conversion with only the output type changed.
  * metadata: every key/value of model.q8_0.gguf equals model.gguf's except
    general.file_type (0 ALL_F32 -> 7 MOSTLY_Q8_0; the gptneox converter
    writes no general.file_type in either file); same tensor names, order and
    shapes (ggml ne).
  * per tensor against the same-named tensor of model.gguf (whose layout the
    generators checked against safetensors: permuted Q/K rows for llama,
    fused / de-interleaved qkv for gpt2 / gpt_neox / phi3, transposed Conv1D
    for gpt2, Gemma norms w + 1): F32 equal; F16 equal to the f32 values
    rounded to float16; Q8_0: dequantised (gguf.quants.dequantize) within the
    Q8_0 bound, max |diff| <= 1.01 * max|block| / 127 for every block of 32,
    and re-quantising model.gguf's tensor gives the same bytes. The manifest
    records max |diff| and max |diff| / (max|block| / 127) per Q8_0 tensor.

With these tiny widths many matrices fall back to F16: tiny_gemma2 (d_model
72, every matmul input width 72 or 80) has no Q8_0 tensor at all; tiny_gqa,
tiny_qwen3, tiny_gpt2 and tiny_gpt_neox have every matrix Q8_0. The manifest
lists each tensor's type and, for those not Q8_0, why.

The tiny-model generators delete and rewrite a whole folder: after
regenerating one, run this script again (its f32 reproduction check then
also confirms the new model.gguf).

Usage: .venv/bin/python scripts/make_q8_fixtures.py [--out tests/fixtures] [--only gemma2,gqa]

Deterministic: run twice and compare bytes (the converter and gguf-py's
quantisation have no random or time-dependent parts).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_arch_models as arch  # noqa: E402
import make_tiny_classic_models as classic  # noqa: E402
import make_tiny_models as mtm  # noqa: E402
import refgen_common as rc  # noqa: E402

GENERATOR = "scripts/make_q8_fixtures.py"
OUTTYPE = "q8_0"
MANIFEST = "q8_0_manifest.json"
Q8_BLOCK = 32
Q8_BOUND = 1.01   # max |diff| <= Q8_BOUND * max|block| / 127


def models() -> dict[str, dict[str, Any]]:
    """folder name -> how its model.q8_0.gguf is written: the converter with
    the family's options, or make_tiny_models.write_gguf."""
    out: dict[str, dict[str, Any]] = {}
    for spec in (mtm.SPEC_GQA, mtm.SPEC_BIAS):
        out[spec["name"]] = {"route": "write_gguf", "spec": spec}
    for family in arch.SPECS:
        out[f"tiny_{family}"] = {"route": "converter", "family": family, "options": {}}
    for family in classic.SPECS:
        out[f"tiny_{family}"] = {"route": "converter", "family": family,
                                 "options": classic.convert_options(family)}
    return out


def write(folder: Path, how: dict[str, Any], outtype: str, outfile: Path) -> dict[str, Any]:
    if how["route"] == "converter":
        return arch.convert(folder, how["family"], outtype=outtype, outfile=outfile, **how["options"])
    import torch
    from transformers import AutoModelForCausalLM

    spec = how["spec"]
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                 attn_implementation="eager").float().eval()
    mtm.write_gguf(outfile, model, spec, outtype=outtype)
    return {"writer": f"{mtm.GENERATOR} write_gguf(outtype={outtype!r}) from the folder's "
                      "config.json + model.safetensors (no tokenizer files: not converter input)",
            "type_rule": "make_tiny_models.converter_qtype: the pinned converter's rule "
                         "(conversion/base.py ModelBase.prepare_tensors)"}


def fields(reader) -> dict[str, Any]:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def why_not_q8(t, qtype_name: str) -> str:
    ne = [int(n) for n in t.shape]
    if qtype_name == "F16":
        assert ne[0] % Q8_BLOCK != 0, (t.name, ne)
        return f"ne0 {ne[0]} not a multiple of 32: QuantError, converter falls back to F16"
    if len(ne) <= 1:
        return "1-D: always F32"
    if t.name.endswith("_norm.weight"):
        return "norm weight: always F32"
    return "converter's always-F32 list"


def check(folder: Path, q8_path: Path) -> dict[str, Any]:
    import gguf
    from gguf.quants import dequantize, quantize

    QT = gguf.GGMLQuantizationType
    f32 = gguf.GGUFReader(str(folder / "model.gguf"))
    q8 = gguf.GGUFReader(str(q8_path))
    fa, fb = fields(f32), fields(q8)
    assert set(fa) == set(fb), sorted(set(fa) ^ set(fb))
    changed = {k: [fa[k], fb[k]] for k in fa if fa[k] != fb[k]}
    # the gptneox converter writes no general.file_type at all (in either file)
    assert set(changed) <= {"general.file_type"}, changed
    assert changed.get("general.file_type", [None, None]) in (
        [int(gguf.LlamaFileType.ALL_F32), int(gguf.LlamaFileType.MOSTLY_Q8_0)], [None, None]), changed
    assert "general.file_type" in changed or "general.file_type" not in fa, changed
    assert [t.name for t in f32.tensors] == [t.name for t in q8.tensors]

    types: dict[str, str] = {}
    q8_checks: dict[str, dict[str, Any]] = {}
    others: dict[str, str] = {}
    for a, b in zip(f32.tensors, q8.tensors):
        assert a.tensor_type == QT.F32, (a.name, a.tensor_type)
        assert [int(n) for n in a.shape] == [int(n) for n in b.shape], (a.name, a.shape, b.shape)
        ne = [int(n) for n in a.shape]
        ref = np.asarray(a.data, dtype=np.float32).reshape(list(reversed(ne)))
        qtype = QT(b.tensor_type)
        types[b.name] = qtype.name
        if qtype == QT.Q8_0:
            raw = np.asarray(b.data)
            got = dequantize(raw, qtype).reshape(ref.shape)
            blocks_ref = ref.reshape(-1, Q8_BLOCK).astype(np.float64)
            err = np.abs(got.reshape(-1, Q8_BLOCK).astype(np.float64) - blocks_ref).max(axis=1)
            scale = np.abs(blocks_ref).max(axis=1) / 127.0
            assert np.all(err[scale == 0] == 0), b.name
            nz = scale > 0
            rel = float((err[nz] / scale[nz]).max()) if nz.any() else 0.0
            assert rel <= Q8_BOUND, (b.name, rel)
            requant = quantize(ref, qtype)
            same_bytes = bool(np.array_equal(requant.reshape(-1), raw.reshape(-1)))
            assert same_bytes, b.name
            q8_checks[b.name] = {"ne": ne, "blocks": int(err.size), "max_abs_diff": float(err.max()),
                                 "max_err_over_scale": rel, "requantized_f32_bytes_equal": same_bytes}
        elif qtype == QT.F16:
            got = np.asarray(b.data).reshape(ref.shape)
            assert np.array_equal(got, ref.astype(np.float16)), b.name
            others[b.name] = why_not_q8(b, "F16")
        else:
            assert qtype == QT.F32, (b.name, qtype)
            assert np.array_equal(np.asarray(b.data).reshape(ref.shape), ref), b.name
            others[b.name] = why_not_q8(b, "F32")
    counts: dict[str, int] = {}
    for name in types.values():
        counts[name] = counts.get(name, 0) + 1
    return {"metadata_changed": changed, "general_file_type": fb.get("general.file_type"),
            "tensor_count": len(types), "type_counts": dict(sorted(counts.items())),
            "tensor_types": types, "q8_0_checks": q8_checks, "not_q8_0": others,
            "max_err_over_scale": max((c["max_err_over_scale"] for c in q8_checks.values()), default=None),
            "max_abs_diff": max((c["max_abs_diff"] for c in q8_checks.values()), default=None)}


def make_one(name: str, how: dict[str, Any], out_root: Path) -> dict[str, Any]:
    folder = out_root / name
    assert (folder / "model.gguf").is_file(), folder
    with tempfile.TemporaryDirectory(prefix="q8fix-") as tmp:
        # the committed f32 file, regenerated by the same route
        again = Path(tmp) / "model.gguf"
        write(folder, how, "f32", again)
        assert again.read_bytes() == (folder / "model.gguf").read_bytes(), \
            f"{name}: the f32 route does not reproduce model.gguf"
        staged = Path(tmp) / arch.gguf_file_name(OUTTYPE)
        how_written = write(folder, how, OUTTYPE, staged)
        staged.chmod(0o644)
        target = folder / arch.gguf_file_name(OUTTYPE)
        shutil.copyfile(staged, target)
    target.chmod(0o644)
    rec = {"file": f"{name}/{target.name}", "sha256": rc.sha256_file(target), "bytes": target.stat().st_size,
           "f32_file": f"{name}/model.gguf", "f32_sha256": rc.sha256_file(folder / "model.gguf"),
           "f32_bytes": (folder / "model.gguf").stat().st_size, "f32_reproduced_byte_identical": True}
    rec["bytes_ratio_to_f32"] = round(rec["bytes"] / rec["f32_bytes"], 4)
    rec["how"] = how_written
    rec.update(check(folder, target))
    return rec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=rc.REPO_ROOT / "tests" / "fixtures")
    parser.add_argument("--only", default=None,
                        help="comma-separated names without tiny_ (writes no manifest): "
                             + ",".join(n[len("tiny_"):] for n in models()))
    args = parser.parse_args()
    table = models()
    names = list(table) if args.only is None else [f"tiny_{n}" for n in args.only.split(",")]
    recs: dict[str, Any] = {}
    for name in names:
        rec = make_one(name, table[name], args.out)
        recs[name] = rec
        print(f"{name}: {rec['bytes']} bytes ({rec['bytes_ratio_to_f32']:.3f} x f32 {rec['f32_bytes']}) "
              f"types {rec['type_counts']} max|diff| {rec['max_abs_diff']} "
              f"max err/scale {rec['max_err_over_scale']} sha256 {rec['sha256'][:16]}")
    total = sum(r["bytes"] for r in recs.values())
    print(f"total model.q8_0.gguf bytes: {total}")
    if args.only is not None:
        return 0
    manifest = rc.manifest_header(GENERATOR, None)
    manifest.update({
        "outtype": OUTTYPE,
        "converter": f"vendor/llama.cpp/convert_hf_to_gguf.py from {arch.SDIST_PIN} (sha256 {arch.SDIST_SHA256})",
        "q8_0_bound": f"per block of {Q8_BLOCK}: max |dequantised - f32| <= {Q8_BOUND} * max|block| / 127; "
                      "max_err_over_scale = max over blocks of max|diff| / (max|block| / 127)",
        "compared_with": "the same-named tensor of the folder's model.gguf (F32)",
        "regenerate": ".venv/bin/python scripts/make_q8_fixtures.py",
        "total_bytes": total,
        "models": recs,
    })
    rc.write_json(args.out / MANIFEST, manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
