#!/usr/bin/env python3
"""The PyTorch baseline of bench/sweep.sh: the same sweep as the engine, run
the way TransformerLens-style tools run it -- transformers with forward
hooks, one full forward pass per (pair, site) -- on a seeded random sample
of rows, timed, printed as rows/s.

    bench_torch_sweep.py MODEL.gguf SPEC.json [--rows N] [--threads T]
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import patching_oracle as po  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("spec", type=Path)
    ap.add_argument("--rows", type=int, default=120, help="rows sampled (>= 100)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM
    path = args.model.resolve()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    spec = json.loads(args.spec.read_text())
    oracle = po.Oracle(model)
    metric = po.Metric(spec["metric"], oracle, args.spec.parent)
    pairs = po.parse_pairs(spec)
    sites = po.expand_sites(spec, pairs, oracle)
    rows = [(p, s) for p in range(len(pairs)) for s in range(len(sites))]
    random.Random(args.seed).shuffle(rows)
    sample = rows[: max(args.rows, 100)]
    with torch.no_grad():
        runs = po.baseline_runs(oracle, metric, pairs)
        site = sites[sample[0][1]]
        po.patched_value(oracle, metric, pairs[sample[0][0]], runs[sample[0][0]],  # warm-up
                         [(site.component, site.layer, site.head, site.positions[sample[0][0]])])
        t0 = time.perf_counter()
        for p, s in sample:
            site = sites[s]
            po.patched_value(oracle, metric, pairs[p], runs[p],
                             [(site.component, site.layer, site.head, site.positions[p])])
        seconds = time.perf_counter() - t0
    print(f"pytorch loop      {len(sample)} of {len(rows)} rows sampled, one full forward each, "
          f"{seconds:.3f} s, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"pytorch rows/s    {len(sample) / seconds:.2f}")
    print(f"RESULT torch_rows_per_s={len(sample) / seconds:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
