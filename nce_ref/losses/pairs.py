"""Pair losses on a labelled batch: the multi-similarity loss and the pairwise contrastive
loss, with pytorch-metric-learning's conventions as named options.

Both are defined on the (N, N) score or distance matrix of the batch with itself:
positive pairs ``i ≠ j`` with equal labels (a row is never its own positive, excluded
by index), negative pairs with different labels; or, with a reference set ``ref``
(M, D), on the (N, M) matrix of the anchors against it (PML's ``ref_emb``), where only
the pairs ``(i, ref_self[i])`` are excluded.  The selections (mining, the hinges) are
piecewise constant and the gradient flows through the selected entries.

Every term is local to an anchor's row, and written once, as a function of some rows:
:func:`ms_rows` (two masked log-sum-exps per row, and the mining's per-row max/min) and
:func:`contrastive_rows` (the hinges, summed and counted per row, then
:func:`contrastive_reduce`).  The public functions run them on the path their
``method`` names:

- the **reference** (``method="dense"``): the whole (N, M) matrix (``sim_fwd`` /
  ``dist_fwd``, ``pair_relations``), the row function on all rows at once, the
  reduction, and the composition of their VJPs;
- the **engine** (``method="streamed"``, and ``"auto"``, which covers every option):
  blocks of anchor rows against all M columns (:func:`block_relations`), memory
  O(block·M), never (N, M).  One pass where the rows' cotangents are known before it
  (``"mean"``, ``"sum"``: the gradient for ``g = 1``, scaled by the VJP); otherwise the
  rows' sums in a first pass, the reduction's global counts, and the gradient in a
  second pass (in the VJP; where one block holds every row, it reuses the first pass's
  block).

Derivations: ``docs/derivations.md``, sections "Multi-similarity loss" and "Pairwise
contrastive loss".
"""

from __future__ import annotations

import functools
import math
from typing import Any

from array_api_compat import device

from .._array import check_labels, check_method, check_real, resolve
from .._reduce import (
    REDUCTIONS_NONZERO,
    REDUCTIONS_PER_ANCHOR,
    check_reduction,
    mean_over_fwd,
    per_anchor_fwd,
    reduce_fwd,
)
from .._stream import choose_block
from ..autodiff import differentiable
from ..similarity import DEFAULT_EPS, check_similarity, sim_fwd, unit_rows
from .triplet import check_distance, check_ref_set, dist_fwd, pair_relations, ref_arrays

Array = Any

__all__ = ["multi_similarity", "pairwise_contrastive"]


def _check_embeddings(ctx, embeddings, labels, ref=None, ref_labels=None, ref_self=None):
    n, d = embeddings.shape
    if n < 1:
        raise ValueError("`embeddings` must have at least one row (N >= 1); got N = 0")
    if d < 1:
        raise ValueError("`embeddings` must have at least one column (D >= 1); got D = 0")
    check_labels(ctx, labels, n)
    check_ref_set(ctx, n, d, ref, ref_labels, ref_self)
    return n


def _grads(ctx, ga, gb, embeddings, ref):
    """The similarity's or distance's two operand gradients: both the embeddings'
    without a reference set, the embeddings' and the reference set's with one."""
    if ref is None:
        return {"embeddings": ctx.like(ga + gb, embeddings)}
    return {"embeddings": ctx.like(ga, embeddings), "ref": ctx.like(gb, ref)}


# -- multi-similarity -----------------------------------------------------------------------

def _soft_count(x, mask, ctx):
    """``log(1 + Σ_{mask} e^{x})`` per row (R,), 0 for an empty row, and the softmax over
    ``{0} ∪ mask`` without its 0 entry, as ``(e, total)``: ``p = e / total``.

    The log-sum-exp over the kept entries and the "1 +" (an entry 0, always kept),
    shifted by ``m = max(0, max_{mask} x)``: ``total`` is at least 1 (the entry at the
    shift gives ``e^0``), so no overflow and no ``log 0``; the softmax reuses the
    exponentials ``e`` (0 off the mask)."""
    xp = ctx.xp
    xm = xp.where(mask, x, xp.asarray(-math.inf, dtype=x.dtype, device=ctx.device))
    m = xp.max(xm, axis=1, keepdims=True)
    m = xp.maximum(m, xp.zeros_like(m))
    e = xp.exp(xm - m)  # masked entries: exp(-inf) = 0
    total = xp.exp(-m) + xp.sum(e, axis=1, keepdims=True)
    return xp.squeeze(m + xp.log(total), axis=1), e, total


