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
    "softplus_and_sigmoid",
    "softplus_and_sigmoid_of_exp",
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


def _exp_neg_abs(x: Array, *, xp) -> Array:
    """``e^{−|x|}``, in ``(0, 1]`` for finite ``x``: never overflows."""
    return xp.exp(-xp.abs(x))


def _softplus_from(x: Array, e: Array, *, xp) -> Array:
    # log(1 + e^x) = max(x, 0) + log1p(e^{−|x|}): for x >= 0, x + log(1 + e^{−x})
    return xp.maximum(x, xp.zeros_like(x)) + xp.log1p(e)


def _sigmoid_from(x: Array, e: Array, *, xp) -> Array:
    # σ(x) = 1/(1 + e) for x >= 0, e/(1 + e) for x < 0 (e = e^{−|x|} = e^x there)
    return xp.where(x >= 0, xp.ones_like(e), e) / (1.0 + e)


def softplus(x: Array, *, xp) -> Array:
    r"""``log(1 + e^x) = max(x, 0) + log1p(e^{−|x|})``, exact for every finite ``x``."""
    return _softplus_from(x, _exp_neg_abs(x, xp=xp), xp=xp)


def sigmoid(x: Array, *, xp) -> Array:
    r"""``σ(x) = 1 / (1 + e^{−x})``, the derivative of :func:`softplus`, without overflow."""
    return _sigmoid_from(x, _exp_neg_abs(x, xp=xp), xp=xp)


def softplus_and_sigmoid(x: Array, *, overwrite: bool = False, xp) -> tuple[Array, Array]:
    r"""``(softplus(x), σ(x))`` from one ``e = e^{−|x|}``.

    The formulas of :func:`softplus` and :func:`sigmoid`, bit for bit, for one ``exp``
    instead of two.  ``overwrite=True`` declares ``x`` a buffer of the caller's: on a
    writable NumPy array the softplus is written into ``x`` and the sigmoid into the
    one new buffer (``out=``, one scratch buffer; ``nce_ref._stream._numpy``); elsewhere
    it is ignored.

    Examples
    --------
    >>> import numpy as np
    >>> sp, sg = softplus_and_sigmoid(np.array([-800.0, 0.0, 800.0]), xp=np)
    >>> sp.tolist(), sg.tolist()
    ([0.0, 0.6931471805599453, 800.0], [0.0, 0.5, 1.0])
    """
    if overwrite:
        from ._stream._numpy import np_owns, np_softplus_and_sigmoid  # (the engine imports this module)

        if np_owns(x, xp):
            return np_softplus_and_sigmoid(x)
    e = _exp_neg_abs(x, xp=xp)
    return _softplus_from(x, e, xp=xp), _sigmoid_from(x, e, xp=xp)


def softplus_and_sigmoid_of_exp(ex: Array, *, softplus: bool = True, sigmoid: bool = True,
                                overwrite: bool = False, xp) -> tuple[Array | None, Array | None]:
    r"""``(softplus(x), σ(x)) = (log1p(E), E/(1 + E))`` from ``E = e^x``, computed by the caller.

    For callers that need ``e^x`` anyway and know ``|x|`` bounded well inside the
    dtype's exponent range (``E`` finite and normal), both keep full relative accuracy
    with no ``exp`` of their own.  ``E = 0`` (``x = −inf``, a masked entry) gives 0
    and 0.  ``softplus=False`` or ``sigmoid=False`` skips one (``None`` in its place).
    ``overwrite=True`` on a writable NumPy ``E``: the sigmoid is written into ``E``,
    with one scratch buffer.
    """
    sp = xp.log1p(ex) if softplus else None
    if not sigmoid:
        return sp, None
    if overwrite:
        from ._stream._numpy import np_owns, np_sigmoid_of_exp  # (the engine imports this module)

        if np_owns(ex, xp):
            return sp, np_sigmoid_of_exp(ex)
    return sp, ex / (1.0 + ex)


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
