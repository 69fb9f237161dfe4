"""The softmax cross-entropy objective on score rows, with its VJP.

For logits ``z (N, M)``, a mask ``K`` of kept entries and positive logits ``pos (N,)``:

    l_i = log Σ_{j∈K_i} exp(z_ij) − pos_i

VJP, for a cotangent ``g (N,)`` of ``l``:

    ∂/∂z_ij = g_i p_ij,   p_ij = exp(z_ij − lse_i) on K_i (0 elsewhere)
    ∂/∂pos_i = −g_i

The positive logit is passed separately so that the losses keep it out of the
N x N passes (it is an O(N·D) row-wise similarity); when it also sits inside the
denominator, it is an entry of ``z`` and gets its softmax share through ``z``.
"""

from __future__ import annotations

from typing import Any

from .._ops import logsumexp, softmax_from_lse

Array = Any


def ce_rows(z: Array, pos: Array, mask: Array | None = None, *, axis: int = 1, xp):
    """Per-row (``axis=1``) or per-column (``axis=0``) InfoNCE terms and their VJP.

    Returns ``(l, back)`` with ``back(g) -> (dz, dpos)``.
    """
    lse = logsumexp(z, mask, axis=axis, keepdims=True, xp=xp)
    l = xp.squeeze(lse, axis=axis) - pos

    def back(g):
        gk = xp.expand_dims(g, axis=axis)
        p = softmax_from_lse(z, lse, mask, xp=xp)
        return p * gk, -g

    return l, back


def temperature_grad(dz: Array, z: Array, dpos: Array, pos: Array, tau: Array, *, xp) -> Array:
    r"""``∂/∂τ`` of a loss of ``z = s/τ`` and ``pos = s⁺/τ``: ``−(Σ dz∘z + Σ dpos∘pos)/τ``."""
    return -(xp.sum(dz * z) + xp.sum(dpos * pos)) / tau
