#!/usr/bin/env python3
"""An attribution-patching run against the exact sweep of the same spec:
per-site mean effects from two `patchbay sweep` (or `attribute`) output
folders, compared over every site both have.

    python3 scripts/compare_atp.py EXACT_DIR ATP_DIR [--per-pair]

Prints, for all sites and per component: Spearman's rho of the signed
effects (read it for AtP, whose estimate is signed) and of their magnitudes
(read rho|.| for AtP*: with GradDrop its estimate is a magnitude, given the
sign of the total effect); the recall of
the exact top-10 and top-50 (by |effect|) in the estimate's top-10 and
top-50 (also over the sites that are not 0 in both: a site where the two
runs' activations are identical is exactly 0 in both, ties that inflate
rho); and the worst false negative: the site of the exact top-50 that the
estimate ranks lowest. --per-pair compares each pair's effects instead of
the means, one line a pair and their mean: AtP*'s GradDrop estimates a
pair's |effect|, and a mean of magnitudes is not the magnitude of a mean
when pairs' effects differ in sign. Standard library only (no numpy)."""
import json
import sys


def key(s):
    return (s["component"], s["layer"], s.get("head"), s.get("position"))


def effects(folder, pair=None):
    r = json.load(open(f"{folder}/results.json"))
    if pair is None:
        return {key(s): s["effect"] for s in r["sites"] if s["effect"] is not None}, r.get("method", "exact")
    return {key(s): s["per_pair_effect"][pair] for s in r["sites"]
            if s.get("per_pair_effect") and s["per_pair_effect"][pair] is not None}, r.get("method", "exact")


def ranks(values):
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x, y):
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else float("nan")


def top(values, k):
    return set(sorted(range(len(values)), key=lambda i: -abs(values[i]))[:k])


def measures(e, a):
    out = [spearman(a, e), spearman([abs(v) for v in a], [abs(v) for v in e])]
    return out + [len(top(e, k) & top(a, k)) / k if len(e) >= k else float("nan") for k in (10, 50)]


def line(name, n, m):
    return (f"{name:10s} {n:5d} sites  rho {m[0]:+.3f}  rho|.| {m[1]:+.3f}"
            f"  recall@10 {m[2]:.2f}  recall@50 {m[3]:.2f}")


def report(name, keys, e, a):
    print(line(name, len(keys), measures(e, a)))


def per_pair(exact_dir, atp_dir):
    n = json.load(open(f"{exact_dir}/results.json"))["n_pairs"]
    rows, counts = [], []
    for i in range(n):
        exact, _ = effects(exact_dir, i)
        atp, _ = effects(atp_dir, i)
        keys = sorted(k for k in exact if k in atp)
        idx = [k for k in keys if exact[k] != 0 or atp[k] != 0]
        rows.append(measures([exact[k] for k in idx], [atp[k] for k in idx]))
        counts.append(len(idx))
        print(line(f"pair {i}", len(idx), rows[-1]) + "  (sites not 0 in both)")
    print(line("mean", round(sum(counts) / n), [sum(r[j] for r in rows) / len(rows) for j in range(4)]))


def main():
    if "--per-pair" in sys.argv[3:]:
        per_pair(sys.argv[1], sys.argv[2])
        return
    exact, m1 = effects(sys.argv[1])
    atp, m2 = effects(sys.argv[2])
    keys = sorted(k for k in exact if k in atp)
    print(f"{sys.argv[1]} ({m1}) vs {sys.argv[2]} ({m2})")
    e = [exact[k] for k in keys]
    a = [atp[k] for k in keys]
    report("all", keys, e, a)
    # Sites where both runs' activations are identical are exactly 0 in both
    # (ties that inflate rho); the rest, alone:
    idx = [i for i in range(len(keys)) if e[i] != 0 or a[i] != 0]
    report("nonzero", [keys[i] for i in idx], [e[i] for i in idx], [a[i] for i in idx])
    for comp in sorted({k[0] for k in keys}):
        idx = [i for i, k in enumerate(keys) if k[0] == comp]
        report(comp, [keys[i] for i in idx], [e[i] for i in idx], [a[i] for i in idx])
    rank_a = {i: r for r, i in enumerate(sorted(range(len(a)), key=lambda i: -abs(a[i])))}
    worst = max(top(e, 50), key=lambda i: rank_a[i])
    print(f"worst false negative of the exact top-50: {keys[worst]} exact {e[worst]:+.3f}, "
          f"estimate {a[worst]:+.3f}, estimate's rank {rank_a[worst] + 1} of {len(keys)}")


if __name__ == "__main__":
    main()
