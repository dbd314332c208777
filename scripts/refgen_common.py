"""Shared helpers for the Python reference generators (make_tiny_models.py,
make_smollm2_reference.py).

What this owns: the fixture manifest (magic, version, generator, library
versions), deterministic float32 CPU setup, .npy writing with a shape/dtype
record, and capture of TransformerLens-named hook points from a Hugging Face
Llama/Qwen2 model by forward hooks on its modules.

The C tests read `reference.json` plus the .npy files next to it; nothing here
depends on the C code, so the references are independent of the engine they
check.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

FIXTURE_MAGIC = "patchbay-fixture"
FIXTURE_VERSION = 1

REPO_ROOT = Path(__file__).resolve().parent.parent


def setup_determinism(seed: int) -> None:
    """float32 CPU, no grad, fixed seeds; no hub access."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.float32)
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)


def library_versions() -> dict[str, str]:
    import transformers

    versions = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    try:
        from importlib.metadata import version

        versions["gguf"] = version("gguf")
        versions["safetensors"] = version("safetensors")
    except Exception:  # metadata missing is not fatal for a reference
        pass
    return versions


def manifest_header(generator: str, seed: int | None) -> dict[str, Any]:
    header: dict[str, Any] = {
        "magic": FIXTURE_MAGIC,
        "version": FIXTURE_VERSION,
        "generator": generator,
        "seed": seed,
    }
    header.update(library_versions())
    return header


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ArrayWriter:
    """Writes .npy files (format 1.0, little-endian, C order) into one folder and
    remembers each file's dtype and shape for reference.json."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.records: dict[str, dict[str, Any]] = {}

    def save(self, name: str, array: Any, dtype: str) -> np.ndarray:
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        out = np.ascontiguousarray(np.asarray(array), dtype=np.dtype(dtype))
        assert out.dtype.byteorder in ("<", "=", "|") and np.little_endian
        path = self.folder / f"{name}.npy"
        # allow_pickle=False and a plain dtype keep the header at format 1.0.
        np.save(path, out, allow_pickle=False)
        with open(path, "rb") as f:
            head = f.read(8)
        assert head[:6] == b"\x93NUMPY" and head[6:8] == b"\x01\x00", f"{path}: not npy 1.0"
        self.records[f"{name}.npy"] = {"dtype": np.dtype(dtype).str, "shape": list(out.shape)}
        return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")


def rms_normalized(x: torch.Tensor, eps: float) -> torch.Tensor:
    """TransformerLens RMSNorm hook_normalized: x / sqrt(mean(x^2) + eps), before
    the weight. Written the way HF's LlamaRMSNorm/Qwen2RMSNorm compute it
    (x * rsqrt(...), in float32) so it is bit-identical to the tensor HF
    multiplies by the norm weight."""
    x = x.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    return x * torch.rsqrt(variance + eps)


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise TypeError(f"no tensor in hook value of type {type(value)!r}")


def hook_names(n_layers: int) -> list[str]:
    """The hook points captured, in forward order."""
    names = ["hook_embed"]
    for layer in range(n_layers):
        p = f"blocks.{layer}."
        names += [
            p + "hook_resid_pre",
            p + "attn.hook_q",
            p + "attn.hook_k",
            p + "attn.hook_v",
            p + "attn.hook_z",
            p + "hook_attn_out",
            p + "hook_resid_mid",
            p + "hook_mlp_out",
            p + "hook_resid_post",
        ]
    names.append("ln_final.hook_normalized")
    return names


def capture_hooks(model: torch.nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Runs one forward pass of a HF LlamaForCausalLM / Qwen2ForCausalLM (batch 1)
    and returns (logits (T, vocab), {hook name: activation with the batch dim
    dropped}). Activations are captured by hooks on the HF modules:

      hook_embed                  output of embed_tokens              (T, d_model)
      blocks.L.hook_resid_pre     input of decoder layer L            (T, d_model)
      blocks.L.attn.hook_q        q_proj output, before RoPE          (T, n_heads, head_dim)
      blocks.L.attn.hook_k/_v     k_proj / v_proj output, before RoPE (T, n_kv_heads, head_dim)
      blocks.L.attn.hook_z        input of o_proj                     (T, n_heads, head_dim)
      blocks.L.hook_attn_out      output of self_attn (after o_proj)  (T, d_model)
      blocks.L.hook_resid_mid     input of post_attention_layernorm   (T, d_model)
      blocks.L.hook_mlp_out       output of mlp                       (T, d_model)
      blocks.L.hook_resid_post    output of decoder layer L           (T, d_model)
      ln_final.hook_normalized    final norm input / rms, before the weight (T, d_model)
    """
    config = model.config
    n_heads = config.num_attention_heads
    n_kv_heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    eps = config.rms_norm_eps
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def store(name: str, tensor: torch.Tensor, shape: tuple[int, ...] | None = None) -> None:
        assert tensor.shape[0] == 1, "batch 1 only"
        t = tensor[0].detach().to(torch.float32).clone()
        if shape is not None:
            t = t.reshape(t.shape[0], *shape)
        assert name not in acts, f"hook {name} fired twice"
        acts[name] = t

    base = model.model
    handles.append(base.embed_tokens.register_forward_hook(
        lambda mod, args, out: store("hook_embed", out)))

    for layer_index, layer in enumerate(base.layers):
        p = f"blocks.{layer_index}."

        def pre_layer(mod, args, kwargs, p=p):
            hidden = args[0] if args else kwargs["hidden_states"]
            store(p + "hook_resid_pre", hidden)

        def post_layer(mod, args, kwargs, out, p=p):
            store(p + "hook_resid_post", _first_tensor(out))

        handles.append(layer.register_forward_pre_hook(pre_layer, with_kwargs=True))
        handles.append(layer.register_forward_hook(post_layer, with_kwargs=True))

        attn = layer.self_attn
        handles.append(attn.q_proj.register_forward_hook(
            lambda mod, args, out, p=p: store(p + "attn.hook_q", out, (n_heads, head_dim))))
        handles.append(attn.k_proj.register_forward_hook(
            lambda mod, args, out, p=p: store(p + "attn.hook_k", out, (n_kv_heads, head_dim))))
        handles.append(attn.v_proj.register_forward_hook(
            lambda mod, args, out, p=p: store(p + "attn.hook_v", out, (n_kv_heads, head_dim))))
        handles.append(attn.o_proj.register_forward_pre_hook(
            lambda mod, args, p=p: store(p + "attn.hook_z", args[0], (n_heads, head_dim))))
        handles.append(attn.register_forward_hook(
            lambda mod, args, kwargs, out, p=p: store(p + "hook_attn_out", _first_tensor(out)),
            with_kwargs=True))

        def pre_post_norm(mod, args, kwargs, p=p):
            hidden = args[0] if args else kwargs["hidden_states"]
            store(p + "hook_resid_mid", hidden)

        handles.append(layer.post_attention_layernorm.register_forward_pre_hook(pre_post_norm, with_kwargs=True))
        handles.append(layer.mlp.register_forward_hook(
            lambda mod, args, out, p=p: store(p + "hook_mlp_out", _first_tensor(out))))

    def pre_final_norm(mod, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        assert hidden.shape[0] == 1
        acts["ln_final.hook_normalized"] = rms_normalized(hidden[0], eps).clone()

    handles.append(base.norm.register_forward_pre_hook(pre_final_norm, with_kwargs=True))

    try:
        out = model(input_ids=input_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()

    logits = out.logits[0].detach().to(torch.float32)
    n_layers = len(base.layers)
    expected = hook_names(n_layers)
    missing = [n for n in expected if n not in acts]
    assert not missing, f"hooks did not fire: {missing}"

    # Exact invariants of the residual stream (HF adds in this order).
    assert torch.equal(acts["hook_embed"], acts["blocks.0.hook_resid_pre"]), "embed != resid_pre 0"
    for layer_index in range(n_layers):
        p = f"blocks.{layer_index}."
        assert torch.equal(acts[p + "hook_resid_mid"], acts[p + "hook_resid_pre"] + acts[p + "hook_attn_out"]), \
            f"layer {layer_index}: resid_mid != resid_pre + attn_out"
        assert torch.equal(acts[p + "hook_resid_post"], acts[p + "hook_resid_mid"] + acts[p + "hook_mlp_out"]), \
            f"layer {layer_index}: resid_post != resid_mid + mlp_out"
        if layer_index + 1 < n_layers:
            assert torch.equal(acts[p + "hook_resid_post"], acts[f"blocks.{layer_index + 1}.hook_resid_pre"]), \
                f"resid_post {layer_index} != resid_pre {layer_index + 1}"
    # The captured normalized activation really is what the final norm scales.
    final = acts["ln_final.hook_normalized"] * base.norm.weight.detach().to(torch.float32)
    relogits = model.lm_head(final.unsqueeze(0))[0]
    assert torch.allclose(relogits, logits, atol=1e-5, rtol=1e-5), "ln_final.hook_normalized does not reproduce logits"

    return logits, {name: acts[name] for name in expected}


# --------------------------------------------------------------------------
# Gemma 1/2/3 and Qwen3 (make_tiny_arch_models.py). A separate capture path so
# that the Llama/Qwen2 fixtures above keep their exact behaviour.

ARCH_HOOK_CONVENTIONS = {
    "batch_dim": "dropped; every activation is (T, ...)",
    "hook_embed": "output of embed_tokens: for Gemma the embedding row times sqrt(d_model) (float32 "
                  "sqrt, multiplied in float32), as TransformerLens folds the scale into W_E; it is "
                  "exactly blocks.0.hook_resid_pre",
    "attn.hook_q/k/v": "q_proj/k_proj/v_proj outputs, before q/k norm and before RoPE, (T, heads, head_dim)",
    "attn.hook_rot_q/rot_k": "the query/key entering attention: after q_norm/k_norm (Gemma 3, Qwen3) and "
                             "RoPE (rotate-half / NeoX pairs (i, i + head_dim/2)), before the attention "
                             "scale; (T, n_heads, head_dim) / (T, n_kv_heads, head_dim)",
    "attn.hook_pattern": "(n_heads, T, T) [head, query, key]: softmax over keys of "
                         "softcap(q.k * scale) + mask; 0 exactly where masked (above the diagonal; on "
                         "sliding layers also where query - key >= sliding_window); scale = "
                         "query_pre_attn_scalar^-0.5 (Gemma 2/3) or head_dim^-0.5; softcap(x) = "
                         "c * tanh(x / c) (Gemma 2 only)",
    "attn.hook_z": "input of o_proj, (T, n_heads, head_dim)",
    "ln1_post.hook_in": "Gemma 2/3 only (patchbay's name; TransformerLens has no single hook here): "
                        "o_proj output, the input of the post-attention norm",
    "hook_attn_out": "what attention adds to the residual stream: o_proj output (Gemma 1, Qwen3) or the "
                     "post-attention norm's output (Gemma 2/3, sandwich norms)",
    "hook_resid_mid": "resid_pre + attn_out (input of the pre-MLP norm)",
    "ln2_post.hook_in": "Gemma 2/3 only (patchbay's name): down_proj output, the input of the "
                        "post-feedforward norm",
    "hook_mlp_out": "what the MLP adds to the residual stream: down_proj output (Gemma 1, Qwen3) or the "
                    "post-feedforward norm's output (Gemma 2/3)",
    "ln_final.hook_normalized": "x * rsqrt(mean(x^2) + eps) in float32, before the norm weight (1 + w for Gemma)",
    "logits": "after the final soft-cap where the model has one: c * tanh(logits / c)",
    "norms": "Gemma: x * rsqrt(mean(x^2) + eps) * (1 + w), GGUF stores 1 + w; Qwen3: ... * w",
}


def arch_hook_names(n_layers: int, sandwich: bool) -> list[str]:
    """Hook points of capture_hooks_arch, in forward order."""
    names = ["hook_embed"]
    for layer in range(n_layers):
        p = f"blocks.{layer}."
        names += [p + "hook_resid_pre", p + "attn.hook_q", p + "attn.hook_k", p + "attn.hook_v",
                  p + "attn.hook_rot_q", p + "attn.hook_rot_k", p + "attn.hook_pattern", p + "attn.hook_z"]
        if sandwich:
            names.append(p + "ln1_post.hook_in")
        names += [p + "hook_attn_out", p + "hook_resid_mid"]
        if sandwich:
            names.append(p + "ln2_post.hook_in")
        names += [p + "hook_mlp_out", p + "hook_resid_post"]
    names.append("ln_final.hook_normalized")
    return names


def layer_modules(layer: torch.nn.Module, config: Any = None) -> dict[str, Any]:
    """The module boundaries of one decoder layer, by role. Sandwich-norm
    layers (Gemma 2/3) have pre_feedforward_layernorm; there
    post_attention_layernorm is the norm AFTER attention whose output is added
    to the residual. Elsewhere post_attention_layernorm is the pre-MLP norm,
    except for OLMo-2 (post norms only, no pre norms): there
    post_attention_layernorm / post_feedforward_layernorm are the norms after
    attention / MLP and resid_mid is the input of the MLP itself.

    The issue-16 families (GPT-2 transformer.h[i], GPT-NeoX gpt_neox.layers[i],
    Phi-3 with fused projections) are named here too:

      attn      the attention module (its layer_idx keys _EagerTap's records)
      o_proj    the output projection; its input is hook_z
      attn_out  output = hook_attn_out;  mid_norm  first input = hook_resid_mid
                (None for GPT-NeoX parallel blocks: no resid_mid there)
      mlp, mlp_out  output of mlp_out = hook_mlp_out
      post_norms  o_proj / MLP outputs pass a norm before the residual add
                  (Gemma 2/3, OLMo-2): ln1_post.hook_in / ln2_post.hook_in
      parallel  GPT-NeoX use_parallel_residual: resid_post = mlp_out + attn_out + resid_pre
      qkv       (with config) {"q"|"k"|"v": (module, columns)}: the module whose
                output holds the projection and the column of that output for
                each (head, dim), head-major, as a LongTensor -- arange for
                separate q/k/v_proj, offsets into GPT-2's c_attn / Phi-3's
                qkv_proj ([Q | K | V]), and GPT-NeoX's per-head interleaved
                query_key_value (head h: [q_h | k_h | v_h], 3 * head_dim columns)
    """
    if hasattr(layer, "ln_1"):                       # GPT-2
        attn = layer.attn
        roles = {"family": "gpt2", "sandwich": False, "post_norms": False, "parallel": False, "attn": attn,
                 "o_proj": attn.c_proj, "attn_out": attn, "mid_norm": layer.ln_2, "mlp": layer.mlp,
                 "mlp_out": layer.mlp, "fused": attn.c_attn}
    elif hasattr(layer, "attention") and hasattr(layer, "use_parallel_residual"):   # GPT-NeoX
        attn = layer.attention
        parallel = bool(layer.use_parallel_residual)
        roles = {"family": "gpt_neox", "sandwich": False, "post_norms": False, "parallel": parallel,
                 "attn": attn, "o_proj": attn.dense, "attn_out": attn,
                 "mid_norm": None if parallel else layer.post_attention_layernorm, "mlp": layer.mlp,
                 "mlp_out": layer.mlp, "fused": attn.query_key_value}
    elif hasattr(layer, "post_feedforward_layernorm") and not hasattr(layer, "pre_feedforward_layernorm"):
        attn = layer.self_attn                       # OLMo-2: post norms only
        roles = {"family": "olmo2", "sandwich": False, "post_norms": True, "parallel": False, "attn": attn,
                 "o_proj": attn.o_proj, "attn_out": layer.post_attention_layernorm, "mid_norm": layer.mlp,
                 "mlp": layer.mlp, "mlp_out": layer.post_feedforward_layernorm, "fused": None}
    else:
        sandwich = hasattr(layer, "pre_feedforward_layernorm")
        attn = layer.self_attn
        roles = {
            "sandwich": sandwich,
            "attn": attn,
            # output = hook_attn_out
            "attn_out": layer.post_attention_layernorm if sandwich else attn,
            # input = hook_resid_mid
            "mid_norm": layer.pre_feedforward_layernorm if sandwich else layer.post_attention_layernorm,
            "mlp": layer.mlp,
            # output = hook_mlp_out
            "mlp_out": layer.post_feedforward_layernorm if sandwich else layer.mlp,
            "family": "phi3" if hasattr(attn, "qkv_proj") else "llama-like",
            "post_norms": sandwich, "parallel": False, "o_proj": attn.o_proj,
            "fused": getattr(attn, "qkv_proj", None),
        }
    if config is not None:
        roles["qkv"] = qkv_columns(roles, config)
    return roles


def attention_shape(config: Any) -> tuple[int, int, int]:
    """(n_heads, n_kv_heads, head_dim) of a Hugging Face config (GPT-2 and
    GPT-NeoX have no kv heads / head_dim fields)."""
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return n_heads, n_kv, head_dim


def qkv_columns(roles: dict[str, Any], config: Any) -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    H, Hkv, hd = attention_shape(config)
    fam, fused = roles["family"], roles["fused"]
    if fam == "gpt_neox":
        assert H == Hkv
        heads = torch.arange(H)[:, None] * (3 * hd)
        return {c: (fused, (heads + i * hd + torch.arange(hd)[None, :]).reshape(-1))
                for i, c in enumerate(("q", "k", "v"))}
    if fused is not None:                            # GPT-2 c_attn, Phi-3 qkv_proj: [Q | K | V]
        sizes = {"q": H * hd, "k": Hkv * hd, "v": Hkv * hd}
        out, start = {}, 0
        for c in ("q", "k", "v"):
            out[c] = (fused, start + torch.arange(sizes[c]))
            start += sizes[c]
        return out
    attn = roles["attn"]
    return {"q": (attn.q_proj, torch.arange(H * hd)), "k": (attn.k_proj, torch.arange(Hkv * hd)),
            "v": (attn.v_proj, torch.arange(Hkv * hd))}


class _EagerTap:
    """Wraps the modeling module's eager_attention_forward (the function each
    attention layer looks up at call time for attn_implementation "eager") and
    records the query/key it receives (after q/k norm and RoPE) and the
    attention weights it returns. The computation itself is transformers'."""

    def __init__(self, model: torch.nn.Module, attn: torch.nn.Module | None = None):
        import importlib

        attn = model.model.layers[0].self_attn if attn is None else attn
        self.module = importlib.import_module(type(attn).__module__)
        self.original = self.module.eager_attention_forward
        self.records: dict[int, dict[str, torch.Tensor]] = {}

    def __enter__(self):
        original, records = self.original, self.records

        def tapped(module, query, key, value, attention_mask, *args, **kwargs):
            out, weights = original(module, query, key, value, attention_mask, *args, **kwargs)
            assert module.layer_idx not in records, f"layer {module.layer_idx} attention ran twice"
            records[module.layer_idx] = {"rot_q": query.detach().clone(), "rot_k": key.detach().clone(),
                                         "pattern": weights.detach().clone()}
            return out, weights

        self.module.eager_attention_forward = tapped
        return self

    def __exit__(self, *exc):
        self.module.eager_attention_forward = self.original
        return False


def capture_hooks_arch(model: torch.nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """capture_hooks for Gemma/Gemma2/Gemma3(text)/Qwen3 (also works for
    Llama/Qwen2), batch 1, eager attention. Returns (logits (T, vocab), {hook
    name: activation}) with the names of arch_hook_names; see
    ARCH_HOOK_CONVENTIONS for what each one is. Module forward hooks wherever
    a module boundary exists; RoPE output and attention weights through the
    eager attention function (_EagerTap)."""
    config = model.config
    assert config._attn_implementation == "eager", "eager attention needed for soft-caps and patterns"
    n_heads = config.num_attention_heads
    n_kv_heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    eps = config.rms_norm_eps
    base = model.model
    sandwich = layer_modules(base.layers[0])["sandwich"]
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def store(name: str, tensor: torch.Tensor, shape: tuple[int, ...] | None = None) -> None:
        assert tensor.shape[0] == 1, "batch 1 only"
        t = tensor[0].detach().to(torch.float32).clone()
        if shape is not None:
            t = t.reshape(t.shape[0], *shape)
        assert name not in acts, f"hook {name} fired twice"
        acts[name] = t

    def first_input(args, kwargs):
        return args[0] if args else kwargs["hidden_states"]

    handles.append(base.embed_tokens.register_forward_hook(lambda m, a, o: store("hook_embed", o)))
    for li, layer in enumerate(base.layers):
        p = f"blocks.{li}."
        mods = layer_modules(layer)
        attn = mods["attn"]
        handles.append(layer.register_forward_pre_hook(
            lambda m, a, k, p=p: store(p + "hook_resid_pre", first_input(a, k)), with_kwargs=True))
        handles.append(layer.register_forward_hook(
            lambda m, a, k, o, p=p: store(p + "hook_resid_post", _first_tensor(o)), with_kwargs=True))
        handles.append(attn.q_proj.register_forward_hook(
            lambda m, a, o, p=p: store(p + "attn.hook_q", o, (n_heads, head_dim))))
        handles.append(attn.k_proj.register_forward_hook(
            lambda m, a, o, p=p: store(p + "attn.hook_k", o, (n_kv_heads, head_dim))))
        handles.append(attn.v_proj.register_forward_hook(
            lambda m, a, o, p=p: store(p + "attn.hook_v", o, (n_kv_heads, head_dim))))
        handles.append(attn.o_proj.register_forward_pre_hook(
            lambda m, a, p=p: store(p + "attn.hook_z", a[0], (n_heads, head_dim))))
        if sandwich:
            handles.append(attn.register_forward_hook(
                lambda m, a, k, o, p=p: store(p + "ln1_post.hook_in", _first_tensor(o)), with_kwargs=True))
            handles.append(mods["mlp"].register_forward_hook(
                lambda m, a, o, p=p: store(p + "ln2_post.hook_in", _first_tensor(o))))
        handles.append(mods["attn_out"].register_forward_hook(
            lambda m, a, o, p=p: store(p + "hook_attn_out", _first_tensor(o))))
        handles.append(mods["mid_norm"].register_forward_pre_hook(
            lambda m, a, k, p=p: store(p + "hook_resid_mid", first_input(a, k)), with_kwargs=True))
        handles.append(mods["mlp_out"].register_forward_hook(
            lambda m, a, o, p=p: store(p + "hook_mlp_out", _first_tensor(o))))

    def pre_final_norm(mod, args, kwargs):
        hidden = first_input(args, kwargs)
        acts["ln_final.hook_normalized"] = rms_normalized(hidden[0], eps).clone()

    handles.append(base.norm.register_forward_pre_hook(pre_final_norm, with_kwargs=True))
    try:
        with _EagerTap(model) as tap:
            out = model(input_ids=input_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    logits = out.logits[0].detach().to(torch.float32)
    n_layers = len(base.layers)
    for li, rec in tap.records.items():
        p = f"blocks.{li}."
        acts[p + "attn.hook_rot_q"] = rec["rot_q"][0].transpose(0, 1).contiguous()   # (T, H, hd)
        acts[p + "attn.hook_rot_k"] = rec["rot_k"][0].transpose(0, 1).contiguous()   # (T, Hkv, hd)
        acts[p + "attn.hook_pattern"] = rec["pattern"][0].contiguous()               # (H, T, T)

    expected = arch_hook_names(n_layers, sandwich)
    missing = [n for n in expected if n not in acts]
    assert not missing, f"hooks did not fire: {missing}"
    assert set(acts) == set(expected), set(acts) ^ set(expected)

    # Exact invariants of the residual stream (HF adds in this order).
    assert torch.equal(acts["hook_embed"], acts["blocks.0.hook_resid_pre"]), "embed != resid_pre 0"
    for li in range(n_layers):
        p = f"blocks.{li}."
        assert torch.equal(acts[p + "hook_resid_mid"], acts[p + "hook_resid_pre"] + acts[p + "hook_attn_out"]), \
            f"layer {li}: resid_mid != resid_pre + attn_out"
        assert torch.equal(acts[p + "hook_resid_post"], acts[p + "hook_resid_mid"] + acts[p + "hook_mlp_out"]), \
            f"layer {li}: resid_post != resid_mid + mlp_out"
        if li + 1 < n_layers:
            assert torch.equal(acts[p + "hook_resid_post"], acts[f"blocks.{li + 1}.hook_resid_pre"])
        layer = base.layers[li]
        if sandwich:  # the post norms really map ln*_post.hook_in to the *_out hooks
            again = layer.post_attention_layernorm(acts[p + "ln1_post.hook_in"].unsqueeze(0))[0]
            assert torch.equal(again, acts[p + "hook_attn_out"]), f"layer {li}: post-attention norm"
            again = layer.post_feedforward_layernorm(acts[p + "ln2_post.hook_in"].unsqueeze(0))[0]
            assert torch.equal(again, acts[p + "hook_mlp_out"]), f"layer {li}: post-feedforward norm"
        # the per-head z really is the pattern applied to v (GQA: kv head = head // group)
        group = n_heads // n_kv_heads
        v = acts[p + "attn.hook_v"].repeat_interleave(group, dim=1)                  # (T, H, hd)
        z = torch.einsum("hqk,khd->qhd", acts[p + "attn.hook_pattern"], v)
        assert torch.allclose(z, acts[p + "attn.hook_z"], atol=1e-5, rtol=1e-5), f"layer {li}: z != pattern @ v"
    # The captured normalized activation reproduces the logits.
    w = base.norm.weight.detach().to(torch.float32)
    if "Gemma" in type(base.norm).__name__:
        w = 1.0 + w
    relogits = model.lm_head((acts["ln_final.hook_normalized"] * w).unsqueeze(0))[0]
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is not None:
        relogits = torch.tanh(relogits / cap) * cap
    assert torch.allclose(relogits, logits, atol=1e-5, rtol=1e-5), "ln_final.hook_normalized does not reproduce logits"
    return logits, {name: acts[name] for name in expected}


# --------------------------------------------------------------------------
# GPT-2, GPT-NeoX (Pythia), Phi-3, OLMo-2 (issue 16; make_tiny_classic_models.py).
# A capture path of its own (as capture_hooks_arch is) so the earlier fixtures
# keep their exact behaviour; module roles from layer_modules.

CLASSIC_HOOK_CONVENTIONS = {
    "batch_dim": "dropped; every activation is (T, ...)",
    "hook_embed": "output of the token embedding (wte / embed_in / embed_tokens), unscaled",
    "hook_pos_embed": "GPT-2 only: output of wpe, the learned position rows 0..T-1; "
                      "blocks.0.hook_resid_pre = hook_embed + hook_pos_embed (float32 add, exact)",
    "attn.hook_q/k/v": "the projection outputs INCLUDING their biases, before q/k norm and RoPE, "
                       "(T, heads, head_dim): GPT-2 c_attn output split [Q | K | V] along its columns; "
                       "GPT-NeoX query_key_value output viewed (T, heads, 3 * head_dim) and split "
                       "[q | k | v] within each head (transformers' view + chunk); Phi-3 qkv_proj "
                       "output split [Q (heads*hd) | K (kv*hd) | V (kv*hd)]; OLMo-2 q/k/v_proj outputs",
    "attn.hook_rot_q/rot_k": "the query/key entering attention: after q/k norm (OLMo-2: RMSNorm over the "
                             "whole projection, heads*hd / kv*hd wide, before the per-head split) and "
                             "RoPE (rotate-half / NeoX pairs (i, i + rot/2) over the first rot dims; GPT-NeoX "
                             "rot = head_dim * partial_rotary_factor < head_dim, the other dims pass "
                             "through); GPT-2 has no RoPE: rot_q == q, rot_k == k exactly",
    "attn.hook_pattern": "(n_heads, T, T) [head, query, key]: softmax(q.k * head_dim^-0.5 + causal mask); "
                         "0 exactly above the diagonal",
    "attn.hook_z": "input of the output projection (c_proj / dense / o_proj), (T, n_heads, head_dim)",
    "hook_attn_out": "what attention adds to the residual: output projection INCLUDING its bias; OLMo-2: "
                     "the output of post_attention_layernorm (applied to o_proj's output)",
    "ln1_post.hook_in": "OLMo-2 only (patchbay's name, as for Gemma 2/3): o_proj output, input of "
                        "post_attention_layernorm",
    "hook_resid_mid": "resid_pre + attn_out (input of ln_2 / post_attention_layernorm (Phi-3) / the MLP "
                      "(OLMo-2)); NOT written for GPT-NeoX with use_parallel_residual (no such point, as "
                      "in TransformerLens)",
    "ln2_post.hook_in": "OLMo-2 only: the MLP's down_proj output, input of post_feedforward_layernorm",
    "hook_mlp_out": "what the MLP adds to the residual, including its output bias; OLMo-2: the output "
                    "of post_feedforward_layernorm",
    "hook_resid_post": "resid_mid + mlp_out; GPT-NeoX parallel: (mlp_out + attn_out) + resid_pre, in "
                       "that float32 order (transformers')",
    "ln_final.hook_normalized": "LayerNorm (GPT-2, GPT-NeoX): (x - mean) / sqrt(var + eps), var the biased "
                                "mean of squares of x - mean, before weight and bias; RMSNorm (Phi-3, "
                                "OLMo-2): x * rsqrt(mean(x^2) + eps), before the weight; float32",
}


def model_parts(model: torch.nn.Module) -> dict[str, Any]:
    """Embedding, optional position embedding, layers and final norm of a
    GPT-2 / GPT-NeoX / Phi-3 / OLMo-2 (or Llama-like) causal LM."""
    mt = model.config.model_type
    if mt == "gpt2":
        base = model.transformer
        return {"embed": base.wte, "pos_embed": base.wpe, "layers": base.h, "final_norm": base.ln_f,
                "final_kind": "layernorm", "eps": model.config.layer_norm_epsilon}
    if mt == "gpt_neox":
        base = model.gpt_neox
        return {"embed": base.embed_in, "pos_embed": None, "layers": base.layers,
                "final_norm": base.final_layer_norm, "final_kind": "layernorm", "eps": model.config.layer_norm_eps}
    base = model.model
    return {"embed": base.embed_tokens, "pos_embed": None, "layers": base.layers, "final_norm": base.norm,
            "final_kind": "rmsnorm", "eps": model.config.rms_norm_eps}


def layer_normalized(x: torch.Tensor, eps: float) -> torch.Tensor:
    """TransformerLens LayerNorm hook_normalized, float32: centre, then divide
    by sqrt(mean of squares + eps)."""
    x = x.to(torch.float32)
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def classic_hook_names(n_layers: int, pos_embed: bool, post_norms: bool, parallel: bool) -> list[str]:
    names = ["hook_embed"] + (["hook_pos_embed"] if pos_embed else [])
    for layer in range(n_layers):
        p = f"blocks.{layer}."
        names += [p + "hook_resid_pre", p + "attn.hook_q", p + "attn.hook_k", p + "attn.hook_v",
                  p + "attn.hook_rot_q", p + "attn.hook_rot_k", p + "attn.hook_pattern", p + "attn.hook_z"]
        if post_norms:
            names.append(p + "ln1_post.hook_in")
        names.append(p + "hook_attn_out")
        if not parallel:
            names.append(p + "hook_resid_mid")
        if post_norms:
            names.append(p + "ln2_post.hook_in")
        names += [p + "hook_mlp_out", p + "hook_resid_post"]
    names.append("ln_final.hook_normalized")
    return names


def capture_hooks_classic(model: torch.nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """capture_hooks for GPT-2 / GPT-NeoX / Phi-3 / OLMo-2, batch 1, eager
    attention: (logits (T, vocab), {hook name: activation}), names of
    classic_hook_names, meanings in CLASSIC_HOOK_CONVENTIONS. Forward hooks on
    the HF modules; RoPE'd q/k and the pattern through _EagerTap."""
    config = model.config
    assert config._attn_implementation == "eager"
    H, Hkv, hd = attention_shape(config)
    parts = model_parts(model)
    layers = parts["layers"]
    roles = [layer_modules(layer, config) for layer in layers]
    post_norms, parallel = roles[0]["post_norms"], roles[0]["parallel"]
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def store(name: str, tensor: torch.Tensor, shape: tuple[int, ...] | None = None) -> None:
        assert tensor.shape[0] == 1, "batch 1 only"
        t = tensor[0].detach().to(torch.float32).clone()
        if shape is not None:
            t = t.reshape(t.shape[0], *shape)
        assert name not in acts, f"hook {name} fired twice"
        acts[name] = t

    def first_input(args, kwargs):
        return args[0] if args else kwargs["hidden_states"]

    handles.append(parts["embed"].register_forward_hook(lambda m, a, o: store("hook_embed", o)))
    if parts["pos_embed"] is not None:
        handles.append(parts["pos_embed"].register_forward_hook(lambda m, a, o: store("hook_pos_embed", o)))
    for li, (layer, mods) in enumerate(zip(layers, roles)):
        p = f"blocks.{li}."
        handles.append(layer.register_forward_pre_hook(
            lambda m, a, k, p=p: store(p + "hook_resid_pre", first_input(a, k)), with_kwargs=True))
        handles.append(layer.register_forward_hook(
            lambda m, a, k, o, p=p: store(p + "hook_resid_post", _first_tensor(o)), with_kwargs=True))
        for comp, (module, cols) in mods["qkv"].items():
            n = H if comp == "q" else Hkv
            handles.append(module.register_forward_hook(
                lambda m, a, o, p=p, comp=comp, cols=cols, n=n: store(p + "attn.hook_" + comp, o[..., cols],
                                                                      (n, hd))))
        handles.append(mods["o_proj"].register_forward_pre_hook(
            lambda m, a, p=p: store(p + "attn.hook_z", a[0], (H, hd))))
        if post_norms:
            handles.append(mods["attn"].register_forward_hook(
                lambda m, a, k, o, p=p: store(p + "ln1_post.hook_in", _first_tensor(o)), with_kwargs=True))
            handles.append(mods["mlp"].register_forward_hook(
                lambda m, a, o, p=p: store(p + "ln2_post.hook_in", _first_tensor(o))))
        handles.append(mods["attn_out"].register_forward_hook(
            lambda m, a, o, p=p: store(p + "hook_attn_out", _first_tensor(o))))
        if mods["mid_norm"] is not None:
            handles.append(mods["mid_norm"].register_forward_pre_hook(
                lambda m, a, k, p=p: store(p + "hook_resid_mid", first_input(a, k)), with_kwargs=True))
        handles.append(mods["mlp_out"].register_forward_hook(
            lambda m, a, o, p=p: store(p + "hook_mlp_out", _first_tensor(o))))

    eps, kind = parts["eps"], parts["final_kind"]

    def pre_final_norm(mod, args, kwargs):
        hidden = first_input(args, kwargs)[0]
        acts["ln_final.hook_normalized"] = (layer_normalized(hidden, eps) if kind == "layernorm"
                                            else rms_normalized(hidden, eps)).clone()

    handles.append(parts["final_norm"].register_forward_pre_hook(pre_final_norm, with_kwargs=True))
    try:
        with _EagerTap(model, roles[0]["attn"]) as tap:
            out = model(input_ids=input_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    logits = out.logits[0].detach().to(torch.float32)
    n_layers = len(layers)
    for li, rec in tap.records.items():
        p = f"blocks.{li}."
        acts[p + "attn.hook_rot_q"] = rec["rot_q"][0].transpose(0, 1).contiguous()
        acts[p + "attn.hook_rot_k"] = rec["rot_k"][0].transpose(0, 1).contiguous()
        acts[p + "attn.hook_pattern"] = rec["pattern"][0].contiguous()

    expected = classic_hook_names(n_layers, parts["pos_embed"] is not None, post_norms, parallel)
    assert set(acts) == set(expected), set(acts) ^ set(expected)

    # exact residual-stream invariants (transformers' float32 adds)
    first = acts["hook_embed"]
    if parts["pos_embed"] is not None:
        first = first + acts["hook_pos_embed"]
    assert torch.equal(first, acts["blocks.0.hook_resid_pre"]), "embed (+ pos) != resid_pre 0"
    for li in range(n_layers):
        p = f"blocks.{li}."
        if parallel:
            assert torch.equal(acts[p + "hook_resid_post"],
                               acts[p + "hook_mlp_out"] + acts[p + "hook_attn_out"] + acts[p + "hook_resid_pre"])
        else:
            assert torch.equal(acts[p + "hook_resid_mid"], acts[p + "hook_resid_pre"] + acts[p + "hook_attn_out"])
            assert torch.equal(acts[p + "hook_resid_post"], acts[p + "hook_resid_mid"] + acts[p + "hook_mlp_out"])
        if li + 1 < n_layers:
            assert torch.equal(acts[p + "hook_resid_post"], acts[f"blocks.{li + 1}.hook_resid_pre"])
        if post_norms:
            layer = layers[li]
            again = layer.post_attention_layernorm(acts[p + "ln1_post.hook_in"].unsqueeze(0))[0]
            assert torch.equal(again, acts[p + "hook_attn_out"])
            again = layer.post_feedforward_layernorm(acts[p + "ln2_post.hook_in"].unsqueeze(0))[0]
            assert torch.equal(again, acts[p + "hook_mlp_out"])
        if config.model_type == "gpt2":
            assert torch.equal(acts[p + "attn.hook_rot_q"], acts[p + "attn.hook_q"])
            assert torch.equal(acts[p + "attn.hook_rot_k"], acts[p + "attn.hook_k"])
        v = acts[p + "attn.hook_v"].repeat_interleave(H // Hkv, dim=1)
        z = torch.einsum("hqk,khd->qhd", acts[p + "attn.hook_pattern"], v)
        assert torch.allclose(z, acts[p + "attn.hook_z"], atol=1e-5, rtol=1e-5), f"layer {li}: z != pattern @ v"
    norm = parts["final_norm"]
    y = acts["ln_final.hook_normalized"] * norm.weight.detach().to(torch.float32)
    if getattr(norm, "bias", None) is not None:
        y = y + norm.bias.detach().to(torch.float32)
    relogits = model.get_output_embeddings()(y.unsqueeze(0))[0]
    assert torch.allclose(relogits, logits, atol=1e-4, rtol=1e-5), "ln_final.hook_normalized does not reproduce logits"
    return logits, {name: acts[name] for name in expected}


# --------------------------------------------------------------------------
# an independent float64 forward over the GGUF with llama.cpp's rules


def gguf_numpy_forward(path: Path, ids: np.ndarray, last_only: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Logits (T, vocab) (last_only: (1, vocab)) in float64 from a GGUF file alone
    (quantized tensors dequantized by the gguf package), with the hyper-
    parameters llama.cpp's loader derives for these architectures (read from
    src/models/{gemma,gemma2,gemma3,qwen3}.cpp of the pinned sdist):
      embeddings x sqrt(n_embd) (gemma*); RMSNorm with the stored weight
      (Gemma's already 1 + w); NeoX RoPE over head_dim; rope.freq_base default
      10000 when absent (the gemma and gemma2 converters write none); sliding
      layers: gemma2 pattern 2, gemma3 pattern 6 (il % n < n - 1), base
      rope.freq_base_swa (gemma3; gemma2 uses freq_base), keys with
      i - j >= sliding_window masked; query scale 1/sqrt(head_dim) (the 27B
      layer counts aside, which no tiny model has); attention soft-cap before the
      mask (gemma2); GELU-tanh (gemma*) or SiLU gate; sandwich norms
      (gemma2/3); final soft-cap; output = token_embd when output.weight is absent."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()

    def field(key: str, default=None):
        f = reader.fields.get(f"{arch}.{key}")
        return default if f is None else f.contents()

    def tensor(t) -> np.ndarray:
        shape = list(reversed([int(n) for n in t.shape]))
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            return np.asarray(t.data, dtype=np.float64).reshape(shape)
        return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(shape)

    W = {t.name: tensor(t) for t in reader.tensors}
    d, n_layer = field("embedding_length"), field("block_count")
    H, Hkv, hd = field("attention.head_count"), field("attention.head_count_kv"), field("attention.key_length")
    eps = field("attention.layer_norm_rms_epsilon")
    base = field("rope.freq_base", 10000.0)
    window = field("attention.sliding_window", 0) if arch in ("gemma2", "gemma3") else 0
    pattern = {"gemma2": 2, "gemma3": 6}.get(arch)
    base_swa = field("rope.freq_base_swa", 10000.0) if arch == "gemma3" else base
    attn_cap = field("attn_logit_softcapping") if arch == "gemma2" else None
    final_cap = field("final_logit_softcapping")
    gemma = arch.startswith("gemma")
    sandwich = arch in ("gemma2", "gemma3")
    used = {"arch": arch, "rope_freq_base": base, "rope_freq_base_swa": base_swa if window else None,
            "sliding_window": window or None, "swa_pattern": pattern if window else None,
            "attention_scale": 1.0 / math.sqrt(hd), "attn_softcap": attn_cap, "final_softcap": final_cap,
            "embed_scale": math.sqrt(d) if gemma else 1.0}

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    def rope(x, theta):  # (T, heads, hd), NeoX halves
        T = x.shape[0]
        inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
        ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., :hd // 2], x[..., hd // 2:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)

    def act(g):
        if gemma:
            return 0.5 * g * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g ** 3)))
        return g / (1.0 + np.exp(-g))

    T = len(ids)
    x = W["token_embd.weight"][ids] * (float(np.float32(math.sqrt(d))) if gemma else 1.0)
    qi, ki = np.arange(T)[:, None], np.arange(T)[None, :]
    for il in range(n_layer):
        g = f"blk.{il}."
        swa = bool(window) and il % pattern < pattern - 1
        h = rms(x, W[g + "attn_norm.weight"])
        q = (h @ W[g + "attn_q.weight"].T).reshape(T, H, hd)
        k = (h @ W[g + "attn_k.weight"].T).reshape(T, Hkv, hd)
        v = (h @ W[g + "attn_v.weight"].T).reshape(T, Hkv, hd)
        if g + "attn_q_norm.weight" in W:
            q, k = rms(q, W[g + "attn_q_norm.weight"]), rms(k, W[g + "attn_k_norm.weight"])
        theta = base_swa if swa else base
        q, k = rope(q, theta), rope(k, theta)
        allowed = (ki <= qi) & ((qi - ki < window) if swa else True)
        z = np.empty((T, H, hd))
        for head in range(H):
            kv = head // (H // Hkv)
            sc = q[:, head] @ k[:, kv].T / math.sqrt(hd)
            if attn_cap:
                sc = attn_cap * np.tanh(sc / attn_cap)
            sc = np.where(allowed, sc, -np.inf)
            p = np.exp(sc - sc.max(-1, keepdims=True))
            z[:, head] = (p / p.sum(-1, keepdims=True)) @ v[:, kv]
        a = z.reshape(T, H * hd) @ W[g + "attn_output.weight"].T
        if sandwich:
            a = rms(a, W[g + "post_attention_norm.weight"])
        x = x + a
        h = rms(x, W[g + "ffn_norm.weight"])
        m = (act(h @ W[g + "ffn_gate.weight"].T) * (h @ W[g + "ffn_up.weight"].T)) @ W[g + "ffn_down.weight"].T
        if sandwich:
            m = rms(m, W[g + "post_ffw_norm.weight"])
        x = x + m
    if last_only:
        x = x[-1:]
    out = rms(x, W["output_norm.weight"]) @ W.get("output.weight", W["token_embd.weight"]).T
    if final_cap:
        out = final_cap * np.tanh(out / final_cap)
    return out, used

