#!/usr/bin/env python3
"""Writes the tiny random GPT-2, GPT-NeoX (Pythia), Phi-3 (plain and LongRoPE)
and OLMo-2 test models (issue 16) and their references:

  tests/fixtures/tiny_gpt2/      GPT2LMHeadModel: learned positions, LayerNorm with bias, biases on every
                                 projection (Conv1D), gelu_new MLP, tied output
  tests/fixtures/tiny_gpt_neox/  GPTNeoXForCausalLM: parallel residual, partial rotary (0.25 of head_dim),
                                 per-head interleaved fused query_key_value, biases, exact-erf GELU, untied
  tests/fixtures/tiny_phi3/      Phi3ForCausalLM: fused qkv_proj and gate_up_proj, GQA, no rope scaling, untied
  tests/fixtures/tiny_phi3_longrope/
                                 Phi3ForCausalLM as tiny_phi3 plus LongRoPE ("longrope", Phi-3-mini-128k /
                                 Phi-3.5 / Phi-4-mini style): partial rotary 0.75 (12 of 16 dims),
                                 original_max_position_embeddings 16 < max_position_embeddings 64, seeded
                                 short/long factor lists, attention factor sqrt(1 + ln(64/16) / ln(16)) =
                                 sqrt(1.5) (implicit: no "factor" / "attention_factor" in config.json).
                                 Two references: the folder's own (T = 20 > 16: LONG factors) and short/
                                 (ids.npy, logits.npy, every hook .npy; T = 16 = original max: SHORT
                                 factors). transformers' rule: long iff max(position_ids) + 1 >
                                 original_max_position_embeddings, one set for the whole forward.
  tests/fixtures/tiny_olmo2/     Olmo2ForCausalLM: post norms only (after attention / MLP), q/k RMSNorm over
                                 the whole projection, GQA, rope_theta 500000, untied

Same conventions and pinned converter as make_tiny_arch_models.py (whose
helpers this uses: tokenizers, the llama.cpp sdist, the conversion
subprocess, the transformers-GGUF load check): HF checkpoint (config.json +
model.safetensors, float32, save_pretrained), a tokenizer the converter
accepts, model.gguf from llama.cpp's convert_hf_to_gguf.py (--outtype f32),
and references from transformers on CPU in float32 eager mode: ids.npy,
logits.npy, one .npy per hook point (refgen_common.capture_hooks_classic,
names in refgen_common.classic_hook_names), reference.json. tiny_gpt2 also
gets transformer_lens_hooks.json when the transformer_lens package can be
imported (see write_transformer_lens_hooks). TransformerLens 4.x removed
HookedTransformer / HookedTransformerConfig, and its dependencies would
change the shared venv, so it is installed outside it, from PyPI, without
dependencies (git-ignored .cache/):
  pip install --target .cache/tl3 --no-deps transformer_lens==3.9.0
  pip install --target .cache/tl --no-deps einops fancy_einsum jaxtyping wadler_lindig beartype \
      typeguard better-abc datasets pyarrow pandas dill multiprocess xxhash python-dateutil tzdata
  PYTHONPATH=.cache/tl3:.cache/tl .venv/bin/python scripts/make_tiny_classic_models.py --only gpt2
Without it the file is not written and reference.json says why.

Tokenizers: gpt2 / gpt_neox: byte-level BPE with GPT-2's regex (make_byte_bpe
style "gpt2"); the converter's BPE pre-tokenizer detection hashes the ids of a
test string, which a made-up vocabulary cannot match, so the detection is
overridden to "gpt-2" (the regex used). olmo2: Qwen2-style byte-level BPE,
override "qwen2" (as for qwen3). phi3: the Gemma-layout SentencePiece model of
make_sentencepiece (tokenizer_class GemmaTokenizer: the phi3 converter reads
tokenizer.model directly and only looks at tokenizer_class for
"GPT2Tokenizer"; no override).

Facts about the converter (read from the pinned sources, checked tensor by
tensor in check_gguf and recorded in reference.json "gguf_layout"):
  * gpt2: Conv1D weights are stored (in, out) by HF; the converter transposes
    c_attn / c_proj / c_fc weights to (out, in) (GGUF shape [in, out] in
    ggml's ne order); attn_qkv stays fused [Q | K | V]; output.weight is not
    written (tied); feed_forward_length is written as 4 * n_embd whatever
    n_inner says, hence n_inner = None (4 * d_model) here; the context length
    is read from config.json key "n_ctx", which transformers 5 no longer
    writes, so it is written explicitly (= n_positions).
  * gpt_neox: query_key_value weight/bias rows are de-interleaved from
    per-head [q_h | k_h | v_h] to [Q (all heads) | K | V]; rope dims =
    int(rotary_pct * head_dim), read from hparams key "rotary_pct", which
    transformers 5's GPTNeoXConfig consumes on load (it keeps only
    rope_parameters.partial_rotary_factor): the folder's config.json gets
    rotary_pct written explicitly and the conversion adds that one key back
    from config.json to the converter's hparams (make_tiny_arch_models._CONVERT
    raw_keys) -- the only other converter override besides the pre-tokenizer.
  * phi3: qkv_proj stays fused (attn_qkv, [Q | K | V] rows), gate_up_proj
    stays fused (ffn_up, [gate | up] rows); rope dims from n_embd / n_head.
    original_max_position_embeddings must be present (= max_position_embeddings).
  * phi3_longrope: as phi3; phi3.rope.dimension_count = int(partial_rotary_factor
    * n_embd) // n_head (12), phi3.context_length = max_position_embeddings (64),
    phi3.rope.scaling.original_context_length = 16, phi3.rope.scaling.attn_factor
    = sqrt(1 + ln(64/16) / ln(16)), and two extra F32 tensors
    rope_factors_long.weight / rope_factors_short.weight (rotary dims / 2 = 6
    each, the config lists as float32). No rope scaling type key is written:
    llama.cpp picks the long set iff the context size per sequence (n_ctx_seq) >
    original_context_length (a per-context choice, not transformers' per-forward
    one -- the reference data are transformers').
  * olmo2: nothing transformed; attn_q_norm / attn_k_norm are heads*hd / kv*hd
    wide; post_attention_layernorm -> post_attention_norm,
    post_feedforward_layernorm -> post_ffw_norm.

Usage: .venv/bin/python scripts/make_tiny_classic_models.py [--out tests/fixtures] [--only gpt2,olmo2]
Deterministic: seeded generators everywhere; run twice and compare bytes.
transformers' GGUF loading (reference.json checks.transformers_gguf_load,
recorded, not fatal) needs accelerate; to keep it out of the shared venv:
  .venv/bin/python -m pip install --target .cache/accel --no-deps accelerate psutil
  PYTHONPATH=.cache/accel .venv/bin/python scripts/make_tiny_classic_models.py --only phi3_longrope
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_arch_models as arch  # noqa: E402
import refgen_common as rc  # noqa: E402

GENERATOR = "scripts/make_tiny_classic_models.py"
SEQ_LEN = 14
LINEAR_STD = 0.2
BIAS_STD = 0.2
EMBED_STD = 0.4
NORM_STD = 0.15       # norm weights 1 + NORM_STD * randn, norm biases NORM_STD * randn

SPECS: dict[str, dict[str, Any]] = {
    "gpt2": {"seed": 1601, "hf_class": "GPT2LMHeadModel", "gguf_arch": "gpt2", "vocab_size": 384,
             "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
             "head_dim": 16, "intermediate_size": 256, "n_positions": 32, "eps": 1e-5, "tie": True,
             "act": "gelu_new", "norm": "layernorm", "tokenizer": "gpt2", "pre_override": "gpt-2"},
    "gpt_neox": {"seed": 1602, "hf_class": "GPTNeoXForCausalLM", "gguf_arch": "gptneox", "vocab_size": 320,
                 "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                 "head_dim": 16, "intermediate_size": 160, "rotary_pct": 0.25, "rope_theta": 10000.0,
                 "max_position_embeddings": 64, "eps": 1e-5, "tie": False, "act": "gelu", "norm": "layernorm",
                 "tokenizer": "gpt2", "pre_override": "gpt-2"},
    "phi3": {"seed": 1603, "hf_class": "Phi3ForCausalLM", "gguf_arch": "phi3", "vocab_size": 320,
             "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 16, "intermediate_size": 112, "rope_theta": 10000.0, "max_position_embeddings": 64,
             "eps": 1e-5, "tie": False, "act": "silu", "norm": "rmsnorm", "tokenizer": "sentencepiece",
             "pre_override": ""},
    # LongRoPE: partial rotary 0.75 (12 dims, 6 factors a set); factors drawn in
    # longrope_factors (numpy seed factor_seed): short U[1, 2], long U[1.5, 12],
    # 4 decimals. T = 20 > 16 (long set) in the folder, T = 16 (short set) in short/
    "phi3_longrope": {"seed": 1605, "hf_class": "Phi3ForCausalLM", "gguf_arch": "phi3", "vocab_size": 320,
                      "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                      "head_dim": 16, "intermediate_size": 112, "rope_theta": 10000.0, "max_position_embeddings": 64,
                      "original_max_position_embeddings": 16, "partial_rotary_factor": 0.75,
                      "factor_seed": 16051, "seq_len": 20, "short_seq_len": 16, "short_ids_seed": 16052,
                      "eps": 1e-5, "tie": False, "act": "silu", "norm": "rmsnorm", "tokenizer": "sentencepiece",
                      "pre_override": ""},
    "olmo2": {"seed": 1604, "hf_class": "Olmo2ForCausalLM", "gguf_arch": "olmo2", "vocab_size": 352,
              "hidden_size": 80, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 20, "intermediate_size": 128, "rope_theta": 500000.0, "max_position_embeddings": 64,
              "eps": 1e-6, "tie": False, "act": "silu", "norm": "rmsnorm", "tokenizer": "qwen2",
              "pre_override": "qwen2"},
}


PHI3 = ("phi3", "phi3_longrope")


def convert_options(family: str) -> dict[str, Any]:
    """The keyword arguments of make_tiny_arch_models.convert for a family:
    the pre-tokenizer override and, for gpt_neox, rotary_pct added back to the
    converter's hparams (see the module docstring). Also used by
    scripts/make_q8_fixtures.py."""
    return {"override": SPECS[family]["pre_override"],
            "raw_keys": ("rotary_pct",) if family == "gpt_neox" else ()}


def rotary_dims(family: str, spec: dict[str, Any]) -> int:
    if family == "gpt2":
        return 0
    return int(spec.get("rotary_pct", spec.get("partial_rotary_factor", 1.0)) * spec["head_dim"])


def longrope_factors(spec: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(short_factor, long_factor): rotary_dims / 2 floats each from numpy's
    default_rng(factor_seed), short uniform in [1, 2], long in [1.5, 12],
    rounded to 4 decimals (clean in config.json)."""
    n = int(spec["partial_rotary_factor"] * spec["head_dim"]) // 2
    rng = np.random.default_rng(spec["factor_seed"])
    short = np.round(rng.uniform(1.0, 2.0, n), 4)
    long = np.round(rng.uniform(1.5, 12.0, n), 4)
    return [float(x) for x in short], [float(x) for x in long]


