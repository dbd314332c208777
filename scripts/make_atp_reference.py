"""Attribution patching (AtP; Nanda 2023, Syed et al. 2023) and AtP*
(Kramar et al. 2024) on a sweep spec, in PyTorch: the reference for
patchbay's "method": "atp" and "atp*" (host/attribution/atp.c, qk_fix.c,
tests/test_atp.c; issue 18).

For every row of a spec (a site of a pair, expanded by the patching
oracle, scripts/patching_oracle.py) the estimate of the patched metric is

    patched ~= base + sum over the site's base positions p of
               (a_source(map p) - a_base(p)) . d metric / d a (p)

the activations a at the site's hook (the head's slice for z, q, k, v)
taken from the oracle's base and source runs, the gradient by autograd at
the base run (the hooks of scripts/make_grad_reference.py); a projection
metric is differentiated from the residual stream it reads. Nothing here is
shared with the C engine.

AtP* changes two things, each switchable:

  QK fix     for a q or k site the estimate is instead
               sum over heads, query rows t and keys s of
               (A'[t, s] - A[t, s]) * d metric / d A[t, s]
             A the base run's attention probabilities at the site's layer
             (the eager attention's weights, as they multiply the values),
             A' the same from a forward of the base run with the site
             patched (the oracle's patch hooks), the gradient by autograd
             at A (retain_grad on the weights).
  GradDrop   for every layer l, the whole backward again with layer l's
             two writes into the residual (its attn_out and mlp_out
             modules' outputs) passing no gradient (output.detach() + 0 *
             output); the row's value is
               sign(source - base) * (1 / (L - 1)) * sum over l of |estimate_l|
             each estimate_l with the QK fix when that is on.

Written to tests/fixtures/atp/<case>/ (AtP) or tests/fixtures/atp_star/
<case>[_qk_fix|_grad_drop]/ (AtP*, both corrections or one): spec.json (the
patching fixture's, tests/fixtures/patching/<case>/spec.json, with its
method and "atp_star") and expected.json: per pair the base and source
metrics, per row its site and the estimated patched value of each pair.
Needs torch, transformers and numpy; CI reads the committed files only.

  python scripts/make_atp_reference.py [--cases NAME,...] [--star [--qk-fix-only|--grad-drop-only]]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import patching_oracle as po  # noqa: E402
from make_grad_reference import Taps  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "atp"
OUT_STAR = FIXTURES / "atp_star"
CASES = ["tiny_gqa_denoise_logit_diff", "tiny_gqa_noise_logprob", "tiny_gqa_interchange", "tiny_bias_kl",
         "tiny_gqa_gaussian_noise", "tiny_bias_projection",
         "tiny_qwen3_noising", "tiny_gemma2_denoising", "tiny_gpt_neox_denoising", "tiny_olmo2_denoising"]


def hook_name(component: str, layer: int) -> str:
    if component in po.HEAD_COMPONENTS:
        return f"blocks.{layer}.attn.hook_{component}"
    return f"blocks.{layer}.hook_{component}"


def metric_torch(metric: po.Metric, logits: torch.Tensor, ref_logprobs) -> torch.Tensor:
    """metric.value's definition, differentiable (float64 from float32 logits)."""
    x = logits.to(torch.float64)
    if metric.kind == "logit_diff":
        return x[metric.pos_ids].mean() - x[metric.neg_ids].mean()
    if metric.kind == "logprob":
        return torch.logsumexp(x[metric.tokens], 0) - torch.logsumexp(x, 0)
    if metric.kind == "refusal_score":
        mask = torch.zeros(x.shape[0], dtype=torch.bool)
        mask[metric.tokens] = True
        return torch.logsumexp(x[mask], 0) - torch.logsumexp(x[~mask], 0)
    assert metric.kind == "kl"
    return (ref_logprobs.exp() * (ref_logprobs - torch.log_softmax(x, 0))).sum()


class Patterns:
    """Each layer's attention probabilities (the attention module's second
    output: the eager weights that multiply the values), optionally kept with
    retain_grad."""

    def __init__(self, oracle: po.Oracle, grad: bool, layers=None):
        self.handles, self.weights = [], {}
        for i, mods in enumerate(oracle.modules):
            if layers is not None and i not in layers:
                continue

            def hook(mod, args, output, i=i):
                w = output[1]
                assert isinstance(w, torch.Tensor) and w.dim() == 4, type(w)
                if grad:
                    w.retain_grad()
                self.weights[i] = w
            self.handles.append(mods["attn"].register_forward_hook(hook))

    def close(self):
        for h in self.handles:
            h.remove()


