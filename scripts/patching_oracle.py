"""Naive activation-patching oracle: transformers + PyTorch forward hooks, one
full forward pass per (pair, site). Written from docs/patching.md only; it
shares nothing with the C engine's plan (no caching, no skipping, no batching).

What this owns:

  * noise corruption: a bit-exact Python port of host/patching/noise.c (xoshiro256**
    seeded with splitmix64, Box-Muller cosine branch in double, rounded to
    float32 after multiplying by scale*sigma; sigma = population standard
    deviation of the embedding matrix, two-pass, sequential double sums);
  * capture of the nine patchable activations of a run (hooks on HF modules);
  * patched runs: every later computation uses the replaced value;
  * the metrics (float64 from the model's float32 logits / residuals);
  * sweep expansion of a spec (the JSON format the C engine reads) into rows.

Hook points on a HF Llama/Qwen2 decoder layer (batch 1):

  resid_pre   input of the decoder layer                (T, d_model)
  attn_out    output of self_attn (after o_proj)        (T, d_model)
  resid_mid   input of post_attention_layernorm         (T, d_model)
  mlp_out     output of mlp                             (T, d_model)
  resid_post  output of the decoder layer               (T, d_model)
  q           q_proj output (after bias, before RoPE)   (T, n_heads, head_dim)
  k, v        k_proj / v_proj output (before RoPE)      (T, n_kv_heads, head_dim)
  z           input of o_proj                           (T, n_heads, head_dim)

Other architectures (Gemma 1/2/3, Qwen3): the same hooks through
refgen_common.layer_modules, which names each role's module. For sandwich-norm
layers (Gemma 2/3) attn_out is the OUTPUT of post_attention_layernorm (what is
added to the residual), mlp_out the output of post_feedforward_layernorm, and
resid_mid the input of pre_feedforward_layernorm; for Llama/Qwen2/Gemma 1/Qwen3
they are the modules above. Gemma multiplies the token embedding by
sqrt(d_model) inside embed_tokens; the oracle feeds inputs_embeds, so it applies
the same float32 multiplication itself (Oracle.embeds). Noise corruption is
only defined here for unscaled embeddings (Llama/Qwen) and refused otherwise.

Issue-16 families (GPT-2, GPT-NeoX, Phi-3, OLMo-2), also through
layer_modules: q/k/v are column ranges of a fused projection output where
the model fuses them (GPT-2 c_attn and Phi-3 qkv_proj: [Q | K | V]; GPT-NeoX
query_key_value: per head [q_h | k_h | v_h]) -- captured and replaced there,
so the bias is included and nothing else of the fused output changes; z is
the input of c_proj / dense / o_proj; attn_out / mlp_out the attention / MLP
module outputs (OLMo-2: the outputs of its post norms, resid_mid the MLP's
input). GPT-NeoX with use_parallel_residual has no resid_mid (the oracle
refuses it; resid_post = (mlp_out + attn_out) + resid_pre). GPT-2's learned
position rows are added by the model to the inputs_embeds the oracle feeds.

Patching resid_mid: HF keeps the residual after attention in a local variable
that feeds both post_attention_layernorm and the final add, so there is no
single module boundary. The oracle (1) replaces the input of
post_attention_layernorm at the patched positions, (2) records the mlp output
(computed from that replaced input), and (3) rewrites the decoder layer's
output at the patched positions as source_mid + mlp_out -- the same float32
add the layer does, so the result is exactly the layer's output had its
residual been the source value (the MLP and norm are per-position, so other
positions are untouched).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refgen_common import attention_shape, layer_modules, model_parts  # noqa: E402

COMPONENTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "q", "k", "v")
HEAD_COMPONENTS = ("z", "q", "k", "v")
MODES = ("denoising", "noising", "interchange")
METRICS = ("logit_diff", "logprob", "refusal_score", "kl", "projection")

# --------------------------------------------------------------------------
# noise (host/patching/noise.c, bit for bit)

_M64 = (1 << 64) - 1


def _splitmix64(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & _M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return state, z ^ (z >> 31)


def _rotl(x: int, k: int) -> int:
    return ((x << k) | (x >> (64 - k))) & _M64


class Xoshiro256ss:
    def __init__(self, seed: int):
        state = seed & _M64
        self.s = []
        for _ in range(4):
            state, out = _splitmix64(state)
            self.s.append(out)

    def next(self) -> int:
        s = self.s
        result = (_rotl((s[1] * 5) & _M64, 7) * 9) & _M64
        t = (s[1] << 17) & _M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = _rotl(s[3], 45)
        return result

    def uniform(self) -> float:
        return float(self.next() >> 11) * 2.0 ** -53


def noise_sigma(embedding: np.ndarray) -> float:
    """pb_noise_sigma: population std, two passes, sequential double sums
    (np.cumsum accumulates left to right, as the C loop does)."""
    x = np.asarray(embedding, dtype=np.float32).reshape(-1).astype(np.float64)
    if x.size == 0:
        return 0.0
    mean = float(np.cumsum(x)[-1]) / float(x.size)
    dev = x - mean
    var = float(np.cumsum(dev * dev)[-1])
    return math.sqrt(var / float(x.size))


def standard_normals(n: int, seed: int) -> list[float]:
    """The double-precision N(0,1) samples pb_noise_fill scales."""
    rng = Xoshiro256ss(seed)
    two_pi = 6.283185307179586476925286766559
    out = []
    for _ in range(n):
        u1 = rng.uniform()
        u2 = rng.uniform()
        out.append(math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(two_pi * u2))
    return out


def noise_fill(n_positions: int, d: int, scale: float, sigma: float, seed: int) -> np.ndarray:
    """pb_noise_fill: (n_positions, d) float32 = float(scale * sigma * z)."""
    z = standard_normals(n_positions * d, seed)
    vals = [np.float32(scale * sigma * zi) for zi in z]  # (scale*sigma)*z, then round to float
    return np.array(vals, dtype=np.float32).reshape(n_positions, d)


# --------------------------------------------------------------------------
# runs


@dataclass
class RunInput:
    """One run: token ids, optionally with noise added to the embeddings."""
    ids: list[int]
    noise: dict[str, Any] | None = None  # {"scale", "positions", "seed"} (positions may be negative)

    @property
    def T(self) -> int:
        return len(self.ids)

    def noise_positions(self) -> list[int]:
        assert self.noise is not None
        out = []
        for p in self.noise["positions"]:
            q = p + self.T if p < 0 else p
            assert 0 <= q < self.T, f"noise position {p} outside T={self.T}"
            out.append(q)
        return out


@dataclass
class Patch:
    component: str
    layer: int
    head: int | None
    positions: list[int]          # base positions
    values: torch.Tensor          # (len(positions), dim) float32, the source activations


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise TypeError(f"no tensor in {type(value)!r}")


def _replace_first(value: Any, new: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return new
    return (new, *value[1:]) if isinstance(value, tuple) else [new, *value[1:]]


class Oracle:
    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()
        cfg = model.config
        self.n_layers = cfg.num_hidden_layers
        self.n_heads, self.n_kv, self.head_dim = attention_shape(cfg)
        self.d_model = cfg.hidden_size
        self.vocab = cfg.vocab_size
        self.layers = model_parts(model)["layers"]
        embed = model.get_input_embeddings()
        emb = embed.weight.detach().to(torch.float32)
        self.embedding = emb
        # Gemma's scaled embedding (a float32 0-d buffer); None for plain nn.Embedding
        scale = getattr(embed, "embed_scale", None)
        self.embed_scale = None if scale is None else scale.detach().to(torch.float32)
        self.modules = [layer_modules(layer, cfg) for layer in self.layers]
        # GPT-NeoX parallel blocks: no resid_mid (resid_post = mlp_out + attn_out + resid_pre)
        self.parallel = self.modules[0]["parallel"]
        self.components = tuple(c for c in COMPONENTS if not (self.parallel and c == "resid_mid"))
        self.sigma = noise_sigma(emb.numpy())
        self.forwards = 0
        assert model.config._attn_implementation == "eager"

    # -- noise -------------------------------------------------------------

    def embeds(self, run: RunInput) -> torch.Tensor:
        """(1, T, d) float32 token embeddings, noise added at the listed positions."""
        x = self.embedding[torch.tensor(run.ids, dtype=torch.long)].clone()
        if self.embed_scale is not None:
            x = x * self.embed_scale  # as Gemma's embed_tokens does, in float32
        if run.noise is not None:
            if self.embed_scale is not None:
                raise NotImplementedError("noise corruption of scaled (Gemma) embeddings is not defined")
            pos = run.noise_positions()
            noise = noise_fill(len(pos), self.d_model, float(run.noise["scale"]), self.sigma,
                               int(run.noise["seed"]))
            for i, p in enumerate(pos):
                x[p] = x[p] + torch.from_numpy(noise[i])
        return x.unsqueeze(0)

    # -- one forward ------------------------------------------------------

    def n_heads_of(self, component: str) -> int:
        return self.n_heads if component in ("z", "q") else self.n_kv

    def forward(self, run: RunInput, patches: Sequence[Patch] = (), capture: bool = False,
                resid_capture: tuple[int, str] | None = None) -> dict[str, Any]:
        """One full forward pass. Returns {"logits": (T, vocab) float32,
        "acts": {(component, layer): tensor} if capture, "resid": (T, d) if
        resid_capture=(layer, "resid_pre"|"resid_post")}. Patch hooks are
        registered before capture hooks, so captures see patched values."""
        handles = []
        acts: dict[tuple[str, int], torch.Tensor] = {}
        resid: dict[str, torch.Tensor] = {}
        H, Hkv, hd = self.n_heads, self.n_kv, self.head_dim

        def per_head(component: str, t: torch.Tensor) -> torch.Tensor:
            n = H if component in ("z", "q") else Hkv
            return t.reshape(t.shape[0], n, hd)

        by_layer: dict[int, list[Patch]] = {}
        for p in patches:
            assert p.component in COMPONENTS
            assert len(p.positions) == p.values.shape[0]
            by_layer.setdefault(p.layer, []).append(p)

        def apply(t: torch.Tensor, plist: list[Patch], cols: torch.Tensor | None = None) -> torch.Tensor:
            """t: (1, T, width) float32; returns a patched copy. cols: the
            columns of t holding the component (fused q/k/v projections),
            head-major; None = all columns in order."""
            t = t.clone()
            for p in plist:
                pos = torch.tensor(p.positions, dtype=torch.long)
                if p.head is None and cols is None:
                    t[0, pos, :] = p.values.to(t.dtype)
                elif cols is None:
                    t[0, pos, p.head * hd:(p.head + 1) * hd] = p.values.to(t.dtype)
                else:
                    c = cols if p.head is None else cols[p.head * hd:(p.head + 1) * hd]
                    t[0, pos[:, None], c[None, :]] = p.values.to(t.dtype)
            return t

        # ---- patch hooks
        for layer_index, plist in by_layer.items():
            layer = self.layers[layer_index]
            mods = self.modules[layer_index]
            attn = mods["attn"]
            kinds = {c: [p for p in plist if p.component == c] for c in COMPONENTS}

            if kinds["resid_pre"]:
                def pre(mod, args, kwargs, pl=kinds["resid_pre"]):
                    if args:
                        return (apply(args[0], pl), *args[1:]), kwargs
                    kwargs = dict(kwargs)
                    kwargs["hidden_states"] = apply(kwargs["hidden_states"], pl)
                    return args, kwargs
                handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
            for comp in ("q", "k", "v"):
                if kinds[comp]:
                    proj, cols = mods["qkv"][comp]
                    separate = mods["fused"] is None     # q/k/v_proj: every column, in order
                    handles.append(proj.register_forward_hook(
                        lambda mod, args, out, pl=kinds[comp], cols=None if separate else cols: apply(out, pl, cols)))
            if kinds["z"]:
                handles.append(mods["o_proj"].register_forward_pre_hook(
                    lambda mod, args, pl=kinds["z"]: (apply(args[0], pl), *args[1:])))
            if kinds["attn_out"]:
                handles.append(mods["attn_out"].register_forward_hook(
                    lambda mod, args, out, pl=kinds["attn_out"]: _replace_first(out, apply(_first_tensor(out), pl))))
            # mlp_out before resid_mid: see_mlp must record the patched mlp output
            if kinds["mlp_out"]:
                handles.append(mods["mlp_out"].register_forward_hook(
                    lambda mod, args, out, pl=kinds["mlp_out"]: _replace_first(out, apply(_first_tensor(out), pl))))
            if kinds["resid_mid"]:
                assert mods["mid_norm"] is not None, "resid_mid does not exist in a parallel block"
                mid_pl = kinds["resid_mid"]
                mlp_seen: dict[str, torch.Tensor] = {}

                def pre_norm(mod, args, kwargs, pl=mid_pl):
                    if args:
                        return (apply(args[0], pl), *args[1:]), kwargs
                    kwargs = dict(kwargs)
                    kwargs["hidden_states"] = apply(kwargs["hidden_states"], pl)
                    return args, kwargs

                def see_mlp(mod, args, out, seen=mlp_seen):
                    seen["out"] = _first_tensor(out)

                def fix_layer_out(mod, args, kwargs, out, pl=mid_pl, seen=mlp_seen):
                    t = _first_tensor(out).clone()
                    m = seen["out"]
                    for p in pl:
                        pos = torch.tensor(p.positions, dtype=torch.long)
                        t[0, pos, :] = p.values.to(t.dtype) + m[0, pos, :]
                    return _replace_first(out, t)

                handles.append(mods["mid_norm"].register_forward_pre_hook(pre_norm, with_kwargs=True))
                handles.append(mods["mlp_out"].register_forward_hook(see_mlp))
                # registered before any mlp_out / resid_post patch of this layer
                handles.append(layer.register_forward_hook(fix_layer_out, with_kwargs=True))
            if kinds["resid_post"]:
                handles.append(layer.register_forward_hook(
                    lambda mod, args, out, pl=kinds["resid_post"]: _replace_first(out, apply(_first_tensor(out), pl))))

        # ---- capture hooks (after the patch hooks: they see patched values)
        def store(key: tuple[str, int], t: torch.Tensor) -> None:
            assert t.shape[0] == 1
            v = t[0].detach().to(torch.float32).clone()
            if key[0] in HEAD_COMPONENTS:
                v = per_head(key[0], v)
            assert key not in acts, f"{key} captured twice"
            acts[key] = v

        if capture:
            for li, layer in enumerate(self.layers):
                mods = self.modules[li]

                def c_pre(mod, args, kwargs, li=li):
                    store(("resid_pre", li), args[0] if args else kwargs["hidden_states"])

                def c_mid(mod, args, kwargs, li=li):
                    store(("resid_mid", li), args[0] if args else kwargs["hidden_states"])

                handles.append(layer.register_forward_pre_hook(c_pre, with_kwargs=True))
                for comp in ("q", "k", "v"):
                    proj, cols = mods["qkv"][comp]
                    if mods["fused"] is None:
                        handles.append(proj.register_forward_hook(
                            lambda m, a, o, li=li, comp=comp: store((comp, li), o)))
                    else:
                        handles.append(proj.register_forward_hook(
                            lambda m, a, o, li=li, comp=comp, cols=cols: store((comp, li), o[..., cols])))
                handles.append(mods["o_proj"].register_forward_pre_hook(lambda m, a, li=li: store(("z", li), a[0])))
                handles.append(mods["attn_out"].register_forward_hook(
                    lambda m, a, o, li=li: store(("attn_out", li), _first_tensor(o))))
                if mods["mid_norm"] is not None:
                    handles.append(mods["mid_norm"].register_forward_pre_hook(c_mid, with_kwargs=True))
                handles.append(mods["mlp_out"].register_forward_hook(
                    lambda m, a, o, li=li: store(("mlp_out", li), _first_tensor(o))))
                handles.append(layer.register_forward_hook(
                    lambda m, a, o, li=li: store(("resid_post", li), _first_tensor(o))))
        if resid_capture is not None:
            r_layer, r_hook = resid_capture
            assert r_hook in ("resid_pre", "resid_post")
            # The residual stream between layers L and L+1 is one value:
            # resid_post L and resid_pre L+1 name the same slot (docs/patching.md:
            # "Replacing resid_post of layer L is the same as replacing resid_pre
            # of layer L+1"), so a projection at resid_post L is read where layer
            # L+1 receives it, after a patch of either name.
            if r_hook == "resid_post" and r_layer + 1 < self.n_layers:
                r_layer, r_hook = r_layer + 1, "resid_pre"
            layer = self.layers[r_layer]
            if r_hook == "resid_pre":
                def r_pre(mod, args, kwargs):
                    resid["x"] = (args[0] if args else kwargs["hidden_states"])[0].detach().clone()
                handles.append(layer.register_forward_pre_hook(r_pre, with_kwargs=True))
            else:
                assert r_hook == "resid_post"
                handles.append(layer.register_forward_hook(
                    lambda m, a, o: resid.__setitem__("x", _first_tensor(o)[0].detach().clone())))

        try:
            out = self.model(inputs_embeds=self.embeds(run), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        self.forwards += 1
        result: dict[str, Any] = {"logits": out.logits[0].detach().to(torch.float32)}
        if capture:
            assert len(acts) == len(self.components) * self.n_layers
            # exact residual-stream invariants of the captured run
            for li in range(self.n_layers):
                if self.parallel:   # transformers' order: (mlp_out + attn_out) + resid_pre
                    assert torch.equal(acts[("resid_post", li)], acts[("mlp_out", li)] + acts[("attn_out", li)]
                                       + acts[("resid_pre", li)])
                    continue
                assert torch.equal(acts[("resid_mid", li)], acts[("resid_pre", li)] + acts[("attn_out", li)])
                assert torch.equal(acts[("resid_post", li)], acts[("resid_mid", li)] + acts[("mlp_out", li)])
                if li + 1 < self.n_layers:
                    assert torch.equal(acts[("resid_post", li)], acts[("resid_pre", li + 1)])
            result["acts"] = acts
        if resid_capture is not None:
            result["resid"] = resid["x"].to(torch.float32)
        return result


# --------------------------------------------------------------------------
# metrics


class Metric:
    def __init__(self, spec: dict[str, Any], oracle: Oracle, spec_dir=None):
        self.spec = spec
        self.kind = spec["kind"]
        assert self.kind in METRICS, self.kind
        self.position = int(spec.get("position", -1))
        self.oracle = oracle
        if self.kind == "logit_diff":
            self.pos_ids = [int(i) for i in spec["positive"]["ids"]]
            self.neg_ids = [int(i) for i in spec["negative"]["ids"]]
        elif self.kind in ("logprob", "refusal_score"):
            self.tokens = sorted(set(int(i) for i in spec["tokens"]["ids"]))
        elif self.kind == "projection":
            from pathlib import Path
            direction = np.load(Path(spec_dir) / spec["direction"], allow_pickle=False)
            assert direction.dtype == np.float32
            self.layer = int(spec["layer"])
            self.hook = spec.get("hook", "resid_pre")
            if direction.ndim == 2:
                direction = direction[self.layer]
            u = direction.astype(np.float64)
            self.u = torch.from_numpy(u / np.linalg.norm(u))

    def resolve_position(self, T: int) -> int:
        p = self.position + T if self.position < 0 else self.position
        assert 0 <= p < T, f"metric position {self.position} outside T={T}"
        return p

    def resid_capture(self):
        return (self.layer, self.hook) if self.kind == "projection" else None

    def value(self, out: dict[str, Any], T: int, ref_logprobs: torch.Tensor | None = None) -> float:
        """ref_logprobs: float64 log-softmax of the clean (interchange: source)
        run at its metric position, for kl."""
        p = self.resolve_position(T)
        if self.kind == "projection":
            return float(out["resid"][p].to(torch.float64) @ self.u)
        logits = out["logits"][p].to(torch.float64)
        if self.kind == "logit_diff":
            return float(logits[self.pos_ids].mean() - logits[self.neg_ids].mean())
        if self.kind == "logprob":
            return float(torch.logsumexp(logits[self.tokens], 0) - torch.logsumexp(logits, 0))
        if self.kind == "refusal_score":
            mask = torch.zeros(logits.shape[0], dtype=torch.bool)
            mask[self.tokens] = True
            return float(torch.logsumexp(logits[mask], 0) - torch.logsumexp(logits[~mask], 0))
        assert self.kind == "kl" and ref_logprobs is not None
        lp = torch.log_softmax(logits, 0)
        return float((ref_logprobs.exp() * (ref_logprobs - lp)).sum())

    def logprobs(self, out: dict[str, Any], T: int) -> torch.Tensor:
        return torch.log_softmax(out["logits"][self.resolve_position(T)].to(torch.float64), 0)


# --------------------------------------------------------------------------
# spec -> pairs, sites


@dataclass
class Pair:
    base: RunInput
    source: RunInput
    clean_is_source: bool
    position_map: dict[int, int]   # base position -> source position


def _prompt(obj: dict[str, Any], clean_ids: list[int] | None) -> RunInput:
    if "noise" in obj:
        assert clean_ids is not None, "noise is only a corruption of the clean prompt"
        return RunInput(list(clean_ids), dict(obj["noise"]))
    return RunInput([int(i) for i in obj["ids"]])


def parse_pairs(spec: dict[str, Any]) -> list[Pair]:
    mode = spec["mode"]
    assert mode in MODES
    pairs = []
    for index, pj in enumerate(spec["pairs"]):
        if mode == "interchange":
            base = _prompt(pj["base"], None)
            source = _prompt(pj["source"], None)
            pm = pj["position_map"]
            if pm == "last":
                pmap = {base.T - 1: source.T - 1}
            elif isinstance(pm, str) and pm.startswith("last-"):
                k = int(pm[len("last-"):])
                assert 1 <= k <= min(base.T, source.T)
                pmap = {base.T - k + i: source.T - k + i for i in range(k)}
            else:
                pmap = {}
                for b, s in pm:
                    b = b + base.T if b < 0 else b
                    s = s + source.T if s < 0 else s
                    assert 0 <= b < base.T and 0 <= s < source.T and b not in pmap
                    pmap[b] = s
            pairs.append(Pair(base, source, True, pmap))
            continue
        clean = _prompt(pj["clean"], None)
        corrupted = _prompt(pj["corrupted"], clean.ids)
        assert clean.T == corrupted.T, f"pair {index}: lengths {clean.T} and {corrupted.T}"
        ident = {p: p for p in range(clean.T)}
        if mode == "denoising":
            pairs.append(Pair(corrupted, clean, True, ident))
        else:
            pairs.append(Pair(clean, corrupted, False, ident))
    return pairs


@dataclass
class Site:
    component: str
    layer: int
    head: int | None
    spec_position: int | None
    positions: list[list[int]]    # per pair, resolved base positions


def expand_sites(spec: dict[str, Any], pairs: list[Pair], oracle: Oracle) -> list[Site]:
    mode = spec["mode"]
    Ts = [p.base.T for p in pairs]
    equal = len(set(Ts)) == 1
    T_min = min(Ts)

    def resolve(pair: Pair, p: int) -> int:
        q = p + pair.base.T if p < 0 else p
        assert 0 <= q < pair.base.T, f"position {p} outside base T={pair.base.T}"
        assert q in pair.position_map, f"position {p} outside the position map"
        return q

    sites: list[Site] = []
    for entry in spec["sites"]:
        comp = entry["component"]
        assert comp in COMPONENTS, comp
        assert comp in oracle.components, f"{comp} does not exist in this model (parallel block)"
        layers = list(range(oracle.n_layers)) if entry.get("layers", "all") == "all" else list(entry["layers"])
        if comp in HEAD_COMPONENTS:
            nh = oracle.n_heads_of(comp)
            heads: list[int | None] = list(range(nh)) if entry.get("heads", "all") == "all" else list(entry["heads"])
        else:
            assert "heads" not in entry or entry["heads"] is None
            heads = [None]
        P = entry["positions"]
        # (spec_position, per-pair positions) for each position site
        psites: list[tuple[int | None, list[list[int]]]] = []
        if P == "all":
            psites.append((None, [sorted(pair.position_map) for pair in pairs]))
        elif P == "each":
            if equal:
                cands = list(range(Ts[0]))
            else:
                cands = list(range(-T_min, 0))
            if mode == "interchange":
                # each position mapped in every pair (any other would be refused)
                cands = [c for c in cands
                         if all((c + pr.base.T if c < 0 else c) in pr.position_map for pr in pairs)]
            for c in cands:
                psites.append((c, [[resolve(pr, c)] for pr in pairs]))
        elif P == "last":
            c = Ts[0] - 1 if equal else -1
            psites.append((c, [[resolve(pr, c)] for pr in pairs]))
        else:
            assert isinstance(P, list) and P
            if all(isinstance(x, list) for x in P):
                for group in P:
                    psites.append((None, [[resolve(pr, int(c)) for c in group] for pr in pairs]))
            else:
                assert all(isinstance(x, int) for x in P)
                for c in P:
                    psites.append((int(c), [[resolve(pr, int(c))] for pr in pairs]))
        for layer in layers:
            assert 0 <= layer < oracle.n_layers
            for head in heads:
                for sp, pos in psites:
                    sites.append(Site(comp, layer, head, sp, pos))
    return sites


# --------------------------------------------------------------------------
# the sweep


@dataclass
class PairRuns:
    base_acts: dict
    source_acts: dict
    base_value: float
    source_value: float
    ref_logprobs: torch.Tensor | None


@dataclass
class SweepResult:
    pairs: list[dict[str, float]]
    rows: list[dict[str, Any]]
    forwards: int
    runs: list[PairRuns] = field(default_factory=list)


def source_values(oracle: Oracle, acts: dict, component: str, layer: int, head: int | None,
                  src_positions: list[int]) -> torch.Tensor:
    a = acts[(component, layer)]
    idx = torch.tensor(src_positions, dtype=torch.long)
    if head is None:
        return a[idx, :].clone()
    return a[idx, head, :].clone()


def baseline_runs(oracle: Oracle, metric: Metric, pairs: list[Pair]) -> list[PairRuns]:
    runs = []
    for pair in pairs:
        src = oracle.forward(pair.source, capture=True, resid_capture=metric.resid_capture())
        base = oracle.forward(pair.base, capture=True, resid_capture=metric.resid_capture())
        clean_out, clean_T = (src, pair.source.T) if pair.clean_is_source else (base, pair.base.T)
        ref = metric.logprobs(clean_out, clean_T) if metric.kind == "kl" else None
        runs.append(PairRuns(base["acts"], src["acts"], metric.value(base, pair.base.T, ref),
                             metric.value(src, pair.source.T, ref), ref))
    return runs


def patched_value(oracle: Oracle, metric: Metric, pair: Pair, runs: PairRuns, patches_spec) -> float:
    """patches_spec: list of (component, layer, head, base_positions)."""
    patches = []
    for comp, layer, head, positions in patches_spec:
        src_pos = [pair.position_map[p] for p in positions]
        patches.append(Patch(comp, layer, head, list(positions),
                             source_values(oracle, runs.source_acts, comp, layer, head, src_pos)))
    out = oracle.forward(pair.base, patches, resid_capture=metric.resid_capture())
    return metric.value(out, pair.base.T, runs.ref_logprobs)


def sweep(oracle: Oracle, spec: dict[str, Any], spec_dir=None, progress: bool = False) -> SweepResult:
    start = oracle.forwards
    metric = Metric(spec["metric"], oracle, spec_dir)
    pairs = parse_pairs(spec)
    sites = expand_sites(spec, pairs, oracle)
    runs = baseline_runs(oracle, metric, pairs)
    pair_out = []
    for pair, r in zip(pairs, runs):
        clean, corrupted = (r.source_value, r.base_value) if pair.clean_is_source else (r.base_value, r.source_value)
        pair_out.append({"base": r.base_value, "source": r.source_value, "clean": clean, "corrupted": corrupted})
    rows = []
    import time
    t0 = time.time()
    for n_done, site in enumerate(sites):
        if progress and n_done % 200 == 0 and n_done:
            el = time.time() - t0
            print(f"  {n_done}/{len(sites)} sites, {el:.0f}s, eta {el / n_done * (len(sites) - n_done):.0f}s",
                  flush=True)
        patched = []
        for i, (pair, r) in enumerate(zip(pairs, runs)):
            patched.append(patched_value(oracle, metric, pair, r,
                                         [(site.component, site.layer, site.head, site.positions[i])]))
        rows.append({"component": site.component, "layer": site.layer, "head": site.head,
                     "spec_positions": site.spec_position, "positions": site.positions, "patched": patched})
    return SweepResult(pair_out, rows, oracle.forwards - start, runs)
