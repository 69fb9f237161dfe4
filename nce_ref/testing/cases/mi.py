"""Cases for the MI bounds (``nce_ref.mi.*``): random and optimal critics, both orientations, edges."""

from __future__ import annotations

import numpy as np

from . import Case

_GRAD_NOTE_JS = ("report='mi' returns NWJ at 1 + f but registers the JS objective's gradient "
                 "(Poole et al.'s stop_gradient trick): not the derivative of the value")
_GRAD_NOTE_MINE = ("MINE's gradient divides by the moving average, not the batch mean: the "
                   "derivative of the value only when the two agree")
_INF_NOTE = "-inf scores (a critic that rules pairs out): finite differences do not apply"


def _gauss_critic(rng, n=5, rho=0.8, dim=2):
    from ...mi import critics, sample

    x, y = sample.correlated_gaussian(n, rho, dim, rng)
    return critics.gaussian(x, y, rho)


def _discrete_critic(rng, n=5):
    from ...mi import critics, sample

    pmf = np.array([[0.4, 0.1, 0.0], [0.0, 0.3, 0.05], [0.05, 0.0, 0.1]])
    x, y = sample.discrete(pmf, n, rng)
    return critics.discrete(pmf, x, y)


def _base(rng):
    """Scores shared by every bound: random, optimal Gaussian critic, with -inf, N = 2, large."""
    s = rng.standard_normal((5, 5))
    g = _gauss_critic(rng)
    d = _discrete_critic(rng)
    return s, g, d


def _pooled(name):
    """Cases of a bound without options beyond axis and check_finite."""

    def provider(rng):
        s, g, d = _base(rng)
        out = [
            Case("random 5x5", (s,)),
            Case("optimal critic of a correlated Gaussian", (g,)),
            Case("axis=0 (rows are y)", (s,), {"axis": 0}),
            Case("N = 2", (s[:2, :2],), kind="edge"),
            Case("critic -inf off the support (discrete table)", (d,), {"check_finite": False},
                 kind="edge", fd=False, note=_INF_NOTE),
        ]
        if name in ("mi.nwj",):
            out.append(Case("scores of magnitude 60", (60.0 * np.tanh(s),), kind="edge", fd=False,
                            note="e^59 terms: 1e25, within float32"))
        else:
            out.append(Case("scores of magnitude 1e3", (1e3 * np.tanh(s),), kind="edge", fd=False))
        return out

    return provider


def _infonce(rng):
    out = _pooled("mi.infonce")(rng)
    s = rng.standard_normal((4, 4))
    out.append(Case("N = 1", (s[:1, :1],), kind="edge"))
    out.append(Case("a perfect critic (log N)", (np.diag(np.full(4, 40.0)),), kind="edge"))
    return out


def _tuba(rng):
    s, g, d = _base(rng)
    lb = rng.standard_normal(5)
    return [
        Case("random, scalar baseline", (s, 0.3)),
        Case("random, one baseline per sample", (s, lb)),
        Case("random, 0-d array baseline", (s, np.asarray(-0.4))),
        Case("per-sample baseline, axis=0 (per y)", (s, lb), {"axis": 0}),
        Case("optimal critic, baseline a = 1", (g, 0.0)),
        Case("N = 2", (s[:2, :2], lb[:2]), kind="edge"),
        Case("critic -inf off the support", (d, lb), {"check_finite": False}, kind="edge", fd=False,
             note=_INF_NOTE),
        Case("scores and baseline of magnitude 40", (40.0 * np.tanh(s), 40.0 * np.tanh(lb)),
             kind="edge", fd=False),
    ]


def _mine(rng):
    s, g, d = _base(rng)
    off = ~np.eye(5, dtype=bool)

    def lme(m):
        v = m[off]
        mx = v.max()
        return float(mx + np.log(np.mean(np.exp(v - mx))))

    return [
        Case("moving average = the batch mean (DV's gradient)", (s, lme(s))),
        Case("moving average = E[e^f] = 1 at the optimal critic", (g, 0.0), fd=False,
             note=_GRAD_NOTE_MINE),
        Case("0-d array state, axis=0", (s, np.asarray(0.7)), {"axis": 0}, fd=False, note=_GRAD_NOTE_MINE),
        Case("N = 2", (s[:2, :2], 0.1), kind="edge", fd=False, note=_GRAD_NOTE_MINE),
        Case("scores of magnitude 1e3", (1e3 * np.tanh(s), lme(1e3 * np.tanh(s))), kind="edge", fd=False),
    ]