def drop_hooks(oracle: po.Oracle, layer: int | None) -> list:
    """GradDrop at `layer`: its attn_out and mlp_out outputs pass no gradient."""
    if layer is None:
        return []
    mods = oracle.modules[layer]

    def hook(mod, args, output):
        t = po._first_tensor(output)
        return po._replace_first(output, t.detach() + 0.0 * t)
    return [mods["attn_out"].register_forward_hook(hook), mods["mlp_out"].register_forward_hook(hook)]


def residual_hook(oracle: po.Oracle, metric: po.Metric, kept: dict):
    """projection: keeps the residual stream the metric reads, in the graph
    (the slot resid_post L and resid_pre L + 1 share, as the oracle reads it)."""
    layer, hook = metric.layer, metric.hook
    if hook == "resid_post" and layer + 1 < oracle.n_layers:
        layer, hook = layer + 1, "resid_pre"
    module = oracle.layers[layer]
    if hook == "resid_pre":
        def pre(mod, args, kwargs):
            kept["x"] = (args[0] if args else kwargs["hidden_states"])[0]
        return module.register_forward_pre_hook(pre, with_kwargs=True)
    return module.register_forward_hook(lambda mod, args, output: kept.__setitem__("x", po._first_tensor(output)[0]))


def base_gradients(oracle: po.Oracle, metric: po.Metric, pair: po.Pair, ref_logprobs,
                   drop: int | None = None) -> tuple[dict[str, torch.Tensor], dict[int, torch.Tensor]]:
    """The hook points' gradients and each layer's pattern gradient (H, T, T)."""
    model = oracle.model
    taps = Taps(model)
    patterns = Patterns(oracle, grad=True)
    drops = drop_hooks(oracle, drop)
    kept = {}
    if metric.kind == "projection":
        drops.append(residual_hook(oracle, metric, kept))
    with torch.enable_grad():
        embeds = oracle.embeds(pair.base).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds).logits[0]
        p = metric.resolve_position(pair.base.T)
        if metric.kind == "projection":
            value = kept["x"][p].to(torch.float64) @ metric.u
        else:
            value = metric_torch(metric, logits[p], ref_logprobs)
        value.backward()
    raw = taps.grads()
    grads = {k: torch.from_numpy(v) for k, v in raw.items()}
    dpattern = {i: (w.grad[0] if w.grad is not None else torch.zeros_like(w[0])).detach().to(torch.float64)
                for i, w in patterns.weights.items()}
    for h in drops:
        h.remove()
    patterns.close()
    taps.close()
    return grads, dpattern


def patched_pattern(oracle: po.Oracle, pair: po.Pair, runs: po.PairRuns, site: po.Site, i: int) -> torch.Tensor:
    """(H, T, T) float64: the layer's attention probabilities with the site patched."""
    src_pos = [pair.position_map[p] for p in site.positions[i]]
    patch = po.Patch(site.component, site.layer, site.head, list(site.positions[i]),
                     po.source_values(oracle, runs.source_acts, site.component, site.layer, site.head, src_pos))
    patterns = Patterns(oracle, grad=False, layers={site.layer})
    with torch.no_grad():
        oracle.forward(pair.base, [patch])
    w = patterns.weights[site.layer][0].detach().to(torch.float64)
    patterns.close()
    return w


def base_patterns(oracle: po.Oracle, pair: po.Pair) -> dict[int, torch.Tensor]:
    patterns = Patterns(oracle, grad=False)
    with torch.no_grad():
        oracle.forward(pair.base)
    out = {i: w[0].detach().to(torch.float64) for i, w in patterns.weights.items()}
    patterns.close()
    return out


def estimate(site: po.Site, i: int, pair: po.Pair, runs: po.PairRuns, grads: dict) -> float:
    key = (site.component, site.layer)
    base, src, grad = runs.base_acts[key], runs.source_acts[key], grads[hook_name(*key)]
    total = torch.zeros((), dtype=torch.float64)
    for p in site.positions[i]:
        delta = src[pair.position_map[p]].to(torch.float64) - base[p].to(torch.float64)
        g = grad[p].to(torch.float64)
        if site.head is not None:
            delta, g = delta[site.head], g[site.head]
        total = total + (delta * g).sum()
    return float(total)


