"""Metric gradients at every hook point, by PyTorch autograd on transformers'
own forward: the reference for patchbay's activation backward pass
(host/attribution/grad.c, tests/test_grad.c; issue 18).

For each tiny model of tests/fixtures (one per family feature: GQA and
llama3 RoPE, qkv biases, Qwen3 q/k norms, Gemma 1/2/3 with sandwich norms,
soft-caps and sliding windows, GPT-2 LayerNorm and learned positions,
GPT-NeoX parallel blocks and partial rotary, Phi-3 fused projections,
OLMo-2 post norms and whole-projection q/k norms) it runs the model's ids
(tests/fixtures/<model>/ids.npy) through transformers in float32 with eager
attention, computes one metric at one position (docs/patching.md: the kinds
vary over the models so that each metric's derivative is covered; two
more cases project the residual stream on a seeded unit direction, kept in
reference.json, at a middle slot and at the last layer's output) and
backpropagates. Every hook point's tensor is taken where the engine's hook
sees it (forward hooks on the HF modules, via refgen_common.layer_modules)
and kept with retain_grad, so its .grad is the metric's total derivative
with respect to that activation, every later use included:

  blocks.L.hook_resid_pre    the decoder layer's input
  blocks.L.attn.hook_q/k/v   the projections' outputs (columns of a fused one)
  blocks.L.attn.hook_z       o_proj's input
  blocks.L.hook_attn_out     what the attention adds to the residual
  blocks.L.hook_resid_mid    the residual between the sublayers (not with
                             parallel blocks)
  blocks.L.hook_mlp_out      what the MLP adds to the residual
  blocks.L.hook_resid_post   the decoder layer's output

Written to tests/fixtures/grad/<model>/: reference.json (the manifest, the
metric, the metric's value) and one <hook>.npy per hook point, float32,
shaped as the engine's captures ((T, d_model) or (T, heads, head_dim)).
Needs torch, transformers and numpy; CI reads the committed files only.

  python scripts/make_grad_reference.py [--models tiny_gqa,...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refgen_common import attention_shape, layer_modules, model_parts  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "grad"
GENERATOR = "scripts/make_grad_reference.py"

# model -> metric at the last position (token ids < every tiny vocabulary)
MODELS = {
    "tiny_gqa": {"kind": "logit_diff", "positive": [5, 17], "negative": [9]},
    "tiny_bias": {"kind": "logprob", "positive": [3, 40, 77]},
    "tiny_qwen3": {"kind": "refusal_score", "positive": [12, 30]},
    "tiny_gemma": {"kind": "logit_diff", "positive": [7], "negative": [11, 2]},
    "tiny_gemma2": {"kind": "logprob", "positive": [21]},
    "tiny_gemma3": {"kind": "kl"},
    "tiny_gpt2": {"kind": "logit_diff", "positive": [4], "negative": [8]},
    "tiny_gpt_neox": {"kind": "refusal_score", "positive": [6, 60]},
    "tiny_phi3": {"kind": "kl"},
    "tiny_olmo2": {"kind": "logit_diff", "positive": [13], "negative": [31]},
    # projection on the residual stream (a seeded unit direction): the layers
    # above the slot it reads get no gradient; "model" names the tiny model
    "tiny_bias_projection": {"model": "tiny_bias", "kind": "projection", "layer": 1, "hook": "resid_pre"},
    "tiny_gemma2_projection": {"model": "tiny_gemma2", "kind": "projection", "layer": 1, "hook": "resid_post"},
}


def metric_value(kind: str, spec: dict, logits: torch.Tensor, ref_logprobs: torch.Tensor | None) -> torch.Tensor:
    """The metric of one position's logits (V,), float32 autograd (docs/patching.md)."""
    if kind == "logit_diff":
        return logits[spec["positive"]].mean() - logits[spec["negative"]].mean()
    lsm = torch.log_softmax(logits, dim=-1)
    if kind == "logprob":
        return torch.logsumexp(lsm[spec["positive"]], dim=0)
    if kind == "refusal_score":
        mask = torch.zeros_like(logits, dtype=torch.bool)
        mask[spec["positive"]] = True
        return torch.logsumexp(logits[mask], dim=0) - torch.logsumexp(logits[~mask], dim=0)
    if kind == "kl":
        p = ref_logprobs.exp()
        return (p * (ref_logprobs - lsm)).sum()
    raise ValueError(kind)


def first_tensor(x):
    return x[0] if isinstance(x, tuple) else x


