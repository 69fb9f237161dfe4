"""Block plumbing shared by every streamed kernel (generic Array API).

- :func:`logit_blocks`: the row blocks of ``z = a bᵀ`` (or of its root,
  :func:`root_logits`, for the euclidean distance);
- :func:`set_band`, :func:`mask_band`: one diagonal band of a block set to a value
  (``-inf``: the excluded positives and self-similarities of ``ce_stream``,
  ``ce_stream_symmetric``, the SupCon kernels and the MI bounds' diagonal; per-row
  values with the entries read back: the MI interpolated bound's joint scores);
- :func:`exp_inplace`, :func:`exp_block`: ``e^z`` over our own block buffer;
- :func:`grad_gemms`, :func:`add_t`, :func:`accumulate`, :func:`untranspose`: the two
  gradient GEMMs of a block, ``db`` accumulated transposed and returned row-major.

Each function calls its NumPy specialisation (:mod:`._numpy`) where that module's
predicate says the array is a NumPy buffer of ours.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import device, is_torch_namespace, is_writeable_array

from ._numpy import np_exp, np_exp_rows, np_fill_band, np_matmul_into, np_namespace, np_owns, np_row_major

Array = Any

__all__ = ["logit_blocks", "root_logits", "set_band", "mask_band", "exp_inplace", "exp_block",
           "grad_gemms", "add_t", "accumulate", "untranspose", "cat"]


def cat(parts: list, xp, axis: int = 0) -> Array:
    """The blocks' results joined along ``axis`` (one block: itself, no copy)."""
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=axis)


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


def logit_blocks(a: Array, b: Array, block: int, root, xp, *, rows: tuple[int, int] | None = None,
                 reuse: bool = False):
    """Yield ``(r0, r1, a_blk, z_blk, dzdy)`` for the row blocks of ``z = a bᵀ`` (or its
    root, :func:`root_logits`; ``dzdy`` is None without one).  No name here keeps a
    block alive while the next one is computed.

    ``rows = (start, stop)``: only those rows (a half of
    :func:`._exec.by_blas_halves`).  ``reuse`` (NumPy, no root): every block is written
    into one buffer of ours (:func:`._numpy.np_matmul_into`); the caller is done with a
    block before it asks for the next."""
    bt = xp.matrix_transpose(b)
    start, stop = (0, a.shape[0]) if rows is None else rows
    buf = None
    reuse = reuse and root is None and np_namespace(xp)
    for r0 in range(start, stop, block):
        r1 = min(stop, r0 + block)
        ab = a[r0:r1, :]
        if reuse:
            z, buf = np_matmul_into(ab, bt, buf)
            yield r0, r1, ab, z, None
        elif root is None:
            yield r0, r1, ab, ab @ bt, None
        else:
            yield (r0, r1, ab) + root_logits(ab @ bt, root[0][r0:r1], root[1], xp)


def set_band(z: Array, r0: int, r1: int, off: int, fill, xp, *, read: bool = False,
             chunk: int = 256):
    """``z[i − r0, i + off] = fill_i`` for the rows ``i`` in ``[r0, r1)`` of a block.

    ``fill`` is a float or an (r1 − r0,) array.  With ``read`` the entries replaced are
    returned too: ``(z, d)``, ``d_i = z[i − r0, i + off]`` before.  NumPy buffers of ours
    are edited in O(rows) (:func:`.np_fill_band`), other writable ones on diagonal
    squares of at most ``chunk`` rows (O(rows · chunk), never O(rows · columns));
    immutable ones (JAX) get one ``where`` over the block.
    """
    n, c0 = r1 - r0, r0 + off
    if np_owns(z, xp):
        return np_fill_band(z, c0, fill, read)

    def value(i0, i1, like):
        if isinstance(fill, float):
            return xp.full_like(like, fill)
        return xp.expand_dims(fill[i0:i1], axis=1)

    if is_writeable_array(z):
        parts = []
        for i0 in range(0, n, chunk):
            i1 = min(n, i0 + chunk)
            sq = z[i0:i1, c0 + i0:c0 + i1]
            eye = xp.eye(i1 - i0, dtype=xp.bool, device=device(z))
            if read:
                parts.append(xp.sum(xp.where(eye, sq, xp.zeros_like(sq)), axis=1))
            z[i0:i1, c0 + i0:c0 + i1] = xp.where(eye, value(i0, i1, sq), sq)
        return (z, cat(parts, xp)) if read else z
    band = xp.eye(n, z.shape[1], k=c0, dtype=xp.bool, device=device(z))
    d = xp.sum(xp.where(band, z, xp.zeros_like(z)), axis=1) if read else None
    z = xp.where(band, value(0, n, z), z)
    return (z, d) if read else z