@differentiable("multi_similarity", wrt=("embeddings", "ref"))
def multi_similarity(embeddings: Array, labels: Array, /, *, alpha: float = 2.0, beta: float = 50.0,
                     base: float = 0.5, mining_margin: float | None = None,
                     similarity: str = "cosine", reduction: str = "mean",
                     ref: Array | None = None, ref_labels: Array | None = None,
                     ref_self: Array | None = None, eps: float = DEFAULT_EPS,
                     method: str = "auto", block_size: int | None = None,
                     check_finite: bool = True, xp=None, need_grad: bool = True):
    r"""Multi-similarity loss (Wang et al. 2019), as pytorch-metric-learning computes it.

    With :math:`S_{ij} = s(x_i, x_j)`, :math:`P_i` the positives of anchor :math:`i` (same
    label, :math:`j \ne i`) and :math:`N_i` its negatives,

    .. math::

        \ell_i = \frac1\alpha \log\Big(1 + \sum_{j\in P_i} e^{-\alpha (S_{ij} - \lambda)}\Big)
               + \frac1\beta \log\Big(1 + \sum_{k\in N_i} e^{\beta (S_{ik} - \lambda)}\Big),

    with :math:`\lambda` the ``base``; an empty set adds 0.  This is PML's
    ``MultiSimilarityLoss(alpha, beta, base)`` on ``(embeddings, labels)``: its
    ``lmu.logsumexp(..., add_one=True)`` over the masked pairs of the cosine matrix,
    reduced by the mean over all N anchors (``MeanReducer``).  With a reference set
    ``ref``, :math:`S_{ij} = s(x_i, r_j)` and :math:`P_i, N_i` are the rows of ``ref``
    with an equal and a different label (none excluded but ``ref_self[i]``): PML's
    ``loss(embeddings, labels, ref_emb=ref, ref_labels=ref_labels)``.

    Parameters
    ----------
    embeddings : array, shape (N, D)
    labels : array, shape (N,)
        Any bool, integer or real floating values; only equality matters.
    alpha, beta : float, default 2.0, 50.0
        :math:`\alpha, \beta > 0` (PML's defaults); not differentiated.
    base : float, default 0.5
        :math:`\lambda` (PML's default); not differentiated.
    mining_margin : float, optional
        ``None``: every pair (PML's loss called without a miner).  A float
        :math:`\epsilon \ge 0`: only the pairs that PML's ``MultiSimilarityMiner(epsilon)``
        selects, the paper's pair mining: a positive :math:`j` is kept when
        :math:`S_{ij} - \epsilon < \max_{k\in N_i} S_{ik}` and a negative :math:`k` when
        :math:`S_{ik} + \epsilon > \min_{j\in P_i} S_{ij}` (an anchor without negatives
        keeps no positive, one without positives no negative).  The selection is
        piecewise constant: the gradient flows through the kept pairs.  PML's
        ``loss(emb, labels, miner(emb, labels))`` then returns 0 when at most one
        positive and one negative pair are mined in the whole batch (its
        ``GenericPairLoss`` shortcut); nce_ref returns those pairs' loss.
    similarity : {"cosine", "dot", "neg_sq_euclidean", "neg_euclidean"}, default "cosine"
        PML's default distance is ``CosineSimilarity()``; ``"dot"`` is its
        ``DotProductSimilarity()``.
    reduction : {"mean", "sum", "none", "mean_nonzero"}, default "mean"
        ``"mean"``: over all N anchors (PML); ``"mean_nonzero"``: over the anchors with a
        positive loss (PML's ``AvgNonZeroReducer``: ``ℓ_i > 0`` counts; 0 when none
        is).  The loss has one term per anchor already (its log-sum-exp does not split
        into pair terms), so PML's ``PerAnchorReducer(AvgNonZeroReducer())`` is
        ``"mean_nonzero"`` here (PML passes its ``"element"`` losses straight through).
    ref, ref_labels, ref_self : array, optional
        The reference set (M, D), its labels (M,) and each anchor's own row in it (or
        -1), as in :func:`nce_ref.batch_triplet`.  ``mining_margin`` then mines each
        anchor's pairs with the reference rows (PML's ``MultiSimilarityMiner`` called
        with ``ref_emb``).
    eps
        As in :func:`nce_ref.info_nce`.
    method : {"auto", "dense", "streamed"}, default "auto"
        ``"dense"``: the reference, on the whole (N, N) (or (N, M)) score matrix;
        ``"streamed"`` and ``"auto"`` (the engine covers every option): blocks of
        anchor rows against every column, never the N x N matrix.  The engine makes
        one pass for ``"mean"`` and ``"sum"``, and for ``"none"`` and
        ``"mean_nonzero"`` (whose count of positive terms is global) a pass for the
        value and another for the gradient.
    block_size : int, optional
        Anchor rows per block of the engine.  Default: as many as fit the
        :class:`nce_ref.Tuning`'s memory budget (a few (block, M) arrays).  Results
        equal the dense computation to rounding.
    check_finite, xp
        As in :func:`nce_ref.info_nce`.

    Returns
    -------
    loss : array, 0-d or (N,)

    Raises
    ------
    ValueError, TypeError
        On a wrong shape, N = 0, D = 0, non-positive ``alpha``/``beta``, a negative
        ``mining_margin``, non-finite options, unknown options, a ``block_size`` that
        is not a positive integer; the message names the argument.

    Notes
    -----
    With :math:`p_{ij}` the softmax of :math:`-\alpha(S_{ij}-\lambda)` over
    :math:`\{0\}\cup P_i` (the 0 for the "1 +") and :math:`q_{ik}` that of
    :math:`\beta(S_{ik}-\lambda)` over :math:`\{0\}\cup N_i`:
    :math:`\partial\ell_i/\partial S_{ij} = -p_{ij}` and
    :math:`\partial\ell_i/\partial S_{ik} = q_{ik}`; the similarity's VJP takes the sum of
    both operands' gradients (with ``ref``: the first to ``embeddings``, the second
    to ``ref``).

    References
    ----------
    Wang, Han, Huang, Dong and Scott, "Multi-Similarity Loss with General Pair Weighting
    for Deep Metric Learning" (CVPR 2019).

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> y = np.array([0, 0, 1])
    >>> loss = nce_ref.multi_similarity(x, y, reduction="none")
    >>> # anchor 0: S = 1 with its positive, 0 with its negative
    >>> want = np.log1p(np.exp(-2 * 0.5)) / 2 + np.log1p(np.exp(50 * -0.5)) / 50
    >>> bool(np.isclose(loss[0], want))
    True
    >>> # against a reference set: anchor 0 with one positive row and one negative row
    >>> r, ry = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])
    >>> bool(np.isclose(nce_ref.multi_similarity(x[:1], y[:1], ref=r, ref_labels=ry), want))
    True
    >>> # the engine, one anchor row per block, equals the dense reference
    >>> a = nce_ref.multi_similarity(x, y, method="streamed", block_size=1)
    >>> bool(np.isclose(a, nce_ref.multi_similarity(x, y, method="dense"), rtol=1e-14))
    True
    """
    kind, eps = check_similarity(similarity, eps)
    check_reduction(reduction, REDUCTIONS_NONZERO)
    alpha = check_real(alpha, "alpha", positive=True)
    beta = check_real(beta, "beta", positive=True)
    base = check_real(base, "base")
    if mining_margin is not None:
        mining_margin = check_real(mining_margin, "mining_margin", nonnegative=True)
    path = check_method(method, streamable=True)
    refs = ref_arrays(ref, ref_labels, ref_self)
    ctx = resolve({"embeddings": embeddings, "labels": labels, **refs},
                  ndims={"embeddings": 2, "labels": 1}, floating=("embeddings", "ref"), xp=xp,
                  check_finite=check_finite)
    xp = ctx.xp
    _check_embeddings(ctx, embeddings, labels, ref, ref_labels, ref_self)
    block = _block(ctx, embeddings, ref, block_size, 8) if path == "streamed" else None
    x = ctx.to_compute(embeddings)
    r = None if ref is None else ctx.to_compute(ref)
    rows = functools.partial(ms_rows, alpha=alpha, beta=beta, base=base,
                             mining_margin=mining_margin, ctx=ctx)
    if path == "streamed":
        return _ms_streamed(ctx, x, r, labels, ref_labels, ref_self, rows, kind=kind, eps=eps,
                            reduction=reduction, block=block, need_grad=need_grad,
                            embeddings=embeddings, ref=ref)
    s, back_s = sim_fwd(x, x if r is None else r, kind=kind, eps=eps, xp=xp)
    pos, neg = pair_relations(ctx, labels, ref_labels, ref_self)
    per, back_rows = rows(s, pos, neg)
    value, back_red = reduce_fwd(per, reduction, xp=xp)
    value = ctx.result_finite(value, "multi_similarity")

    def vjp(g):
        ga, gb = back_s(back_rows(back_red(ctx.to_compute(g))))
        return _grads(ctx, ga, gb, embeddings, ref)

    return ctx.to_out(value), vjp