def _js(rng):
    s, g, d = _base(rng)
    return [
        Case("objective (value and gradient agree)", (s,), {"report": "objective"}),
        Case("optimal critic, objective", (g,), {"report": "objective"}),
        Case("reported MI (NWJ at 1 + f)", (s,), {"report": "mi"}, fd=False, note=_GRAD_NOTE_JS),
        Case("objective, axis=0", (s,), {"report": "objective", "axis": 0}),
        Case("N = 2, objective", (s[:2, :2],), {"report": "objective"}, kind="edge"),
        Case("critic -inf off the support", (d,), {"check_finite": False, "report": "objective"},
             kind="edge", fd=False, note=_INF_NOTE),
        Case("objective, scores of magnitude 1e3", (1e3 * np.tanh(s),), {"report": "objective"},
             kind="edge", fd=False),
    ]


def _interpolated(rng):
    s, g, d = _base(rng)
    lb = rng.standard_normal(5)
    return [
        Case("alpha 0.5, scalar baseline", (s, 0.2), {"alpha": 0.5}),
        Case("alpha 0.01, one baseline per sample", (s, lb), {"alpha": 0.01}),
        Case("alpha 0.99, 0-d array baseline", (s, np.asarray(0.1)), {"alpha": 0.99}),
        Case("per-sample baseline, axis=0 (per y)", (s, lb), {"alpha": 0.3, "axis": 0}),
        Case("optimal critic, alpha 0.5", (g, 0.0), {"alpha": 0.5}),
        Case("alpha 1 (InfoNCE over N - 1)", (s, lb), {"alpha": 1.0}, kind="edge"),
        Case("alpha 0 (TUBA)", (s, lb), {"alpha": 0.0}, kind="edge"),
        Case("N = 2", (s[:2, :2], lb[:2]), {"alpha": 0.5}, kind="edge"),
        Case("ties at the row maximum", (np.round(s), 0.0), {"alpha": 0.5}, kind="edge"),
        Case("scores of magnitude 1e3 (leave-one-out without cancellation)", (1e3 * np.tanh(s), lb),
             {"alpha": 0.5}, kind="edge", fd=False),
        Case("one entry 800 above its row", (np.where(np.eye(5, k=1) > 0, 800.0, s), 0.0),
             {"alpha": 0.5}, kind="edge", fd=False,
             note="the leave-one-out mean without the maximum is 800 nats below it"),
    ]


def _smile(rng):
    s, g, d = _base(rng)
    s3 = 3.0 * s
    # keep every entry at least 1e-3 from the clip points (the gradient has a kink there)
    s3 = np.where(np.abs(np.abs(s3) - 1.0) < 1e-3, s3 + 0.01, s3)
    return [
        Case("clip 1 (entries on both sides)", (s3,), {"clip": 1.0}),
        Case("clip 5", (s3,), {"clip": 5.0}),
        Case("clip inf (DV)", (s,), {"clip": float("inf")}),
        Case("optimal critic, clip 5, axis=0", (g,), {"clip": 5.0, "axis": 0}),
        Case("N = 2", (s3[:2, :2],), {"clip": 1.0}, kind="edge"),
        Case("critic -inf off the support", (d,), {"clip": 5.0, "check_finite": False}, kind="edge",
             fd=False, note=_INF_NOTE),
        Case("scores of magnitude 1e3", (1e3 * np.tanh(s),), {"clip": 20.0}, kind="edge", fd=False),
    ]


CASES = {
    "mi.infonce": _infonce,
    "mi.nwj": _pooled("mi.nwj"),
    "mi.tuba": _tuba,
    "mi.dv": _pooled("mi.dv"),
    "mi.mine": _mine,
    "mi.js": _js,
    "mi.interpolated": _interpolated,
    "mi.smile": _smile,
    "mi.loo_upper": _pooled("mi.loo_upper"),
}

__all__ = ["CASES"]
