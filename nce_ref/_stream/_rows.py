"""Per-row terms of the streamed objectives from a block's sums, shared by the generic
kernels (:mod:`.ce`, :mod:`.supcon`) and their NumPy specialisations (:mod:`._numpy`).

- :func:`unshifted_terms`, :func:`lse_terms`: InfoNCE's ``l_i`` from the row sums of
  ``e^z`` (unshifted) or from a shift and its shifted sum (``ce_stream``,
  ``ce_stream_symmetric``);
- :func:`supcon_rows`, :func:`supcon_factors`, :func:`flush_threshold`: SupCon's terms
  and the row factors of its gradient block (``supcon_stream``, ``supcon_stream_groups``).

Only the Array API standard's functions: every function takes ``xp``.
"""

from __future__ import annotations

__all__ = ["unshifted_terms", "lse_terms", "supcon_rows", "supcon_factors", "flush_threshold"]


def unshifted_terms(r, pb, xp):
    """``(l, denom)`` of rows summed unshifted, ``r = Σ_neg e^z``: when ``|z| <= L`` with
    ``2L + log(cols)`` below log(max float) no shift is needed, and
    ``l = log(1 + Σ_neg e^{z − pos}) = log1p(r e^{−pos})`` keeps full relative accuracy."""
    ep = xp.exp(pb)
    return xp.log1p(r / ep), r + ep


def lse_terms(m, r, pos, xp):
    """``(l, lse)`` of the rows (or columns) from their shift ``m`` and sum ``r``."""
    dlt = pos - m
    c = xp.log1p(r + xp.expm1(dlt))  # lse − m >= 0
    return c - dlt, m + c


# -- SupCon: rows with a block-local positive mask ------------------------------------------
#
# For anchor rows ``[r0, r1)`` of ``z = a bᵀ`` and the boolean ``P`` (the anchors'
# positives, the anchor's own column excluded), with the other columns but the anchor's own
# as the negatives ``N``: ``e = exp(z − h)`` with the shift ``h = hP`` on P and ``hN`` on N
# (the max over P and over N; 0 with a ``bound``), ``sP = Σ_P e``, ``sN = Σ_N e``, so that
# ``LSE_P = hP + log sP``, ``LSE_N = hN + log sN`` each keep their own maximum, and
#
#     t  = LSE_K − LSE_P = log(1 + e^{hN − hP} sN/sP),   p⁻ = 1 − e^{−t} (the negatives' share)
#     in:       l = t + log n,                 dz = w p⁻ e (N/sN − P/sP)
#     out:      l = t + (LSE_P − mean_P z),    dz = w (e^{z − LSE_K} − P/n)
#     per_pair: l = Σ_P softplus(LSE_N − z),   dz = w (e N Σ_P σ / sN − σ(LSE_N − z) P)
#
# (derivation: docs/supcon_triplet.md, "Streaming").  ``dz = diag(scale) E`` with the row
# factor applied after the first gradient GEMM and to the rows of ``a`` before the second.

def supcon_rows(positives: str, npos, s_p, s_n, h_p, h_n, zsum, xp):
    """Per-row terms from the block's sums; returns ``(l, has, t, lse_n, s_p_safe, nps)``.

    ``h_p``/``h_n`` are the shifts of ``e`` on P and N (None: unshifted); ``zsum = Σ_P z``
    (``"out"`` only); ``t = LSE_K − LSE_P`` (0 without negatives), ``lse_n = LSE_N``.
    """
    has = npos > 0
    has_n = s_n > 0
    one = xp.ones_like(s_p)
    sps = xp.where(has, s_p, one)
    sns = xp.where(has_n, s_n, one)
    nps = xp.where(has, npos, one)
    q = sns / sps
    if h_p is None:
        t = xp.log1p(q)
        lse_n = xp.log(sns)
    else:
        # t = log(1 + q e^d), d = h_N − h_P: log1p(q e^d) for d <= 0 (q <= C: no overflow),
        # d + log(q + e^{−d}) above (q >= 1/C: no underflow)
        zero = xp.zeros_like(q)
        d = h_n - h_p
        dm, dp = xp.minimum(d, zero), xp.maximum(d, zero)
        t = xp.where(d <= 0, xp.log1p(q * xp.exp(dm)), dp + xp.log(q + xp.exp(-dp)))
        lse_n = h_n + xp.log(sns)
    t = xp.where(has & has_n, t, xp.zeros_like(t))
    if positives == "per_pair":
        return None, has, t, lse_n, sps, nps  # its terms need the logits (supcon._supcon_block)
    if positives == "in":
        l = t + xp.log(nps)
    else:
        # LSE_P − mean_P = (h_P − mean_P) + log sP >= log n: no cancellation with t; exactly 0
        # for a single positive (with a shift), and set so without one
        j = -zsum / nps if h_p is None else h_p - zsum / nps
        j = j + xp.log(sps)
        l = t + xp.where(npos > 1.5, j, xp.zeros_like(j))
    return xp.where(has, l, xp.zeros_like(l)), has, t, lse_n, sps, nps


def supcon_factors(positives: str, w, has, t, sps, s_n, nps, shift_free: bool, xp):
    """Row factors of the gradient block: ``(scale, on_p, on_n, minus_p)`` such that
    ``dz = diag(scale) (e ∘ (on_p P + on_n N) − minus_p P)``; ``on_p = on_n = None`` means
    ``e`` itself, ``minus_p = None`` no linear part.  ``p⁻ = 1 − e^{−t}`` is the negatives'
    share of the softmax over K, ``p⁺ = e^{−t}`` the positives'."""
    w = xp.where(has, w, xp.zeros_like(w))
    sns = xp.where(s_n > 0, s_n, xp.ones_like(s_n))
    if positives == "in":  # w p⁻ e (N/sN − P/sP)
        return -w * xp.expm1(-t), -1.0 / sps, 1.0 / sns, None
    if shift_free:  # p^K = e / S with S = sP + sN: dz = (w/S)(e − P S/n)
        s = sps + s_n
        return w / s, None, None, s / nps
    # p^K = e p⁺/sP on P and e p⁻/sN on N
    return w, xp.exp(-t) / sps, -xp.expm1(-t) / sns, 1.0 / nps


def flush_threshold(scale, on_p, on_n, xp):
    """Per-row bound below which ``e`` gives a subnormal ``|dz|`` (then flushed to 0)."""
    tiny = xp.finfo(scale.dtype).smallest_normal
    mult = xp.abs(scale)
    if on_p is not None:
        mult = mult * xp.maximum(xp.abs(on_p), xp.abs(on_n))
    elif on_n is not None:
        mult = mult * xp.abs(on_n)
    return tiny / xp.maximum(mult, xp.full_like(mult, tiny))
