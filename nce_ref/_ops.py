"""Stable primitives, each with its vector-Jacobian product (VJP).

All functions take a required keyword-only ``xp`` (the Array API namespace) and use
only functions of the standard.  ``mask`` is a boolean array broadcastable to ``x``
marking the entries that are *kept*; the maximum used for the shift is taken over
kept entries only, so a masked-out huge entry can neither overflow nor underflow
the kept ones.  A reduction over an empty kept set is defined: ``logsumexp`` gives
``-inf`` and its gradient is zero (never NaN).

Derivations: ``docs/derivations.md`` section "Primitives".
"""

from __future__ import annotations

import math
from typing import Any

Array = Any

__all__ = [
    "logsumexp",
    "softmax_from_lse",
    "log_mean_exp",
    "softplus",
    "sigmoid",
    "flush_subnormals",
    "flush_below",
]


def _masked(x, mask, fill, *, xp):
    if mask is None:
        return x
    return xp.where(mask, x, xp.asarray(fill, dtype=x.dtype, device=_dev(x)))


def _dev(x):
    from array_api_compat import device

    return device(x)


def logsumexp(x: Array, mask: Array | None = None, *, axis: int = -1,
              keepdims: bool = False, xp) -> Array:
    r"""``log Σ_{j kept} exp(x_j)`` along ``axis``.

    ``m = max_{j kept} x_j``; ``lse = m + log Σ_{j kept} exp(x_j − m)``.  Rows with no
    kept entry (or only ``-inf`` entries) give ``-inf``.
    """
    xm = _masked(x, mask, -math.inf, xp=xp)
    m = xp.max(xm, axis=axis, keepdims=True)
    finite_m = xp.isfinite(m)
    m_safe = xp.where(finite_m, m, xp.zeros_like(m))
    e = xp.exp(xm - m_safe)  # masked entries are exp(-inf) = 0
    s = xp.sum(e, axis=axis, keepdims=True)
    pos = s > 0
    out = xp.where(pos, m_safe + xp.log(xp.where(pos, s, xp.ones_like(s))),
                   xp.full_like(s, -math.inf))
    # an entry of +inf among the kept ones: the sum is +inf
    out = xp.where(m == math.inf, m, out)
    if not keepdims:
        out = xp.squeeze(out, axis=axis)
    return out


def softmax_from_lse(x: Array, lse_keep: Array, mask: Array | None = None, *, xp) -> Array:
    r"""``p_j = exp(x_j − lse)`` on kept entries, 0 elsewhere; ``lse`` has kept dims.

    This is the VJP of :func:`logsumexp`: ``∂ lse / ∂ x_j = p_j``.  Rows whose
    ``lse`` is ``-inf`` (nothing kept) get ``p = 0``.
    """
    ok = xp.isfinite(lse_keep)
    shift = xp.where(ok, lse_keep, xp.zeros_like(lse_keep))
    p = xp.exp(_masked(x, mask, -math.inf, xp=xp) - shift)
    return xp.where(ok, p, xp.zeros_like(p))


def log_mean_exp(x: Array, mask: Array | None = None, *, axis: int = -1,
                 keepdims: bool = False, xp) -> Array:
    r"""``log( (1/|K|) Σ_{j∈K} exp(x_j) )`` over the kept set ``K``.

    Its VJP is the same softmax as :func:`logsumexp` (the ``−log|K|`` is a constant).
    An empty kept set gives ``-inf``.
    """
    lse = logsumexp(x, mask, axis=axis, keepdims=keepdims, xp=xp)
    if mask is None:
        count = float(x.shape[axis])
        return lse - math.log(count) if count > 0 else lse
    m = xp.astype(xp.broadcast_to(mask, x.shape), x.dtype)
    cnt = xp.sum(m, axis=axis, keepdims=keepdims)
    safe = xp.where(cnt > 0, cnt, xp.ones_like(cnt))
    return xp.where(cnt > 0, lse - xp.log(safe), xp.full_like(lse, -math.inf))


def softplus(x: Array, *, xp) -> Array:
    r"""``log(1 + e^x) = max(x, 0) + log1p(e^{−|x|})``, exact for every finite ``x``."""
    return xp.maximum(x, xp.zeros_like(x)) + xp.log1p(xp.exp(-xp.abs(x)))


def sigmoid(x: Array, *, xp) -> Array:
    r"""``σ(x) = 1 / (1 + e^{−x})``, the derivative of :func:`softplus`, without overflow."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def flush_subnormals(p: Array, *, xp) -> Array:
    """Replace subnormal entries of a probability matrix by zero.

    Subnormal operands make GEMMs many times slower on x86 CPUs.  A probability below
    the dtype's ``smallest_normal`` changes a gradient ``Σ_j p_ij b_j`` by at most
    ``smallest_normal · Σ_j |b_j|``, far below the rounding of the sum whenever the
    row holds an entry of order 1 (a softmax row always does: its largest entry is
    at least ``1/M``).
    """
    tiny = xp.finfo(p.dtype).smallest_normal
    return xp.where(xp.abs(p) < tiny, xp.zeros_like(p), p)


def flush_below(e: Array, threshold: Array | float, *, xp) -> Array:
    """``e`` with the entries below ``threshold`` (broadcast) set to 0; ``e >= 0`` expected."""
    return xp.where(e < threshold, xp.zeros_like(e), e)