def ms_rows(s, pos, neg, *, alpha, beta, base, mining_margin, ctx):
    r"""The multi-similarity terms of some anchors' rows: :math:`\ell_i` (R,) from their
    scores ``s`` (R, M) and pairs ``pos``, ``neg`` (R, M), with the mining, and
    ``back(gl) -> ds`` (R, M).  Every term is local to its row: the reference calls it on
    all N rows at once, the engine on each block of rows."""
    xp = ctx.xp
    if mining_margin is not None:
        inf = xp.asarray(math.inf, dtype=s.dtype, device=ctx.device)
        max_neg = xp.max(xp.where(neg, s, -inf), axis=1, keepdims=True)
        min_pos = xp.min(xp.where(pos, s, inf), axis=1, keepdims=True)
        pos = pos & (s - mining_margin < max_neg)
        neg = neg & (s + mining_margin > min_pos)
    sb = s - base
    lse_p, e_p, total_p = _soft_count(-alpha * sb, pos, ctx)
    lse_n, e_n, total_n = _soft_count(beta * sb, neg, ctx)

    def back(gl):
        # ∂ℓ_i/∂S_ij = -p_ij (positives), q_ik (negatives): the 1/α and 1/β cancel
        gl = xp.expand_dims(gl, axis=1)
        return e_n * (gl / total_n) - e_p * (gl / total_p)

    return lse_p / alpha + lse_n / beta, back


