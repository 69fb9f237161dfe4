r"""Sharded losses: one batch whose rows are split over the ranks of a group.

Each function takes this rank's rows, the options of its single-process namesake
and a communicator (:class:`nce_ref.sharded.Communicator`), and computes *exactly*
the single-process function of the concatenated batch:

- the value is the global loss, the same on every rank (``reduction="none"``: this
  rank's rows of the per-row terms);
- through :func:`nce_ref.value_and_grad` (or :func:`nce_ref.vjp`), the gradients are
  this rank's rows of the global gradient, and the full gradient of the replicated
  temperature (the same on every rank).  The cotangent of a reduced value must be
  the same on every rank (it is the cotangent of the one global loss).

The algorithm (``algorithm="gather"``): every rank gathers the columns (keys, views)
of all ranks, O(N·D) memory and bytes per rank, in the *rolled order* (its own shard
first), and runs the single-process engine (:mod:`nce_ref._stream`) on its own rows
against them; the value and the temperature's gradient are summed over the ranks,
and the columns' gradients are reduce-scattered back to their owners.  Symmetric
(CLIP) losses gather the queries too and run the column direction on the rank's own
keys, so every column's log-sum-exp is computed where its key lives, with no
cross-rank log-sum-exp.  ``docs/sharded.md`` derives it and counts the bytes.

Before any other collective the ranks agree on the metadata (``agree``): shapes,
dtype, library, options and the temperature; a rank whose input fails validation
(a NaN, a wrong shape, no rows) makes every rank raise the same
:class:`nce_ref.sharded.ShardingError`, so none waits forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._array import check_option, check_pair, concrete_float, resolve, scalar_param
from .._reduce import check_reduction
from .._stream import choose_block
from .._stream._logits import buffers
from ..autodiff import differentiable
from ..losses.infonce import (
    check_info_nce_options,
    in_batch_default,
    info_nce_engine,
    nt_xent_engine,
)
from ..losses.supcon import column_labels, setup_supcon, supcon_engine
from ..similarity import DEFAULT_EPS, check_similarity
from ._comm import Communicator, validated
from ._ring import ring_sweep
from ._ring_supcon import supcon_ring

Array = Any

__all__ = ["info_nce", "nt_xent", "supcon", "ALGORITHMS", "VALUES", "Across"]

#: how the ranks share the columns: all-gather them, or pass them round a ring
ALGORITHMS = ("gather", "ring")


@dataclass(frozen=True)
class Across:
    """The rows of one rank of a sharded batch, for the engine's drivers.

    ``gathered`` maps an input's name to its shards' sizes (rank order) for the inputs
    whose columns were gathered: their gradients are sent back to their owners.
    ``n_total`` terms make the mean; ``scale`` weights this part of the loss (½ for
    each direction of a symmetric loss); ``ring`` holds the ranks' column counts when
    the columns travel instead; ``share``: the value is this rank's share of the loss.
    """

    comm: Communicator
    gathered: dict
    n_total: int
    scale: float = 1.0
    ring: tuple | None = None
    share: bool = False

    @property
    def fusable(self) -> bool:
        """Whether the gradient may be swept with unit weights and scaled by the cotangent
        afterwards: not when the columns' gradients travel during the sweep (the ring),
        since another rank's cotangent must weigh them before they leave."""
        return self.ring is None

    @property
    def factor(self) -> int:
        """W for a rank's share (the ranks' shares average to the loss), else 1."""
        return self.comm.size if self.share else 1

    def combine(self, x):
        """The global sum of ``x`` (each rank's part), or this rank's share ``W x``."""
        return self.factor * x if self.share else self.total(x)

    def temperature(self, d):
        """The temperature's gradient from this rank's part ``d``: the total, or, for a
        share, this rank's own (a replicated temperature: the ranks' mean is the total's
        share)."""
        return d if self.share else self.total(d)

    def center(self, rows, cols):
        """The centre of the euclidean features: None (the rows' and columns' own mean)
        when every column is here; the global mean when the columns' features travel."""
        if self.ring is None:
            return None
        xp = _namespace(rows)
        total = self.total(xp.concat([xp.sum(rows, axis=0) + xp.sum(cols, axis=0),
                                      xp.asarray([float(rows.shape[0] + cols.shape[0])],
                                                 dtype=rows.dtype, device=_device(rows))]))
        return xp.expand_dims(total[:-1] / total[-1], axis=0)

    def sweep(self, lg, pos, segments, *, block: int, xp):
        """The ring's sweep over every rank's columns (``ring`` holds their sizes), or None:
        the engine's one-pass sweep over the gathered columns."""
        if self.ring is None:
            return None
        return ring_sweep(self.comm, lg, pos, col_sizes=self.ring, segments=segments, block=block,
                          xp=xp)

    def total(self, x):
        """The sum over ranks of ``x``."""
        return self.comm.all_sum(x)

    def weight(self, reduction: str) -> float:
        """Each term's weight in the value (in this rank's share: W times it)."""
        w = self.scale / self.n_total if reduction == "mean" else self.scale
        return self.factor * w

    def reduce(self, per, reduction: str):
        """The value from this rank's terms ``per``: the global loss, or this rank's share."""
        xp = _namespace(per)
        s = xp.sum(per)
        return (s if self.share else self.total(s)) * self.weight(reduction)

    def owners(self, grads: dict) -> dict:
        """``grads`` with the gathered inputs' gradients summed over ranks, this rank's rows."""
        return {k: (self.comm.reduce_rows(v, self.gathered[k]) if k in self.gathered else v)
                for k, v in grads.items()}


