"""InfoNCE (one-way, symmetric/CLIP, explicit negatives), NT-Xent, and InfoNCE on scores.

Each public function validates its inputs (once), then runs one of two paths,
chosen explicitly by its ``method`` option (:func:`nce_ref._array.check_method`):

- the **reference** (``method="dense"``): :func:`info_nce_dense` and
  :func:`nt_xent_dense`, the formula as ``docs/derivations.md`` writes it: the
  similarity (``nce_ref.similarity.sim_fwd``) of the whole score matrix, the softmax
  cross-entropy of its rows (``_objective.ce_rows``), the reduction, and the
  composition of their VJPs;
- the **engine** (``method="streamed"``): the same maths over row blocks of the
  bilinear score matrix (``nce_ref._stream``), never holding N x N, with the
  gradient's three GEMMs fused into the forward sweep when the reduction is scalar.

``method="auto"`` (the default) runs the engine for every configuration it covers
(every similarity; in-batch and/or unpaired negatives; one-way or symmetric) and the
reference for paired negatives (``negative_mode="paired"``), whose scores are
row-wise, O(N·M·D), with no N x N matrix to avoid.  Derivations:
``docs/derivations.md``, sections "InfoNCE", "NT-Xent", "Temperature", and §9 for
the streamed euclidean root.
"""

from __future__ import annotations

from typing import Any

from .._array import (
    check_method,
    check_option,
    check_pair,
    check_rows,
    concrete_float,
    plus,
    resolve,
    scalar_grad,
    scalar_param,
)
from .._reduce import check_reduction, reduce_fwd
from .._stream import by_row_chunks, ce_stream, ce_stream_symmetric, choose_block
from .._stream._logits import StreamLogits, buffers, feature_kind, prepare_logits
from ..autodiff import differentiable
from ..similarity import (
    DEFAULT_EPS,
    bilinear_features,
    check_similarity,
    pair_sim,
    pair_sim_from_features,
    sim_fwd,
)
from ._objective import ce_rows, temperature_grad

Array = Any

__all__ = ["info_nce", "nt_xent", "info_nce_from_scores"]

NEGATIVE_MODES = ("unpaired", "paired")


# -- the engine's driver ------------------------------------------------------------

def _sweep(lg: StreamLogits, pos, segments, weights, *, block: int, symmetric: bool, xp):
    """One pass of ``ce_stream`` (or ``ce_stream_symmetric``) over the row ``segments``;
    returns the per-row terms and, with ``weights``, each segment's gradient tuple
    ``(dfa, dfb, dpos, Σ dz·z)``."""
    out, grads = [], []
    for r0, r1, bands in segments:
        w = None if weights is None else weights[r0:r1]
        if symmetric:
            l, gr = ce_stream_symmetric(lg.a, lg.fb, pos, weights=w, block=block, flush=lg.flush,
                                        bound=lg.bound, root=lg.root, xp=xp)
        else:
            rt = None if lg.root is None else (lg.root[0][r0:r1], lg.root[1])
            l, gr = ce_stream(lg.a[r0:r1, :], lg.fb, pos[r0:r1], bands=bands, weights=w,
                              block=block, flush=lg.flush, row_offset=r0, bound=lg.bound, root=rt,
                              xp=xp)
        out.append(l)
        grads.append(gr)
    return (out[0] if len(out) == 1 else xp.concat(out)), grads


def _join(grads, xp):
    """The segments' gradients as one ``(dfa, dfb, dpos, Σ dz·z)``: rows concatenated,
    the columns' gradient and the sum added."""
    if len(grads) == 1:
        return grads[0]
    dfb, zdz = grads[0][1], grads[0][3]
    for g in grads[1:]:
        dfb, zdz = dfb + g[1], zdz + g[3]
    return (xp.concat([g[0] for g in grads], axis=0), dfb, xp.concat([g[2] for g in grads]), zdz)


