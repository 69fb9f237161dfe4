"""Oracles for the MI bounds (``nce_ref.mi.*``): the papers' formulas, term by term, in mpmath.

Written naively from the definitions (Poole et al. 2019; Song & Ermon 2020), with
explicit loops over the off-diagonal pairs and no shared code with the kernels.
"""

from __future__ import annotations

import numpy as np

from ._mp import lse, mp, oracle, to_f64, to_mp


def _matrix(scores, axis):
    s = to_mp(scores)
    if axis in (0, -2):  # rows are y: read the transpose
        n = len(s)
        s = [[s[j][i] for j in range(n)] for i in range(n)]
    return s


def _baseline(log_baseline, n):
    b = np.asarray(log_baseline, dtype=np.float64)
    if b.ndim == 0:
        return [mp.mpf(float(b))] * n
    return [mp.mpf(float(v)) for v in b]


def _mean(values):
    values = list(values)
    return mp.fsum(values) / len(values)


def _off(n):
    return [(i, j) for i in range(n) for j in range(n) if i != j]


@oracle
def infonce(scores, *, axis=1, **_):
    s = _matrix(scores, axis)
    n = len(s)
    loss = _mean(lse(s[i]) - s[i][i] for i in range(n))
    return to_f64(mp.log(n) - loss)


@oracle
def tuba(scores, log_baseline=0.0, *, axis=1, **_):
    s = _matrix(scores, axis)
    n = len(s)
    b = _baseline(log_baseline, n)
    joint = _mean(s[i][i] - b[i] for i in range(n))
    marg = _mean(mp.exp(s[i][j] - b[i]) for i, j in _off(n))
    return to_f64(1 + joint - marg)


@oracle
def nwj(scores, *, axis=1, **_):
    s = _matrix(scores, axis)
    n = len(s)
    return to_f64(_mean(s[i][i] for i in range(n)) - _mean(mp.exp(s[i][j] - 1) for i, j in _off(n)))


@oracle
def dv(scores, *, axis=1, **_):
    s = _matrix(scores, axis)
    n = len(s)
    return to_f64(_mean(s[i][i] for i in range(n)) - mp.log(_mean(mp.exp(s[i][j]) for i, j in _off(n))))


@oracle
def mine(scores, log_moving_average=None, *, axis=1, **_):
    return dv(scores, axis=axis)  # the value is DV's; only the gradient differs


@oracle
def js(scores, *, report="mi", axis=1, **_):
    s = _matrix(scores, axis)
    n = len(s)
    if report == "mi":  # NWJ at 1 + f
        return to_f64(_mean(1 + s[i][i] for i in range(n)) - _mean(mp.exp(s[i][j]) for i, j in _off(n)))
    joint = _mean(-mp.log(1 + mp.exp(-s[i][i])) for i in range(n))
    marg = _mean(mp.log(1 + mp.exp(s[i][j])) for i, j in _off(n))
    return to_f64(joint - marg)


@oracle
def interpolated(scores, log_baseline=0.0, *, alpha, axis=1, **_):
    s = _matrix(scores, axis)
    n = len(s)
    b = _baseline(log_baseline, n)
    a = mp.mpf(float(alpha))

    def base(i, k):  # log(α · mean_{j≠k} e^{s_ij} + (1 − α) e^{b_i})
        m = _mean(mp.exp(s[i][j]) for j in range(n) if j != k)
        return mp.log(a * m + (1 - a) * mp.exp(b[i]))

    joint = _mean(s[i][i] - base(i, k) for i, k in _off(n))
    marg = _mean(mp.exp(s[i][j] - base(i, i)) for i, j in _off(n))
    return to_f64(1 + joint - marg)


@oracle
def smile(scores, *, clip, axis=1, **_):
    s = _matrix(scores, axis)
    n = len(s)
    t = mp.mpf(float(clip)) if np.isfinite(clip) else mp.inf
    clipped = [min(max(s[i][j], -t), t) for i, j in _off(n)]
    return to_f64(_mean(s[i][i] for i in range(n)) - mp.log(_mean(mp.exp(c) for c in clipped)))


@oracle
def loo_upper(scores, *, axis=1, **_):
    s = _matrix(scores, axis)
    n = len(s)
    return to_f64(_mean(s[i][i] - mp.log(_mean(mp.exp(s[i][j]) for j in range(n) if j != i))
                        for i in range(n)))


ORACLES = {
    "mi.infonce": infonce,
    "mi.tuba": tuba,
    "mi.nwj": nwj,
    "mi.dv": dv,
    "mi.mine": mine,
    "mi.js": js,
    "mi.interpolated": interpolated,
    "mi.smile": smile,
    "mi.loo_upper": loo_upper,
}

__all__ = ["ORACLES"]