# -- pairwise contrastive ---------------------------------------------------------------------

@differentiable("pairwise_contrastive", wrt=("embeddings", "ref"))
def pairwise_contrastive(embeddings: Array, labels: Array, /, *, pos_margin: float = 0.0,
                         neg_margin: float = 1.0, distance: str = "euclidean", p: float = 2,
                         squared: bool = False, normalize: bool = False,
                         split_pos_neg: bool = False, reduction: str = "mean",
                         ref: Array | None = None, ref_labels: Array | None = None,
                         ref_self: Array | None = None, eps: float = DEFAULT_EPS,
                         method: str = "auto", block_size: int | None = None,
                         check_finite: bool = True, xp=None, need_grad: bool = True):
    r"""The pairwise contrastive loss (Hadsell, Chopra and LeCun 2006) over all pairs of a
    labelled batch.

    With :math:`d_{ij}` the distance between rows :math:`i \ne j`, :math:`h(v) = \max(v, 0)`
    (``squared=True``: :math:`\tfrac12\max(v, 0)^2`, the paper's form), positives pulled
    within ``pos_margin`` and negatives pushed past ``neg_margin``:

    .. math::

        t_{ij} = \begin{cases} h(d_{ij} - m_+) & y_i = y_j \\
                               h(m_- - d_{ij}) & y_i \ne y_j \end{cases},
        \qquad \ell_i = \sum_{j \ne i} t_{ij}.

    Every ordered pair counts (both :math:`(i, j)` and :math:`(j, i)`, as in PML).
    With a reference set ``ref``, :math:`d_{ij}` is the distance of anchor :math:`i`
    to reference row :math:`j` and :math:`\ell_i` sums over every row of ``ref`` but
    ``ref_self[i]`` (PML's ``loss(embeddings, labels, ref_emb=ref, ref_labels=...)``).
    The paper's loss is ``squared=True, pos_margin=0`` (:math:`\tfrac12 d^2` for the
    positives, :math:`\tfrac12\max(m - d, 0)^2` for the negatives).
    pytorch-metric-learning's ``ContrastiveLoss(pos_margin=0, neg_margin=1)`` with its
    defaults is ``distance="euclidean", normalize=True, reduction="mean_nonzero",
    split_pos_neg=True``.

    Parameters
    ----------
    embeddings : array, shape (N, D)
    labels : array, shape (N,)
        Any bool, integer or real floating values; only equality matters.
    pos_margin, neg_margin : float, default 0.0, 1.0
        :math:`m_+, m_- \ge 0` (PML's names and defaults); not differentiated.
    distance : {"euclidean", "sq_euclidean", "cosine", "lp"}, default "euclidean"
        As in :func:`nce_ref.triplet`: PML's default ``LpDistance()`` is
        ``"euclidean"`` (with ``normalize=True``).  PML's ``CosineSimilarity()`` flips
        the margins' roles (a similarity above ``pos_margin``, below ``neg_margin``):
        it is ``distance="cosine"`` with margins ``1 - pos_margin`` and ``1 - neg_margin``.
    p : float, default 2
        The norm degree of ``distance="lp"``.
    squared : bool, default False
        :math:`\tfrac12\max(\cdot, 0)^2` instead of the hinge (the paper's form).
    normalize : bool, default False
        Scale each row to unit norm first (norm floor ``eps``, as
        ``torch.nn.functional.normalize``): PML's distances' default
        ``normalize_embeddings=True``.
    split_pos_neg : bool, default False
        Reduce the positive pairs' and the negative pairs' terms separately and add the
        two means (PML's ``MultipleReducers`` over its ``pos_loss`` and ``neg_loss``
        sub-losses); an empty side adds 0.  ``"sum"`` and ``"none"`` do not depend on it.
    reduction : {"mean", "sum", "none", "mean_nonzero", "per_anchor"}, default "mean"
        ``"mean"``: over the N(N − 1) ordered pairs (or, split, each side over its own
        pairs); ``"mean_nonzero"``: over the pairs with a positive term (PML's
        ``AvgNonZeroReducer``, its default: a term counts when it is ``> 0``); 0 when
        there is none.  ``"none"``: shape (N,), each anchor's sum :math:`\ell_i`.
        ``"per_anchor"``: each anchor's mean over its pairs,
        :math:`v_i = \ell_i / c_i` with :math:`c_i` its number of pairs (0 without
        one), then :math:`\sum_{v_i>0} v_i / \#\{i : v_i > 0\}` (0 when none is
        positive); with ``split_pos_neg=True`` the positive and the negative pairs
        each so, added.  ``split_pos_neg=True, reduction="per_anchor"`` is PML's
        ``ContrastiveLoss(reducer=PerAnchorReducer(AvgNonZeroReducer()))``.  Two PML
        quirks are not reproduced: its reducer scatters the pair terms into an
        N x N array, so with a reference set of M > N rows it fails (an
        ``IndexError``), and it takes a pair term equal to ``+inf`` for an absent pair.
    ref : array, shape (M, D), optional
        The reference set (PML's ``ref_emb``); ``normalize`` scales its rows too.
    ref_labels, ref_self : array, optional
        As in :func:`nce_ref.batch_triplet`.
    eps
        As in :func:`nce_ref.triplet`.
    method : {"auto", "dense", "streamed"}, default "auto"
        ``"dense"``: the reference, on the whole (N, N) (or (N, M)) distance matrix
        (``distance="lp"``: its (N, M, D) differences); ``"streamed"`` and ``"auto"``
        (the engine covers every option): blocks of anchor rows against every column,
        never the N x N matrix.  The engine makes one pass for ``"mean"`` (its counts
        of pairs come from the labels alone) and ``"sum"``, and for ``"none"``,
        ``"mean_nonzero"`` and ``"per_anchor"`` (whose counts are global) a pass for
        the value and another for the gradient.
    block_size : int, optional
        Anchor rows per block of the engine.  Default: as many as fit the
        :class:`nce_ref.Tuning`'s memory budget (a few (block, M) arrays; (block, M, D)
        for ``"lp"``).  Results equal the dense computation to rounding.
    check_finite, xp
        As in :func:`nce_ref.triplet`.

    Returns
    -------
    loss : array, 0-d or (N,)

    Raises
    ------
    ValueError, TypeError
        On a wrong shape, N = 0, D = 0, negative or non-finite margins, ``p < 1``,
        unknown options, a ``block_size`` that is not a positive integer; the message
        names the argument.

    Notes
    -----
    With the cotangent :math:`\bar t_{ij}` of each term (from the reduction) and
    :math:`h'(v) = [v > 0]` (0 at the kink) or :math:`\max(v, 0)`:
    :math:`\bar d_{ij} = \bar t_{ij} h'(d_{ij} - m_+)` for a positive pair and
    :math:`-\bar t_{ij} h'(m_- - d_{ij})` for a negative one; the distance's VJP (both
    operands are the embeddings, or the embeddings and ``ref``), then the
    normalisation's.  ``"per_anchor"``: :math:`\bar t_{ij} = [v_i > 0] / (K c_i)`
    with :math:`K = \#\{i : v_i > 0\}`.

    References
    ----------
    Hadsell, Chopra and LeCun, "Dimensionality Reduction by Learning an Invariant
    Mapping" (CVPR 2006).

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> x = np.array([[0.0], [0.5], [3.0]])
    >>> y = np.array([0, 0, 1])
    >>> # positives (0, 1) at 0.5; negatives at 3.0 and 2.5 are past the margin 1
    >>> nce_ref.pairwise_contrastive(x, y, reduction="none")
    array([0.5, 0.5, 0. ])
    >>> # per anchor: 0.5 over 2 pairs for anchors 0 and 1, then the mean of (0.25, 0.25)
    >>> float(nce_ref.pairwise_contrastive(x, y, reduction="per_anchor"))
    0.25
    >>> # against a reference set of two rows of class 0, at 0 and 2.5: anchor 0's
    >>> # positives at 0 and 2.5, anchor 1's at 0.5 and 2, anchor 2's negative at 0.5
    >>> r, ry = np.array([[0.0], [2.5]]), np.array([0, 0])
    >>> nce_ref.pairwise_contrastive(x, y, ref=r, ref_labels=ry, reduction="none")
    array([2.5, 2.5, 0.5])
    >>> # the engine in blocks of two anchor rows (2, then 1) equals the dense reference
    >>> nce_ref.pairwise_contrastive(x, y, ref=r, ref_labels=ry, reduction="none",
    ...                              method="streamed", block_size=2)
    array([2.5, 2.5, 0.5])
    """
    p = check_distance(distance, p)
    check_reduction(reduction, REDUCTIONS_PER_ANCHOR)
    pos_margin = check_real(pos_margin, "pos_margin", nonnegative=True)
    neg_margin = check_real(neg_margin, "neg_margin", nonnegative=True)
    eps = check_real(eps, "eps", positive=True)
    for name, v in (("squared", squared), ("normalize", normalize), ("split_pos_neg", split_pos_neg)):
        if not isinstance(v, bool):
            raise TypeError(f"`{name}` must be a bool; got {v!r}")
    path = check_method(method, streamable=True)
    refs = ref_arrays(ref, ref_labels, ref_self)
    ctx = resolve({"embeddings": embeddings, "labels": labels, **refs},
                  ndims={"embeddings": 2, "labels": 1}, floating=("embeddings", "ref"), xp=xp,
                  check_finite=check_finite)
    xp = ctx.xp
    _check_embeddings(ctx, embeddings, labels, ref, ref_labels, ref_self)
    block = (_block(ctx, embeddings, ref, block_size, 6,
                    embeddings.shape[1] if distance == "lp" else 1)
             if path == "streamed" else None)
    x = ctx.to_compute(embeddings)
    r = None if ref is None else ctx.to_compute(ref)
    back_unit = back_unit_r = None
    if normalize:
        x, back_unit = unit_rows(x, eps=eps, xp=xp)
        if r is not None:
            r, back_unit_r = unit_rows(r, eps=eps, xp=xp)

    def finish(ga, gb):
        """The embeddings' (and ref's) gradients from the distance's operands'."""
        if r is None:
            ga, gb = ga + gb, None
        if back_unit is not None:
            ga = back_unit(ga)
        if back_unit_r is not None:
            gb = back_unit_r(gb)
        if gb is None:
            return {"embeddings": ctx.like(ga, embeddings)}
        return _grads(ctx, ga, gb, embeddings, ref)

    count = {"mean": "pairs", "per_anchor": "pairs", "mean_nonzero": "nonzero"}.get(reduction)
    rows = functools.partial(contrastive_rows, pos_margin=pos_margin, neg_margin=neg_margin,
                             squared=squared, count=count, xp=xp)
    reduce = functools.partial(contrastive_reduce, reduction=reduction,
                               split_pos_neg=split_pos_neg, xp=xp)
    if path == "streamed":
        return _contrastive_streamed(ctx, x, r, labels, ref_labels, ref_self, rows, reduce,
                                     finish, distance=distance, p=p, eps=eps,
                                     reduction=reduction, block=block, need_grad=need_grad)
    dist, back_d = dist_fwd(x, x if r is None else r, distance=distance, p=p, eps=eps, xp=xp)
    pos, neg = pair_relations(ctx, labels, ref_labels, ref_self)
    (tp, tn, cp, cn), back_rows = rows(dist, pos, neg)
    value, back_red = reduce(tp, tn, cp, cn)
    value = ctx.result_finite(value, "pairwise_contrastive")

    def vjp(g):
        return finish(*back_d(back_rows(*back_red(ctx.to_compute(g)))))

    return ctx.to_out(value), vjp


