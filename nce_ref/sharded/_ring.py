r"""The ring algorithm: column shards travel round the ranks, O((N/W)·D) per rank.

For this rank's rows ``a`` (the temperature folded in) and the columns of every rank,
each rank holds only its own columns; they are passed to rank + 1 at each of W − 1
steps, so that every rank sees every shard once (Inf-CL's ring, without its fused
kernels).  With ``z_ij = a_i · b_j`` (or the euclidean root, whose column noise
floors travel with the shard as one more column) and the positive ``pos_i`` held
apart:

1. *forward*: the online log-sum-exp of each row over the shards, its shift
   ``m_i = max(pos_i, max_j z_ij)`` and sum ``r_i = Σ_j e^{z_ij − m_i}`` updated per
   shard (``r ← r e^{m − m'} + Σ_j e^{z_ij − m'}``), then
   ``ℓ_i = (m_i − pos_i) + log1p(r_i + expm1(pos_i − m_i))``;
2. *backward*, when the rows' cotangents ``w`` are known: the shards travel again,
   each with an accumulator of its gradient, ``dz_ij = w_i e^{z_ij − m_i}/D_i``
   (``D_i = r_i + e^{pos_i − m_i}``), ``da_i += Σ_j dz_ij b_j`` here, ``db_j += Σ_i
   dz_ij a_i`` on the accumulator, which reaches the shard's owner after the W-th pass;
   ``dpos_i = w_i expm1(−ℓ_i)`` and ``Σ dz∘z = Σ_i ⟨a_i, da_i⟩`` (twice that under the root).

The excluded entries (the positive's column, SimCLR's own view) are bands of the
rank's own shard, which it holds at step 0: their indices are static.  Bytes sent per
rank: (W − 1)·C_r·K forward, W·2·C_r·K backward (C_r the rows of the largest shard).
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import is_writeable_array

from .._stream._blocks import exp_inplace, logit_blocks, mask_band
from .._stream._rows import lse_terms

Array = Any

__all__ = ["ring_sweep", "pack", "blocks_of", "shifted_exp", "add_into"]


def pack(fb: Array, v: Array | None, xp) -> Array:
    """The shard that travels: the features, and the root's column noise as one more column."""
    return fb if v is None else xp.concat([fb, xp.expand_dims(v, axis=1)], axis=1)


def _unpack(shard: Array, rooted: bool):
    if not rooted:
        return shard, None
    return shard[:, :-1], shard[:, -1]


def _shards(comm, first: Array, sizes, carry=None):
    """Yield ``(step, shard, carry)`` for the W shards in ring order, passing each to the
    next rank after it is used (and ``carry``, an accumulator, with it: the caller
    replaces ``carry`` through the returned list)."""
    w = comm.size
    rank = comm.rank
    shard, box = first, [carry]
    for step in range(w):
        yield step, shard, box
        if step == w - 1:
            break
        recv = sizes[(rank - step - 1) % w] if isinstance(rank, int) else sizes[0]
        shard = comm.ring_pass(shard, recv)
        if box[0] is not None:
            box[0] = comm.ring_pass(box[0], recv)


def blocks_of(a, shard, rooted, u, block, step, segments, xp):
    """The row blocks of this shard's logits, the own shard's bands masked at step 0."""
    fb, v = _unpack(shard, rooted)
    root = None if not rooted else (u, v)
    for r0, r1, ab, z, dzdy in logit_blocks(a, fb, block, root, xp):
        if step == 0:
            for s0, s1, sbands in segments:
                lo, hi = max(r0, s0), min(r1, s1)
                if lo >= hi:
                    continue
                for off in sbands:
                    # rows [lo, hi) of the segment: entry (i, s0 + (i − s0) + off)
                    z = _mask_rows(z, lo - r0, hi - r0, lo + off, xp)
        yield r0, r1, ab, z, dzdy, fb


def _mask_rows(z, i0: int, i1: int, c0: int, xp):
    """``z[i, c0 + (i − i0)] = −inf`` for block rows ``i`` in ``[i0, i1)`` (in place on a
    writable block: its row slice is a view)."""
    if i0 == 0 and i1 == z.shape[0]:
        return mask_band(z, 0, i1, c0, xp)
    sub = mask_band(z[i0:i1, :], 0, i1 - i0, c0, xp)
    if is_writeable_array(z):
        return z
    return xp.concat([z[:i0, :], sub, z[i1:, :]], axis=0)


