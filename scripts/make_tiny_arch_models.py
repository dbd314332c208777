#!/usr/bin/env python3
"""Writes the tiny random Gemma 1/2/3 and Qwen3 test models (issue 15) and their
references:

  tests/fixtures/tiny_gemma/   GemmaForCausalLM: embedding scaled by sqrt(d_model), GELU-tanh MLP,
                               (1 + w) RMSNorm, head_dim != d_model / n_heads, GQA, tied
  tests/fixtures/tiny_gemma2/  Gemma2ForCausalLM: + sandwich norms, sliding window 4 on even layers,
                               attention and final logit soft-capping (both binding)
  tests/fixtures/tiny_gemma3/  Gemma3ForCausalLM (text only, model_type gemma3_text): + q/k RMSNorm,
                               6 layers (layer 5 global, 0-4 sliding), local RoPE base != global,
                               final logit soft-capping
  tests/fixtures/tiny_qwen3/   Qwen3ForCausalLM: q/k RMSNorm, head_dim != d_model / n_heads, GQA,
                               untied output matrix

Each folder gets the Hugging Face checkpoint (config.json + model.safetensors,
float32, written by save_pretrained), a tokenizer (a SentencePiece BPE
tokenizer.model trained here for the Gemma family; a byte-level BPE
tokenizer.json for Qwen3), model.gguf converted from that folder by llama.cpp's
own convert_hf_to_gguf.py (--outtype f32), and references computed by
transformers on CPU in float32: ids.npy, logits.npy and one .npy per hook point
(see HOOKS in refgen_common.capture_hooks_arch), described by reference.json
(magic "patchbay-fixture", version 1).

Pinned tools (the converter is NOT vendored into this repository):
  llama-cpp-python==0.3.36 sdist from PyPI, sha256 SDIST_SHA256 below; it carries
  llama.cpp under vendor/llama.cpp (convert_hf_to_gguf.py + conversion/ + gguf-py/).
  Cached under .cache/llama-cpp-sdist/ (git-ignored), downloaded with
  `pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36`.
  Generated with transformers 5.25.0, torch 2.15.0, sentencepiece 0.2.x,
  tokenizers 0.23.x, protobuf (transformers' SentencePiece -> tokenizer.json
  conversion needs it), accelerate (transformers' GGUF loading needs it); the
  exact versions of the first ones land in each reference.json.

Usage: .venv/bin/python scripts/make_tiny_arch_models.py [--out tests/fixtures] [--only gemma2,qwen3]

Facts about llama.cpp (read from the pinned sources) that shape the models:
  * query_pre_attn_scalar is not stored in GGUF: llama.cpp scales queries by
    1/sqrt(head_dim) for gemma2/gemma3 (1/sqrt(d_model/n_heads) only for the
    27B layer counts 46/62). For HF and GGUF to describe the same model the
    folders use query_pre_attn_scalar == head_dim; the HF-only case
    query_pre_attn_scalar != head_dim is covered by variant_qpas/ in the gemma2
    and gemma3 folders (config.json + logits.npy of the same weights).
  * gemma3's converter writes no sliding-window pattern; llama.cpp assumes 6
    (layer L global iff L % 6 == 5), the same as transformers' default. Hence
    6 layers for tiny_gemma3. gemma2: pattern 2, layer 0 sliding.
  * The converter writes Gemma norm weights as w + 1 and leaves Q/K rows in HF
    order (NeoX-style RoPE for all four architectures): checked tensor by
    tensor after conversion.
  * The sliding window: a query at position i sees keys j with i - j < window
    (transformers' sliding_window_overlay and llama.cpp's LLAMA_SWA_TYPE_STANDARD agree).

Deterministic: seeded generators everywhere; run twice and compare bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refgen_common as rc  # noqa: E402

GENERATOR = "scripts/make_tiny_arch_models.py"
SDIST_NAME = "llama_cpp_python-0.3.36.tar.gz"
SDIST_PIN = "llama-cpp-python==0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
CACHE = rc.REPO_ROOT / ".cache" / "llama-cpp-sdist"

SEQ_LEN = 14
LINEAR_STD = 0.2
EMBED_STD = 0.4       # large enough that the final soft-cap (3.0) saturates some logits
NORM_STD = 0.15       # Gemma norms store w (the model uses 1 + w); Qwen3 stores 1 + NORM_STD * randn

COMMON = {"vocab_size": 320, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24,
          "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}

SPECS: dict[str, dict[str, Any]] = {
    "gemma": {**COMMON, "seed": 1501, "hf_class": "GemmaForCausalLM", "gguf_arch": "gemma",
              "hidden_size": 80, "num_hidden_layers": 2, "intermediate_size": 112,
              "rope_theta": 10000.0, "tie_word_embeddings": True},
    "gemma2": {**COMMON, "seed": 1502, "hf_class": "Gemma2ForCausalLM", "gguf_arch": "gemma2",
               "hidden_size": 72, "num_hidden_layers": 4, "intermediate_size": 80, "head_dim": 20,
               "rope_theta": 10000.0, "tie_word_embeddings": True, "sliding_window": 4,
               "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0,
               "query_pre_attn_scalar": 20, "variant_query_pre_attn_scalar": 18},
    "gemma3": {**COMMON, "seed": 1503, "hf_class": "Gemma3ForCausalLM", "gguf_arch": "gemma3",
               "hidden_size": 72, "num_hidden_layers": 6, "intermediate_size": 64, "head_dim": 20,
               "num_key_value_heads": 1,
               "rope_theta": 100000.0, "rope_local_base_freq": 5000.0, "tie_word_embeddings": True,
               "sliding_window": 4, "final_logit_softcapping": 3.0,
               "query_pre_attn_scalar": 20, "variant_query_pre_attn_scalar": 18},
    "qwen3": {**COMMON, "seed": 1504, "hf_class": "Qwen3ForCausalLM", "gguf_arch": "qwen3",
              "hidden_size": 64, "num_hidden_layers": 3, "intermediate_size": 96,
              "rope_theta": 1000000.0, "tie_word_embeddings": False,
              # <|endoftext|>, the last-but-one id of make_byte_bpe's vocabulary (Qwen3 base: bos = eos)
              "bos_token_id": 318, "eos_token_id": 318, "pad_token_id": None},
}


# --------------------------------------------------------------------------
# configs and weights


def build_config(family: str, spec: dict[str, Any], qpas: float | None = None):
    import transformers as tf

    common = dict(vocab_size=spec["vocab_size"], hidden_size=spec["hidden_size"],
                  num_hidden_layers=spec["num_hidden_layers"], num_attention_heads=spec["num_attention_heads"],
                  num_key_value_heads=spec["num_key_value_heads"], head_dim=spec["head_dim"],
                  intermediate_size=spec["intermediate_size"], rms_norm_eps=spec["rms_norm_eps"],
                  max_position_embeddings=spec["max_position_embeddings"],
                  tie_word_embeddings=spec["tie_word_embeddings"], bos_token_id=spec["bos_token_id"],
                  eos_token_id=spec["eos_token_id"], pad_token_id=spec["pad_token_id"],
                  attention_bias=False)
    rope = {"rope_type": "default", "rope_theta": spec["rope_theta"]}
    if family == "gemma":
        cfg = tf.GemmaConfig(**common, hidden_activation="gelu_pytorch_tanh", rope_parameters=rope)
    elif family == "gemma2":
        cfg = tf.Gemma2Config(**common, hidden_activation="gelu_pytorch_tanh", rope_parameters=rope,
                              sliding_window=spec["sliding_window"],
                              attn_logit_softcapping=spec["attn_logit_softcapping"],
                              final_logit_softcapping=spec["final_logit_softcapping"],
                              query_pre_attn_scalar=qpas or spec["query_pre_attn_scalar"])
    elif family == "gemma3":
        cfg = tf.Gemma3TextConfig(
            **common, hidden_activation="gelu_pytorch_tanh",
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": spec["rope_theta"]},
                             "sliding_attention": {"rope_type": "default",
                                                   "rope_theta": spec["rope_local_base_freq"]}},
            sliding_window=spec["sliding_window"], attn_logit_softcapping=None,
            final_logit_softcapping=spec["final_logit_softcapping"],
            query_pre_attn_scalar=qpas or spec["query_pre_attn_scalar"])
        cfg.architectures = ["Gemma3ForCausalLM"]
    else:
        cfg = tf.Qwen3Config(**common, hidden_act="silu", rope_parameters=rope, use_sliding_window=False)
    cfg._attn_implementation = "eager"
    return cfg


def build_model(family: str, spec: dict[str, Any]):
    import transformers as tf

    cfg = build_config(family, spec)
    model = getattr(tf, spec["hf_class"])(cfg).float().eval()
    gen = torch.Generator().manual_seed(spec["seed"])
    gemma = family.startswith("gemma")
    for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        noise = torch.randn(tuple(param.shape), generator=gen, dtype=torch.float32)
        if "norm" in name:
            value = NORM_STD * noise if gemma else 1.0 + NORM_STD * noise
        elif "embed_tokens" in name:
            value = EMBED_STD * noise
        else:
            value = LINEAR_STD * noise
        param.data.copy_(value)
    if spec["tie_word_embeddings"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


# --------------------------------------------------------------------------
# tokenizers (only need to be well formed and deterministic)

_WORDS = ("the a of to and in is was for on that with as by at from light house keeper sea ship storm "
          "night day wind bird step lamp diary village winter rock cliff water salt timber glass year "
          "morning evening north south old new small large quiet bright cold warm every never always").split()


def _corpus(seed: int, n_lines: int = 600) -> list[str]:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n_lines):
        words = [_WORDS[i] for i in rng.integers(0, len(_WORDS), size=int(rng.integers(4, 12)))]
        lines.append(" ".join(words).capitalize() + ".")
    return lines


def make_sentencepiece(folder: Path, vocab_size: int) -> None:
    """A Gemma-style SentencePiece BPE model: <pad>=0, <eos>=1, <bos>=2, <unk>=3,
    byte fallback, exactly vocab_size pieces. Single thread, no shuffling:
    the trainer is deterministic."""
    import io

    import sentencepiece as spm

    # From an iterator into memory: a file input or model_prefix would put
    # this machine's paths into the model's trainer_spec.
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(7)), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, character_coverage=1.0, num_threads=1, shuffle_input_sentence=False,
        input_sentence_size=0, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
        normalization_rule_name="identity", minloglevel=2)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert sp.get_piece_size() == vocab_size, sp.get_piece_size()
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<eos>", "<bos>", "<unk>"]
    rc.write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
        "model_max_length": 64})
    # tokenizer.json (what transformers 5 and patchbay's folder tokenizer read),
    # converted by transformers from tokenizer.model (needs protobuf); written
    # before the GGUF conversion so the converter sees the folder as committed.
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(str(folder))
    text = "The keeper saw a ship 123 \u00fc"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
    hf_tok.backend_tokenizer.save(str(folder / "tokenizer.json"))


def make_byte_bpe(folder: Path, vocab_size: int, style: str = "qwen2") -> None:
    """Qwen-style byte-level BPE (tokenizer.json): 256 byte symbols, merges
    learned on the synthetic corpus, two special tokens at the end.
    style "gpt2" (GPT-2 / GPT-NeoX folders, make_tiny_classic_models.py):
    GPT-2's own byte-level regex instead of Qwen2's and one special token,
    <|endoftext|>, the last id."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    assert style in ("qwen2", "gpt2"), style
    specials = ["<|endoftext|>", "<|im_start|>"] if style == "qwen2" else ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    if style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        # Qwen2's split regex, then byte-level mapping without GPT-2's own regex
        split = Regex(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                      r"|\s*[\r\n]+|\s+(?!\S)|\s+")
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(split, behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(_corpus(11), trainer=trainer)
    assert tok.get_vocab_size() == vocab_size - len(specials), tok.get_vocab_size()
    tok.add_special_tokens(specials)
    assert tok.get_vocab_size() == vocab_size
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(str(folder))


# --------------------------------------------------------------------------
# conversion with llama.cpp's own converter


def llama_cpp_dir() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / SDIST_NAME
    if not sdist.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        SDIST_PIN, "-d", str(CACHE)], check=True)
    digest = rc.sha256_file(sdist)
    assert digest == SDIST_SHA256, f"{sdist}: sha256 {digest} != pinned {SDIST_SHA256}"
    root = CACHE / "x"
    top = root / SDIST_NAME[:-len(".tar.gz")]
    if not (top / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py").exists():
        root.mkdir(exist_ok=True)
        with tarfile.open(sdist) as tar:
            tar.extractall(root, filter="data")
    return top / "vendor" / "llama.cpp"


# Runs in a subprocess so the converter imports its own gguf-py. raw_keys
# (make_tiny_classic_models.py, gpt_neox: "rotary_pct"): config.json keys that
# transformers 5's config class consumes on load (so AutoConfig's dict, which
# the converter reads, lacks them) are added back from the raw config.json.
# For qwen3 the
# converter identifies a BPE pre-tokenizer by hashing the ids of a test string;
# this made-up vocabulary has no known hash, so (and only then) the detection
# is overridden to "qwen2" -- the pre-tokenizer regex make_byte_bpe uses.
_CONVERT = r"""
import sys
llama = sys.argv[1]
sys.path.insert(0, llama)
override = sys.argv[2]
raw_keys = [k for k in sys.argv[3].split(",") if k]
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[4:]
import convert_hf_to_gguf as conv
if override:
    import conversion.base
    conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: override
if raw_keys:
    import json
    import conversion.base
    loader = conversion.base.ModelBase.load_hparams
    def load_hparams(dir_model, is_mistral_format):
        hparams = loader(dir_model, is_mistral_format)
        raw = json.loads((dir_model / "config.json").read_text())
        for key in raw_keys:
            hparams.setdefault(key, raw[key])
        return hparams
    conversion.base.ModelBase.load_hparams = staticmethod(load_hparams)
conv.main()
"""


def gguf_file_name(outtype: str) -> str:
    """model.gguf for f32 (the folders' reference GGUF); model.<outtype>.gguf otherwise."""
    return "model.gguf" if outtype == "f32" else f"model.{outtype}.gguf"


def convert(folder: Path, family: str, override: str | None = None,
            raw_keys: tuple[str, ...] = (), outtype: str = "f32",
            outfile: Path | None = None) -> dict[str, Any]:
    """override: the pre-tokenizer name to force (see _CONVERT); default:
    "qwen2" for qwen3, none otherwise. raw_keys: see _CONVERT. outtype: the
    converter's --outtype (f32 for the folders' model.gguf; q8_0 for
    model.q8_0.gguf, scripts/make_q8_fixtures.py). outfile: default
    folder / gguf_file_name(outtype)."""
    llama = llama_cpp_dir()
    if override is None:
        override = "qwen2" if family == "qwen3" else ""
    out = outfile if outfile is not None else folder / gguf_file_name(outtype)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0")
    env.pop("NO_LOCAL_GGUF", None)
    proc = subprocess.run([sys.executable, "-c", _CONVERT, str(llama), override, ",".join(raw_keys), str(folder),
                           "--outfile", str(out), "--outtype", outtype, "--model-name", f"tiny_{family}"],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"convert_hf_to_gguf.py failed for {folder}")
    return {"converter": f"vendor/llama.cpp/convert_hf_to_gguf.py from {SDIST_PIN} (sha256 {SDIST_SHA256})",
            "args": ["--outtype", outtype, "--model-name", f"tiny_{family}"],
            "pre_tokenizer_override": override or None,
            **({"config_keys_added_back_from_config_json": list(raw_keys)} if raw_keys else {})}


# --------------------------------------------------------------------------
# checks of the GGUF


HF_TO_GGUF = {
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def hf_to_gguf_name(family: str, name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".")
    assert parts[:2] == ["model", "layers"], name
    layer, rest = parts[2], ".".join(parts[3:])
    sandwich = family in ("gemma2", "gemma3")
    if rest == "post_attention_layernorm.weight":
        # sandwich models: the norm after attention; others: the norm before the MLP
        gg = "post_attention_norm.weight" if sandwich else "ffn_norm.weight"
    elif rest == "pre_feedforward_layernorm.weight":
        gg = "ffn_norm.weight"
    elif rest == "post_feedforward_layernorm.weight":
        gg = "post_ffw_norm.weight"
    else:
        gg = HF_TO_GGUF[rest]
    return f"blk.{layer}.{gg}"


def check_gguf(folder: Path, family: str, spec: dict[str, Any], model) -> dict[str, Any]:
    """Every GGUF tensor against the safetensors one after undoing the
    converter's transforms (Gemma norms: w + 1; nothing else). Prints a table."""
    import gguf

    reader = gguf.GGUFReader(str(folder / "model.gguf"))

    def field(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = spec["gguf_arch"]
    assert field("general.architecture") == arch, field("general.architecture")
    meta = {k: field(k) for k in reader.fields
            if not k.startswith("tokenizer.ggml.") or k in ("tokenizer.ggml.model", "tokenizer.ggml.pre",
                                                            "tokenizer.ggml.bos_token_id",
                                                            "tokenizer.ggml.eos_token_id")}
    meta = {k: v for k, v in meta.items() if not k.startswith("GGUF.")}
    assert field(f"{arch}.block_count") == spec["num_hidden_layers"]
    assert field(f"{arch}.embedding_length") == spec["hidden_size"]
    assert field(f"{arch}.attention.head_count") == spec["num_attention_heads"]
    assert field(f"{arch}.attention.head_count_kv") == spec["num_key_value_heads"]
    assert field(f"{arch}.attention.key_length") == spec["head_dim"]
    assert len(field("tokenizer.ggml.tokens")) == spec["vocab_size"]
    if "sliding_window" in spec:
        assert field(f"{arch}.attention.sliding_window") == spec["sliding_window"]
    if "attn_logit_softcapping" in spec:
        assert field(f"{arch}.attn_logit_softcapping") == spec["attn_logit_softcapping"]
    if "final_logit_softcapping" in spec:
        assert field(f"{arch}.final_logit_softcapping") == spec["final_logit_softcapping"]
    if family == "gemma3":
        assert field(f"{arch}.rope.freq_base") == spec["rope_theta"]
        assert field(f"{arch}.rope.freq_base_swa") == spec["rope_local_base_freq"]
        assert field(f"{arch}.attention.sliding_window_pattern") is None, "pattern stored: revisit 6 layers"

    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    if spec["tie_word_embeddings"]:
        sd.pop("lm_head.weight", None)
    by_gguf = {t.name: t for t in reader.tensors}
    gemma = family.startswith("gemma")
    rows = []
    for name in sorted(sd):
        gname = hf_to_gguf_name(family, name)
        t = by_gguf.pop(gname)
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, (gname, t.tensor_type)
        want = sd[name]
        got = np.asarray(t.data).reshape(want.shape)
        transform = "none"
        if gemma and name.endswith("norm.weight"):
            # the converter adds 1 in float32; undo and compare exactly with the
            # float32 sum it wrote
            assert np.array_equal(got, (want + np.float32(1)).astype(np.float32)), gname
            transform = "w + 1"
            diff = float(np.abs((got - np.float32(1)) - want).max())
        else:
            assert np.array_equal(got, want), gname
            diff = 0.0
        rows.append((name, gname, list(want.shape), transform, diff))
    assert not by_gguf, f"GGUF tensors without a safetensors counterpart: {sorted(by_gguf)}"
    print(f"  {'safetensors':48s} {'gguf':28s} {'shape':12s} {'transform':9s} max|diff|")
    for name, gname, shape, transform, diff in rows:
        print(f"  {name:48s} {gname:28s} {'x'.join(map(str, shape)):12s} {transform:9s} {diff:.3g}")
    return {"tensors": [{"safetensors": n, "gguf": g, "shape": s, "transform": tr, "max_abs_diff_after_undo": d}
                        for n, g, s, tr, d in rows],
            "metadata": {k: (v if not isinstance(v, float) else float(v)) for k, v in meta.items()}}


def check_transformers_gguf(folder: Path, model, ids_t: torch.Tensor, logits: torch.Tensor) -> dict[str, Any]:
    """Loads model.gguf back through transformers' GGUF reader: (1) config from
    the GGUF metadata alone, (2) the GGUF tensors with config.json supplied
    (what transformers' metadata mapping cannot carry, e.g. soft-caps or
    qwen3's head_dim, then comes from config.json). Recorded, not fatal."""
    from transformers import AutoModelForCausalLM

    report: dict[str, Any] = {}
    for label, extra in (("config_from_gguf", {}), ("with_config_json", {"config": model.config})):
        try:
            loaded = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file="model.gguf", dtype=torch.float32,
                                                          attn_implementation="eager", **extra).eval()
            out = loaded(input_ids=ids_t, use_cache=False).logits[0].float()
            cfg = loaded.config
            seen = {k: getattr(cfg, k, None) for k in ("head_dim", "sliding_window", "query_pre_attn_scalar",
                                                      "attn_logit_softcapping", "final_logit_softcapping",
                                                      "layer_types", "rope_parameters", "tie_word_embeddings")}
            report[label] = {"loads": True, "logits_max_abs_diff": float((out - logits).abs().max()),
                             "config_seen": json.loads(json.dumps(seen, default=str))}
        except Exception as e:
            report[label] = {"loads": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    return report


# --------------------------------------------------------------------------


def draw_ids(spec: dict[str, Any]) -> np.ndarray:
    rng = np.random.default_rng(spec["seed"])
    ids = rng.integers(4, spec["vocab_size"], size=SEQ_LEN)
    ids[0] = spec["bos_token_id"]
    return ids.astype(np.int32)


def softcap_stats(model, acts: dict[str, torch.Tensor], pre_cap_logits: torch.Tensor | None,
                  spec: dict[str, Any]) -> dict[str, Any]:
    """How strongly each soft-cap binds: the share of values whose magnitude
    exceeds the cap before tanh (there tanh changes them by more than 23%)."""
    out: dict[str, Any] = {}
    cap = spec.get("final_logit_softcapping")
    if cap is not None:
        assert pre_cap_logits is not None
        out["final_pre_cap_abs_max"] = float(pre_cap_logits.abs().max())
        out["final_share_abs_gt_cap"] = float((pre_cap_logits.abs() > cap).float().mean())
        assert out["final_share_abs_gt_cap"] > 0.02, f"final soft-cap does not bind: {out}"
    cap = spec.get("attn_logit_softcapping")
    if cap is not None:
        scale = float(model.config.query_pre_attn_scalar) ** -0.5
        n_rep = spec["num_attention_heads"] // spec["num_key_value_heads"]
        share, peak = [], 0.0
        T = SEQ_LEN
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
        for layer in range(spec["num_hidden_layers"]):
            q = acts[f"blocks.{layer}.attn.hook_rot_q"]                       # (T, H, hd)
            k = acts[f"blocks.{layer}.attn.hook_rot_k"].repeat_interleave(n_rep, dim=1)
            s = torch.einsum("qhd,khd->hqk", q, k) * scale                   # (H, T, T)
            vals = s[:, causal]
            share.append(float((vals.abs() > cap).float().mean()))
            peak = max(peak, float(vals.abs().max()))
        out["attn_scores_abs_max"] = peak
        out["attn_share_abs_gt_cap_per_layer"] = share
        assert min(share) > 0.02, f"attention soft-cap does not bind in every layer: {share}"
    return out


def check_masks(acts: dict[str, torch.Tensor], layer_types: list[str], window: int | None) -> dict[str, Any]:
    """hook_pattern is 0 exactly where masked: above the diagonal, and on
    sliding layers where query - key >= window; positive elsewhere."""
    T = acts["blocks.0.attn.hook_pattern"].shape[-1]   # SEQ_LEN, or a family's own length
    qi = torch.arange(T)[:, None]
    ki = torch.arange(T)[None, :]
    report = {}
    for layer, kind in enumerate(layer_types):
        pat = acts[f"blocks.{layer}.attn.hook_pattern"]                      # (H, T, T)
        allowed = ki <= qi
        if kind == "sliding_attention":
            allowed = allowed & (qi - ki < window)
        assert torch.all(pat[:, ~allowed] == 0), f"layer {layer}: masked entries not 0"
        assert torch.all(pat[:, allowed] > 0), f"layer {layer}: allowed entries 0"
        assert torch.allclose(pat.sum(-1), torch.ones(pat.shape[:2]), atol=1e-5)
        report[str(layer)] = {"type": kind, "keys_seen_by_last_query": int(allowed[-1].sum())}
    return report


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
    if family == "qwen3":
        make_byte_bpe(folder, spec["vocab_size"])
    else:
        make_sentencepiece(folder, spec["vocab_size"])
    # References come from the checkpoint as committed, reloaded.
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                 attn_implementation="eager").float().eval()
    cfg = model.config
    assert cfg._attn_implementation == "eager"
    layer_types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers)
    if family == "gemma3":
        assert cfg.model_type == "gemma3_text"
        assert layer_types == ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(6)]
    if family == "gemma2":
        assert layer_types == ["sliding_attention", "full_attention"] * 2
    window = getattr(cfg, "sliding_window", None) if family in ("gemma2", "gemma3") else None

    ids = draw_ids(spec)
    ids_t = torch.from_numpy(ids.astype(np.int64)).unsqueeze(0)
    pre_cap: dict[str, torch.Tensor] = {}
    h = model.lm_head.register_forward_hook(lambda m, a, o: pre_cap.__setitem__("x", o[0].detach().clone()))
    try:
        logits, acts = rc.capture_hooks_arch(model, ids_t)
    finally:
        h.remove()
    stats = {"logits_std": float(logits.std()), "logits_abs_max": float(logits.abs().max()),
             "min_top1_top2_gap": float((torch.topk(logits, 2, -1).values[:, 0]
                                         - torch.topk(logits, 2, -1).values[:, 1]).min())}
    stats["softcap"] = softcap_stats(model, acts, pre_cap.get("x"), spec)
    masks = check_masks(acts, layer_types, window)
    if window is not None:
        assert SEQ_LEN > window and any(t == "sliding_attention" for t in layer_types)
        assert any(t == "full_attention" for t in layer_types)

    conversion = convert(folder, family)
    gguf_check = check_gguf(folder, family, spec, model)
    hf_gguf = check_transformers_gguf(folder, model, ids_t, logits)
    np_logits, llama_rules = rc.gguf_numpy_forward(folder / "model.gguf", ids.astype(np.int64))
    numpy_diff = float(np.abs(np_logits - logits.double().numpy()).max())
    print(f"  float64 numpy forward over model.gguf (llama.cpp rules) vs HF logits: max |diff| {numpy_diff:.3g}")
    assert numpy_diff < 1e-4, f"GGUF under llama.cpp's rules is not the HF model: {numpy_diff}"

    writer = rc.ArrayWriter(folder)
    writer.save("ids", ids, "<i4")
    writer.save("logits", logits, "<f4")
    names = list(acts)
    for hook in names:
        writer.save(hook, acts[hook], "<f4")

    variant = None
    if "variant_query_pre_attn_scalar" in spec:
        # Same weights, query_pre_attn_scalar != head_dim: what a Hugging Face
        # folder can say and a GGUF cannot.
        vq = spec["variant_query_pre_attn_scalar"]
        vdir = folder / "variant_qpas"
        vdir.mkdir()
        vcfg = build_config(family, spec, qpas=vq)
        vcfg.save_pretrained(str(vdir))
        vmodel = AutoModelForCausalLM.from_pretrained(str(folder), config=vcfg, dtype=torch.float32,
                                                      attn_implementation="eager").float().eval()
        assert vmodel.config.query_pre_attn_scalar == vq
        vlogits = vmodel(input_ids=ids_t, use_cache=False).logits[0].float()
        vwriter = rc.ArrayWriter(vdir)
        vwriter.save("logits", vlogits, "<f4")
        variant = {"folder": "variant_qpas", "query_pre_attn_scalar": vq, "arrays": vwriter.records,
                   "max_abs_logit_change_vs_main": float((vlogits - logits).abs().max()),
                   "use": "copy model.safetensors next to variant_qpas/config.json and load that folder; "
                          "ids.npy of the main folder; compare with variant_qpas/logits.npy"}
        assert variant["max_abs_logit_change_vs_main"] > 1e-3

    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o644)
    files = {}
    for fname in sorted(p.name for p in folder.iterdir()
                        if p.is_file() and p.suffix in (".json", ".safetensors", ".gguf", ".model")):
        if fname == "reference.json":
            continue
        files[fname] = {"sha256": rc.sha256_file(folder / fname), "bytes": (folder / fname).stat().st_size}

    config_rec = {
        "vocab_size": spec["vocab_size"], "d_model": spec["hidden_size"], "n_layers": spec["num_hidden_layers"],
        "n_heads": spec["num_attention_heads"], "n_kv_heads": spec["num_key_value_heads"],
        "head_dim": spec["head_dim"], "d_mlp": spec["intermediate_size"], "rms_norm_eps": spec["rms_norm_eps"],
        "rope_theta": spec["rope_theta"], "rope_local_base_freq": spec.get("rope_local_base_freq"),
        "sliding_window": window, "layer_types": layer_types,
        "attn_logit_softcapping": spec.get("attn_logit_softcapping"),
        "final_logit_softcapping": spec.get("final_logit_softcapping"),
        "query_pre_attn_scalar": getattr(cfg, "query_pre_attn_scalar", None),
        "attention_scale": (float(cfg.query_pre_attn_scalar) ** -0.5 if hasattr(cfg, "query_pre_attn_scalar")
                            else spec["head_dim"] ** -0.5),
        "embed_scale": float(spec["hidden_size"] ** 0.5) if family.startswith("gemma") else 1.0,
        "mlp_activation": "gelu_pytorch_tanh" if family.startswith("gemma") else "silu",
        "norm_weight_offset": 1.0 if family.startswith("gemma") else 0.0,
        "qk_norm": family in ("gemma3", "qwen3"), "sandwich_norms": family in ("gemma2", "gemma3"),
        "tie_word_embeddings": spec["tie_word_embeddings"],
        "bos_token_id": spec["bos_token_id"], "eos_token_id": spec["eos_token_id"],
    }
    ref = rc.manifest_header(GENERATOR, spec["seed"])
    ref.update({
        "model": name, "hf_class": spec["hf_class"], "model_type": cfg.model_type,
        "gguf_arch": spec["gguf_arch"], "config": config_rec,
        "init": {"linear_std": LINEAR_STD, "embed_std": EMBED_STD,
                 "norm_weight": (f"{NORM_STD} * randn (stored w; the model multiplies by 1 + w)"
                                 if family.startswith("gemma") else f"1 + {NORM_STD} * randn")},
        "T": int(len(ids)), "ids": ids.tolist(), "hooks": names, "arrays": writer.records, "files": files,
        "conventions": rc.ARCH_HOOK_CONVENTIONS,
        "variant": variant,
        "conversion": conversion,
        "checks": {"stats": stats, "masks": masks,
                   "numpy_gguf_forward_vs_hf_logits_max_abs_diff": numpy_diff,
                   "llama_cpp_rules_used_by_numpy_forward": llama_rules, "gguf_vs_safetensors": gguf_check["tensors"],
                   "gguf_metadata": gguf_check["metadata"], "transformers_gguf_load": hf_gguf},
    })
    rc.write_json(folder / "reference.json", ref)
    return ref


def run_families(doc: str, specs: dict[str, Any], make_one) -> int:
    """The command line of a tiny-model generator: --out, --only; each
    family's folder made by make_one(family, out) and kept under 2 MB."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=rc.REPO_ROOT / "tests" / "fixtures")
    parser.add_argument("--only", default=None, help="comma-separated families: " + ",".join(specs))
    args = parser.parse_args()
    families = list(specs) if args.only is None else args.only.split(",")
    for family in families:
        assert family in specs, family
        print(f"tiny_{family}:")
        ref = make_one(family, args.out)
        folder = args.out / f"tiny_{family}"
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert size < 2 * 1024 * 1024, f"{folder}: {size} bytes"
        print(f"  T={ref['T']} hooks={len(ref['hooks'])} bytes={size} stats={json.dumps(ref['checks']['stats'])}")
        print(f"  transformers GGUF load: {json.dumps(ref['checks']['transformers_gguf_load'])[:400]}")
    return 0


def main() -> int:
    return run_families(__doc__, SPECS, make_one)


if __name__ == "__main__":
    sys.exit(main())