def _chain(ctx, lg: StreamLogits, grads, tau, *, assemble, rowwise: bool):
    """``finish(g)``: the inputs' gradients times the cotangent ``g`` (None: 1).

    The chain is linear in ``(dfa, dfb, dpos)``, so ``g`` scales them (fresh arrays: a
    second call sees the same), row-wise in cache where ``rowwise``."""
    xp = ctx.xp
    dfa, dfb, dpos, _ = grads

    def finish(g):
        ga, gt = (1.0 / lg.fold, 1.0 / tau) if g is None else (g / lg.fold, g / tau)

        def rows_of(rows):
            sl = (lambda x: x) if rows is None else (lambda x: x[rows, ...])
            return assemble(sl(dfa) * ga, sl(dfb) if g is None else sl(dfb) * g,
                            sl(dpos) * gt, **({} if rows is None else {"rows": rows}))

        if not rowwise:
            return rows_of(None)
        return by_row_chunks(rows_of, dfa.shape[0], 4 * dfa.shape[1] * ctx.finfo().bits // 8, xp)

    return finish


def _streamed(ctx, lg: StreamLogits, pos, tau, tau0, *, reduction, segments, block, assemble,
              inputs, need_grad: bool, symmetric=False, rowwise=False, across=None):
    """Run the engine over row segments of the logits ``lg``; return ``(value, vjp)``.

    ``segments`` is a list of ``(r0, r1, bands)``: rows ``[r0, r1)`` with their
    excluded diagonals.  ``assemble(dfa, dfb, dpos) -> dict`` maps the gradients of
    the features (before the temperature fold) and of ``pos`` to the inputs' (in the
    computation dtype); ``inputs`` maps those names to the inputs for the final cast.
    With a scalar reduction the gradient is fused into the forward sweep (three
    GEMMs in all) and the cotangent scales the features' gradients on their way to
    the inputs (``assemble`` is linear); with ``"none"`` the forward keeps nothing
    N x N and the VJP sweeps again with the cotangent.  ``rowwise``:
    ``assemble(dfa[rows], dfb[rows], dpos[rows], rows=rows)`` is row ``rows`` of its
    result, so it runs on chunks of rows in cache.  ``need_grad=False``: the value only.

    ``across``: these rows are one rank's share of a sharded batch
    (:class:`nce_ref.sharded.losses.Across`): the value is ``across.reduce`` of the
    terms (the global loss, or this rank's share of it), the temperature's gradient
    ``across.temperature`` of this rank's part; ``assemble`` sends the columns'
    gradients to their owners; ``across.sweep`` may replace the one-pass sweep (the ring),
    whose gradient is then swept in the VJP with the cotangent (``across.fusable`` False:
    the columns' gradients leave the rank during the sweep, so they must carry it).
    """
    xp = ctx.xp
    r_total = lg.a.shape[0]

    ring = None if across is None else across.sweep(lg, pos, segments, block=block, xp=xp)

    def sweep(weights):
        if ring is not None:
            return ring(weights)
        return _sweep(lg, pos, segments, weights, block=block, symmetric=symmetric, xp=xp)

    def grads_of(weights):
        per, grads = sweep(weights)
        g = _join(grads, xp)
        dtau = -(g[3] + xp.sum(g[2] * pos)) / tau
        if across is not None:
            dtau = across.temperature(dtau)
        return per, _chain(ctx, lg, g, tau, assemble=assemble, rowwise=rowwise), dtau

    def cast(out):
        return {k: ctx.like(v, inputs[k]) for k, v in out.items()}

    def reduced(per):
        if across is not None:
            return across.reduce(per, reduction)
        return reduce_fwd(per, reduction, xp=xp)[0]

    if not need_grad or reduction == "none" or (across is not None and not across.fusable):
        per, _ = sweep(None)
        value = per if reduction == "none" else reduced(per)

        def vjp(g):
            w = ctx.to_compute(g)
            if reduction != "none":  # the terms' weights times the (this rank's) cotangent
                w = xp.full((r_total,), 1.0, dtype=ctx.dtype, device=ctx.device) * (
                    w * (across.weight(reduction) if across is not None else
                         (1.0 / r_total if reduction == "mean" else 1.0)))
            elif across is not None:
                w = w * across.scale
            _, finish, dtau = grads_of(w)
            return cast(finish(None)) | {"temperature": scalar_grad(ctx, dtau, tau0)}

        return ctx.to_out(ctx.result_finite(value, "loss")), (vjp if need_grad else None)
    if across is None:
        w = 1.0 / r_total if reduction == "mean" else 1.0
    else:
        w = across.weight(reduction)
    per, finish, dtau = grads_of(xp.full((r_total,), w, dtype=ctx.dtype, device=ctx.device))
    value = ctx.result_finite(reduced(per), "loss")

    def vjp_scalar(g):
        g = ctx.to_compute(g)
        return cast(finish(g)) | {"temperature": scalar_grad(ctx, dtau * g, tau0)}

    return ctx.to_out(value), vjp_scalar


# -- validation ---------------------------------------------------------------------

def in_batch_default(in_batch_negatives, negatives) -> bool:
    """Whether the other keys are negatives (the documented default when None)."""
    if in_batch_negatives is None:
        return negatives is None
    if isinstance(in_batch_negatives, bool):
        return in_batch_negatives
    raise TypeError(f"`in_batch_negatives` must be True, False or None; got {in_batch_negatives!r}")


def check_info_nce_options(negatives, negative_mode, in_batch, symmetric, reduction) -> None:
    check_option(negative_mode, "negative_mode", NEGATIVE_MODES)
    check_reduction(reduction)
    if not isinstance(symmetric, bool):
        raise TypeError(f"`symmetric` must be a bool; got {symmetric!r}")
    if negatives is None and not in_batch:
        raise ValueError("`in_batch_negatives=False` needs explicit `negatives`: "
                         "otherwise no query has a negative")
    if symmetric and negatives is not None:
        raise ValueError("`symmetric=True` (CLIP) takes no explicit `negatives`: the key->query "
                         "direction has no negatives of its own")


def _check_negatives(negatives, negative_mode, n: int, d: int) -> None:
    if negatives is None:
        return
    if negative_mode == "unpaired":
        if negatives.shape[1] != d:
            raise ValueError(f"`negatives` must have shape (M, {d}) for negative_mode='unpaired'; "
                             f"got {tuple(negatives.shape)}")
    elif negatives.shape[0] != n or negatives.shape[2] != d:
        raise ValueError(f"`negatives` must have shape ({n}, M, {d}) for negative_mode='paired'; "
                         f"got {tuple(negatives.shape)}")


@differentiable("info_nce", wrt=("query", "key", "negatives", "temperature"),
                scalars=("temperature",))
def info_nce(query: Array, key: Array, negatives: Array | None = None, /, *,
             temperature: float | Array = 0.1, similarity: str = "cosine",
             negative_mode: str = "unpaired", in_batch_negatives: bool | None = None,
             symmetric: bool = False, reduction: str = "mean", eps: float = DEFAULT_EPS,
             method: str = "auto", block_size: int | None = None,
             memory_budget: int | None = None, check_finite: bool = True, xp=None,
             need_grad: bool = True):
    r"""InfoNCE loss: a softmax cross-entropy that picks each query's positive key.

    Row ``i`` of ``key`` is the positive of row ``i`` of ``query``.  With
    :math:`s(\cdot,\cdot)` the similarity and :math:`\tau` the temperature,

    .. math::

        \ell_i = -\log\frac{e^{s(q_i,k_i)/\tau}}
                 {\sum_{c\in C_i} e^{s(q_i,c)/\tau}}
               = \operatorname{LSE}_{c\in C_i}\big(s(q_i,c)/\tau\big) - s(q_i,k_i)/\tau,

    where the candidate set :math:`C_i` always holds the positive :math:`k_i` and

    - ``negatives=None``: the other keys, :math:`C_i = \{k_1..k_N\}` (N − 1 negatives);
    - ``negatives`` of shape (M, D), ``negative_mode="unpaired"``: the M rows, shared
      by every query;
    - ``negatives`` of shape (N, M, D), ``negative_mode="paired"``: row i's own M;
    - ``in_batch_negatives=True`` additionally keeps the other keys among the
      negatives when ``negatives`` is given.

    ``symmetric=True`` is CLIP's loss :math:`\tfrac12(\ell^{q\to k}_i+\ell^{k\to q}_i)`,
    the second term being the same with the roles of queries and keys exchanged
    (columns of the score matrix).

    Parameters
    ----------
    query, key : array, shape (N, D)
    negatives : array, shape (M, D) or (N, M, D), optional
    temperature : float or 0-d array, default 0.1
        :math:`\tau > 0`; differentiable (``value_and_grad`` returns its gradient).
    similarity : {"cosine", "dot", "neg_sq_euclidean", "neg_euclidean"}, default "cosine"
        See :func:`nce_ref.similarity`.
    negative_mode : {"unpaired", "paired"}, default "unpaired"
        Layout of ``negatives`` (info-nce-pytorch's names).
    in_batch_negatives : bool, optional
        Whether the other keys are negatives.  Default: ``True`` when ``negatives``
        is None, ``False`` when explicit negatives are given (the convention of
        info-nce-pytorch and of MoCo's queue).  ``False`` without ``negatives`` is an
        error (there would be no negative).
    symmetric : bool, default False
        CLIP's symmetric loss; only without explicit ``negatives``.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"`` returns the N per-query terms (per-pair means when symmetric).
    eps : float, default 1e-12
        Norm floor of the cosine similarity.
    method : {"auto", "dense", "streamed"}, default "auto"
        Which code path computes it (the results agree to rounding).  ``"dense"``:
        the reference, :func:`info_nce_dense`, the formula above on the whole
        (N, N + M) score matrix.  ``"streamed"``: the engine, rows of the score matrix
        in blocks, never N x N (every similarity; in-batch and/or unpaired negatives;
        one-way or symmetric); it refuses paired negatives.  ``"auto"``: the engine
        wherever it applies, the reference for paired negatives (O(N·M·D) already).
    block_size : int, optional
        Rows of the score matrix the engine computes at a time.  Default: as many
        as fit ``memory_budget``.  Results equal the dense computation to rounding.
        Streaming applies to every similarity with in-batch and/or unpaired
        negatives, one-way or symmetric (two passes); "neg_euclidean" is the root
        of the squared distance's bilinear form, taken per block.  Paired negatives
        have no N x N matrix (their scores are N x M) and are computed directly.
    memory_budget : int, optional
        Bytes for the streamed block buffers (two blocks x columns; four for
        "neg_euclidean").  Default 128 MiB, NumPy blocks kept under 30 MiB each
        where that leaves 512 rows (the allocator then reuses their pages), and
        1 GiB for arrays on a GPU (``nce_ref.tuning``).
    check_finite : bool, default True
        Raise ``ValueError`` on NaN or inf inputs and ``FloatingPointError`` when
        the result overflows the dtype.
    xp : namespace, optional

    Returns
    -------
    loss : array
        0-d (or shape (N,) for ``reduction="none"``), in the inputs' namespace,
        device and floating dtype; float16/bfloat16 are computed in float32.

    Raises
    ------
    ValueError, TypeError
        On mismatched shapes, N = 0, D = 0, a non-positive or non-finite temperature,
        non-floating dtypes, NaN/inf inputs, arrays from two libraries or devices, and
        unknown option strings; the message names the argument.

    See Also
    --------
    nce_ref.nt_xent
        SimCLR's loss over the 2N views of a batch.
    nce_ref.supcon
        The supervised, multi-positive form.
    nce_ref.info_nce_from_scores
        The same objective on a given score matrix.
    nce_ref.sharded.info_nce
        This loss on a batch split over ranks.
    nce_ref.mi.infonce
        The MI bound ``log N - L`` on a critic score matrix.
    nce_ref.mi.bound_from_embeddings
        ``log N - L`` of this loss on embeddings, streamed.

    Notes
    -----
    With :math:`p_{ic}` the softmax over :math:`C_i` and :math:`g_i` the cotangent
    of :math:`\ell_i`, the gradient with respect to the scores is
    :math:`\partial\ell/\partial s(q_i,c) = g_i(p_{ic} - [c = k_i])/\tau`, and
    :math:`\partial\ell/\partial\tau = -\sum_{i,c} \bar z_{ic} z_{ic}/\tau` over all
    logits :math:`z = s/\tau` with their cotangents :math:`\bar z`.  The similarity
    VJPs carry these to the embeddings.  The loss is exact for any positive
    probability: a positive far below the dtype's ``tiny`` still costs
    :math:`\operatorname{LSE} - s^+/\tau` (no ``log(p + eps)`` cap) and its gradient
    tends to :math:`-1/\tau` per unit score, not to 0.

    References
    ----------
    van den Oord et al., "Representation Learning with Contrastive Predictive
    Coding" (2018); Radford et al., "Learning Transferable Visual Models From
    Natural Language Supervision" (2021).

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> loss = nce_ref.info_nce(q, q, temperature=1.0)
    >>> float(loss), float(np.log(1 + np.exp(-1.0)))  # log(e + 1) - 1 for each row
    (0.31326168751822286, 0.31326168751822286)
    >>> loss = nce_ref.info_nce(np.ones((4, 3)), np.ones((4, 3)))  # collinear: log N
    >>> bool(abs(loss - np.log(4)) <= 4 * np.finfo(float).eps)
    True
    """
    in_batch = in_batch_default(in_batch_negatives, negatives)
    check_info_nce_options(negatives, negative_mode, in_batch, symmetric, reduction)
    kind, eps = check_similarity(similarity, eps)
    path = check_method(method, streamable=negatives is None or negative_mode == "unpaired",
                        why_not="paired negatives (negative_mode='paired')")
    ctx = resolve({"query": query, "key": key, "negatives": negatives},
                  ndims={"query": 2, "key": 2,
                         "negatives": 2 if negative_mode == "unpaired" else 3},
                  xp=xp, check_finite=check_finite)
    n, d = check_pair(query, key, "query", "key")
    _check_negatives(negatives, negative_mode, n, d)
    tau, tau0 = scalar_param(ctx, temperature, "temperature", positive=True)
    n_cols = (n if in_batch else 0) + (0 if negatives is None else negatives.shape[-2])
    block = choose_block(n, n_cols, ctx.finfo().bits // 8, block_size=block_size,
                         memory_budget=memory_budget, buffers=buffers(kind), like=query,
                         heap_cap=not symmetric)
    inputs = {"query": query, "key": key, "negatives": negatives}
    if path == "dense":
        return info_nce_dense(ctx, inputs, tau, tau0, kind=kind, eps=eps, in_batch=in_batch,
                              negative_mode=negative_mode, symmetric=symmetric,
                              reduction=reduction)
    return _info_nce_streamed(ctx, inputs, tau, tau0, kind=kind, eps=eps, in_batch=in_batch,
                              symmetric=symmetric, reduction=reduction, block=block,
                              need_grad=need_grad)


def _info_nce_streamed(ctx, inputs, tau, tau0, *, kind, eps, in_batch, symmetric, reduction,
                       block, need_grad):
    """:func:`info_nce` by the engine (:func:`info_nce_engine` on the whole batch)."""
    q, k = ctx.to_compute(inputs["query"]), ctx.to_compute(inputs["key"])
    neg = None if inputs["negatives"] is None else ctx.to_compute(inputs["negatives"])
    return info_nce_engine(ctx, q, k, neg, tau, tau0, inputs=inputs, kind=kind, eps=eps,
                           in_batch=in_batch, symmetric=symmetric, reduction=reduction,
                           block=block, need_grad=need_grad)


def info_nce_engine(ctx, q, keys, neg, tau, tau0, *, inputs, kind, eps, in_batch, symmetric,
                    reduction, block, need_grad, across=None):
    """The engine's InfoNCE: rows ``q`` (n, D) against the columns ``[keys; neg]``, the
    first n keys being the rows' positives (``keys`` may hold more rows: a sharded
    batch's gathered keys, this rank's first).  The features of queries and columns,
    the positives row-wise, then :func:`_streamed`.  Returns ``(value, vjp)`` whose
    gradients are keyed ``query``, ``key``, ``negatives``, ``temperature``; with
    ``across`` the columns' gradients are sent to their owners (``across.owners``)."""
    xp = ctx.xp
    n, n_keys = q.shape[0], keys.shape[0]
    cols = keys if neg is None else xp.concat([keys, neg], axis=0)
    fa, fb_all, back_f = bilinear_features(q, cols, kind=feature_kind(kind), eps=eps, xp=xp,
                                           center=None if across is None else across.center(q, cols))
    s_pos, back_pos = pair_sim_from_features(q, keys[:n, :], fa, fb_all[:n, :], kind=kind, eps=eps,
                                             xp=xp)
    fb = fb_all if in_batch else fb_all[n_keys:, :]

    def assemble(dfa, dfb, dpos, rows=None):  # rows: only with n == n_keys and no negatives
        if not in_batch:
            dfb = xp.concat([xp.zeros_like(fb_all[:n_keys, :]), dfb], axis=0)
        if rows is None:
            dfa, dfk, gq_p, gk_p = back_pos(dpos, dfa, dfb[:n, :])
            dfb = xp.concat([dfk, dfb[n:, :]], axis=0) if dfb.shape[0] > n else dfk
            ga, gc = back_f(dfa, dfb)
        else:
            dfa, dfb, gq_p, gk_p = back_pos(dpos, dfa, dfb, rows=rows)
            ga, gc = back_f(dfa, dfb, rows=rows)
        gk = gc[:n_keys, :]
        if gk_p is not None:
            gk = xp.concat([gk[:n, :] + gk_p, gk[n:, :]], axis=0) if n_keys > n else gk + gk_p
        out = {"query": plus(ga, gq_p), "key": gk}
        if neg is not None:
            out["negatives"] = gc[n_keys:, :]
        return out if across is None else across.owners(out)

    lg = prepare_logits(fa, fb, tau, concrete_float(tau0), kind=kind, n_entries=n * fb.shape[0],
                        dtype=ctx.dtype, xp=xp)
    return _streamed(ctx, lg, s_pos / tau, tau, tau0, reduction=reduction,
                     segments=[(0, n, (0,) if in_batch else ())], block=block,
                     assemble=assemble, inputs=inputs, need_grad=need_grad, symmetric=symmetric,
                     rowwise=neg is None and n == n_keys and kind in ("cosine", "dot"),
                     across=across)


def _negative_blocks(ctx, q, neg, tau, *, kind, eps, negative_mode):
    """The explicit negatives' logits ``s(q_i, n)/τ`` (N, M) and their VJP (to ``q``, ``neg``)."""
    xp = ctx.xp
    n, d = q.shape
    if negative_mode == "unpaired":
        s_qn, back_qn = sim_fwd(q, neg, kind=kind, eps=eps, xp=xp)
        return s_qn / tau, neg.shape[0], back_qn
    m = neg.shape[1]
    s3, back3 = sim_fwd(xp.expand_dims(q, axis=1), neg, kind=kind, eps=eps, xp=xp)

    def back_qn(g):
        gq, gn = back3(xp.reshape(g, (n, 1, m)))
        return xp.reshape(gq, (n, d)), gn

    return xp.reshape(s3, (n, m)) / tau, m, back_qn


def info_nce_dense(ctx, inputs, tau, tau0, *, kind, eps, in_batch, negative_mode, symmetric,
                   reduction):
    r"""The reference of :func:`info_nce`: the formula on the whole score matrix.

    ``z = [s(q, k) | s(q, negatives)]/τ`` (the blocks that apply), the positive
    ``pos_i = s(q_i, k_i)/τ`` held apart and the diagonal of ``s(q, k)`` masked,
    :math:`\ell_i = \operatorname{LSE}_c(z_{ic}) - pos_i` by ``_objective.ce_rows``
    (symmetric: the mean of the rows' and the columns' terms), the reduction; the
    VJP is the composition of theirs.  ``inputs`` holds the validated arrays
    (``query``, ``key``, ``negatives`` or None); returns ``(value, vjp)``.
    """
    xp = ctx.xp
    q, k = ctx.to_compute(inputs["query"]), ctx.to_compute(inputs["key"])
    neg = None if inputs["negatives"] is None else ctx.to_compute(inputs["negatives"])
    n = q.shape[0]
    s_pos, back_pos = pair_sim(q, k, kind=kind, eps=eps, xp=xp)
    pos = s_pos / tau
    blocks = []  # (role, logits, width, back) in column order; the positive is `pos`
    if in_batch:
        s_qk, back_qk = sim_fwd(q, k, kind=kind, eps=eps, xp=xp)
        blocks.append(("key", s_qk / tau, n, back_qk))
    if neg is not None:
        blocks.append(("negatives",) + _negative_blocks(ctx, q, neg, tau, kind=kind, eps=eps,
                                                        negative_mode=negative_mode))
    z = blocks[0][1] if len(blocks) == 1 else xp.concat([b[1] for b in blocks], axis=1)
    # the diagonal of s(q, k) is the positive, held in `pos`
    keep = xp.logical_not(ctx.eye(n, z.shape[1], dtype=xp.bool)) if in_batch else None
    per, back_rows = ce_rows(z, pos, keep, axis=1, xp=xp)
    if symmetric:
        per_c, back_cols = ce_rows(z, pos, keep, axis=0, xp=xp)
        per = 0.5 * (per + per_c)
    value, back_red = reduce_fwd(per, reduction, xp=xp)
    value = ctx.result_finite(value, "info_nce")

    def vjp(g):
        gl = back_red(ctx.to_compute(g))
        if symmetric:
            (dz_r, dpos_r), (dz_c, dpos_c) = back_rows(0.5 * gl), back_cols(0.5 * gl)
            dz, dpos = dz_r + dz_c, dpos_r + dpos_c
        else:
            dz, dpos = back_rows(gl)
        grads = _blocks_vjp(blocks, dz, tau, q, k, xp=xp)
        ga, gb = back_pos(dpos / tau)
        out = {"query": ctx.like(grads["query"] + ga, inputs["query"]),
               "key": ctx.like(grads["key"] + gb, inputs["key"]),
               "temperature": scalar_grad(ctx, temperature_grad(dz, z, dpos, pos, tau, xp=xp), tau0)}
        if neg is not None:
            out["negatives"] = ctx.like(grads["negatives"], inputs["negatives"])
        return out

    return ctx.to_out(value), vjp


def _blocks_vjp(blocks, dz, tau, q, k, *, xp):
    """The similarity VJPs of the score blocks, given the logits' cotangent ``dz``."""
    out = {"query": xp.zeros_like(q), "key": xp.zeros_like(k)}
    col = 0
    for role, _, width, back in blocks:
        dzb = dz if len(blocks) == 1 else dz[:, col:col + width]
        col += width
        ga, gb = back(dzb / tau)
        out["query"] = out["query"] + ga
        out[role] = gb if role == "negatives" else out[role] + gb
    return out


@differentiable("nt_xent", wrt=("z1", "z2", "temperature"), scalars=("temperature",))
def nt_xent(z1: Array, z2: Array, /, *, temperature: float | Array = 0.5,
            similarity: str = "cosine", reduction: str = "mean", eps: float = DEFAULT_EPS,
            method: str = "auto", block_size: int | None = None,
            memory_budget: int | None = None, check_finite: bool = True, xp=None,
            need_grad: bool = True):
    r"""NT-Xent, SimCLR's loss over the 2N views of a batch.

    With :math:`u = [z_1; z_2]` (2N rows), the partner of view :math:`a` being
    :math:`a \pm N`,

    .. math::

        \ell_a = \operatorname{LSE}_{b \ne a}\big(s(u_a,u_b)/\tau\big)
                 - s(u_a, u_{a \pm N})/\tau, \qquad a = 1..2N,

    so each anchor has its partner as positive and the other 2N − 2 views as
    negatives.  This equals lightly's ``NTXentLoss`` (without memory bank) and
    pytorch-metric-learning's ``SelfSupervisedLoss(NTXentLoss)``; the mean of
    ``info_nce(z1, z2, symmetric=True)`` differs from it (there each anchor has the
    N − 1 other views of the *other* side as negatives).

    Parameters
    ----------
    z1, z2 : array, shape (N, D)
        The two views; row i of ``z1`` and row i of ``z2`` are a positive pair.
    temperature : float or 0-d array, default 0.5
    similarity : str, default "cosine"
        See :func:`nce_ref.similarity`.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"`` returns shape (2N,): the anchors of ``z1`` then those of ``z2``.
    method : {"auto", "dense", "streamed"}, default "auto"
        ``"dense"``: the reference, :func:`nt_xent_dense`, on the whole (2N, 2N)
        score matrix; ``"streamed"`` and ``"auto"``: the engine, which covers every
        similarity (two row segments of the 2N views, each with its two excluded
        diagonals).
    eps, block_size, memory_budget, check_finite, xp
        As in :func:`nce_ref.info_nce`.

    Returns
    -------
    loss : array, 0-d or (2N,)

    See Also
    --------
    nce_ref.info_nce
        One view's rows against the other's (CLIP's N - 1 negatives).
    nce_ref.supcon
        NT-Xent with labels: every same-class view a positive.
    nce_ref.sharded.nt_xent
        This loss on a batch split over ranks.

    Notes
    -----
    Gradient with respect to the logits :math:`z_{ab} = s(u_a,u_b)/\tau`:
    :math:`g_a(p_{ab} - [b = a\pm N])` for :math:`b \ne a`; the similarity VJP is
    applied once to the (2N, 2N) matrix, and both operands are :math:`u`, so their
    gradients add.  All embeddings collinear gives :math:`\log(2N - 1)`; N = 1 gives 0.

    References
    ----------
    Chen et al., "A Simple Framework for Contrastive Learning of Visual
    Representations" (2020).

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> loss = nce_ref.nt_xent(np.ones((3, 2)), np.ones((3, 2)))  # log(2*3 - 1)
    >>> bool(abs(loss - np.log(5)) <= 4 * np.finfo(float).eps)
    True
    """
    kind, eps = check_similarity(similarity, eps)
    check_reduction(reduction)
    path = check_method(method, streamable=True)
    ctx = resolve({"z1": z1, "z2": z2}, ndims={"z1": 2, "z2": 2}, xp=xp, check_finite=check_finite)
    n, d = check_pair(z1, z2, "z1", "z2")
    tau, tau0 = scalar_param(ctx, temperature, "temperature", positive=True)
    block = choose_block(n, 2 * n, ctx.finfo().bits // 8, block_size=block_size,
                         memory_budget=memory_budget, buffers=buffers(kind), like=z1)
    if path == "dense":
        return nt_xent_dense(ctx, z1, z2, tau, tau0, kind=kind, eps=eps, reduction=reduction)
    return _nt_xent_streamed(ctx, z1, z2, tau, tau0, kind=kind, eps=eps, reduction=reduction,
                             block=block, need_grad=need_grad)


def _nt_xent_streamed(ctx, z1, z2, tau, tau0, *, kind, eps, reduction, block, need_grad):
    """:func:`nt_xent` by the engine (:func:`nt_xent_engine` on the whole batch)."""
    a, b = ctx.to_compute(z1), ctx.to_compute(z2)
    return nt_xent_engine(ctx, a, b, None, tau, tau0, inputs={"z1": z1, "z2": z2}, kind=kind,
                          eps=eps, reduction=reduction, block=block, need_grad=need_grad)


def nt_xent_engine(ctx, a, b, views, tau, tau0, *, inputs, kind, eps, reduction, block, need_grad,
                   across=None):
    """The engine's NT-Xent: anchors ``u = [a; b]`` (2n rows) against the columns
    ``[A; B]`` = ``views`` (2N rows: a sharded batch's gathered views, this rank's
    first in each half; None: ``u`` itself).  Anchor ``j`` of ``a`` excludes columns
    ``j`` and ``N + j`` (its partner, held as the positive), anchor ``j`` of ``b``
    columns ``N + j`` and ``j``.  Returns ``(value, vjp)`` keyed ``z1``, ``z2``,
    ``temperature``; with ``across`` the columns' gradients go to their owners
    (``across.owners({"z1": .., "z2": ..})`` of the two halves)."""
    xp = ctx.xp
    n = a.shape[0]
    u = xp.concat([a, b], axis=0)
    cols = u if views is None else views
    big_n = cols.shape[0] // 2
    fa, fb, back_f = bilinear_features(u, cols, kind=feature_kind(kind), eps=eps, xp=xp,
                                       center=None if across is None else across.center(u, cols))
    s_pos, back_pos = pair_sim_from_features(a, b, fa[:n, :], fb[big_n:big_n + n, :], kind=kind,
                                             eps=eps, xp=xp)

    def assemble(dfa, dfb, dpos):
        d1, d2, ga, gb = back_pos(dpos[:n] + dpos[n:], dfa[:n, :], dfb[big_n:big_n + n, :])
        dfa = xp.concat([d1, dfa[n:, :]], axis=0)
        dfb = xp.concat([dfb[:big_n, :], d2, dfb[big_n + n:, :]], axis=0)
        if views is None and kind in ("cosine", "dot"):
            # fa and fb are the same features of u: one VJP of their sum
            g_rows, g_cols = back_f(dfa + dfb, xp.zeros_like(dfb))[0], None
        else:
            g_rows, g_cols = back_f(dfa, dfb)
        if g_cols is not None and across is not None:
            owned = across.owners({"z1": g_cols[:big_n, :], "z2": g_cols[big_n:, :]})
            g_cols = xp.concat([owned["z1"], owned["z2"]], axis=0)
        gu = g_rows if g_cols is None else g_rows + g_cols
        return {"z1": plus(gu[:n, :], ga), "z2": plus(gu[n:, :], gb)}

    lg = prepare_logits(fa, fb, tau, concrete_float(tau0), kind=kind, n_entries=4 * n * big_n,
                        dtype=ctx.dtype, xp=xp)
    # anchors of a exclude themselves and their partner N columns on; b's (at row offset n),
    # the self column N + j and the partner j
    return _streamed(ctx, lg, xp.concat([s_pos, s_pos]) / tau, tau, tau0, reduction=reduction,
                     segments=[(0, n, (0, big_n)), (n, 2 * n, (big_n - n, -n))], block=block,
                     assemble=assemble, inputs=inputs, need_grad=need_grad, across=across)


def two_view_logits(ctx, z1, z2, tau, *, kind, eps):
    """The 2N views' dense logits, shared by the two-view losses' references (NT-Xent, DCL).

    ``u = [z1; z2]``, ``z = s(u, u)/τ`` with its VJP ``back_s``, ``keep`` (every
    ``b ≠ a`` but the partner ``a ± N``, whose logit is held apart) and the pairs'
    similarities ``s_pos_i = s(z1_i, z2_i)`` (row-wise) with their VJP.  Returns
    ``(n, z, back_s, keep, s_pos, back_pos)``.
    """
    xp = ctx.xp
    a, b = ctx.to_compute(z1), ctx.to_compute(z2)
    n = a.shape[0]
    u = xp.concat([a, b], axis=0)
    s, back_s = sim_fwd(u, u, kind=kind, eps=eps, xp=xp)
    keep = xp.logical_not(ctx.eye(2 * n, dtype=xp.bool) | ctx.eye(2 * n, k=n, dtype=xp.bool)
                          | ctx.eye(2 * n, k=-n, dtype=xp.bool))
    s_pos, back_pos = pair_sim(a, b, kind=kind, eps=eps, xp=xp)
    return n, s / tau, back_s, keep, s_pos, back_pos


def nt_xent_dense(ctx, z1, z2, tau, tau0, *, kind, eps, reduction):
    r"""The reference of :func:`nt_xent`: the formula on the whole (2N, 2N) score matrix.

    ``u = [z1; z2]``, ``z = s(u, u)/τ`` with the diagonal and the partners' diagonals
    (``±N``) masked, the partner's logit held apart as the positive,
    :math:`\ell_a = \operatorname{LSE}_{b \ne a}(z_{ab}) - z_{a, a \pm N}` by
    ``_objective.ce_rows``, the reduction; the VJP is their composition.
    """
    xp = ctx.xp
    n, z, back_s, keep, s_pos, back_pos = two_view_logits(ctx, z1, z2, tau, kind=kind, eps=eps)
    pos = xp.concat([s_pos, s_pos]) / tau
    per, back_rows = ce_rows(z, pos, keep, axis=1, xp=xp)
    value, back_red = reduce_fwd(per, reduction, xp=xp)
    value = ctx.result_finite(value, "nt_xent")

    def vjp(g):
        gl = back_red(ctx.to_compute(g))
        dz, dpos = back_rows(gl)
        dtau = temperature_grad(dz, z, dpos, pos, tau, xp=xp)
        gu1, gu2 = back_s(dz / tau)
        gu = gu1 + gu2
        ga, gb = back_pos((dpos[:n] + dpos[n:]) / tau)
        return {"z1": ctx.like(gu[:n, :] + ga, z1), "z2": ctx.like(gu[n:, :] + gb, z2),
                "temperature": scalar_grad(ctx, dtau, tau0)}

    return ctx.to_out(value), vjp


@differentiable("info_nce_from_scores", wrt=("scores",))
def info_nce_from_scores(scores: Array, /, *, reduction: str = "mean",
                         check_finite: bool = True, xp=None):
    r"""InfoNCE on a given score (logit) matrix whose diagonal holds the positives.

    .. math::

        \ell_i = \log\sum_{j=1}^{M} e^{s_{ij}} - s_{ii}, \qquad i = 1..N,\ M \ge N.

    Columns beyond N are extra negatives shared by every row.  This is the
    objective :func:`nce_ref.info_nce` applies to ``s(q, k)/τ``, and the one the MI
    bound ``nce_ref.mi.infonce`` (``log N − L``) reuses.

    Parameters
    ----------
    scores : array, shape (N, M) with M >= N
    reduction : {"mean", "sum", "none"}, default "mean"
    check_finite, xp
        As in :func:`nce_ref.info_nce`.

    Returns
    -------
    loss : array, 0-d or (N,)

    See Also
    --------
    nce_ref.info_nce
        The same objective on embeddings.
    nce_ref.mi.infonce
        ``log N - L`` on a critic score matrix.

    Notes
    -----
    :math:`\partial\ell/\partial s_{ij} = g_i(p_{ij} - [i = j])` with
    :math:`p_{ij} = \operatorname{softmax}_j(s_{ij})`.

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> float(nce_ref.info_nce_from_scores(np.zeros((4, 4))))  # uniform scores: log N
    1.3862943611198906
    """
    check_reduction(reduction)
    ctx = resolve({"scores": scores}, ndims={"scores": 2}, xp=xp, check_finite=check_finite)
    xp = ctx.xp
    n, m = scores.shape
    check_rows(n, "scores")
    if m < n:
        raise ValueError(f"`scores` must have at least as many columns as rows (its diagonal "
                         f"holds the positives); got shape {(n, m)}")
    s = ctx.to_compute(scores)
    diag = ctx.eye(n, m, dtype=xp.bool)
    pos = xp.sum(xp.where(diag, s, xp.zeros_like(s)), axis=1)
    per, back_rows = ce_rows(s, pos, xp.logical_not(diag), axis=1, xp=xp)
    value, back_red = reduce_fwd(per, reduction, xp=xp)
    value = ctx.result_finite(value, "info_nce_from_scores")

    def vjp(g):
        gl = back_red(ctx.to_compute(g))
        dz, dpos = back_rows(gl)
        ds = dz + xp.where(diag, xp.expand_dims(dpos, axis=1), xp.zeros_like(dz))
        return {"scores": ctx.like(ds, scores)}

    return ctx.to_out(value), vjp