def _device(x):
    from array_api_compat import device

    return device(x)


def _namespace(x):
    from array_api_compat import array_namespace

    return array_namespace(x)


def _meta(ctx, arrays: dict, options: dict, tau0) -> dict:
    """What every rank must agree on; ``rows`` (and ``<name>_rows``) may differ."""
    meta = {"library": ctx.xp.__name__, "dtype": str(ctx.out_dtype),
            "temperature": concrete_float(tau0), **options}
    for name, x in arrays.items():
        if x is None:
            meta[f"{name} given"] = False
            continue
        meta[f"{name} given"] = True
        meta[f"{name} trailing shape"] = tuple(x.shape[1:])
    return meta


#: what a sharded function returns: the global loss on every rank, or each rank's share
VALUES = ("global", "share")


def _check_algorithm(algorithm: str, value: str = "global") -> str:
    check_option(value, "value", VALUES)
    return check_option(algorithm, "algorithm", ALGORITHMS)


@differentiable("sharded.info_nce", wrt=("query", "key", "negatives", "temperature"),
                scalars=("temperature",), sharded=True)
def info_nce(query: Array, key: Array, negatives: Array | None = None, /, *, comm: Communicator,
             temperature: float | Array = 0.1, similarity: str = "cosine",
             in_batch_negatives: bool | None = None, symmetric: bool = False,
             reduction: str = "mean", eps: float = DEFAULT_EPS, value: str = "global",
             algorithm: str = "gather", block_size: int | None = None,
             memory_budget: int | None = None, check_finite: bool = True, xp=None,
             need_grad: bool = True):
    r""":func:`nce_ref.info_nce` of a batch sharded over the ranks of ``comm``.

    Rank r holds rows ``query_r``, ``key_r`` (the same number, its positive pairs) and
    optionally ``negatives_r`` (M_r unpaired negatives, shared by every query of every
    rank: the global negatives are all ranks' rows).  The result equals
    ``nce_ref.info_nce(concat(query_r), concat(key_r), concat(negatives_r), ...)`` on
    the concatenated batch, value and gradients, to rounding.

    Parameters
    ----------
    query, key : array, shape (n_r, D)
        This rank's rows (``n_r`` may differ between ranks; at least one).
    negatives : array, shape (M_r, D), optional
        This rank's share of the unpaired negatives (``negative_mode="unpaired"``;
        paired negatives are row-wise and need no sharding: use
        :func:`nce_ref.info_nce` on each rank).
    comm : Communicator
        The group (:class:`nce_ref.sharded.TorchCommunicator`, ``MPICommunicator``,
        ``JaxCommunicator``, or a :class:`nce_ref.sharded.ThreadGroup`'s).
    temperature, similarity, in_batch_negatives, symmetric, reduction, eps
        As in :func:`nce_ref.info_nce`; the same on every rank (checked).
    value : {"global", "share"}, default "global"
        ``"global"``: the global loss on every rank, and through ``value_and_grad`` (a
        cotangent the same on every rank) this rank's rows of its gradient and the full
        temperature gradient.  ``"share"``: this rank's share ``W·L_r`` (``L_r`` the part
        of the global loss that its rows' terms make; the ranks' shares average to the
        loss, open_clip's ``local_loss`` convention), and with per-rank cotangents
        ``g_r`` the gradient of ``Σ_r g_r·W·L_r`` for the inputs and, for the replicated
        temperature, this rank's own ``g_r·W·∂L_r/∂τ`` (the ranks' mean is the total
        gradient's share): what a training step under DDP's gradient mean needs
        (:mod:`nce_ref.interop` wraps it).
    algorithm : {"gather", "ring"}, default "gather"
        ``"gather"``: all-gather the columns (O(N·D) memory and bytes per rank), one
        pass of the engine.  ``"ring"``: each rank keeps its own columns and they pass
        round the ranks, W − 1 steps forward and W back (O((N/W)·D) memory per rank),
        with an online log-sum-exp (``nce_ref.sharded._ring``).
    block_size, memory_budget, check_finite, xp
        As in :func:`nce_ref.info_nce`, for this rank's computation.

    Returns
    -------
    loss : array
        The global loss (0-d, the same on every rank), or this rank's per-row terms
        for ``reduction="none"``.

    Raises
    ------
    nce_ref.sharded.ShardingError
        On every rank, when any rank's input is invalid or the ranks disagree on D,
        dtype, library, options or temperature.

    See Also
    --------
    nce_ref.info_nce
        The single-process loss it equals.

    Examples
    --------
    Two ranks as two threads of this process (``ThreadGroup``; with
    torch.distributed or MPI each rank is a process and ``comm`` its communicator):

    >>> import numpy as np, nce_ref
    >>> from nce_ref.sharded import ThreadGroup, info_nce
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.standard_normal((7, 4)), rng.standard_normal((7, 4))
    >>> shards = [(q[:3], k[:3]), (q[3:], k[3:])]
    >>> out = ThreadGroup(2).run(lambda comm, qr, kr: info_nce(qr, kr, comm=comm), shards)
    >>> bool(np.isclose(out[0], nce_ref.info_nce(q, k))), float(out[0]) == float(out[1])
    (True, True)
    """
    def validate():
        in_batch = in_batch_default(in_batch_negatives, negatives)
        check_info_nce_options(negatives, "unpaired", in_batch, symmetric, reduction)
        kind, e = check_similarity(similarity, eps)
        _check_algorithm(algorithm, value)
        ctx = resolve({"query": query, "key": key, "negatives": negatives},
                      ndims={"query": 2, "key": 2, "negatives": 2}, xp=xp, check_finite=check_finite)
        n, d = check_pair(query, key, "query", "key")
        if negatives is not None and negatives.shape[1] != d:
            raise ValueError(f"`negatives` must have shape (M, {d}); got {tuple(negatives.shape)}")
        tau, tau0 = scalar_param(ctx, temperature, "temperature", positive=True)
        options = {"similarity": kind, "eps": e, "in_batch": in_batch, "symmetric": symmetric,
                   "reduction": reduction, "algorithm": algorithm, "value": value}
        meta = _meta(ctx, {"query": query, "negatives": negatives}, options, tau0)
        meta["rows"] = n
        meta["negatives_rows"] = 0 if negatives is None else negatives.shape[0]
        return (ctx, kind, e, in_batch, tau, tau0), meta

    (ctx, kind, e, in_batch, tau, tau0), metas = validated(comm, validate)
    sizes = [m["rows"] for m in metas]
    neg_sizes = [m["negatives_rows"] for m in metas]
    inputs = {"query": query, "key": key, "negatives": negatives}
    q, k = ctx.to_compute(query), ctx.to_compute(key)
    neg = None if negatives is None else ctx.to_compute(negatives)
    n_total, share = sum(sizes), value == "share"
    if algorithm == "ring":  # every rank keeps its own columns; they travel
        shard = [(s if in_batch else 0) + m for s, m in zip(sizes, neg_sizes)]
        n_cols = max(shard)

        def across(scale):
            return Across(comm, {}, n_total=n_total, scale=scale, ring=tuple(shard), share=share)

        def columns(x):
            return x
    else:
        n_cols = (n_total if in_batch else 0) + sum(neg_sizes)

        def across(scale):
            return Across(comm, {"key": sizes, "negatives": neg_sizes}, n_total=n_total, scale=scale,
                          share=share)

        def columns(x):
            return comm.gather_rows(x, sizes)

        neg = None if neg is None else comm.gather_rows(neg, neg_sizes)
    block = choose_block(q.shape[0], n_cols, ctx.finfo().bits // 8, block_size=block_size,
                         memory_budget=memory_budget, buffers=buffers(kind), like=query)
    kw = dict(kind=kind, eps=e, in_batch=in_batch, reduction=reduction, block=block,
              need_grad=need_grad, symmetric=False)
    if not symmetric:
        return info_nce_engine(ctx, q, columns(k), neg, tau, tau0, inputs=inputs, across=across(1.0),
                               **kw)
    # CLIP: the rows' direction (this rank's queries against every key) and the columns'
    # (this rank's keys against every query), each half the weight
    rows = info_nce_engine(ctx, q, columns(k), None, tau, tau0, inputs=inputs, across=across(0.5),
                           **kw)
    cols = info_nce_engine(ctx, k, columns(q), None, tau, tau0, inputs={"query": key, "key": query},
                           across=across(0.5), **kw)
    return _symmetric(ctx, rows, cols, reduction)


