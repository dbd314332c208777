#!/usr/bin/env python3
"""Compares two output folders of `patchbay sweep` / `refusal-analysis` bit
for bit: every .npy and .txt file byte for byte, and results.json / direction.json
value for value (floats compared as written, i.e. exactly), ignoring only
fields that measure the machine (wall-clock times); report.html, which
prints run times, is not compared. Exit 0 when equal.

    python3 scripts/compare_runs.py RUN_A RUN_B

Used to show that a restructuring left the numbers untouched."""
import json
import os
import sys

# Fields that describe the run's timing, not its results.
MACHINE_FIELDS = {"means_seconds", "candidates_seconds"}


def walk(a, b, path, diffs):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in MACHINE_FIELDS:
                continue
            if k not in a or k not in b:
                diffs.append(f"{path}.{k}: only in {'B' if k not in a else 'A'}")
            else:
                walk(a[k], b[k], f"{path}.{k}", diffs)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diffs.append(f"{path}: {len(a)} vs {len(b)} items")
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{path}[{i}]", diffs)
    elif a != b and not (a != a and b != b):  # NaN equals NaN here
        diffs.append(f"{path}: {a!r} vs {b!r}")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    run_a, run_b = sys.argv[1:]
    names = sorted(set(os.listdir(run_a)) | set(os.listdir(run_b)))
    bad = 0
    for name in names:
        pa, pb = os.path.join(run_a, name), os.path.join(run_b, name)
        if not (os.path.isfile(pa) and os.path.isfile(pb)):
            print(f"{name}: only in {'B' if not os.path.isfile(pa) else 'A'}")
            bad += 1
        elif name.endswith((".npy", ".txt")):
            same = open(pa, "rb").read() == open(pb, "rb").read()
            print(f"{name}: {'identical bytes' if same else 'DIFFERENT bytes'}")
            bad += not same
        elif name.endswith(".json"):
            diffs = []
            walk(json.load(open(pa)), json.load(open(pb)), name, diffs)
            print(f"{name}: {'equal values' if not diffs else f'{len(diffs)} differences'}")
            for d in diffs[:20]:
                print("  " + d)
            bad += bool(diffs)
        else:
            print(f"{name}: not compared (holds run times)")
    print("equal" if not bad else f"{bad} files differ")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