def star_rows(oracle, metric, pairs, runs, sites, qk_fix: bool, grad_drop: bool) -> list[list[float]]:
    """Per site, per pair: the AtP* estimate of patched - base."""
    L = oracle.n_layers
    out = [[0.0] * len(pairs) for _ in sites]
    for i, (pair, r) in enumerate(zip(pairs, runs)):
        passes = [base_gradients(oracle, metric, pair, r.ref_logprobs)]
        if grad_drop:
            passes += [base_gradients(oracle, metric, pair, r.ref_logprobs, drop=l) for l in range(L)]
        base_p = base_patterns(oracle, pair) if qk_fix else None
        for k, site in enumerate(sites):
            moved = None
            if qk_fix and site.component in ("q", "k"):
                moved = patched_pattern(oracle, pair, r, site, i) - base_p[site.layer]

            def one(grads, dpattern):
                if moved is not None:
                    return float((moved * dpattern[site.layer]).sum())
                return estimate(site, i, pair, r, grads)
            if not grad_drop:
                out[k][i] = one(*passes[0])
            else:
                total = sum(abs(one(*p)) for p in passes[1:])
                sign = 1.0 if r.source_value >= r.base_value else -1.0
                out[k][i] = sign * total / (L - 1)
    return out


def reference(case: str, star: tuple[bool, bool] | None = None) -> None:
    from transformers import AutoModelForCausalLM

    case_dir = FIXTURES / "patching" / case
    spec = json.loads((case_dir / "spec.json").read_text())
    name = json.loads((case_dir / "expected.json").read_text())["model"]
    model = AutoModelForCausalLM.from_pretrained(str(FIXTURES / name), dtype=torch.float32,
                                                 attn_implementation="eager")
    oracle = po.Oracle(model)
    metric = po.Metric(spec["metric"], oracle, case_dir)
    pairs = po.parse_pairs(spec)
    sites = po.expand_sites(spec, pairs, oracle)
    with torch.no_grad():
        runs = po.baseline_runs(oracle, metric, pairs)
    if star is None:
        grads = [base_gradients(oracle, metric, pair, r.ref_logprobs)[0] for pair, r in zip(pairs, runs)]
        est = [[estimate(site, i, pair, r, grads[i]) for i, (pair, r) in enumerate(zip(pairs, runs))]
               for site in sites]
        out, method, extra = OUT / case, "atp", {}
    else:
        est = star_rows(oracle, metric, pairs, runs, sites, *star)
        suffix = "" if all(star) else "_qk_fix" if star[0] else "_grad_drop"
        out, method = OUT_STAR / (case + suffix), "atp*"
        extra = {"atp_star": {"qk_fix": star[0], "grad_drop": star[1]}}
    rows = []
    for site, e in zip(sites, est):
        patched = [r.base_value + x for r, x in zip(runs, e)]
        rows.append({"component": site.component, "layer": site.layer, "head": site.head,
                     "spec_position": site.spec_position, "positions": site.positions, "patched": patched})
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "magic": "patchbay-fixture",
        "version": 1,
        "generator": "scripts/make_atp_reference.py",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "model": name,
        "spec_from": f"tests/fixtures/patching/{case}/spec.json",
        "method": method,
        **extra,
        "pairs": [{"base": r.base_value, "source": r.source_value} for r in runs],
        "rows": rows,
    }
    if "direction" in spec["metric"]:  # the projection's file, beside the spec that names it
        shutil.copyfile(case_dir / spec["metric"]["direction"], out / spec["metric"]["direction"])
    (out / "expected.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "spec.json").write_text(json.dumps(dict(spec, method=method, **extra), indent=1) + "\n")
    print(f"{out.name}: {method} {extra}, {len(rows)} rows x {len(pairs)} pairs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--star", action="store_true", help="AtP* (both corrections unless one is named)")
    ap.add_argument("--qk-fix-only", action="store_true")
    ap.add_argument("--grad-drop-only", action="store_true")
    args = ap.parse_args()
    star = None
    if args.star:
        star = (not args.grad_drop_only, not args.qk_fix_only)
    torch.manual_seed(0)
    for case in args.cases.split(","):
        reference(case, star)


if __name__ == "__main__":
    main()
