r"""``nce-ref bounds``: Poole et al.'s experiment with the optimal critic, the main job.

Correlated Gaussians in ``--dim`` dimensions (default 20) whose true MI steps through
``--mi`` (default 2, 4, 6, 8, 10 nats); at each level ``--steps`` batches of N pairs
(default 4000 batches of 64) are drawn, the optimal critic
:math:`f^* = \log p(y|x)/p(y)` is evaluated on the N x N pairs in closed form
(:func:`nce_ref.mi.critics.gaussian`), and every bound of :mod:`nce_ref.mi` is
computed on it (NWJ at its own optimum :math:`1 + f^*`).  Prints a table (true MI,
mean ± standard deviation of each estimator over the batches, log N), checks the
theorem (:math:`I_{\rm NCE} \le \log N` on every batch, its mean at most
:math:`\min(I, \log N)`), and writes a PNG figure (estimates against the true
staircase, log N marked).  ``--json`` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass

import numpy as np

DEFAULT_MI = (2.0, 4.0, 6.0, 8.0, 10.0)
DEFAULT_OUTPUT = "nce_ref_bounds.png"


@dataclass(frozen=True)
class Estimator:
    key: str
    label: str
    critic: str
    note: str = ""


def estimators(alpha: float, clip: float) -> list[Estimator]:
    """The rows of the table, in order."""
    return [
        Estimator("infonce", "InfoNCE (log N - L)", "f*"),
        Estimator("nwj", "NWJ", "1 + f*", "unbiased"),
        Estimator("js", "JS (reports NWJ at 1 + f)", "f*", "= NWJ here; not I - 1/e"),
        Estimator("tuba", "TUBA (a = 1)", "f*", "= NWJ at the optimal a"),
        Estimator("dv", "DV", "f*", "biased up"),
        Estimator("mine", "MINE", "f*", "= DV (MINE changes the gradient)"),
        Estimator("interpolated", f"I_alpha (alpha = {alpha:g})", "f*, a = 1", "<= 1 + log((N-1)/alpha)"),
        Estimator("smile", f"SMILE (clip = {clip:g})", "f*"),
        Estimator("loo_upper", "LOO upper bound", "f*", "upper bound"),
    ]


def _evaluate(scores: np.ndarray, alpha: float, clip: float) -> dict[str, float]:
    from ..mi import bounds as b

    return {
        "infonce": float(b.infonce(scores)),
        "nwj": float(b.nwj(scores + 1.0)),
        "js": float(b.js(scores)),
        "tuba": float(b.tuba(scores, 0.0)),
        "dv": float(b.dv(scores)),
        "mine": float(b.mine(scores, 0.0)),
        "interpolated": float(b.interpolated(scores, 0.0, alpha=alpha)),
        "smile": float(b.smile(scores, clip=clip)),
        "loo_upper": float(b.loo_upper(scores)),
    }


class Progress:
    """A one-line progress bar on a stream (``\\r``-redrawn, at most 10 times a second)."""

    def __init__(self, total: int, stream=None, enabled: bool = True, width: int = 30):
        self.total = max(1, total)
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.width = width
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = -1.0

    def update(self, k: int = 1, label: str = "") -> None:
        self.done += k
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < 0.1 and self.done < self.total:
            return
        self._last = now
        frac = self.done / self.total
        filled = int(round(self.width * frac))
        el = now - self.t0
        eta = el / frac - el if frac > 0 else 0.0
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {100 * frac:5.1f}% "
                          f"{self.done}/{self.total} batches  {el:5.1f}s elapsed, {eta:5.1f}s left  "
                          f"{label}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def run_experiment(*, batch_sizes=(64,), dim: int = 20, mi_levels=DEFAULT_MI, steps: int = 4000,
                   seed: int = 0, alpha: float = 0.01, clip: float = 5.0, progress: Progress | None = None):
    """Run the experiment; return ``(summary, traces)``.

    ``summary`` is JSON-ready; ``traces[N][key]`` is the (levels * steps,) array of
    per-batch estimates of estimator ``key`` (for the figure).
    """
    from ..mi import critics, exact, sample

    ests = estimators(alpha, clip)
    summary = {"config": {"batch_sizes": list(batch_sizes), "dim": dim, "mi": list(mi_levels),
                          "steps": steps, "seed": seed, "alpha": alpha, "clip": clip,
                          "critic": "optimal: f*(x, y) = log p(y|x)/p(y); NWJ at 1 + f*"},
               "estimators": [{"key": e.key, "label": e.label, "critic": e.critic, "note": e.note}
                              for e in ests],
               "results": []}
    traces: dict[int, dict[str, np.ndarray]] = {}
    for n in batch_sizes:
        rng = np.random.default_rng([seed, n])
        tr = {e.key: np.empty(len(mi_levels) * steps) for e in ests}
        levels = []
        for li, level in enumerate(mi_levels):
            rho = exact.rho_for_mi(level, dim)
            x_all, y_all = sample.correlated_gaussian(steps * n, rho, dim, rng)
            for s in range(steps):
                sl = slice(s * n, (s + 1) * n)
                est = _evaluate(critics.gaussian(x_all[sl], y_all[sl], rho), alpha, clip)
                for k, v in est.items():
                    tr[k][li * steps + s] = v
                if progress is not None:
                    progress.update(1, f"N={n} I={level:g}")
            stats = {}
            for e in ests:
                v = tr[e.key][li * steps:(li + 1) * steps]
                sd = float(np.std(v, ddof=1)) if steps > 1 else 0.0
                stats[e.key] = {"mean": float(np.mean(v)), "std": sd, "sem": sd / math.sqrt(steps),
                                "min": float(np.min(v)), "max": float(np.max(v))}
            dv_minus_nwj = tr["dv"][li * steps:(li + 1) * steps] - tr["nwj"][li * steps:(li + 1) * steps]
            levels.append({"true_mi": float(level), "rho": float(rho), "estimators": stats,
                           "min_dv_minus_nwj": float(np.min(dv_minus_nwj))})
        traces[n] = tr
        summary["results"].append({"batch_size": n, "log_n": math.log(n),
                                   "interpolated_ceiling": 1.0 + math.log((n - 1) / alpha),
                                   "levels": levels})
    summary["checks"] = _checks(summary)
    return summary, traces


def _checks(summary) -> list[dict]:
    """The theorem and its companions, checked on the run (``exact``: on every batch)."""
    out = []
    for res in summary["results"]:
        n, log_n = res["batch_size"], res["log_n"]
        lv = res["levels"]
        tol = 1e-12 * max(1.0, log_n)
        out.append({"n": n, "exact": True, "claim": "InfoNCE <= log N on every batch",
                    "ok": all(v["estimators"]["infonce"]["max"] <= log_n + tol for v in lv)})
        out.append({"n": n, "exact": True, "claim": "I_alpha <= 1 + log((N-1)/alpha) on every batch",
                    "ok": all(v["estimators"]["interpolated"]["max"] <= res["interpolated_ceiling"] + tol
                              for v in lv)})
        out.append({"n": n, "exact": True, "claim": "DV >= NWJ (same critic up to a shift) on every batch",
                    "ok": all(v["min_dv_minus_nwj"] >= -tol for v in lv)})
        out.append({"n": n, "exact": False, "claim": "mean InfoNCE <= min(I, log N) (+3 SE)",
                    "ok": all(v["estimators"]["infonce"]["mean"]
                              <= min(v["true_mi"], log_n) + 3 * v["estimators"]["infonce"]["sem"] + tol
                              for v in lv)})
        out.append({"n": n, "exact": False, "claim": "mean LOO upper bound >= I (-3 SE)",
                    "ok": all(v["estimators"]["loo_upper"]["mean"]
                              >= v["true_mi"] - 3 * v["estimators"]["loo_upper"]["sem"] - tol for v in lv)})
    return out


def format_table(summary, seconds: float | None = None) -> str:
    cfg = summary["config"]
    ests = summary["estimators"]
    lines = [f"nce-ref bounds: {cfg['dim']}-dimensional correlated Gaussians, optimal critic "
             f"f* = log p(y|x)/p(y), {cfg['steps']} batches per level, seed {cfg['seed']}", ""]
    for res in summary["results"]:
        lv = res["levels"]
        lines.append(f"N = {res['batch_size']}   log N = {res['log_n']:.4f}   "
                     f"I_alpha ceiling 1 + log((N-1)/alpha) = {res['interpolated_ceiling']:.4f}")
        head = ["estimator", "critic"] + [f"I = {v['true_mi']:g}" for v in lv] + ["note"]
        rows = []
        for e in ests:
            cells = [f"{v['estimators'][e['key']]['mean']:.3f} ± {v['estimators'][e['key']]['std']:.2g}"
                     for v in lv]
            rows.append([e["label"], e["critic"], *cells, e["note"]])
        rows.append(["min(I, log N)", "", *[f"{min(v['true_mi'], res['log_n']):.3f}" for v in lv], ""])
        widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
        lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.append("")
    lines.append("mean ± standard deviation over the batches, in nats")
    lines.append("checks (exact: on every batch; otherwise within 3 standard errors of the mean):")
    for c in summary["checks"]:
        lines.append(f"  [{'ok' if c['ok'] else 'FAIL'}] N = {c['n']}: {c['claim']}"
                     + ("" if c["exact"] else " (Monte Carlo)"))
    if seconds is not None:
        lines.append(f"{len(cfg['mi']) * cfg['steps'] * len(cfg['batch_sizes'])} batches "
                     f"evaluated in {seconds:.1f}s")
    return "\n".join(lines)


_PANELS = (
    ("infonce", "InfoNCE  (log N − L)"),
    ("nwj", "NWJ at 1 + f*  (= JS, TUBA a = 1)"),
    ("dv", "DV  (= MINE's value)"),
    ("interpolated", "I_α"),
    ("smile", "SMILE"),
    ("loo_upper", "leave-one-out upper bound"),
)


def _moving_average(v: np.ndarray, steps: int, window: int) -> np.ndarray:
    """Centred moving mean of ``window`` batches, within each MI level (truncated at its ends)."""
    out = np.empty(v.shape, dtype=np.float64)
    half = window // 2
    for s0 in range(0, v.size, steps):
        seg = v[s0:s0 + steps]
        c = np.concatenate([[0.0], np.cumsum(seg)])
        k = np.arange(seg.size)
        lo = np.maximum(0, k - half)
        hi = np.minimum(seg.size, k + half + 1)
        out[s0:s0 + steps] = (c[hi] - c[lo]) / (hi - lo)
    return out


def plot(summary, traces, path: str) -> str:
    """Write the figure with matplotlib's object API (no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cfg = summary["config"]
    steps, mis = cfg["steps"], cfg["mi"]
    x = np.arange(len(mis) * steps)
    truth = np.repeat(np.asarray(mis, dtype=float), steps)
    window = max(1, steps // 20)
    fig = Figure(figsize=(13, 7), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3, sharex=True)
    colors = ["C0", "C2", "C4", "C1", "C5"]
    low, top = -1.0, max(mis) + 4.0
    for ax, (key, title) in zip(axes.ravel(), _PANELS):
        panel_top = top
        for i, res in enumerate(summary["results"]):
            n = res["batch_size"]
            col = colors[i % len(colors)]
            v = traces[n][key]
            smooth = _moving_average(v, steps, window)
            finite = smooth[np.isfinite(smooth)]
            if finite.size:  # the upper bound may sit far above the others: keep it in view
                panel_top = max(panel_top, min(float(finite.max()) + 1.0, 3.0 * top))
            if i == 0:
                ax.plot(x, np.clip(v, low - 1.0, 3.0 * top), color=col, alpha=0.25, lw=0.4,
                        rasterized=True)
            ax.plot(x, smooth, color=col, lw=1.6,
                    label=f"N = {n}" if len(summary["results"]) > 1 else f"moving mean of {window}")
            ax.axhline(res["log_n"], color=col, ls="--", lw=1.0,
                       label="log N" if i == 0 and len(summary["results"]) == 1 else None)
            if key == "interpolated":
                ax.axhline(res["interpolated_ceiling"], color=col, ls=":", lw=1.0,
                           label="1 + log((N-1)/α)" if i == 0 else None)
        ax.plot(x, truth, color="k", lw=1.5, label="true I(X;Y)")
        ax.set_title(title, fontsize=11)
        ax.set_ylim(low, panel_top)
        ax.grid(alpha=0.3)
        if key in ("infonce", "interpolated"):
            ax.legend(loc="upper left", fontsize=8)
    centres = [(i + 0.5) * steps for i in range(len(mis))]
    for ax in axes.ravel():
        ax.set_xticks(centres, [f"{m:g}" for m in mis])
    for ax in axes[1]:
        ax.set_xlabel(f"true MI (nats); {steps} batches per level, in order")
    for ax in axes[:, 0]:
        ax.set_ylabel("estimate (nats)")
    ns = ", ".join(str(r["batch_size"]) for r in summary["results"])
    fig.suptitle(f"MI estimates with the optimal critic, {cfg['dim']}-d correlated Gaussians, N = {ns}: "
                 "InfoNCE can never exceed log N (dashed)", fontsize=12)
    fig.savefig(path, dpi=90)
    return path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Poole et al.'s experiment with the optimal critic: correlated Gaussians whose true MI "
        "steps through --mi, every bound of nce_ref.mi over many batches; prints a table and "
        "writes a PNG figure.")
    parser.add_argument("-n", "--batch-size", type=int, nargs="+", default=[64], metavar="N",
                        help="batch size(s) N (default: 64)")
    parser.add_argument("--dim", type=int, default=20, help="dimension of x and y (default: 20)")
    parser.add_argument("--mi", type=float, nargs="+", default=list(DEFAULT_MI), metavar="NATS",
                        help="true MI levels in nats (default: 2 4 6 8 10)")
    parser.add_argument("--steps", type=int, default=4000,
                        help="batches per MI level (default: 4000: about 30 s on one core)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--alpha", type=float, default=0.01, help="alpha of I_alpha (default: 0.01)")
    parser.add_argument("--clip", type=float, default=5.0, help="SMILE's clip (default: 5)")
    parser.add_argument("-o", "--output", default=DEFAULT_OUTPUT,
                        help=f"PNG figure path (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--no-plot", action="store_true", help="do not write the figure")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")


