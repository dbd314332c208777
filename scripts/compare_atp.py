#!/usr/bin/env python3
"""An attribution-patching run against the exact sweep of the same spec:
per-site mean effects from two `patchbay sweep` (or `attribute`) output
folders, compared over every site both have.

    python3 scripts/compare_atp.py EXACT_DIR ATP_DIR

Prints, for all sites and per component: Spearman's rho of the signed
effects (AtP's estimate is signed) and of their magnitudes; the recall of
the exact top-10 and top-50 (by |effect|) in the estimate's top-10 and
top-50; and the worst false negative: the site of the exact top-50 that the
estimate ranks lowest. Standard library only (no numpy)."""
import json
import sys


def effects(folder):
    r = json.load(open(f"{folder}/results.json"))
    key = lambda s: (s["component"], s["layer"], s.get("head"), s.get("position"))
    return {key(s): s["effect"] for s in r["sites"] if s["effect"] is not None}, r.get("method", "exact")


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


def report(name, keys, e, a):
    line = f"{name:10s} {len(keys):5d} sites  rho {spearman(a, e):+.3f}  rho|.| {spearman([abs(v) for v in a], [abs(v) for v in e]):+.3f}"
    for k in (10, 50):
        if len(keys) >= k:
            line += f"  recall@{k} {len(top(e, k) & top(a, k)) / k:.2f}"
    print(line)


def main():
    exact, m1 = effects(sys.argv[1])
    atp, m2 = effects(sys.argv[2])
    keys = sorted(k for k in exact if k in atp)
    print(f"{sys.argv[1]} ({m1}) vs {sys.argv[2]} ({m2})")
    e = [exact[k] for k in keys]
    a = [atp[k] for k in keys]
    report("all", keys, e, a)
    for comp in sorted({k[0] for k in keys}):
        idx = [i for i, k in enumerate(keys) if k[0] == comp]
        report(comp, [keys[i] for i in idx], [e[i] for i in idx], [a[i] for i in idx])
    rank_a = {i: r for r, i in enumerate(sorted(range(len(a)), key=lambda i: -abs(a[i])))}
    worst = max(top(e, 50), key=lambda i: rank_a[i])
    print(f"worst false negative of the exact top-50: {keys[worst]} exact {e[worst]:+.3f}, "
          f"estimate {a[worst]:+.3f}, estimate's rank {rank_a[worst] + 1} of {len(keys)}")


if __name__ == "__main__":
    main()