def longrope_attention_factor(spec: dict[str, Any]) -> float:
    """transformers' (and the phi3 converter's) implicit attention factor:
    sqrt(1 + ln(s) / ln(original)), s = max_position_embeddings / original."""
    orig = spec["original_max_position_embeddings"]
    scale = spec["max_position_embeddings"] / orig
    return math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0


def special_ids(family: str, spec: dict[str, Any]) -> dict[str, Any]:
    V = spec["vocab_size"]
    if spec["tokenizer"] == "gpt2":       # <|endoftext|>, the last id
        return {"bos_token_id": V - 1, "eos_token_id": V - 1, "pad_token_id": None}
    if spec["tokenizer"] == "qwen2":      # <|endoftext|>, the last-but-one id
        return {"bos_token_id": V - 2, "eos_token_id": V - 2, "pad_token_id": V - 2}
    return {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}   # make_sentencepiece's layout


def build_config(family: str, spec: dict[str, Any]):
    import transformers as tf

    ids = special_ids(family, spec)
    d, L, H = spec["hidden_size"], spec["num_hidden_layers"], spec["num_attention_heads"]
    assert spec["head_dim"] * H == d   # none of these converters writes a head_dim of its own
    if family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=spec["vocab_size"], n_positions=spec["n_positions"], n_embd=d, n_layer=L,
                            n_head=H, n_inner=None, activation_function=spec["act"],
                            layer_norm_epsilon=spec["eps"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                            reorder_and_upcast_attn=False, tie_word_embeddings=True, **ids)
        cfg.n_ctx = spec["n_positions"]   # the converter reads n_ctx (OpenAI's configs carry it; transformers 5 does not)
    elif family == "gpt_neox":
        cfg = tf.GPTNeoXConfig(vocab_size=spec["vocab_size"], hidden_size=d, num_hidden_layers=L,
                               num_attention_heads=H, intermediate_size=spec["intermediate_size"],
                               hidden_act=spec["act"], max_position_embeddings=spec["max_position_embeddings"],
                               layer_norm_eps=spec["eps"], use_parallel_residual=True, attention_bias=True,
                               rope_parameters={"rope_type": "default", "rope_theta": spec["rope_theta"],
                                                "partial_rotary_factor": spec["rotary_pct"]},
                               attention_dropout=0.0, hidden_dropout=0.0, tie_word_embeddings=False, **ids)
        cfg.rotary_pct = spec["rotary_pct"]   # what the converter reads (see the docstring)
    elif family in PHI3:
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": spec["rope_theta"]}
        orig = spec.get("original_max_position_embeddings", spec["max_position_embeddings"])
        if family == "phi3_longrope":
            # no "factor" / "attention_factor": transformers derives the attention
            # factor from max_position_embeddings / original_max_position_embeddings
            short, long = longrope_factors(spec)
            rope = {"rope_type": "longrope", "rope_theta": spec["rope_theta"],
                    "partial_rotary_factor": spec["partial_rotary_factor"], "short_factor": short,
                    "long_factor": long, "original_max_position_embeddings": orig}
        cfg = tf.Phi3Config(vocab_size=spec["vocab_size"], hidden_size=d, num_hidden_layers=L,
                            num_attention_heads=H, num_key_value_heads=spec["num_key_value_heads"],
                            intermediate_size=spec["intermediate_size"], hidden_act="silu",
                            max_position_embeddings=spec["max_position_embeddings"],
                            original_max_position_embeddings=orig,
                            rms_norm_eps=spec["eps"], rope_parameters=rope,
                            resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, sliding_window=None,
                            tie_word_embeddings=False, **ids)
    else:
        cfg = tf.Olmo2Config(vocab_size=spec["vocab_size"], hidden_size=d, num_hidden_layers=L,
                             num_attention_heads=H, num_key_value_heads=spec["num_key_value_heads"],
                             intermediate_size=spec["intermediate_size"], hidden_act="silu",
                             max_position_embeddings=spec["max_position_embeddings"], rms_norm_eps=spec["eps"],
                             rope_parameters={"rope_type": "default", "rope_theta": spec["rope_theta"]},
                             attention_bias=False, attention_dropout=0.0, tie_word_embeddings=False, **ids)
    cfg._attn_implementation = "eager"
    return cfg