def _validate(args) -> str | None:
    if any(n < 2 for n in args.batch_size):
        return "--batch-size must be >= 2 (the bounds average the off-diagonal pairs)"
    if args.dim < 1:
        return "--dim must be >= 1"
    if args.steps < 1:
        return "--steps must be >= 1"
    if any(not (m >= 0 and math.isfinite(m)) for m in args.mi):
        return "--mi levels must be finite and >= 0"
    if not 0 < args.alpha <= 1:
        return "--alpha must be in (0, 1]"
    if not args.clip > 0:
        return "--clip must be > 0"
    return None


def run(args) -> int:
    err = _validate(args)
    if err is not None:
        print(f"nce-ref bounds: {err}", file=sys.stderr)
        return 2
    show = sys.stderr.isatty() if args.progress is None else args.progress
    total = len(args.batch_size) * len(args.mi) * args.steps
    bar = Progress(total, enabled=show)
    t0 = time.perf_counter()
    summary, traces = run_experiment(batch_sizes=args.batch_size, dim=args.dim, mi_levels=args.mi,
                                     steps=args.steps, seed=args.seed, alpha=args.alpha,
                                     clip=args.clip, progress=bar)
    bar.close()
    seconds = time.perf_counter() - t0
    figure, note = None, None
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            note = ("nce-ref bounds: matplotlib is not installed, so no figure was written "
                    "(pip install 'nce-ref[plot]'); the table follows")
        else:
            figure = plot(summary, traces, args.output)
    summary["figure"] = figure
    summary["seconds"] = seconds
    if note:
        print(note, file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_table(summary, seconds))
        if figure:
            print(f"figure: {figure}")
        elif note:
            print("figure: not written (matplotlib missing: pip install 'nce-ref[plot]')")
    return 0 if all(c["ok"] for c in summary["checks"] if c["exact"]) else 1