def _symmetric(ctx, rows, cols, reduction):
    """The two directions of a symmetric loss, added (each already half-weighted), with
    the columns' gradients renamed back (its queries are the keys)."""
    (v_r, back_r), (v_c, back_c) = rows, cols
    value = 0.5 * (v_r + v_c) if reduction == "none" else v_r + v_c

    def vjp(g):
        gr, gc = back_r(g), back_c(g)
        return {"query": gr["query"] + gc["key"], "key": gr["key"] + gc["query"],
                "temperature": gr["temperature"] + gc["temperature"]}

    return value, (None if back_r is None else vjp)


@differentiable("sharded.nt_xent", wrt=("z1", "z2", "temperature"), scalars=("temperature",),
                sharded=True)
def nt_xent(z1: Array, z2: Array, /, *, comm: Communicator, temperature: float | Array = 0.5,
            similarity: str = "cosine", reduction: str = "mean", eps: float = DEFAULT_EPS,
            value: str = "global", algorithm: str = "gather", block_size: int | None = None,
            memory_budget: int | None = None, check_finite: bool = True, xp=None,
            need_grad: bool = True):
    r""":func:`nce_ref.nt_xent` of a batch sharded over the ranks of ``comm``.

    Rank r holds the two views ``z1_r``, ``z2_r`` of its n_r samples; the result equals
    ``nce_ref.nt_xent(concat(z1_r), concat(z2_r), ...)``: each anchor's negatives are
    the 2N − 2 other views of *every* rank.  ``reduction="none"`` returns this rank's
    2n_r terms (its ``z1`` anchors, then its ``z2`` anchors).

    Parameters
    ----------
    z1, z2 : array, shape (n_r, D)
    comm, value, algorithm, block_size, memory_budget, check_finite, xp
        As in :func:`nce_ref.sharded.info_nce`.
    temperature, similarity, reduction, eps
        As in :func:`nce_ref.nt_xent`.

    Returns
    -------
    loss : array, 0-d (the same on every rank) or (2 n_r,)

    See Also
    --------
    nce_ref.nt_xent
        The single-process loss it equals.

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> from nce_ref.sharded import ThreadGroup, nt_xent
    >>> rng = np.random.default_rng(1)
    >>> a, b = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    >>> out = ThreadGroup(2).run(lambda comm, x, y: nt_xent(x, y, comm=comm),
    ...                          [(a[:2], b[:2]), (a[2:], b[2:])])
    >>> bool(np.isclose(out[1], nce_ref.nt_xent(a, b)))
    True
    """
    def validate():
        check_reduction(reduction)
        kind, e = check_similarity(similarity, eps)
        _check_algorithm(algorithm, value)
        ctx = resolve({"z1": z1, "z2": z2}, ndims={"z1": 2, "z2": 2}, xp=xp,
                      check_finite=check_finite)
        n, d = check_pair(z1, z2, "z1", "z2")
        tau, tau0 = scalar_param(ctx, temperature, "temperature", positive=True)
        options = {"similarity": kind, "eps": e, "reduction": reduction, "algorithm": algorithm,
                   "value": value}
        meta = _meta(ctx, {"z1": z1}, options, tau0)
        meta["rows"] = n
        return (ctx, kind, e, tau, tau0), meta

    (ctx, kind, e, tau, tau0), metas = validated(comm, validate)
    sizes = [m["rows"] for m in metas]
    xp = ctx.xp
    a, b = ctx.to_compute(z1), ctx.to_compute(z2)
    if algorithm == "ring":  # every rank keeps its own views; they travel
        views, n_cols = None, 2 * max(sizes)
        across = Across(comm, {}, n_total=2 * sum(sizes), ring=tuple(2 * s for s in sizes),
                        share=value == "share")
    else:
        views = xp.concat([comm.gather_rows(a, sizes), comm.gather_rows(b, sizes)], axis=0)
        n_cols = views.shape[0]
        across = Across(comm, {"z1": sizes, "z2": sizes}, n_total=2 * sum(sizes),
                        share=value == "share")
    block = choose_block(2 * a.shape[0], n_cols, ctx.finfo().bits // 8, block_size=block_size,
                         memory_budget=memory_budget, buffers=buffers(kind), like=z1)
    return nt_xent_engine(ctx, a, b, views, tau, tau0, inputs={"z1": z1, "z2": z2}, kind=kind,
                          eps=e, reduction=reduction, block=block, need_grad=need_grad,
                          across=across)



