"""SupCon's streamed kernels: rows with a block-local positive mask, or group sums.

Callers: ``losses.supcon`` (``supcon``): :func:`supcon_stream` for positives given by a
mask (or several labels per sample), :func:`supcon_stream_groups` for single labels
(the views tiled; no mask at all, the sums over P from GEMMs).  The per-row terms and
the gradient's row factors are :mod:`._rows`' (``supcon_rows``, ``supcon_factors``).

The generic block is :func:`_supcon_block`; without a row shift, on a NumPy buffer of
ours, it is :func:`.np_supcon_block` (in place, chunked, two threads).
:func:`_scale_by_mask` has :func:`.np_scale_by_mask`.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device

from .._ops import flush_below, sigmoid, softplus
from ._blocks import accumulate, add_t, cat, exp_block, grad_gemms, logit_blocks, mask_band, untranspose
from ._logits import shift_free as logits_shift_free
from ._numpy import np_owns, np_scale_by_mask, np_supcon_block
from ._rows import flush_threshold, supcon_factors, supcon_rows

Array = Any

__all__ = ["supcon_stream", "supcon_stream_groups"]


def _supcon_block(z, p, r0: int, r1: int, positives: str, w, flush: bool, shift_free: bool, xp,
                  own=None):
    """One block, generic Array API.  ``z`` (consumed) and ``p`` (bool, the anchor's own
    column False).  The anchor's own column is ``r0 + i`` (the band), or, with ``own``
    (bool, the block's shape), where ``own`` is True (none where it is all False).
    Returns ``(l, npos, scale, E)`` (``E`` None without ``w``)."""
    pf = xp.astype(p, z.dtype)
    npos = xp.sum(pf, axis=1)
    zsum = xp.vecdot(z, pf, axis=-1) if positives == "out" else None  # before the band: z finite
    if own is None:
        z = mask_band(z, r0, r1, 0, xp)
    else:
        z = xp.where(own, xp.full_like(z, -math.inf), z)
    nf = 1.0 - pf  # the anchor's own column is in nf, where e = 0
    if shift_free:
        h_p = h_n = None
        e = xp.exp(z)
    else:
        ninf = xp.full_like(z, -math.inf)
        m_p = xp.max(xp.where(p, z, ninf), axis=1)
        m_n = xp.max(xp.where(p, ninf, z), axis=1)
        h_p = xp.where(xp.isfinite(m_p), m_p, xp.zeros_like(m_p))
        h_n = xp.where(xp.isfinite(m_n), m_n, xp.zeros_like(m_n))
        e = xp.exp(z - xp.where(p, xp.expand_dims(h_p, axis=1), xp.expand_dims(h_n, axis=1)))
    s_p = xp.vecdot(e, pf, axis=-1)
    s_n = xp.vecdot(e, nf, axis=-1)
    l, has, t, lse_n, sps, nps = supcon_rows(positives, npos, s_p, s_n, h_p, h_n, zsum, xp)
    if positives != "per_pair":
        z = None  # only the pairs' terms need the logits again
    else:
        has_n = s_n > 0
        arg = xp.where(p & xp.expand_dims(has_n, axis=1), xp.expand_dims(lse_n, axis=1) - z,
                       xp.full_like(z, -math.inf))  # −inf off the pairs: softplus 0, σ 0
        l = xp.sum(softplus(arg, xp=xp), axis=1)
    if w is None:
        return l, npos, None, None
    if positives == "per_pair":
        sig = sigmoid(arg, xp=xp)
        w = xp.where(has, w, xp.zeros_like(w))
        scale, on_p, on_n = w, None, xp.sum(sig, axis=1) / xp.where(has_n, s_n, xp.ones_like(s_n))
        e = e * nf  # p^N = e/sN on N only
    else:
        scale, on_p, on_n, minus_p = supcon_factors(positives, w, has, t, sps, s_n, nps,
                                                     shift_free, xp)
    if flush:
        e = flush_below(e, xp.expand_dims(flush_threshold(scale, on_p, on_n, xp), axis=1), xp=xp)
    col = xp.expand_dims
    if positives == "per_pair":
        return l, npos, scale, e * col(on_n, axis=1) - sig
    if on_p is not None:
        e = e * xp.where(p, col(on_p, axis=1), col(on_n, axis=1))
    return l, npos, scale, (e if minus_p is None else e - pf * col(minus_p, axis=1))


def supcon_stream(a: Array, b: Array, relation, *, positives: str, weights: Array | None = None,
                  block: int, flush: bool, bound: float | None = None,
                  root: tuple[Array, Array] | None = None, own: Array | None = None, xp):
    """Stream SupCon's rows of ``z = a bᵀ``: the anchors are the rows of ``a``, anchor ``i``
    is also column ``i`` of ``b`` (excluded from its own row), or, with ``own``, column
    ``own[i]`` (-1: none; a reference set ``b``).

    Parameters
    ----------
    a : (R, K), b : (C, K)
        Anchor and column operands (``1/τ`` folded into ``a``), ``R <= C``.
    relation : callable
        ``relation(r0, r1)`` returns a new (r1 − r0, C) boolean array: True where column
        ``j`` is a positive of anchor ``i`` (the anchor's own column may be either).
    positives : {"out", "in", "per_pair"}
    weights : (R,), optional
        The cotangent of each term; when given the gradient is fused in.  Anchors
        without a positive get none, whatever their weight.
    block, flush, bound, root
        As in :func:`ce_stream`.
    own : (R,) integers, optional
        The column excluded from each anchor's row (-1: none), instead of column ``i``;
        then ``R`` may exceed ``C`` (the generic block, no NumPy specialisation).

    Returns
    -------
    l : (R,)
        The terms (0 for an anchor without a positive; ``"per_pair"``: the sum of its pairs').
    npos : (R,)
        Each anchor's number of positives.
    grads : ``None``, or ``(da (R, K), db (C, K), zdz 0-d)`` with ``zdz = Σ dz∘z``.
    """
    shift_free = root is None and logits_shift_free(bound, b.shape[0], a.dtype, xp)
    ls, ns, das = [], [], []
    db = None
    zdz = None
    for r0, r1, ab, z, dzdy in logit_blocks(a, b, block, root, xp):
        w = None if weights is None else weights[r0:r1]
        if shift_free and np_owns(z, xp):  # (``own``, if any, is then NumPy too: only read)
            l, npos, scale, e = np_supcon_block(z, relation, r0, r1, positives, w, flush,
                                                own=None if own is None else own[r0:r1])
        elif own is None:
            rel = relation(r0, r1)
            cols = xp.arange(b.shape[0], device=device(z))
            rows = xp.arange(r0, r1, device=device(z))
            p = rel & (xp.expand_dims(rows, axis=1) != xp.expand_dims(cols, axis=0))
            l, npos, scale, e = _supcon_block(z, p, r0, r1, positives, w, flush, shift_free, xp)
        else:
            cols = xp.arange(b.shape[0], dtype=own.dtype, device=device(z))
            mine = xp.expand_dims(own[r0:r1], axis=1) == xp.expand_dims(cols, axis=0)
            p = relation(r0, r1) & xp.logical_not(mine)
            l, npos, scale, e = _supcon_block(z, p, r0, r1, positives, w, flush, shift_free, xp,
                                              own=mine)
            mine = None
        ls.append(l)
        ns.append(npos)
        z = rel = None  # the next block's buffers replace these, not add to them
        if weights is None:
            continue
        if root is not None:  # entries flushed above have |z| >> 0: a factor below 1
            e = e * dzdy
        dab, db, part = grad_gemms(e, scale, ab, b, db, xp)
        e = None
        part = part * (2.0 if root is not None else 1.0)
        zdz = part if zdz is None else zdz + part
        das.append(dab)
    l, npos = cat(ls, xp), cat(ns, xp)
    if weights is None:
        return l, npos, None
    return l, npos, (cat(das, xp), untranspose(db, xp), zdz)


# -- SupCon with single labels: the positives' sums from the GEMMs ---------------------------
#
# When the positives are the other members of the anchor's group (one label per sample, the
# views tiled), the sums over P and N need no mask: with ``Y`` the (C x G) one-hot matrix of
# the columns' groups, ``Q = e Y`` holds each row's sum over every group, so
# ``sP_i = Q_{i,γ_i}`` and ``sN_i = Σ_{g≠γ_i} Q_ig`` (a sum of positive terms, no
# cancellation).  ``Σ_P z = ⟨a_i, B_{γ_i}⟩ − ⟨a_i, b_i⟩`` with the groups' column sums
# ``B = Yᵀ b``, and for ``positives="out"`` the linear part of the gradient,
# ``dz = diag(scale) (e − P m)``, is O(N·K): ``(P b)_i = B_{γ_i} − b_i`` and
# ``(Pᵀ v)_j = V_{γ_j} − v_j`` (``V`` the anchors' group sums of ``v``).  ``"in"`` scales
# ``e`` by ``on_p`` on P and ``on_n`` off it (one mask per block, from the group ids).

def supcon_stream_groups(a: Array, b: Array, groups: Array, n_groups: int, *, positives: str,
                         weights: Array | None = None, block: int, bounds=None, xp):
    """:func:`supcon_stream` for group-structured positives, unshifted logits (a known
    bound) without subnormal flushing: ``groups`` (C,) holds each column's group id in
    ``[0, n_groups)``; anchor ``i`` is column ``i`` and shares its group.  ``positives``
    is ``"out"``, ``"in"`` or (with ``bounds``) ``"per_pair"``.

    ``bounds`` (G + 1 ints), when the anchors are all the columns sorted by group (group
    ``g`` is ``[bounds[g], bounds[g+1])``): P is block diagonal, and ``"in"``'s
    ``e ∘ P`` terms are GEMMs on its diagonal blocks (1/G of the work of one GEMM per
    gradient GEMM) instead of a mask over every entry, and ``"per_pair"``'s terms are
    computed on those blocks only.  Returns as :func:`supcon_stream`."""
    R, k = a.shape[0], a.shape[1]
    ids = xp.arange(n_groups, device=device(a))
    y = xp.astype(xp.expand_dims(groups, axis=1) == xp.expand_dims(ids, axis=0), a.dtype)  # (C, G)
    g_a = groups[:R]
    cnt = xp.sum(y, axis=0)
    npos = xp.take(cnt, g_a) - 1.0  # the anchor's own column is in its group
    b_groups = xp.matrix_transpose(y) @ b  # (G, K): B
    b_own = b[:R, :]
    pb = xp.take(b_groups, g_a, axis=0) - b_own  # (P b)_i for the anchors: B_{γ_i} − b_i
    zsum = xp.vecdot(a, pb, axis=-1) if positives == "out" else None
    if positives == "per_pair" and bounds is None:
        raise ValueError("positives='per_pair' needs the columns sorted by group (`bounds`)")
    fused = weights is not None and (positives == "out" or bounds is not None)
    b_ext = xp.concat([b, y], axis=1) if fused else None  # e [b, Y] = [e b, Q]
    ls, das, us = [], [], []
    db, zdz = None, None
    for r0, r1, ab, z, _ in logit_blocks(a, b, block, None, xp):
        z = mask_band(z, r0, r1, 0, xp)
        if fused:
            e = exp_block(z, xp)
            eb = e @ b_ext
            q, eb = eb[:, k:], eb[:, :k]
        else:  # the groups' sums while each chunk of e is in cache
            e, q = exp_block(z, xp, then=lambda ec: ec @ y)
            eb = None
        z = None
        own = xp.expand_dims(g_a[r0:r1], axis=1) == xp.expand_dims(ids, axis=0)  # (rows, G)
        zero = xp.zeros_like(q)
        s_p = xp.sum(xp.where(own, q, zero), axis=1)
        s_n = xp.sum(xp.where(own, zero, q), axis=1)
        l, has, t, _, sps, nps = supcon_rows(positives, npos[r0:r1], s_p, s_n, None, None,
                                              None if zsum is None else zsum[r0:r1], xp)
        w = None if weights is None else xp.where(has, weights[r0:r1], xp.zeros_like(s_n))
        if positives == "per_pair":  # its terms and gradient live on P's diagonal blocks
            l, grads = _per_pair_by_diagonal_blocks(e, eb, s_n, w, ab, b, db, r0, r1, bounds, xp)
        ls.append(l)
        if weights is None:
            continue
        if positives == "per_pair":
            dab, db, part = grads
        elif positives == "in" and bounds is not None:
            # E = on_n e + (on_p − on_n) e∘P: the GEMMs on e, and on P's diagonal blocks
            scale, on_p, on_n, _ = supcon_factors(positives, w, has, t, sps, s_n, nps, True, xp)
            dab, db, part = _in_by_diagonal_blocks(e, eb, scale, on_p, on_n, ab, b, db,
                                                   r0, r1, bounds, xp)
        elif positives == "in":  # E = e ∘ (on_p P + on_n N); the own column has e = 0
            scale, on_p, on_n, _ = supcon_factors(positives, w, has, t, sps, s_n, nps, True, xp)
            e = _scale_by_mask(e, g_a[r0:r1], groups, on_p, on_n, xp)
            dab, db, part = grad_gemms(e, scale, ab, b, db, xp)
        else:  # dz = diag(scale)(e − P m): the GEMMs on e, the P part in O(N·K)
            scale, _, _, minus_p = supcon_factors(positives, w, has, t, sps, s_n, nps, True, xp)
            sk = xp.expand_dims(scale, axis=1)
            u = ab * xp.expand_dims(scale * minus_p, axis=1)  # the rows of Pᵀ's operand
            dab = (eb - xp.expand_dims(minus_p, axis=1) * pb[r0:r1, :]) * sk
            db = add_t(db, ab * sk, e, xp)
            part = xp.sum(xp.vecdot(ab, dab, axis=-1))
            us.append(u)
        e = eb = None
        zdz = part if zdz is None else zdz + part
        das.append(dab)
    l = cat(ls, xp)
    if weights is None:
        return l, npos, None
    da = cat(das, xp)
    db = untranspose(db, xp)  # accumulated transposed (add_t)
    if us:  # db −= Pᵀ u: the groups' sums of u, less each anchor's own row
        u = cat(us, xp)
        v_groups = xp.matrix_transpose(y[:R, :]) @ u  # (G, K)
        db = db - xp.take(v_groups, groups, axis=0)
        db = xp.concat([db[:R, :] + u, db[R:, :]], axis=0) if R < db.shape[0] else db + u
    return l, npos, (da, db, zdz)


def _diagonal_blocks(e, r0: int, r1: int, bounds):
    """Yield ``(rows, i0, s0, s1, sub)`` for the groups ``[s0, s1)`` (``bounds``) that meet
    the block's rows ``[r0, r1)``: ``rows`` the block's local rows of the group (from global
    row ``i0``), ``sub = e[rows, s0:s1]`` its diagonal block (a view)."""
    for g in range(len(bounds) - 1):
        s0, s1 = bounds[g], bounds[g + 1]
        i0, i1 = max(r0, s0), min(r1, s1)
        if i0 < i1:
            rows = slice(i0 - r0, i1 - r0)
            yield rows, i0, s0, s1, e[rows, s0:s1]


def _in_by_diagonal_blocks(e, eb, scale, on_p, on_n, ab, b, db, r0: int, r1: int, bounds, xp):
    """The two gradient GEMMs of ``dz = diag(scale) e ∘ (on_p P + on_n N)`` with P block
    diagonal (``bounds``): ``dz = diag(scale·on_n) e + diag(scale·(on_p − on_n)) e∘P``, the
    second term's GEMMs on the diagonal blocks only.  ``eb = e b`` (our own buffer).
    Returns as :func:`_grad_gemms` (``db`` transposed)."""
    dlt = scale * (on_p - on_n)
    sk = xp.expand_dims(scale * on_n, axis=1)
    eb *= sk
    dab = eb
    x = ab * sk
    xd = ab * xp.expand_dims(dlt, axis=1)
    dk = xp.expand_dims(dlt, axis=1)
    t = xp.matrix_transpose(x) @ e  # transposed, as add_t
    for rows, _, s0, s1, sub in _diagonal_blocks(e, r0, r1, bounds):
        dab[rows, :] += (sub @ b[s0:s1, :]) * dk[rows, :]
        t[:, s0:s1] += xp.matrix_transpose(xd[rows, :]) @ sub
    return dab, accumulate(db, t), xp.sum(xp.vecdot(ab, dab, axis=-1))


def _per_pair_by_diagonal_blocks(e, eb, s_n, w, ab, b, db, r0: int, r1: int, bounds, xp):
    """``positives="per_pair"`` on a block whose P is block diagonal (``bounds``).

    Unshifted, a pair's term is ``softplus(LSE_N − z_ij) = log1p(sN_i / e_ij)`` and its
    ``σ_ij = 1 − e^{−term}``; the gradient is ``dz = diag(c) e + M`` with
    ``c_i = w_i Σ_P σ_ij / sN_i`` and, on P only, ``M_ij = −c_i e_ij − w_i σ_ij`` (the
    own column, where ``e = 0``, has ``M = 0``): the GEMMs on ``e`` and on M's diagonal
    blocks.  Anchors without a negative have no terms.  Returns ``(l, grads)`` with
    ``grads`` as :func:`_grad_gemms` (``db`` transposed; None without ``w``)."""
    has_n = s_n > 0
    sns = xp.where(has_n, s_n, xp.ones_like(s_n))
    ls, subs = [], []
    for rows, i0, s0, s1, sub in _diagonal_blocks(e, r0, r1, bounds):
        own = xp.eye(sub.shape[0], s1 - s0, k=i0 - s0, dtype=xp.bool, device=device(e))
        ratio = xp.expand_dims(sns[rows], axis=1) / xp.where(own, xp.ones_like(sub), sub)
        term = xp.where(own, xp.zeros_like(sub), xp.log1p(ratio))
        ls.append(xp.where(has_n[rows], xp.sum(term, axis=1), xp.zeros_like(sns[rows])))
        subs.append((rows, s0, s1, sub, term))
    l = cat(ls, xp)
    if w is None:
        return l, None
    cs, ms = [], []
    for rows, _, _, sub, term in subs:
        sig = -xp.expm1(-term)  # 0 on the own column
        wr = xp.where(has_n[rows], w[rows], xp.zeros_like(w[rows]))
        c = wr * xp.sum(sig, axis=1) / sns[rows]
        cs.append(c)
        ms.append(-xp.expand_dims(c, axis=1) * sub - xp.expand_dims(wr, axis=1) * sig)
    c = cat(cs, xp)
    ck = xp.expand_dims(c, axis=1)
    dab = (e @ b) if eb is None else eb
    dab *= ck
    t = xp.matrix_transpose(ab * ck) @ e  # transposed, as add_t
    for (rows, s0, s1, _, _), m in zip(subs, ms):
        dab[rows, :] += m @ b[s0:s1, :]
        t[:, s0:s1] += xp.matrix_transpose(ab[rows, :]) @ m
    return l, (dab, accumulate(db, t), xp.sum(xp.vecdot(ab, dab, axis=-1)))


def _scale_by_mask(e: Array, g_rows: Array, groups: Array, on_p: Array, on_n: Array, xp) -> Array:
    """``e ∘ where(P, on_p, on_n)`` (row factors) with ``P_ij = [g_rows_i = groups_j]``
    (NumPy: in place, on chunks of rows in cache, :func:`.np_scale_by_mask`)."""
    if np_owns(e, xp):
        return np_scale_by_mask(e, g_rows, groups, on_p, on_n)
    col = xp.expand_dims
    return e * xp.where(col(g_rows, axis=1) == col(groups, axis=0), col(on_p, axis=1),
                        col(on_n, axis=1))
