r"""SupCon by the ring: every rank keeps its own views and labels; they travel.

Rank r holds its anchors ``a`` (the temperature folded in) and its columns ``u_r``
with their labels (or global sample ids).  The column shards pass to rank + 1 at each
of W − 1 steps, each with its labels, and every anchor row accumulates, per shard, an
online log-sum-exp over its positives ``P_a`` and over its negatives ``N_a``
(``m ← max(m, max_j z_aj)``, ``r ← r e^{m − m'} + Σ_j e^{z_aj − m'}``, with the shift
0 for a set still empty), its positives' count ``n_a`` and, for ``positives="out"``,
their logits' sum ``Σ_P z_ap``.  With ``t_a = LSE_N − LSE_P`` (−inf without a
negative):

- ``out``: ``ℓ_a = softplus(t_a) + LSE_P − (1/n_a) Σ_P z_ap``;
- ``in``: ``ℓ_a = softplus(t_a) + log n_a``;
- ``per_pair``: a second forward round, once ``LSE_N`` is known:
  ``ℓ_a = Σ_P softplus(LSE_N − z_ap)`` and ``S_a = Σ_P σ(LSE_N − z_ap)``.

The gradient (rows' cotangents ``w``, 0 for an anchor without a positive) is a third
round in which each shard travels with the accumulator of its gradient (home after the
W-th pass, as in :mod:`._ring`): on N, ``dz = c^N_a e^{z − LSE_N}``, on P
``dz = c^P_a e^{z − LSE_P}`` (less ``w_a/n_a`` for ``out``), with
``c^N = w σ(t)`` and ``c^P = w σ(−t)`` (``out``) or ``−w σ(t)`` (``in``); for
``per_pair`` ``c^N = w S`` and on P ``dz = −w σ(LSE_N − z)``.  Every exponent is at
most 0: nothing overflows, and a finite input gives no NaN.

``docs/derivations.md`` §10 derives it and counts the bytes.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import is_writeable_array

from .._array import concrete_float, scalar_grad
from .._ops import sigmoid, softplus
from .._stream._blocks import exp_inplace
from .._stream._logits import feature_kind, prepare_logits
from ..losses.supcon import features_grad, reduce_anchors
from ..similarity import bilinear_features
from ._ring import add_into, blocks_of, pack

Array = Any

__all__ = ["supcon_ring", "travel", "home", "isub", "imul"]


def travel(comm, arrays: list, sizes, carry=None):
    """Yield ``(step, arrays, box)`` for the W shards in ring order: ``arrays`` (the
    rank's own at step 0, each with ``sizes[r]`` rows for rank r's) pass to rank + 1
    after each step, and ``box[0]`` (an accumulator the caller replaces) with them."""
    w, rank = comm.size, comm.rank
    box = [carry]
    for step in range(w):
        yield step, arrays, box
        if step == w - 1:
            break
        recv = sizes[(rank - step - 1) % w] if isinstance(rank, int) else sizes[0]
        arrays = [comm.ring_pass(x, recv) for x in arrays]
        if box[0] is not None:
            box[0] = comm.ring_pass(box[0], recv)


def home(comm, acc, rows: int):
    """The accumulator after its W-th step: one more pass brings it to its owner."""
    return acc if comm.size == 1 else comm.ring_pass(acc, rows)


def _relation(ctx, lab_a, xp):
    """``rel(r0, r1, lab) -> (r1 − r0, C_s) bool``: anchors ``r0..r1`` against a shard's
    labels (equal single labels, or multi-label 0/1 rows sharing one)."""
    if lab_a.ndim == 1:
        return lambda r0, r1, lab: xp.expand_dims(lab_a[r0:r1], axis=1) == xp.expand_dims(lab, axis=0)
    ya = xp.astype(lab_a, ctx.dtype)
    return lambda r0, r1, lab: (ya[r0:r1, :] @ xp.matrix_transpose(xp.astype(lab, ctx.dtype))) > 0.5


def isub(z, t, xp):
    """``z − t`` into ``z`` (our own block) where the library allows it."""
    if is_writeable_array(z):
        z -= t
        return z
    return z - t


def imul(z, t, xp):
    """``z · t`` into ``z`` (our own block) where the library allows it."""
    if is_writeable_array(z):
        z *= t
        return z
    return z * t


def _safe(m, xp):
    return xp.where(xp.isfinite(m), m, xp.zeros_like(m))


def _lse(h, r, xp):
    """``h + log r``, −inf where ``r = 0`` (an empty set)."""
    some = r > 0
    return xp.where(some, h + xp.log(xp.where(some, r, xp.ones_like(r))),
                    xp.full_like(r, -math.inf))


def supcon_ring(st, comm, across, *, block: int, need_grad: bool):
    """:func:`nce_ref.sharded.supcon` with ``algorithm="ring"``: ``st`` this rank's
    validated state (``nce_ref.losses.supcon.setup_supcon``, ``st.col_labels`` its
    columns' labels or global ids), ``across`` the sharded reduction
    (:class:`nce_ref.sharded.losses.Across` with ``ring`` the ranks' column counts).
    Returns ``(value, vjp)``."""
    ctx, xp = st.ctx, st.xp
    tau, tau0 = st.tau, st.tau0
    sizes = across.ring
    fk = feature_kind(st.kind)
    center = across.center(st.anchors, st.u) if fk == "neg_sq_euclidean" else None
    fa, fb, back_f = bilinear_features(st.anchors, st.u, kind=fk, eps=st.eps, xp=xp, center=center)
    lg = prepare_logits(fa, fb, tau, concrete_float(tau0), kind=st.kind,
                        n_entries=st.n_anchor * sum(sizes), dtype=ctx.dtype, xp=xp)
    rooted = lg.root is not None
    u_root = None if not rooted else lg.root[0]
    own = pack(lg.fb, None if not rooted else lg.root[1], xp)
    a, na = lg.a, st.n_anchor
    rel = _relation(ctx, st.col_labels[:na, ...], xp)
    segments = [(0, na, (0,))]
    out, pair = st.positives == "out", st.positives == "per_pair"
    kb = None if st.base_temperature is None else tau / st.base_temperature

    def blocks():
        """``(r0, r1, ab, z, dzdy, fb_shard, p)`` over every shard and row block, the
        anchor's own column −inf in ``z`` and False in ``p``; ``carry[0]``, when set, is
        the accumulator that travels with the shards (``carry[1]`` its current box)."""
        for step, (shard, lab), box in travel(comm, [own, st.col_labels], sizes, carry=carry[0]):
            carry[1] = box
            for r0, r1, ab, z, dzdy, fbs in blocks_of(a, shard, rooted, u_root, block, step,
                                                      segments, xp):
                p = rel(r0, r1, lab)
                if step == 0:
                    rows = xp.arange(r0, r1, device=ctx.device)
                    cols = xp.arange(z.shape[1], device=ctx.device)
                    p = p & (xp.expand_dims(rows, axis=1) != xp.expand_dims(cols, axis=0))
                yield r0, r1, ab, z, dzdy, fbs, p

    carry = [None, None]
    n_blocks = -(-na // block)
    zeros = [None] * n_blocks

    def stats():
        """Pass 1: per row, (h, r) of P and of N, the count, the positives' logit sum."""
        ninf = -math.inf
        zero = xp.zeros((na,), dtype=ctx.dtype, device=ctx.device)
        st_ = {k: list(zeros) for k in ("mp", "rp", "mn", "rn", "n", "zs")}
        for r0, r1, _, z, _, _, p in blocks():
            i = r0 // block
            if st_["mp"][i] is None:
                for k, v in (("mp", ninf), ("mn", ninf), ("rp", 0.0), ("rn", 0.0), ("n", 0.0),
                             ("zs", 0.0)):
                    st_[k][i] = xp.full((r1 - r0,), v, dtype=ctx.dtype, device=ctx.device)
            if z.shape[1] == 0:
                continue
            col = xp.expand_dims
            one_inf = xp.full((1, 1), ninf, dtype=z.dtype, device=ctx.device)
            nil = xp.zeros((1, 1), dtype=z.dtype, device=ctx.device)
            mp = xp.maximum(st_["mp"][i], xp.max(xp.where(p, z, one_inf), axis=1))
            mn = xp.maximum(st_["mn"][i], xp.max(xp.where(p, one_inf, z), axis=1))
            hp, hn = _safe(mp, xp), _safe(mn, xp)
            st_["n"][i] = st_["n"][i] + xp.sum(xp.astype(p, ctx.dtype), axis=1)
            if out:  # before z is overwritten
                st_["zs"][i] = st_["zs"][i] + xp.sum(xp.where(p, z, nil), axis=1)
            # e^{z − h}, h = hP on P and hN off it; the own column (−inf) gives 0
            e = exp_inplace(isub(z, xp.where(p, col(hp, axis=1), col(hn, axis=1)), xp), xp)
            z = None
            st_["rp"][i] = (st_["rp"][i] * xp.exp(st_["mp"][i] - hp)
                            + xp.sum(xp.where(p, e, nil), axis=1))
            st_["rn"][i] = (st_["rn"][i] * xp.exp(st_["mn"][i] - hn)
                            + xp.sum(xp.where(p, nil, e), axis=1))
            st_["mp"][i], st_["mn"][i] = mp, mn
            e = None
        cat = {k: (xp.concat(v) if n_blocks > 1 else v[0]) if v[0] is not None else zero
               for k, v in st_.items()}
        lse_p = _lse(_safe(cat["mp"], xp), cat["rp"], xp)
        lse_n = _lse(_safe(cat["mn"], xp), cat["rn"], xp)
        return lse_p, lse_n, cat["n"], cat["zs"]

    lse_p, lse_n, npos, zsum = stats()
    has = npos > 0
    has_n = xp.isfinite(lse_n)
    one = xp.ones_like(npos)
    n_safe = xp.where(has, npos, one)
    t = xp.where(has_n, xp.where(has, lse_n - lse_p, xp.zeros_like(npos)),
                 xp.full_like(npos, -math.inf))
    if pair:
        per, s_sig = _pairs(blocks, lse_n, na, block, ctx, xp)
    elif out:
        per = softplus(t, xp=xp) + xp.where(has, lse_p, xp.zeros_like(npos)) - zsum / n_safe
    else:
        per = softplus(t, xp=xp) + xp.log(n_safe)
    per = xp.where(has, per, xp.zeros_like(per))
    count = npos if pair else xp.astype(has, ctx.dtype)
    if st.no_negative == "zero":  # PML: no anchor of any rank with a negative gives 0
        keep = across.total(xp.sum(xp.astype(has_n, ctx.dtype))) > 0
        per = xp.where(keep, per, xp.zeros_like(per))
        has = xp.logical_and(has, keep)  # and the rows' cotangents vanish (pass 3)

    def grads(w):
        """Pass 3: the rows' cotangents ``w`` → (da, db home, Σ dz∘z)."""
        w = xp.where(has, w, xp.zeros_like(w))
        if pair:
            c_p, c_n = None, w * s_sig
        else:
            c_n = w * sigmoid(t, xp=xp)
            c_p = w * sigmoid(-t, xp=xp) if out else -c_n
        col = xp.expand_dims
        lp, ln = col(_safe(lse_p, xp), axis=1), col(_safe(lse_n, xp), axis=1)
        da = list(zeros)
        carry[0] = xp.zeros((own.shape[0], lg.fb.shape[1]), dtype=a.dtype, device=ctx.device)
        for r0, r1, ab, z, dzdy, fbs, p in blocks():
            box = carry[1]
            i = r0 // block
            wk = col(w[r0:r1], axis=1)
            sig = sigmoid(ln[r0:r1, :] - z, xp=xp) if pair else None  # before z is overwritten
            # e^{z − LSE_P} on P, e^{z − LSE_N} off it (own column: 0), then the row factors
            dz = exp_inplace(isub(z, xp.where(p, lp[r0:r1, :], ln[r0:r1, :]), xp), xp)
            z = None
            if pair:
                dz = imul(dz, col(c_n[r0:r1], axis=1), xp)
                dz = xp.where(p, -wk * sig, dz)
                sig = None
            else:
                dz = imul(dz, xp.where(p, col(c_p[r0:r1], axis=1), col(c_n[r0:r1], axis=1)), xp)
                if out:
                    zero = xp.zeros((1, 1), dtype=dz.dtype, device=ctx.device)
                    dz = isub(dz, xp.where(p, wk / col(n_safe[r0:r1], axis=1), zero), xp)
            if dzdy is not None:
                dz = imul(dz, dzdy, xp)
            da[i] = add_into(da[i], dz @ fbs)
            box[0] = add_into(box[0], xp.matrix_transpose(dz) @ ab)
            dz = None
        back = home(comm, carry[1][0], own.shape[0])
        carry[0] = carry[1] = None
        da = xp.concat(da, axis=0) if n_blocks > 1 else da[0]
        zdz = xp.sum(xp.vecdot(a, da, axis=-1)) * (2.0 if rooted else 1.0)
        return da, back, zdz

    def grads_of(w, per_dot):
        da, db, zdz = grads(w)
        dtau = -zdz / tau
        if kb is not None:
            dtau = dtau + per_dot / tau
        dtau = across.temperature(dtau)
        g_anchor, g_u = back_f(da / lg.fold, db)
        return {"features": features_grad(st, g_anchor, g_u),
                "temperature": scalar_grad(ctx, dtau, tau0)}

    def finish(value):
        return ctx.to_out(ctx.result_finite(value if kb is None else value * kb, "supcon"))

    if st.reduction == "none":
        def vjp_rows(g):
            gl = ctx.to_compute(g) if kb is None else ctx.to_compute(g) * kb
            return grads_of(gl, xp.sum(gl * per))

        return finish(per), (vjp_rows if need_grad else None)
    value, back_red = reduce_anchors(per, count, st, across)

    def vjp(g):
        gl = back_red(ctx.to_compute(g))
        if kb is not None:
            gl = gl * kb
        return grads_of(gl, xp.sum(gl * per))

    return finish(value), (vjp if need_grad else None)


def _pairs(blocks, lse_n, na, block, ctx, xp):
    """Pass 2 of ``per_pair``: ``Σ_P softplus(LSE_N − z)`` and ``Σ_P σ(LSE_N − z)`` per row."""
    n_blocks = -(-na // block)
    ls, ss = [None] * n_blocks, [None] * n_blocks
    # a row without negatives (LSE_N = −inf) has every pair term 0: keep its −inf out of the
    # subtraction (−inf − −inf at the own column would be NaN)
    has_n = xp.expand_dims(xp.isfinite(lse_n), axis=1)
    ln = xp.expand_dims(_safe(lse_n, xp), axis=1)
    for r0, r1, _, z, _, _, p in blocks():
        i = r0 // block
        keep = xp.logical_and(p, has_n[r0:r1, :])
        arg = xp.where(keep, ln[r0:r1, :] - z, xp.full_like(z, -math.inf))  # −inf: softplus 0, σ 0
        lb, sb = xp.sum(softplus(arg, xp=xp), axis=1), xp.sum(sigmoid(arg, xp=xp), axis=1)
        ls[i] = lb if ls[i] is None else ls[i] + lb
        ss[i] = sb if ss[i] is None else ss[i] + sb
    return xp.concat(ls), xp.concat(ss)