class Taps:
    """Forward hooks that keep each hook point's tensor, with retain_grad."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.handles, self.tensors = model, [], {}
        self.config = model.config
        self.parts = model_parts(model)
        for i, layer in enumerate(self.parts["layers"]):
            self._layer(i, layer, layer_modules(layer, self.config))

    def keep(self, name: str, t: torch.Tensor) -> None:
        t.retain_grad()
        self.tensors[name] = t

    def _pre(self, module, name):
        def hook(mod, args, kwargs):
            t = args[0] if args else kwargs["hidden_states"]
            self.keep(name, t)
        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def _post(self, module, name):
        def hook(mod, args, output):
            self.keep(name, first_tensor(output))
        self.handles.append(module.register_forward_hook(hook))

    def _layer(self, i: int, layer, roles) -> None:
        p = f"blocks.{i}."
        self._pre(layer, p + "hook_resid_pre")
        self._post(layer, p + "hook_resid_post")
        self._post(roles["attn_out"], p + "hook_attn_out")
        self._post(roles["mlp_out"], p + "hook_mlp_out")
        if roles["mid_norm"] is not None:
            self._pre(roles["mid_norm"], p + "hook_resid_mid")
        self._pre(roles["o_proj"], p + "attn.hook_z")
        modules = {}
        for c, (module, cols) in roles["qkv"].items():
            modules.setdefault(module, []).append((c, cols))
        for module, parts in modules.items():
            self._post(module, p + "attn.qkv_out." + "_".join(c for c, _ in parts))
        self.qkv = getattr(self, "qkv", {})
        self.qkv[i] = roles["qkv"]

    def grads(self) -> dict[str, np.ndarray]:
        H, Hkv, hd = attention_shape(self.config)
        out = {}
        for name, t in self.tensors.items():
            if ".qkv_out." in name:
                continue
            g = t.grad if t.grad is not None else torch.zeros_like(t)  # not on the metric's path
            g = g[0] if g.dim() == 3 else g
            if name.endswith("hook_z"):
                g = g.reshape(g.shape[0], H, hd)
            out[name] = g.detach().to(torch.float32).numpy()
        for i, cols in self.qkv.items():
            for c, (module, index) in cols.items():
                key = next(k for k in self.tensors if k.startswith(f"blocks.{i}.attn.qkv_out.") and
                           c in k.rsplit(".", 1)[1].split("_"))
                g = self.tensors[key].grad
                g = g if g is not None else torch.zeros_like(self.tensors[key])
                g = (g[0] if g.dim() == 3 else g)[:, index]
                heads = H if c == "q" else Hkv
                out[f"blocks.{i}.attn.hook_{c}"] = g.reshape(g.shape[0], heads, hd).detach().numpy()
        return out

    def close(self):
        for h in self.handles:
            h.remove()


def residual_tap(model: torch.nn.Module, metric: dict, kept: dict) -> object:
    """A hook keeping the residual stream the projection metric reads."""
    layer = model_parts(model)["layers"][metric["layer"]]
    if metric["hook"] == "resid_pre":
        def pre(mod, args, kwargs):
            kept["x"] = args[0] if args else kwargs["hidden_states"]
        return layer.register_forward_pre_hook(pre, with_kwargs=True)
    return layer.register_forward_hook(lambda mod, args, output: kept.__setitem__("x", first_tensor(output)))


def reference(name: str, metric: dict) -> None:
    from transformers import AutoModelForCausalLM

    folder = FIXTURES / metric.get("model", name)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    ids = torch.tensor(np.load(folder / "ids.npy").astype(np.int64)).reshape(1, -1)
    T = ids.shape[1]
    pos = T - 1
    ref_ids = None
    ref_logprobs = None
    if metric["kind"] == "kl":
        # the reference distribution: the model's own at the last position of
        # the ids reversed (a different prompt of the same length)
        ref_ids = ids.flip(1)
        with torch.no_grad():
            ref_logprobs = torch.log_softmax(model(input_ids=ref_ids).logits[0, pos].float(), dim=-1)
    taps = Taps(model)
    kept, tap = {}, None
    if metric["kind"] == "projection":
        gen = torch.Generator().manual_seed(0)
        u = torch.randn(model.config.hidden_size, generator=gen)
        metric = dict(metric, direction=(u / u.norm()).tolist())
        tap = residual_tap(model, metric, kept)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits[0]
    if tap is not None:
        value = kept["x"][0, pos] @ torch.tensor(metric["direction"], dtype=torch.float32)
        tap.remove()
    else:
        value = metric_value(metric["kind"], metric, logits[pos], ref_logprobs)
    value.backward()
    grads = taps.grads()
    taps.close()
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    for hook, g in grads.items():
        np.save(out / f"{hook}.npy", g.astype(np.float32))
    record = {
        "magic": "patchbay-fixture",
        "version": 1,
        "generator": GENERATOR,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "model": metric.get("model", name),
        "ids": ids[0].tolist(),
        "position": pos,
        "metric": {k: v for k, v in metric.items() if k != "model"},
        "ref_ids": ref_ids[0].tolist() if ref_ids is not None else None,
        "value": float(value.detach()),
        "hooks": sorted(grads),
    }
    (out / "reference.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{name}: {metric['kind']} = {record['value']:.6f}, {len(grads)} hook points")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_grad_enabled(True)
    for name in args.models.split(","):
        reference(name, MODELS[name])


if __name__ == "__main__":
    main()
