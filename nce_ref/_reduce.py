"""Reductions of per-sample terms, with their VJPs (one place for every loss)."""

from __future__ import annotations

from typing import Any

from ._array import check_option

Array = Any

REDUCTIONS = ("mean", "sum", "none")

__all__ = ["REDUCTIONS", "check_reduction", "reduce_fwd"]


def check_reduction(reduction: str, allowed: tuple[str, ...] = REDUCTIONS) -> str:
    return check_option(reduction, "reduction", allowed)


def reduce_fwd(per: Array, reduction: str, *, xp):
    """Reduce the 1-D per-sample terms ``per``; return ``(value, back)``.

    ``back(g)`` maps the cotangent of the value to the cotangent of ``per``:
    ``mean``: ``g / n`` in every entry; ``sum``: ``g``; ``none``: ``g`` itself.
    """
    n = per.shape[0]
    if reduction == "none":
        return per, lambda g: g
    if reduction == "sum":
        return xp.sum(per), lambda g: xp.broadcast_to(g, per.shape) * xp.ones_like(per)
    # mean
    return xp.sum(per) / float(n), lambda g: xp.broadcast_to(g / float(n), per.shape) * xp.ones_like(per)
