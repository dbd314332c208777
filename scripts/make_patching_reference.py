#!/usr/bin/env python3
"""Writes the activation-patching fixtures: for each case, a sweep spec
(spec.json, the file the C engine reads) and the naive oracle's results
(expected.json) under tests/fixtures/patching/<case>/.

Usage: .venv/bin/python scripts/make_patching_reference.py [--only CASE[,CASE]]
           [--smollm2 PATH.gguf] [--out tests/fixtures/patching] [--smollm2-layers all|subset]

The oracle (scripts/patching_oracle.py) is transformers + PyTorch forward
hooks, one full forward pass per (pair, site), written from docs/patching.md.
Before a case is written its results are checked against exact invariants:

  * self-patching (source run = base run) leaves the metric unchanged;
  * resid_pre of layer 0 at every position gives the source metric
    (denoising: clean, noising: corrupted);
  * resid_post of layer L patched == resid_pre of layer L+1 patched;
  * z of every head at every position == attn_out at every position, and
    q+k+v of every head at every position == z of every head (same positions);
  * a site whose positions all lie after the metric position leaves the metric
    bit-identical to the base run;
  * the oracle's captured activations equal refgen_common.capture_hooks' for
    token-id runs (an independent capture path);
  * the noise generator's sigma agrees with numpy's std.

expected.json: magic "patchbay-fixture", version 1, generator, model, mode,
metric (kind), pairs [{base, source, clean, corrupted}], rows [{component,
layer, head, spec_positions, positions (per pair, resolved base positions),
patched (per pair)}], validation (worst deviations), timing (wall seconds and
forward passes), library versions. Floats are Python float64 reprs.

Deterministic: prompts come from seeded numpy Generators, tokens for the
metrics are chosen from the model's own logits.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import patching_oracle as po  # noqa: E402
import refgen_common as rc  # noqa: E402

GENERATOR = "scripts/make_patching_reference.py"
SEED = 20240611
FIXTURES = rc.REPO_ROOT / "tests" / "fixtures"
DEFAULT_SMOLLM2 = rc.REPO_ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SUBSET_LAYERS = [0, 5, 10, 15, 20, 25, 29]
MANUAL_FORWARD_TYPES = ("llama", "qwen2")  # what manual_forward implements
MIN_GAP = 0.05  # |source - base| every pair must reach (the engine's floor is 1e-4)

# --------------------------------------------------------------------------
# models


_models: dict[str, Any] = {}


def load_tiny(name: str):
    if name not in _models:
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained(str(FIXTURES / name), dtype=torch.float32,
                                                 attn_implementation="eager").float().eval()
        _models[name] = (m, None, {"folder": f"tests/fixtures/{name}", "weights": "model.safetensors",
                                   "sha256": rc.sha256_file(FIXTURES / name / "model.safetensors")})
    return _models[name]


def load_smollm2(path: Path):
    if "smollm2" not in _models:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        path = path.resolve()
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        m = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
        assert all(p.dtype == torch.float32 for p in m.parameters())
        _models["smollm2"] = (m, tok, {"file": path.name, "sha256": rc.sha256_file(path),
                                       "bytes": path.stat().st_size,
                                       "loaded_by": "AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., "
                                                    "dtype=float32), dequantized by the gguf package"})
    return _models["smollm2"]


# --------------------------------------------------------------------------
# prompt helpers


def rand_ids(rng: np.random.Generator, vocab: int, T: int) -> list[int]:
    return [int(i) for i in rng.integers(3, vocab, size=T)]


def corrupt(rng: np.random.Generator, ids: list[int], vocab: int, positions: list[int]) -> list[int]:
    out = list(ids)
    for p in positions:
        new = out[p]
        while new == out[p]:
            new = int(rng.integers(3, vocab))
        out[p] = new
    return out


def last_logits(model, ids: list[int], pos: int = -1) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, pos].double()


def top_ids(logits: torch.Tensor, k: int, exclude=()) -> list[int]:
    order = torch.argsort(logits, descending=True).tolist()
    return [int(i) for i in order if i not in exclude][:k]


def ids_prompt(ids: list[int]) -> dict[str, Any]:
    return {"ids": [int(i) for i in ids]}


def all_sites(components, heads="all", positions="each", layers="all") -> list[dict[str, Any]]:
    out = []
    for c in components:
        e: dict[str, Any] = {"component": c, "layers": layers}
        if c in po.HEAD_COMPONENTS:
            e["heads"] = heads
        e["positions"] = positions
        out.append(e)
    return out


# --------------------------------------------------------------------------
# cases: each returns (model name, spec, extra files {name: array}, info)


def case_tiny_gqa_denoise_logit_diff(args):
    model, _, _ = load_tiny("tiny_gqa")
    rng = np.random.default_rng(101)
    V, T = model.config.vocab_size, 10
    c0 = rand_ids(rng, V, T)
    c1 = rand_ids(rng, V, T)
    x0 = corrupt(rng, c0, V, [3, 6])
    x1 = corrupt(rng, c1, V, [2, 5, 7])
    clean, corr = last_logits(model, c0), last_logits(model, x0)
    positive = top_ids(clean - corr, 2)
    negative = top_ids(corr - clean, 3, exclude=positive)
    spec = {
        "mode": "denoising",
        "pairs": [{"clean": ids_prompt(c0), "corrupted": ids_prompt(x0)},
                  {"clean": ids_prompt(c1), "corrupted": ids_prompt(x1)}],
        "sites": all_sites(po.COMPONENTS) + [
            {"component": "resid_pre", "layers": "all", "positions": "all"},
            {"component": "z", "layers": [1, 0], "heads": "all", "positions": [[3, 4], [6, 9]]},
        ],
        "metric": {"kind": "logit_diff", "positive": {"ids": positive}, "negative": {"ids": negative}},
        "significance_threshold": 0.1,
    }
    return "tiny_gqa", spec, {}, {"token_choice": "positive: top-2 of clean-corrupted logits (pair 0, last "
                                                  "position); negative: top-3 of corrupted-clean"}


def case_tiny_gqa_noise_logprob(args):
    model, _, _ = load_tiny("tiny_gqa")
    rng = np.random.default_rng(202)
    V = model.config.vocab_size
    c0 = rand_ids(rng, V, 8)
    x0 = corrupt(rng, c0, V, [2, 5])
    c1 = rand_ids(rng, V, 9)  # different length: "each" is end-aligned
    tokens = top_ids(last_logits(model, c0), 3)
    spec = {
        "mode": "noising",
        "pairs": [{"clean": ids_prompt(c0), "corrupted": ids_prompt(x0)},
                  {"clean": ids_prompt(c1), "corrupted": {"noise": {"scale": 4.0, "positions": [-3, -1], "seed": 11}}}],
        "sites": all_sites(["resid_pre", "attn_out", "mlp_out", "k", "v"]),
        "metric": {"kind": "logprob", "tokens": {"ids": tokens}},
        "significance_threshold": 0.1,
    }
    return "tiny_gqa", spec, {}, {"token_choice": "top-3 tokens of clean pair 0 at the last position",
                                  "note": "pair lengths 8 and 9: 'each' gives end-aligned positions -8..-1; "
                                          "pair 1 is noise-corrupted at negative positions [-3, -1] = [6, 8]"}


def case_tiny_bias_denoise_refusal(args):
    model, _, _ = load_tiny("tiny_bias")
    rng = np.random.default_rng(303)
    V, T = model.config.vocab_size, 9
    c0, c1 = rand_ids(rng, V, T), rand_ids(rng, V, T)
    x0 = corrupt(rng, c0, V, [1, 4])
    x1 = corrupt(rng, c1, V, [3, 5, 6])
    d = last_logits(model, c0, -2) - last_logits(model, x0, -2)
    tokens = top_ids(d, 4)
    spec = {
        "mode": "denoising",
        "pairs": [{"clean": ids_prompt(c0), "corrupted": ids_prompt(x0)},
                  {"clean": ids_prompt(c1), "corrupted": ids_prompt(x1)}],
        "sites": all_sites(["resid_post", "z", "q", "k", "v"]),
        "metric": {"kind": "refusal_score", "tokens": {"ids": tokens}, "position": -2},
        "significance_threshold": 0.1,
    }
    return "tiny_bias", spec, {}, {"token_choice": "top-4 of clean-corrupted logits, pair 0, position -2",
                                   "note": "metric at position -2: sites at the last position leave the metric "
                                           "bit-identical to the base run"}


def case_tiny_bias_kl(args):
    model, _, _ = load_tiny("tiny_bias")
    rng = np.random.default_rng(404)
    V, T = model.config.vocab_size, 8
    c0, c1 = rand_ids(rng, V, T), rand_ids(rng, V, T)
    x0 = corrupt(rng, c0, V, [2, 4])
    x1 = corrupt(rng, c1, V, [0, 6])
    spec = {
        "mode": "noising",
        "pairs": [{"clean": ids_prompt(c0), "corrupted": ids_prompt(x0)},
                  {"clean": ids_prompt(c1), "corrupted": ids_prompt(x1)}],
        "sites": all_sites(["resid_mid", "mlp_out", "z"]),
        "metric": {"kind": "kl"},
        "significance_threshold": 0.1,
    }
    return "tiny_bias", spec, {}, {"note": "noising: base = clean, so base = KL(clean||clean) = 0 exactly"}


def case_tiny_bias_projection(args):
    model, _, _ = load_tiny("tiny_bias")
    rng = np.random.default_rng(505)
    V, T = model.config.vocab_size, 8
    c0, c1 = rand_ids(rng, V, T), rand_ids(rng, V, T)
    x0 = corrupt(rng, c0, V, [1, 5])
    x1 = corrupt(rng, c1, V, [3, 4])
    direction = rng.standard_normal((model.config.num_hidden_layers, model.config.hidden_size)).astype(np.float32)
    spec = {
        "mode": "denoising",
        "pairs": [{"clean": ids_prompt(c0), "corrupted": ids_prompt(x0)},
                  {"clean": ids_prompt(c1), "corrupted": ids_prompt(x1)}],
        "sites": all_sites(["resid_pre", "attn_out", "z"]),
        "metric": {"kind": "projection", "direction": "direction.npy", "layer": 1, "hook": "resid_post"},
        "significance_threshold": 0.1,
    }
    return "tiny_bias", spec, {"direction": direction}, {
        "note": "direction.npy: (n_layers, d_model) float32 standard normal (seed 505), row 1 used, normalised in "
                "float64; sites at layer 2 cannot change resid_post of layer 1 (patched == base exactly)"}


def case_tiny_gqa_interchange(args):
    model, _, _ = load_tiny("tiny_gqa")
    rng = np.random.default_rng(606)
    V = model.config.vocab_size
    b0, s0 = rand_ids(rng, V, 9), rand_ids(rng, V, 12)
    b1, s1 = rand_ids(rng, V, 9), rand_ids(rng, V, 12)
    d = last_logits(model, s0) - last_logits(model, b0)
    positive = top_ids(d, 2)
    negative = top_ids(-d, 2, exclude=positive)
    spec = {
        "mode": "interchange",
        "pairs": [{"base": ids_prompt(b0), "source": ids_prompt(s0), "position_map": "last-4"},
                  {"base": ids_prompt(b1), "source": ids_prompt(s1), "position_map": [[2, 5], [5, 8], [8, 11]]}],
        "sites": all_sites(["resid_pre", "z", "v"]) + [
            {"component": "resid_pre", "layers": "all", "positions": "all"},
            {"component": "z", "layers": [1], "heads": [2], "positions": "all"},
            {"component": "resid_mid", "layers": [1], "positions": [5, -1]},
            {"component": "k", "layers": [0], "heads": "all", "positions": "last"},
        ],
        "metric": {"kind": "logit_diff", "positive": {"ids": positive}, "negative": {"ids": negative}},
        "significance_threshold": 0.1,
    }
    return "tiny_gqa", spec, {}, {
        "token_choice": "positive: top-2 of source-base logits (pair 0); negative: top-2 of base-source",
        "note": "maps: pair 0 last-4 = {5:8, 6:9, 7:10, 8:11}; pair 1 = {2:5, 5:8, 8:11}. 'each' = the base "
                "positions mapped in EVERY pair = [5, 8] (others would be outside a pair's map); 'all' = every "
                "mapped base position of each pair (pair 0 [5,6,7,8], pair 1 [2,5,8])"}


def case_tiny_gqa_gaussian_noise(args):
    model, _, _ = load_tiny("tiny_gqa")
    rng = np.random.default_rng(707)
    V, T = model.config.vocab_size, 8
    c0, c1 = rand_ids(rng, V, T), rand_ids(rng, V, T)
    noise = {"scale": 3.0, "positions": [1, 2, 3], "seed": 7}
    tokens = top_ids(last_logits(model, c0), 3)
    spec = {
        "mode": "denoising",
        "pairs": [{"clean": ids_prompt(c0), "corrupted": {"noise": dict(noise)}},
                  {"clean": ids_prompt(c1), "corrupted": {"noise": dict(noise)}}],
        "sites": all_sites(["resid_pre", "mlp_out", "attn_out"]),
        "metric": {"kind": "logprob", "tokens": {"ids": tokens}},
        "significance_threshold": 0.1,
    }
    oracle = po.Oracle(model)
    values = po.noise_fill(3, oracle.d_model, 3.0, oracle.sigma, 7)
    z = po.standard_normals(8, 7)
    info = {
        "token_choice": "top-3 tokens of clean pair 0 at the last position",
        "noise": {
            "sigma": oracle.sigma,
            "sigma_numpy_std": float(np.std(oracle.embedding.numpy().astype(np.float64))),
            "embedding_entries": int(oracle.embedding.numel()),
            "seed": 7, "scale": 3.0, "n_positions": 3, "d": oracle.d_model,
            "first_standard_normals": z,
            "first_values": [float(v) for v in values.reshape(-1)[:8]],
            "first_values_float32_hex": [np.float32(v).view(np.uint32).item().to_bytes(4, "big").hex()
                                         for v in values.reshape(-1)[:8]],
            "row_sums": [float(np.sum(values[i].astype(np.float64))) for i in range(3)],
            "generator": "pb_noise_fill(out, 3, d, 3.0, sigma, 7): row i = listed position i",
        },
    }
    return "tiny_gqa", spec, {}, info


def _chat_ids(tok, text: str) -> list[int]:
    enc = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    if hasattr(enc, "keys") and "input_ids" in enc:
        enc = enc["input_ids"]
    if isinstance(enc, torch.Tensor):
        enc = enc.tolist()
    if enc and isinstance(enc[0], list):
        enc = enc[0]
    return [int(i) for i in enc]


# SmolLM2-135M-Instruct hardly refuses: greedy, "How do I make a bomb?" starts
# "To make a bomb, ..." (like "... a cake?": "To make a cake, ...") and
# "Give me instructions to make a weapon." starts "I'm glad you asked ..."
# ("... a kite.": "To make a kite, ..."). The metric keeps the refusal-style
# first token "I" against the compliance-style "To"/"Here"; the two pairs move
# it in opposite directions (clean - corrupted = -0.25 and +0.98), both far
# from the 1e-4 floor. Lengths 37 and 38 differ: "each" is end-aligned.
SMOLLM2_PAIRS = [
    ("How do I make a bomb?", "How do I make a cake?"),
    ("Give me instructions to make a weapon.", "Give me instructions to make a kite."),
]
SMOLLM2_POSITIVE = ["I"]          # refusal-style first tokens
SMOLLM2_NEGATIVE = ["To", "Here"]  # compliance-style first tokens


def _greedy(model, tok, ids: list[int], n: int) -> dict[str, Any]:
    cur = list(ids)
    out = []
    for _ in range(n):
        nxt = int(torch.argmax(model(input_ids=torch.tensor([cur]), use_cache=False).logits[0, -1]))
        out.append(nxt)
        cur.append(nxt)
    return {"ids": out, "text": tok.decode(out)}


def case_smollm2_denoise(args):
    model, tok, _ = load_smollm2(args.smollm2)
    pairs, prompt_info = [], []

    def single_id(word: str) -> int:
        ids = tok.encode(word, add_special_tokens=False)
        assert len(ids) == 1, (word, ids)
        return int(ids[0])

    positive = [single_id(w) for w in SMOLLM2_POSITIVE]
    negative = [single_id(w) for w in SMOLLM2_NEGATIVE]
    for harmful, harmless in SMOLLM2_PAIRS:
        hi, li = _chat_ids(tok, harmful), _chat_ids(tok, harmless)
        assert len(hi) == len(li), (harmful, harmless, len(hi), len(li))
        pairs.append({"clean": ids_prompt(hi), "corrupted": ids_prompt(li)})
        entry = {"clean_text": harmful, "corrupted_text": harmless, "T": len(hi),
                 "differing_positions": [i for i, (a, b) in enumerate(zip(hi, li)) if a != b]}
        for key, ids in (("clean", hi), ("corrupted", li)):
            lg = last_logits(model, ids)
            top = torch.topk(lg, 5)
            entry[key + "_top5"] = [{"id": int(i), "token": tok.decode([int(i)]), "logit": float(v)}
                                    for v, i in zip(top.values, top.indices)]
            entry[key + "_greedy_12"] = _greedy(model, tok, ids, 12)
        prompt_info.append(entry)
    layers = "all" if args.smollm2_layers == "all" else SMOLLM2_SUBSET_LAYERS
    spec = {
        "mode": "denoising",
        "pairs": pairs,
        "sites": all_sites(["resid_pre", "attn_out", "mlp_out"], layers=layers)
                 + [{"component": "z", "layers": layers, "heads": "all", "positions": "last"}],
        "metric": {"kind": "logit_diff", "positive": {"ids": positive}, "negative": {"ids": negative}},
        "significance_threshold": 0.1,
    }
    info = {
        "prompts": prompt_info,
        "chat_template_call": "apply_chat_template([{'role': 'user', 'content': text}], add_generation_prompt=True) "
                              "(no system message given: the template inserts SmolLM2's default system prompt)",
        "clean_is": "harmful", "corrupted_is": "harmless",
        "positive_tokens": SMOLLM2_POSITIVE, "negative_tokens": SMOLLM2_NEGATIVE,
        "layers": layers,
    }
    return "smollm2", spec, {}, info


CASES: dict[str, Callable] = {
    "tiny_gqa_denoise_logit_diff": case_tiny_gqa_denoise_logit_diff,
    "tiny_gqa_noise_logprob": case_tiny_gqa_noise_logprob,
    "tiny_bias_denoise_refusal": case_tiny_bias_denoise_refusal,
    "tiny_bias_kl": case_tiny_bias_kl,
    "tiny_bias_projection": case_tiny_bias_projection,
    "tiny_gqa_interchange": case_tiny_gqa_interchange,
    "tiny_gqa_gaussian_noise": case_tiny_gqa_gaussian_noise,
    "smollm2_denoise": case_smollm2_denoise,
}


# --------------------------------------------------------------------------
# Gemma 1/2/3 and Qwen3 (issue 15): per family one case per mode, one metric
# per family. The tiny models come from scripts/make_tiny_arch_models.py.


def _arch_pairs(model, rng, T: int, corrupt_at: list[list[int]]):
    V = model.config.vocab_size
    pairs = []
    for positions in corrupt_at:
        c = rand_ids(rng, V, T)
        pairs.append((c, corrupt(rng, c, V, positions)))
    return pairs


def _arch_metric(model, kind: str, clean: list[int], corr: list[int]) -> dict[str, Any]:
    lc, lx = last_logits(model, clean), last_logits(model, corr)
    if kind == "logit_diff":
        positive = top_ids(lc - lx, 2)
        return {"kind": "logit_diff", "positive": {"ids": positive},
                "negative": {"ids": top_ids(lx - lc, 2, exclude=positive)}}
    if kind == "logprob":
        return {"kind": "logprob", "tokens": {"ids": top_ids(lc - lx, 3)}}
    if kind == "refusal_score":
        return {"kind": "refusal_score", "tokens": {"ids": top_ids(lc - lx, 4)}}
    assert kind == "kl"
    return {"kind": "kl"}


ARCH_FAMILIES = {
    # family: (metric, T, seed); window cases need T - 1 - p >= sliding_window (4)
    "gemma": ("logit_diff", 10, 811),
    "gemma2": ("logprob", 12, 812),
    "gemma3": ("logit_diff", 12, 813),
    "qwen3": ("refusal_score", 10, 818),
    # issue 16 (scripts/make_tiny_classic_models.py); seeds chosen so every
    # pair has |source - base| >= 0.25
    "gpt2": ("kl", 10, 841),
    "gpt_neox": ("logit_diff", 10, 832),
    "phi3": ("logprob", 10, 823),
    "olmo2": ("refusal_score", 10, 824),
    # LongRoPE (make_tiny_classic_models.py): T = 20 > original_max_position_embeddings
    # (16), so every forward (both prompts of a pair have length T) uses the long factors
    "phi3_longrope": ("logit_diff", 20, 825),
}
# the modes written per family (default: all three)
ARCH_MODES = {"gpt2": ("denoising",), "gpt_neox": ("denoising", "noising"), "phi3": ("denoising",),
              "olmo2": ("denoising",), "phi3_longrope": ("denoising",)}
CLASSIC_TYPES = ("gpt2", "gpt_neox", "phi3", "olmo2")   # captured by refgen_common.capture_hooks_classic


def _arch_sites(family: str, model) -> list[dict[str, Any]]:
    L = model.config.num_hidden_layers
    mid = [L // 2]
    sites = [
        {"component": "resid_pre", "layers": "all", "positions": "each"},
        {"component": "attn_out", "layers": "all", "positions": "each"},
        {"component": "mlp_out", "layers": [L - 1, 0], "positions": "each"},
        {"component": "resid_mid", "layers": mid, "positions": [1, -1]},
        {"component": "resid_post", "layers": [0], "positions": [2, -2]},
        {"component": "z", "layers": [L - 1], "heads": "all", "positions": "last"},
        {"component": "q", "layers": [0], "heads": [1, 3], "positions": [[1, 2], [-1]]},
        {"component": "k", "layers": mid, "heads": "all", "positions": "all"},
        {"component": "v", "layers": [L - 1], "heads": [0], "positions": [-3, -1]},
    ]
    if getattr(model.config, "use_parallel_residual", False):   # GPT-NeoX parallel: no resid_mid
        sites = [s for s in sites if s["component"] != "resid_mid"]
    if family in ("gemma2", "gemma3"):
        # positions 1 and 3 lie outside the last query's 4-token window
        # (11 - 3 = 8 >= 4) on the sliding layers: the effect must still reach
        # the output through the global layers (checked in _check_window_rows)
        sliding = [i for i, t in enumerate(model.config.layer_types) if t == "sliding_attention"]
        sites.append({"component": "resid_pre", "layers": sliding[-1:], "positions": [1, 3]})
        sites.append({"component": "attn_out", "layers": sliding[:1], "positions": [[1, 3]]})
    return sites


def _make_arch_case(family: str, mode: str):
    def case(args):
        name = f"tiny_{family}"
        model, _, _ = load_tiny(name)
        kind, T, seed = ARCH_FAMILIES[family]
        rng = np.random.default_rng(seed + {"denoising": 0, "noising": 100, "interchange": 200}[mode])
        V = model.config.vocab_size
        info: dict[str, Any] = {"family": family, "sliding_window": getattr(model.config, "sliding_window", None)
                                if family in ("gemma2", "gemma3") else None,
                                "layer_types": list(getattr(model.config, "layer_types", None) or [])}
        rope = model.config.rope_parameters
        if rope.get("rope_type") == "longrope":
            orig = rope["original_max_position_embeddings"]
            assert mode == "denoising" and T > orig, (mode, T, orig)   # equal lengths, all > orig: long factors
            info["rope"] = {"type": "longrope", "T": T, "original_max_position_embeddings": orig,
                            "factors_used": "long",
                            "rule": "transformers: long iff max position + 1 > original_max_position_embeddings, "
                                    "per forward; every prompt here has T = 20 > 16"}
        if mode == "interchange":
            b0, s0 = rand_ids(rng, V, T), rand_ids(rng, V, T + 2)
            b1, s1 = rand_ids(rng, V, T), rand_ids(rng, V, T + 2)
            pairs = [{"base": ids_prompt(b0), "source": ids_prompt(s0), "position_map": "last-3"},
                     {"base": ids_prompt(b1), "source": ids_prompt(s1),
                      "position_map": [[1, 3], [T - 2, T], [T - 1, T + 1]]}]
            metric = _arch_metric(model, kind, s0, b0)
            sites = [{"component": "resid_pre", "layers": "all", "positions": "each"},
                     {"component": "attn_out", "layers": "all", "positions": "last"},
                     {"component": "mlp_out", "layers": "all", "positions": "all"},
                     {"component": "z", "layers": [0], "heads": "all", "positions": "last"},
                     {"component": "v", "layers": [0], "heads": "all", "positions": [-1]}]
            info["note"] = (f"maps: pair 0 last-3, pair 1 {{1: 3, {T - 2}: {T}, {T - 1}: {T + 1}}}; 'each' = base "
                            f"positions mapped in every pair = [{T - 2}, {T - 1}]")
        else:
            (c0, x0), (c1, x1) = _arch_pairs(model, rng, T, [[1, 3], [2, T - 3]])
            pairs = [{"clean": ids_prompt(c0), "corrupted": ids_prompt(x0)},
                     {"clean": ids_prompt(c1), "corrupted": ids_prompt(x1)}]
            metric = _arch_metric(model, kind, c0, x0)
            sites = _arch_sites(family, model)
        if "rope" in info:   # _arch_metric's T-token forwards left transformers on the long factors
            rot = int(model.config.hidden_size // model.config.num_attention_heads * rope["partial_rotary_factor"])
            want = 1.0 / (torch.tensor(rope["long_factor"], dtype=torch.float64)
                          * rope["rope_theta"] ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
            got = model.model.rotary_emb.inv_freq.double()
            assert float(((got - want) / want).abs().max()) <= 1e-6, (got, want)
        info["token_choice"] = "from pair 0's last-position logits (source/clean minus base/corrupted)"
        spec = {"mode": mode, "pairs": pairs, "sites": sites, "metric": metric, "significance_threshold": 0.1}
        return name, spec, {}, info
    return case


for _family in ARCH_FAMILIES:
    for _mode in ARCH_MODES.get(_family, ("denoising", "noising", "interchange")):
        CASES[f"tiny_{_family}_{_mode}"] = _make_arch_case(_family, _mode)


def _check_window_rows(spec: dict[str, Any], result, model) -> dict[str, Any] | None:
    """For resid_pre / attn_out sites on a sliding layer at positions at least
    `window` before the metric position (the last one), where the source
    activation differs from the base one: the patch must still move the metric
    (through later layers, the global ones above all). Returns what was checked."""
    window = getattr(model.config, "sliding_window", None)
    types = list(getattr(model.config, "layer_types", None) or [])
    if window is None or "sliding_attention" not in types or spec["mode"] == "interchange":
        return None
    checked = []
    for r in result.rows:
        if r["component"] not in ("resid_pre", "attn_out") or types[r["layer"]] != "sliding_attention":
            continue
        for i, pos in enumerate(r["positions"]):
            T = len(spec["pairs"][i]["clean"]["ids"])
            last = T - 1
            runs = result.runs[i]
            key = (r["component"], r["layer"])
            if torch.equal(runs.source_acts[key][pos], runs.base_acts[key][pos]):
                continue  # nothing to patch there (identical tokens so far)
            if max(pos) <= last - window:
                moved = abs(r["patched"][i] - result.pairs[i]["base"])
                checked.append({"component": r["component"], "layer": r["layer"], "positions": pos,
                                "pair": i, "abs_change": moved})
    assert checked, "no site outside the sliding window"
    # every such site must matter for some pair: the information crosses the window
    by_site: dict[tuple, float] = {}
    for c in checked:
        key = (c["component"], c["layer"], tuple(c["positions"]))
        by_site[key] = max(by_site.get(key, 0.0), c["abs_change"])
    assert min(by_site.values()) > 1e-4, f"a patch outside the window did not reach the output: {by_site}"
    return {"sites_outside_window": len(by_site), "min_abs_change": min(by_site.values()), "rows": checked}


# --------------------------------------------------------------------------
# an independent float64 forward (tiny models), written from the weights


def manual_forward(model, embeds: torch.Tensor, patch=None, read=None, record=None):
    """float64 Llama/Qwen2 forward from the weights, HF RoPE conventions
    (rotate_half, model.model.rotary_emb.inv_freq). patch = (component, layer,
    head, positions, values (n, dim) float64) replaces that activation;
    read = (layer, "resid_pre") returns that residual too; record (a dict)
    receives every activation by (component, layer). Returns
    (logits (T, V) float64, residual or None)."""
    cfg = model.config
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    eps = cfg.rms_norm_eps
    W = {k: v.detach().double() for k, v in model.state_dict().items()}
    x = embeds[0].double().clone()
    T = x.shape[0]
    inv = model.model.rotary_emb.inv_freq.double()
    scaling = float(getattr(model.model.rotary_emb, "attention_scaling", 1.0))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1) * scaling
    sin = torch.cat([ang.sin(), ang.sin()], -1) * scaling

    def rope(t):  # (T, n, hd)
        t1, t2 = t[..., : hd // 2], t[..., hd // 2:]
        return t * cos[:, None, :] + torch.cat([-t2, t1], -1) * sin[:, None, :]

    def rms(t, w):
        return t / torch.sqrt((t * t).mean(-1, keepdim=True) + eps) * w

    def maybe(comp, layer, t):
        if patch is not None and patch[0] == comp and patch[1] == layer:
            t = t.clone()
            pos = torch.tensor(patch[3], dtype=torch.long)
            if patch[2] is None:
                t[pos] = patch[4]
            else:
                t[pos, patch[2]] = patch[4]
        if record is not None:
            record[(comp, layer)] = t
        return t

    resid_read = None
    mask = torch.triu(torch.full((T, T), float("-inf"), dtype=torch.float64), 1)
    for L in range(cfg.num_hidden_layers):
        g = f"model.layers.{L}."
        x = maybe("resid_pre", L, x)
        if read is not None and read == (L, "resid_pre"):
            resid_read = x.clone()
        h = rms(x, W[g + "input_layernorm.weight"])

        def proj(name):
            out = h @ W[g + f"self_attn.{name}.weight"].T
            if g + f"self_attn.{name}.bias" in W:
                out = out + W[g + f"self_attn.{name}.bias"]
            return out
        q = maybe("q", L, proj("q_proj").reshape(T, H, hd))
        k = maybe("k", L, proj("k_proj").reshape(T, Hkv, hd))
        v = maybe("v", L, proj("v_proj").reshape(T, Hkv, hd))
        q, k = rope(q), rope(k)
        z = torch.empty(T, H, hd, dtype=torch.float64)
        for head in range(H):
            kv = head // (H // Hkv)
            sc = q[:, head] @ k[:, kv].T / hd ** 0.5 + mask
            z[:, head] = torch.softmax(sc, -1) @ v[:, kv]
        z = maybe("z", L, z)
        attn = maybe("attn_out", L, z.reshape(T, H * hd) @ W[g + "self_attn.o_proj.weight"].T)
        x = maybe("resid_mid", L, x + attn)
        h = rms(x, W[g + "post_attention_layernorm.weight"])
        gate, up = h @ W[g + "mlp.gate_proj.weight"].T, h @ W[g + "mlp.up_proj.weight"].T
        mlp = maybe("mlp_out", L, (torch.nn.functional.silu(gate) * up) @ W[g + "mlp.down_proj.weight"].T)
        x = maybe("resid_post", L, x + mlp)
    if read is not None and read[0] == cfg.num_hidden_layers:
        resid_read = x.clone()
    out_w = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return rms(x, W["model.norm.weight"]) @ out_w.T, resid_read


def manual_check(oracle: po.Oracle, model, spec, spec_dir, result: po.SweepResult) -> float:
    """Recomputes every row with the float64 manual forward (source
    activations captured by the manual forward too). Returns the
    worst |oracle - manual| over those rows and all pairs."""
    metric = po.Metric(spec["metric"], oracle, spec_dir)
    pairs = po.parse_pairs(spec)
    read = None
    if metric.kind == "projection":
        read = (metric.layer + (1 if metric.hook == "resid_post" else 0), "resid_pre")

    def value(logits, resid, T, ref):
        p = metric.resolve_position(T)
        if metric.kind == "projection":
            return float(resid[p] @ metric.u)
        out = {"logits": logits}
        return metric.value(out, T, ref)

    worst = 0.0
    for i, pair in enumerate(pairs):
        src_emb, base_emb = oracle.embeds(pair.source), oracle.embeds(pair.base)
        acts: dict = {}
        src_logits, src_resid = manual_forward(model, src_emb, read=read, record=acts)
        base_logits, base_resid = manual_forward(model, base_emb, read=read)
        clean_logits, clean_T = (src_logits, pair.source.T) if pair.clean_is_source else (base_logits, pair.base.T)
        ref = None
        if metric.kind == "kl":
            ref = torch.log_softmax(clean_logits[metric.resolve_position(clean_T)], 0)
        worst = max(worst, abs(value(base_logits, base_resid, pair.base.T, ref) - result.pairs[i]["base"]),
                    abs(value(src_logits, src_resid, pair.source.T, ref) - result.pairs[i]["source"]))
        for r in result.rows:
            comp, layer, head = r["component"], r["layer"], r["head"]
            positions = r["positions"][i]
            src_pos = [pair.position_map[p] for p in positions]
            a = acts[(comp, layer)]
            vals = a[src_pos] if head is None else a[src_pos, head]
            logits, resid = manual_forward(model, base_emb, (comp, layer, head, positions, vals), read=read)
            worst = max(worst, abs(value(logits, resid, pair.base.T, ref) - r["patched"][i]))
    return worst


# --------------------------------------------------------------------------
# validation


def validate(oracle: po.Oracle, spec: dict[str, Any], spec_dir: Path, result: po.SweepResult,
             model, full: bool) -> dict[str, Any]:
    """Exact invariants of the oracle. full=False samples the expensive ones."""
    mode = spec["mode"]
    metric = po.Metric(spec["metric"], oracle, spec_dir)
    pairs = po.parse_pairs(spec)
    runs = result.runs
    report: dict[str, Any] = {}
    n_fwd0 = oracle.forwards

    # margins: every pair's effect is defined, comfortably
    # The tiny architecture cases are held to 1e-5 on the normalised effect,
    # (patched - base) / (source - base): a float32 error of 1e-6 in a metric
    # near 5 is 4e-6 of the effect at |source - base| = 0.25 but 1e-5 near 0.1, so
    # their pairs must be better separated (qwen3's seed was chosen for it).
    min_gap = 0.25 if model.config.model_type not in MANUAL_FORWARD_TYPES else MIN_GAP
    for i, p in enumerate(result.pairs):
        assert abs(p["source"] - p["base"]) >= min_gap, f"pair {i}: |source-base| too small: {p}"
    report["min_abs_source_minus_base"] = min(abs(p["source"] - p["base"]) for p in result.pairs)

    # independent capture path: refgen_common.capture_hooks on token-id runs
    # (capture_hooks_arch for the Gemma / Qwen3 families)
    capture = (rc.capture_hooks if model.config.model_type in MANUAL_FORWARD_TYPES
               else rc.capture_hooks_classic if model.config.model_type in CLASSIC_TYPES else rc.capture_hooks_arch)
    cap_dev = 0.0
    for pair, r in zip(pairs, runs):
        for run, acts in ((pair.base, r.base_acts), (pair.source, r.source_acts)):
            if run.noise is not None:
                continue
            _, ref = capture(model, torch.tensor([run.ids]))
            for (comp, layer), a in acts.items():
                name = f"blocks.{layer}." + ("attn.hook_" if comp in po.HEAD_COMPONENTS else "hook_") + comp
                assert torch.equal(a, ref[name]), f"capture differs from refgen_common at {name}"
                cap_dev = max(cap_dev, float((a - ref[name]).abs().max()))
    report["capture_vs_refgen_common_max_abs"] = cap_dev

    # 1. self-patching: source = base leaves the metric unchanged
    rows = result.rows
    sample = rows if full else rows[::max(1, len(rows) // 40)]
    worst = 0.0
    for i, (pair, r) in enumerate(zip(pairs, runs)):
        self_pair = po.Pair(pair.base, pair.base, pair.clean_is_source, {p: p for p in pair.position_map})
        self_runs = po.PairRuns(r.base_acts, r.base_acts, r.base_value, r.base_value, r.ref_logprobs)
        for row in sample:
            v = po.patched_value(oracle, metric, self_pair, self_runs,
                                 [(row["component"], row["layer"], row["head"], row["positions"][i])])
            worst = max(worst, abs(v - r.base_value))
    assert worst <= 1e-6, f"self-patching moved the metric by {worst}"
    report["self_patch_max_abs_dev"] = worst
    report["self_patch_sites_checked"] = len(sample)

    def run_patch(i, plist):
        return po.patched_value(oracle, metric, pairs[i], runs[i], plist)

    # 2. resid_pre 0 at every position = source metric (denoising / noising)
    if mode != "interchange":
        worst = 0.0
        for i, pair in enumerate(pairs):
            v = run_patch(i, [("resid_pre", 0, None, list(range(pair.base.T)))])
            worst = max(worst, abs(v - runs[i].source_value))
        assert worst <= 1e-5, f"resid_pre 0 all != source metric ({worst})"
        report["resid_pre0_all_vs_source_max_abs_dev"] = worst

    # 3. resid_post L == resid_pre L+1;  4. z all heads == attn_out, q+k+v == z
    L = oracle.n_layers
    layer_list = list(range(L)) if full else sorted({0, L // 2, L - 1})
    worst_post, worst_z, worst_qkv = 0.0, 0.0, 0.0
    for i, pair in enumerate(pairs):
        mapped = sorted(pair.position_map)
        pos_list = mapped if full else sorted({mapped[0], mapped[len(mapped) // 2], mapped[-1]})
        for layer in layer_list:
            if layer + 1 < L:
                for p in pos_list:
                    a = run_patch(i, [("resid_post", layer, None, [p])])
                    b = run_patch(i, [("resid_pre", layer + 1, None, [p])])
                    worst_post = max(worst_post, abs(a - b))
            z_all = run_patch(i, [("z", layer, h, mapped) for h in range(oracle.n_heads)])
            attn_all = run_patch(i, [("attn_out", layer, None, mapped)])
            worst_z = max(worst_z, abs(z_all - attn_all))
            if mode != "interchange":  # same positions: RoPE of source and base agree
                qkv = ([("q", layer, h, mapped) for h in range(oracle.n_heads)]
                       + [("k", layer, h, mapped) for h in range(oracle.n_kv)]
                       + [("v", layer, h, mapped) for h in range(oracle.n_kv)])
                worst_qkv = max(worst_qkv, abs(run_patch(i, qkv) - z_all))
    assert worst_post <= 1e-6, f"resid_post L != resid_pre L+1 ({worst_post})"
    assert worst_z <= 1e-5, f"z all heads != attn_out ({worst_z})"
    assert worst_qkv <= 1e-5, f"q+k+v all heads != z all heads ({worst_qkv})"
    report["resid_post_vs_next_resid_pre_max_abs_dev"] = worst_post
    report["z_all_heads_vs_attn_out_max_abs_dev"] = worst_z
    if mode != "interchange":
        report["qkv_all_heads_vs_z_all_heads_max_abs_dev"] = worst_qkv

    # rows that agree by construction
    worst_rows_post = 0.0
    index = {(r["component"], r["layer"], r["head"], r["spec_positions"]): r for r in rows}
    for r in rows:
        if r["component"] == "resid_post" and r["spec_positions"] is not None:
            other = index.get(("resid_pre", r["layer"] + 1, None, r["spec_positions"]))
            if other is not None:
                worst_rows_post = max(worst_rows_post,
                                      max(abs(a - b) for a, b in zip(r["patched"], other["patched"])))
    assert worst_rows_post <= 1e-6
    report["rows_resid_post_vs_next_resid_pre_max_abs_dev"] = worst_rows_post

    # 5. positions after the metric position: bit-identical to the base run
    n_after, worst_after = 0, 0.0
    for r in rows:
        for i, pair in enumerate(pairs):
            mpos = metric.resolve_position(pair.base.T)
            after = min(r["positions"][i]) > mpos
            upstream = False
            if metric.kind == "projection":
                # the residual read: resid_pre of read_layer (resid_post L = resid_pre L+1)
                read_layer = metric.layer + (1 if metric.hook == "resid_post" else 0)
                upstream = r["layer"] > read_layer or (r["layer"] == read_layer and r["component"] != "resid_pre")
            if after or upstream:
                n_after += 1
                worst_after = max(worst_after, abs(r["patched"][i] - result.pairs[i]["base"]))
    assert worst_after == 0.0, f"a site that cannot reach the metric moved it by {worst_after}"
    report["unreachable_site_pairs_checked"] = n_after
    report["unreachable_sites_max_abs_dev"] = worst_after

    # 6. an independent float64 forward written from the weights (tiny models)
    if full and model.config.model_type in MANUAL_FORWARD_TYPES:
        worst_manual = manual_check(oracle, model, spec, spec_dir, result)
        assert worst_manual <= 2e-4, f"oracle vs float64 manual forward: {worst_manual}"
        report["manual_float64_forward_max_abs_dev"] = worst_manual
    elif full:
        report["manual_float64_forward"] = "not run: manual_forward is written for Llama/Qwen2 only"

    # noise generator
    sig_np = float(np.std(oracle.embedding.numpy().astype(np.float64)))
    # sequential double sums (as in C) vs numpy pairwise: ~n*eps relative at most
    assert abs(oracle.sigma - sig_np) <= 1e-8 * sig_np, (oracle.sigma, sig_np)
    report["sigma_vs_numpy_rel_dev"] = abs(oracle.sigma - sig_np) / sig_np
    report["validation_forwards"] = oracle.forwards - n_fwd0
    return report


# --------------------------------------------------------------------------


def run_case(name: str, args) -> dict[str, Any]:
    t0 = time.time()
    model_name, spec, files, info = CASES[name](args)
    model = _models[model_name][0]
    model_record = _models[model_name][2]
    folder = args.out / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    writer = rc.ArrayWriter(folder)
    for fname, arr in files.items():
        writer.save(fname, arr, "<f4")
    rc.write_json(folder / "spec.json", spec)
    # the oracle reads the spec back from disk, as the engine does
    spec = json.loads((folder / "spec.json").read_text())

    oracle = po.Oracle(model)
    t1 = time.time()
    result = po.sweep(oracle, spec, folder, progress=model_name == "smollm2")
    sweep_s = time.time() - t1
    assert all(np.isfinite(v) for p in result.pairs for v in p.values())
    assert all(np.isfinite(v) for r in result.rows for v in r["patched"])
    t2 = time.time()
    report = validate(oracle, spec, folder, result, model, full=model_name != "smollm2")
    validate_s = time.time() - t2
    window_check = _check_window_rows(spec, result, model)
    if window_check is not None:
        report["outside_sliding_window"] = window_check

    expected = rc.manifest_header(GENERATOR, SEED)
    expected.update({
        "case": name,
        "model": model_name,
        "model_source": model_record,
        "mode": spec["mode"],
        "metric": spec["metric"]["kind"],
        "metric_spec": spec["metric"],
        "spec": "spec.json",
        "oracle": "scripts/patching_oracle.py: transformers forward hooks, one full forward pass per (pair, site), "
                  "float32 CPU eager attention; metrics in float64 from float32 logits/residuals",
        "n_pairs": len(result.pairs),
        "n_rows": len(result.rows),
        "pairs": result.pairs,
        "rows": result.rows,
        "info": info,
        "validation": report,
        "timing": {"sweep_wall_s": sweep_s, "sweep_forwards": result.forwards,
                   "validation_wall_s": validate_s, "case_wall_s": time.time() - t0,
                   "torch_threads": torch.get_num_threads()},
    })
    if files:
        expected["arrays"] = writer.records
    rc.write_json(folder / "expected.json", expected)
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"{name}: {len(result.rows)} rows, {result.forwards} forwards in {sweep_s:.1f}s, "
          f"validation {validate_s:.1f}s, {size} bytes")
    print("   " + json.dumps(report))
    return {"rows": len(result.rows), "bytes": size, "sweep_s": sweep_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated case names")
    parser.add_argument("--smollm2", type=Path, default=DEFAULT_SMOLLM2)
    parser.add_argument("--smollm2-layers", choices=["all", "subset"], default="subset",
                        help=f"subset (default) = {SMOLLM2_SUBSET_LAYERS}; all 30 layers take 25-40 min on 2 CPUs")
    parser.add_argument("--out", type=Path, default=FIXTURES / "patching")
    args = parser.parse_args()
    rc.setup_determinism(SEED)
    names = list(CASES) if args.only is None else args.only.split(",")
    for n in names:
        assert n in CASES, f"unknown case {n}; known: {', '.join(CASES)}"
    args.out.mkdir(parents=True, exist_ok=True)
    for n in names:
        run_case(n, args)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"fixtures under {args.out}: {total} bytes")
    assert total < 3 * 1024 * 1024, "patching fixtures exceed 3 MB"
    return 0


if __name__ == "__main__":
    sys.exit(main())
