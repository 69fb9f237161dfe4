"""mpmath helpers for the oracles (50 significant digits).

Every oracle is wrapped by :func:`oracle`: it runs under ``mp.workdps(50)`` (the
process-wide precision is left as it was) and is memoized by the content of its
arguments, so that the backends compared on one case and dtype share one oracle
evaluation.
"""

from __future__ import annotations

import functools

import numpy as np

from .._tolerances import ContentCache, content_key

try:
    import mpmath as mp
except ImportError as exc:  # pragma: no cover - mpmath is in the `test` extra
    raise ImportError("the oracles need mpmath: pip install 'nce-ref[test]'") from exc

#: significant digits of every oracle evaluation
DPS = 50

__all__ = ["DPS", "mp", "oracle", "to_mp", "to_f64", "lse", "sim", "reduce"]


def _copy(out):
    return out.copy() if isinstance(out, np.ndarray) else out


def oracle(fn):
    """Run ``fn`` with :data:`DPS` digits and memoize it by its arguments' content.

    The key is :func:`~nce_ref.testing._tolerances.content_key` of the positional and
    keyword arguments (arrays by dtype, shape and bytes): the oracles are fed the
    inputs rounded to the tested dtype, so the key holds the case and the dtype and
    never the backend.  Results are returned as copies; arguments without a content
    key are evaluated without caching.  ``fn.cache`` exposes the cache (hits, misses,
    ``clear()``).
    """
    cache = ContentCache()

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            key = (content_key(args), content_key(kwargs))
        except TypeError:
            key = None
        if key is not None:
            hit, out = cache.get(key)
            if hit:
                return _copy(out)
        with mp.workdps(DPS):
            out = fn(*args, **kwargs)
        if key is not None:
            cache.put(key, _copy(out))
        return out

    wrapper.cache = cache
    return wrapper


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
