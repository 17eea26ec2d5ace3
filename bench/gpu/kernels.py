#!/usr/bin/env python3
"""Where a step's GPU time goes: kernel times from an Nsight Compute CSV, step by step.

    ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \\
        --log-file run.csv turbine generate ...
    python3 bench/gpu/kernels.py run.csv

Each engine step ends with its sampling kernel (`argmax_*`, `topk_f32` or `sample_cdf_f32`), so
the launches are cut into steps there: the first is the prefill, the rest are decode steps. Prints, for the prefill
and for the mean decode step, each kernel's launches, total microseconds and share, then one line
of JSON with the same figures.
"""

import csv
import json
import sys
from collections import OrderedDict


def rows(path):
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    # ncu prints its own messages (==PROF==) before the table.
    start = next(i for i, l in enumerate(lines) if l.startswith('"ID"'))
    for r in csv.DictReader(lines[start:]):
        if r.get("Metric Name") == "gpu__time_duration.sum":
            yield r["Kernel Name"], float(r["Metric Value"].replace(",", ""))


SAMPLING = ("argmax", "topk_f32", "sample_cdf_f32")


def steps(kernels):
    out = [[]]
    for name, ns in kernels:
        out[-1].append((name, ns))
        if name.startswith(SAMPLING):
            out.append([])
    return [s for s in out if s]


def table(step_list):
    """Per kernel name: (launches per step, microseconds per step), largest first."""
    agg = OrderedDict()
    for st in step_list:
        for name, ns in st:
            n, t = agg.get(name, (0, 0.0))
            agg[name] = (n + 1, t + ns / 1e3)
    k = max(len(step_list), 1)
    return sorted(((name, n / k, t / k) for name, (n, t) in agg.items()), key=lambda r: -r[2])


def show(title, tab):
    total = sum(t for _, _, t in tab)
    print(f"\n### {title}: {total:.1f} us in {sum(n for _, n, _ in tab):.0f} launches\n")
    print("| kernel | launches | us | share |\n|---|---:|---:|---:|")
    for name, n, t in tab:
        print(f"| {name} | {n:.3g} | {t:.1f} | {100 * t / max(total, 1e-9):.1f}% |")
    return total


def main():
    st = steps(rows(sys.argv[1]))
    if not st:
        print("kernels.py: no kernel times in", sys.argv[1])
        return 1
    pre, dec = table(st[:1]), table(st[1:])
    res = {
        "steps": len(st),
        "prefill_us": show("prefill (first step)", pre),
        "decode_us": show(f"decode (mean of {len(st) - 1} steps)", dec) if len(st) > 1 else None,
        "prefill": [{"kernel": n, "launches": c, "us": t} for n, c, t in pre],
        "decode": [{"kernel": n, "launches": c, "us": t} for n, c, t in dec],
    }
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
