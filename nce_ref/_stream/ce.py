"""InfoNCE's and CLIP's streamed kernels over a bilinear score matrix.

Callers: ``losses.infonce`` (``info_nce``, ``nt_xent``: :func:`ce_stream`; ``info_nce``
with ``symmetric=True``: :func:`ce_stream_symmetric`) and ``mi.bound_from_embeddings``
(the InfoNCE bound, through ``info_nce``).

For logits that are a product ``z = a bᵀ`` (``a (R, K)``, ``b (C, K)``; the
similarity and ``1/τ`` are folded into the operands, O((R + C)·K) work), the
per-row terms of ``_objective.ce_rows``

    l_i = (m_i − pos_i) + log1p(r_i + expm1(pos_i − m_i)),
    m_i = max(pos_i, max_{j kept} z_ij),   r_i = Σ_{j kept} e^{z_ij − m_i}

and, when the per-row cotangent ``w`` is known up front, the gradient

    dz_ij = w_i p_ij,   da = dz b,   db = dzᵀ a,   dpos_i = w_i expm1(−l_i),
    Σ_ij dz_ij z_ij = Σ_i ⟨a_i, da_i⟩            (the temperature's O(N·K) identity)

are computed over blocks of rows, so that no R x C array is ever held: the peak
extra memory is two block x C buffers.  Forward plus backward costs exactly the
three GEMMs ``a_blk bᵀ``, ``dz_blk b`` and ``dz_blkᵀ a_blk`` plus four
elementwise passes over each block (max, shift, exp, sum; and the scaling of the
probabilities).  Excluded entries (the positive itself, a view's self-similarity)
are the diagonals ``j = i + off`` of ``bands``; they are set to ``-inf`` on the
small square sub-block that holds them before the row maximum is taken, so they
can neither dominate the shift nor count in ``r``.

Probabilities below the dtype's smallest normal are flushed to zero before the
gradient GEMMs when the logits' range allows them (they slow x86 GEMMs ~16x and
change the gradient by less than its rounding).

The generic block is :func:`_block`; on a NumPy buffer of ours it is
:func:`.np_ce_block` (in place, chunked, two threads).
"""

from __future__ import annotations

from typing import Any

from array_api_compat import device

from .._ops import flush_below
from ._blocks import (
    add_t,
    cat,
    exp_block,
    exp_inplace,
    grad_gemms,
    logit_blocks,
    mask_band,
    root_logits,
    untranspose,
)
from ._logits import shift_free as logits_shift_free
from ._numpy import np_ce_block, np_exp_with_sums, np_owns, np_times_row_plus_col
from ._policy import clamp_below, exp_floor
from ._rows import lse_terms, unshifted_terms

Array = Any

__all__ = ["ce_stream", "ce_stream_symmetric"]


def _block(z, pb, w, flush: bool, shift_free: bool, xp):
    """One block, generic Array API (``z`` is consumed).

    Returns ``(l, e, scale)``: the terms, and with ``w`` the unnormalised
    probabilities ``e`` and the row factors ``scale`` such that
    ``dz = diag(scale) e`` (applied to the GEMMs' small operands, never to ``e``).
    """
    if pb is None:  # no positive in the denominator (DCL): l = LSE over the kept entries
        l, e, denom = _lse_block(z, flush, shift_free, xp)
    elif shift_free:
        e = exp_inplace(z, xp)
        l, denom = unshifted_terms(xp.sum(e, axis=1), pb, xp)
    else:
        m = xp.maximum(xp.max(z, axis=1), pb) if z.shape[1] else pb
        z -= xp.expand_dims(m, axis=1)  # our own buffer: in place where the library allows it
        if flush:
            z = clamp_below(z, exp_floor(z.dtype, xp), xp)
        e = exp_inplace(z, xp)
        r = xp.sum(e, axis=1)
        dlt = pb - m
        # l = (m − pos) + log1p(r + expm1(pos − m)), exact when the positive dominates (m = pos)
        l = xp.log1p(r + xp.expm1(dlt)) - dlt
        denom = r + xp.exp(dlt)
    return _block_grad(l, e, denom, w, flush, xp)


