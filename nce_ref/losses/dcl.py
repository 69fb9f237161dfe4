"""Decoupled contrastive learning (DCL) and its von Mises-Fisher weighted form (DCLW).

:func:`dcl` is NT-Xent with the positive pair taken out of the denominator (Yeh et al.
2022): the reference (``method="dense"``) on the (2N, 2N) score matrix of the two views,
the masked ``logsumexp`` of ``nce_ref._ops`` for the negatives, the (optionally
weighted) positive logit, the reduction, and the composition of their VJPs.
Derivation: ``docs/derivations.md``, section "Decoupled contrastive loss".
"""

from __future__ import annotations

from typing import Any

from .._array import check_method, check_option, check_pair, check_real, resolve, scalar_grad, scalar_param
from .._ops import logsumexp, softmax_from_lse
from .._reduce import check_reduction, reduce_fwd
from ..autodiff import differentiable
from ..similarity import DEFAULT_EPS, check_similarity
from ._objective import temperature_grad
from .infonce import two_view_logits

Array = Any

__all__ = ["dcl", "dcl_dense", "WEIGHTS"]

WEIGHTS = ("none", "von_mises")


@differentiable("dcl", wrt=("z1", "z2", "temperature"), scalars=("temperature",))
def dcl(z1: Array, z2: Array, /, *, temperature: float | Array = 0.1, weight: str = "none",
        sigma: float = 0.5, detach_weight: bool = True, similarity: str = "cosine",
        reduction: str = "mean", eps: float = DEFAULT_EPS, method: str = "auto",
        check_finite: bool = True, xp=None):
    r"""Decoupled contrastive loss (DCL) and its weighted form DCLW (Yeh et al. 2022).

    With :math:`u = [z_1; z_2]` (2N rows), view :math:`a`'s partner :math:`a \pm N`,
    :math:`z_{ab} = s(u_a, u_b)/\tau` and :math:`i = a \bmod N` its sample,

    .. math::

        \ell_a = -w_i\, z_{a, a\pm N}
                 + \log \sum_{b \notin \{a,\, a \pm N\}} e^{z_{ab}},
        \qquad L = \frac{1}{2N}\sum_{a=1}^{2N} \ell_a,

    NT-Xent (:func:`nce_ref.nt_xent`) with the positive taken out of the denominator:
    each anchor has the 2N − 2 other views as negatives (those of the other samples in
    both views), and the loss is the mean over both views' anchors, as lightly's
    ``DCLLoss`` computes it (``0.5 * (loss(out0, out1) + loss(out1, out0))``, each a
    mean over the batch).  It can be negative, and needs N >= 2.

    Parameters
    ----------
    z1, z2 : array, shape (N, D)
        The two views; row i of each is sample i.  N >= 2.
    temperature : float or 0-d array, default 0.1
        :math:`\tau > 0`, differentiable.  lightly accepts a negative temperature (it
        reverses the objective); nce_ref refuses it.
    weight : {"none", "von_mises"}, default "none"
        The positive's weight :math:`w_i`: 1 (DCL, lightly's ``DCLLoss()``), or the
        negative von Mises-Fisher weight of DCLW (lightly's ``DCLWLoss``,
        ``negative_mises_fisher_weights``)

        .. math:: w_i = 2 - N\,\frac{e^{s(z_{1,i}, z_{2,i})/\sigma}}{\sum_k e^{s(z_{1,k}, z_{2,k})/\sigma}},

        so the weights average to 1 and the pairs that are already close weigh less.
        lightly computes it on the normalised features (the cosine similarity) and
        uses the same weights for both views.
    sigma : float, default 0.5
        :math:`\sigma > 0` of the von Mises-Fisher weight (lightly's default); a
        hyper-parameter, not differentiated.
    detach_weight : bool, default True
        The weight is a constant in the gradient (lightly detaches it: ``out0.detach()``,
        and ``torch.tensor(...)`` of the result), so the gradient is DCL's times
        :math:`w`.  ``False``: the gradient also flows through :math:`w_i`'s dependence
        on the positive similarities.
    similarity : {"cosine", "dot", "neg_sq_euclidean", "neg_euclidean"}, default "cosine"
        lightly normalises the outputs (``"cosine"``).
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"`` returns the 2N terms: the anchors of ``z1``, then those of ``z2``.
    eps : float, default 1e-12
        Norm floor of the cosine similarity.
    method : {"auto", "dense"}, default "auto"
        The dense reference, :func:`dcl_dense`, on the (2N, 2N) score matrix (no
        streamed engine yet: ``"streamed"`` is refused).
    check_finite, xp
        As in :func:`nce_ref.info_nce`.

    Returns
    -------
    loss : array, 0-d or (2N,)

    Raises
    ------
    ValueError, TypeError
        On mismatched shapes, N < 2, D = 0, a non-positive temperature or ``sigma``,
        unknown options, NaN/inf inputs; the message names the argument.

    Notes
    -----
    With :math:`g_a` the cotangent of :math:`\ell_a`, :math:`p_{ab}` the softmax over the
    negatives of row :math:`a` and :math:`z^+_a = z_{a,a\pm N}`:
    :math:`\bar z_{ab} = g_a p_{ab}`, :math:`\bar z^+_a = -g_a w_i`, and with
    ``detach_weight=False`` also, for :math:`\pi = \operatorname{softmax}(s^+/\sigma)`
    and :math:`c_i = -(g_i + g_{i+N}) z^+_i`,
    :math:`\bar s^+_k \mathrel{+}= -\tfrac{N}{\sigma}\pi_k (c_k - \sum_i c_i\pi_i)`.
    :math:`\bar\tau = -(\sum \bar z\,z + \sum \bar z^+ z^+)/\tau`.

    References
    ----------
    Yeh, Hong, Hsu, Liu, Chen and LeCun, "Decoupled Contrastive Learning" (ECCV 2022).

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> z = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> # each anchor: -1/τ for its positive, log(e^{0} + e^{0}) for its two negatives
    >>> float(nce_ref.dcl(z, z, temperature=1.0)) == -1.0 + float(np.log(2.0))
    True
    """
    kind, eps = check_similarity(similarity, eps)
    check_reduction(reduction)
    check_option(weight, "weight", WEIGHTS)
    sigma = check_real(sigma, "sigma", positive=True)
    if not isinstance(detach_weight, bool):
        raise TypeError(f"`detach_weight` must be a bool; got {detach_weight!r}")
    check_method(method, streamable=False, why_not="dcl (no streamed engine yet)")
    ctx = resolve({"z1": z1, "z2": z2}, ndims={"z1": 2, "z2": 2}, xp=xp, check_finite=check_finite)
    n, _ = check_pair(z1, z2, "z1", "z2")
    if n < 2:
        raise ValueError(f"`z1` must have at least two rows (N >= 2): with one pair there is no "
                         f"negative and the loss is -inf; got N = {n}")
    tau, tau0 = scalar_param(ctx, temperature, "temperature", positive=True)
    return dcl_dense(ctx, z1, z2, tau, tau0, kind=kind, eps=eps, weight=weight, sigma=sigma,
                     detach_weight=detach_weight, reduction=reduction)


