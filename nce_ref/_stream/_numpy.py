"""The engine's NumPy specialisations: the only module of the library that knows NumPy.

Each function here is the in-place (``out=``), cache-chunked, two-threaded form of a
generic Array API function of the engine, which calls it when a predicate of this
module says so; results are the same arithmetic (equal to rounding, tested against
array-api-strict running the generic code).

Predicates (asked by the generic code):

- :func:`np_namespace` (xp): NumPy's namespace, whose row passes run in chunks in cache;
- :func:`np_array` (x): a NumPy array (block sizing: the heap cap);
- :func:`np_owns` (x, xp): a writable NumPy buffer of ours, which may be overwritten.

Specialisations, and the generic function each one speeds up:

- :func:`np_ce_block`: ``ce._block`` (InfoNCE's block: shift, exp, sums, row factors);
- :func:`np_supcon_block`: ``supcon._supcon_block`` (SupCon's block, unshifted);
- :func:`np_row_lse`: ``mi.embeddings._row_lse`` (the MI bounds' rows, unshifted);
- :func:`np_sigmoid_block`: ``siglip._block_terms`` (SigLIP's block from one ``exp``);
- :func:`np_fill_band`: ``_blocks.set_band`` (a diagonal band of a block);
- :func:`np_exp`, :func:`np_exp_rows`: ``_blocks.exp_inplace``, ``_blocks.exp_block``;
- :func:`np_exp_with_sums`: ``ce._exp_with_sums`` (CLIP's unshifted pass);
- :func:`np_times_row_plus_col`: ``ce._times_row_plus_col`` (CLIP's gradient block);
- :func:`np_scale_by_mask`: ``supcon._scale_by_mask`` (SupCon ``"in"`` with labels);
- :func:`np_clamp_below`: ``_policy.clamp_below``;
- :func:`np_row_major`: ``_blocks.untranspose`` (a row-major copy);
- :func:`np_matmul_into`: ``_blocks.logit_blocks`` with ``reuse`` (one block buffer);
- :func:`np_clip`, :func:`np_multiply`, :func:`np_negate_into`: the MI bounds' in-place
  updates (``mi.embeddings``);
- :func:`np_softplus_and_sigmoid`, :func:`np_sigmoid_of_exp`: ``nce_ref._ops``'
  ``softplus_and_sigmoid`` and ``softplus_and_sigmoid_of_exp`` with ``overwrite=True``.

NumPy itself is imported inside the functions, on their first call: the library
imports without it.  The specialisations overwrite their first argument (our own buffer)
and return it, except :func:`np_row_major` (a copy) and :func:`np_negate_into` (``dst``).
"""

from __future__ import annotations

import math

from array_api_compat import is_numpy_array, is_numpy_namespace, is_writeable_array

from ._config import get_tuning
from ._exec import by_chunks, by_halves
from ._rows import flush_threshold, supcon_factors, supcon_rows, unshifted_terms

__all__ = ["np_namespace", "np_array", "np_owns", "np_ce_block", "np_supcon_block", "np_row_lse",
           "np_sigmoid_block",
           "np_fill_band",
           "np_exp", "np_exp_rows", "np_exp_with_sums", "np_times_row_plus_col", "np_scale_by_mask",
           "np_clamp_below", "np_row_major", "np_matmul_into", "np_clip", "np_multiply", "np_negate_into",
           "np_softplus_and_sigmoid", "np_sigmoid_of_exp"]


# -- predicates -------------------------------------------------------------------------------

def np_namespace(xp) -> bool:
    """Whether ``xp`` is NumPy's namespace (whose row passes run in chunks in cache)."""
    return is_numpy_namespace(xp)


def np_array(x) -> bool:
    """Whether ``x`` is a NumPy array."""
    return is_numpy_array(x)


def np_owns(x, xp) -> bool:
    """Whether ``x`` is a writable NumPy array: a buffer of ours that the in-place
    specialisations may overwrite (a read-only one takes the generic path)."""
    return is_numpy_namespace(xp) and is_writeable_array(x)


# -- in-place passes --------------------------------------------------------------------------

def np_exp(z):
    """``e^z`` in ``z``."""
    import numpy as np

    return np.exp(z, out=z)


def _by_chunks_of(z, part):
    """:func:`._exec.by_chunks` over the rows of ``z`` (a chunk of rows in cache)."""
    return by_chunks(part, z.shape[0], z.shape[1] * z.itemsize)