def _lse_block(z, flush: bool, shift_free: bool, xp):
    """``(l, e, denom)`` of a block without a positive: ``l_i = LSE_j z_ij`` over the kept
    entries (at least one per row), ``e = e^{z − m}``, ``denom = Σ_j e_ij`` (``m = 0``
    unshifted: ``|z| <= bound`` keeps ``e`` normal and finite)."""
    if shift_free:
        e = exp_inplace(z, xp)
        r = xp.sum(e, axis=1)
        return xp.log(r), e, r
    m = xp.max(z, axis=1)
    z -= xp.expand_dims(m, axis=1)
    if flush:
        z = clamp_below(z, exp_floor(z.dtype, xp), xp)
    e = exp_inplace(z, xp)
    r = xp.sum(e, axis=1)  # >= 1: the maximum's own term
    return m + xp.log(r), e, r


def _block_grad(l, e, denom, w, flush: bool, xp):
    """``(l, e, scale)`` of :func:`_block` from the terms and the denominators."""
    if w is None:
        return l, None, None
    # p_ij = e_ij / denom_i;  dz_ij = w_i p_ij = scale_i e_ij
    scale = w / denom
    if flush:  # entries whose |dz| would be subnormal become 0 (e >= 0, w of any sign)
        tiny = xp.finfo(e.dtype).smallest_normal
        thr = tiny / xp.maximum(xp.abs(scale), xp.full_like(scale, tiny))
        e = flush_below(e, xp.expand_dims(thr, axis=1), xp=xp)
    return l, e, scale


def ce_stream(a: Array, b: Array, pos: Array, *, bands: tuple[int, ...] = (),
              weights: Array | None = None, block: int, flush: bool, row_offset: int = 0,
              bound: float | None = None, root: tuple[Array, Array] | None = None, xp):
    """Stream the rows of ``z = a bᵀ``; return ``l`` and, with ``weights``, the gradient.

    Parameters
    ----------
    a : (R, K), b : (C, K), pos : (R,) or None
        Row operand, column operand and the positives' logits.  None: no positive in
        the denominator (DCL, ``losses.dcl``): ``l_i = LSE_{j kept} z_ij`` (every row
        keeps at least one entry), ``dz = w_i softmax_kept(z_i)`` and ``dpos`` None.
    bands : offsets ``off`` such that the entry ``(i, row_offset + i + off)`` is excluded
        for every row ``i`` (its column must lie inside ``b``).
    weights : (R,), optional
        The cotangent of each ``l_i``; when given the gradient is fused in.
    block : rows per block.
    row_offset : the global index of row 0 (for the band positions).
    bound : a bound on ``|z|`` known beforehand (cosine: ``1/τ``), or None.  When
        ``2·bound + log(C)`` stays below the log of the dtype's largest value the
        row shift (a max pass and a subtraction pass per block) is skipped.
    root : ``(u (R,), v (C,))``, optional
        The logits are ``z = −sqrt(−a bᵀ)`` (a negative euclidean distance from the
        features of the negative squared one), exactly 0 where ``−a bᵀ <= u_i + v_j``
        (:func:`root_logits`); the gradient returned is the one of ``a`` and ``b``,
        and ``zdz = Σ dz∘z = 2 Σ_i ⟨a_i, da_i⟩``.

    Returns
    -------
    l : (R,)
    grads : ``None``, or ``(da (R, K), db (C, K), dpos (R,) or None, zdz 0-d)``.
    """
    shift_free = root is None and logits_shift_free(bound, b.shape[0], a.dtype, xp)
    # unshifted and unflushed, the row sums come from the first gradient GEMM, as one more
    # column of b (of ones): e [b, 1] = [e b, Σ_j e_ij], one pass over the block fewer
    b1 = None
    if shift_free and not flush and weights is not None:
        b1 = xp.concat([b, xp.ones((b.shape[0], 1), dtype=b.dtype, device=device(b))], axis=1)
    k = b.shape[1]
    ls, das, dps = [], [], []
    db = None
    zdz = None
    for r0, r1, ab, z, dzdy in logit_blocks(a, b, block, root, xp):
        for off in bands:
            z = mask_band(z, r0, r1, row_offset + off, xp)
        pb = None if pos is None else pos[r0:r1]
        w = None if weights is None else weights[r0:r1]
        fl = flush and root is None  # with a root, flush after the chain factor below
        if b1 is not None:
            e = exp_block(z, xp)
            z = None
            eb = e @ b1
            if pb is None:
                l, denom = xp.log(eb[:, k]), eb[:, k]
            else:
                l, denom = unshifted_terms(eb[:, k], pb, xp)
            scale = w / denom
            dab, db, part = grad_gemms(e, scale, ab, b, db, xp, eb=eb[:, :k])
            e = eb = None
            ls.append(l)
            zdz = part if zdz is None else zdz + part
            das.append(dab)
            if pb is not None:
                dps.append(w * xp.expm1(-l))
            continue
        if np_owns(z, xp):
            l, e, scale = np_ce_block(z, pb, w, fl, shift_free, exp_floor(z.dtype, xp))
        else:
            l, e, scale = _block(z, pb, w, fl, shift_free, xp)
        ls.append(l)
        if weights is None:
            continue
        if root is not None:  # dz/dy = dz ∘ dzdy: the gradient of the GEMM's output
            e = e * dzdy
            if flush:
                tiny = xp.finfo(e.dtype).smallest_normal
                thr = tiny / xp.maximum(xp.abs(scale), xp.full_like(scale, tiny))
                e = flush_below(e, xp.expand_dims(thr, axis=1), xp=xp)
        dab, db, part = grad_gemms(e, scale, ab, b, db, xp)
        part = part * (2.0 if root is not None else 1.0)
        zdz = part if zdz is None else zdz + part
        das.append(dab)
        if pb is not None:
            dps.append(w * xp.expm1(-l))
    l = cat(ls, xp)
    if weights is None:
        return l, None
    return l, (cat(das, xp), untranspose(db, xp), cat(dps, xp) if dps else None, zdz)