def mask_band(z: Array, r0: int, r1: int, off: int, xp) -> Array:
    """:func:`set_band` to ``-inf``: the entries ``(i − r0, i + off)`` are excluded."""
    return set_band(z, r0, r1, off, -float("inf"), xp)


def exp_inplace(z: Array, xp) -> Array:
    """``e^z``, overwriting ``z`` (our own buffer) where the library allows it."""
    if np_owns(z, xp):
        return np_exp(z)
    if is_torch_namespace(xp) and is_writeable_array(z):
        return z.exp_()
    return xp.exp(z)


def exp_block(z: Array, xp, then=None):
    """``e = e^z`` of a block (``z`` consumed) and, with ``then``, ``then(e)`` (a row-wise
    map, e.g. a skinny GEMM; NumPy: on each chunk of rows while it is in cache,
    :func:`.np_exp_rows`).  Returns ``e`` or ``(e, then(e))``."""
    if np_owns(z, xp):
        return np_exp_rows(z, then)
    e = xp.exp(z)
    return e if then is None else (e, then(e))


def grad_gemms(e: Array, scale: Array, ab: Array, b: Array, db: Array, xp, eb: Array = None):
    """The two gradient GEMMs of a block with ``dz = diag(scale) e``: the rows are
    scaled after the first GEMM and before the second, never ``e`` itself.

    Returns ``(da_blk, dbt + (dzᵀ ab)ᵀ, Σ_i ⟨ab_i, da_i⟩)`` (the last is
    ``Σ dz∘(ab bᵀ)``): ``db`` is accumulated transposed, ``dbt = dbᵀ`` (K, C), see
    :func:`add_t`; None is zero (the first block).  ``eb``, when given, is ``e @ b``
    already computed (our own buffer: it is scaled in place).
    """
    sk = xp.expand_dims(scale, axis=1)
    dab = e @ b if eb is None else eb
    dab *= sk  # our own GEMM outputs are scaled and summed in place (one pass fewer each)
    return dab, add_t(db, ab * sk, e, xp), xp.sum(xp.vecdot(ab, dab, axis=-1))


def add_t(dbt, x, e, xp):
    """``dbt + xᵀ e``, i.e. ``dbᵀ`` accumulated: ``(eᵀ x)ᵀ = xᵀ e`` reads the block
    ``e`` in its own row-major order (10-20% faster than ``eᵀ x`` in OpenBLAS for these
    shapes); the caller returns :func:`untranspose` of it.  ``dbt`` None is zero, else
    updated in place."""
    return accumulate(dbt, xp.matrix_transpose(x) @ e)


def accumulate(acc, t):
    """``acc + t`` into ``acc`` (our own buffer, in place where the library allows it);
    ``acc`` None is zero."""
    if acc is None:
        return t
    acc += t
    return acc


def untranspose(dbt, xp):
    """``dbtᵀ``: row-major for NumPy (:func:`.np_row_major`, so that the row-wise
    passes after it read memory in order), a view elsewhere."""
    db = xp.matrix_transpose(dbt)
    return np_row_major(db) if np_namespace(xp) else db
