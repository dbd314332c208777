"""Attribution patching (AtP; Nanda 2023, Syed et al. 2023) on a sweep spec,
in PyTorch: the reference for patchbay's "method": "atp"
(host/attribution/atp.c, tests/test_atp.c; issue 18).

For every row of a spec (a site of a pair, expanded by the patching
oracle, scripts/patching_oracle.py) the estimate of the patched metric is

    patched ~= base + sum over the site's base positions p of
               (a_source(map p) - a_base(p)) . d metric / d a (p)

the activations a at the site's hook (the head's slice for z, q, k, v)
taken from the oracle's base and source runs, the gradient by autograd at
the base run (the hooks of scripts/make_grad_reference.py). Nothing here is
shared with the C engine.

Written to tests/fixtures/atp/<case>/: spec.json (the patching fixture's,
tests/fixtures/patching/<case>/spec.json, with "method": "atp") and
expected.json: per pair the base and source metrics, per row its site and
the estimated patched value of each pair.
Needs torch, transformers and numpy; CI reads the committed files only.

  python scripts/make_atp_reference.py [--cases NAME,...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import patching_oracle as po  # noqa: E402
from make_grad_reference import Taps  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "atp"
CASES = ["tiny_gqa_denoise_logit_diff", "tiny_gqa_noise_logprob", "tiny_gqa_interchange", "tiny_bias_kl",
         "tiny_gqa_gaussian_noise",
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


def base_gradients(oracle: po.Oracle, metric: po.Metric, pair: po.Pair, ref_logprobs) -> dict[str, torch.Tensor]:
    model = oracle.model
    taps = Taps(model)
    with torch.enable_grad():
        embeds = oracle.embeds(pair.base).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds).logits[0]
        metric_torch(metric, logits[metric.resolve_position(pair.base.T)], ref_logprobs).backward()
    grads = {k: torch.from_numpy(v) for k, v in taps.grads().items()}
    taps.close()
    return grads


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


def reference(case: str) -> None:
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
    grads = [base_gradients(oracle, metric, pair, r.ref_logprobs) for pair, r in zip(pairs, runs)]
    rows = []
    for site in sites:
        patched = [r.base_value + estimate(site, i, pair, r, grads[i])
                   for i, (pair, r) in enumerate(zip(pairs, runs))]
        rows.append({"component": site.component, "layer": site.layer, "head": site.head,
                     "spec_position": site.spec_position, "positions": site.positions, "patched": patched})
    out = OUT / case
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "magic": "patchbay-fixture",
        "version": 1,
        "generator": "scripts/make_atp_reference.py",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "model": name,
        "spec_from": f"tests/fixtures/patching/{case}/spec.json",
        "method": "atp",
        "pairs": [{"base": r.base_value, "source": r.source_value} for r in runs],
        "rows": rows,
    }
    (out / "expected.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "spec.json").write_text(json.dumps(dict(spec, method="atp"), indent=1) + "\n")
    print(f"{case}: {len(rows)} rows x {len(pairs)} pairs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    torch.manual_seed(0)
    for case in args.cases.split(","):
        reference(case)


if __name__ == "__main__":
    main()