def np_exp_rows(z, then=None):
    """``e = e^z`` in ``z`` by chunks of rows and, with ``then`` (row-wise, e.g. a skinny
    GEMM), ``then`` of each chunk while it is in cache.  Returns ``e`` or ``(e, then(e))``."""
    import numpy as np

    def part(r0, r1):
        zc = z[r0:r1]
        np.exp(zc, out=zc)
        return (None if then is None else then(zc),)

    out = _by_chunks_of(z, part)[0]
    return z if then is None else (z, out)


def np_exp_with_sums(z):
    """``e = e^z`` in ``z`` with its row and column sums, each chunk's while in cache."""
    import numpy as np

    cols = []  # the chunks' column sums (list.append is atomic across the two threads)

    def part(r0, r1):
        zc = z[r0:r1]
        np.exp(zc, out=zc)
        cols.append(np.sum(zc, axis=0))
        return (np.sum(zc, axis=1),)

    (rows,) = _by_chunks_of(z, part)
    return z, (rows, np.sum(np.stack(cols), axis=0))


def np_times_row_plus_col(e, row, col):
    """``e ∘ (row_i + col_j)`` in ``e``, by chunks of rows."""
    def part(r0, r1):
        e[r0:r1] *= row[r0:r1, None] + col[None, :]
        return ()

    _by_chunks_of(e, part)
    return e


def np_scale_by_mask(e, g_rows, groups, on_p, on_n):
    """``e ∘ where(P, on_p, on_n)`` in ``e`` with ``P_ij = [g_rows_i = groups_j]``, by
    chunks of rows: a chunk's mask never leaves the cache."""
    import numpy as np

    def part(r0, r1):
        p = g_rows[r0:r1, None] == groups[None, :]
        e[r0:r1] *= np.where(p, on_p[r0:r1, None], on_n[r0:r1, None])
        return ()

    _by_chunks_of(e, part)
    return e


def np_clamp_below(z, lo: float):
    """``max(z, lo)`` in ``z``, except where ``z = -inf``."""
    import numpy as np

    return np.maximum(z, lo, out=z, where=z > -math.inf)


def np_clip(z, c: float):
    """``clip(z, −c, c)`` in ``z``."""
    return z.clip(-c, c, out=z)


def np_multiply(e, mask):
    """``e ∘ mask`` in ``e`` (``mask`` boolean or float)."""
    e *= mask
    return e


def np_matmul_into(a, b, buf):
    """``a @ b`` into the leading rows of ``buf``, our block buffer (allocated here when
    None, with as many rows as ``a``: the first and largest block).  Returns
    ``(z, buf)``: one buffer serves every block of a sweep, faulted in once."""
    import numpy as np

    if buf is None:
        buf = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    return np.matmul(a, b, out=buf[:a.shape[0]]), buf


def np_negate_into(src, dst):
    """``dst = −src`` (``dst`` a writable array of ours)."""
    import numpy as np

    np.negative(src, out=dst)


def np_fill_band(z, c0: int, fill, read: bool = False):
    """``z[i, c0 + i] = fill`` (a float, or one value per row) for every row ``i`` of ``z``,
    in O(rows); with ``read``, also the entries replaced.  Returns ``z`` or ``(z, d)``."""
    import numpy as np

    sub = z[:, c0:c0 + z.shape[0]]
    d = np.diagonal(sub).copy() if read else None
    np.fill_diagonal(sub, fill)
    return (z, d) if read else z


def np_row_major(db):
    """A row-major copy of ``db`` (a transposed view): the row-wise passes after it then
    read memory in order (one O(C·K) copy)."""
    import numpy as np

    return np.ascontiguousarray(db)


def np_softplus_and_sigmoid(x):
    """``(softplus(x), σ(x))`` with the softplus written into ``x`` and ``σ`` into one new
    buffer (one scratch buffer besides): the formulas of ``nce_ref._ops``, bit for bit."""
    import numpy as np

    pos = x >= 0
    e = np.abs(x)
    np.negative(e, out=e)
    np.exp(e, out=e)                  # e^{−|x|}
    t = np.log1p(e)
    np.maximum(x, 0.0, out=x)
    x += t                            # softplus = max(x, 0) + log1p(e), in x
    np.add(e, 1.0, out=t)
    np.copyto(e, 1.0, where=pos)
    np.divide(e, t, out=e)            # σ = where(x >= 0, 1, e) / (1 + e), in e
    return x, e


