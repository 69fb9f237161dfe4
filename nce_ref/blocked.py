"""Row-block streaming of the InfoNCE objective over a bilinear score matrix.

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
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import is_numpy_namespace, is_writeable_array

from ._array import check_int
from ._ops import flush_below

Array = Any

#: default memory budget of the streamed kernels' block buffers, in bytes
DEFAULT_MEMORY_BUDGET = 128 * 2**20

__all__ = ["ce_stream", "choose_block", "root_logits", "DEFAULT_MEMORY_BUDGET"]


def choose_block(n_rows: int, n_cols: int, itemsize: int, *, block_size: Any = None,
                 memory_budget: Any = None, buffers: int = 2) -> int:
    """Rows per block: ``block_size`` if given, else the most that fit the budget.

    The kernel holds ``buffers`` (two; four for the euclidean distance's square
    root) ``rows x n_cols`` buffers per block.
    """
    if block_size is not None:
        return min(check_int(block_size, "block_size", minimum=1), max(n_rows, 1))
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    budget = check_int(budget, "memory_budget", minimum=1)
    per_row = buffers * max(n_cols, 1) * itemsize
    if budget < per_row:
        raise ValueError(f"`memory_budget` of {budget} bytes is too small for one row of "
                         f"{max(n_cols, 1)} scores; the smallest that works is {per_row}")
    return max(1, min(n_rows, budget // per_row))


def _mask_band(z, r0: int, r1: int, off: int, xp, chunk: int = 256):
    """Set ``z[i - r0, i + off] = -inf`` for the rows ``i`` in ``[r0, r1)`` of this block.

    Writable buffers are edited in place on diagonal squares of at most ``chunk``
    rows (O(rows · chunk) work, never O(rows · columns)); immutable ones (JAX) get
    one ``where`` over the block.
    """
    n = r1 - r0
    ninf = -math.inf
    if is_writeable_array(z):
        for i0 in range(0, n, chunk):
            i1 = min(n, i0 + chunk)
            c0 = r0 + off + i0
            sq = z[i0:i1, c0:c0 + (i1 - i0)]
            eye = xp.eye(i1 - i0, dtype=xp.bool, device=_dev(z))
            z[i0:i1, c0:c0 + (i1 - i0)] = xp.where(eye, xp.full_like(sq, ninf), sq)
        return z
    cols = z.shape[1]
    band = xp.eye(n, cols, k=r0 + off, dtype=xp.bool, device=_dev(z))
    return xp.where(band, xp.full_like(z, ninf), z)


def _dev(x):
    from array_api_compat import device

    return device(x)


def _block(z, pb, w, flush: bool, shift_free: bool, xp):
    """One block, generic Array API (``z`` is consumed).

    Returns ``(l, e, scale)``: the terms, and with ``w`` the unnormalised
    probabilities ``e`` and the row factors ``scale`` such that
    ``dz = diag(scale) e`` (applied to the GEMMs' small operands, never to ``e``).
    """
    if shift_free:
        # |z| <= L with 2L + log(cols) below log(max float): no shift is needed and
        # l = log(1 + Σ_neg e^{z − pos}) = log1p(r e^{−pos}) keeps full relative accuracy
        e = xp.exp(z)
        r = xp.sum(e, axis=1)
        ep = xp.exp(pb)
        l = xp.log1p(r / ep)
        denom = r + ep
    else:
        m = xp.maximum(xp.max(z, axis=1), pb) if z.shape[1] else pb
        z -= xp.expand_dims(m, axis=1)  # our own buffer: in place where the library allows it
        e = xp.exp(z)
        r = xp.sum(e, axis=1)
        dlt = pb - m
        # l = (m − pos) + log1p(r + expm1(pos − m)), exact when the positive dominates (m = pos)
        l = xp.log1p(r + xp.expm1(dlt)) - dlt
        denom = r + xp.exp(dlt)
    if w is None:
        return l, None, None
    # p_ij = e_ij / denom_i;  dz_ij = w_i p_ij = scale_i e_ij
    scale = w / denom
    if flush:  # entries whose |dz| would be subnormal become 0 (e >= 0, w of any sign)
        tiny = xp.finfo(e.dtype).smallest_normal
        thr = tiny / xp.maximum(xp.abs(scale), xp.full_like(scale, tiny))
        e = flush_below(e, xp.expand_dims(thr, axis=1), xp=xp)
    return l, e, scale


_POOL = None


def _np_block(z, pb, w, flush: bool, shift_free: bool):
    """NumPy fast path of :func:`_block`: the same arithmetic, in place (``out=``), on
    two halves of the rows in two threads (NumPy's ufuncs release the GIL)."""
    import numpy as np
    from concurrent.futures import ThreadPoolExecutor

    global _POOL

    def part(zs, ps, ws):
        if shift_free:
            np.exp(zs, out=zs)
            r = zs.sum(axis=1)
            ep = np.exp(ps)
            l = np.log1p(r / ep)
            denom = r + ep
        else:
            m = zs.max(axis=1) if zs.shape[1] else np.full_like(ps, -np.inf)
            np.maximum(m, ps, out=m)
            zs -= m[:, None]
            np.exp(zs, out=zs)
            r = zs.sum(axis=1)
            dlt = ps - m
            l = np.log1p(r + np.expm1(dlt)) - dlt
            denom = r + np.exp(dlt)
        if ws is None:
            return l, None
        scale = ws / denom
        if flush:
            tiny = np.finfo(zs.dtype).smallest_normal
            zs[zs < (tiny / np.maximum(np.abs(scale), tiny))[:, None]] = 0
        return l, scale

    n = z.shape[0]
    if n < 256 or z.size < 1 << 18:
        l, scale = part(z, pb, w)
    else:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(2, thread_name_prefix="nce_ref")
        h = n // 2
        f = _POOL.submit(part, z[h:], pb[h:], None if w is None else w[h:])
        l0, s0 = part(z[:h], pb[:h], None if w is None else w[:h])
        l1, s1 = f.result()
        l = np.concatenate([l0, l1])
        scale = None if w is None else np.concatenate([s0, s1])
    return l, (None if w is None else z), scale


def _shift_free(bound: float | None, n_cols: int, dtype, xp) -> bool:
    """Whether ``e^z`` can be summed unshifted: ``2·bound + log(cols)`` below log(max)."""
    return bound is not None and (
        2.0 * bound + math.log(max(n_cols, 1)) + 1.0 < math.log(xp.finfo(dtype).max))


def needs_flush(dtype, log_range: float | None, n_entries: int, xp) -> bool:
    """Whether softmax entries can fall below ``smallest_normal``.

    ``log_range`` bounds ``max z − min z`` within a row (``None``: unbounded).
    """
    if log_range is None:
        return True
    tiny = xp.finfo(dtype).smallest_normal
    return log_range + 2.0 * math.log(max(n_entries, 2)) > -math.log(tiny) - 8.0


def root_logits(y: Array, u: Array, v: Array, xp):
    """Logits ``z = −sqrt(−y)`` of a negative squared distance ``y = −d²`` (scaled), and the
    factor ``∂z/∂y = 1/(2 sqrt(−y))``.

    Where ``−y <= u_i + v_j`` (the rounding noise of the GEMM expansion, see
    :func:`nce_ref.similarity.similarity`) the distance is exactly 0 and so is the
    factor (the subgradient of ``−‖·‖`` at 0).  Returns ``(z, dzdy)``.
    """
    t = -y
    zero = t <= (xp.expand_dims(u, axis=1) + xp.expand_dims(v, axis=0))
    d = xp.sqrt(xp.where(zero, xp.zeros_like(t), t))
    dzdy = xp.where(zero, xp.zeros_like(d), 0.5 / xp.where(zero, xp.ones_like(d), d))
    return -d, dzdy


def ce_stream(a: Array, b: Array, pos: Array, *, bands: tuple[int, ...] = (),
              weights: Array | None = None, block: int, flush: bool, row_offset: int = 0,
              bound: float | None = None, root: tuple[Array, Array] | None = None, xp):
    """Stream the rows of ``z = a bᵀ``; return ``l`` and, with ``weights``, the gradient.

    Parameters
    ----------
    a : (R, K), b : (C, K), pos : (R,)
        Row operand, column operand and the positives' logits.
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
    grads : ``None``, or ``(da (R, K), db (C, K), dpos (R,), zdz 0-d)``.
    """
    R = a.shape[0]
    bt = xp.matrix_transpose(b)
    shift_free = root is None and _shift_free(bound, b.shape[0], a.dtype, xp)
    ls, das, dps = [], [], []
    db = None if weights is None else xp.zeros_like(b)
    zdz = None
    for r0 in range(0, R, block):
        r1 = min(R, r0 + block)
        ab = a[r0:r1, :]
        z = ab @ bt
        if root is not None:
            z, dzdy = root_logits(z, root[0][r0:r1], root[1], xp)
        for off in bands:
            z = _mask_band(z, r0, r1, row_offset + off, xp)
        pb = pos[r0:r1]
        w = None if weights is None else weights[r0:r1]
        fl = flush and root is None  # with a root, flush after the chain factor below
        if is_numpy_namespace(xp) and is_writeable_array(z):
            l, e, scale = _np_block(z, pb, w, fl, shift_free)
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
        # dz = diag(scale) e: scale the rows after the first GEMM and before the second
        sk = xp.expand_dims(scale, axis=1)
        dab = (e @ b) * sk
        db = db + xp.matrix_transpose(e) @ (ab * sk)
        part = xp.sum(ab * dab) * (2.0 if root is not None else 1.0)
        zdz = part if zdz is None else zdz + part
        das.append(dab)
        dps.append(w * xp.expm1(-l))
    l = ls[0] if len(ls) == 1 else xp.concat(ls)
    if weights is None:
        return l, None
    da = das[0] if len(das) == 1 else xp.concat(das, axis=0)
    dpos = dps[0] if len(dps) == 1 else xp.concat(dps)
    return l, (da, db, dpos, zdz)


def _lse_terms(m, r, pos, xp):
    """``(l, lse)`` of the rows (or columns) from their shift ``m`` and sum ``r``."""
    dlt = pos - m
    c = xp.log1p(r + xp.expm1(dlt))  # lse − m >= 0
    return c - dlt, m + c


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
    R = a.shape[0]
    bt = xp.matrix_transpose(b)
    single = block >= R

    def logits(r0, r1, ab):
        """The block's logits, the positives masked, and the chain factor (or None)."""
        y = ab @ bt
        if root is None:
            return _mask_band(y, r0, r1, 0, xp), None
        z, dzdy = root_logits(y, root[0][r0:r1], root[1], xp)
        return _mask_band(z, r0, r1, 0, xp), dzdy

    if root is None and _shift_free(bound, b.shape[0], a.dtype, xp):
        ep = xp.exp(pos)
        r_c = xp.zeros_like(pos)
        r_r, kept = [], None
        for r0 in range(0, R, block):
            r1 = min(R, r0 + block)
            e = xp.exp(_mask_band(a[r0:r1, :] @ bt, r0, r1, 0, xp))
            r_r.append(xp.sum(e, axis=1))
            r_c = r_c + xp.sum(e, axis=0)
            if single:
                kept = e
        r_r = r_r[0] if len(r_r) == 1 else xp.concat(r_r)
        l_r, l_c = xp.log1p(r_r / ep), xp.log1p(r_c / ep)
        if weights is None:
            return 0.5 * (l_r + l_c), None
        alpha = 0.5 * weights / (r_r + ep)
        beta = xp.expand_dims(0.5 * weights / (r_c + ep), axis=0)

        def dz_block(r0, r1, ab):
            e = kept if single else xp.exp(_mask_band(ab @ bt, r0, r1, 0, xp))
            return e * (xp.expand_dims(alpha[r0:r1], axis=1) + beta)
    else:
        m_c, r_c = pos, xp.zeros_like(pos)
        m_r, r_r = [], []
        kept = None
        for r0 in range(0, R, block):
            r1 = min(R, r0 + block)
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
        m_r = m_r[0] if len(m_r) == 1 else xp.concat(m_r)
        r_r = r_r[0] if len(r_r) == 1 else xp.concat(r_r)
        l_r, lse_r = _lse_terms(m_r, r_r, pos, xp)
        l_c, lse_c = _lse_terms(m_c, r_c, pos, xp)
        if weights is None:
            return 0.5 * (l_r + l_c), None
        half = 0.5 * weights
        wc = xp.expand_dims(half, axis=0)
        lc = xp.expand_dims(lse_c, axis=0)

        def dz_block(r0, r1, ab):
            z, dzdy = kept if single else logits(r0, r1, ab)
            dz = (xp.expand_dims(half[r0:r1], axis=1)
                  * xp.exp(z - xp.expand_dims(lse_r[r0:r1], axis=1)) + wc * xp.exp(z - lc))
            return dz if dzdy is None else dz * dzdy  # the gradient of the GEMM's output

    db = xp.zeros_like(b)
    das = []
    zdz = None
    for r0 in range(0, R, block):
        r1 = min(R, r0 + block)
        ab = a[r0:r1, :]
        dz = dz_block(r0, r1, ab)
        if flush:
            dz = xp.where(xp.abs(dz) < xp.finfo(dz.dtype).smallest_normal, xp.zeros_like(dz), dz)
        dab = dz @ b
        db = db + xp.matrix_transpose(dz) @ ab
        part = xp.sum(ab * dab) * (2.0 if root is not None else 1.0)
        zdz = part if zdz is None else zdz + part
        das.append(dab)
    da = das[0] if len(das) == 1 else xp.concat(das, axis=0)
    half = 0.5 * weights
    dpos = half * (xp.expm1(-l_r) + xp.expm1(-l_c))
    return 0.5 * (l_r + l_c), (da, db, dpos, zdz)

