"""The softmax cross-entropy objective on score rows, with its VJP.

For the logits of the negatives ``z (N, M)`` (entries outside the mask ``K`` are not
candidates; the positive's own entry must be outside ``K`` or absent) and the
positive logits ``pos (N,)``:

    l_i = log( e^{pos_i} + Σ_{j∈K_i} e^{z_ij} ) − pos_i

It is computed as ``l = (m − pos) + log1p(r + expm1(pos − m))`` with
``m = max(pos, max_K z)`` and ``r = Σ_K e^{z − m}``: when the positive is the
largest logit (``m = pos``) this is ``log1p(Σ_K e^{z − pos})``, exact to a few ulps
however small the loss, where ``LSE − pos`` would lose every digit below
``eps·|pos|`` (a loss of 1e-9 next to logits of 20 would keep about 6 digits).

VJP, for a cotangent ``g (N,)`` of ``l`` (``p`` = softmax over the candidates):

    ∂/∂z_ij = g_i p_ij  on K_i (0 elsewhere)
    ∂/∂pos_i = −g_i (1 − p_i⁺) = g_i expm1(−l_i)

the last form keeping full relative accuracy when ``p⁺ ≈ 1``.  Keeping the positive
out of the matrix is also what lets the losses compute it as an O(N·D) row-wise
similarity.  Derivation: ``docs/derivations.md``, section "The objective".
"""

from __future__ import annotations

import math
from typing import Any

Array = Any


def ce_rows(z: Array, pos: Array, mask: Array | None = None, *, axis: int = 1, xp):
    """Per-row (``axis=1``) or per-column (``axis=0``) InfoNCE terms and their VJP.

    Returns ``(l, back)`` with ``back(g) -> (dz, dpos)``; ``dz`` is 0 outside ``mask``.
    """
    zm = z if mask is None else xp.where(mask, z, xp.full_like(z, -math.inf))
    posk = xp.expand_dims(pos, axis=axis)
    m = xp.maximum(xp.max(zm, axis=axis, keepdims=True), posk) if z.shape[axis] else posk
    r = xp.sum(xp.exp(zm - m), axis=axis, keepdims=True)
    c = xp.log1p(r + xp.expm1(posk - m))  # lse − m, >= 0
    l = xp.squeeze((m - posk) + c, axis=axis)

    def back(g):
        gk = xp.expand_dims(g, axis=axis)
        # p = e^{z − lse} = e^{(z − m) − c}: the exponent is <= 0 exactly, whatever |z|
        p = xp.exp((zm - m) - c)  # 0 outside the mask
        return p * gk, g * xp.expm1(-l)

    return l, back


def temperature_grad(dz: Array, z: Array, dpos: Array, pos: Array, tau: Array, *, xp) -> Array:
    r"""``∂/∂τ`` of a loss of ``z = s/τ`` and ``pos = s⁺/τ``: ``−(Σ dz∘z + Σ dpos∘pos)/τ``.

    ``z`` must be finite (pass the logits before masking; ``dz`` is 0 where masked).
    """
    return -(xp.sum(dz * z) + xp.sum(dpos * pos)) / tau
