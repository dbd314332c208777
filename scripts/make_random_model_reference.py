#!/usr/bin/env python3
"""Regenerates tests/fixtures/random_model/: an independent re-implementation
of patchbay's seeded random weights (host/model/model_random.c, pb_random_fill) in
numpy, the "tiny" random model built from them as a transformers
LlamaForCausalLM, and its float32 logits and a few hook activations, for
tests/test_model_random.c.

Usage: .venv/bin/python scripts/make_random_model_reference.py [OUT_DIR]

The generator, as documented in include/patchbay.h and host/model/model_random.c:
    key  = splitmix64(splitmix64(seed) ^ (tensor + 1) * 0xd1b54a32d192ed03)
    bits = splitmix64(key + i * 0x9e3779b97f4a7c15)        (uint64, wrapping)
    unit = float32(bits >> 40) * 2^-24                      (24 bits, [0, 1))
    w    = center + half_width * (2 * unit - 1)             (float32, this order)
with (center, half_width) = (0, 0.02 * sqrt(3)) for matrices and biases
(uniform, standard deviation 0.02) and (1, 0.1) for norm weights. Tensor
numbers follow the loader's list (host/model/model.c, wanted_list): token_embd,
output_norm, [output when untied], then per layer attn_norm, q, k, v,
[q/k/v biases], o, ffn_norm, gate, up, down.

Outputs (reference.json lists each .npy's dtype and shape):
    ids.npy                      int32 (T)
    logits.npy                   float32 (T, vocab)
    <hook>.npy                   float32 (T, d_model) or (T, n_heads, head_dim)
    reference.json               manifest, config, generator cases (exact
                                 float32 bit patterns of pb_random_fill outputs)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refgen_common import ArrayWriter, capture_hooks, manifest_header, setup_determinism, write_json  # noqa: E402

GENERATOR = "scripts/make_random_model_reference.py"
SEED = 7
# The tiny entry of host/model/model_random.c's shape table.
TINY = dict(n_layers=4, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_mlp=176, vocab_size=512,
            context_length=2048, rms_eps=1e-5, rope_theta=10000.0)
IDS = [1, 17, 300, 42, 5, 511, 0, 99, 256, 7, 128, 64]
HOOKS = ["hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.attn.hook_q",
         "blocks.2.attn.hook_z", "blocks.3.hook_resid_post", "ln_final.hook_normalized"]

MATRIX, NORM, BIAS = "matrix", "norm", "bias"


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Elementwise splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def random_fill(n: int, seed: int, tensor: int, kind: str, offset: int = 0) -> np.ndarray:
    """Elements [offset, offset + n) of tensor `tensor` (float32)."""
    with np.errstate(over="ignore"):
        s = splitmix64(np.array([seed], dtype=np.uint64))
        mixed = s ^ (np.array([tensor + 1], dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03))
        key = splitmix64(mixed)[0]
        i = np.arange(offset, offset + n, dtype=np.uint64)
        bits = splitmix64(key + i * np.uint64(0x9E3779B97F4A7C15))
    unit = (bits >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    if kind == NORM:
        half_width, center = np.float32(0.1), np.float32(1.0)
    else:
        half_width = np.float32(np.float32(0.02) * np.sqrt(np.float32(3.0)))
        center = np.float32(0.0)
    centred = (np.float32(2.0) * unit - np.float32(1.0)).astype(np.float32)
    scaled = (half_width * centred).astype(np.float32)
    out = (center + scaled).astype(np.float32)
    assert out.dtype == np.float32
    return out


def tensor_list(cfg: dict, tied: bool, qkv_bias: bool) -> list[tuple[str, tuple[int, ...], str]]:
    """(HF name, shape, kind) in the loader's order."""
    d, q, kv = cfg["d_model"], cfg["n_heads"] * cfg["head_dim"], cfg["n_kv_heads"] * cfg["head_dim"]
    out = [("model.embed_tokens.weight", (cfg["vocab_size"], d), MATRIX), ("model.norm.weight", (d,), NORM)]
    if not tied:
        out.append(("lm_head.weight", (cfg["vocab_size"], d), MATRIX))
    for layer in range(cfg["n_layers"]):
        p = f"model.layers.{layer}."
        out += [(p + "input_layernorm.weight", (d,), NORM), (p + "self_attn.q_proj.weight", (q, d), MATRIX),
                (p + "self_attn.k_proj.weight", (kv, d), MATRIX), (p + "self_attn.v_proj.weight", (kv, d), MATRIX)]
        if qkv_bias:
            out += [(p + "self_attn.q_proj.bias", (q,), BIAS), (p + "self_attn.k_proj.bias", (kv,), BIAS),
                    (p + "self_attn.v_proj.bias", (kv,), BIAS)]
        out += [(p + "self_attn.o_proj.weight", (d, q), MATRIX), (p + "post_attention_layernorm.weight", (d,), NORM),
                (p + "mlp.gate_proj.weight", (cfg["d_mlp"], d), MATRIX),
                (p + "mlp.up_proj.weight", (cfg["d_mlp"], d), MATRIX),
                (p + "mlp.down_proj.weight", (d, cfg["d_mlp"]), MATRIX)]
    return out