def contrastive_rows(dist, pos, neg, *, pos_margin, neg_margin, squared, count, xp):
    r"""The pairwise contrastive terms of some anchors' rows, summed per row: from their
    distances ``dist`` (R, M) and pairs ``pos``, ``neg`` (R, M), ``(tp, tn, cp, cn)``
    (each (R,)): the positive and the negative terms' sums and counts (``count``:
    ``"pairs"``, the pairs; ``"nonzero"``, the positive terms; None: not counted), and
    ``back(wp, wn) -> dd`` (R, M), the distances' cotangent for the rows' cotangents
    ``wp`` of the positive and ``wn`` of the negative sums.  Every term is local to its
    row: the reference calls it on all N rows at once, the engine on each block."""
    zero = xp.zeros((), dtype=dist.dtype, device=device(dist))
    vp, vn = dist - pos_margin, neg_margin - dist
    act_p, act_n = pos & (vp > 0), neg & (vn > 0)  # disjoint: pos and neg are
    hp, hn = xp.where(act_p, vp, zero), xp.where(act_n, vn, zero)
    if squared:
        dhp, dhn = hp, hn  # h'(v) = max(v, 0)
        hp, hn = 0.5 * hp * hp, 0.5 * hn * hn
    tp, tn = xp.sum(hp, axis=1), xp.sum(hn, axis=1)
    if count is None:
        cp = cn = None
    else:
        mp, mn = (pos, neg) if count == "pairs" else (hp > 0, hn > 0)
        cp, cn = (xp.astype(xp.count_nonzero(m, axis=1), dist.dtype) for m in (mp, mn))

    def back(wp, wn):
        wp, wn = xp.expand_dims(wp, axis=1), xp.expand_dims(wn, axis=1)
        if squared:
            return wp * dhp - wn * dhn
        return xp.where(act_p, wp, xp.where(act_n, -wn, zero))  # h'(v) = [v > 0]

    return (tp, tn, cp, cn), back