def build_model(family: str, spec: dict[str, Any]):
    import transformers as tf

    model = getattr(tf, spec["hf_class"])(build_config(family, spec)).float().eval()
    gen = torch.Generator().manual_seed(spec["seed"])
    for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        noise = torch.randn(tuple(param.shape), generator=gen, dtype=torch.float32)
        is_norm = any(k in name for k in ("norm", "ln_", "ln_f", "layernorm"))
        if is_norm and name.endswith("weight"):
            value = 1.0 + NORM_STD * noise
        elif is_norm:
            value = NORM_STD * noise
        elif any(k in name for k in ("wte", "wpe", "embed_in", "embed_tokens")):
            value = EMBED_STD * noise
        elif name.endswith("bias"):
            value = BIAS_STD * noise
        else:
            value = LINEAR_STD * noise
        param.data.copy_(value)
    out = model.get_output_embeddings().weight
    assert (out.data_ptr() == model.get_input_embeddings().weight.data_ptr()) == spec["tie"]
    return model


# --------------------------------------------------------------------------
# GGUF check


def expected_gguf(family: str, name: str, w: np.ndarray, spec: dict[str, Any]) -> tuple[str, np.ndarray, str] | None:
    """(gguf name, the array the GGUF must hold, transform) for one HF tensor;
    None for tensors the converter must drop."""
    H, hd, d = spec["num_attention_heads"], spec["head_dim"], spec["hidden_size"]
    p = name.split(".")
    if family == "gpt2":
        glob = {"transformer.wte.weight": "token_embd.weight", "transformer.wpe.weight": "position_embd.weight",
                "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias"}
        if name in glob:
            return glob[name], w, "none"
        if name == "lm_head.weight":
            return None
        assert p[:2] == ["transformer", "h"], name
        rest = ".".join(p[3:])
        m = {"ln_1": "attn_norm", "ln_2": "ffn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
        mod, kind = rest.rsplit(".", 1)
        g = f"blk.{p[2]}.{m[mod]}.{kind}"
        if kind == "weight" and mod.startswith(("attn.", "mlp.")):
            return g, np.ascontiguousarray(w.T), "transpose (HF Conv1D (in, out) -> (out, in))"
        return g, w, "none"
    if family == "gpt_neox":
        glob = {"gpt_neox.embed_in.weight": "token_embd.weight", "embed_out.weight": "output.weight",
                "gpt_neox.final_layer_norm.weight": "output_norm.weight",
                "gpt_neox.final_layer_norm.bias": "output_norm.bias"}
        if name in glob:
            return glob[name], w, "none"
        assert p[:2] == ["gpt_neox", "layers"], name
        rest = ".".join(p[3:])
        mod, kind = rest.rsplit(".", 1)
        m = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "attention.query_key_value": "attn_qkv", "attention.dense": "attn_output",
             "mlp.dense_h_to_4h": "ffn_up", "mlp.dense_4h_to_h": "ffn_down"}
        g = f"blk.{p[2]}.{m[mod]}.{kind}"
        if mod == "attention.query_key_value":
            x = w.reshape(H, 3, hd, *w.shape[1:])             # per head [q | k | v]
            return g, np.concatenate([x[:, i].reshape(H * hd, *w.shape[1:]) for i in range(3)], 0), \
                "de-interleave rows: HF per-head [q_h|k_h|v_h] -> GGUF [Q|K|V] (head-major inside each)"
        return g, w, "none"
    glob = {"model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight",
            "model.norm.weight": "output_norm.weight"}
    if name in glob:
        return glob[name], w, "none"
    rest = ".".join(p[3:])
    m = {"input_layernorm.weight": "attn_norm.weight", "self_attn.o_proj.weight": "attn_output.weight",
         "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
         "self_attn.v_proj.weight": "attn_v.weight", "self_attn.q_norm.weight": "attn_q_norm.weight",
         "self_attn.k_norm.weight": "attn_k_norm.weight", "mlp.down_proj.weight": "ffn_down.weight",
         "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
         "self_attn.qkv_proj.weight": "attn_qkv.weight", "mlp.gate_up_proj.weight": "ffn_up.weight",
         "post_feedforward_layernorm.weight": "post_ffw_norm.weight"}
    if rest == "post_attention_layernorm.weight":
        g = "post_attention_norm.weight" if family == "olmo2" else "ffn_norm.weight"
    else:
        g = m[rest]
    return f"blk.{p[2]}.{g}", w, "none"


