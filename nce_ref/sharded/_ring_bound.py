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
``loo_upper`` and ``js``.  ``interpolated`` does not fit: its row terms need, for every
entry, the row's leave-one-out log-mean-exp without that entry (a non-linear function of
each entry and of the whole row), not one per-row sum.

``λ_i`` and ``Λ`` per bound (``docs/derivations.md`` §10): tuba, nwj ``m_i − b_i`` and
``log|O|``; dv, smile ``m_i`` and ``LSE_i ℓ_i``; mine ``m_i`` and ``log μ + log|O|``;
loo_upper ``−log r_i`` and ``log N``; js ``0`` and ``log|O|``.
"""

from __future__ import annotations

import math
from typing import Any

from .._array import concrete_float, plus, scalar_grad
from .._ops import sigmoid, softplus
from .._stream._blocks import mask_band
from .._stream._logits import feature_kind, prepare_logits
from ..mi.bounds import exp_quiet
from ..mi.embeddings import RULES, RowEnv
from ..similarity import bilinear_features, pair_sim_from_features
from ._ring import blocks_of, pack
from ._ring_supcon import home, travel

Array = Any

__all__ = ["RING_BOUNDS", "ring_refusal", "bound_ring"]

#: the bounds the ring computes (infonce through the sharded info_nce's ring)
RING_BOUNDS = ("infonce", "nwj", "tuba", "dv", "mine", "smile", "loo_upper", "js")

_LAMBDA = {
    "tuba": lambda m, r, env: m - env.b, "nwj": lambda m, r, env: m - env.b,
    "dv": lambda m, r, env: m, "smile": lambda m, r, env: m, "mine": lambda m, r, env: m,
    "loo_upper": lambda m, r, env: -env.xp.log(r),
    "js": lambda m, r, env: env.xp.zeros_like(env.pos),
}


def _cat(parts, xp):
    return parts[0] if len(parts) == 1 else xp.concat(parts)


def ring_refusal(bound: str) -> str | None:
    """Why ``bound`` has no ring (a message naming it), or None when it has one."""
    if bound in RING_BOUNDS:
        return None
    return (f"`algorithm='ring'` is not available for bound={bound!r}: its row terms need, "
            f"for every entry, the row's leave-one-out log-mean-exp without that entry (a "
            f"non-linear function of each score and of the whole row), not one per-row sum "
            f"that can accumulate as the columns travel; use algorithm='gather' (the ring "
            f"takes {', '.join(RING_BOUNDS)})")


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
    js, clip = su.bound == "js", su.clip
    finite_clip = clip is not None and math.isfinite(clip)
    segments = [(0, r, (0,))]
    n_blocks = -(-r // block)
    carry = [None, None]

    def blocks():
        """``(r0, r1, ab, w, inside, dzdy, fb_shard)``, the diagonal −inf in ``w``."""
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
                yield r0, r1, ab, z, inside, dzdy, fbs

    def stats():
        ms, rs = [None] * n_blocks, [None] * n_blocks
        for r0, _, _, z, _, _, _ in blocks():
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
    lam = _LAMBDA[su.bound](st[0], st[1], env) if not js else env.zeros(r)
    rho = exp_quiet(lam - big, xp=xp)
    dpos = rule.dpos(st, env)
    dlb = None if rule.dlb is None or su.lb is None else rule.dlb(st, env)
    col = xp.expand_dims
    m_rows = None if js else col(st[0], axis=1)

    def sweep(w_off):
        """The gradient round: ``(da, db home)``, ``da`` (R, K) without the cotangent,
        ``db`` of this rank's columns with every rank's ``w_off`` in."""
        das = [None] * n_blocks
        carry[0] = xp.zeros((own.shape[0], lg.fb.shape[1]), dtype=ctx.dtype, device=ctx.device)
        for r0, r1, ab, z, inside, dzdy, fbs in blocks():
            box, i = carry[1], r0 // block
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
