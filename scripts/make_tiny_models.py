#!/usr/bin/env python3
"""Writes the two tiny random test models and their references:

  tests/fixtures/tiny_gqa/   LlamaForCausalLM, GQA, tied embeddings, llama3 RoPE scaling
  tests/fixtures/tiny_bias/  Qwen2ForCausalLM, Q/K/V biases, head_dim*n_heads != d_model, untied output

Each folder gets a Hugging Face checkpoint (config.json + model.safetensors,
float32), the same weights as model.gguf (all F32, laid out the way llama.cpp's
convert_hf_to_gguf.py lays them out), and references computed with transformers
on CPU in float32: ids.npy, logits.npy and one .npy per TransformerLens hook
point, described by reference.json (magic "patchbay-fixture", version 1).

Usage: .venv/bin/python scripts/make_tiny_models.py [--out tests/fixtures]

Deterministic: every random draw comes from a seeded torch.Generator / numpy
Generator. Checks run before anything is reported done: the GGUF is read back
tensor by tensor; an independent numpy forward pass over the GGUF tensors (with
llama.cpp's RoPE conventions: interleaved pairs + rope_freqs for llama, NeoX
halves for qwen2) must reproduce the HF logits; and, where this transformers
version can, the GGUF is loaded back through transformers and compared.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refgen_common as rc  # noqa: E402

GENERATOR = "scripts/make_tiny_models.py"
SEQ_LEN = 12

# Weight scales: large enough that attention is not uniform and logits spread
# over several units, small enough that nothing saturates (checked below).
LINEAR_STD = 0.2
EMBED_STD = 0.25
BIAS_STD = 0.3
NORM_JITTER = 0.1  # norm weights are 1 + NORM_JITTER * randn

SPEC_GQA: dict[str, Any] = {
    "name": "tiny_gqa",
    "seed": 1234,
    "hf_class": "LlamaForCausalLM",
    "arch": "llama",
    "vocab_size": 128,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 96,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    # original_max_position_embeddings 32 (not 16): with head_dim 16 and theta
    # 1e4 the wavelengths are 6.3, 19.9, 62.8, ...; 32 puts them in all three
    # llama3 regimes (6.3 < 8 kept, 19.9 in [8, 32] smoothed, >= 62.8 divided
    # by 8). With 16 every frequency would be changed and the "kept" branch
    # would go untested.
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
    "max_position_embeddings": 64,
}

SPEC_BIAS: dict[str, Any] = {
    "name": "tiny_bias",
    "seed": 5678,
    "hf_class": "Qwen2ForCausalLM",
    "arch": "qwen2",
    "vocab_size": 96,
    "hidden_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 80,
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "max_position_embeddings": 64,
}

BOS_ID, EOS_ID, UNK_ID = 1, 2, 0


# --------------------------------------------------------------------------
# model construction


def build_config(spec: dict[str, Any]):
    from transformers import LlamaConfig, Qwen2Config

    rope = {"rope_type": "default", "rope_theta": spec["rope_theta"]}
    if spec["rope_scaling"] is not None:
        rope = {**spec["rope_scaling"], "rope_theta": spec["rope_theta"]}
    common = dict(
        vocab_size=spec["vocab_size"],
        hidden_size=spec["hidden_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"],
        head_dim=spec["head_dim"],
        intermediate_size=spec["intermediate_size"],
        tie_word_embeddings=spec["tie_word_embeddings"],
        rms_norm_eps=spec["rms_norm_eps"],
        max_position_embeddings=spec["max_position_embeddings"],
        rope_parameters=rope,
        hidden_act="silu",
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        attn_implementation="eager",
    )
    if spec["arch"] == "llama":
        config = LlamaConfig(**common, attention_bias=False, mlp_bias=False)
    else:
        config = Qwen2Config(**common, use_sliding_window=False)
    config._attn_implementation = "eager"
    return config


def build_model(spec: dict[str, Any]):
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    config = build_config(spec)
    cls = LlamaForCausalLM if spec["arch"] == "llama" else Qwen2ForCausalLM
    model = cls(config).float().eval()
    gen = torch.Generator().manual_seed(spec["seed"])
    # named_parameters() lists a tied matrix once; sorting fixes the draw order.
    for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        shape = tuple(param.shape)
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight") or "layernorm" in name:
            value = 1.0 + NORM_JITTER * noise
        elif name.endswith(".bias"):
            value = BIAS_STD * noise
        elif "embed_tokens" in name:
            value = EMBED_STD * noise
        else:
            value = LINEAR_STD * noise
        param.data.copy_(value)
    if spec["tie_word_embeddings"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


# --------------------------------------------------------------------------
# tokenizer (minimal GPT-2 byte-level vocabulary; only needs to be well formed)

_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_MERGES = [
    ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r"), ("a", "n"), ("Ġ", "a"),
    ("o", "n"), ("r", "e"), ("Ġ", "s"), ("a", "t"), ("e", "n"), ("o", "r"), ("Ġ", "w"),
    ("i", "s"), ("e", "s"), ("Ġ", "o"), ("Ġ", "c"), ("i", "t"), ("a", "l"), ("a", "r"),
    ("Ġ", "b"), ("Ġ", "f"), ("Ġ", "p"), ("in", "g"), ("Ġ", "m"), ("o", "u"), ("l", "e"),
    ("Ġ", "d"), ("Ġa", "n"), ("Ġan", "d"),
]
_FIRST_MERGES = 16


def build_vocab(vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges. Byte-level strings as GPT-2 stores them
    ('Ġ' = space, 'Ċ' = newline). Every merge's parts and result are tokens."""
    import gguf

    tokens = list(_SPECIAL) + ["Ġ", "Ċ"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    merges: list[str] = []

    def take_merges(count: int) -> None:
        for left, right in _MERGES[len(merges):len(merges) + count]:
            assert left in tokens and right in tokens
            tokens.append(left + right)
            merges.append(f"{left} {right}")

    take_merges(_FIRST_MERGES)
    fill = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [chr(c) for c in range(ord("0"), ord("9") + 1)]
    fill += [chr(c) for c in range(33, 127) if not chr(c).isalnum()]
    for ch in fill:
        if len(tokens) == vocab_size:
            break
        tokens.append(ch)
    take_merges(vocab_size - len(tokens))
    assert len(tokens) == vocab_size and len(set(tokens)) == vocab_size, "vocabulary too large for the token pool"
    types = [int(gguf.TokenType.CONTROL) if t in _SPECIAL else int(gguf.TokenType.NORMAL) for t in tokens]
    return tokens, types, merges


# --------------------------------------------------------------------------
# GGUF


def permute_for_interleaved_rope(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """HF Llama rotates (x[i], x[i + d/2]) pairs within a head; llama.cpp's
    LLAMA rope rotates (x[2i], x[2i+1]). The converter reorders the rows of
    W_q / W_k so that GGUF row 2i+p of a head is HF row p*d/2 + i."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    rows = weights.shape[0]
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def llama3_rope_factors(rope_theta: float, head_dim: int, scaling: dict[str, Any]) -> np.ndarray:
    """The rope_freqs tensor llama.cpp applies as theta_i = pos * base^(-2i/d) / f_i.
    Same piecewise rule as the converter's generate_extra_tensors (float32 base
    frequencies, python floats for the rest), with one difference, recorded in
    reference.json: the converter reads original_max_position_embeddings
    from the top level of config.json (absent in transformers 5 configs, so it
    would fall back to 8192); we take it from the rope parameters, where
    transformers itself reads it, so the factors describe the model HF runs."""
    freqs = 1.0 / (rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factor = scaling.get("factor", 8.0)
    low_freq_factor = scaling.get("low_freq_factor", 1.0)
    high_freq_factor = scaling.get("high_freq_factor", 4.0)
    old_context_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array([float(f) for f in factors], dtype=np.float32)


def gguf_tensors(model, spec: dict[str, Any]) -> dict[str, np.ndarray]:
    """GGUF name -> float32 array (numpy shape (out, in), as the converter
    passes it to GGUFWriter), in the order they are written."""
    sd = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in model.state_dict().items()}
    n_head, n_kv = spec["num_attention_heads"], spec["num_key_value_heads"]
    out: dict[str, np.ndarray] = {}
    if spec["arch"] == "llama" and spec["rope_scaling"] is not None:
        out["rope_freqs.weight"] = llama3_rope_factors(spec["rope_theta"], spec["head_dim"], spec["rope_scaling"])
    out["token_embd.weight"] = sd["model.embed_tokens.weight"]
    for layer in range(spec["num_hidden_layers"]):
        hf = f"model.layers.{layer}."
        gg = f"blk.{layer}."
        q = sd[hf + "self_attn.q_proj.weight"]
        k = sd[hf + "self_attn.k_proj.weight"]
        if spec["arch"] == "llama":
            q = permute_for_interleaved_rope(q, n_head, n_head)
            k = permute_for_interleaved_rope(k, n_head, n_kv)
        out[gg + "attn_norm.weight"] = sd[hf + "input_layernorm.weight"]
        out[gg + "attn_q.weight"] = q
        out[gg + "attn_k.weight"] = k
        out[gg + "attn_v.weight"] = sd[hf + "self_attn.v_proj.weight"]
        if spec["arch"] == "qwen2":
            # qwen2 uses NeoX rotation in llama.cpp: no permutation, biases as is.
            out[gg + "attn_q.bias"] = sd[hf + "self_attn.q_proj.bias"]
            out[gg + "attn_k.bias"] = sd[hf + "self_attn.k_proj.bias"]
            out[gg + "attn_v.bias"] = sd[hf + "self_attn.v_proj.bias"]
        out[gg + "attn_output.weight"] = sd[hf + "self_attn.o_proj.weight"]
        out[gg + "ffn_norm.weight"] = sd[hf + "post_attention_layernorm.weight"]
        out[gg + "ffn_gate.weight"] = sd[hf + "mlp.gate_proj.weight"]
        out[gg + "ffn_up.weight"] = sd[hf + "mlp.up_proj.weight"]
        out[gg + "ffn_down.weight"] = sd[hf + "mlp.down_proj.weight"]
    out["output_norm.weight"] = sd["model.norm.weight"]
    if not spec["tie_word_embeddings"]:
        out["output.weight"] = sd["lm_head.weight"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def converter_qtype(name: str, data: np.ndarray, outtype: str):
    """The GGML type llama.cpp's convert_hf_to_gguf.py gives a tensor
    (conversion/base.py ModelBase.prepare_tensors of the pinned sdist, see
    make_tiny_arch_models.SDIST_PIN), for the tensors of these two models
    (none is in the converter's always-F32 list): 1-D tensors and *_norm.weight
    F32; other .weight tensors the --outtype's type. Q8_0 needs rows (the last
    numpy axis) that are a multiple of 32; where not, gguf.quants.quantize
    raises QuantError and the converter falls back to F16, as write_gguf does."""
    import gguf

    if outtype == "f32" or data.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    assert outtype == "q8_0", outtype
    return gguf.GGMLQuantizationType.Q8_0


def write_gguf(path: Path, model, spec: dict[str, Any], outtype: str = "f32") -> dict[str, np.ndarray]:
    """outtype "f32": the folders' model.gguf. "q8_0": model.q8_0.gguf
    (scripts/make_q8_fixtures.py), the same file but for general.file_type and
    the tensors converter_qtype makes Q8_0 (or F16). Returns the float32
    tensors either way."""
    import gguf

    assert outtype in ("f32", "q8_0"), outtype
    arch = spec["arch"]
    tensors = gguf_tensors(model, spec)
    tokens, types, merges = build_vocab(spec["vocab_size"])

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(f"patchbay {spec['name']}")
    writer.add_description(
        f"{rc.FIXTURE_MAGIC} v{rc.FIXTURE_VERSION}: random test model generated by {GENERATOR} "
        f"(seed {spec['seed']}); see reference.json next to this file")
    writer.add_block_count(spec["num_hidden_layers"])
    writer.add_context_length(spec["max_position_embeddings"])
    writer.add_embedding_length(spec["hidden_size"])
    writer.add_feed_forward_length(spec["intermediate_size"])
    writer.add_head_count(spec["num_attention_heads"])
    writer.add_head_count_kv(spec["num_key_value_heads"])
    writer.add_rope_freq_base(spec["rope_theta"])
    writer.add_layer_norm_rms_eps(spec["rms_norm_eps"])
    # The converter writes key/value length whenever config.json has head_dim,
    # which transformers 5 always writes; it matters for tiny_bias where
    # n_heads * head_dim (64) != d_model (48).
    writer.add_key_length(spec["head_dim"])
    writer.add_value_length(spec["head_dim"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_vocab_size(spec["vocab_size"])
    writer.add_rope_dimension_count(spec["head_dim"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_unk_token_id(UNK_ID)
    writer.add_add_bos_token(False)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, data in tensors.items():
        qtype = converter_qtype(name, data, outtype)
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, data)
            continue
        try:
            qdata = gguf.quants.quantize(data, qtype)
        except gguf.QuantError:
            qtype = gguf.GGMLQuantizationType.F16
            qdata = gguf.quants.quantize(data, qtype)
        writer.add_tensor(name, qdata, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


def check_gguf_readback(path: Path, spec: dict[str, Any], expected: dict[str, np.ndarray]) -> None:
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = spec["arch"]

    def field(key: str):
        return reader.fields[key].contents()

    assert field("general.architecture") == arch
    assert field(f"{arch}.block_count") == spec["num_hidden_layers"]
    assert field(f"{arch}.embedding_length") == spec["hidden_size"]
    assert field(f"{arch}.attention.head_count") == spec["num_attention_heads"]
    assert field(f"{arch}.attention.head_count_kv") == spec["num_key_value_heads"]
    assert field(f"{arch}.attention.key_length") == spec["head_dim"]
    assert field(f"{arch}.rope.dimension_count") == spec["head_dim"]
    assert field("tokenizer.ggml.model") == "gpt2"
    assert len(field("tokenizer.ggml.tokens")) == spec["vocab_size"]
    names = [t.name for t in reader.tensors]
    assert names == list(expected), f"tensor list differs: {names}"
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
        want = expected[t.name]
        # GGUF stores dims fastest-first: ne = reversed numpy shape.
        assert list(t.shape) == list(reversed(want.shape)), (t.name, t.shape, want.shape)
        got = np.asarray(t.data).reshape(want.shape)
        assert np.array_equal(got, want), t.name


# --------------------------------------------------------------------------
# independent forward pass over the GGUF tensors, llama.cpp conventions


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope_gguf(x: np.ndarray, arch: str, base: float, factors: np.ndarray | None) -> np.ndarray:
    # x: (T, heads, head_dim)
    T, _, d = x.shape
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # (d/2,)
    if factors is not None:
        inv = inv / factors.astype(np.float64)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]  # (T, d/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = np.empty_like(x)
    if arch == "llama":  # interleaved pairs (x[2i], x[2i+1])
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
    else:  # NeoX halves (x[i], x[i + d/2])
        h = d // 2
        a, b = x[..., :h], x[..., h:]
        out[..., :h] = a * cos - b * sin
        out[..., h:] = a * sin + b * cos
    return out


def gguf_numpy_forward(tensors: dict[str, np.ndarray], spec: dict[str, Any], ids: np.ndarray) -> np.ndarray:
    """float64 forward from the GGUF tensors only; returns logits (T, vocab)."""
    t64 = {k: v.astype(np.float64) for k, v in tensors.items()}
    arch, eps = spec["arch"], spec["rms_norm_eps"]
    n_head, n_kv, d = spec["num_attention_heads"], spec["num_key_value_heads"], spec["head_dim"]
    factors = tensors.get("rope_freqs.weight")
    x = t64["token_embd.weight"][ids]  # (T, d_model)
    T = len(ids)
    mask = np.triu(np.full((T, T), -np.inf), k=1)
    for layer in range(spec["num_hidden_layers"]):
        g = f"blk.{layer}."
        h = _rms(x, t64[g + "attn_norm.weight"], eps)
        q, k, v = h @ t64[g + "attn_q.weight"].T, h @ t64[g + "attn_k.weight"].T, h @ t64[g + "attn_v.weight"].T
        if arch == "qwen2":
            q, k, v = q + t64[g + "attn_q.bias"], k + t64[g + "attn_k.bias"], v + t64[g + "attn_v.bias"]
        q = _rope_gguf(q.reshape(T, n_head, d), arch, spec["rope_theta"], factors)
        k = _rope_gguf(k.reshape(T, n_kv, d), arch, spec["rope_theta"], factors)
        v = v.reshape(T, n_kv, d)
        group = n_head // n_kv
        z = np.empty((T, n_head, d))
        for head in range(n_head):
            kv = head // group
            scores = q[:, head, :] @ k[:, kv, :].T / math.sqrt(d) + mask
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            z[:, head, :] = scores @ v[:, kv, :]
        x = x + z.reshape(T, n_head * d) @ t64[g + "attn_output.weight"].T
        h = _rms(x, t64[g + "ffn_norm.weight"], eps)
        gate = h @ t64[g + "ffn_gate.weight"].T
        up = h @ t64[g + "ffn_up.weight"].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ t64[g + "ffn_down.weight"].T
    h = _rms(x, t64["output_norm.weight"], eps)
    out_w = t64.get("output.weight", t64["token_embd.weight"])
    return h @ out_w.T


# --------------------------------------------------------------------------
# transformers GGUF round trip


def check_transformers_gguf(folder: Path, model, spec: dict[str, Any], ids_t: torch.Tensor,
                            logits: torch.Tensor) -> dict[str, Any]:
    """Loads model.gguf back through transformers' own GGUF loader. Reports what
    it can and cannot carry (it has no reader for rope_freqs, and for qwen2 it
    does not read attention.key_length), without failing the run on that."""
    from transformers import AutoModelForCausalLM

    report: dict[str, Any] = {}
    ref_sd = {k: v.detach() for k, v in model.state_dict().items()}

    def weights_diff(loaded) -> float:
        sd = loaded.state_dict()
        assert set(sd) == set(ref_sd), set(sd) ^ set(ref_sd)
        return max(float((sd[k].float() - ref_sd[k].float()).abs().max()) for k in ref_sd)

    # 1. As transformers reads it, config from GGUF metadata only.
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            str(folder), gguf_file="model.gguf", dtype=torch.float32, attn_implementation="eager").eval()
        cfg = loaded.config
        report["config_from_gguf"] = {
            "head_dim": getattr(cfg, "head_dim", None),
            "rope_parameters": getattr(cfg, "rope_parameters", None),
            "tie_word_embeddings": cfg.tie_word_embeddings,
        }
        report["weights_max_abs_diff"] = weights_diff(loaded)
        out = loaded(input_ids=ids_t, use_cache=False).logits[0]
        report["logits_max_abs_diff"] = float((out - logits).abs().max())
    except Exception as e:  # recorded, then the config-override load below decides
        report["error"] = f"{type(e).__name__}: {str(e)[:300]}"

    # 2. Same GGUF tensors, config.json supplied (carries head_dim and rope scaling).
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            str(folder), gguf_file="model.gguf", config=model.config, dtype=torch.float32,
            attn_implementation="eager").eval()
        report["with_config_json"] = {
            "weights_max_abs_diff": weights_diff(loaded),
            "logits_max_abs_diff": float((loaded(input_ids=ids_t, use_cache=False).logits[0] - logits).abs().max()),
        }
    except Exception as e:
        report["with_config_json"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    return report


# --------------------------------------------------------------------------


def draw_ids(spec: dict[str, Any]) -> np.ndarray:
    rng = np.random.default_rng(spec["seed"])
    vocab = spec["vocab_size"]
    ids = rng.integers(1, vocab - 1, size=SEQ_LEN)
    zero_pos, last_pos = rng.choice(np.arange(1, SEQ_LEN), size=2, replace=False)
    ids[zero_pos] = 0
    ids[last_pos] = vocab - 1
    return ids.astype(np.int32)


def make_one(spec: dict[str, Any], out_root: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    rc.setup_determinism(spec["seed"])
    folder = out_root / spec["name"]
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)

    model = build_model(spec)
    model.save_pretrained(str(folder), safe_serialization=True)
    for written in folder.iterdir():  # save_pretrained leaves the safetensors file 0600
        written.chmod(0o644)
    # References come from the checkpoint as committed, reloaded.
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                 attn_implementation="eager").float().eval()
    assert model.config._attn_implementation == "eager"
    if spec["arch"] == "qwen2":
        attn = model.model.layers[0].self_attn
        assert attn.head_dim == spec["head_dim"] and attn.q_proj.out_features == 64, "Qwen2 ignored head_dim"

    # RoPE frequencies HF uses vs. the rope_freqs factors written to the GGUF.
    hf_inv_freq = model.model.rotary_emb.inv_freq.detach().double().numpy()
    d = spec["head_dim"]
    base_inv_freq = spec["rope_theta"] ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    rope_info: dict[str, Any] = {"hf_inv_freq": hf_inv_freq.tolist()}
    if spec["rope_scaling"] is not None:
        factors = llama3_rope_factors(spec["rope_theta"], d, spec["rope_scaling"])
        rel = np.abs(base_inv_freq / factors - hf_inv_freq) / hf_inv_freq
        assert rel.max() < 1e-6, f"rope_freqs disagree with HF inv_freq: {rel}"
        changed = ~np.isclose(hf_inv_freq, base_inv_freq, rtol=1e-6)
        assert changed.any() and not changed.all(), "llama3 scaling should change some but not all frequencies"
        rope_info.update({
            "note": "rope_freqs uses rope_parameters.original_max_position_embeddings, as transformers does; "
                    "llama.cpp's convert_hf_to_gguf.py reads a top-level original_max_position_embeddings "
                    "(absent from transformers 5 configs) and would fall back to 8192, which for this model "
                    "gives different factors than the model HF runs",
            "rope_freqs": factors.tolist(),
            "changed_by_scaling": changed.tolist(),
            "max_rel_diff_base_over_factor_vs_hf": float(rel.max()),
        })

    ids = draw_ids(spec)
    ids_t = torch.from_numpy(ids.astype(np.int64)).unsqueeze(0)
    logits, acts = rc.capture_hooks(model, ids_t)

    # Logits should be informative: spread, distinct top-1 per position.
    top2 = torch.topk(logits, 2, dim=-1).values
    gaps = (top2[:, 0] - top2[:, 1])
    stats = {
        "logits_std": float(logits.std()),
        "logits_abs_max": float(logits.abs().max()),
        "min_top1_top2_gap": float(gaps.min()),
        "resid_post_last_rms": float(acts[f"blocks.{spec['num_hidden_layers'] - 1}.hook_resid_post"].pow(2).mean().sqrt()),
    }
    assert 0.5 < stats["logits_std"] < 20, stats

    tensors = write_gguf(folder / "model.gguf", model, spec)
    check_gguf_readback(folder / "model.gguf", spec, tensors)
    np_logits = gguf_numpy_forward(tensors, spec, ids)
    numpy_diff = float(np.abs(np_logits - logits.double().numpy()).max())
    assert numpy_diff < 1e-4, f"numpy forward over GGUF tensors disagrees with HF: {numpy_diff}"
    hf_gguf = check_transformers_gguf(folder, model, spec, ids_t, logits)

    writer = rc.ArrayWriter(folder)
    writer.save("ids", ids, "<i4")
    writer.save("logits", logits, "<f4")
    names = rc.hook_names(spec["num_hidden_layers"])
    for name in names:
        writer.save(name, acts[name], "<f4")

    files = {}
    for fname in sorted(p.name for p in folder.iterdir() if p.suffix in (".json", ".safetensors", ".gguf")):
        files[fname] = {"sha256": rc.sha256_file(folder / fname), "bytes": (folder / fname).stat().st_size}

    ref = rc.manifest_header(GENERATOR, spec["seed"])
    ref.update({
        "model": spec["name"],
        "hf_class": spec["hf_class"],
        "gguf_arch": spec["arch"],
        "config": {
            "vocab_size": spec["vocab_size"],
            "d_model": spec["hidden_size"],
            "n_layers": spec["num_hidden_layers"],
            "n_heads": spec["num_attention_heads"],
            "n_kv_heads": spec["num_key_value_heads"],
            "head_dim": spec["head_dim"],
            "d_mlp": spec["intermediate_size"],
            "rms_norm_eps": spec["rms_norm_eps"],
            "rope_theta": spec["rope_theta"],
            "rope_scaling": spec["rope_scaling"],
            "max_position_embeddings": spec["max_position_embeddings"],
            "tie_word_embeddings": spec["tie_word_embeddings"],
            "qkv_bias": spec["arch"] == "qwen2",
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
        },
        "init": {"linear_std": LINEAR_STD, "embed_std": EMBED_STD, "bias_std": BIAS_STD,
                 "norm_weight": f"1 + {NORM_JITTER} * randn"},
        "T": int(len(ids)),
        "ids": ids.tolist(),
        "hooks": names,
        "arrays": writer.records,
        "files": files,
        "conventions": {
            "batch_dim": "dropped; every activation is (T, ...)",
            "hook_q_k_v": "q_proj/k_proj/v_proj outputs incl. bias, BEFORE RoPE, reshaped (T, heads, head_dim) "
                          "in Hugging Face (rotate-half) order. For gguf_arch llama the GGUF attn_q/attn_k rows are "
                          "permuted: GGUF element 2*i+p of a head = HF element p*head_dim/2 + i.",
            "hook_z": "input of o_proj reshaped (T, n_heads, head_dim)",
            "hook_resid_mid": "resid_pre + attn_out (input of post_attention_layernorm)",
            "ln_final.hook_normalized": "x * rsqrt(mean(x^2) + eps) in float32, before the norm weight",
            "rope_gguf": "llama: rotate (x[2i], x[2i+1]) by pos * theta^(-2i/head_dim) / rope_freqs[i]; "
                         "qwen2: rotate (x[i], x[i+head_dim/2]) by pos * theta^(-2i/head_dim)",
            "attention": "causal, softmax(q.k / sqrt(head_dim)), kv head = head // (n_heads / n_kv_heads)",
        },
        "rope": rope_info,
        "checks": {
            "stats": stats,
            "numpy_gguf_forward_vs_hf_logits_max_abs_diff": numpy_diff,
            "transformers_gguf_load": hf_gguf,
        },
    })
    rc.write_json(folder / "reference.json", ref)
    return ref


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=rc.REPO_ROOT / "tests" / "fixtures")
    args = parser.parse_args()
    for spec in (SPEC_GQA, SPEC_BIAS):
        ref = make_one(spec, args.out)
        size = sum(p.stat().st_size for p in (args.out / spec["name"]).iterdir())
        print(f"{spec['name']}: T={ref['T']} files={len(ref['arrays']) + len(ref['files']) + 1} "
              f"bytes={size} stats={ref['checks']['stats']}")
        print(f"  numpy GGUF forward vs HF: {ref['checks']['numpy_gguf_forward_vs_hf_logits_max_abs_diff']:.3g}")
        print(f"  transformers GGUF load: {ref['checks']['transformers_gguf_load']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