def contrastive_reduce(tp, tn, cp, cn, *, reduction, split_pos_neg, xp):
    """The reduction of :func:`pairwise_contrastive` from the rows' sums and counts of
    :func:`contrastive_rows` (N,); returns ``(value, back)``, ``back(g) -> (wp, wn)``,
    the rows' cotangents of the positive and the negative sums."""
    if reduction == "per_anchor" or reduction in ("mean", "mean_nonzero"):
        fwd = per_anchor_fwd if reduction == "per_anchor" else mean_over_fwd
        if split_pos_neg:
            vp_, bp = fwd(tp, cp, xp=xp)
            vn_, bn = fwd(tn, cn, xp=xp)
            return vp_ + vn_, lambda g: (bp(g), bn(g))
        value, b_all = fwd(tp + tn, cp + cn, xp=xp)
    else:
        value, b_all = reduce_fwd(tp + tn, reduction, xp=xp)

    def back(g):
        w = b_all(g)
        return w, w

    return value, back


# -- the engine: blocks of anchor rows --------------------------------------------------------

def _block(ctx, x, r, block_size, buffers, per_col=1):
    """Rows per block: ``block_size``, else as many as ``buffers`` (R, M) arrays (times
    ``per_col``: the p-norm's (R, M, D) differences) fit the tuning's budget."""
    m = x.shape[0] if r is None else r.shape[0]
    return choose_block(x.shape[0], m * per_col, ctx.finfo().bits // 8, block_size=block_size,
                        buffers=buffers, like=x)


