"""Row-block streaming of the InfoNCE and SupCon objectives over a bilinear score matrix.

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

from array_api_compat import is_numpy_array, is_numpy_namespace, is_writeable_array

from ._array import check_int
from ._ops import flush_below, sigmoid, softplus

Array = Any

#: default memory budget of the streamed kernels' block buffers, in bytes (CPU)
DEFAULT_MEMORY_BUDGET = 128 * 2**20

#: default memory budget for arrays on an accelerator (CuPy, torch on CUDA, JAX on a GPU):
#: blocks of thousands of rows keep the GEMMs large and the kernel launches few
ACCELERATOR_MEMORY_BUDGET = 2**30

#: NumPy, default budget: the most bytes per block buffer.  glibc's malloc serves
#: allocations below its largest dynamic mmap threshold (32 MiB) from the heap, whose pages
#: the next block (and the next call) reuses; a larger buffer is mapped afresh each time and
#: page-faulted on first write (about 6 ms per 64 MiB here, 5% of the three GEMMs at N = 4096)
_HEAP_BUFFER = 30 * 2**20

#: ... unless that leaves fewer rows than this per block: the O(C·K) work per block (the
#: gradient GEMM's (C, K) output and its sum) would then cost more than the page faults
_HEAP_MIN_ROWS = 512

#: bytes per row chunk of the NumPy fast paths' elementwise passes: a chunk (and, for
#: SupCon, its mask) stays in a core's L2 cache through all of its passes
_CHUNK = 1 << 20

__all__ = ["ce_stream", "ce_stream_symmetric", "supcon_stream", "choose_block", "root_logits",
           "DEFAULT_MEMORY_BUDGET", "ACCELERATOR_MEMORY_BUDGET"]


def on_accelerator(x: Array) -> bool:
    """Whether ``x`` lives on a GPU (or another accelerator), not on the host CPU."""
    from array_api_compat import is_cupy_array, is_jax_array, is_torch_array

    if is_cupy_array(x):
        return True
    if is_torch_array(x):
        return x.device.type != "cpu"
    if is_jax_array(x):
        try:
            return any(d.platform != "cpu" for d in x.devices())
        except Exception:  # a tracer: no concrete device
            return False
    return False


def choose_block(n_rows: int, n_cols: int, itemsize: int, *, block_size: Any = None,
                 memory_budget: Any = None, buffers: int = 2, like: Array = None,
                 heap_cap: bool = True) -> int:
    """Rows per block: ``block_size`` if given, else the most that fit the budget.

    The kernel holds ``buffers`` (two; four for the euclidean distance's square
    root) ``rows x n_cols`` buffers per block.  Without a ``memory_budget`` the
    budget is :data:`DEFAULT_MEMORY_BUDGET`, or :data:`ACCELERATOR_MEMORY_BUDGET`
    when ``like`` is on an accelerator; for NumPy arrays each buffer is also kept
    below :data:`_HEAP_BUFFER` (``heap_cap``; off where one block holding the whole
    matrix saves a GEMM, as for CLIP's symmetric loss).
    """
    if block_size is not None:
        return min(check_int(block_size, "block_size", minimum=1), max(n_rows, 1))
    per_row = buffers * max(n_cols, 1) * itemsize
    if memory_budget is None:
        budget = ACCELERATOR_MEMORY_BUDGET if like is not None and on_accelerator(like) \
            else DEFAULT_MEMORY_BUDGET
        if heap_cap and like is not None and is_numpy_array(like) \
                and buffers * _HEAP_BUFFER >= _HEAP_MIN_ROWS * per_row:
            budget = min(budget, buffers * _HEAP_BUFFER)
    else:
        budget = check_int(memory_budget, "memory_budget", minimum=1)
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
    if is_numpy_namespace(xp) and is_writeable_array(z):  # O(rows), no mask at all
        import numpy as np

        c0 = r0 + off
        np.fill_diagonal(z[:, c0:c0 + n], ninf)
        return z
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
        e = xp.exp(z)
        l, denom = _unshifted_terms(xp.sum(e, axis=1), pb, xp)
    else:
        m = xp.maximum(xp.max(z, axis=1), pb) if z.shape[1] else pb
        z -= xp.expand_dims(m, axis=1)  # our own buffer: in place where the library allows it
        if flush:
            z = clamp_below(z, exp_floor(z.dtype, xp), xp)
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


def _unshifted_terms(r, pb, xp):
    """``(l, denom)`` of rows summed unshifted, ``r = Σ_neg e^z``: when ``|z| <= L`` with
    ``2L + log(cols)`` below log(max float) no shift is needed, and
    ``l = log(1 + Σ_neg e^{z − pos}) = log1p(r e^{−pos})`` keeps full relative accuracy."""
    ep = xp.exp(pb)
    return xp.log1p(r / ep), r + ep


def _exp_block(z, xp, then=None):
    """``e = e^z`` of a block (``z`` consumed) and, with ``then``, ``then(e)`` (a row-wise
    map, e.g. a skinny GEMM): NumPy in place, ``then`` on each chunk of rows while it is in
    cache (:func:`by_chunks`).  Returns ``e`` or ``(e, then(e))``."""
    if not (is_numpy_namespace(xp) and is_writeable_array(z)):
        e = xp.exp(z)
        return e if then is None else (e, then(e))

    def part(r0, r1):
        zc = z[r0:r1]
        xp.exp(zc, out=zc)
        return (None if then is None else then(zc),)

    out = by_chunks(part, z.shape[0], z.shape[1] * z.itemsize)[0]
    return z if then is None else (z, out)


def _exp_with_sums(z, xp):
    """``e = e^z`` (``z`` consumed) with its row and column sums; NumPy in place, the sums
    of each chunk of rows taken while it is in cache (:func:`by_chunks`)."""
    if not (is_numpy_namespace(xp) and is_writeable_array(z)):
        e = xp.exp(z)
        return e, (xp.sum(e, axis=1), xp.sum(e, axis=0))
    cols = []  # the chunks' column sums (list.append is atomic across the two threads)

    def part(r0, r1):
        zc = z[r0:r1]
        xp.exp(zc, out=zc)
        cols.append(xp.sum(zc, axis=0))
        return (xp.sum(zc, axis=1),)

    (rows,) = by_chunks(part, z.shape[0], z.shape[1] * z.itemsize)
    return z, (rows, xp.sum(xp.stack(cols), axis=0))


def _times_row_plus_col(e, row, col, xp):
    """``e ∘ (row_i + col_j)``; NumPy in place, by chunks of rows in cache."""
    if not (is_numpy_namespace(xp) and is_writeable_array(e)):
        return e * (xp.expand_dims(row, axis=1) + xp.expand_dims(col, axis=0))

    def part(r0, r1):
        e[r0:r1] *= xp.expand_dims(row[r0:r1], axis=1) + xp.expand_dims(col, axis=0)
        return ()

    by_chunks(part, e.shape[0], e.shape[1] * e.itemsize)
    return e


_POOL = None

#: :func:`by_halves` uses two threads from this many rows and entries on (tests lower them)
_THREAD_ROWS, _THREAD_SIZE = 256, 1 << 18


def by_halves(part, n: int, size: int):
    """``part(r0, r1)`` over the rows ``[0, n)``: on two threads (one per half) when the
    block is large enough for it to pay (NumPy's ufuncs release the GIL), else at once.

    ``part`` returns a tuple of per-row arrays (or ``None``s); the halves' are
    concatenated along the rows.  The NumPy fast paths' only thread pool.
    """
    global _POOL
    if n < _THREAD_ROWS or size < _THREAD_SIZE:
        return part(0, n)
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(2, thread_name_prefix="nce_ref")
    h = n // 2
    fut = _POOL.submit(part, h, n)
    first = part(0, h)
    second = fut.result()
    return tuple(None if u is None else _cat(u, v) for u, v in zip(first, second))


def by_chunks(part, n: int, row_bytes: int):
    """NumPy: ``part(r0, r1)`` over chunks of about :data:`_CHUNK` bytes of the rows
    ``[0, n)`` (``row_bytes`` each, for all the arrays a chunk touches), so that all of a
    chunk's passes run in a core's L2 cache, the two halves of the rows on two threads
    (:func:`by_halves`).  ``part`` returns a tuple of per-row arrays (or ``None``s); the
    first chunk's give the outputs' shapes, and every chunk writes its rows into them.
    Returns the tuple of ``(n, ...)`` outputs."""
    from array_api_compat import array_namespace

    step = max(1, _CHUNK // max(1, row_bytes))
    first = part(0, min(n, step))
    if n <= step:
        return first
    outs = tuple(None if v is None else
                 array_namespace(v).empty((n,) + tuple(v.shape[1:]), dtype=v.dtype)
                 for v in first)
    for o, v in zip(outs, first):
        if o is not None:
            o[:step] = v

    def half(h0, h1):
        for c in range(step + h0, step + h1, step):
            c1 = min(step + h1, c + step)
            for o, v in zip(outs, part(c, c1)):
                if o is not None:
                    o[c:c1] = v
        return ()

    by_halves(half, n - step, (n - step) * row_bytes // 4)
    return outs


def by_row_chunks(fn, n: int, row_bytes: int, xp):
    """``fn(rows)``, a dict of arrays whose first axis is the rows ``rows`` (a slice of
    ``[0, n)``), over all the rows: one dict of ``(n, ...)`` arrays.

    ``fn`` must be row-wise.  NumPy runs it in chunks in cache (:func:`by_chunks`);
    other libraries call ``fn(None)`` once, over all the rows.
    """
    if not is_numpy_namespace(xp):
        return fn(None)
    keys = []

    def part(r0, r1):
        out = fn(slice(r0, r1))
        if not keys:
            keys.extend(out)
        return tuple(out[k] for k in keys)

    return dict(zip(keys, by_chunks(part, n, row_bytes))) if n else fn(None)


def _cat(u, v):
    from array_api_compat import array_namespace

    return array_namespace(u).concat([u, v])


def _np_block(z, pb, w, flush: bool, shift_free: bool):
    """NumPy fast path of :func:`_block`: the same arithmetic, in place (``out=``), on
    two halves of the rows in two threads (:func:`by_halves`)."""
    import numpy as np

    lo = exp_floor(z.dtype, np)

    def part(zs, ps, ws):
        # rows in chunks of about _CHUNK bytes: the shift, exp and sum of a chunk run
        # while it is in this core's L2 cache (one trip to memory instead of three)
        rows, cols = zs.shape
        step = max(1, _CHUNK // max(1, cols * zs.itemsize))
        r = np.empty(rows, dtype=zs.dtype)
        m = None if shift_free else np.empty(rows, dtype=zs.dtype)
        for i in range(0, rows, step):
            c = zs[i:i + step]
            if not shift_free:
                mc = c.max(axis=1) if cols else np.full(c.shape[0], -np.inf, dtype=zs.dtype)
                np.maximum(mc, ps[i:i + step], out=mc)
                m[i:i + step] = mc
                c -= mc[:, None]
                if flush:
                    clamp_below(c, lo, np)
            np.exp(c, out=c)
            c.sum(axis=1, out=r[i:i + step])
        if shift_free:
            l, denom = _unshifted_terms(r, ps, np)
        else:
            dlt = ps - m
            l = np.log1p(r + np.expm1(dlt)) - dlt
            denom = r + np.exp(dlt)
        if ws is None:
            return l, None
        scale = ws / denom
        if flush:
            tiny = np.finfo(zs.dtype).smallest_normal
            thr = (tiny / np.maximum(np.abs(scale), tiny))[:, None]
            for i in range(0, rows, step):
                c = zs[i:i + step]
                c[c < thr[i:i + step]] = 0
        return l, scale

    l, scale = by_halves(lambda r0, r1: part(z[r0:r1], pb[r0:r1], None if w is None else w[r0:r1]),
                         z.shape[0], z.size)
    return l, (None if w is None else z), scale


def exp_floor(dtype, xp) -> float:
    """``log(smallest_normal) + 1``: shifted logits are raised to it before the ``exp`` where
    subnormal results can occur (``flush``).  ``e^z`` below ``smallest_normal`` (or of
    ``-inf``) takes x86 libm's slow path (70 ns an entry in float64 here, against 2 ns), and
    such an entry weighs less than ``N·smallest_normal`` against a row sum of at least 1:
    it becomes ``e·smallest_normal``, which the flush before the gradient GEMMs removes
    where it would matter.  Masked entries (``-inf``) keep ``e = 0`` (:func:`clamp_below`)."""
    return math.log(float(xp.finfo(dtype).smallest_normal)) + 1.0


def clamp_below(z, lo: float, xp):
    """``max(z, lo)`` except where ``z = -inf`` (a masked entry, whose ``e`` must stay 0);
    NumPy in place."""
    if is_numpy_namespace(xp) and is_writeable_array(z):
        return xp.maximum(z, lo, out=z, where=z > -math.inf)
    return xp.where(z > -math.inf, xp.maximum(z, xp.full_like(z, lo)), z)


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


def _grad_gemms(e: Array, scale: Array, ab: Array, b: Array, db: Array, xp, eb: Array = None):
    """The two gradient GEMMs of a block with ``dz = diag(scale) e``: the rows are
    scaled after the first GEMM and before the second, never ``e`` itself.

    Returns ``(da_blk, dbt + (dzᵀ ab)ᵀ, Σ_i ⟨ab_i, da_i⟩)`` (the last is
    ``Σ dz∘(ab bᵀ)``): ``db`` is accumulated transposed, ``dbt = dbᵀ`` (K, C), see
    :func:`_add_t`; None is zero (the first block).  ``eb``, when given, is ``e @ b``
    already computed (our own buffer: it is scaled in place).
    """
    sk = xp.expand_dims(scale, axis=1)
    dab = e @ b if eb is None else eb
    dab *= sk  # our own GEMM outputs are scaled and summed in place (one pass fewer each)
    return dab, _add_t(db, ab * sk, e, xp), xp.sum(xp.vecdot(ab, dab, axis=-1))


def _add_t(dbt, x, e, xp):
    """``dbt + xᵀ e``, i.e. ``dbᵀ`` accumulated: ``(eᵀ x)ᵀ = xᵀ e`` reads the block
    ``e`` in its own row-major order (10-20% faster than ``eᵀ x`` in OpenBLAS for these
    shapes); the caller returns :func:`_untranspose` of it.  ``dbt`` None is zero, else
    updated in place."""
    return _accumulate(dbt, xp.matrix_transpose(x) @ e)


def _accumulate(acc, t):
    """``acc + t`` into ``acc`` (our own buffer, in place where the library allows it);
    ``acc`` None is zero."""
    if acc is None:
        return t
    acc += t
    return acc


def _untranspose(dbt, xp):
    """``dbtᵀ``: row-major for NumPy (one O(C·K) copy, so that the row-wise passes after
    it read memory in order), a view elsewhere."""
    db = xp.matrix_transpose(dbt)
    if not is_numpy_namespace(xp):
        return db
    out = xp.empty(db.shape, dtype=db.dtype)  # row-major
    out[...] = db
    return out


def _logit_blocks(a: Array, b: Array, block: int, root, xp):
    """Yield ``(r0, r1, a_blk, z_blk, dzdy)`` for the row blocks of ``z = a bᵀ`` (or its
    root, :func:`root_logits`; ``dzdy`` is None without one).  No name here keeps a
    block alive while the next one is computed."""
    bt = xp.matrix_transpose(b)
    n = a.shape[0]
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        ab = a[r0:r1, :]
        if root is None:
            yield r0, r1, ab, ab @ bt, None
        else:
            yield (r0, r1, ab) + root_logits(ab @ bt, root[0][r0:r1], root[1], xp)


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
    shift_free = root is None and _shift_free(bound, b.shape[0], a.dtype, xp)
    # unshifted and unflushed, the row sums come from the first gradient GEMM, as one more
    # column of b (of ones): e [b, 1] = [e b, Σ_j e_ij], one pass over the block fewer
    b1 = None
    if shift_free and not flush and weights is not None:
        b1 = xp.concat([b, xp.ones((b.shape[0], 1), dtype=b.dtype, device=_dev(b))], axis=1)
    k = b.shape[1]
    ls, das, dps = [], [], []
    db = None
    zdz = None
    for r0, r1, ab, z, dzdy in _logit_blocks(a, b, block, root, xp):
        for off in bands:
            z = _mask_band(z, r0, r1, row_offset + off, xp)
        pb = pos[r0:r1]
        w = None if weights is None else weights[r0:r1]
        fl = flush and root is None  # with a root, flush after the chain factor below
        if b1 is not None:
            e = _exp_block(z, xp)
            z = None
            eb = e @ b1
            l, denom = _unshifted_terms(eb[:, k], pb, xp)
            scale = w / denom
            dab, db, part = _grad_gemms(e, scale, ab, b, db, xp, eb=eb[:, :k])
            e = eb = None
            ls.append(l)
            zdz = part if zdz is None else zdz + part
            das.append(dab)
            dps.append(w * xp.expm1(-l))
            continue
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
        dab, db, part = _grad_gemms(e, scale, ab, b, db, xp)
        part = part * (2.0 if root is not None else 1.0)
        zdz = part if zdz is None else zdz + part
        das.append(dab)
        dps.append(w * xp.expm1(-l))
    l = ls[0] if len(ls) == 1 else xp.concat(ls)
    if weights is None:
        return l, None
    da = das[0] if len(das) == 1 else xp.concat(das, axis=0)
    dpos = dps[0] if len(dps) == 1 else xp.concat(dps)
    return l, (da, _untranspose(db, xp), dpos, zdz)


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
            e, (rr, rc) = _exp_with_sums(_mask_band(a[r0:r1, :] @ bt, r0, r1, 0, xp), xp)
            r_r.append(rr)
            r_c += rc
            if single:
                kept = e
        r_r = r_r[0] if len(r_r) == 1 else xp.concat(r_r)
        l_r, l_c = xp.log1p(r_r / ep), xp.log1p(r_c / ep)
        if weights is None:
            return 0.5 * (l_r + l_c), None
        alpha = 0.5 * weights / (r_r + ep)
        beta = xp.expand_dims(0.5 * weights / (r_c + ep), axis=0)

        def dz_block(r0, r1, ab):
            e = kept if single else _exp_block(_mask_band(ab @ bt, r0, r1, 0, xp), xp)
            return _times_row_plus_col(e, alpha[r0:r1], beta[0, :], xp)
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

    db = None
    das = []
    zdz = None
    for r0 in range(0, R, block):
        r1 = min(R, r0 + block)
        ab = a[r0:r1, :]
        dz = dz_block(r0, r1, ab)
        if flush:
            dz = xp.where(xp.abs(dz) < xp.finfo(dz.dtype).smallest_normal, xp.zeros_like(dz), dz)
        dab = dz @ b
        db = _add_t(db, ab, dz, xp)
        part = xp.sum(xp.vecdot(ab, dab, axis=-1)) * (2.0 if root is not None else 1.0)
        zdz = part if zdz is None else zdz + part
        das.append(dab)
    da = das[0] if len(das) == 1 else xp.concat(das, axis=0)
    half = 0.5 * weights
    dpos = half * (xp.expm1(-l_r) + xp.expm1(-l_c))
    return 0.5 * (l_r + l_c), (da, _untranspose(db, xp), dpos, zdz)


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

def _supcon_rows(positives: str, npos, s_p, s_n, h_p, h_n, zsum, xp):
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
        return None, has, t, lse_n, sps, nps  # its terms need the logits (see _supcon_block)
    if positives == "in":
        l = t + xp.log(nps)
    else:
        # LSE_P − mean_P = (h_P − mean_P) + log sP >= log n: no cancellation with t; exactly 0
        # for a single positive (with a shift), and set so without one
        j = -zsum / nps if h_p is None else h_p - zsum / nps
        j = j + xp.log(sps)
        l = t + xp.where(npos > 1.5, j, xp.zeros_like(j))
    return xp.where(has, l, xp.zeros_like(l)), has, t, lse_n, sps, nps


def _supcon_factors(positives: str, w, has, t, sps, s_n, nps, shift_free: bool, xp):
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


def _flush_threshold(scale, on_p, on_n, xp):
    """Per-row bound below which ``e`` gives a subnormal ``|dz|`` (then flushed to 0)."""
    tiny = xp.finfo(scale.dtype).smallest_normal
    mult = xp.abs(scale)
    if on_p is not None:
        mult = mult * xp.maximum(xp.abs(on_p), xp.abs(on_n))
    elif on_n is not None:
        mult = mult * xp.abs(on_n)
    return tiny / xp.maximum(mult, xp.full_like(mult, tiny))


def _supcon_block(z, p, r0: int, r1: int, positives: str, w, flush: bool, shift_free: bool, xp):
    """One block, generic Array API.  ``z`` (consumed) and ``p`` (bool, the anchor's own
    column False).  Returns ``(l, npos, scale, E)`` (``E`` None without ``w``)."""
    pf = xp.astype(p, z.dtype)
    npos = xp.sum(pf, axis=1)
    zsum = xp.vecdot(z, pf, axis=-1) if positives == "out" else None  # before the band: z finite
    z = _mask_band(z, r0, r1, 0, xp)
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
    l, has, t, lse_n, sps, nps = _supcon_rows(positives, npos, s_p, s_n, h_p, h_n, zsum, xp)
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
        scale, on_p, on_n, minus_p = _supcon_factors(positives, w, has, t, sps, s_n, nps,
                                                     shift_free, xp)
    if flush:
        e = flush_below(e, xp.expand_dims(_flush_threshold(scale, on_p, on_n, xp), axis=1), xp=xp)
    col = xp.expand_dims
    if positives == "per_pair":
        return l, npos, scale, e * col(on_n, axis=1) - sig
    if on_p is not None:
        e = e * xp.where(p, col(on_p, axis=1), col(on_n, axis=1))
    return l, npos, scale, (e if minus_p is None else e - pf * col(minus_p, axis=1))


def _np_supcon_block(z, relation, r0: int, r1: int, positives: str, w, flush: bool):
    """NumPy fast path of :func:`_supcon_block` without a shift: the same arithmetic in
    place, on two halves of the rows in two threads, each half in chunks of rows small
    enough for every pass to stay in cache (the chunk's mask from ``relation``, float
    buffers per thread, reused).  ``z`` becomes ``E``.

    ``"per_pair"``: with ``e = e^z`` unshifted, a pair's term is
    ``softplus(LSE_N − z_p) = log1p(sN / e_p)`` and its ``σ = 1 − e^{−term}``."""
    import numpy as np

    n, cols = z.shape
    step = max(1, min(n, _CHUNK // (max(cols, 1) * z.dtype.itemsize)))
    ones = np.ones(cols, dtype=z.dtype)

    def chunk(zs, ws, q0, buf, buf2):
        k = zs.shape[0]
        ps = relation(r0 + q0, r0 + q0 + k)
        ar = np.arange(k)
        own = (ar, r0 + q0 + ar)  # the anchor's own column
        ps[own] = False
        pf = buf[:k]
        np.copyto(pf, ps, casting="unsafe")
        npos = np.vecdot(pf, ones)
        zsum = np.vecdot(zs, pf) if positives == "out" else None  # before the band: z finite
        _mask_band(zs, r0 + q0, r0 + q0 + k, 0, np)
        np.exp(zs, out=zs)
        s_p = np.vecdot(zs, pf)
        np.subtract(1.0, pf, out=pf)  # now N (with the anchor's own column, where e = 0)
        s_n = np.vecdot(zs, pf)
        l, has, t, _, sps, nps = _supcon_rows(positives, npos, s_p, s_n, None, None, zsum, np)
        if positives == "per_pair":
            sns = np.where(s_n > 0, s_n, 1.0)
            v = buf2[:k]
            zs[own] = 1.0  # no division by 0 there (restored below; its term is masked)
            np.divide(sns[:, None], zs, out=v)
            zs[own] = 0.0
            np.log1p(v, out=v)  # softplus(LSE_N − z) on every entry
            np.subtract(1.0, pf, out=pf)  # P again
            v *= pf  # the pairs' terms; 0 elsewhere (pairs without negatives: log1p(0))
            l = np.where(s_n > 0, np.vecdot(v, ones), 0.0)  # nothing without negatives
        if ws is None:
            return l, npos, None
        if positives == "per_pair":
            np.negative(v, out=v)
            np.expm1(v, out=v)  # −σ on the pairs, 0 elsewhere
            v *= (s_n > 0)[:, None]
            scale, on_n = np.where(has, ws, 0.0), -np.vecdot(v, ones) / sns
            if flush:
                zs[zs < _flush_threshold(scale, None, on_n, np)[:, None]] = 0
            np.subtract(1.0, pf, out=pf)  # N
            pf *= on_n[:, None]
            zs *= pf  # e N Σσ/sN
            zs += v  # − σ P
            return l, npos, scale
        scale, on_p, on_n, minus_p = _supcon_factors(positives, ws, has, t, sps, s_n, nps, True, np)
        if flush:
            zs[zs < _flush_threshold(scale, on_p, on_n, np)[:, None]] = 0
        if on_p is not None:  # "in": E = e ∘ where(P, on_p, on_n) = on_n (e N + (on_p/on_n) e P)
            pf *= zs  # e N
            zs -= pf  # e P, exactly
            zs *= (on_p / on_n)[:, None]
            zs += pf
            scale = scale * on_n
        if minus_p is not None:  # E = e − P m = e + (N − 1) m (N − 1 ∈ {0, −1}: exact)
            pf -= 1.0
            pf *= minus_p[:, None]
            zs += pf
        return l, npos, scale

    def part(q0, q1):
        buf = np.empty((min(step, q1 - q0), cols), dtype=z.dtype)
        buf2 = np.empty_like(buf) if positives == "per_pair" else None
        outs = [chunk(z[c0:c1], None if w is None else w[c0:c1], c0, buf, buf2)
                for c0, c1 in ((c, min(q1, c + step)) for c in range(q0, q1, step))]
        return [np.concatenate([o[k] for o in outs]) if outs[0][k] is not None else None
                for k in range(3)]

    l, npos, scale = by_halves(part, n, z.size)
    return l, npos, scale, (None if w is None else z)


def supcon_stream(a: Array, b: Array, relation, *, positives: str, weights: Array | None = None,
                  block: int, flush: bool, bound: float | None = None,
                  root: tuple[Array, Array] | None = None, xp):
    """Stream SupCon's rows of ``z = a bᵀ``: the anchors are the rows of ``a``, anchor ``i``
    is also column ``i`` of ``b`` (excluded from its own row).

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

    Returns
    -------
    l : (R,)
        The terms (0 for an anchor without a positive; ``"per_pair"``: the sum of its pairs').
    npos : (R,)
        Each anchor's number of positives.
    grads : ``None``, or ``(da (R, K), db (C, K), zdz 0-d)`` with ``zdz = Σ dz∘z``.
    """
    shift_free = root is None and _shift_free(bound, b.shape[0], a.dtype, xp)
    fast = is_numpy_namespace(xp) and shift_free
    ls, ns, das = [], [], []
    db = None
    zdz = None
    for r0, r1, ab, z, dzdy in _logit_blocks(a, b, block, root, xp):
        w = None if weights is None else weights[r0:r1]
        if fast and is_writeable_array(z):
            l, npos, scale, e = _np_supcon_block(z, relation, r0, r1, positives, w, flush)
        else:
            rel = relation(r0, r1)
            cols = xp.arange(b.shape[0], device=_dev(z))
            rows = xp.arange(r0, r1, device=_dev(z))
            p = rel & (xp.expand_dims(rows, axis=1) != xp.expand_dims(cols, axis=0))
            l, npos, scale, e = _supcon_block(z, p, r0, r1, positives, w, flush, shift_free, xp)
        ls.append(l)
        ns.append(npos)
        z = rel = None  # the next block's buffers replace these, not add to them
        if weights is None:
            continue
        if root is not None:  # entries flushed above have |z| >> 0: a factor below 1
            e = e * dzdy
        dab, db, part = _grad_gemms(e, scale, ab, b, db, xp)
        e = None
        part = part * (2.0 if root is not None else 1.0)
        zdz = part if zdz is None else zdz + part
        das.append(dab)
    l = ls[0] if len(ls) == 1 else xp.concat(ls)
    npos = ns[0] if len(ns) == 1 else xp.concat(ns)
    if weights is None:
        return l, npos, None
    da = das[0] if len(das) == 1 else xp.concat(das, axis=0)
    return l, npos, (da, _untranspose(db, xp), zdz)


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
    ids = xp.arange(n_groups, device=_dev(a))
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
    for r0, r1, ab, z, _ in _logit_blocks(a, b, block, None, xp):
        z = _mask_band(z, r0, r1, 0, xp)
        if fused:
            e = _exp_block(z, xp)
            eb = e @ b_ext
            q, eb = eb[:, k:], eb[:, :k]
        else:  # the groups' sums while each chunk of e is in cache
            e, q = _exp_block(z, xp, then=lambda ec: ec @ y)
            eb = None
        z = None
        own = xp.expand_dims(g_a[r0:r1], axis=1) == xp.expand_dims(ids, axis=0)  # (rows, G)
        zero = xp.zeros_like(q)
        s_p = xp.sum(xp.where(own, q, zero), axis=1)
        s_n = xp.sum(xp.where(own, zero, q), axis=1)
        l, has, t, _, sps, nps = _supcon_rows(positives, npos[r0:r1], s_p, s_n, None, None,
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
            scale, on_p, on_n, _ = _supcon_factors(positives, w, has, t, sps, s_n, nps, True, xp)
            dab, db, part = _in_by_diagonal_blocks(e, eb, scale, on_p, on_n, ab, b, db,
                                                   r0, r1, bounds, xp)
        elif positives == "in":  # E = e ∘ (on_p P + on_n N); the own column has e = 0
            scale, on_p, on_n, _ = _supcon_factors(positives, w, has, t, sps, s_n, nps, True, xp)
            e = _scale_by_mask(e, g_a[r0:r1], groups, on_p, on_n, xp)
            dab, db, part = _grad_gemms(e, scale, ab, b, db, xp)
        else:  # dz = diag(scale)(e − P m): the GEMMs on e, the P part in O(N·K)
            scale, _, _, minus_p = _supcon_factors(positives, w, has, t, sps, s_n, nps, True, xp)
            sk = xp.expand_dims(scale, axis=1)
            u = ab * xp.expand_dims(scale * minus_p, axis=1)  # the rows of Pᵀ's operand
            dab = (eb - xp.expand_dims(minus_p, axis=1) * pb[r0:r1, :]) * sk
            db = _add_t(db, ab * sk, e, xp)
            part = xp.sum(xp.vecdot(ab, dab, axis=-1))
            us.append(u)
        e = eb = None
        zdz = part if zdz is None else zdz + part
        das.append(dab)
    l = ls[0] if len(ls) == 1 else xp.concat(ls)
    if weights is None:
        return l, npos, None
    da = das[0] if len(das) == 1 else xp.concat(das, axis=0)
    db = _untranspose(db, xp)  # accumulated transposed (_add_t)
    if us:  # db −= Pᵀ u: the groups' sums of u, less each anchor's own row
        u = us[0] if len(us) == 1 else xp.concat(us, axis=0)
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
    t = xp.matrix_transpose(x) @ e  # transposed, as _add_t
    for rows, _, s0, s1, sub in _diagonal_blocks(e, r0, r1, bounds):
        dab[rows, :] += (sub @ b[s0:s1, :]) * dk[rows, :]
        t[:, s0:s1] += xp.matrix_transpose(xd[rows, :]) @ sub
    return dab, _accumulate(db, t), xp.sum(xp.vecdot(ab, dab, axis=-1))


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
        own = xp.eye(sub.shape[0], s1 - s0, k=i0 - s0, dtype=xp.bool, device=_dev(e))
        ratio = xp.expand_dims(sns[rows], axis=1) / xp.where(own, xp.ones_like(sub), sub)
        term = xp.where(own, xp.zeros_like(sub), xp.log1p(ratio))
        ls.append(xp.where(has_n[rows], xp.sum(term, axis=1), xp.zeros_like(sns[rows])))
        subs.append((rows, s0, s1, sub, term))
    l = ls[0] if len(ls) == 1 else xp.concat(ls)
    if w is None:
        return l, None
    cs, ms = [], []
    for rows, _, _, sub, term in subs:
        sig = -xp.expm1(-term)  # 0 on the own column
        wr = xp.where(has_n[rows], w[rows], xp.zeros_like(w[rows]))
        c = wr * xp.sum(sig, axis=1) / sns[rows]
        cs.append(c)
        ms.append(-xp.expand_dims(c, axis=1) * sub - xp.expand_dims(wr, axis=1) * sig)
    c = cs[0] if len(cs) == 1 else xp.concat(cs)
    ck = xp.expand_dims(c, axis=1)
    dab = (e @ b) if eb is None else eb
    dab *= ck
    t = xp.matrix_transpose(ab * ck) @ e  # transposed, as _add_t
    for (rows, s0, s1, _, _), m in zip(subs, ms):
        dab[rows, :] += m @ b[s0:s1, :]
        t[:, s0:s1] += xp.matrix_transpose(ab[rows, :]) @ m
    return l, (dab, _accumulate(db, t), xp.sum(xp.vecdot(ab, dab, axis=-1)))


def _scale_by_mask(e: Array, g_rows: Array, groups: Array, on_p: Array, on_n: Array, xp) -> Array:
    """``e ∘ where(P, on_p, on_n)`` (row factors) with ``P_ij = [g_rows_i = groups_j]``; NumPy
    in place, on chunks of rows in cache (the mask never leaves it)."""
    col = xp.expand_dims

    def part(r0, r1):
        p = col(g_rows[r0:r1], axis=1) == col(groups, axis=0)
        e[r0:r1] *= xp.where(p, col(on_p[r0:r1], axis=1), col(on_n[r0:r1], axis=1))
        return ()

    if not (is_numpy_namespace(xp) and is_writeable_array(e)):
        return e * xp.where(col(g_rows, axis=1) == col(groups, axis=0), col(on_p, axis=1),
                            col(on_n, axis=1))
    by_chunks(part, e.shape[0], e.shape[1] * e.itemsize)
    return e