def np_sigmoid_of_exp(ex):
    """``σ = E/(1 + E)`` written into ``E = e^x``."""
    import numpy as np

    den = np.add(ex, 1.0)
    return np.divide(ex, den, out=ex)


# -- kernels ----------------------------------------------------------------------------------

def np_ce_block(z, pb, w, flush: bool, shift_free: bool, lo: float):
    """:func:`.ce._block` (generic): the same arithmetic, in place (``out=``), on two halves
    of the rows in two threads (:func:`._exec.by_halves`), each half in chunks of rows in
    cache.  ``lo`` is :func:`._policy.exp_floor` of the dtype.  ``pb`` None: no positive
    in the denominator (DCL), ``l = LSE`` of the kept entries.  Returns ``(l, e, scale)``
    (``e`` is ``z`` itself)."""
    import numpy as np

    chunk = get_tuning().chunk_bytes

    def part(zs, ps, ws):
        # rows in chunks of about `chunk` bytes: the shift, exp and sum of a chunk run
        # while it is in this core's L2 cache (one trip to memory instead of three)
        rows, cols = zs.shape
        step = max(1, chunk // max(1, cols * zs.itemsize))
        r = np.empty(rows, dtype=zs.dtype)
        m = None if shift_free else np.empty(rows, dtype=zs.dtype)
        for i in range(0, rows, step):
            c = zs[i:i + step]
            if not shift_free:
                mc = c.max(axis=1) if cols else np.full(c.shape[0], -np.inf, dtype=zs.dtype)
                if ps is not None:
                    np.maximum(mc, ps[i:i + step], out=mc)
                m[i:i + step] = mc
                c -= mc[:, None]
                if flush:
                    np_clamp_below(c, lo)
            np.exp(c, out=c)
            c.sum(axis=1, out=r[i:i + step])
        if ps is None:  # LSE over the kept entries: r >= 1 shifted, normal unshifted
            l, denom = np.log(r), r
            if not shift_free:
                l += m
        elif shift_free:
            l, denom = unshifted_terms(r, ps, np)
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

    l, scale = by_halves(lambda r0, r1: part(z[r0:r1], None if pb is None else pb[r0:r1],
                                             None if w is None else w[r0:r1]),
                         z.shape[0], z.size)
    return l, (None if w is None else z), scale


def np_supcon_block(z, relation, r0: int, r1: int, positives: str, w, flush: bool, own=None):
    """:func:`.supcon._supcon_block` (generic) without a shift: the same arithmetic in
    place, on two halves of the rows in two threads, each half in chunks of rows small
    enough for every pass to stay in cache (the chunk's mask from ``relation``, float
    buffers per thread, reused).  ``z`` becomes ``E``.  The anchor's own column is
    ``r0 + i`` (the band), or, with ``own`` (the block's rows' column indices, -1 for
    none: a reference set), ``own[i]``.

    ``"per_pair"``: with ``e = e^z`` unshifted, a pair's term is
    ``softplus(LSE_N − z_p) = log1p(sN / e_p)`` and its ``σ = 1 − e^{−term}``."""
    import numpy as np

    n, cols = z.shape
    step = max(1, min(n, get_tuning().chunk_bytes // (max(cols, 1) * z.dtype.itemsize)))
    ones = np.ones(cols, dtype=z.dtype)

    def chunk(zs, ws, q0, buf, buf2):
        k = zs.shape[0]
        ps = relation(r0 + q0, r0 + q0 + k)
        ar = np.arange(k)
        if own is None:
            mine = (ar, r0 + q0 + ar)  # the anchor's own column: the band
        else:
            oc = own[q0:q0 + k]
            mine = (ar[oc >= 0], oc[oc >= 0])  # by index; -1: none
        ps[mine] = False
        pf = buf[:k]
        np.copyto(pf, ps, casting="unsafe")
        npos = np.vecdot(pf, ones)
        zsum = np.vecdot(zs, pf) if positives == "out" else None  # before the band: z finite
        zs[mine] = -math.inf
        np.exp(zs, out=zs)
        s_p = np.vecdot(zs, pf)
        np.subtract(1.0, pf, out=pf)  # now N (with the anchor's own column, where e = 0)
        s_n = np.vecdot(zs, pf)
        l, has, t, _, sps, nps = supcon_rows(positives, npos, s_p, s_n, None, None, zsum, np)
        if positives == "per_pair":
            sns = np.where(s_n > 0, s_n, 1.0)
            v = buf2[:k]
            zs[mine] = 1.0  # no division by 0 there (restored below; its term is masked)
            np.divide(sns[:, None], zs, out=v)
            zs[mine] = 0.0
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
                zs[zs < flush_threshold(scale, None, on_n, np)[:, None]] = 0
            np.subtract(1.0, pf, out=pf)  # N
            pf *= on_n[:, None]
            zs *= pf  # e N Σσ/sN
            zs += v  # − σ P
            return l, npos, scale
        scale, on_p, on_n, minus_p = supcon_factors(positives, ws, has, t, sps, s_n, nps, True, np)
        if flush:
            zs[zs < flush_threshold(scale, on_p, on_n, np)[:, None]] = 0
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


def np_sigmoid_block(z, bias: float | None, c0: int, pairs: bool, want_grad: bool):
    """SigLIP's block (``siglip._block_terms`` on its one-``exp`` path, generic there) in
    place, by chunks of rows in cache on two threads: ``u = z + bias`` with the entries
    ``(i, c0 + i)`` masked (``-inf``: softplus 0, σ 0), ``E = e^u`` in ``z``, the rows'
    sums of ``softplus(u) = log1p(E)`` (``pairs``: ``log1p(E_l + E_r (1 + E_l))`` over the
    two halves of the row, half the ``log1p``) and, with ``want_grad``,
    ``σ(u) = E/(1 + E)`` written into ``z`` and the rows' sums of ``σ``.  The caller
    guarantees ``E`` finite and normal (``siglip._exp_safe``): no flush.  One scratch
    array per chunk (``1 + E``, reused for the pairs); row sums by ``vecdot`` (no BLAS
    threads of its own, unlike a matrix-vector product).  Returns ``(sp, rs)`` (``rs`` None
    without ``want_grad``)."""
    import numpy as np

    n, c = z.shape
    h = c // 2 if pairs else 0
    ones = np.ones(c, dtype=z.dtype)

    def part(r0, r1):
        zc = z[r0:r1]
        if bias is not None and bias != 0.0:
            np.add(zc, bias, out=zc)
        np_fill_band(zc, c0 + r0, -math.inf)
        np.exp(zc, out=zc)
        t = np.add(zc, 1.0) if want_grad else None  # 1 + E
        if h:
            el, er = zc[:, :h], zc[:, h:2 * h]
            if t is not None:
                q = np.multiply(er, t[:, :h])
            else:
                q = np.add(el, 1.0)
                q *= er
            q += el  # E_l + E_r (1 + E_l) = (1 + E_l)(1 + E_r) − 1, no cancellation
            np.log1p(q, out=q)
            sp = np.vecdot(q, ones[:h])
            if c % 2:
                sp += np.log1p(zc[:, c - 1])
        else:
            sp = np.vecdot(np.log1p(zc), ones)
        if t is None:
            return sp, None
        np.divide(zc, t, out=zc)
        return sp, np.vecdot(zc, ones)

    return _by_chunks_of(z, part)


def np_row_lse(z, r0: int, *, clip: float | None, want: bool):
    """``mi.embeddings._row_lse`` unshifted (generic there), in place: the clip, the band,
    ``exp``, the row sum and the clip's gradient mask of each chunk of rows while it is in
    cache.  Returns ``(m, r, e)`` (``m = 0``; ``e`` is ``z`` itself, or None)."""
    import numpy as np

    def part(c0, c1):
        zc = z[c0:c1]
        inside = None
        if clip is not None:
            if want and math.isfinite(clip):
                inside = np.abs(zc) <= clip
            zc.clip(-clip, clip, out=zc)
        np_fill_band(zc, r0 + c0, -math.inf)  # after the clip: the diagonal stays -inf
        np.exp(zc, out=zc)
        r = np.sum(zc, axis=1)
        if inside is not None:
            zc *= inside
        return (r,)

    (r,) = _by_chunks_of(z, part)
    return np.zeros(z.shape[0], dtype=z.dtype), r, (z if want else None)