@differentiable("sharded.supcon", wrt=("features", "temperature"), scalars=("temperature",),
                sharded=True)
def supcon(features: Array, labels: Array | None = None, /, *, comm: Communicator,
           temperature: float | Array = 0.07, base_temperature: float | None = None,
           positives: str = "out", no_positive: str = "exclude", no_negative: str = "keep",
           similarity: str = "cosine", contrast_mode: str = "all", reduction: str = "mean",
           eps: float = DEFAULT_EPS, value: str = "global", algorithm: str = "gather",
           block_size: int | None = None,
           memory_budget: int | None = None, check_finite: bool = True, xp=None,
           need_grad: bool = True):
    r""":func:`nce_ref.supcon` of a batch sharded over the ranks of ``comm``.

    Rank r holds ``features_r`` (its n_r samples' V views) and their ``labels_r``; an
    anchor's positives are the views of every rank's samples that share its label
    (without labels: the other views of its own sample), its negatives every other
    view of every rank.  The result equals ``nce_ref.supcon(concat(features_r),
    concat(labels_r), ...)``; ``reduction="none"`` returns this rank's anchors' terms
    (view-major, as the single-process function orders them per rank).  A positive
    ``mask`` (N x N) has no sharded form: give labels.

    Parameters
    ----------
    features : array, shape (n_r, V, D) or (n_r, D)
    labels : array, shape (n_r,) or (n_r, L) of 0/1, optional
    comm, value, block_size, memory_budget, check_finite, xp
        As in :func:`nce_ref.sharded.info_nce`.
    algorithm : {"gather", "ring"}, default "gather"
        ``"gather"``: gather every rank's views and labels (O(N·V·D) per rank).
        ``"ring"``: each rank keeps its own; they travel round the ranks with their
        labels, each anchor's positive and negative log-sum-exps, count and positive
        sum accumulated online (``nce_ref.sharded._ring_supcon``; O((N/W)·V·D)).
    temperature, base_temperature, positives, no_positive, similarity, contrast_mode, reduction, eps
        As in :func:`nce_ref.supcon`; the same on every rank.
    no_negative : {"keep", "zero"}, default "keep"
        As in :func:`nce_ref.supcon`: ``"zero"`` gives 0, with zero gradients, when no
        anchor of any rank has a negative (pytorch-metric-learning's ``SupConLoss``).

    Returns
    -------
    loss : array, 0-d (the same on every rank) or (n_r·V,) (``contrast_mode="one"``: (n_r,))

    See Also
    --------
    nce_ref.supcon
        The single-process loss it equals.

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> from nce_ref.sharded import ThreadGroup, supcon
    >>> rng = np.random.default_rng(2)
    >>> f, y = rng.standard_normal((6, 2, 3)), np.array([0, 1, 0, 1, 1, 2])
    >>> out = ThreadGroup(2).run(lambda comm, fr, yr: supcon(fr, yr, comm=comm),
    ...                          [(f[:4], y[:4]), (f[4:], y[4:])])
    >>> bool(np.isclose(out[0], nce_ref.supcon(f, y)))
    True
    """
    def validate():
        _check_algorithm(algorithm, value)
        st = setup_supcon(features, labels, mask=None, temperature=temperature,
                          base_temperature=base_temperature, positives=positives,
                          no_positive=no_positive, similarity=similarity,
                          contrast_mode=contrast_mode, reduction=reduction, eps=eps,
                          check_finite=check_finite, xp=xp, no_negative=no_negative)
        options = {"similarity": st.kind, "eps": st.eps, "positives": positives,
                   "no_positive": no_positive, "no_negative": no_negative,
                   "contrast_mode": contrast_mode,
                   "reduction": reduction, "base_temperature": st.base_temperature,
                   "algorithm": algorithm, "value": value, "views": st.v,
                   "labels": None if labels is None else f"{labels.ndim}-d {labels.dtype}",
                   "label columns": None if labels is None or labels.ndim == 1 else labels.shape[1]}
        meta = _meta(st.ctx, {"features": features}, options, st.tau0)
        meta["rows"] = st.n
        return st, meta

    st, metas = validated(comm, validate)
    sizes = [m["rows"] for m in metas]
    views = [s * st.v for s in sizes]  # each rank's u: its samples' views, view-major
    first = sum(sizes[:comm.rank]) if isinstance(comm.rank, int) else comm.rank * st.n
    own = column_labels(st.ctx, st.labels, st.n, st.v, first_id=first)
    n_anchor = sum(views) if contrast_mode == "all" else sum(sizes)
    if algorithm == "ring":  # every rank keeps its own views and labels; they travel
        st.col_labels = own
        block = choose_block(st.n_anchor, max(views), st.ctx.finfo().bits // 8,
                             block_size=block_size, memory_budget=memory_budget,
                             buffers=buffers(st.kind) + 2, like=features)
        across = Across(comm, {}, n_total=n_anchor, ring=tuple(views), share=value == "share")
        return supcon_ring(st, comm, across, block=block, need_grad=need_grad)
    st.col_labels = comm.gather_rows(own, views)
    st.u = comm.gather_rows(st.u, views)
    st.c = st.u.shape[0]
    block = choose_block(st.n_anchor, st.c, st.ctx.finfo().bits // 8, block_size=block_size,
                         memory_budget=memory_budget, buffers=buffers(st.kind), like=features)
    across = Across(comm, {"features": views}, n_total=n_anchor, share=value == "share")
    return supcon_engine(st, block, need_grad=need_grad, across=across)