def ce_stream_symmetric(a: Array, b: Array, pos: Array, *, weights: Array | None = None,
                        block: int, flush: bool, bound: float | None = None,
                        root: tuple[Array, Array] | None = None, xp):
    """CLIP's symmetric terms ``l_i = ½(row_i + col_i)`` of ``z = a bᵀ`` (square), streamed.

    Pass 1 streams the row statistics and, online, the column ones (running
    maximum and rescaled sum, the positive ``pos_j`` excluded from column ``j`` as
    from row ``j``).  Pass 2 recomputes each block and forms
    ``dz_ij = ½ w_i e^{z_ij − lse_i} + ½ w_j e^{z_ij − lse'_j}`` for the two gradient
    GEMMs: four N x N x D GEMM units in all, three when a single block holds the
    whole matrix (it is kept from pass 1).  With a ``bound`` on ``|z|`` (see
    :func:`ce_stream`) no shift is needed: one ``exp`` per entry serves the rows and
    the columns, and ``dz = e ∘ (α_i + β_j)``.  ``root`` as in :func:`ce_stream`.
    Returns as :func:`ce_stream`.
    """
    if root is None and logits_shift_free(bound, b.shape[0], a.dtype, xp):
        l_r, l_c, dz_block = _symmetric_unshifted(a, b, pos, weights, block, xp)
    else:
        l_r, l_c, dz_block = _symmetric_shifted(a, b, pos, weights, block, root, xp)
    if weights is None:
        return 0.5 * (l_r + l_c), None
    da, db, zdz = _symmetric_gradient(a, b, dz_block, block, flush, root is not None, xp)
    half = 0.5 * weights
    dpos = half * (xp.expm1(-l_r) + xp.expm1(-l_c))
    return 0.5 * (l_r + l_c), (da, db, dpos, zdz)


def _row_spans(n: int, block: int):
    """``(r0, r1)`` of the row blocks."""
    return ((r0, min(n, r0 + block)) for r0 in range(0, n, block))


def _symmetric_unshifted(a, b, pos, weights, block: int, xp):
    """Pass 1 of :func:`ce_stream_symmetric` with bounded logits: the row and column sums
    of ``e = e^z`` from one ``exp`` (:func:`_exp_with_sums`).  Returns ``(l_r, l_c,
    dz_block)``: the row and column terms and, with ``weights``, ``dz_block(r0, r1, ab)``,
    the gradient block ``e ∘ (α_i + β_j)`` (the kept block when one holds all rows)."""
    R = a.shape[0]
    bt = xp.matrix_transpose(b)
    single = block >= R
    ep = xp.exp(pos)
    r_c = xp.zeros_like(pos)
    r_r, kept = [], None
    for r0, r1 in _row_spans(R, block):
        e, (rr, rc) = _exp_with_sums(mask_band(a[r0:r1, :] @ bt, r0, r1, 0, xp), xp)
        r_r.append(rr)
        r_c += rc
        if single:
            kept = e
    r_r = cat(r_r, xp)
    l_r, l_c = xp.log1p(r_r / ep), xp.log1p(r_c / ep)
    if weights is None:
        return l_r, l_c, None
    alpha = 0.5 * weights / (r_r + ep)
    beta = xp.expand_dims(0.5 * weights / (r_c + ep), axis=0)

    def dz_block(r0, r1, ab):
        e = kept if single else exp_block(mask_band(ab @ bt, r0, r1, 0, xp), xp)
        return _times_row_plus_col(e, alpha[r0:r1], beta[0, :], xp)

    return l_r, l_c, dz_block


