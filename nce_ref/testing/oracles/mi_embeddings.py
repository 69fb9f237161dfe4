"""Oracle for ``nce_ref.mi.bound_from_embeddings``: the similarity in mpmath, then the bound's oracle.

The scores ``sim(x_i, y_j)/τ`` are computed with 50 digits and rounded once to
float64 (half an ulp each), then handed to the bound's own oracle (``mi.py``).
"""

from __future__ import annotations

import numpy as np

from ._mp import mp, oracle, sim, to_mp
from .mi import ORACLES as _BOUND_ORACLES


@oracle
def bound_from_embeddings(x, y, log_baseline=None, *, bound="infonce", similarity="dot",
                          temperature=1.0, clip=None, report=None, log_moving_average=None,
                          alpha=None, axis=1, eps=1e-12, **_):
    X, Y = to_mp(x), to_mp(y)
    t = mp.mpf(float(temperature))
    s = np.array([[float(sim(a, b, similarity, eps) / t) for b in Y] for a in X], dtype=np.float64)
    f = _BOUND_ORACLES[f"mi.{bound}"]
    if bound == "tuba":
        return f(s, 0.0 if log_baseline is None else log_baseline, axis=axis)
    if bound == "interpolated":
        return f(s, 0.0 if log_baseline is None else log_baseline, alpha=alpha, axis=axis)
    if bound == "mine":
        return f(s, log_moving_average, axis=axis)
    if bound == "smile":
        return f(s, clip=clip, axis=axis)
    if bound == "js":
        return f(s, report="mi" if report is None else report, axis=axis)
    return f(s, axis=axis)


ORACLES = {"mi.bound_from_embeddings": bound_from_embeddings}

__all__ = ["ORACLES"]
