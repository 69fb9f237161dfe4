"""Time and peak memory against N: nce_ref, the three-GEMM floor and torch autograd.

Drawn by the performance page (matplotlib's ``plot`` directive) from
``asv_infonce_results.json`` beside this file: an asv results file of
``asv run --python=same -b 'GemmFloor\\.time_three_gemms|InfoNCE\\.(time|peakmem)_value_and_grad|
TorchAutogradInfoNCE\\.(time|peakmem)_forward_backward'``, copied from
``asv_benchmarks/results/<machine>/`` (see README.md beside this file).
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

# the plot directive runs this file with the working directory docs/ and no __file__
HERE = Path(globals().get("__file__", "_data/plot_asv_scaling.py")).resolve().parent
RESULTS = HERE / "asv_infonce_results.json"
MACHINE = HERE / "asv_machine.json"


def load(path=RESULTS):
    """``{benchmark: {param tuple: value}}`` from an asv (version 2) results file."""
    data = json.loads(Path(path).read_text())
    cols = data["result_columns"]
    out = {}
    for name, row in data["results"].items():
        rec = dict(zip(cols, row))
        params = [[ast.literal_eval(p) for p in axis] for axis in rec["params"]]
        combos = [()]
        for axis in params:
            combos = [c + (p,) for c in combos for p in axis]
        q25 = rec.get("stats_q_25") or [None] * len(combos)
        q75 = rec.get("stats_q_75") or [None] * len(combos)
        out[name] = {c: (v, lo, hi) for c, v, lo, hi in zip(combos, rec["result"], q25, q75)
                     if v is not None and not math.isnan(v)}
    return out, data


def series(res, bench, first, dtype):
    """N, median, 25% and 75% quantiles of ``bench`` for backend/device ``first`` and ``dtype``."""
    pts = sorted((int(p[1]), *v) for p, v in res.get(bench, {}).items() if p[0] == first and p[-1] == dtype)
    med = [m for _, m, _, _ in pts]
    return ([n for n, *_ in pts], med, [m if lo is None else lo for (_, m, lo, _) in pts],
            [m if hi is None else hi for (_, m, _, hi) in pts])


def main():
    res, data = load()
    machine = json.loads(MACHINE.read_text()) if MACHINE.exists() else {}
    lines = {
        "nce_ref (NumPy), value and gradients": ("bench_infonce.InfoNCE.time_value_and_grad", "numpy", "C0"),
        "three-GEMM floor (NumPy)": ("bench_infonce.GemmFloor.time_three_gemms", "numpy", "k"),
        "torch autograd (CPU), forward + backward":
            ("bench_infonce.TorchAutogradInfoNCE.time_forward_backward", "cpu", "C3"),
    }
    mem = {
        "nce_ref (NumPy), value and gradients":
            ("bench_infonce.InfoNCE.peakmem_value_and_grad", "numpy", "C0"),
        "torch autograd (CPU), forward + backward":
            ("bench_infonce.TorchAutogradInfoNCE.peakmem_forward_backward", "cpu", "C3"),
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for dtype, style in (("float64", "-o"), ("float32", "--s")):
        for label, (bench, first, color) in lines.items():
            n, t, lo, hi = series(res, bench, first, dtype)
            if n:
                err = [[1e3 * (v - a) for v, a in zip(t, lo)], [1e3 * (b - v) for v, b in zip(t, hi)]]
                axes[0].errorbar(n, [1e3 * v for v in t], yerr=err, fmt=style, color=color, capsize=3,
                                 label=f"{label}, {dtype}")
        for label, (bench, first, color) in mem.items():
            n, m, _, _ = series(res, bench, first, dtype)
            if n:
                axes[1].loglog(n, [v / 2**20 for v in m], style, color=color, label=f"{label}, {dtype}")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_title("InfoNCE, D = 256: time of forward + backward (median, bars: quartiles)")
    axes[0].set_ylabel("time per call (ms, log scale)")
    axes[1].set_title("Peak resident memory of the benchmark process")
    axes[1].set_ylabel("peak RSS (MiB, log scale)")
    ns = sorted({int(p[1]) for b, _, _ in [*lines.values(), *mem.values()] for p in res.get(b, {})})
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for ax in axes:
        ax.set_xticks(ns)
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("batch size N (log scale)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[1].yaxis.set_major_locator(LogLocator(base=2))
    cpu = machine.get("cpu", "")
    fig.suptitle(f"asv, commit {data.get('commit_hash', '')[:8]}, {machine.get('num_cpu', '?')} cores "
                 f"{cpu}".strip(), fontsize=10)
    return fig


main()  # the plot directive runs this file as a script and keeps the figure it leaves open
