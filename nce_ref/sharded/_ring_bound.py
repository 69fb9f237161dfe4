r"""MI bounds on embeddings by the ring: each rank keeps its own columns; they travel.

A bound fits the ring when its value is a sum over rows of a function of one per-row
statistic that is a sum over the row's off-diagonal entries (an online log-sum-exp
``ℓ_i = LSE_{j≠i} w_ij``, ``w = z`` or SMILE's ``clip(z, −c, c)``; JS's objective
``Σ_{j≠i} softplus(z_ij)``), plus the row's own joint score ``p_i`` (computed where the
row lives) and a pooled term of the ``ℓ_i`` (DV's ``LSE_i ℓ_i``, over every rank).
Then the row statistics accumulate as the shards pass by (:mod:`._ring`), and the
off-diagonal gradient is ``G_ij = −e_ij e^{λ_i − Λ}`` (``e_ij = e^{w_ij − m_i}``,
JS: ``σ(z_ij)``), a per-row factor times an entry of the shard: its columns' part
travels home with the shard.  These are ``infonce`` (through
:func:`nce_ref.sharded.info_nce`), ``nwj``, ``tuba``, ``dv``, ``mine``, ``smile``,
``loo_upper`` and ``js``.

``interpolated`` needs, for every entry, the row's leave-one-out log-mean-exp without
that entry: a function of the entry and of per-row sums, so two forward rounds
(:func:`_interpolated`): the first accumulates each row's top-two summary ``(m1, a, T1,
m2, T2)`` online (the stable split of :func:`nce_ref.mi.bounds.loo_log_mean_exp`: the
maximum kept in ``T1 − e^{z_ik − m1}`` for every ``k ≠ a``, the argmax's own sum ``T2``
apart), the second the per-entry terms' row sums; its gradient round then needs only
per-row numbers and the entry.

``λ_i`` and ``Λ`` per bound (``docs/derivations.md`` §10): tuba, nwj ``m_i − b_i`` and
``log|O|``; dv, smile ``m_i`` and ``LSE_i ℓ_i``; mine ``m_i`` and ``log μ + log|O|``;
loo_upper ``−log r_i`` and ``log N``; js ``0`` and ``log|O|``.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device

from .._array import concrete_float, plus, scalar_grad
from .._ops import sigmoid, softplus
from .._stream._blocks import mask_band, set_band
from .._stream._logits import feature_kind, prepare_logits
from ..mi.bounds import exp_quiet
from ..mi.embeddings import RULES, RowEnv
from ..similarity import bilinear_features, pair_sim_from_features
from ._ring import blocks_of, pack
from ._ring_supcon import home, travel

Array = Any

__all__ = ["RING_BOUNDS", "bound_ring"]

#: the bounds the ring computes (infonce through the sharded info_nce's ring)
RING_BOUNDS = ("infonce", "nwj", "tuba", "dv", "mine", "smile", "loo_upper", "js", "interpolated")

_LAMBDA = {
    "tuba": lambda m, r, env: m - env.b, "nwj": lambda m, r, env: m - env.b,
    "dv": lambda m, r, env: m, "smile": lambda m, r, env: m, "mine": lambda m, r, env: m,
    "loo_upper": lambda m, r, env: -env.xp.log(r),
    "js": lambda m, r, env: env.xp.zeros_like(env.pos),
}


def _cat(parts, xp):
    return parts[0] if len(parts) == 1 else xp.concat(parts)


def bound_ring(su, comm, sizes, across, red, *, block: int, need_grad: bool, share: bool):
    """``(value, vjp)`` of :func:`nce_ref.sharded.bound_from_embeddings` by the ring for a
    bound of :data:`RING_BOUNDS` other than infonce (``su``: this rank's validated setup;
    ``across``: its ring sizes, for the global centre; ``red``: the reductions over every
    rank's rows)."""
    ctx, xp, rule = su.ctx, su.ctx.xp, RULES[su.bound]
    n_total, w_size = sum(sizes), comm.size
    rows, cols = ctx.to_compute(su.rows_in), ctx.to_compute(su.cols_in)
    r = rows.shape[0]
    fk = feature_kind(su.kind)
    center = across.center(rows, cols) if fk == "neg_sq_euclidean" else None
    fa, fb, back_f = bilinear_features(rows, cols, kind=fk, eps=su.eps, xp=xp, center=center)
    s_pos, back_pos = pair_sim_from_features(rows, cols, fa, fb, kind=su.kind, eps=su.eps, xp=xp)
    lg = prepare_logits(fa, fb, su.tau, concrete_float(su.tau0), kind=su.kind,
                        n_entries=r * n_total, dtype=ctx.dtype, xp=xp, clip=su.clip)
    rooted = lg.root is not None
    u_root = None if not rooted else lg.root[0]
    own = pack(lg.fb, None if not rooted else lg.root[1], xp)
    env = RowEnv(xp=xp, n=n_total, pos=s_pos / su.tau, b=su.b, clip=su.clip,
                 objective=su.report == "objective", log_mu=su.log_mu, alpha=su.alpha,
                 grad=need_grad, shift_free=False, flush=False)
    js, clip, interp = su.bound == "js", su.clip, su.bound == "interpolated"
    finite_clip = clip is not None and math.isfinite(clip)
    segments = [(0, r, (0,))]
    n_blocks = -(-r // block)
    carry = [None, None]

    def blocks():
        """``(r0, r1, ab, w, inside, dzdy, fb_shard, step)``, the diagonal −inf in ``w``
        (interpolated: the rows' joint scores ``p_i``, as the engine's kernel)."""
        for step, (shard,), box in travel(comm, [own], sizes, carry=carry[0]):
            carry[1] = box
            for r0, r1, ab, z, dzdy, fbs in blocks_of(lg.a, shard, rooted, u_root, block, step,
                                                      segments, xp):
                inside = None
                if clip is not None:
                    inside = xp.abs(z) <= clip if finite_clip else None
                    z = xp.clip(z, min=-clip, max=clip)
                    if step == 0:  # after the clip: the diagonal stays −inf
                        z = mask_band(z, r0, r1, 0, xp)
                if interp and step == 0:
                    z = set_band(z, r0, r1, 0, env.pos[r0:r1], xp)
                yield r0, r1, ab, z, inside, dzdy, fbs, step

    def stats():
        ms, rs = [None] * n_blocks, [None] * n_blocks
        for r0, _, _, z, _, _, _, _ in blocks():
            i = r0 // block
            if js and env.objective:  # Σ softplus(z): softplus(−inf) = 0
                part = xp.sum(softplus(z, xp=xp), axis=1)
                rs[i] = part if rs[i] is None else rs[i] + part
                continue
            mz = xp.max(z, axis=1)
            m = mz if ms[i] is None else xp.maximum(ms[i], mz)  # −inf: no entry yet
            h = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
            part = xp.sum(xp.exp(z - xp.expand_dims(h, axis=1)), axis=1)
            rs[i] = part if rs[i] is None else rs[i] * xp.exp(ms[i] - h) + part
            ms[i] = m
        if js and env.objective:
            return (_cat(rs, xp),)
        return _cat(ms, xp), _cat(rs, xp)  # N >= 2: every row has an off-diagonal entry, m finite

    entry_grad = None
    if interp:
        st, entry_grad = _interpolated(
            lambda: ((r0, r1, ab, z, step, dzdy) for r0, r1, ab, z, _, dzdy, _, step in blocks()),
            n_blocks, block, r, n_total, max(sizes) + 1, env, ctx.dtype, ctx.device)
    else:
        st = stats()
    terms = rule.terms(st, env)
    pooled, lse = rule.pooled(st, env, red)
    local = xp.sum(terms)
    value = ctx.result_finite(comm.all_sum(local) + pooled, "sharded.bound_from_embeddings")
    frac = su.n / n_total
    if share:
        value = w_size * (local + frac * pooled)
    if not need_grad:
        return ctx.to_out(value), None
    fixed = rule.fixed(env)
    big = fixed if fixed is not None else lse
    # the rows' factor of G (before the cotangent): e^{λ_i − Λ}
    if not interp:
        lam = _LAMBDA[su.bound](st[0], st[1], env) if not js else env.zeros(r)
        rho = exp_quiet(lam - big, xp=xp)
    dpos = rule.dpos(st, env)
    dlb = None if rule.dlb is None or su.lb is None else rule.dlb(st, env)
    col = xp.expand_dims
    m_rows = None if js or interp else col(st[0], axis=1)

    def sweep(w_off):
        """The gradient round: ``(da, db home)``, ``da`` (R, K) without the cotangent,
        ``db`` of this rank's columns with every rank's ``w_off`` in."""
        das = [None] * n_blocks
        carry[0] = xp.zeros((own.shape[0], lg.fb.shape[1]), dtype=ctx.dtype, device=ctx.device)
        for r0, r1, ab, z, inside, dzdy, fbs, step in blocks():
            box, i = carry[1], r0 // block
            if interp:  # ∂I/∂z from the entry and the row numbers, 0 on the diagonal
                g = entry_grad(z, r0, r1, step)
            else:
                e = sigmoid(z, xp=xp) if js else xp.exp(z - m_rows[r0:r1, :])  # 0 on the diagonal
                if inside is not None:
                    e = xp.where(inside, e, xp.zeros_like(e))
                g = -e * col(rho[r0:r1], axis=1)
            if dzdy is not None:
                g = g * dzdy
            part = g @ fbs
            das[i] = part if das[i] is None else das[i] + part
            box[0] = box[0] + xp.matrix_transpose(g) @ (ab * w_off)
        db = home(comm, carry[1][0], own.shape[0])
        carry[0] = carry[1] = None
        return (das[0] if n_blocks == 1 else xp.concat(das, axis=0)), db

    def vjp(g):
        g = ctx.to_compute(g)
        if share:  # rows by this rank's W g, the pooled term by W times the ranks' mean g
            w_rows = w_size * g
            w_off = (w_size * comm.all_sum(g * float(su.n)) / float(n_total)
                     if rule.pooled_grad else w_rows)
        else:
            w_rows = w_off = g
        da, db = sweep(w_off)
        zdz = (2.0 if rooted else 1.0) * xp.sum(lg.a * da)
        pos_part = xp.sum(dpos * env.pos)
        dlb_sum = xp.zeros_like(local) if dlb is None else xp.sum(dlb)
        tot = comm.all_sum(xp.stack([zdz, pos_part, dlb_sum]))
        if share:
            dtau = w_rows * -(pos_part + (frac * tot[0] if rule.pooled_grad else zdz)) / su.tau
            dlb_scalar = w_rows * dlb_sum
        else:
            dtau, dlb_scalar = -g * (tot[0] + tot[1]) / su.tau, g * tot[2]
        dfa, dfk, g_pa, g_pb = back_pos(dpos * (w_rows / su.tau), da * (w_off / lg.fold), db)
        g_rows, g_cols = back_f(dfa, dfk)
        r_name, c_name = su.names
        out = {r_name: ctx.like(plus(g_rows, g_pa), su.rows_in),
               c_name: ctx.like(plus(g_cols, g_pb), su.cols_in),
               "temperature": scalar_grad(ctx, dtau, su.tau0)}
        if dlb is not None:
            out["log_baseline"] = (su.lb_grad(dlb * w_rows) if su.per_sample
                                   else scalar_grad(ctx, dlb_scalar, su.log_baseline))
        return out

    return ctx.to_out(value), vjp


# -- interpolated: two forward rounds, then the gradient round ---------------------------

def _logaddexp(u, v, xp):
    """``log(e^u + e^v)``, one of them finite (the other may be −inf)."""
    m = xp.maximum(u, v)
    return m + xp.log(xp.exp(u - m) + xp.exp(v - m))


def _merge_top2(run, new, xp):
    """Merge two row summaries ``(m1, id, T1, m2, T2)`` of disjoint column sets:
    ``m1`` the maximum (at column ``id``), ``T1 = Σ e^{z − m1}``, ``m2`` the maximum of
    the others (−inf: none), ``T2 = Σ_{j≠id} e^{z − m2}``.  Ties keep the running argmax."""
    if run is None:
        return new
    m1a, ia, t1a, m2a, t2a = run
    m1b, ib, t1b, m2b, t2b = new
    take = m1b > m1a
    m1 = xp.maximum(m1a, m1b)
    t1 = t1a * xp.exp(m1a - m1) + t1b * xp.exp(m1b - m1)
    m2w, t2w = xp.where(take, m2b, m2a), xp.where(take, t2b, t2a)
    m1l, t1l = xp.where(take, m1a, m1b), xp.where(take, t1a, t1b)
    m2 = xp.maximum(m2w, m1l)  # m1l is finite: the loser's maximum is one of the others
    s2w = xp.where(xp.isfinite(m2w), m2w, m2)  # T2w = 0 there
    t2 = t2w * xp.exp(s2w - m2) + t1l * xp.exp(m1l - m2)
    return m1, xp.where(take, ib, ia), t1, m2, t2


def _top2_of_block(z, ids, xp):
    """The summary ``(m1, id, T1, m2, T2)`` of a block's rows (``ids``: its columns' ids)."""
    a = xp.argmax(z, axis=1)
    cols = xp.arange(z.shape[1], dtype=a.dtype, device=device(z))
    is_arg = xp.expand_dims(cols, axis=0) == xp.expand_dims(a, axis=1)
    m1 = xp.max(z, axis=1)
    t1 = xp.sum(xp.exp(z - xp.expand_dims(m1, axis=1)), axis=1)
    rest = xp.where(is_arg, xp.full_like(z, -math.inf), z)
    m2 = xp.max(rest, axis=1)
    s2 = xp.where(xp.isfinite(m2), m2, xp.zeros_like(m2))
    t2 = xp.sum(xp.exp(rest - xp.expand_dims(s2, axis=1)), axis=1)
    return m1, xp.take(ids, a), t1, m2, t2


def _interpolated(blocks, n_blocks, block, r, n_total, stride, env, dtype, dev):
    r"""The interpolated bound's row statistics by two rounds of the ring.

    Round 1: each row's summary ``(m1, a, T1, m2, T2)`` (:func:`_merge_top2`), the online
    form of :func:`nce_ref.mi.bounds.loo_log_mean_exp`'s two parts: the leave-one-out
    ``L_ik = m1 + log(T1 − e^{z_ik − m1}) − log(N−1)`` for ``k ≠ a_i`` (the row maximum
    stays in the sum: ``T1 − E1_ik ≥ max(1, T1/2)``, at most one bit lost), and
    ``m2 + log T2 − log(N−1)`` at the argmax.  Round 2: per entry ``B_ik =
    logaddexp(L_ik + log α, b_i + log(1−α))`` and the row sums ``ΣB``, ``W_i =
    Σ_{j≠i} e^{z_ij − B_ii}/(N−1)``, ``P1_i = Σ_{k≠i} p1_ik``, ``Q_i = Σ_{k≠i,a} p0_ik /
    (T1 − E1_ik)`` (``p0``, ``p1`` the two weights of ``B``): the VJP of
    :func:`nce_ref.mi.bounds.interpolated_rows` then needs only these per-row numbers and
    the entry (``docs/derivations.md`` §10).  Returns ``(st, entry_grad)``: ``st = (t,
    dpos, dlb)`` (as :data:`RULES`' kernel) and ``entry_grad(z, r0, r1, step)``, the
    block's ``∂I/∂z`` off the diagonal (0 on it).
    """
    xp = env.xp
    col = xp.expand_dims
    summ = [None] * n_blocks
    for r0, _, _, z, step, _ in blocks():
        ids = xp.arange(z.shape[1], device=dev) + step * stride
        summ[r0 // block] = _merge_top2(summ[r0 // block], _top2_of_block(z, ids, xp), xp)
    m1, aid, t1, m2, t2 = (_cat([s[k] for s in summ], xp) for k in range(5))
    log_n1 = math.log(n_total - 1)
    alpha = env.alpha
    log_a = math.log(alpha) if alpha > 0 else -math.inf
    log_1ma = math.log1p(-alpha) if alpha < 1 else -math.inf
    b = env.b_rows(0, r)
    b = b if getattr(b, "ndim", 0) == 1 else xp.full((r,), 1.0, dtype=dtype, device=dev) * b
    bb = b + log_1ma
    loo_arg = m2 + xp.log(t2) - log_n1
    b_arg = _logaddexp(loo_arg + log_a, bb, xp)
    p0_arg = xp.exp(loo_arg + log_a - b_arg)
    pos = env.pos
    diag_arg = aid == xp.arange(r, device=dev)
    e1_d = xp.exp(pos - m1)
    rest_d = t1 - e1_d
    rest_d = xp.where(diag_arg, xp.ones_like(rest_d), rest_d)
    loo_d = xp.where(diag_arg, loo_arg, m1 + xp.log(rest_d) - log_n1)
    b_d = _logaddexp(loo_d + log_a, bb, xp)
    def entries(z, r0, r1, step):
        """A block's per-entry leave-one-out terms: whether the entry is its row's
        argmax, ``e^{z − m1}``, the rest of the row's sum, the LOO log-mean-exp, the
        baseline mix ``B`` and ``p0 = e^{LOO + log α − B}``."""
        ids = xp.arange(z.shape[1], device=dev) + step * stride
        is_arg = col(ids, axis=0) == col(aid[r0:r1], axis=1)
        e1 = xp.exp(z - col(m1[r0:r1], axis=1))
        rest = col(t1[r0:r1], axis=1) - e1
        rest = xp.where(is_arg, xp.ones_like(rest), rest)
        loo = xp.where(is_arg, col(loo_arg[r0:r1], axis=1),
                       col(m1[r0:r1], axis=1) + xp.log(rest) - log_n1)
        bz = _logaddexp(loo + log_a, col(bb[r0:r1], axis=1), xp)
        return is_arg, e1, rest, bz, xp.exp(loo + log_a - bz)

    sums = [[None] * 4 for _ in range(n_blocks)]
    for r0, r1, _, z, step, _ in blocks():
        is_arg, _, rest, bz, p0 = entries(z, r0, r1, step)
        p1 = xp.exp(col(bb[r0:r1], axis=1) - bz)
        w = xp.exp(z - col(b_d[r0:r1], axis=1) - log_n1)
        q = xp.where(is_arg, xp.zeros_like(p0), p0 / rest)
        parts = [bz, w, p1, q]
        if step == 0:  # the diagonal's entries are the rows' own: not in these sums
            parts = [set_band(p, r0, r1, 0, 0.0, xp) for p in parts]
        acc = sums[r0 // block]
        for k, p in enumerate(parts):
            s = xp.sum(p, axis=1)
            acc[k] = s if acc[k] is None else acc[k] + s
    sum_b, w_row, p1_row, q_row = (_cat([s[k] for s in sums], xp) for k in range(4))
    t = pos - sum_b / (n_total - 1) - w_row
    p0_d = xp.exp(loo_d + log_a - b_d)
    p1_d = xp.exp(bb - b_d)
    g_dd = w_row * p0_d  # ∂t_i/∂L_ii through B_ii
    r_d = xp.where(diag_arg, xp.zeros_like(rest_d), 1.0 / rest_d)
    sw = -q_row / (n_total - 1) + g_dd * r_d
    g_a = xp.where(diag_arg, g_dd, -p0_arg / (n_total - 1))  # G at the row's argmax
    e2_d = xp.where(diag_arg, xp.zeros_like(pos), xp.exp(pos - m2))
    gam = 1.0 / n_total
    dpos = gam * (1.0 + e1_d * (sw - g_dd * r_d) + g_a * e2_d / t2)
    dlb = gam * (-p1_row / (n_total - 1) + w_row * p1_d)

    def entry_grad(z, r0, r1, step):
        is_arg, e1, rest, _, p0 = entries(z, r0, r1, step)
        wl = xp.where(is_arg, xp.zeros_like(p0), -p0 / ((n_total - 1) * rest))
        w = xp.exp(z - col(b_d[r0:r1], axis=1) - log_n1)
        e2 = xp.where(is_arg, xp.zeros_like(z), xp.exp(z - col(m2[r0:r1], axis=1)))
        g = gam * (-w + e1 * (col(sw[r0:r1], axis=1) - wl)
                   + col(g_a[r0:r1] / t2[r0:r1], axis=1) * e2)
        return set_band(g, r0, r1, 0, 0.0, xp) if step == 0 else g

    return (t, dpos, dlb), entry_grad
