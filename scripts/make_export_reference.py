#!/usr/bin/env python3
"""References for `patchbay export` (the direction-ablated model), checked
with transformers:

  tests/fixtures/export/llama_tied/    LlamaForCausalLM, tied unembedding
  tests/fixtures/export/qwen2_untied/  Qwen2ForCausalLM, Q/K/V biases, untied

Each folder holds a tiny random model as a Hugging Face checkpoint
(config.json + model.safetensors) and the same weights as model.gguf (F32,
llama.cpp's layout; scripts/make_tiny_models.py writes both), a direction
(direction.npy), prompt ids (ids.npy) and what transformers computes:

  logits_ablated.npy  the source model with the direction projected out of
                      every residual write at run time (forward hooks on the
                      embedding, every o_proj and every down_proj): the
                      independent oracle of the export's maths
  logits_export.npy   transformers' forward of the exported safetensors

The configurations are those transformers' GGUF loader reads back exactly
(head_dim = hidden_size / heads, default RoPE), so the script also loads the
exported GGUF through transformers and checks the acceptance bound: NMSE
<= 1e-10 between the exported safetensors and the exported GGUF. It runs
the engine's CLI (build/patchbay export) for the exports; reference.json
records every figure. With SmolLM2 under models/, the same checks run on
its fp32 GGUF export (transformers loads it; its logits vs run-time
ablation hooks on the Q4_1 source, dequantised by transformers), and the
bf16/f16/Q8_0 exports' error against the fp32 export is recorded.

Usage: /work/venv-torch/bin/python scripts/make_export_reference.py
           [--patchbay build/patchbay] [--out tests/fixtures/export]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_models as tiny  # noqa: E402
import refgen_common as rc  # noqa: E402

GENERATOR = "scripts/make_export_reference.py"
SMOLLM2 = Path("models/SmolLM2-135M-Instruct.Q4_1.gguf")
SMOLLM2_IDS = [1, 504, 3458, 282, 4763, 314, 260, 2379, 30, 2]

BASE: dict[str, Any] = {
    "vocab_size": 128,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 96,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "max_position_embeddings": 64,
}
SPECS = [
    {**BASE, "name": "llama_tied", "seed": 2468, "hf_class": "LlamaForCausalLM", "arch": "llama",
     "tie_word_embeddings": True},
    {**BASE, "name": "qwen2_untied", "seed": 1357, "hf_class": "Qwen2ForCausalLM", "arch": "qwen2",
     "tie_word_embeddings": False},
]


def nmse(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return float(((a - b) ** 2).mean() / (b ** 2).mean())


def export(patchbay: str, model: Path, direction: Path, out: Path, outtype: str = "f32") -> None:
    subprocess.run([patchbay, "export", "--no-progress", "--model", str(model), "--direction", str(direction),
                    "--out", str(out), "--outtype", outtype, "--overwrite"], check=True)


def ablation_hooks(model, u: torch.Tensor) -> list:
    """Projects u out of the embedding's output and every block's attention
    and MLP output: what the export bakes into the weights."""
    def project(module, args, out):
        return out - (out @ u)[..., None] * u

    mods = [model.model.embed_tokens]
    for layer in model.model.layers:
        mods += [layer.self_attn.o_proj, layer.mlp.down_proj]
    return [m.register_forward_hook(project) for m in mods]


def logits_of(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids.astype(np.int64))[None]).logits[0].float().numpy()


def load_hf(path: Path, gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM

    if gguf_file:
        return AutoModelForCausalLM.from_pretrained(str(path), gguf_file=gguf_file, dtype=torch.float32).eval()
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def make_one(spec: dict[str, Any], out_root: Path, patchbay: str, tmp: Path) -> dict[str, Any]:
    rc.setup_determinism(spec["seed"])
    folder = out_root / spec["name"]
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    model = tiny.build_model(spec)
    model.save_pretrained(str(folder), safe_serialization=True)
    for written in folder.iterdir():
        written.chmod(0o644)
    tiny.write_gguf(folder / "model.gguf", model, spec)
    ids = tiny.draw_ids(spec)
    np.save(folder / "ids.npy", ids)
    rng = np.random.default_rng(spec["seed"])
    direction = rng.standard_normal(spec["hidden_size"]).astype(np.float32)
    np.save(folder / "direction.npy", direction)
    u = torch.from_numpy(direction.astype(np.float64) / np.linalg.norm(direction.astype(np.float64))).float()

    source = load_hf(folder)
    plain = logits_of(source, ids)
    hooks = ablation_hooks(source, u)
    ablated = logits_of(source, ids)
    for h in hooks:
        h.remove()

    st_out, gguf_out = tmp / f"{spec['name']}_st", tmp / f"{spec['name']}.gguf"
    export(patchbay, folder, folder / "direction.npy", st_out)
    export(patchbay, folder / "model.gguf", folder / "direction.npy", gguf_out)
    from_st = logits_of(load_hf(st_out), ids)
    from_gguf = logits_of(load_hf(tmp, gguf_out.name), ids)
    figures = {
        "nmse_export_safetensors_vs_export_gguf": nmse(from_st, from_gguf),
        "max_abs_export_safetensors_vs_export_gguf": float(np.abs(from_st - from_gguf).max()),
        "max_abs_export_vs_runtime_ablation": float(np.abs(from_st - ablated).max()),
        "max_abs_ablation_moves_logits": float(np.abs(plain - ablated).max()),
    }
    assert figures["nmse_export_safetensors_vs_export_gguf"] <= 1e-10, figures
    assert figures["max_abs_export_vs_runtime_ablation"] <= 1e-5, figures
    for outtype in ("bf16", "f16"):
        export(patchbay, folder, folder / "direction.npy", tmp / f"{spec['name']}_{outtype}", outtype)
        got = logits_of(load_hf(tmp / f"{spec['name']}_{outtype}"), ids)
        figures[f"{outtype}_export_max_abs_vs_fp32_export"] = float(np.abs(got - from_st).max())
    np.save(folder / "logits_ablated.npy", ablated.astype(np.float32))
    np.save(folder / "logits_export.npy", from_st.astype(np.float32))
    print(spec["name"], figures)
    return {"spec": spec, "figures": figures}


def smollm2_figures(patchbay: str, tmp: Path) -> dict[str, Any] | None:
    if not SMOLLM2.exists():
        return None
    direction = Path("tests/fixtures/export/smollm2_direction.npy")
    u_np = np.load(direction).astype(np.float64)
    u = torch.from_numpy(u_np / np.linalg.norm(u_np)).float()
    ids = np.array(SMOLLM2_IDS, dtype=np.int32)
    source = load_hf(SMOLLM2.parent, SMOLLM2.name)
    hooks = ablation_hooks(source, u)
    ablated = logits_of(source, ids)
    for h in hooks:
        h.remove()
    out = {}
    fp32 = None
    for outtype in ("f32", "bf16", "f16", "q8_0"):
        path = tmp / f"smollm2_{outtype}.gguf"
        export(patchbay, SMOLLM2, direction, path, outtype)
        got = logits_of(load_hf(tmp, path.name), ids)
        if outtype == "f32":
            fp32 = got
            out["f32_export_max_abs_vs_runtime_ablation_hooks"] = float(np.abs(got - ablated).max())
            out["f32_export_nmse_vs_runtime_ablation_hooks"] = nmse(got, ablated)
        else:
            out[f"{outtype}_export_max_abs_vs_fp32_export"] = float(np.abs(got - fp32).max())
            out[f"{outtype}_export_nmse_vs_fp32_export"] = nmse(got, fp32)
        path.unlink()
    print("smollm2", out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patchbay", default="build/patchbay")
    parser.add_argument("--out", default="tests/fixtures/export")
    args = parser.parse_args()
    out_root = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cases = [make_one(spec, out_root, args.patchbay, tmp) for spec in SPECS]
        smollm2 = smollm2_figures(args.patchbay, tmp)
    rc.write_json(out_root / "reference.json", {
        **rc.manifest_header(GENERATOR, None),
        "cases": cases,
        "smollm2": smollm2,
        "note": "logits_ablated.npy: transformers with the direction projected out of the embedding and every "
                "o_proj / down_proj output (forward hooks); logits_export.npy: transformers on the fp32 "
                "safetensors export",
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