def block_relations(ctx, labels, ref_labels, ref_self, r0: int, r1: int):
    """The rows ``r0:r1`` of :func:`nce_ref.losses.triplet.pair_relations`: the anchors
    ``r0..r1-1`` against every column, the self-pair ``(i, i)`` (or ``(i, ref_self[i])``)
    excluded by index."""
    xp = ctx.xp
    cols = labels if ref_labels is None else ref_labels
    same = xp.expand_dims(labels[r0:r1], axis=1) == xp.expand_dims(cols, axis=0)
    diff = xp.logical_not(same)
    if ref_labels is None:
        return same & xp.logical_not(ctx.eye(r1 - r0, labels.shape[0], k=r0, dtype=xp.bool)), diff
    if ref_self is None:
        return same, diff
    idx = xp.arange(ref_labels.shape[0], dtype=ref_self.dtype, device=ctx.device)
    other = xp.expand_dims(ref_self[r0:r1], axis=1) != xp.expand_dims(idx, axis=0)
    return same & other, diff & other


def _sweep(ctx, x, r, labels, ref_labels, ref_self, *, pair, rows, block, weights=None,
           keep=None):
    """One pass over the blocks of anchor rows ``x[r0:r1]`` against every column row
    (``r``, or ``x`` itself): their scores or distances ``pair(a, b) -> (s, back)``, their
    pairs (:func:`block_relations`) and ``rows(s, pos, neg) -> (outs, back)``, the per-row
    outputs (a tuple of (R,) arrays or None).  With ``weights(r0, r1)``, the arguments of
    the rows' ``back`` (the rows' cotangents), also the gradients ``(ga, gb)`` of the two
    operands of ``pair``: ga (N, D) by blocks, gb (M, D) summed over the blocks.
    Memory: a few (block, M) arrays, never (N, M).

    ``keep`` (a dict) carries a pass's only block to the next pass: where one block
    holds every row (it fits the budget), the second pass of a two-pass reduction
    reuses the first one's scores and VJPs instead of computing them again."""
    xp = ctx.xp
    n = x.shape[0]
    cols = x if r is None else r
    outs, gas, gb = [], [], None
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        if keep and r1 - r0 == n:
            out, back_s, back = keep.pop("block")
        else:
            s, back_s = pair(x[r0:r1, :], cols)
            pos, neg = block_relations(ctx, labels, ref_labels, ref_self, r0, r1)
            out, back = rows(s, pos, neg)
            if keep is not None and weights is None and r1 - r0 == n:
                keep["block"] = (out, back_s, back)
        outs.append(out)
        if weights is not None:
            ga, gbb = back_s(back(*weights(r0, r1)))
            gas.append(ga)
            gb = gbb if gb is None else gb + gbb
    outs = tuple(None if o[0] is None else xp.concat(list(o)) for o in zip(*outs))
    return outs, (None if weights is None else (xp.concat(gas, axis=0), gb))


