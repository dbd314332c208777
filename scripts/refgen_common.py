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
