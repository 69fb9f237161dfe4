"""Supervised contrastive loss (SupCon), with every convention of the peers as an option.

A composition: similarity (``nce_ref.similarity.sim_fwd``) between the anchors and all
views → per-anchor objective on the score rows (the masked ``logsumexp`` of
``nce_ref._ops`` and ``_objective.ce_rows``) → reduction, the VJP composed from the
pieces.  Positives are a boolean mask of static shape, built by broadcasting
(``labels[:, None] == labels[None, :]``); the anchor itself is excluded by index.
Derivations: ``docs/supcon_triplet.md``.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import is_lazy_array

from .._array import check_option, check_real, resolve, scalar_grad, scalar_param
from .._ops import logsumexp, sigmoid, softmax_from_lse, softplus
from .._reduce import check_reduction, mean_over_fwd, reduce_fwd
from ..autodiff import differentiable
from ..similarity import DEFAULT_EPS, check_similarity, sim_fwd
from ._objective import ce_rows, temperature_grad

Array = Any

__all__ = ["supcon", "POSITIVES", "NO_POSITIVE", "CONTRAST_MODES", "check_labels"]

POSITIVES = ("out", "in", "per_pair")
NO_POSITIVE = ("exclude", "zero")
CONTRAST_MODES = ("all", "one")


def _require_binary(ctx, x: Array, name: str, what: str) -> None:
    """Raise unless every entry of ``x`` is 0 or 1 (bool passes; skipped when lazy or
    ``check_finite=False``)."""
    xp = ctx.xp
    if xp.isdtype(x.dtype, "bool") or not ctx.check_finite or is_lazy_array(x):
        return
    if not bool(xp.all((x == 0) | (x == 1))):
        raise ValueError(f"`{name}` must hold only 0 and 1 ({what}); got other values")


def check_labels(ctx, labels: Array, n: int, *, multi: bool = False, name: str = "labels") -> None:
    """``labels`` of shape (N,) (or (N, C) of 0/1 when ``multi``), of a bool, integer
    or real floating dtype, finite."""
    xp = ctx.xp
    shapes = f"({n},)" + (f" or ({n}, C)" if multi else "")
    if labels.ndim not in ((1, 2) if multi else (1,)) or labels.shape[0] != n:
        raise ValueError(f"`{name}` must have shape {shapes}, one row per sample; got "
                         f"{tuple(labels.shape)}")
    if not xp.isdtype(labels.dtype, ("bool", "integral", "real floating")):
        raise TypeError(f"`{name}` must have a bool, integer or real floating dtype; got "
                        f"{labels.dtype}")
    if xp.isdtype(labels.dtype, "real floating"):
        ctx.require_finite(labels, name)
    if labels.ndim == 2:
        _require_binary(ctx, labels, name, "multi-label rows")


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


@differentiable("supcon", wrt=("features", "temperature"), scalars=("temperature",))
def supcon(features: Array, labels: Array | None = None, /, *, mask: Array | None = None,
           temperature: float | Array = 0.07, base_temperature: float | None = None,
           positives: str = "out", no_positive: str = "exclude", similarity: str = "cosine",
           contrast_mode: str = "all", reduction: str = "mean", eps: float = DEFAULT_EPS,
           check_finite: bool = True, xp=None):
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
        with ``labels``.
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
    similarity : {"cosine", "dot", "neg_sq_euclidean", "neg_euclidean"}, default "cosine"
        See :func:`nce_ref.similarity`.  SupContrast takes the dot product of
        features the caller has normalised: ``"cosine"`` on raw features.
    contrast_mode : {"all", "one"}, default "all"
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"``: over the anchors (with ``no_positive``); for ``"per_pair"``, over
        the pairs.  ``"none"``: shape (A,) with A = N·V (``"all"``) or N (``"one"``),
        each anchor's term (``"per_pair"``: the sum of its pairs' terms), 0 for an
        anchor without a positive.
    eps, check_finite, xp
        As in :func:`nce_ref.info_nce`; ``check_finite`` also checks that ``mask``
        and multi-label ``labels`` hold only 0 and 1.

    Returns
    -------
    loss : array, 0-d or (A,)

    Raises
    ------
    ValueError, TypeError
        On ``labels`` or ``mask`` of the wrong shape, dtype or values, both given,
        N = 0, V = 0, D = 0, a non-positive temperature, unknown options.

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
    """
    kind, eps = check_similarity(similarity, eps)
    check_option(positives, "positives", POSITIVES)
    check_option(no_positive, "no_positive", NO_POSITIVE)
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
    ctx = resolve({"features": features, "labels": labels, "mask": mask},
                  ndims={"features": (2, 3), "labels": (1, 2), "mask": 2},
                  floating=("features",), xp=xp, check_finite=check_finite)
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
        _require_binary(ctx, mask, "mask", "a positive-pair mask")
    tau, tau0 = scalar_param(ctx, temperature, "temperature", positive=True)

    f = ctx.to_compute(features)
    c = n * v
    u = f if f.ndim == 2 else xp.reshape(xp.permute_dims(f, (1, 0, 2)), (c, d))  # view-major
    n_anchor = c if contrast_mode == "all" else n
    anchors = u if n_anchor == c else u[:n, :]
    rel = _sample_positives(ctx, n, labels, mask)
    rel = xp.tile(rel, (v if n_anchor == c else 1, v))  # (A, C)
    not_self = xp.logical_not(ctx.eye(n_anchor, c, dtype=xp.bool))
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
    if reduction == "mean" and (positives == "per_pair" or no_positive == "exclude"):
        value, back_red = mean_over_fwd(per, count, xp=xp)
    else:
        value, back_red = reduce_fwd(per, reduction, xp=xp)
    if scale is not None:
        value = value * scale
    value = ctx.result_finite(value, "supcon")

    def vjp(g):
        gl = back_red(ctx.to_compute(g))
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
        if n_anchor == c:
            gu = gu + ga
        else:
            gu = gu + xp.concat([ga, xp.zeros((c - n, d), dtype=ctx.dtype, device=ctx.device)], axis=0)
        if features.ndim == 3:
            gu = xp.permute_dims(xp.reshape(gu, (v, n, d)), (1, 0, 2))
        return {"features": ctx.like(gu, features), "temperature": scalar_grad(ctx, dtau, tau0)}

    return ctx.to_out(value), vjp