def check_gguf(folder: Path, family: str, spec: dict[str, Any], model) -> dict[str, Any]:
    import gguf

    reader = gguf.GGUFReader(str(folder / "model.gguf"))

    def field(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch_name = spec["gguf_arch"]
    assert field("general.architecture") == arch_name, field("general.architecture")
    meta = {k: field(k) for k in reader.fields
            if not k.startswith("tokenizer.ggml.") or k in ("tokenizer.ggml.model", "tokenizer.ggml.pre",
                                                            "tokenizer.ggml.bos_token_id",
                                                            "tokenizer.ggml.eos_token_id")}
    meta = {k: v for k, v in meta.items() if not k.startswith("GGUF.")}
    assert field(f"{arch_name}.block_count") == spec["num_hidden_layers"]
    assert field(f"{arch_name}.embedding_length") == spec["hidden_size"]
    assert field(f"{arch_name}.attention.head_count") == spec["num_attention_heads"]
    assert field(f"{arch_name}.feed_forward_length") == spec["intermediate_size"]
    assert len(field("tokenizer.ggml.tokens")) == spec["vocab_size"]
    if family in PHI3 + ("olmo2",):
        assert field(f"{arch_name}.attention.head_count_kv") == spec["num_key_value_heads"]
        assert field(f"{arch_name}.rope.freq_base") == spec["rope_theta"], field(f"{arch_name}.rope.freq_base")
    if family == "gpt_neox":
        assert field(f"{arch_name}.rope.dimension_count") == int(spec["rotary_pct"] * spec["head_dim"])
        assert field(f"{arch_name}.use_parallel_residual") is True
    if family in PHI3:
        assert field(f"{arch_name}.rope.dimension_count") == rotary_dims(family, spec)
        assert field(f"{arch_name}.context_length") == spec["max_position_embeddings"]
        assert field(f"{arch_name}.rope.scaling.original_context_length") == spec.get(
            "original_max_position_embeddings", spec["max_position_embeddings"])
    rope_factor_rows = []
    if family == "phi3_longrope":
        # longrope: attention factor (float32) and the two factor tensors
        attn = field(f"{arch_name}.rope.scaling.attn_factor")
        assert attn is not None and np.float32(attn) == np.float32(longrope_attention_factor(spec)), attn
        short, long = longrope_factors(spec)
        n = rotary_dims(family, spec) // 2
        for gname, want in (("rope_factors_long.weight", long), ("rope_factors_short.weight", short)):
            t = next(x for x in reader.tensors if x.name == gname)
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, (gname, t.tensor_type)
            assert [int(x) for x in t.shape] == [n], (gname, t.shape)
            got = np.asarray(t.data).reshape(n)
            assert np.array_equal(got, np.asarray(want, dtype=np.float32)), (gname, got, want)
            rope_factor_rows.append({"gguf": gname, "gguf_ne": [n], "type": "F32",
                                     "values": [float(x) for x in got],
                                     "equals": "config.json rope_parameters." + gname.split("_")[2].split(".")[0]
                                               + "_factor as float32"})
    else:
        assert field(f"{arch_name}.rope.scaling.attn_factor") is None

    from safetensors.numpy import load_file

    # the committed checkpoint's tensors (no buffers; tied output not stored)
    sd = load_file(str(folder / "model.safetensors"))
    params = dict(model.named_parameters())
    for k, v in sd.items():
        # transformers 5 names GPT-NeoX's embed_out module lm_head (saved as embed_out)
        hf = params[k] if k in params else model.get_output_embeddings().weight
        assert k in params or k == "embed_out.weight", k
        assert v.dtype == np.float32 and np.array_equal(v, hf.detach().numpy()), k
    by_gguf = {t.name: t for t in reader.tensors}
    for r in rope_factor_rows:   # checked above: no safetensors counterpart (derived from config.json)
        by_gguf.pop(r["gguf"])
    rows, dropped = [], []
    for name in sorted(sd):
        exp = expected_gguf(family, name, sd[name], spec)
        if exp is None:
            dropped.append(name)
            continue
        gname, want, transform = exp
        t = by_gguf.pop(gname)
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, (gname, t.tensor_type)
        ne = [int(x) for x in t.shape]                 # ggml order: ne[0] = innermost
        assert ne == list(want.shape[::-1]), (gname, ne, want.shape)
        got = np.asarray(t.data).reshape(want.shape)
        assert np.array_equal(got, want), gname
        rows.append({"safetensors": name, "hf_shape": list(sd[name].shape), "gguf": gname,
                     "gguf_ne": ne, "rows_by_cols": list(want.shape), "transform": transform,
                     "max_abs_diff_after_undo": 0.0})
    assert not by_gguf, f"GGUF tensors without a safetensors counterpart: {sorted(by_gguf)}"
    print(f"  {'safetensors':44s} {'hf shape':10s} {'gguf':28s} {'ne':10s} transform")
    for r in rows:
        print(f"  {r['safetensors']:44s} {'x'.join(map(str, r['hf_shape'])):10s} {r['gguf']:28s} "
              f"{'x'.join(map(str, r['gguf_ne'])):10s} {r['transform']}")
    if dropped:
        print(f"  not written (tied or derived): {dropped}")
    if rope_factor_rows:
        print(f"  rope factor tensors: " + ", ".join(f"{r['gguf']} {r['values']}" for r in rope_factor_rows))
    return {"tensors": rows, "not_written": dropped, "rope_factor_tensors": rope_factor_rows,
            "metadata": {k: (v if not isinstance(v, float) else float(v)) for k, v in meta.items()}}


def check_gguf_qkv(folder: Path, family: str, spec: dict[str, Any], model, acts: dict[str, torch.Tensor]) -> float:
    """The GGUF attention tensors, read as the layout notes say (fused
    attn_qkv rows [Q | K | V], or attn_q/k/v), applied to each layer's
    attention input, reproduce hook_q / hook_k / hook_v. Returns the worst
    |diff|."""
    import gguf

    reader = gguf.GGUFReader(str(folder / "model.gguf"))
    t = {x.name: np.asarray(x.data).astype(np.float64) for x in reader.tensors}
    H, Hkv, hd = spec["num_attention_heads"], spec["num_key_value_heads"], spec["head_dim"]
    layers = rc.model_parts(model)["layers"]
    worst = 0.0
    for li, layer in enumerate(layers):
        x = acts[f"blocks.{li}.hook_resid_pre"].unsqueeze(0)
        if family == "gpt2":
            x = layer.ln_1(x)
        elif family == "gpt_neox":
            x = layer.input_layernorm(x)
        elif family in PHI3:
            x = layer.input_layernorm(x)
        x = x[0].double().numpy()
        g = f"blk.{li}."
        if g + "attn_qkv.weight" in t:
            w = t[g + "attn_qkv.weight"]
            y = x @ w.T + (t[g + "attn_qkv.bias"] if g + "attn_qkv.bias" in t else 0.0)
            parts = np.split(y, [H * hd, (H + Hkv) * hd], axis=1)
        else:
            parts = [x @ t[g + f"attn_{c}.weight"].T for c in ("q", "k", "v")]
        for c, part in zip(("q", "k", "v"), parts):
            want = acts[f"blocks.{li}.attn.hook_{c}"].double().numpy().reshape(part.shape)
            worst = max(worst, float(np.abs(part - want).max()))
    assert worst < 1e-4, f"GGUF q/k/v layout does not reproduce hook_q/k/v: {worst}"
    return worst


GGUF_LAYOUT_NOTES = {
    "gpt2": {
        "attn_qkv.weight": "ne [d_model, 3*d_model] (rows = outputs): rows [Q (heads*hd) | K | V], head-major; "
                           "HF c_attn.weight (Conv1D, (in, out)) TRANSPOSED by the converter; y = W x + b",
        "attn_qkv.bias": "[Q | K | V] (3*d_model), as HF c_attn.bias",
        "attn_output / ffn_up / ffn_down .weight": "HF Conv1D (in, out) transposed to (out, in): ne [in, out]",
        "position_embd.weight": "ne [d_model, n_positions]: row p = learned position p, added to token_embd",
        "output.weight": "absent: the output matrix is token_embd.weight (tied)",
        "norms": "attn_norm / ffn_norm / output_norm .weight and .bias: LayerNorm, eps = gpt2.attention.layer_norm_epsilon",
        "ffn": "ffn_up (+bias) -> gelu_new (tanh approximation) -> ffn_down (+bias); no gate",
    },
    "gpt_neox": {
        "attn_qkv.weight": "ne [d_model, 3*d_model]: rows [Q | K | V] (each heads*hd, head-major) -- DE-INTERLEAVED "
                           "by the converter from HF's per-head [q_h | k_h | v_h] (3*hd rows per head)",
        "attn_qkv.bias": "de-interleaved the same way: [Q | K | V]",
        "rope": "gptneox.rope.dimension_count = int(rotary_pct * head_dim) = rotary dims, NeoX pairs "
                "(i, i + rot/2) for i < rot/2 on the first rot dims of each head; the rest pass through",
        "parallel": "gptneox.use_parallel_residual = true: x + attn(ln1(x)) + mlp(ln2(x))",
        "output.weight": "present (untied embed_out)",
        "ffn": "ffn_up (+bias) -> gelu (exact erf) -> ffn_down (+bias); no gate",
    },
    "phi3": {
        "attn_qkv.weight": "FUSED, not split by the converter: ne [d_model, (heads + 2*kv)*hd], rows "
                           "[Q (heads*hd) | K (kv*hd) | V (kv*hd)], exactly HF qkv_proj.weight; no biases",
        "ffn_up.weight": "FUSED gate_up_proj, not split: ne [d_model, 2*d_mlp], rows [gate (d_mlp) | up (d_mlp)]; "
                         "ffn = ffn_down(silu(gate) * up); there is no ffn_gate tensor",
        "rope": "phi3.rope.dimension_count = head_dim (full rotary), NeoX pairs; no rope_factors tensors "
                "(no rope scaling)",
        "output.weight": "present (untied)",
    },
    "phi3_longrope": {
        "attn_qkv.weight": "as phi3: FUSED [Q (heads*hd) | K (kv*hd) | V (kv*hd)] rows, exactly HF qkv_proj.weight",
        "ffn_up.weight": "as phi3: FUSED gate_up_proj, rows [gate | up]; no ffn_gate tensor",
        "rope": "phi3.rope.dimension_count = int(partial_rotary_factor * n_embd) // n_head = 12 of head_dim 16 "
                "(partial rotary, NeoX pairs (i, i + 6) on dims 0..11; dims 12..15 pass through unrotated); "
                "phi3.rope.freq_base = rope_theta",
        "rope_factors_long.weight / rope_factors_short.weight": "EXTRA F32 tensors, ne [6] (= rotary dims / 2), no "
                "safetensors counterpart: config.json rope_parameters long_factor / short_factor as float32; "
                "inv_freq[i] = 1 / (factor[i] * rope_theta ** (2i / rotary_dims))",
        "longrope metadata": "phi3.context_length = max_position_embeddings (64); "
                             "phi3.rope.scaling.original_context_length = original_max_position_embeddings (16); "
                             "phi3.rope.scaling.attn_factor = sqrt(1 + ln(64 / 16) / ln(16)) = sqrt(1.5) (float32): "
                             "cos and sin are multiplied by it (q.k scaled by its square); no rope.scaling.type key",
        "factor set": "transformers: LONG iff max(position_ids) + 1 > original_max_position_embeddings, for the whole "
                      "forward (T = 20 here: long; short/ T = 16: short); llama.cpp: long iff the per-sequence "
                      "context size (cparams.n_ctx_seq) > original_context_length (llama_model::get_rope_factors)",
        "output.weight": "present (untied)",
    },
    "olmo2": {
        "attn_q_norm.weight / attn_k_norm.weight": "ne [heads*hd] / [kv*hd]: RMSNorm over the WHOLE projection "
                                                   "(before the per-head split and RoPE)",
        "post_attention_norm.weight": "RMSNorm applied to attn_output's result before the residual add "
                                      "(no attn_norm: OLMo-2 has no pre-norms)",
        "post_ffw_norm.weight": "RMSNorm applied to ffn_down's result before the residual add (no ffn_norm)",
        "ffn": "ffn_gate / ffn_up / ffn_down separate, silu(gate) * up",
        "output.weight": "present (untied)",
    },
}


# --------------------------------------------------------------------------
# TransformerLens


def write_transformer_lens_hooks(folder: Path, spec: dict[str, Any], ids: np.ndarray,
                                 ours: dict[str, list[int]]) -> dict[str, Any]:
    """{hook name: shape} of a HookedTransformer with this config (random
    weights: only names and shapes are recorded), from run_with_cache. Each
    of our hook files must be one of its hooks with the same shape (batch
    dropped), except attn.hook_rot_q / rot_k (TransformerLens has them only
    for rotary models)."""
    try:
        import transformer_lens as tl
        from importlib.metadata import version
    except Exception as e:   # not installed: say so in reference.json
        return {"written": False, "reason": f"transformer_lens not importable: {type(e).__name__}: {e}"}
    cfg = tl.HookedTransformerConfig(
        n_layers=spec["num_hidden_layers"], d_model=spec["hidden_size"], n_ctx=spec["n_positions"],
        d_head=spec["head_dim"], n_heads=spec["num_attention_heads"], d_mlp=spec["intermediate_size"],
        act_fn="gelu_new", normalization_type="LN", d_vocab=spec["vocab_size"],
        positional_embedding_type="standard", seed=spec["seed"], device="cpu")
    model = tl.HookedTransformer(cfg)
    _, cache = model.run_with_cache(torch.from_numpy(ids.astype(np.int64)).unsqueeze(0))
    hooks = {name: list(t.shape) for name, t in cache.items()}
    for name, shape in ours.items():
        if name.endswith(("attn.hook_rot_q", "attn.hook_rot_k")):
            continue
        assert name in hooks and hooks[name] == [1] + shape, (name, hooks.get(name), shape)
    rc.write_json(folder / "transformer_lens_hooks.json", {
        "magic": rc.FIXTURE_MAGIC, "version": rc.FIXTURE_VERSION, "generator": GENERATOR,
        "transformer_lens": version("transformer_lens"),
        "note": "HookedTransformer(HookedTransformerConfig(...)) with random weights: names and shapes only, "
                "batch dim 1 kept, T = len(ids.npy)",
        "config": {k: getattr(cfg, k) for k in ("n_layers", "d_model", "n_ctx", "d_head", "n_heads", "d_mlp",
                                                "act_fn", "normalization_type", "d_vocab",
                                                "positional_embedding_type")},
        "hooks": hooks})
    return {"written": True, "n_hooks": len(hooks), "file": "transformer_lens_hooks.json",
            "ours_matched": "every hook file here except attn.hook_rot_q/rot_k is a TransformerLens hook "
                            "with the same shape (batch dropped)"}


# --------------------------------------------------------------------------


def draw_ids(spec: dict[str, Any], bos: int, T: int = SEQ_LEN, seed: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(spec["seed"] if seed is None else seed)
    ids = rng.integers(4, spec["vocab_size"] - 2, size=T)
    ids[0] = bos
    return ids.astype(np.int32)


def rope_reference(q: torch.Tensor, factors: list[float], spec: dict[str, Any], scaling: float) -> torch.Tensor:
    """float64 partial NeoX RoPE of q (T, heads, hd) at positions 0..T-1 with
    inv_freq = 1 / (factor * theta ** (arange(0, rot, 2) / rot)), cos/sin
    times scaling; dims rot.. pass through (transformers' Phi-3 convention)."""
    rot = rotary_dims("phi3_longrope", spec)
    q = q.double()
    inv = 1.0 / (torch.tensor(factors, dtype=torch.float64)
                 * spec["rope_theta"] ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    ang = torch.arange(q.shape[0], dtype=torch.float64)[:, None] * inv[None, :]
    cos = (torch.cat([ang.cos(), ang.cos()], -1) * scaling)[:, None, :]
    sin = (torch.cat([ang.sin(), ang.sin()], -1) * scaling)[:, None, :]
    x = q[..., :rot]
    half = torch.cat([-x[..., rot // 2:], x[..., :rot // 2]], -1)
    return torch.cat([x * cos + half * sin, q[..., rot:]], -1)


def check_longrope_forward(model, spec: dict[str, Any], acts: dict[str, torch.Tensor], T: int,
                           expect: str) -> dict[str, Any]:
    """After a forward of length T: transformers' rotary module holds the
    expected factor set (inv_freq) and attention factor sqrt(1.5); hook_rot_q /
    hook_rot_k are RoPE of hook_q / hook_k with that set (float64 reference)
    and NOT with the other one; dims rot.. of rot_q / rot_k equal q / k."""
    rotary = model.model.rotary_emb
    short, long = longrope_factors(spec)
    sets = {"short": short, "long": long}
    other = "short" if expect == "long" else "long"
    orig = spec["original_max_position_embeddings"]
    assert (T > orig) == (expect == "long"), (T, orig, expect)   # transformers' rule, max position + 1 = T
    rot = rotary_dims("phi3_longrope", spec)
    want_scale = math.sqrt(1.5)
    assert abs(longrope_attention_factor(spec) - want_scale) <= 1e-12
    assert abs(float(rotary.attention_scaling) - want_scale) <= 1e-12, rotary.attention_scaling

    def inv_freq(factors):
        return 1.0 / (torch.tensor(factors, dtype=torch.float64)
                      * spec["rope_theta"] ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))

    got = rotary.inv_freq.double()
    inv_dev = {k: float(((got - inv_freq(v)) / inv_freq(v)).abs().max()) for k, v in sets.items()}
    assert inv_dev[expect] <= 1e-6 and inv_dev[other] > 1e-2, (expect, inv_dev)
    worst_match, worst_other, min_other = 0.0, 0.0, math.inf
    scaling = float(rotary.attention_scaling)
    for li in range(spec["num_hidden_layers"]):
        p = f"blocks.{li}.attn."
        for c in ("q", "k"):
            pre, post = acts[p + "hook_" + c], acts[p + "hook_rot_" + c]
            assert torch.equal(post[..., rot:], pre[..., rot:]), f"{p}{c}: dims {rot}.. rotated"
            d_exp = float((rope_reference(pre, sets[expect], spec, scaling) - post.double()).abs().max())
            d_oth = float((rope_reference(pre, sets[other], spec, scaling) - post.double()).abs().max())
            worst_match = max(worst_match, d_exp)
            min_other = min(min_other, d_oth)
    assert worst_match <= 1e-4, f"hook_rot_q/k != RoPE with the {expect} factors: {worst_match}"
    assert min_other >= 0.05, f"hook_rot_q/k with the {other} factors too close: {min_other}"
    print(f"  T={T}: transformers used the {expect.upper()} factors: inv_freq rel dev {inv_dev[expect]:.2e} "
          f"({other}: {inv_dev[other]:.3g}); attention_scaling {scaling!r}; rot_q/rot_k vs float64 RoPE "
          f"({expect}) {worst_match:.2e}, vs {other} factors >= {min_other:.3g}; dims {rot}.. == q/k")
    return {"T": T, "factors_used": expect, "inv_freq_rel_dev": inv_dev, "attention_scaling": scaling,
            f"rot_qk_vs_float64_rope_{expect}_max_abs": worst_match,
            f"rot_qk_vs_float64_rope_{other}_min_over_hooks_of_max_abs": min_other,
            "dims_past_rotary_equal_q_k": True}


def make_one(family: str, out_root: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    spec = SPECS[family]
    name = f"tiny_{family}"
    rc.setup_determinism(spec["seed"])
    folder = out_root / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)

    model = build_model(family, spec)
    model.save_pretrained(str(folder), safe_serialization=True)
    if spec["tokenizer"] == "sentencepiece":
        arch.make_sentencepiece(folder, spec["vocab_size"])
    else:
        arch.make_byte_bpe(folder, spec["vocab_size"], style=spec["tokenizer"])
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                 attn_implementation="eager").float().eval()
    cfg = model.config
    assert cfg._attn_implementation == "eager"
    if family == "gpt_neox":
        assert cfg.use_parallel_residual and cfg.rope_parameters["partial_rotary_factor"] == spec["rotary_pct"]
        assert model.gpt_neox.layers[0].attention.rotary_ndims == int(spec["rotary_pct"] * spec["head_dim"])
    bos = special_ids(family, spec)["bos_token_id"]
    ids = draw_ids(spec, bos, spec.get("seq_len", SEQ_LEN))
    ids_t = torch.from_numpy(ids.astype(np.int64)).unsqueeze(0)
    logits, acts = rc.capture_hooks_classic(model, ids_t)
    longrope = None
    if family == "phi3_longrope":
        rp = cfg.rope_parameters
        short, long = longrope_factors(spec)
        assert rp["rope_type"] == "longrope" and rp["short_factor"] == short and rp["long_factor"] == long
        assert "factor" not in rp and "attention_factor" not in rp, rp
        assert rp["original_max_position_embeddings"] == spec["original_max_position_embeddings"]
        print(f"  short_factor {short}\n  long_factor  {long}\n  attention factor sqrt(1 + ln(64/16)/ln(16)) = "
              f"{longrope_attention_factor(spec)!r}")
        main_check = check_longrope_forward(model, spec, acts, len(ids), "long")
        # the short sequence on a freshly loaded model (nothing cached from the T = 20 forward) ...
        short_ids = draw_ids(spec, bos, spec["short_seq_len"], spec["short_ids_seed"])
        short_t = torch.from_numpy(short_ids.astype(np.int64)).unsqueeze(0)
        fresh = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                     attn_implementation="eager").float().eval()
        short_logits, short_acts = rc.capture_hooks_classic(fresh, short_t)
        short_check = check_longrope_forward(fresh, spec, short_acts, len(short_ids), "short")
        # ... and on the model that just ran T = 20: bit-identical (the switch is per forward)
        again = model(input_ids=short_t, use_cache=False).logits[0].float()
        assert torch.equal(again, short_logits), "T = 16 forward depends on the previous T = 20 one"
        check_longrope_forward(model, spec, short_acts, len(short_ids), "short")
        # and the main sequence again after it: long factors, bit-identical logits
        again = model(input_ids=ids_t, use_cache=False).logits[0].float()
        assert torch.equal(again, logits), "T = 20 forward depends on the previous T = 16 one"
        check_longrope_forward(model, spec, acts, len(ids), "long")
        arch.check_masks(short_acts, ["full_attention"] * spec["num_hidden_layers"], None)
        longrope = {"short_ids": short_ids, "short_logits": short_logits, "short_acts": short_acts,
                    "checks": {"main": main_check, "short": short_check,
                               "order_independent": "T=16 logits on a fresh model == on the model after the T=20 "
                                                    "forward; T=20 logits again after that == first T=20 run "
                                                    "(bit for bit)"}}
    stats = {"logits_std": float(logits.std()), "logits_abs_max": float(logits.abs().max()),
             "min_top1_top2_gap": float((torch.topk(logits, 2, -1).values[:, 0]
                                         - torch.topk(logits, 2, -1).values[:, 1]).min())}
    masks = arch.check_masks(acts, ["full_attention"] * spec["num_hidden_layers"], None)
    if family == "gpt_neox":   # partial rotary: the dims past rot are untouched by RoPE
        rot = int(spec["rotary_pct"] * spec["head_dim"])
        for li in range(spec["num_hidden_layers"]):
            p = f"blocks.{li}.attn."
            assert torch.equal(acts[p + "hook_rot_q"][..., rot:], acts[p + "hook_q"][..., rot:])
            assert not torch.equal(acts[p + "hook_rot_q"][1:, :, :rot], acts[p + "hook_q"][1:, :, :rot])

    conversion = arch.convert(folder, family, **convert_options(family))
    gguf_check = check_gguf(folder, family, spec, model)
    qkv_diff = check_gguf_qkv(folder, family, spec, model, acts)
    print(f"  GGUF q/k/v rows (layout as documented) vs hook_q/k/v: max |diff| {qkv_diff:.3g}")
    hf_gguf = arch.check_transformers_gguf(folder, model, ids_t, logits)

    writer = rc.ArrayWriter(folder)
    writer.save("ids", ids, "<i4")
    writer.save("logits", logits, "<f4")
    names = list(acts)
    for hook in names:
        writer.save(hook, acts[hook], "<f4")
    short_writer = None
    if longrope is not None:
        (folder / "short").mkdir()
        short_writer = rc.ArrayWriter(folder / "short")
        short_writer.save("ids", longrope["short_ids"], "<i4")
        short_writer.save("logits", longrope["short_logits"], "<f4")
        assert list(longrope["short_acts"]) == names
        for hook in names:
            short_writer.save(hook, longrope["short_acts"][hook], "<f4")
    tl_report = None
    if family == "gpt2":
        tl_report = write_transformer_lens_hooks(folder, spec, ids,
                                                 {n: list(acts[n].shape) for n in names})

    for f in folder.rglob("*"):
        if f.is_file():
            f.chmod(0o644)
    files = {}
    for fname in sorted(p.name for p in folder.iterdir()
                        if p.is_file() and p.suffix in (".json", ".safetensors", ".gguf", ".model")):
        if fname == "reference.json":
            continue
        files[fname] = {"sha256": rc.sha256_file(folder / fname), "bytes": (folder / fname).stat().st_size}

    H, Hkv, hd = rc.attention_shape(cfg)
    config_rec = {
        "vocab_size": spec["vocab_size"], "d_model": spec["hidden_size"], "n_layers": spec["num_hidden_layers"],
        "n_heads": H, "n_kv_heads": Hkv, "head_dim": hd, "d_mlp": spec["intermediate_size"],
        "norm": spec["norm"], "norm_eps": spec["eps"], "norm_has_bias": spec["norm"] == "layernorm",
        "rotary_dims": rotary_dims(family, spec),
        "rope_theta": spec.get("rope_theta"), "positional": "learned" if family == "gpt2" else "rope",
        "n_positions": spec.get("n_positions", spec.get("max_position_embeddings")),
        "linear_biases": family in ("gpt2", "gpt_neox"), "mlp": "gated silu" if family in PHI3 + ("olmo2",)
        else f"plain {spec['act']}", "mlp_activation": spec["act"],
        "parallel_residual": family == "gpt_neox", "qk_norm": "whole projection" if family == "olmo2" else None,
        "post_norms_only": family == "olmo2", "tie_word_embeddings": spec["tie"],
        "attention_scale": hd ** -0.5, **special_ids(family, spec),
    }
    if family == "phi3_longrope":
        short, long = longrope_factors(spec)
        config_rec["rope_scaling"] = {
            "type": "longrope", "original_max_position_embeddings": spec["original_max_position_embeddings"],
            "max_position_embeddings": spec["max_position_embeddings"],
            "attention_factor": longrope_attention_factor(spec),
            "attention_factor_rule": "sqrt(1 + ln(max_position_embeddings / original_max_position_embeddings) / "
                                     "ln(original_max_position_embeddings)), implicit (not in config.json); "
                                     "multiplies cos and sin",
            "short_factor": short, "long_factor": long,
            "inv_freq": "1 / (factor[i] * rope_theta ** (2i / rotary_dims)), i < rotary_dims / 2",
            "factor_draw": f"numpy default_rng({spec['factor_seed']}): short uniform [1, 2], then long uniform "
                           "[1.5, 12], rounded to 4 decimals"}
    ref = rc.manifest_header(GENERATOR, spec["seed"])
    ref.update({
        "model": name, "hf_class": spec["hf_class"], "model_type": cfg.model_type, "gguf_arch": spec["gguf_arch"],
        "config": config_rec,
        "init": {"linear_std": LINEAR_STD, "bias_std": BIAS_STD, "embed_std": EMBED_STD,
                 "norm_weight": f"1 + {NORM_STD} * randn", "norm_bias": f"{NORM_STD} * randn"},
        "T": int(len(ids)), "ids": ids.tolist(), "hooks": names, "arrays": writer.records, "files": files,
        "conventions": rc.CLASSIC_HOOK_CONVENTIONS,
        "conversion": conversion,
        "gguf_layout": {"notes": GGUF_LAYOUT_NOTES[family], "tensors": gguf_check["tensors"],
                        "not_written": gguf_check["not_written"],
                        "ne_order": "gguf_ne is ggml's (innermost first); rows_by_cols the numpy (row-major) shape "
                                    "of the data; every GGUF tensor equals the HF one after the listed transform, "
                                    "bit for bit"},
        "transformer_lens_hooks": tl_report,
        "checks": {"stats": stats, "masks": masks, "gguf_metadata": gguf_check["metadata"],
                   "transformers_gguf_load": hf_gguf,
                   "gguf_qkv_rows_vs_hooks_max_abs_diff": qkv_diff,
                   "numpy_gguf_forward": "not run: refgen_common.gguf_numpy_forward covers llama-like "
                                         "architectures only"},
    })
    if longrope is not None:
        short_ids = longrope["short_ids"]
        ref["cases"] = {
            "rule": "long iff T (max position + 1) > original_max_position_embeddings (transformers' rule)",
            "main": {"folder": ".", "T": int(len(ids)), "ids": ids.tolist(), "rope_factors": "long",
                     "ids_draw": f"numpy default_rng({spec['seed']}), bos first"},
            "short": {"folder": "short", "T": int(len(short_ids)), "ids": short_ids.tolist(), "rope_factors": "short",
                      "ids_draw": f"numpy default_rng({spec['short_ids_seed']}), bos first",
                      "stats": {"logits_std": float(longrope["short_logits"].std()),
                                "logits_abs_max": float(longrope["short_logits"].abs().max())},
                      "arrays": short_writer.records},
        }
        ref["gguf_layout"]["rope_factor_tensors"] = gguf_check["rope_factor_tensors"]
        ref["checks"]["longrope"] = longrope["checks"]
    rc.write_json(folder / "reference.json", ref)
    return ref


def main() -> int:
    return arch.run_families(__doc__, SPECS, make_one)


if __name__ == "__main__":
    sys.exit(main())