def shifted_exp(z, shift, xp, scale=None):
    """``e^{z − shift_i}`` (times ``scale_i``) of a block, row factors ``(R,)``: in place
    on a writable block (NumPy, torch: the block's one buffer, no temporaries), else new."""
    col = xp.expand_dims(shift, axis=1)
    if not is_writeable_array(z):
        e = xp.exp(z - col)
        return e if scale is None else e * xp.expand_dims(scale, axis=1)
    z -= col
    e = exp_inplace(z, xp)
    if scale is not None:
        e *= xp.expand_dims(scale, axis=1)
    return e


def add_into(acc, part):
    """``acc + part`` (in place on a writable ``acc``); ``acc`` None is ``part``."""
    if acc is None:
        return part
    if is_writeable_array(acc):
        acc += part
        return acc
    return acc + part


def ring_sweep(comm, lg, pos: Array, *, col_sizes, segments, block: int, xp):
    """``sweep(weights) -> (l, [(da, db, dpos, zdz)])`` by the ring, the drop-in of
    ``nce_ref.losses.infonce``'s one-pass sweep for the rows ``lg.a`` against every
    rank's columns (``lg.fb`` this rank's; ``col_sizes[r]`` rank r's count).

    ``segments``: ``(r0, r1, bands)`` as in the engine; the bands index this rank's own
    shard.  ``db`` comes back with this rank's own columns' gradient (summed over every
    rank's rows), so nothing is left to reduce.
    """
    rooted = lg.root is not None
    u = None if not rooted else lg.root[0]
    own = pack(lg.fb, None if not rooted else lg.root[1], xp)
    a = lg.a

    cache = []  # the rows' (m, r): swept once, for the value and for the VJP

    def stats():
        if cache:
            return cache[0]
        m = pos
        r = xp.zeros_like(pos)
        for step, shard, _ in _shards(comm, own, col_sizes):
            parts_m, parts_r = [], []
            for r0, r1, _, z, _, _ in blocks_of(a, shard, rooted, u, block, step, segments, xp):
                mz = xp.max(z, axis=1) if z.shape[1] else xp.full((r1 - r0,), -math.inf, dtype=z.dtype)
                mb = xp.maximum(m[r0:r1], mz)
                rb = r[r0:r1] * xp.exp(m[r0:r1] - mb) + xp.sum(shifted_exp(z, mb, xp), axis=1)
                z = None
                parts_m.append(mb)
                parts_r.append(rb)
            if parts_m:
                m, r = xp.concat(parts_m), xp.concat(parts_r)
        cache.append((m, r))
        return m, r

    def sweep(weights):
        m, r = stats()
        l, _ = lse_terms(m, r, pos, xp)
        if weights is None:
            return l, None
        denom = r + xp.exp(pos - m)
        scale = weights / denom
        da = {}  # row block -> its gradient, summed over the shards
        k = lg.fb.shape[1]
        acc = xp.zeros((own.shape[0], k), dtype=a.dtype, device=_device(a))
        for step, shard, box in _shards(comm, own, col_sizes, carry=acc):
            acc = None
            for r0, r1, ab, z, dzdy, fb in blocks_of(a, shard, rooted, u, block, step, segments, xp):
                e = shifted_exp(z, m[r0:r1], xp, scale=scale[r0:r1])
                z = None
                if dzdy is not None:
                    e = e * dzdy
                da[r0] = add_into(da.get(r0), e @ fb)
                box[0] = add_into(box[0], xp.matrix_transpose(e) @ ab)
                e = None
        # the accumulator has visited every rank; one more pass brings it to its owner
        back = box[0] if comm.size == 1 else comm.ring_pass(box[0], own.shape[0])
        box[0] = None
        da = xp.concat([da[r0] for r0 in sorted(da)], axis=0) if len(da) > 1 else da[0]
        zdz = xp.sum(xp.vecdot(a, da, axis=-1)) * (2.0 if rooted else 1.0)
        dpos = weights * xp.expm1(-l)
        return l, [(da, back, dpos, zdz)]

    return sweep


def _device(x):
    from array_api_compat import device

    return device(x)
