"""Supervised contrastive loss (SupCon), with every convention of the peers as an option.

:func:`supcon` validates its inputs once (``_setup``), then runs the path its
``method`` option names:

- the **reference** (``method="dense"``), :func:`supcon_dense`: similarity
  (``nce_ref.similarity.sim_fwd``) between the anchors and all views → per-anchor
  objective on the score rows (the masked ``logsumexp`` of ``nce_ref._ops`` and
  ``_objective.ce_rows``) → reduction, the VJP composed from the pieces.  Positives
  are a boolean mask of static shape, built by broadcasting
  (``labels[:, None] == labels[None, :]``); the anchor itself is excluded by index;
- the **engine** (``method="streamed"``, and ``"auto"``, which covers every option):
  row blocks of the bilinear score matrix (``nce_ref._stream``), each block building
  its own slice of the positive relation, or, for single labels of few classes on
  bounded logits, no mask at all (per-class sums from the GEMM).

With ``ref`` (a reference set) the columns are the ``ref`` rows instead of the
batch's views, the positive relation is the anchors' labels against ``ref_labels``,
and the only excluded pair per anchor is its own copy, ``ref_self``.

Derivations: ``docs/supcon_triplet.md``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

from array_api_compat import is_lazy_array, is_writeable_array

from .._array import (
    check_labels,
    check_method,
    check_option,
    check_real,
    concrete_float,
    require_binary,
    resolve,
    scalar_grad,
    scalar_param,
)
from .._ops import logsumexp, sigmoid, softmax_from_lse, softplus
from .._reduce import check_reduction, mean_over_fwd, reduce_fwd
from .._stream import choose_block, supcon_stream, supcon_stream_groups
from .._stream._logits import buffers, feature_kind, prepare_logits
from ..autodiff import differentiable
from ..similarity import DEFAULT_EPS, bilinear_features, check_similarity, sim_fwd
from ._objective import ce_rows, temperature_grad

Array = Any

__all__ = ["supcon", "POSITIVES", "NO_POSITIVE", "NO_NEGATIVE", "CONTRAST_MODES", "check_labels"]

POSITIVES = ("out", "in", "per_pair")
NO_POSITIVE = ("exclude", "zero")
NO_NEGATIVE = ("keep", "zero")
CONTRAST_MODES = ("all", "one")


def _sample_positives(ctx, n: int, labels: Array | None, mask: Array | None) -> Array:
    """The (N, N) boolean relation ``M[i, j]``: sample j is a positive of sample i."""
    xp = ctx.xp
    if mask is not None:
        return mask if xp.isdtype(mask.dtype, "bool") else mask != 0
    if labels is None:
        return ctx.eye(n, dtype=xp.bool)
    if labels.ndim == 1:
        return xp.expand_dims(labels, axis=1) == xp.expand_dims(labels, axis=0)
    y = xp.astype(labels, ctx.dtype)  # 0/1 rows: share a label <=> y_i · y_j >= 1
    return (y @ xp.matrix_transpose(y)) > 0.5


@differentiable("supcon", wrt=("features", "ref", "temperature"), scalars=("temperature",))
def supcon(features: Array, labels: Array | None = None, /, *, mask: Array | None = None,
           ref: Array | None = None, ref_labels: Array | None = None,
           ref_self: Array | None = None, temperature: float | Array = 0.07,
           base_temperature: float | None = None, positives: str = "out",
           no_positive: str = "exclude", no_negative: str = "keep", similarity: str = "cosine",
           contrast_mode: str = "all", reduction: str = "mean", eps: float = DEFAULT_EPS,
           method: str = "auto", block_size: int | None = None,
           memory_budget: int | None = None, check_finite: bool = True, xp=None,
           need_grad: bool = True):
    r"""Supervised contrastive loss (Khosla et al. 2020), SimCLR's NT-Xent without labels.

    The views are laid out view-major, as in SupContrast: with ``features`` of shape
    (N, V, D), row ``v·N + i`` of :math:`u` (``C = N·V`` rows) is view ``v`` of sample
    ``i``.  The anchors are all C rows (``contrast_mode="all"``) or the first view's N
    (``"one"``).  For anchor :math:`a` with logits :math:`z_{ac} = s(u_a, u_c)/\tau`,
    the candidates are :math:`K_a = \{c \ne a\}`, the positives :math:`P_a \subset K_a`
    the views of the samples related to :math:`a`'s sample (by ``labels``, ``mask``,
    or, with neither, the other views of the same sample), the negatives
    :math:`N_a = K_a \setminus P_a`.  With :math:`n_a = |P_a|`:

    - ``positives="out"`` (the paper's :math:`\mathcal L^{sup}_{out}`, SupContrast,
      lightly, pytorch-metric-learning's ``SupConLoss``):
      :math:`\ell_a = \operatorname{LSE}_{K_a} z_a - \frac1{n_a}\sum_{p\in P_a} z_{ap}`;
    - ``positives="in"`` (:math:`\mathcal L^{sup}_{in}`):
      :math:`\ell_a = \operatorname{LSE}_{K_a} z_a - \operatorname{LSE}_{P_a} z_a + \log n_a`;
    - ``positives="per_pair"`` (pytorch-metric-learning's ``NTXentLoss`` and optax's
      ``ntxent`` with labels): one term per pair,
      :math:`\ell_{ap} = \log(e^{z_{ap}} + \sum_{N_a} e^{z_{an}}) - z_{ap}`,
      whose denominator holds that positive and the negatives only.

    Each is then multiplied by :math:`\tau/\tau_b` when ``base_temperature`` is given.
    With one positive per anchor (no labels, V = 2) the three are NT-Xent and the
    loss equals :func:`nce_ref.nt_xent` on the two views.

    **A reference set** (``ref``: a gallery, a cross-batch memory, a queue;
    pytorch-metric-learning's ``ref_emb``/``ref_labels``): the anchors are the same
    rows of ``features``, but their candidates are the M rows :math:`r_m` of ``ref``
    only, never the batch: :math:`z_{am} = s(u_a, r_m)/\tau`,
    :math:`K_a = \{m : m \ne o_a\}` with :math:`o_a` the anchor's own copy in ``ref``
    (``ref_self``; none by default, so no pair is excluded),
    :math:`P_a = \{m \in K_a : y^{ref}_m = y_a\}` (for multi-label rows: a label in
    common) and :math:`N_a = K_a \setminus P_a`; the three objectives above are then
    unchanged.  ``supcon(f, y, ref=f, ref_labels=y, ref_self=arange(N))`` is
    ``supcon(f, y)`` (one view).  pytorch-metric-learning's
    ``SupConLoss()(emb, labels, ref_emb=r, ref_labels=ry)`` is
    ``supcon(emb, labels, ref=r, ref_labels=ry, temperature=0.1)`` and its
    ``NTXentLoss()`` the same with ``positives="per_pair"``, ``temperature=0.07``.

    Parameters
    ----------
    features : array, shape (N, D) or (N, V, D)
        (N, D) is one view per sample (V = 1).
    labels : array, shape (N,) or (N, C), optional
        (N,): any bool, integer or real floating values, only equality matters.
        (N, C) of 0/1: multi-label, samples sharing at least one label are positives.
    mask : array, shape (N, N), optional
        Bool or 0/1: ``mask[i, j]`` says sample j is a positive of sample i; it may be
        asymmetric, and ``mask[i, i]`` says whether the *other* views of sample i are
        its positives (SupContrast's convention: the mask is tiled as given).  The
        anchor's own row is excluded by index whatever the mask says.  Not together
        with ``labels``, nor with ``ref`` (a ``ValueError``: give ``ref_labels``).
    ref : array, shape (M, D), optional
        The reference set (a gallery, a cross-batch memory, a queue): the anchors are
        scored against its rows only (not against the batch), no pair excluded but
        ``ref_self``'s.  Differentiable (``value_and_grad`` returns ``"ref"``; a
        cross-batch memory treats it as a constant and discards that gradient).
        Requires ``labels`` and ``ref_labels``.  None (default): the batch itself.
    ref_labels : array, shape (M,) or (M, C), optional
        The ``ref`` rows' labels, of the same kind as ``labels`` (single labels of a
        dtype of the same kind, or 0/1 rows with the same C).  Required with ``ref``.
    ref_self : integer array, shape (N,) for (N, D) features or (N, V), optional
        For each row of ``features`` (each view), the index in ``ref`` of its own copy,
        or -1: that pair is neither a positive nor a negative (a cross-batch memory
        that already holds the batch; pytorch-metric-learning's ``CrossBatchMemory``
        removes the same pairs by queue index).  Only with ``ref``.
    temperature : float or 0-d array, default 0.07
        :math:`\tau > 0`; differentiable.
    base_temperature : float, optional
        :math:`\tau_b`: scales the loss by :math:`\tau/\tau_b` (SupContrast's
        ``base_temperature``, 0.07 there; lightly's ``rescale=True`` is
        :math:`\tau_b = 1`).  None: no scaling.
    positives : {"out", "in", "per_pair"}, default "out"
    no_positive : {"exclude", "zero"}, default "exclude"
        An anchor without a positive has no term.  ``"exclude"`` (the default) leaves
        it out of the mean, so the loss does not depend on how many such anchors the
        batch holds (pytorch-metric-learning's ``AvgNonZeroReducer`` also leaves out
        anchors whose loss is 0); ``"zero"`` counts it as 0 (SupContrast since its
        fix; before it, NaN).  Either way a batch without any positive pair returns
        0 with zero gradient.  With ``"per_pair"`` the terms are pairs, an anchor
        without a positive has none, and only ``"exclude"`` is accepted.
    no_negative : {"keep", "zero"}, default "keep"
        When no anchor has any negative (every candidate pair is positive, e.g. one
        class in the batch): ``"keep"`` (the default) returns the mathematical value,
        a defined number (``"out"``: at least :math:`\log n_a` per anchor, so at
        least log 2 for three samples of one class); ``"zero"`` returns 0
        with zero gradient, as pytorch-metric-learning's ``SupConLoss`` and
        ``NTXentLoss`` do (they return 0 unless the batch has both a positive and a
        negative pair).  Batches with at least one negative pair are unaffected.
    similarity : {"cosine", "dot", "neg_sq_euclidean", "neg_euclidean"}, default "cosine"
        See :func:`nce_ref.similarity`.  SupContrast takes the dot product of
        features the caller has normalised: ``"cosine"`` on raw features.
    contrast_mode : {"all", "one"}, default "all"
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"``: over the anchors (with ``no_positive``); for ``"per_pair"``, over
        the pairs.  ``"none"``: shape (A,) with A = N·V (``"all"``) or N (``"one"``, and
        with ``ref`` too: the anchors are always rows of ``features``),
        each anchor's term (``"per_pair"``: the sum of its pairs' terms), 0 for an
        anchor without a positive.
    eps : float, default 1e-12
        Norm floor of the cosine similarity.
    method : {"auto", "dense", "streamed"}, default "auto"
        ``"dense"``: the reference, :func:`supcon_dense`, on the whole (A, C) score
        matrix and masks; ``"streamed"`` and ``"auto"``: the engine, which covers
        every option below.  The results agree to rounding.
    block_size : int, optional
        Rows of the score matrix the engine computes at a time.  Default: as many as
        fit ``memory_budget``.  Results equal the dense computation to rounding.
        Streaming applies to every similarity ("neg_euclidean" as the root of the
        squared distance's bilinear form, per block), with every other option
        (``labels``, multi-label rows, ``mask`` or neither; each ``positives``,
        ``no_positive``, ``base_temperature``, V, ``contrast_mode``, ``reduction``):
        each block of anchors builds its own (block, C) positive mask
        (``labels[rows, None] == labels[None, :]``, the shared labels of its multi-label
        rows, its rows of ``mask``, or the other views of each sample), so no C x C
        array is ever held: the extra memory is O(C·block + C·D).
    memory_budget : int, optional
        Bytes for the streamed block buffers (two blocks x columns; four for
        "neg_euclidean"); the default as in :func:`nce_ref.info_nce`.
    check_finite, xp
        As in :func:`nce_ref.info_nce`; ``check_finite`` also checks that ``mask``
        and multi-label ``labels`` hold only 0 and 1.

    Returns
    -------
    loss : array, 0-d or (A,)

    Raises
    ------
    ValueError, TypeError
        On ``labels`` or ``mask`` of the wrong shape, dtype or values, both given,
        ``ref`` without ``labels`` or ``ref_labels``, or with ``mask``, ``ref`` of
        another D or without rows, ``ref_labels`` of another shape or kind, ``ref_self``
        not integer, of another shape than the features' rows or outside [-1, M),
        ``ref_labels`` or ``ref_self`` without ``ref``,
        N = 0, V = 0, D = 0, a non-positive temperature, unknown options, a
        ``block_size`` below 1 or not an integer, a ``memory_budget`` too small for one
        row; the message names the argument.

    See Also
    --------
    nce_ref.nt_xent
        The unsupervised case (each sample's own views only).
    nce_ref.info_nce
        One positive per query.
    nce_ref.sharded.supcon
        This loss on a batch split over ranks.

    Notes
    -----
    All three objectives are written with the masked logsumexp and the exact
    softmax cross-entropy ``ce_rows``: with :math:`L_P = \operatorname{LSE}_{P_a} z_a`,
    :math:`t_a = \operatorname{LSE}_{K_a} z_a - L_P = \log(1 + \sum_{N_a} e^{z - L_P})`
    (``ce_rows`` with the "positive" :math:`L_P`), then ``"in"`` is
    :math:`t_a + \log n_a` and ``"out"`` is :math:`t_a + (L_P - \bar z_{P_a})`, a sum of
    two non-negative terms (no cancellation, no ``log(0)`` for a positive probability
    below the dtype's tiny, which SupContrast's ``log(Σ exp(z − max))`` turns into
    NaN).  ``"per_pair"`` is :math:`\operatorname{softplus}(\operatorname{LSE}_{N_a}
    z_a - z_{ap})`.  Gradients with respect to the logits, for the anchor cotangent
    :math:`g_a` and the softmaxes :math:`p^K, p^P, p^N` over :math:`K_a, P_a, N_a`:
    out :math:`g_a(p^K_{ac} - [c\in P_a]/n_a)`; in :math:`g_a(p^K_{ac} - p^P_{ac})`;
    per_pair :math:`-w_{ap}` on the positive and :math:`p^N_{an}\sum_p w_{ap}` on the
    negatives with :math:`w_{ap} = g_a\sigma(\operatorname{LSE}_{N_a} z_a - z_{ap})`.
    Then ``temperature`` gets :math:`-\sum \bar z z/\tau` (plus
    :math:`\sum_a \bar\ell_a \ell_a/\tau` from the factor :math:`\tau/\tau_b`), and
    the similarity VJP carries :math:`\bar z/\tau` to the features.  See
    ``docs/supcon_triplet.md``.

    The streamed path (``nce_ref._stream.supcon_stream``) computes the same terms
    from each block's sums :math:`s_P = \sum_{P_a} e^{z - h_P}` and
    :math:`s_N = \sum_{N_a} e^{z - h_N}`, each shifted by its own set's maximum (or
    unshifted when the cosine bound :math:`|z| \le 1/\tau` allows), and fuses the
    gradient into the forward sweep for a scalar ``reduction``: three GEMMs of
    (block, C, K) per block plus elementwise passes (derivation:
    ``docs/supcon_triplet.md``, "Streaming").

    With ``ref`` the same formulas run on the (A, M) matrix :math:`z = u\,r^\top/\tau`;
    the logits' gradient :math:`\bar z` goes through the similarity VJP to both sides,
    :math:`\bar u = \bar z\, r/\tau`, :math:`\bar r = \bar z^\top u/\tau` (before
    the normalisation's VJP), and the engine streams the anchors' rows with the own
    column taken from ``ref_self`` instead of the diagonal (derivation:
    ``docs/derivations.md``, section 15).  ``no_negative="zero"`` multiplies the value and
    the cotangent by :math:`[\exists a: N_a \ne \emptyset]`.

    References
    ----------
    Khosla et al., "Supervised Contrastive Learning" (NeurIPS 2020); Chen et al.,
    "A Simple Framework for Contrastive Learning of Visual Representations" (2020).

    Examples
    --------
    Four orthogonal unit vectors in two classes: each anchor has one positive and
    two negatives, all at cosine 0, so the loss is log 3 at any temperature:

    >>> import numpy as np, nce_ref
    >>> from nce_ref.losses.supcon import supcon
    >>> float(supcon(np.eye(4), np.array([0, 0, 1, 1]), temperature=0.005))
    1.0986122886681098

    Without labels, two views per sample: SimCLR's NT-Xent.

    >>> rng = np.random.default_rng(0)
    >>> z1, z2 = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    >>> a = supcon(np.stack([z1, z2], axis=1), temperature=0.5)
    >>> bool(np.isclose(a, nce_ref.nt_xent(z1, z2, temperature=0.5), rtol=1e-14))
    True

    A reference set: the batch against a memory of earlier embeddings that already
    holds the batch (rows 4 to 7 of ``mem``, named by ``ref_self``), so that each
    anchor's own copy is excluded; the loss then equals the batch's own loss against
    the rest of the memory, and ``value_and_grad`` gives the memory's gradient too:

    >>> f, y = rng.standard_normal((4, 3)), np.array([0, 1, 0, 1])
    >>> old, y_old = rng.standard_normal((4, 3)), np.array([1, 1, 0, 2])
    >>> mem, y_mem = np.concatenate([old, f]), np.concatenate([y_old, y])
    >>> loss, g = nce_ref.value_and_grad(supcon)(f, y, ref=mem, ref_labels=y_mem,
    ...                                          ref_self=np.arange(4, 8), temperature=0.1)
    >>> sorted(g), g["ref"].shape
    (['features', 'ref', 'temperature'], (8, 3))

    With one class only there is no negative pair: the value is a defined number,
    or 0 with ``no_negative="zero"`` (pytorch-metric-learning's convention):

    >>> one = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> round(float(supcon(one, np.zeros(3, dtype=int), temperature=0.1)), 6)
    2.588638
    >>> float(supcon(one, np.zeros(3, dtype=int), temperature=0.1, no_negative="zero"))
    0.0
    """
    path = check_method(method, streamable=True)
    st = setup_supcon(features, labels, mask=mask, temperature=temperature,
                base_temperature=base_temperature, positives=positives, no_positive=no_positive,
                similarity=similarity, contrast_mode=contrast_mode, reduction=reduction, eps=eps,
                check_finite=check_finite, xp=xp, ref=ref, ref_labels=ref_labels,
                ref_self=ref_self, no_negative=no_negative)
    block = choose_block(st.n_anchor, st.c, st.ctx.finfo().bits // 8, block_size=block_size,
                         memory_budget=memory_budget, buffers=buffers(st.kind), like=st.features)
    if path == "dense":
        return supcon_dense(st)
    return supcon_engine(st, block, need_grad=need_grad)


def _dense_supcon(features: Array, labels: Array | None = None, /, **options):
    """``supcon(..., method="dense")`` as ``(value, vjp)`` (kept for older tests)."""
    return supcon.__nce_ref__.impl(features, labels, **options, method="dense")


def setup_supcon(features, labels, *, mask, temperature, base_temperature, positives, no_positive,
           similarity, contrast_mode, reduction, eps, check_finite, xp, ref=None, ref_labels=None,
           ref_self=None, no_negative="keep") -> SimpleNamespace:
    """Validate everything (before any computation); return what both paths need.

    Without ``ref`` the columns ``u`` are the batch's C views and the anchors its first
    rows (``ref``, ``row_labels`` and ``own`` are None); with ``ref`` the columns are
    the reference rows, ``row_labels`` the anchors' labels and ``own`` (A,) the column
    of each anchor's own copy (-1: none), or None without ``ref_self``."""
    kind, eps = check_similarity(similarity, eps)
    check_option(positives, "positives", POSITIVES)
    check_option(no_positive, "no_positive", NO_POSITIVE)
    check_option(no_negative, "no_negative", NO_NEGATIVE)
    if ref is None:
        for name, val in (("ref_labels", ref_labels), ("ref_self", ref_self)):
            if val is not None:
                raise ValueError(f"`{name}` is only valid with `ref` (the reference set); "
                                 f"got `ref`=None")
    else:
        if mask is not None:
            raise ValueError("`mask` cannot be combined with `ref`: with a reference set the "
                             "positives are the `ref` rows whose `ref_labels` equal the anchor's "
                             "`labels`; give `labels` and `ref_labels`")
        if labels is None:
            raise ValueError("`labels` are required with `ref`: the positives are the `ref` "
                             "rows with the anchor's label")
        if ref_labels is None:
            raise ValueError("`ref_labels` are required with `ref`: one label (or 0/1 row) per "
                             "`ref` row")
    check_option(contrast_mode, "contrast_mode", CONTRAST_MODES)
    check_reduction(reduction)
    if positives == "per_pair" and no_positive != "exclude":
        raise ValueError("`no_positive` must be 'exclude' with positives='per_pair': its terms are "
                         f"(anchor, positive) pairs and an anchor without a positive has none; got "
                         f"{no_positive!r}")
    if base_temperature is not None:
        base_temperature = check_real(base_temperature, "base_temperature", positive=True)
    if labels is not None and mask is not None:
        raise ValueError("give `labels` or `mask`, not both")
    ctx = resolve({"features": features, "labels": labels, "mask": mask, "ref": ref,
                   "ref_labels": ref_labels, "ref_self": ref_self},
                  ndims={"features": (2, 3), "labels": (1, 2), "mask": 2, "ref": 2,
                         "ref_labels": (1, 2), "ref_self": (1, 2)},
                  floating=("features", "ref"), xp=xp, check_finite=check_finite)
    xp = ctx.xp
    if features.ndim == 2:
        n, d = features.shape
        v = 1
    else:
        n, v, d = features.shape
    if n < 1:
        raise ValueError("`features` must have at least one sample (N >= 1); got N = 0")
    if v < 1:
        raise ValueError(f"`features` must have at least one view (V >= 1); got shape "
                         f"{tuple(features.shape)}")
    if d < 1:
        raise ValueError("`features` must have at least one column (D >= 1); got D = 0")
    if labels is not None:
        check_labels(ctx, labels, n, multi=True)
    if mask is not None:
        if tuple(mask.shape) != (n, n):
            raise ValueError(f"`mask` must have shape ({n}, {n}); got {tuple(mask.shape)}")
        if not xp.isdtype(mask.dtype, ("bool", "integral", "real floating")):
            raise TypeError(f"`mask` must be boolean or hold 0/1 numbers; got dtype {mask.dtype}")
        if xp.isdtype(mask.dtype, "real floating"):
            ctx.require_finite(mask, "mask")
        require_binary(ctx, mask, "mask", "a positive-pair mask")
    tau, tau0 = scalar_param(ctx, temperature, "temperature", positive=True)

    if ref is not None:
        _check_ref(ctx, features, labels, ref, ref_labels, ref_self)

    f = ctx.to_compute(features)
    c = n * v
    u = f if f.ndim == 2 else xp.reshape(xp.permute_dims(f, (1, 0, 2)), (c, d))  # view-major
    n_anchor = c if contrast_mode == "all" else n
    st = SimpleNamespace(
        ctx=ctx, xp=xp, features=features, labels=labels, mask=mask, kind=kind, eps=eps,
        positives=positives, no_positive=no_positive, no_negative=no_negative,
        reduction=reduction, base_temperature=base_temperature, tau=tau, tau0=tau0, n=n, v=v,
        d=d, c=c, n_anchor=n_anchor, u=u, anchors=u if n_anchor == c else u[:n, :],
        col_labels=None if mask is not None else column_labels(ctx, labels, n, v),
        ref=ref, row_labels=None, own=None)
    if ref is None:
        return st
    # the reference set: the anchors (all views or the first) against the ref rows only
    st.row_labels = st.col_labels if n_anchor == c else st.col_labels[:n, ...]
    st.col_labels = ref_labels
    st.u = ctx.to_compute(ref)
    st.c = ref.shape[0]
    if ref_self is not None:
        own = ref_self if ref_self.ndim == 1 else xp.reshape(xp.permute_dims(ref_self, (1, 0)),
                                                             (c,))  # view-major, as the anchors
        st.own = xp.astype(own[:n_anchor], xp.int64)
    return st


def _check_ref(ctx, features, labels, ref, ref_labels, ref_self) -> None:
    """``ref`` (M, D), ``ref_labels`` of ``labels``' kind, ``ref_self`` (the anchors'
    shape, integers in [-1, M))."""
    xp = ctx.xp
    d = features.shape[-1]
    m = ref.shape[0]
    if ref.shape[1] != d:
        raise ValueError(f"`ref` must have shape (M, {d}), the features' D = {d} columns; got "
                         f"{tuple(ref.shape)}")
    if m < 1:
        raise ValueError("`ref` must have at least one row (M >= 1); got M = 0")
    check_labels(ctx, ref_labels, m, multi=True, name="ref_labels")
    if ref_labels.ndim != labels.ndim or (labels.ndim == 2
                                          and ref_labels.shape[1] != labels.shape[1]):
        want = f"({m},)" if labels.ndim == 1 else f"({m}, {labels.shape[1]})"
        raise ValueError(f"`ref_labels` must be of the same kind as `labels` ({labels.ndim}-D): "
                         f"shape {want}; got {tuple(ref_labels.shape)}")
    kinds = ("bool", "integral", "real floating")
    k_lab = next(k for k in kinds if xp.isdtype(labels.dtype, k))
    if not xp.isdtype(ref_labels.dtype, k_lab):
        raise TypeError(f"`ref_labels` must have the same kind of dtype as `labels` ({k_lab}); "
                        f"got {ref_labels.dtype}")
    if ref_self is None:
        return
    shape = tuple(features.shape[:-1])
    if not xp.isdtype(ref_self.dtype, "integral"):
        raise TypeError(f"`ref_self` must be an integer array (the index in `ref` of each "
                        f"anchor row's own copy, or -1); got dtype {ref_self.dtype}")
    if tuple(ref_self.shape) != shape:
        raise ValueError(f"`ref_self` must have shape {shape}, one index per row of `features`; "
                         f"got {tuple(ref_self.shape)}")
    if not is_lazy_array(ref_self) and bool(xp.any((ref_self < -1) | (ref_self >= m))):
        raise ValueError(f"`ref_self` must hold indices in [-1, {m}) (-1: no copy in `ref`); "
                         f"got values outside that range")


def column_labels(ctx, labels, n: int, v: int, *, first_id=0):
    """The label of each of the C = N·V columns of ``u`` (view-major): ``labels`` tiled
    over the views (their rows, for multi-label 0/1 rows), or, without labels, each
    sample's own id (``first_id + i``: the other views of a sample are its positives)."""
    xp = ctx.xp
    lab = xp.arange(n, device=ctx.device) + first_id if labels is None else labels
    if v == 1:
        return lab
    return xp.tile(lab, (v,)) if lab.ndim == 1 else xp.tile(lab, (v, 1))


def reduce_anchors(per, count, st, across=None):
    """The reduction of the anchors' terms and its VJP (``no_positive``, ``per_pair``);
    with ``across``, of every rank's anchors (the count over ranks; the value the global
    one or this rank's share, ``across.combine``)."""
    over_count = st.reduction == "mean" and (st.positives == "per_pair" or st.no_positive == "exclude")
    if across is None:
        if over_count:
            return mean_over_fwd(per, count, xp=st.xp)
        return reduce_fwd(per, st.reduction, xp=st.xp)
    xp = st.xp
    if over_count:  # the count is every rank's, whatever the value
        n = across.total(xp.sum(count))
        some = n > 0
        safe = xp.where(some, n, xp.ones_like(n))
        weight = xp.where(some, across.factor / safe, xp.zeros_like(safe))
        value = across.combine(xp.sum(per)) / across.factor * weight
    else:
        value, weight = across.reduce(per, st.reduction), across.weight(st.reduction)

    def back(g):
        return xp.broadcast_to(g * weight, per.shape) * xp.ones_like(per)

    return value, back


def features_grad(st, g_anchor, g_u):
    """Gradients of the anchors and of ``u`` (the caller's own rows of it) → the gradient
    of ``features``."""
    xp, ctx = st.xp, st.ctx
    rows, n_anchor = g_u.shape[0], g_anchor.shape[0]
    if n_anchor == rows:
        gu = g_u + g_anchor
    else:
        gu = g_u + xp.concat([g_anchor, xp.zeros((rows - n_anchor, st.d), dtype=ctx.dtype,
                                                 device=ctx.device)], axis=0)
    if st.features.ndim == 3:
        n = st.features.shape[0]
        gu = xp.permute_dims(xp.reshape(gu, (rows // n, n, st.d)), (1, 0, 2))
    return ctx.like(gu, st.features)


def supcon_dense(st: SimpleNamespace):
    """The reference of :func:`supcon`: the (A, C) score matrix and masks at once, the
    formula of its docstring term by term; ``st`` is what ``_setup`` validated.
    Returns ``(value, vjp)``."""
    ctx, xp = st.ctx, st.xp
    n, v, c = st.n, st.v, st.c
    n_anchor, u, anchors = st.n_anchor, st.u, st.anchors
    positives, tau, tau0 = st.positives, st.tau, st.tau0
    base_temperature = st.base_temperature
    kind, eps = st.kind, st.eps
    if st.ref is None:
        rel = _sample_positives(ctx, n, st.labels, st.mask)
        rel = xp.tile(rel, (v if n_anchor == c else 1, v))  # (A, C)
        not_self = xp.logical_not(ctx.eye(n_anchor, c, dtype=xp.bool))
    else:  # (A, M): the anchors' labels against the ref rows', no diagonal but ref_self's
        rel = _label_relation(ctx, st.row_labels, st.col_labels)
        not_self = _not_own(st, 0, n_anchor)
    pmask = rel & not_self
    nmask = xp.logical_not(rel) & not_self
    pf = xp.astype(pmask, ctx.dtype)
    npos = xp.sum(pf, axis=1)
    has = npos > 0
    zero = xp.zeros_like(npos)
    npos_safe = xp.where(has, npos, xp.ones_like(npos))

    s, back_s = sim_fwd(anchors, u, kind=kind, eps=eps, xp=xp)
    z = s / tau

    if positives == "per_pair":
        lse_n = logsumexp(z, nmask, axis=1, keepdims=True, xp=xp)  # -inf without negatives
        arg = xp.where(pmask, lse_n - z, xp.full_like(z, -math.inf))
        per = xp.sum(softplus(arg, xp=xp), axis=1)  # softplus(-inf) = 0 off the positives
        count = npos
    else:
        lse_p = logsumexp(z, pmask, axis=1, keepdims=True, xp=xp)
        pos = xp.where(has, xp.squeeze(lse_p, axis=1), zero)
        t, back_ce = ce_rows(z, pos, nmask, axis=1, xp=xp)  # LSE_K − LSE_P
        if positives == "in":
            per = t + xp.log(npos_safe)
        else:
            mean_z = xp.sum(xp.where(pmask, z, xp.zeros_like(z)), axis=1) / npos_safe
            per = t + (pos - mean_z)
        per = xp.where(has, per, zero)
        count = xp.astype(has, ctx.dtype)
    scale = None if base_temperature is None else tau / base_temperature
    keep = _keep(st, xp.sum(xp.astype(nmask, ctx.dtype), axis=1))
    if keep is not None:  # no_negative="zero": no negative pair at all gives 0 (PML)
        per = xp.where(keep, per, zero)
    value, back_red = reduce_anchors(per, count, st)
    if scale is not None:
        value = value * scale
    value = ctx.result_finite(value, "supcon")

    def vjp(g):
        gl = back_red(ctx.to_compute(g))
        if keep is not None:
            gl = xp.where(keep, gl, zero)
        if scale is not None:
            gl = gl * scale
        gl = xp.where(has, gl, zero)
        glk = xp.expand_dims(gl, axis=1)
        if positives == "per_pair":
            w = glk * sigmoid(arg, xp=xp)  # 0 off the positives
            p_n = softmax_from_lse(z, lse_n, nmask, xp=xp)
            dz = p_n * xp.sum(w, axis=1, keepdims=True) - w
        else:
            dz_n, dpos = back_ce(gl)
            p_p = softmax_from_lse(z, lse_p, pmask, xp=xp)
            if positives == "in":
                dz = dz_n + xp.expand_dims(dpos, axis=1) * p_p
            else:
                dz = (dz_n + xp.expand_dims(dpos + gl, axis=1) * p_p
                      - xp.expand_dims(gl / npos_safe, axis=1) * pf)
        empty = xp.zeros((0,), dtype=ctx.dtype, device=ctx.device)
        dtau = temperature_grad(dz, z, empty, empty, tau, xp=xp)
        if scale is not None:
            dtau = dtau + xp.sum(gl * per) / tau
        ga, gu = back_s(dz / tau)
        return _grads(st, ga, gu, scalar_grad(ctx, dtau, tau0))

    return ctx.to_out(value), vjp


def _label_relation(ctx, rows: Array, cols: Array) -> Array:
    """``rows[i]`` and ``cols[j]`` share a label: equal single labels, or 0/1 rows with a
    common 1; a new (len(rows), len(cols)) bool array."""
    xp = ctx.xp
    if rows.ndim == 1:
        return xp.expand_dims(rows, axis=1) == xp.expand_dims(cols, axis=0)
    return (xp.astype(rows, ctx.dtype) @ xp.matrix_transpose(xp.astype(cols, ctx.dtype))) > 0.5


def _not_own(st: SimpleNamespace, r0: int, r1: int) -> Array:
    """With ``ref``: (r1 − r0, M) bool, False at anchor ``i``'s own copy ``own[i]``
    (``ref_self``; -1 matches no column)."""
    xp, ctx = st.xp, st.ctx
    if st.own is None:
        return xp.ones((r1 - r0, st.c), dtype=xp.bool, device=ctx.device)
    cols = xp.arange(st.c, dtype=st.own.dtype, device=ctx.device)
    return xp.expand_dims(st.own[r0:r1], axis=1) != xp.expand_dims(cols, axis=0)


def _keep(st: SimpleNamespace, nneg: Array, across=None):
    """``no_negative="zero"``: a 0-d bool, whether any anchor (of any rank, with
    ``across``) has a negative; None for ``"keep"``.  ``nneg``: each anchor's count."""
    if st.no_negative == "keep":
        return None
    xp = st.xp
    total = xp.sum(xp.astype(nneg > 0, st.ctx.dtype))
    if across is not None:
        total = across.total(total)
    return total > 0


def _grads(st: SimpleNamespace, g_anchor: Array, g_cols: Array, g_tau: Array) -> dict:
    """The gradients by argument name from the anchors' and the columns' (``u``, or
    ``ref``) gradients."""
    if st.ref is None:
        return {"features": features_grad(st, g_anchor, g_cols), "temperature": g_tau}
    xp, ctx = st.xp, st.ctx
    zero = xp.zeros((st.n * st.v, st.d), dtype=ctx.dtype, device=ctx.device)
    return {"features": features_grad(st, g_anchor, zero), "ref": ctx.like(g_cols, st.ref),
            "temperature": g_tau}


def _relation(st: SimpleNamespace):
    """``relation(r0, r1)``: a new (r1 − r0, C) bool array, anchor rows ``r0..r1`` of ``u``
    against every column (the anchor's own column is left to the kernel)."""
    ctx, xp = st.ctx, st.xp
    n, v = st.n, st.v
    lab, mask = st.col_labels, st.mask
    if st.ref is not None:  # the anchors' labels against the ref rows'
        return lambda r0, r1: _label_relation(ctx, st.row_labels[r0:r1, ...], lab)
    if mask is None and lab.ndim == 1:  # labels, or sample ids (no labels: the views)
        col = xp.expand_dims(lab, axis=0)
        return lambda r0, r1: xp.expand_dims(lab[r0:r1], axis=1) == col
    if mask is None:  # multi-label 0/1 rows: share a label <=> y_i · y_j >= 1
        y = xp.astype(lab, ctx.dtype)
        yt = xp.matrix_transpose(y)
        return lambda r0, r1: (y[r0:r1, :] @ yt) > 0.5

    def rows(s0, s1):  # the user's own rows of `mask`, as a new bool array
        m = mask[s0:s1, :]
        return m != 0 if not xp.isdtype(m.dtype, "bool") else xp.asarray(m, copy=True)

    def relation(r0, r1):
        parts, r = [], r0
        while r < r1:  # samples r mod N, split where the block crosses into the next view
            s0 = r % n
            k = min(r1 - r, n - s0)
            parts.append(rows(s0, s0 + k))
            r += k
        m = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
        return m if v == 1 else xp.tile(m, (1, v))

    return relation


def _groups(st: SimpleNamespace, k: int):
    """``(groups (C,), G)``: the columns' group ids when the positives are the other members
    of the anchor's group (single labels, no ``mask``) and the groups are few enough for
    their G columns of sums to cost less than the masks they replace; else None."""
    xp = st.xp
    if st.ref is not None or st.mask is not None or st.labels is None or st.labels.ndim != 1 \
            or is_lazy_array(st.labels):
        return None
    # group ids without a data-dependent shape: sort, count the changes, put back
    labels = st.col_labels
    if xp.isdtype(labels.dtype, "bool"):  # argsort takes numbers
        labels = xp.astype(labels, xp.int8)
    order = xp.argsort(labels, stable=True)
    ls = xp.take(labels, order)
    change = xp.concat([xp.ones((1,), dtype=xp.bool, device=st.ctx.device), ls[1:] != ls[:-1]])
    ids = xp.cumulative_sum(xp.astype(change, xp.int64)) - 1
    g = int(ids[-1]) + 1
    if g > max(16, k // 4):
        return None
    return xp.take(ids, xp.argsort(order)), g


def _group_kernel(st: SimpleNamespace, lg, block: int):
    """The mask-free kernel (``supcon_stream_groups``) as ``sweep(weights) -> (per, npos,
    grads)``, where it applies (single labels of few classes, logits bounded so that
    ``e^z`` needs no shift); else None.  For ``in`` and ``per_pair`` the anchors (then
    all the columns) are sorted by class, so that P is block diagonal and its blocks'
    GEMMs replace a mask over every entry; the results are put back in the caller's order.
    """
    xp = st.xp
    if lg.root is not None or lg.flush or not lg.shift_free(st.c, st.ctx.dtype, xp):
        return None
    groups = _groups(st, lg.fb.shape[1])
    sortable = st.n_anchor == st.c and is_writeable_array(lg.fb)  # in-place diagonal blocks
    if groups is None or (st.positives == "per_pair" and not sortable):
        return None
    kw = dict(positives=st.positives, block=block, xp=xp)
    if st.positives == "out" or not sortable:
        return lambda weights: supcon_stream_groups(lg.a, lg.fb, groups[0], groups[1],
                                                    weights=weights, **kw)
    order = xp.argsort(groups[0], stable=True)
    inv = xp.argsort(order)
    sorted_groups = xp.take(groups[0], order)
    ids = xp.arange(groups[1] + 1, dtype=sorted_groups.dtype, device=st.ctx.device)
    bounds = [int(x) for x in xp.searchsorted(sorted_groups, ids)]
    a_s, fb_s = xp.take(lg.a, order, axis=0), xp.take(lg.fb, order, axis=0)

    def sweep(weights):
        w = None if weights is None else xp.take(weights, order)
        per, npos, grads = supcon_stream_groups(a_s, fb_s, sorted_groups, groups[1], weights=w,
                                                bounds=bounds, **kw)
        if grads is not None:
            grads = (xp.take(grads[0], inv, axis=0), xp.take(grads[1], inv, axis=0), grads[2])
        return xp.take(per, inv), xp.take(npos, inv), grads

    return sweep


def supcon_engine(st: SimpleNamespace, block: int, *, need_grad: bool, across=None):
    """Stream the anchors' rows of ``z = fa fbᵀ / τ`` (``_stream.supcon``): the mask-free
    kernel where it applies (:func:`_group_kernel`), else the per-block relation's.

    The anchors ``st.anchors`` are the first rows of the columns ``st.u``.  ``across``:
    they are one rank's share of a sharded batch (:class:`nce_ref.sharded.losses.Across`,
    ``st.u`` the gathered columns): the value, its normaliser and the temperature's
    gradient are summed over ranks, the columns' gradients sent to their owners."""
    ctx, xp = st.ctx, st.xp
    tau, tau0 = st.tau, st.tau0
    fa, fb, back_f = bilinear_features(st.anchors, st.u, kind=feature_kind(st.kind), eps=st.eps,
                                       xp=xp)
    lg = prepare_logits(fa, fb, tau, concrete_float(tau0), kind=st.kind,
                        n_entries=st.n_anchor * st.c, dtype=ctx.dtype, xp=xp)
    kb = None if st.base_temperature is None else tau / st.base_temperature
    kernel = _group_kernel(st, lg, block)
    if kernel is None:
        relation = _relation(st)

        own = None
        if st.ref is not None:  # no column is the anchor's own but ref_self's
            own = st.own if st.own is not None else xp.full(
                (st.n_anchor,), -1, dtype=xp.int64, device=ctx.device)

        def kernel(weights):
            return supcon_stream(lg.a, lg.fb, relation, positives=st.positives, weights=weights,
                                 block=block, flush=lg.flush, bound=lg.bound, root=lg.root,
                                 own=own, xp=xp)

    # each anchor's candidates: every column but its own (the batch: itself; ref: its copy)
    if st.ref is None:
        n_cand = float(st.c - 1)
    elif st.own is None:
        n_cand = float(st.c)
    else:
        n_cand = st.c - xp.astype(st.own >= 0, ctx.dtype)
    keep = None

    def sweep(weights):
        nonlocal keep
        per, npos, grads = kernel(weights)
        keep = _keep(st, n_cand - npos, across)
        if keep is not None:  # no_negative="zero": no negative pair at all gives 0 (PML)
            per = xp.where(keep, per, xp.zeros_like(per))
            if grads is not None:
                k = xp.astype(keep, ctx.dtype)
                grads = (grads[0] * k, grads[1] * k, grads[2] * k)
        count = npos if st.positives == "per_pair" else xp.astype(npos > 0, ctx.dtype)
        return per, count, grads

    def grads_of(grads, per_dot):
        """``grads`` for the anchors' cotangents ``gl``; ``per_dot = Σ gl·per``."""
        da, db, zdz = grads
        dtau = -zdz / tau
        if kb is not None:
            dtau = dtau + per_dot / tau
        if across is not None:
            dtau = across.temperature(dtau)
        g_anchor, g_u = back_f(da / lg.fold, db)
        if across is not None:
            g_u = across.owners({"features": g_u})["features"]
        return _grads(st, g_anchor, g_u, scalar_grad(ctx, dtau, tau0))

    def finish(value):
        return ctx.to_out(ctx.result_finite(value if kb is None else value * kb, "supcon"))

    if not need_grad:
        per, count, _ = sweep(None)
        return finish(reduce_anchors(per, count, st, across)[0]), None
    if st.reduction == "none":
        per, _, _ = sweep(None)

        def vjp(g):
            gl = ctx.to_compute(g) if kb is None else ctx.to_compute(g) * kb
            _, _, grads = sweep(gl)  # anchors without a positive get no gradient
            return grads_of(grads, xp.sum(gl * per))

        return finish(per), vjp
    # a scalar reduction gives every anchor the same cotangent: sweep once with unit
    # weights (the gradient fused in), scale by the reduction's cotangent afterwards
    per, count, (da, db, zdz) = sweep(xp.ones((st.n_anchor,), dtype=ctx.dtype, device=ctx.device))
    value, back_red = reduce_anchors(per, count, st, across)

    def vjp_scalar(g):
        k = back_red(ctx.to_compute(g))[0]
        if kb is not None:
            k = k * kb
        return grads_of((da * k, db * k, zdz * k), k * xp.sum(per))  # k: the same for every anchor

    return finish(value), vjp_scalar