def build_tiny(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    c = TINY
    config = LlamaConfig(vocab_size=c["vocab_size"], hidden_size=c["d_model"], num_hidden_layers=c["n_layers"],
                         num_attention_heads=c["n_heads"], num_key_value_heads=c["n_kv_heads"],
                         head_dim=c["head_dim"], intermediate_size=c["d_mlp"], tie_word_embeddings=True,
                         rms_norm_eps=c["rms_eps"], max_position_embeddings=c["context_length"],
                         rope_parameters={"rope_type": "default", "rope_theta": c["rope_theta"]},
                         hidden_act="silu", attention_bias=False, mlp_bias=False, attn_implementation="eager")
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).float().eval()
    state = {}
    for index, (name, shape, kind) in enumerate(tensor_list(c, tied=True, qkv_bias=False)):
        n = int(np.prod(shape))
        state[name] = torch.from_numpy(random_fill(n, seed, index, kind).reshape(shape))
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(k == "lm_head.weight" for k in missing), missing
    model.tie_weights()
    assert torch.equal(model.lm_head.weight, state["model.embed_tokens.weight"])
    # HF rotary inv_freq is a buffer computed at init; recheck the theta
    rotary = model.model.rotary_emb
    want = 1.0 / (c["rope_theta"] ** (torch.arange(0, c["head_dim"], 2, dtype=torch.float32) / c["head_dim"]))
    assert torch.allclose(rotary.inv_freq.float(), want), "rope theta not applied"
    return model


# Direct generator checks: (seed, tensor, kind, n, offset). The last ones
# cover uint64 wraparound of seed and index, and (n > 65536) the threaded
# path of pb_random_fill: the C test fills offset + n elements and compares
# the tail.
GENERATOR_CASES = [
    (7, 0, MATRIX, 16, 0), (7, 1, NORM, 16, 0), (7, 3, MATRIX, 16, 0), (7, 37, MATRIX, 16, 0),
    (0, 0, MATRIX, 16, 0), (1, 0, MATRIX, 16, 0), (7, 4, BIAS, 16, 0),
    (0xFFFFFFFFFFFFFFFF, 12, NORM, 16, 0), (123456789, 40, MATRIX, 16, 99984),
]


def main() -> int:
    out_dir = (Path(sys.argv[1]) if len(sys.argv) > 1
               else Path(__file__).resolve().parent.parent / "tests/fixtures/random_model")
    out_dir.mkdir(parents=True, exist_ok=True)
    setup_determinism(0)
    writer = ArrayWriter(out_dir)

    cases = []
    for seed, tensor, kind, n, offset in GENERATOR_CASES:
        values = random_fill(n, seed, tensor, kind, offset)
        cases.append({"seed": str(seed), "tensor": tensor, "kind": kind, "offset": offset,
                      "bits": [int(b) for b in values.view(np.uint32)]})
    # distribution sanity (documented: matrices std 0.02, norms in [0.9, 1.1])
    big = random_fill(200000, SEED, 0, MATRIX)
    assert abs(float(big.std()) - 0.02) < 2e-4 and abs(float(big.mean())) < 2e-4, (big.std(), big.mean())
    norm = random_fill(200000, SEED, 1, NORM)
    assert norm.min() >= 0.9 and norm.max() <= 1.1

    model = build_tiny(SEED)
    ids = np.array(IDS, dtype=np.int32)
    logits, acts = capture_hooks(model, torch.from_numpy(ids.astype(np.int64)).unsqueeze(0))
    writer.save("ids", ids, "<i4")
    writer.save("logits", logits, "<f4")
    for name in HOOKS:
        writer.save(name, acts[name], "<f4")

    manifest = manifest_header(GENERATOR, SEED)
    manifest.update({
        "model": "tiny",
        "hf_class": "LlamaForCausalLM",
        "config": dict(TINY, tie_word_embeddings=True, qkv_bias=False),
        "ids": IDS,
        "hooks": HOOKS,
        "generator_cases": cases,
        "files": writer.records,
    })
    write_json(out_dir / "reference.json", manifest)
    total = sum(p.stat().st_size for p in out_dir.iterdir())
    print(f"wrote {out_dir}: {len(writer.records)} arrays, {total} bytes; logits std {float(logits.std()):.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