def dcl_dense(ctx, z1, z2, tau, tau0, *, kind, eps, weight, sigma, detach_weight, reduction):
    r"""The reference of :func:`dcl`: ``u = [z1; z2]``, ``z = s(u, u)/τ`` with the diagonal
    and the partners' diagonals (``±N``) masked, :math:`\operatorname{LSE}` over the rest,
    minus the (weighted) positive logit held apart (row-wise, ``pair_sim``); the
    reduction; the VJP is their composition.  Returns ``(value, vjp)``."""
    xp = ctx.xp
    n, z, back_s, keep, s_pos, back_pos = two_view_logits(ctx, z1, z2, tau, kind=kind, eps=eps)
    lse = logsumexp(z, keep, axis=1, xp=xp)
    pos = xp.concat([s_pos, s_pos]) / tau
    if weight == "von_mises":
        r = s_pos / sigma
        pi = xp.exp(r - logsumexp(r, xp=xp))
        w_n = 2.0 - float(n) * pi
    else:
        pi = None
        w_n = xp.ones_like(s_pos)
    w = xp.concat([w_n, w_n])
    per = lse - w * pos
    value, back_red = reduce_fwd(per, reduction, xp=xp)
    value = ctx.result_finite(value, "dcl")

    def vjp(g):
        gl = back_red(ctx.to_compute(g))
        dz = softmax_from_lse(z, xp.expand_dims(lse, axis=1), keep, xp=xp) * xp.expand_dims(gl, axis=1)
        dpos = -gl * w
        ds_pos = (dpos[:n] + dpos[n:]) / tau
        if pi is not None and not detach_weight:
            c = -(gl[:n] + gl[n:]) * (s_pos / tau)
            ds_pos = ds_pos - (float(n) / sigma) * pi * (c - xp.sum(c * pi))
        dtau = temperature_grad(dz, z, dpos, pos, tau, xp=xp)
        gu1, gu2 = back_s(dz / tau)
        gu = gu1 + gu2
        ga, gb = back_pos(ds_pos)
        return {"z1": ctx.like(gu[:n, :] + ga, z1), "z2": ctx.like(gu[n:, :] + gb, z2),
                "temperature": scalar_grad(ctx, dtau, tau0)}

    return ctx.to_out(value), vjp
