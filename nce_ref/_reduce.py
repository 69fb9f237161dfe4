"""Reductions of per-sample terms, with their VJPs (one place for every loss)."""

from __future__ import annotations

from typing import Any

from ._array import check_option

Array = Any

REDUCTIONS = ("mean", "sum", "none")
#: the reductions of the triplet losses: ``"mean_nonzero"`` averages the positive terms only
REDUCTIONS_NONZERO = REDUCTIONS + ("mean_nonzero",)
#: the reductions of the losses whose anchors hold several pair or triplet terms:
#: ``"per_anchor"`` is pytorch-metric-learning's ``PerAnchorReducer(AvgNonZeroReducer())``
REDUCTIONS_PER_ANCHOR = REDUCTIONS_NONZERO + ("per_anchor",)

__all__ = ["REDUCTIONS", "REDUCTIONS_NONZERO", "REDUCTIONS_PER_ANCHOR", "check_reduction",
           "reduce_fwd", "mean_over_fwd", "per_anchor_fwd"]


def check_reduction(reduction: str, allowed: tuple[str, ...] = REDUCTIONS) -> str:
    return check_option(reduction, "reduction", allowed)


def reduce_fwd(per: Array, reduction: str, *, xp):
    """Reduce the 1-D per-sample terms ``per``; return ``(value, back)``.

    ``back(g)`` maps the cotangent of the value to the cotangent of ``per``:
    ``mean``: ``g / n`` in every entry; ``sum``: ``g``; ``none``: ``g`` itself;
    ``mean_nonzero`` (terms ``>= 0``): :func:`mean_over_fwd` with a count of 1 per
    positive term, so ``Σ per / #{per > 0}`` (pytorch-metric-learning's
    ``AvgNonZeroReducer``), 0 when no term is positive.
    """
    n = per.shape[0]
    if reduction == "none":
        return per, lambda g: g
    if reduction == "sum":
        return xp.sum(per), lambda g: xp.broadcast_to(g, per.shape) * xp.ones_like(per)
    if reduction == "mean_nonzero":
        return mean_over_fwd(per, xp.astype(per > 0, per.dtype), xp=xp)
    # mean
    return xp.sum(per) / float(n), lambda g: xp.broadcast_to(g / float(n), per.shape) * xp.ones_like(per)


def mean_over_fwd(per: Array, count: Array, *, xp):
    """``Σ per / Σ count`` and its VJP; 0 (with zero gradient) when ``Σ count = 0``.

    ``count`` (same shape as ``per``, floating, piecewise constant in the inputs)
    says how many terms each entry of ``per`` stands for: 1/0 to average over a
    subset (anchors with a positive, positive terms), or the number of pairs or
    triplets an entry sums.  The caller guarantees ``per = 0`` wherever
    ``count = 0``.  ``back(g) = g / Σ count`` in every entry.
    """
    total = xp.sum(count)
    some = total > 0
    safe = xp.where(some, total, xp.ones_like(total))
    value = xp.where(some, xp.sum(per) / safe, xp.zeros_like(total))

    def back(g):
        scale = xp.where(some, g / safe, xp.zeros_like(safe))
        return xp.broadcast_to(scale, per.shape) * xp.ones_like(per)

    return value, back


def per_anchor_fwd(per: Array, count: Array, *, xp):
    """The per-anchor mean, then the mean over the anchors whose mean is positive.

    ``per`` (shape (N,)) holds each anchor's sum of its terms and ``count`` (same
    shape, floating, piecewise constant) how many terms it sums.  With
    ``v_i = per_i / count_i`` (0 when ``count_i = 0``) the value is
    ``Σ_{v_i > 0} v_i / #{i : v_i > 0}``, 0 when no ``v_i`` is positive
    (pytorch-metric-learning's ``PerAnchorReducer(AvgNonZeroReducer())``).  The terms
    are ``>= 0``.  ``back(g) = g [v_i > 0] / (K count_i)`` with ``K = #{v_i > 0}``.
    """
    has = count > 0
    safe = xp.where(has, count, xp.ones_like(count))
    v = xp.where(has, per / safe, xp.zeros_like(per))
    value, back_v = mean_over_fwd(v, xp.astype(v > 0, v.dtype), xp=xp)

    def back(g):
        return xp.where(v > 0, back_v(g) / safe, xp.zeros_like(v))

    return value, back
