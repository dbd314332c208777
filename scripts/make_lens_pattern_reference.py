#!/usr/bin/env python3
"""Writes tests/fixtures/lens_patterns/: attention patterns and logit-lens
logits computed by transformers, for the tiny models and SmolLM2.

Usage: .venv/bin/python scripts/make_lens_pattern_reference.py [MODEL.gguf]
           [--out tests/fixtures/lens_patterns]

MODEL.gguf defaults to models/SmolLM2-135M-Instruct.Q4_1.gguf; without it only
the tiny models are written. Each model is run once on CPU in float32 with
eager attention, output_attentions=True and output_hidden_states=True:

  NAME_ids.npy            int32   (T,)
  NAME_pattern.npy        float32 (n_selected_layers, n_heads, T, T)   attentions[l][0]
  NAME_lens_columns.npy   int32   (C,)          vocabulary columns kept
  NAME_lens_logits.npy    float32 (n_layers + 1, T, C)
                          lm_head(norm(h)) for h = hidden_states[0 .. n_layers - 1] and the
                          input of the final norm (the last layer's output, before the norm)

The tiny models (tests/fixtures/tiny_gqa, tiny_bias: config.json +
model.safetensors) use their committed ids.npy and keep every column and
layer. SmolLM2 (loaded from the GGUF, weights dequantized to float32, as
make_smollm2_reference.py does) runs a plain prompt (no chat template, no BOS)
and keeps three layers of patterns and, of the lens, the columns that are in
the top 8 of any row and position plus the prompt's own ids. reference.json
records which, and for the SmolLM2 prompt each token's piece
(tokenizer.decode([id])) and the decoded text.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refgen_common as rc  # noqa: E402

GENERATOR = "scripts/make_lens_pattern_reference.py"
SEED = 0  # nothing is sampled
SMOLLM2_PROMPT = "The Eiffel Tower is in the city of"
SMOLLM2_LAYERS = [0, 14, 29]
SMOLLM2_TOP = 8


def run(model, ids: np.ndarray) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Attentions (per layer (n_heads, T, T)), the lens residuals (n_layers + 1
    of (T, d_model)) and the lens logits (n_layers + 1, T, vocab)."""
    pre_norm: dict[str, torch.Tensor] = {}
    handle = model.model.norm.register_forward_pre_hook(lambda mod, args: pre_norm.update(x=args[0].detach()))
    out = model(input_ids=torch.from_numpy(ids.astype(np.int64))[None], use_cache=False, output_attentions=True,
                output_hidden_states=True)
    handle.remove()
    n_layers = model.config.num_hidden_layers
    hidden = [h[0] for h in out.hidden_states]
    assert len(hidden) == n_layers + 1 and len(out.attentions) == n_layers
    # hidden_states[n_layers] is the normed output in this transformers; the
    # lens wants the residual before the norm, as every other row.
    residuals = hidden[:n_layers] + [pre_norm["x"][0]]
    lens = torch.stack([model.lm_head(model.model.norm(r)) for r in residuals])
    assert torch.allclose(lens[-1], out.logits[0], atol=1e-5, rtol=0), "the last lens row must be the logits"
    return [a[0] for a in out.attentions], residuals, lens


def write_model(writer: rc.ArrayWriter, name: str, model, ids: np.ndarray, layers: list[int],
                columns: np.ndarray | None) -> dict[str, Any]:
    attentions, _, lens = run(model, ids)
    pattern = torch.stack([attentions[l] for l in layers])
    sums = pattern.sum(-1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
    if columns is None:
        columns = np.arange(lens.shape[-1], dtype=np.int32)
    writer.save(f"{name}_ids", ids, "<i4")
    writer.save(f"{name}_pattern", pattern, "<f4")
    writer.save(f"{name}_lens_columns", columns, "<i4")
    writer.save(f"{name}_lens_logits", lens[:, :, torch.from_numpy(columns.astype(np.int64))], "<f4")
    return {"T": int(len(ids)), "ids": ids.tolist(), "pattern_layers": layers, "n_columns": int(len(columns)),
            "n_layers": int(model.config.num_hidden_layers), "n_heads": int(model.config.num_attention_heads)}


def tiny(writer: rc.ArrayWriter, name: str) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    folder = rc.REPO_ROOT / "tests" / "fixtures" / name
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                 attn_implementation="eager").float().eval()
    ids = np.load(folder / "ids.npy").astype(np.int32)
    record = write_model(writer, name, model, ids, list(range(model.config.num_hidden_layers)), None)
    record["source"] = f"tests/fixtures/{name} (config.json + model.safetensors)"
    return record


def smollm2(writer: rc.ArrayWriter, path: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    ids = np.array(tokenizer(SMOLLM2_PROMPT, add_special_tokens=False)["input_ids"], dtype=np.int32)
    assert tokenizer.decode(ids.tolist()) == SMOLLM2_PROMPT
    _, _, lens = run(model, ids)
    top = torch.topk(lens, SMOLLM2_TOP, dim=-1).indices.flatten().tolist()
    columns = np.array(sorted(set(top) | set(ids.tolist())), dtype=np.int32)
    record = write_model(writer, "smollm2", model, ids, SMOLLM2_LAYERS, columns)
    record.update({
        "source": {"file": fname, "sha256": rc.sha256_file(path)},
        "text": SMOLLM2_PROMPT,
        "tokenize_call": "tokenizer(text, add_special_tokens=False)",
        "pieces": [tokenizer.decode([i]) for i in ids.tolist()],
        "tokens": tokenizer.convert_ids_to_tokens(ids.tolist()),
    })
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, nargs="?",
                        default=rc.REPO_ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--out", type=Path, default=rc.REPO_ROOT / "tests" / "fixtures" / "lens_patterns")
    args = parser.parse_args()
    rc.setup_determinism(SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    writer = rc.ArrayWriter(args.out)
    models = {name: tiny(writer, name) for name in ("tiny_gqa", "tiny_bias")}
    if args.model.exists():
        models["smollm2"] = smollm2(writer, args.model.resolve())
    ref = rc.manifest_header(GENERATOR, SEED)
    ref.update({
        "models": models,
        "arrays": writer.records,
        "conventions": {
            "pattern": "transformers eager attentions[l][0]: (n_heads, query, key), softmax of "
                       "q.k / sqrt(head_dim) after RoPE, 0 above the diagonal (TransformerLens hook_pattern)",
            "lens": "row r < n_layers: lm_head(norm(hidden_states[r])) (the residual entering layer r); "
                    "row n_layers: lm_head(norm(x)) with x the input of the final norm, i.e. the logits",
        },
    })
    rc.write_json(args.out / "reference.json", ref)
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {len(writer.records)} arrays for {', '.join(models)} to {args.out} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