def _symmetric_shifted(a, b, pos, weights, block: int, root, xp):
    """Pass 1 of :func:`ce_stream_symmetric` with a shift: row maxima per block, column
    maxima and rescaled sums online.  Returns as :func:`_symmetric_unshifted`, the gradient
    block ``½ w_i e^{z − lse_i} + ½ w_j e^{z − lse'_j}`` (times the root's chain factor)."""
    R = a.shape[0]
    bt = xp.matrix_transpose(b)
    single = block >= R

    def logits(r0, r1, ab):
        """The block's logits, the positives masked, and the chain factor (or None)."""
        y = ab @ bt
        if root is None:
            return mask_band(y, r0, r1, 0, xp), None
        z, dzdy = root_logits(y, root[0][r0:r1], root[1], xp)
        return mask_band(z, r0, r1, 0, xp), dzdy

    m_c, r_c = pos, xp.zeros_like(pos)
    m_r, r_r = [], []
    kept = None
    for r0, r1 in _row_spans(R, block):
        z, dzdy = logits(r0, r1, a[r0:r1, :])
        new = xp.maximum(m_c, xp.max(z, axis=0))
        r_c = (r_c * xp.exp(m_c - new)
               + xp.sum(xp.exp(z - xp.expand_dims(new, axis=0)), axis=0))
        m_c = new
        m = xp.maximum(xp.max(z, axis=1), pos[r0:r1])
        r_r.append(xp.sum(xp.exp(z - xp.expand_dims(m, axis=1)), axis=1))
        m_r.append(m)
        if single:
            kept = z, dzdy
    l_r, lse_r = lse_terms(cat(m_r, xp), cat(r_r, xp), pos, xp)
    l_c, lse_c = lse_terms(m_c, r_c, pos, xp)
    if weights is None:
        return l_r, l_c, None
    half = 0.5 * weights
    wc = xp.expand_dims(half, axis=0)
    lc = xp.expand_dims(lse_c, axis=0)

    def dz_block(r0, r1, ab):
        z, dzdy = kept if single else logits(r0, r1, ab)
        dz = (xp.expand_dims(half[r0:r1], axis=1)
              * xp.exp(z - xp.expand_dims(lse_r[r0:r1], axis=1)) + wc * xp.exp(z - lc))
        return dz if dzdy is None else dz * dzdy  # the gradient of the GEMM's output

    return l_r, l_c, dz_block


def _symmetric_gradient(a, b, dz_block, block: int, flush: bool, rooted: bool, xp):
    """Pass 2 of :func:`ce_stream_symmetric`: the two gradient GEMMs of every block's
    ``dz_block(r0, r1, a_blk)``.  Returns ``(da, db, zdz)``, ``zdz = Σ dz∘z``."""
    db = None
    das = []
    zdz = None
    for r0, r1 in _row_spans(a.shape[0], block):
        ab = a[r0:r1, :]
        dz = dz_block(r0, r1, ab)
        if flush:
            dz = xp.where(xp.abs(dz) < xp.finfo(dz.dtype).smallest_normal, xp.zeros_like(dz), dz)
        dab = dz @ b
        db = add_t(db, ab, dz, xp)
        part = xp.sum(xp.vecdot(ab, dab, axis=-1)) * (2.0 if rooted else 1.0)
        zdz = part if zdz is None else zdz + part
        das.append(dab)
    return cat(das, xp), untranspose(db, xp), zdz


def _exp_with_sums(z, xp):
    """``e = e^z`` (``z`` consumed) with its row and column sums (NumPy: in place, each
    chunk's sums while it is in cache, :func:`.np_exp_with_sums`)."""
    if np_owns(z, xp):
        return np_exp_with_sums(z)
    e = exp_inplace(z, xp)
    return e, (xp.sum(e, axis=1), xp.sum(e, axis=0))


def _times_row_plus_col(e, row, col, xp):
    """``e ∘ (row_i + col_j)`` (NumPy: in place, by chunks of rows in cache)."""
    if np_owns(e, xp):
        return np_times_row_plus_col(e, row, col)
    return e * (xp.expand_dims(row, axis=1) + xp.expand_dims(col, axis=0))
