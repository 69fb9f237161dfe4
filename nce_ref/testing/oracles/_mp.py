"""mpmath helpers for the oracles (50 significant digits)."""

from __future__ import annotations

import numpy as np

try:
    import mpmath as mp
except ImportError as exc:  # pragma: no cover - mpmath is in the `test` extra
    raise ImportError("the oracles need mpmath: pip install 'nce-ref[test]'") from exc

mp.mp.dps = 50

__all__ = ["mp", "to_mp", "to_f64", "lse", "sim", "reduce"]


def to_mp(a):
    """NumPy array (or float) -> nested lists of mpf (exact conversion of the float64 values)."""
    if isinstance(a, (float, int)):
        return mp.mpf(float(a))
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        return mp.mpf(float(a))
    return [to_mp(x) for x in a]


def to_f64(x):
    if isinstance(x, list):
        return np.array([float(v) for v in x], dtype=np.float64)
    return np.asarray(float(x), dtype=np.float64)


def lse(values):
    values = list(values)
    if not values:
        return mp.mpf("-inf")
    m = max(values)
    return m + mp.log(mp.fsum(mp.exp(v - m) for v in values))


def _norm(v):
    return mp.sqrt(mp.fsum(x * x for x in v))


def sim(a, b, kind, eps=1e-12):
    """Similarity of two mp vectors, by the textbook definitions."""
    if kind == "dot":
        return mp.fsum(x * y for x, y in zip(a, b))
    if kind == "cosine":
        na, nb = max(_norm(a), mp.mpf(eps)), max(_norm(b), mp.mpf(eps))
        return mp.fsum((x / na) * (y / nb) for x, y in zip(a, b))
    d2 = mp.fsum((x - y) ** 2 for x, y in zip(a, b))
    if kind == "neg_sq_euclidean":
        return -d2
    if kind == "neg_euclidean":
        return -mp.sqrt(d2)
    raise ValueError(kind)


def reduce(per, reduction):
    if reduction == "none":
        return to_f64(per)
    s = mp.fsum(per)
    return to_f64(s if reduction == "sum" else s / len(per))
