"""Triplet losses: explicit triplets (``triplet``) and mined in a batch (``batch_triplet``).

Both are compositions: distances (``dist_fwd``, built on ``nce_ref.similarity.sim_fwd``
or the p-norm kernel below) → hinge or softplus of ``d_ap − d_an + margin`` → reduction,
with the VJP composed from the pieces.  Mining (hardest positive/negative, semi-hard
negative) selects entries of the distance matrix with masked maxima/minima and one-hot
masks of static shape; the selection is piecewise constant and the gradient flows
through the selected distances only.  ``batch_triplet`` scores the anchors against a
reference set ``ref`` when one is given (an (N, M) distance matrix; PML's ``ref_emb``),
whose helpers :func:`ref_arrays`, :func:`check_ref_set` and :func:`pair_relations` the
pair losses share.  Derivations: ``docs/supcon_triplet.md``, ``docs/derivations.md`` §16.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import is_lazy_array

from .._array import check_labels, check_option, check_pair, check_real, check_rows, resolve
from .._ops import sigmoid, softplus
from .._reduce import (
    REDUCTIONS_NONZERO,
    REDUCTIONS_PER_ANCHOR,
    check_reduction,
    mean_over_fwd,
    per_anchor_fwd,
    reduce_fwd,
)
from ..autodiff import differentiable
from ..similarity import DEFAULT_EPS, sim_fwd

Array = Any

__all__ = ["triplet", "batch_triplet", "dist_fwd", "DISTANCES", "MININGS", "ref_arrays",
           "check_ref_set", "pair_relations"]

DISTANCES = ("euclidean", "sq_euclidean", "cosine", "lp")
MININGS = ("all", "hard", "semi_hard")
#: elements of one (anchors x positives x negatives) block of batch_triplet's "all"/"semi_hard"
_BLOCK_ELEMENTS = 1 << 21

_SIM_OF = {"euclidean": "neg_euclidean", "sq_euclidean": "neg_sq_euclidean", "cosine": "cosine"}


# -- distances ---------------------------------------------------------------------------

def _lp_dist(a: Array, b: Array, p: float, xp):
    r"""``d_ij = (Σ_k |a_ik − b_jk|^p)^{1/p}`` on batched ``(..., N, D) x (..., M, D)``.

    Computed as ``m · (Σ_k r_k^p)^{1/p}`` with ``m = max_k |δ_k|`` and ``r = |δ|/m``,
    so that neither ``|δ|^p`` nor its sum can overflow or underflow.  VJP:
    ``∂d/∂a_k = sign(δ_k) (|δ_k|/d)^{p−1} = sign(δ_k) (r_k/ρ)^{p−1}`` with
    ``ρ = (Σ r^p)^{1/p} >= 1``; at ``d = 0`` the subgradient 0 is used.
    Memory: the ``(..., N, M, D)`` differences.
    """
    delta = xp.expand_dims(a, axis=-2) - xp.expand_dims(b, axis=-3)
    ad = xp.abs(delta)
    m = xp.max(ad, axis=-1, keepdims=True)
    m_safe = xp.where(m > 0, m, xp.ones_like(m))
    r = ad / m_safe
    rho = xp.sum(r ** p, axis=-1, keepdims=True) ** (1.0 / p)
    d = xp.squeeze(m * rho, axis=-1)

    def back(g):
        rho_safe = xp.where(rho > 0, rho, xp.ones_like(rho))
        w = xp.sign(delta) * (r / rho_safe) ** (p - 1.0)
        gw = xp.expand_dims(g, axis=-1) * w
        return xp.sum(gw, axis=-2), -xp.sum(gw, axis=-3)

    return d, back


def dist_fwd(a: Array, b: Array, *, distance: str, p: float, eps: float, xp):
    """Distances ``d[..., i, j] = dist(a[..., i, :], b[..., j, :])`` and their VJP.

    - ``"euclidean"``: ``‖a − b‖₂`` (``−`` the similarity ``"neg_euclidean"``; zero
      distance has the subgradient 0);
    - ``"sq_euclidean"``: ``‖a − b‖₂²``;
    - ``"cosine"``: ``1 − cos(a, b)`` with the similarity's norm floor ``eps``;
    - ``"lp"``: ``(Σ|a − b|^p)^{1/p}``, :func:`_lp_dist`.

    Returns ``(d, back)`` with ``back(G) -> (grad_a, grad_b)``.
    """
    if distance == "lp":
        return _lp_dist(a, b, p, xp)
    s, back_s = sim_fwd(a, b, kind=_SIM_OF[distance], eps=eps, xp=xp)
    d = 1.0 - s if distance == "cosine" else -s
    return d, lambda g: back_s(-g)


def _row_dist(a: Array, b: Array, *, distance: str, p: float, eps: float, xp):
    """Row-wise ``d_i = dist(a_i, b_i)`` (O(N·D)) and its VJP."""
    n = a.shape[0]
    d, back = dist_fwd(xp.expand_dims(a, axis=1), xp.expand_dims(b, axis=1), distance=distance,
                       p=p, eps=eps, xp=xp)

    def vjp(g):
        ga, gb = back(xp.reshape(g, (n, 1, 1)))
        return xp.reshape(ga, a.shape), xp.reshape(gb, b.shape)

    return xp.reshape(d, (n,)), vjp


def _margin_terms(x: Array, *, soft: bool, xp):
    """``l = max(x, 0)`` (derivative ``[x > 0]``: 0 at the kink) or ``softplus(x)``
    (derivative ``σ(x)``); returns ``(l, dl/dx)``."""
    if soft:
        return softplus(x, xp=xp), sigmoid(x, xp=xp)
    pos = x > 0
    return xp.where(pos, x, xp.zeros_like(x)), xp.astype(pos, x.dtype)


def check_distance(distance: str, p) -> float:
    """``distance`` one of :data:`DISTANCES` and ``p`` a p-norm's order (only for "lp");
    returns ``p`` as a float."""
    check_option(distance, "distance", DISTANCES)
    p = check_real(p, "p")
    if p < 1:
        raise ValueError(f"`p` must be >= 1 (a p-norm); got {p}")
    if distance != "lp" and p != 2:
        raise ValueError(f"`p` applies to distance='lp' only; got p={p} with distance={distance!r}")
    return p


# -- the reference set (issue 14: PML's ref_emb / ref_labels, and ref_self) -------------------

def ref_arrays(ref, ref_labels, ref_self, *, labelled: bool = True) -> dict:
    """The reference-set options checked for presence (before :func:`resolve`); returns
    them as ``resolve``'s ``{name: array or None}`` entries.

    ``ref_labels`` is required with ``ref`` (when the loss takes labels); ``ref_labels``
    and ``ref_self`` are only valid with ``ref``.
    """
    if ref is None:
        for name, v in (("ref_labels", ref_labels), ("ref_self", ref_self)):
            if v is not None:
                raise ValueError(f"`{name}` is only valid with `ref` (the reference set); "
                                 "got ref=None")
    elif labelled and ref_labels is None:
        raise ValueError("`ref_labels` is required with `ref`: one label per reference row")
    return {"ref": ref, "ref_labels": ref_labels, "ref_self": ref_self}


def check_ref_set(ctx, n: int, d: int, ref, ref_labels, ref_self) -> int | None:
    """Shapes and dtypes of the reference set against (N, D) embeddings (after
    :func:`resolve`); returns M, or None without ``ref``.

    ``ref``: (M, D), M >= 1; ``ref_labels``: (M,), as ``labels``; ``ref_self``: an
    integer array of shape (N,) with values in [-1, M) (checked unless lazy).
    """
    if ref is None:
        return None
    xp = ctx.xp
    if ref.ndim != 2 or ref.shape[1] != d:
        raise ValueError(f"`ref` must have shape (M, {d}), one row per reference sample with "
                         f"the embeddings' D = {d}; got {tuple(ref.shape)}")
    m = ref.shape[0]
    check_rows(m, "ref")
    if ref_labels is not None:
        check_labels(ctx, ref_labels, m, name="ref_labels")
    if ref_self is not None:
        if not xp.isdtype(ref_self.dtype, "integral"):
            raise TypeError(f"`ref_self` must have an integer dtype (an index into `ref`, or -1); "
                            f"got {ref_self.dtype}")
        if tuple(ref_self.shape) != (n,):
            raise ValueError(f"`ref_self` must have shape ({n},), one entry per anchor; got "
                             f"{tuple(ref_self.shape)}")
        if not is_lazy_array(ref_self) and n and not bool(
                xp.all((ref_self >= -1) & (ref_self < m))):
            raise ValueError(f"`ref_self` must hold indices into `ref` in [-1, {m}) (-1: no copy "
                             "of the anchor in the reference set); got values outside")
    return m


def pair_relations(ctx, labels, ref_labels=None, ref_self=None):
    """``(pos, neg)``: the boolean positive and negative pairs of the anchors (rows)
    with the compared rows (columns).

    Without a reference set (``ref_labels=None``): the batch with itself, (N, N), a row
    never its own positive (excluded by index).  With one: (N, M), every reference row
    with an equal label a positive and every other a negative, except the pair
    ``(i, ref_self[i])`` (the anchor's own copy), which is neither.
    """
    xp = ctx.xp
    cols = labels if ref_labels is None else ref_labels
    same = xp.expand_dims(labels, axis=1) == xp.expand_dims(cols, axis=0)
    diff = xp.logical_not(same)
    if ref_labels is None:
        return same & xp.logical_not(ctx.eye(labels.shape[0], dtype=xp.bool)), diff
    if ref_self is None:
        return same, diff
    m = ref_labels.shape[0]
    idx = xp.arange(m, dtype=ref_self.dtype, device=ctx.device)
    other = xp.expand_dims(ref_self, axis=1) != xp.expand_dims(idx, axis=0)
    return same & other, diff & other


def _check_common(margin, distance, p, soft, reduction, eps, allowed=REDUCTIONS_NONZERO):
    eps = check_real(eps, "eps", positive=True)
    margin = check_real(margin, "margin", nonnegative=True)
    p = check_distance(distance, p)
    if not isinstance(soft, bool):
        raise TypeError(f"`soft` must be a bool; got {soft!r}")
    check_reduction(reduction, allowed)
    return margin, p, eps


# -- triplet -------------------------------------------------------------------------------

@differentiable("triplet", wrt=("anchor", "positive", "negative"))
def triplet(anchor: Array, positive: Array, negative: Array, /, *, margin: float = 1.0,
            distance: str = "euclidean", p: float = 2, swap: bool = False, soft: bool = False,
            reduction: str = "mean", eps: float = DEFAULT_EPS, check_finite: bool = True, xp=None):
    r"""Triplet margin loss on given (anchor, positive, negative) rows.

    .. math::

        \ell_i = h\big(d(a_i, p_i) - d(a_i, n_i) + \text{margin}\big),
        \qquad h(x) = \max(x, 0)\ \text{or, with soft=True,}\ \log(1 + e^x).

    Parameters
    ----------
    anchor, positive, negative : array, shape (N, D)
    margin : float, default 1.0
        ``>= 0``.  With ``soft=True`` it is kept inside the softplus; Hermans et al.'s
        soft margin is ``soft=True, margin=0``.
    distance : {"euclidean", "sq_euclidean", "cosine", "lp"}, default "euclidean"
        ``‖a−b‖₂``, ``‖a−b‖₂²``, ``1 − cos(a, b)`` (norm floor ``eps``), or the
        p-norm ``(Σ_k |a_k − b_k|^p)^{1/p}``, with the absolute value (optax's
        ``triplet_margin_loss`` omits it: negative distances for p = 1, NaN for p = 3).
        All are exact at zero distance, where the subgradient 0 is used.
    p : float, default 2
        The norm degree of ``distance="lp"`` (``>= 1``); ``"lp"`` with ``p=2`` equals
        ``"euclidean"``.  Any other ``p`` with another distance is an error.
    swap : bool, default False
        Use ``min(d(a, n), d(p, n))`` as the negative distance (torch's
        ``TripletMarginLoss(swap=True)``, Balntas et al. 2016).  On a tie the
        anchor's distance is used.
    soft : bool, default False
        ``softplus`` instead of the hinge, computed as
        ``max(x, 0) + log1p(e^{−|x|})``: no overflow for any ``x``.
    reduction : {"mean", "sum", "none", "mean_nonzero"}, default "mean"
        ``"mean_nonzero"`` averages the positive terms only (pytorch-metric-learning's
        ``AvgNonZeroReducer``), and is 0 when none is positive.
    eps : float, default 1e-12
        Norm floor of ``"cosine"``.
    check_finite : bool, default True
    xp : namespace, optional

    Returns
    -------
    loss : array
        0-d, or (N,) for ``reduction="none"``; in the inputs' namespace, device and
        floating dtype (float16/bfloat16 computed in float32).

    Raises
    ------
    ValueError, TypeError
        On shapes that differ, N = 0, D = 0, ``margin < 0``, ``p < 1``, unknown options.

    Notes
    -----
    With :math:`x_i` the argument of :math:`h` and :math:`g_i` the cotangent of
    :math:`\ell_i`: :math:`\bar x_i = g_i h'(x_i)` with :math:`h' = [x > 0]` (0 at the
    kink, unlike ``torch.clamp_min``'s 1) or :math:`\sigma(x)`; then
    :math:`\bar d_{ap} = \bar x`, :math:`\bar d_{an} = -\bar x` and the distance VJPs
    (``docs/supcon_triplet.md``): euclidean :math:`\bar a = \bar d\,(a-b)/d`, squared
    :math:`2\bar d\,(a-b)`, lp :math:`\bar d\,\operatorname{sign}(\delta)(|\delta|/d)^{p-1}`.

    References
    ----------
    Schroff et al., "FaceNet" (2015); Balntas et al., "Learning local feature
    descriptors with triplets and shallow convolutional neural networks" (2016).

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref.losses.triplet import triplet
    >>> a = np.array([[0.0, 0.0], [1.0, 1.0]])
    >>> p = np.array([[0.0, 3.0], [1.0, 1.0]])
    >>> n = np.array([[4.0, 0.0], [1.0, 1.0]])
    >>> triplet(a, p, n, reduction="none")   # max(3 - 4 + 1, 0), max(0 - 0 + 1, 0)
    array([0., 1.])
    >>> float(triplet(a, p, n, reduction="mean_nonzero"))
    1.0
    """
    margin, p, eps = _check_common(margin, distance, p, soft, reduction, eps)
    if not isinstance(swap, bool):
        raise TypeError(f"`swap` must be a bool; got {swap!r}")
    ctx = resolve({"anchor": anchor, "positive": positive, "negative": negative},
                  ndims={"anchor": 2, "positive": 2, "negative": 2}, xp=xp,
                  check_finite=check_finite)
    xp = ctx.xp
    n, d = check_pair(anchor, positive, "anchor", "positive")
    if tuple(negative.shape) != (n, d):
        raise ValueError(f"`negative` must have the shape of `anchor` {(n, d)}; got "
                         f"{tuple(negative.shape)}")
    a, ps, ng = ctx.to_compute(anchor), ctx.to_compute(positive), ctx.to_compute(negative)
    opts = {"distance": distance, "p": p, "eps": eps, "xp": xp}
    d_ap, back_ap = _row_dist(a, ps, **opts)
    d_an, back_an = _row_dist(a, ng, **opts)
    d_neg = d_an
    if swap:
        d_pn, back_pn = _row_dist(ps, ng, **opts)
        use_pn = d_pn < d_an
        d_neg = xp.where(use_pn, d_pn, d_an)
    per, dper = _margin_terms(d_ap - d_neg + margin, soft=soft, xp=xp)
    value, back_red = reduce_fwd(per, reduction, xp=xp)
    value = ctx.result_finite(value, "triplet")

    def vjp(g):
        gx = back_red(ctx.to_compute(g)) * dper
        ga, gp = back_ap(gx)
        g_neg = -gx
        zero = xp.zeros_like(g_neg)
        ga2, gn = back_an(xp.where(use_pn, zero, g_neg) if swap else g_neg)
        ga, gn = ga + ga2, gn
        if swap:
            gp2, gn2 = back_pn(xp.where(use_pn, g_neg, zero))
            gp, gn = gp + gp2, gn + gn2
        return {"anchor": ctx.like(ga, anchor), "positive": ctx.like(gp, positive),
                "negative": ctx.like(gn, negative)}

    return ctx.to_out(value), vjp


# -- batch_triplet ---------------------------------------------------------------------------

def _mine_hard(dist, pos, neg, margin, soft, xp):
    """Batch-hard (Hermans et al.): one triplet per anchor, the farthest positive and the
    nearest negative; ties go to the first index.  Returns ``(S, c, c⁺, Gp, Gn)``."""
    n = dist.shape[0]
    inf = math.inf
    dp = xp.where(pos, dist, xp.full_like(dist, -inf))
    dn = xp.where(neg, dist, xp.full_like(dist, inf))
    has_p, has_n = xp.any(pos, axis=1), xp.any(neg, axis=1)
    valid = has_p & has_n
    zero = xp.zeros((n,), dtype=dist.dtype, device=_dev(dist))
    hp = xp.where(has_p, xp.max(dp, axis=1), zero)
    hn = xp.where(has_n, xp.min(dn, axis=1), zero)
    l, dl = _margin_terms(hp - hn + margin, soft=soft, xp=xp)
    l, dl = xp.where(valid, l, zero), xp.where(valid, dl, zero)
    cols = xp.expand_dims(xp.arange(dist.shape[1], device=_dev(dist)), axis=0)
    one_p = cols == xp.expand_dims(xp.argmax(dp, axis=1), axis=1)
    one_n = cols == xp.expand_dims(xp.argmin(dn, axis=1), axis=1)
    dlk = xp.expand_dims(dl, axis=1)
    zz = xp.zeros_like(dist)
    gp, gn = xp.where(one_p, dlk, zz), xp.where(one_n, dlk, zz)
    c = xp.astype(valid, dist.dtype)
    return l, c, xp.astype(valid & (l > 0), dist.dtype), gp, gn


def _blocks(n, m):
    step = max(1, min(n, _BLOCK_ELEMENTS // (m * m)))
    return [(i, min(i + step, n)) for i in range(0, n, step)]


def _mine_all(dist, pos, neg, margin, soft, xp):
    """Batch-all (FaceNet): every (anchor, positive, negative) triplet, in anchor blocks
    of at most ``_BLOCK_ELEMENTS`` triplets."""
    out = []
    for i0, i1 in _blocks(*dist.shape):
        db, pb, nb = dist[i0:i1, :], pos[i0:i1, :], neg[i0:i1, :]
        x = xp.expand_dims(db, axis=2) - xp.expand_dims(db, axis=1) + margin  # (b, j, k)
        valid = xp.expand_dims(pb, axis=2) & xp.expand_dims(nb, axis=1)
        l, dl = _margin_terms(x, soft=soft, xp=xp)
        zz = xp.zeros_like(x)
        l, dl = xp.where(valid, l, zz), xp.where(valid, dl, zz)
        out.append((xp.sum(l, axis=(1, 2)), xp.sum(xp.astype(valid, x.dtype), axis=(1, 2)),
                    xp.sum(xp.astype(l > 0, x.dtype), axis=(1, 2)),
                    xp.sum(dl, axis=2), xp.sum(dl, axis=1)))
    return tuple(xp.concat([o[k] for o in out], axis=0) for k in range(5))


def _mine_semi_hard(dist, pos, neg, margin, soft, xp):
    """Semi-hard (FaceNet): for each (anchor, positive) pair, the nearest negative with
    ``d_ap < d_an < d_ap + margin``; a pair without one forms no triplet."""
    n, m = dist.shape
    ks = xp.reshape(xp.arange(m, device=_dev(dist)), (1, 1, m))
    out = []
    for i0, i1 in _blocks(n, m):
        db, pb, nb = dist[i0:i1, :], pos[i0:i1, :], neg[i0:i1, :]
        dap, dan = xp.expand_dims(db, axis=2), xp.expand_dims(db, axis=1)
        semi = (xp.expand_dims(pb, axis=2) & xp.expand_dims(nb, axis=1) & (dan > dap)
                & (dan < dap + margin))
        cand = xp.where(semi, dan, xp.full_like(semi, math.inf, dtype=db.dtype))
        has = xp.any(semi, axis=2)  # (b, j)
        zero = xp.zeros_like(db)
        d_neg = xp.where(has, xp.min(cand, axis=2), zero)
        l, dl = _margin_terms(db - d_neg + margin, soft=soft, xp=xp)
        l, dl = xp.where(has, l, zero), xp.where(has, dl, zero)
        one = ks == xp.expand_dims(xp.argmin(cand, axis=2), axis=2)  # (b, j, k)
        gn = xp.sum(xp.where(one, xp.expand_dims(dl, axis=2), xp.zeros_like(cand)), axis=1)
        out.append((xp.sum(l, axis=1), xp.sum(xp.astype(has, db.dtype), axis=1),
                    xp.sum(xp.astype(l > 0, db.dtype), axis=1), dl, gn))
    return tuple(xp.concat([o[k] for o in out], axis=0) for k in range(5))


_MINERS = {"all": _mine_all, "hard": _mine_hard, "semi_hard": _mine_semi_hard}


def _dev(x):
    from array_api_compat import device

    return device(x)


@differentiable("batch_triplet", wrt=("embeddings", "ref"))
def batch_triplet(embeddings: Array, labels: Array, /, *, mining: str = "all",
                  margin: float = 1.0, distance: str = "euclidean", p: float = 2,
                  soft: bool = False, reduction: str = "mean", ref: Array | None = None,
                  ref_labels: Array | None = None, ref_self: Array | None = None,
                  eps: float = DEFAULT_EPS, check_finite: bool = True, xp=None):
    r"""Triplet loss over the triplets mined from a labelled batch.

    Rows ``i ≠ j`` with equal labels are positive pairs, rows with different labels
    negative pairs (a row is never its own positive: self-pairs are excluded by
    index, so duplicated rows are each other's positives at distance 0).  With the
    distance matrix :math:`D` and :math:`h` the hinge or softplus of
    :func:`nce_ref.triplet`:

    - ``mining="all"`` (batch-all, FaceNet): every triplet :math:`(i, j, k)`,
      :math:`h(D_{ij} - D_{ik} + \text{margin})`.
    - ``mining="hard"`` (batch-hard, Hermans et al. 2017): one triplet per anchor,
      :math:`h(\max_{j\in P_i} D_{ij} - \min_{k\in N_i} D_{ik} + \text{margin})`.
    - ``mining="semi_hard"`` (FaceNet's definition): for each positive pair
      :math:`(i, j)` the nearest *semi-hard* negative, :math:`k^* = \arg\min D_{ik}`
      over :math:`0 < D_{ik} - D_{ij} < \text{margin}`; its term is
      :math:`h(D_{ij} - D_{ik^*} + \text{margin})`, in :math:`(0, \text{margin})`
      for the hinge.  **A pair without a semi-hard negative forms no triplet**: it
      adds nothing and is not counted by ``"mean"``, whether its negatives are all
      easy (:math:`D_{ik} \ge D_{ij} + \text{margin}`: loss 0 anyway) or all hard
      (:math:`D_{ik} \le D_{ij}`: FaceNet leaves these out to avoid collapse).
      TensorFlow Addons' ``triplet_semihard_loss`` differs there: when no negative
      is farther than the positive it falls back to the *largest* negative distance
      (a hard negative, loss ``>= margin``), and it divides by the number of all
      positive pairs.

    Ties in the selections go to the first index.  An anchor without a positive or
    without a negative forms no triplet.

    With a reference set ``ref`` (PML's ``loss(embeddings, labels, ref_emb=ref,
    ref_labels=ref_labels)``: a gallery, a cross-batch memory), :math:`D` is the
    (N, M) matrix of the anchors against the reference rows: the positives and
    negatives of anchor :math:`i` are the rows of ``ref`` with an equal and a different
    label, none excluded except its own copy ``ref[ref_self[i]]``.

    Parameters
    ----------
    embeddings : array, shape (N, D)
    labels : array, shape (N,)
        Any bool, integer or real floating values; only equality matters.
    mining : {"all", "hard", "semi_hard"}, default "all"
    margin, distance, p, soft, eps
        As in :func:`nce_ref.triplet` (TensorFlow Addons' ``"L2"`` is
        ``distance="sq_euclidean"``).
    reduction : {"mean", "sum", "none", "mean_nonzero", "per_anchor"}, default "mean"
        ``"mean"``: the sum over the mined triplets divided by their number;
        ``"mean_nonzero"``: divided by the number of triplets with a positive loss
        (pytorch-metric-learning's ``AvgNonZeroReducer``, its default: a term counts
        when it is ``> 0``); both are 0 when there is none.  ``"none"``: shape (N,),
        each anchor's sum over its triplets.  ``"per_anchor"``: each anchor's mean
        over its triplets, :math:`v_i = \ell_i / c_i` (0 without a triplet), then
        :math:`\sum_{v_i > 0} v_i / \#\{i : v_i > 0\}` (0 when none is positive):
        the definition of PML's ``PerAnchorReducer(AvgNonZeroReducer())`` applied to
        triplets, which PML itself refuses (its ``triplet_reduction`` raises
        ``NotImplementedError``); for ``mining="hard"`` (one triplet per anchor) it
        equals ``"mean_nonzero"``.
    ref : array, shape (M, D), optional
        The reference set (PML's ``ref_emb``).  ``None``: the batch itself.
    ref_labels : array, shape (M,), optional
        The reference rows' labels (PML's ``ref_labels``); required with ``ref``.
    ref_self : integer array, shape (N,), optional
        ``ref_self[i]``: the index in ``ref`` of anchor ``i``'s own copy (a cross-batch
        memory that already holds the batch), or -1; that pair is neither a positive
        nor a negative.  Only with ``ref``.
    check_finite, xp
        As in :func:`nce_ref.info_nce`.

    Returns
    -------
    loss : array, 0-d or (N,)

    Notes
    -----
    The selection is piecewise constant, so the gradient is that of the selected
    terms: with anchor cotangents :math:`g_i` and :math:`h'` as in
    :func:`nce_ref.triplet`, :math:`\bar D_{ij} = g_i \sum_k h'_{ijk}` over the
    selected triplets with positive :math:`j`, :math:`\bar D_{ik} = -g_i\sum_j h'_{ijk}`
    over those with negative :math:`k`, then the distance VJP (both operands are the
    embeddings, so its two gradients add).  "all" and "semi_hard" cost
    :math:`O(N^3)` time (:math:`O(NM^2)` with a reference set of M rows) and stream
    anchor blocks of at most 2²¹ triplets (memory :math:`O(N^2)`, :math:`O(NM + M^2)`);
    "hard" costs :math:`O(N^2)` (:math:`O(NM)`).  The distance matrix uses the
    centred GEMM expansion of :func:`nce_ref.similarity` (``"lp"``: the
    :math:`N\times N\times D` differences).  With ``ref`` the distance VJP's two
    gradients go to ``embeddings`` and ``ref`` separately (a cross-batch memory
    discards the second).  ``"per_anchor"``: :math:`g_i = [v_i > 0] / (K c_i)`.

    References
    ----------
    Schroff et al., "FaceNet" (2015); Hermans et al., "In Defense of the Triplet Loss
    for Person Re-Identification" (2017).

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref.losses.triplet import batch_triplet
    >>> x = np.array([[0.0], [1.0], [3.0], [7.0]])
    >>> y = np.array([0, 0, 1, 1])
    >>> # anchor 0: farthest positive 1, nearest negative 3 -> max(1 - 3 + 1, 0) = 0
    >>> # anchor 1: positive at 1, negative at 2 -> 0; anchor 2: 4 - 2 + 1 = 3; anchor 3: 4 - 6 + 1 -> 0
    >>> batch_triplet(x, y, mining="hard", reduction="none")
    array([0., 0., 3., 0.])
    >>> # against a gallery of two rows, at 0.5 (label 0) and 2 (label 1):
    >>> # anchor 1 (at 1): d_ap = 0.5, d_an = 1 -> 0.5 - 1 + 1 = 0.5; the others are past the margin
    >>> g, gy = np.array([[0.5], [2.0]]), np.array([0, 1])
    >>> batch_triplet(x, y, ref=g, ref_labels=gy, reduction="none")
    array([0. , 0.5, 0. , 0. ])
    """
    check_option(mining, "mining", MININGS)
    margin, p, eps = _check_common(margin, distance, p, soft, reduction, eps,
                                   REDUCTIONS_PER_ANCHOR)
    refs = ref_arrays(ref, ref_labels, ref_self)
    ctx = resolve({"embeddings": embeddings, "labels": labels, **refs},
                  ndims={"embeddings": 2, "labels": 1}, floating=("embeddings", "ref"), xp=xp,
                  check_finite=check_finite)
    xp = ctx.xp
    n, d = embeddings.shape
    if n < 1:
        raise ValueError("`embeddings` must have at least one row (N >= 1); got N = 0")
    if d < 1:
        raise ValueError("`embeddings` must have at least one column (D >= 1); got D = 0")
    check_labels(ctx, labels, n)
    check_ref_set(ctx, n, d, ref, ref_labels, ref_self)
    x = ctx.to_compute(embeddings)
    r = x if ref is None else ctx.to_compute(ref)
    dist, back_d = dist_fwd(x, r, distance=distance, p=p, eps=eps, xp=xp)
    pos, neg = pair_relations(ctx, labels, ref_labels, ref_self)
    per, count, count_pos, gp, gn = _MINERS[mining](dist, pos, neg, margin, soft, xp)
    if reduction == "mean":
        value, back_red = mean_over_fwd(per, count, xp=xp)
    elif reduction == "mean_nonzero":
        value, back_red = mean_over_fwd(per, count_pos, xp=xp)
    elif reduction == "per_anchor":
        value, back_red = per_anchor_fwd(per, count, xp=xp)
    else:
        value, back_red = reduce_fwd(per, reduction, xp=xp)
    value = ctx.result_finite(value, "batch_triplet")

    def vjp(g):
        gl = xp.expand_dims(back_red(ctx.to_compute(g)), axis=1)
        ga, gb = back_d(gl * (gp - gn))
        if ref is None:
            return {"embeddings": ctx.like(ga + gb, embeddings)}
        return {"embeddings": ctx.like(ga, embeddings), "ref": ctx.like(gb, ref)}

    return ctx.to_out(value), vjp
