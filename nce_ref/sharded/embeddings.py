r"""Sharded MI bounds on embeddings: :func:`nce_ref.mi.bound_from_embeddings` of a batch
whose rows are split over the ranks of a group.

Rank r holds rows ``x_r`` and ``y_r`` of the joint samples (row-aligned: its pairs
``(x_i, y_i)``).  The result equals the single-process function of the concatenated
batch, with the contract of :mod:`nce_ref.sharded.losses` (the global value on every
rank, each rank's rows of the gradient, the full gradient of the replicated
``temperature`` and scalar ``log_baseline``; or, with ``value="share"``, each rank's share).

The algorithm (``algorithm="gather"``, ``docs/mi.md`` §8): every rank gathers the columns
(``y``, or ``x`` with ``axis=0``) in the rolled order (its own shard first, so the joint
pairs are the band at offset 0) and runs the single-process engine
(:func:`nce_ref.mi.embeddings.bound_engine`) on its own rows against them: every per-row
statistic is then complete on the rank that owns the row.  What couples the ranks is the
bound's value, a sum of per-row terms plus a pooled term: one ``all_sum`` of a scalar, and
for DV, SMILE and MINE the log-sum-exp of the rows' ``ℓ_i`` over every rank (the global
maximum from a gather of one number per rank, then an ``all_sum`` of the shifted sums).
The gradient follows in the same pass (DV's ``Λ`` is that global log-sum-exp, applied
after the sweep); the columns' gradients are reduce-scattered to their owners.
``bound="infonce"`` is ``log N − L`` with ``L`` from :func:`nce_ref.sharded.info_nce`
(``algorithm="ring"`` too).  ``algorithm="ring"`` (:mod:`._ring_bound`) passes the
columns round the ranks instead, for every bound (``interpolated``: two forward rounds,
its leave-one-out statistics from per-row top-two summaries).
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import array_namespace

from .._array import check_option, concrete_float, scalar_grad
from ..autodiff import differentiable
from ..autodiff import vjp as vjp_of
from ..mi.embeddings import BoundSetup, bound_block, bound_engine, setup_bound
from ..similarity import DEFAULT_EPS
from ._comm import Communicator, ShardingError, validated
from ._ring_bound import bound_ring
from .losses import ALGORITHMS, VALUES, Across
from .losses import info_nce as sharded_info_nce

Array = Any

__all__ = ["bound_from_embeddings", "GlobalRows"]


class GlobalRows:
    """The reductions over every rank's rows: ``lse(v)`` of this rank's per-row ``v``.

    ``M = max_r max_i v`` from a gather of one number per rank (a maximum: exact, the same
    on every rank in any order), then ``LSE = M + log Σ_r Σ_i e^{v_i − M}`` by ``all_sum``."""

    def __init__(self, comm: Communicator):
        self.comm = comm

    def lse(self, v: Array) -> Array:
        xp = array_namespace(v)
        m = xp.max(self.comm.gather_rows(xp.reshape(xp.max(v), (1,)), [1] * self.comm.size))
        m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
        return m + xp.log(self.comm.all_sum(xp.sum(xp.exp(v - m))))


def _meta(su: BoundSetup, **options) -> dict:
    """What every rank must agree on (``rows`` may differ)."""
    lb = su.log_baseline
    return {"library": su.ctx.xp.__name__, "dtype": str(su.ctx.out_dtype),
            "trailing shape": tuple(su.rows_in.shape[1:]), "temperature": concrete_float(su.tau0),
            "bound": su.bound, "similarity": su.kind, "eps": su.eps, "axis": su.axis,
            "clip": su.clip, "report": su.report, "alpha": su.alpha,
            "log_moving_average": None if su.log_mu is None else concrete_float(su.log_mu),
            "log_baseline": None if lb is None else ("per sample" if su.per_sample
                                                     else concrete_float(lb)),
            **options, "rows": su.n}


@differentiable("sharded.bound_from_embeddings", wrt=("x", "y", "log_baseline", "temperature"),
                scalars=("log_baseline", "temperature"), sharded=True)
def bound_from_embeddings(x: Array, y: Array, log_baseline: float | Array = 0.0, /, *,
                          comm: Communicator, bound: str = "infonce", similarity: str = "dot",
                          temperature: float | Array = 1.0, clip: float | None = None,
                          report: str = "mi", log_moving_average: float | Array | None = None,
                          alpha: float | None = None, axis: int = 1, eps: float = DEFAULT_EPS,
                          value: str = "global", algorithm: str = "gather",
                          block_size: int | None = None, memory_budget: int | None = None,
                          check_finite: bool = True, xp=None, need_grad: bool = True):
    r""":func:`nce_ref.mi.bound_from_embeddings` of a batch sharded over the ranks of ``comm``.

    Rank r holds the rows ``x_r``, ``y_r`` of its joint samples (the same number of each,
    at least one; N = Σ n_r >= 2 for a bound with a marginal term); every other rank's
    ``y_j`` are its rows' marginal samples.  The result equals
    ``nce_ref.mi.bound_from_embeddings(concat(x_r), concat(y_r), ...)``, value and
    gradients, to rounding.

    Parameters
    ----------
    x, y : array, shape (n_r, D)
        This rank's rows.
    log_baseline : float, 0-d array or array of shape (n_r,), default 0.0
        As in the single-process function; a scalar is replicated (the same on every rank,
        checked), an array holds this rank's rows' baselines.
    comm : Communicator
        The group (:class:`nce_ref.sharded.TorchCommunicator`, ``MPICommunicator``,
        ``JaxCommunicator``, or a :class:`nce_ref.sharded.ThreadGroup`'s).
    bound, similarity, temperature, clip, report, log_moving_average, alpha, axis, eps
        As in :func:`nce_ref.mi.bound_from_embeddings`; the same on every rank (checked).
    value : {"global", "share"}, default "global"
        ``"global"``: the bound on every rank; through ``value_and_grad`` (a cotangent the
        same on every rank) this rank's rows of its gradient and the full gradient of
        ``temperature`` and of a scalar ``log_baseline``.  ``"share"``: this rank's share
        ``S_r = W·(Σ_{i∈r} t_i + (n_r/N)·P)``, the value being ``Σ_i t_i + P`` (per-row
        terms ``t_i``, pooled term ``P``: the table of :data:`nce_ref.mi.embeddings.RULES`;
        ``P`` is a constant, or DV's, SMILE's and MINE's ``−log`` of the mean of
        :math:`e^{w}` over the off-diagonal pairs); the shares average to the bound.  With
        per-rank cotangents ``g_r`` the inputs get the gradient of ``Σ_r g_r S_r`` and the
        replicated scalars this rank's own ``g_r ∂S_r/∂·``, as in
        :func:`nce_ref.sharded.info_nce` (a training step under DDP's gradient mean).
    algorithm : {"gather", "ring"}, default "gather"
        ``"gather"``: gather the columns (O(N·D) memory and bytes per rank), one pass of the
        engine.  ``"ring"``: each rank keeps its own columns and they pass round the ranks
        (O((N/W)·D) per rank), the rows' off-diagonal log-sum-exp (JS's objective: softplus
        sum) accumulated online, the columns' gradients travelling home
        (``nce_ref.sharded._ring_bound``; ``"infonce"`` through
        :func:`nce_ref.sharded.info_nce`): every bound; ``"interpolated"`` passes the
        columns round twice before the gradient round (each row's top-two summary, then
        the per-entry leave-one-out terms' row sums).
    block_size, memory_budget, check_finite, xp
        As in :func:`nce_ref.mi.bound_from_embeddings`, for this rank's computation.

    Returns
    -------
    estimate : 0-d array
        The bound (the same on every rank), or this rank's share.

    Raises
    ------
    nce_ref.sharded.ShardingError
        On every rank, when any rank's input is invalid (a NaN, a wrong shape, an option
        the bound does not take) or
        the ranks disagree on D, dtype, library, options, temperature or a scalar baseline.

    See Also
    --------
    nce_ref.mi.bound_from_embeddings
        The single-process function it equals.

    Notes
    -----
    Bytes per rank (``docs/mi.md`` §8): the gather of the columns, (N − n_r)·D elements in,
    and in the backward pass their reduce-scatter, the same again; besides, O(W) scalars:
    one ``all_sum`` of the value's per-row sum; for DV, SMILE and MINE one gather of a
    1-element maximum and one 1-element ``all_sum``; in the backward pass one 4-element
    ``all_sum`` (the temperature's and the baseline's parts, and the share's mean
    cotangent).  The ring (``docs/derivations.md`` §10): no gather; R rounds of the
    columns (R = 2: the row statistics and the gradient; interpolated 3), each sending
    the shards of W − 1 owners, and the columns' gradient accumulators' W passes home.

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref import mi
    >>> from nce_ref.sharded import ThreadGroup, bound_from_embeddings
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.standard_normal((7, 4)), rng.standard_normal((7, 4))
    >>> out = ThreadGroup(2).run(lambda comm, a, b: bound_from_embeddings(a, b, comm=comm, bound="dv"),
    ...                          [(x[:3], y[:3]), (x[3:], y[3:])])
    >>> bool(np.isclose(out[0], mi.bound_from_embeddings(x, y, bound="dv"))), float(out[0]) == float(out[1])
    (True, True)
    """
    def validate():
        check_option(value, "value", VALUES)
        check_option(algorithm, "algorithm", ALGORITHMS)
        su = setup_bound(x, y, log_baseline, bound=bound, similarity=similarity,
                         temperature=temperature, clip=clip, report=report,
                         log_moving_average=log_moving_average, alpha=alpha, axis=axis, eps=eps,
                         check_finite=check_finite, xp=xp, min_n=1)
        return su, _meta(su, value=value, algorithm=algorithm)

    su, metas = validated(comm, validate)
    sizes = [m["rows"] for m in metas]
    n_total = sum(sizes)
    if su.bound != "infonce" and n_total < 2:
        raise ShardingError(f"bound={su.bound!r} needs N >= 2 joint samples over all ranks (its "
                            f"marginal term averages the off-diagonal pairs); got N = {n_total} (`x`)")
    if su.bound == "infonce":
        return _infonce(su, comm, sizes, value=value, algorithm=algorithm, block_size=block_size,
                        memory_budget=memory_budget, need_grad=need_grad)
    if algorithm == "ring":  # every rank keeps its own columns; they travel
        block = bound_block(su, max(sizes), block_size=block_size, memory_budget=memory_budget,
                            like=su.rows_in)
        across = Across(comm, {}, n_total=n_total, ring=tuple(sizes))
        return bound_ring(su, comm, sizes, across, GlobalRows(comm), block=block,
                          need_grad=need_grad, share=value == "share")
    return _gathered(su, comm, sizes, {"x": x, "y": y}, share=value == "share",
                     block_size=block_size, memory_budget=memory_budget, need_grad=need_grad)


def _gathered(su: BoundSetup, comm, sizes, inputs, *, share, block_size, memory_budget, need_grad):
    """The engine on this rank's rows against every rank's columns (gathered)."""
    ctx, xp = su.ctx, su.ctx.xp
    n_total, w, frac = sum(sizes), comm.size, su.n / sum(sizes)
    cols = comm.gather_rows(ctx.to_compute(su.cols_in), sizes)
    block = bound_block(su, n_total, block_size=block_size, memory_budget=memory_budget,
                        like=su.rows_in)
    res = bound_engine(su, ctx.to_compute(su.rows_in), cols, n_total=n_total, block=block,
                       need_grad=need_grad, red=GlobalRows(comm))
    local = xp.sum(res.terms)
    value = ctx.result_finite(comm.all_sum(local) + res.pooled, "sharded.bound_from_embeddings")
    if share:  # checked as the global value (the same on every rank: all raise or none)
        value = w * (local + frac * res.pooled)
    if not need_grad:
        return ctx.to_out(value), None
    res.finish()
    pooled = res.rule.pooled_grad

    def vjp(g):
        g = ctx.to_compute(g)
        dlb = xp.zeros_like(local) if res.dlb is None else xp.sum(res.dlb)
        tot = comm.all_sum(xp.stack([res.zdz, res.pos_part, dlb, g * float(su.n)]))
        if share:  # rows by this rank's W g, the pooled term by W times the ranks' mean g
            w_rows = w * g
            w_off = w * tot[3] / float(n_total) if pooled else w_rows
            dtau = w_rows * res.dtau(res.pos_part + (frac * tot[0] if pooled else res.zdz))
            dlb_scalar = w_rows * dlb
        else:
            w_rows = w_off = g
            dtau, dlb_scalar = g * res.dtau(tot[0] + tot[1]), g * tot[2]
        g_rows, g_cols = res.inputs(w_rows, w_off)
        r_name, c_name = su.names
        out = {r_name: ctx.like(g_rows, inputs[r_name]),
               c_name: ctx.like(comm.reduce_rows(g_cols, sizes), inputs[c_name]),
               "temperature": scalar_grad(ctx, dtau, su.tau0)}
        if res.dlb is not None:
            out["log_baseline"] = (su.lb_grad(res.dlb * w_rows) if su.per_sample
                                   else scalar_grad(ctx, dlb_scalar, su.log_baseline))
        return out

    return ctx.to_out(value), vjp


def _infonce(su: BoundSetup, comm, sizes, *, value, algorithm, block_size, memory_budget,
             need_grad):
    """``log N − L``, ``L`` by :func:`nce_ref.sharded.info_nce` (a share: ``W (n_r/N) log N − L_r``)."""
    ctx = su.ctx
    n_total = sum(sizes)
    const = math.log(n_total) * (comm.size * su.n / n_total if value == "share" else 1.0)
    kw = dict(comm=comm, temperature=su.tau0, similarity=su.kind, eps=su.eps, value=value,
              algorithm=algorithm, block_size=block_size, memory_budget=memory_budget,
              check_finite=False, xp=ctx.xp)
    if need_grad:
        loss, back = vjp_of(sharded_info_nce, su.rows_in, su.cols_in, **kw)
    else:
        loss, back = sharded_info_nce(su.rows_in, su.cols_in, **kw), None
    out = ctx.to_out(ctx.result_finite(const - ctx.to_compute(loss), "sharded.bound_from_embeddings"))
    if back is None:
        return out, None

    def vjp(g):
        gl = back(-g)
        return {su.names[0]: gl["query"], su.names[1]: gl["key"], "temperature": gl["temperature"]}

    return out, vjp