def _pair_counts(ctx, labels, ref_labels, ref_self, n: int, block: int):
    """Each anchor's number of positive and of negative pairs (N,), from the labels only."""
    xp = ctx.xp
    cp, cn = [], []
    for r0 in range(0, n, block):
        pos, neg = block_relations(ctx, labels, ref_labels, ref_self, r0, min(n, r0 + block))
        cp.append(xp.sum(xp.astype(pos, ctx.dtype), axis=1))
        cn.append(xp.sum(xp.astype(neg, ctx.dtype), axis=1))
    return xp.concat(cp), xp.concat(cn)


def _scaled(grads, g):
    return grads if g is None else (grads[0] * g, grads[1] * g)


def _ms_streamed(ctx, x, r, labels, ref_labels, ref_self, rows, *, kind, eps, reduction, block,
                 need_grad, embeddings, ref):
    """:func:`multi_similarity` by blocks of anchor rows; returns ``(value, vjp)``.

    ``"mean"`` and ``"sum"`` know the rows' cotangents (``g/N``, ``g``) before the
    pass: one pass computes the terms and the gradient of their sum with ``g = 1``,
    which the VJP scales.  ``"none"`` and ``"mean_nonzero"`` (whose count
    ``#{ℓ_i > 0}`` is global) compute the terms in a first pass and the gradient in a
    second one, in the VJP."""
    xp = ctx.xp
    n = x.shape[0]

    def pair(a, b):
        return sim_fwd(a, b, kind=kind, eps=eps, xp=xp)

    def rows1(s, pos, neg):
        per, back = rows(s, pos, neg)
        return (per,), back

    keep = {}

    def sweep(gl=None):
        w = None if gl is None else (lambda r0, r1: (gl[r0:r1],))
        (per,), grads = _sweep(ctx, x, r, labels, ref_labels, ref_self, pair=pair, rows=rows1,
                               block=block, weights=w, keep=keep)
        return per, grads

    one_pass = need_grad and reduction in ("mean", "sum")
    if one_pass:
        unit = reduce_fwd(xp.zeros((n,), dtype=ctx.dtype, device=ctx.device), reduction,
                          xp=xp)[1](ctx.asarray(1.0))
        per, grads = sweep(unit)
    else:
        per, grads = sweep()
    value, back_red = reduce_fwd(per, reduction, xp=xp)
    value = ctx.result_finite(value, "multi_similarity")

    def vjp(g):
        g = ctx.to_compute(g)
        ga, gb = _scaled(grads, g) if one_pass else sweep(back_red(g))[1]
        return _grads(ctx, ga, gb, embeddings, ref)

    return ctx.to_out(value), vjp


def _contrastive_streamed(ctx, x, r, labels, ref_labels, ref_self, rows, reduce, finish, *,
                          distance, p, eps, reduction, block, need_grad):
    """:func:`pairwise_contrastive` by blocks of anchor rows; returns ``(value, vjp)``.

    ``"mean"`` (its counts are the pairs', from the labels alone: a pass over the
    labels' blocks, no distance) and ``"sum"`` know the rows' cotangents before the
    pass: one pass computes the rows' sums and the gradient for ``g = 1``, which the
    VJP scales.  ``"none"``, ``"mean_nonzero"`` and ``"per_anchor"`` (global counts of
    the positive terms, or of the anchors with a positive mean) compute the sums in a
    first pass and the gradient in a second one, in the VJP."""
    xp = ctx.xp
    n = x.shape[0]

    def pair(a, b):
        return dist_fwd(a, b, distance=distance, p=p, eps=eps, xp=xp)

    keep = {}

    def sweep(w=None):
        weights = None if w is None else (lambda r0, r1: (w[0][r0:r1], w[1][r0:r1]))
        return _sweep(ctx, x, r, labels, ref_labels, ref_self, pair=pair, rows=rows,
                      block=block, weights=weights, keep=keep)

    one_pass = need_grad and reduction in ("mean", "sum")
    if one_pass:
        zero = xp.zeros((n,), dtype=ctx.dtype, device=ctx.device)
        counts = (_pair_counts(ctx, labels, ref_labels, ref_self, n, block)
                  if reduction == "mean" else (None, None))
        unit = reduce(zero, zero, *counts)[1](ctx.asarray(1.0))
        rows = functools.partial(rows, count=None)  # the counts are known
        (tp, tn, _, _), grads = sweep(unit)
        sums = (tp, tn, *counts)
    else:
        sums, grads = sweep()
    value, back_red = reduce(*sums)
    value = ctx.result_finite(value, "pairwise_contrastive")

    def vjp(g):
        g = ctx.to_compute(g)
        return finish(*(_scaled(grads, g) if one_pass else sweep(back_red(g))[1]))

    return ctx.to_out(value), vjp
