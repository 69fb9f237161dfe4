"""Decoupled contrastive learning (DCL) and its von Mises-Fisher weighted form (DCLW).

:func:`dcl` is NT-Xent with the positive pair taken out of the denominator (Yeh et al.
2022).  It validates its inputs once, then runs the path its ``method`` names:

- the **reference** (``method="dense"``), :func:`dcl_dense`: the (2N, 2N) score matrix
  of the two views, the masked ``logsumexp`` of ``nce_ref._ops`` for the negatives, the
  (optionally weighted) positive logit, the reduction, and the composition of their VJPs;
- the **engine** (``method="streamed"``, and ``"auto"``): NT-Xent's two row segments of
  the bilinear score matrix (``nce_ref._stream.ce_stream`` without a positive in the
  denominator, ``pos=None``), never (2N, 2N); the positive logits, the von Mises weight
  and its gradient are row-wise (O(N·D)), outside the blocks.

Derivation: ``docs/derivations.md``, section "Decoupled contrastive loss".
"""

from __future__ import annotations

from typing import Any

from .._array import (
    check_method,
    check_option,
    check_pair,
    check_real,
    concrete_float,
    plus,
    resolve,
    scalar_grad,
    scalar_param,
)
from .._ops import logsumexp, softmax_from_lse
from .._reduce import check_reduction, reduce_fwd
from .._stream import ce_stream, choose_block
from .._stream._logits import buffers, feature_kind, prepare_logits
from ..autodiff import differentiable
from ..similarity import DEFAULT_EPS, bilinear_features, check_similarity, pair_sim_from_features
from ._objective import temperature_grad
from .infonce import two_view_logits

Array = Any

__all__ = ["dcl", "dcl_dense", "WEIGHTS"]

WEIGHTS = ("none", "von_mises")


@differentiable("dcl", wrt=("z1", "z2", "temperature"), scalars=("temperature",))
def dcl(z1: Array, z2: Array, /, *, temperature: float | Array = 0.1, weight: str = "none",
        sigma: float = 0.5, detach_weight: bool = True, similarity: str = "cosine",
        reduction: str = "mean", eps: float = DEFAULT_EPS, method: str = "auto",
        block_size: int | None = None, memory_budget: int | None = None,
        check_finite: bool = True, xp=None, need_grad: bool = True):
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
    method : {"auto", "dense", "streamed"}, default "auto"
        ``"dense"``: the reference, :func:`dcl_dense`, on the whole (2N, 2N) score
        matrix; ``"streamed"`` and ``"auto"``: the engine, NT-Xent's row blocks of the
        score matrix without the positive in the denominator (every similarity, weight
        and reduction), never (2N, 2N).
    block_size, memory_budget, check_finite, xp
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
    path = check_method(method, streamable=True)
    ctx = resolve({"z1": z1, "z2": z2}, ndims={"z1": 2, "z2": 2}, xp=xp, check_finite=check_finite)
    n, _ = check_pair(z1, z2, "z1", "z2")
    if n < 2:
        raise ValueError(f"`z1` must have at least two rows (N >= 2): with one pair there is no "
                         f"negative and the loss is -inf; got N = {n}")
    tau, tau0 = scalar_param(ctx, temperature, "temperature", positive=True)
    opts = dict(kind=kind, eps=eps, weight=weight, sigma=sigma, detach_weight=detach_weight,
                reduction=reduction)
    if path == "dense":
        return dcl_dense(ctx, z1, z2, tau, tau0, **opts)
    block = choose_block(n, 2 * n, ctx.finfo().bits // 8, block_size=block_size,
                         memory_budget=memory_budget, buffers=buffers(kind), like=z1)
    return _dcl_streamed(ctx, z1, z2, tau, tau0, **opts, block=block, need_grad=need_grad)


def _von_mises(s_pos, n: int, sigma: float, xp):
    """DCLW's weights ``w_i = 2 − N π_i``, ``π = softmax(s⁺/σ)``, and ``π``."""
    r = s_pos / sigma
    pi = xp.exp(r - logsumexp(r, xp=xp))
    return 2.0 - float(n) * pi, pi


def _ds_pos(gl, w_n, pi, s_pos, tau, n: int, sigma: float, detach_weight: bool, xp):
    """The pairs' similarities' cotangent from the terms' ``gl`` (2N): ``−(g_i + g_{i+N})
    w_i/τ``, and with an attached von Mises weight its own term (derivations §12)."""
    ds = -(gl[:n] + gl[n:]) * w_n / tau
    if pi is not None and not detach_weight:
        c = -(gl[:n] + gl[n:]) * (s_pos / tau)
        ds = ds - (float(n) / sigma) * pi * (c - xp.sum(c * pi))
    return ds


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
        w_n, pi = _von_mises(s_pos, n, sigma, xp)
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
        ds_pos = _ds_pos(gl, w_n, pi, s_pos, tau, n, sigma, detach_weight, xp)
        dtau = temperature_grad(dz, z, dpos, pos, tau, xp=xp)
        gu1, gu2 = back_s(dz / tau)
        gu = gu1 + gu2
        ga, gb = back_pos(ds_pos)
        return {"z1": ctx.like(gu[:n, :] + ga, z1), "z2": ctx.like(gu[n:, :] + gb, z2),
                "temperature": scalar_grad(ctx, dtau, tau0)}

    return ctx.to_out(value), vjp


# -- the engine ------------------------------------------------------------------------

def _dcl_streamed(ctx, z1, z2, tau, tau0, *, kind, eps, weight, sigma, detach_weight, reduction,
                  block, need_grad):
    r""":func:`dcl` by the engine; returns ``(value, vjp)``.

    ``u = [z1; z2]`` against itself, NT-Xent's two row segments (anchors of ``z1``
    exclude their own column and their partner's ``N`` on, those of ``z2`` theirs), each
    by :func:`nce_ref._stream.ce_stream` with ``pos=None``: the rows' ``LSE`` over the
    2N − 2 negatives and, for the rows' cotangents ``gl``, the gradient of
    :math:`\sum_a g_a \operatorname{LSE}_a` (``dz = g p`` over the negatives, three GEMMs
    in all, fused into the forward sweep for a scalar reduction).  The linear term
    :math:`-w_i z^+_a` and the von Mises weight are row-wise.
    """
    xp = ctx.xp
    a, b = ctx.to_compute(z1), ctx.to_compute(z2)
    n = a.shape[0]
    u = xp.concat([a, b], axis=0)
    fa, fb, back_f = bilinear_features(u, u, kind=feature_kind(kind), eps=eps, xp=xp)
    s_pos, back_pos = pair_sim_from_features(a, b, fa[:n, :], fb[n:, :], kind=kind, eps=eps,
                                             xp=xp)
    lg = prepare_logits(fa, fb, tau, concrete_float(tau0), kind=kind, n_entries=4 * n * n,
                        dtype=ctx.dtype, xp=xp)
    pos = xp.concat([s_pos, s_pos]) / tau
    w_n, pi = _von_mises(s_pos, n, sigma, xp) if weight == "von_mises" else (None, None)
    w = None if w_n is None else xp.concat([w_n, w_n])
    ones_n = xp.ones_like(s_pos)

    def sweep(gl):
        """The rows' LSE and, with ``gl``, ``(dfa, dfb, Σ dz·z)`` of Σ gl·LSE."""
        ls, das, dfb, zdz = [], [], None, None
        for r0, r1, bands in ((0, n, (0, n)), (n, 2 * n, (0, -n))):
            rt = None if lg.root is None else (lg.root[0][r0:r1], lg.root[1])
            l, gr = ce_stream(lg.a[r0:r1, :], lg.fb, None, bands=bands,
                              weights=None if gl is None else gl[r0:r1], block=block,
                              flush=lg.flush, row_offset=r0, bound=lg.bound, root=rt, xp=xp)
            ls.append(l)
            if gr is not None:
                das.append(gr[0])
                dfb = plus(gr[1], dfb)
                zdz = plus(gr[3], zdz)
        lse = xp.concat(ls)
        if gl is None:
            return lse, None
        return lse, (xp.concat(das, axis=0) / lg.fold, dfb, zdz)

    def per_terms(lse):
        return lse - (pos if w is None else w * pos)

    def grads(gl):
        """The inputs' gradients of Σ gl·ℓ (linear in ``gl``)."""
        lse, (dfa, dfb, zdz) = sweep(gl)
        wn = ones_n if w_n is None else w_n
        dpos = -gl * (xp.concat([wn, wn]))
        dtau = -(zdz + xp.sum(dpos * pos)) / tau
        ds_pos = _ds_pos(gl, wn, pi, s_pos, tau, n, sigma, detach_weight, xp)
        d1, d2, ga, gb = back_pos(ds_pos, dfa[:n, :], dfb[n:, :])
        dfa = xp.concat([d1, dfa[n:, :]], axis=0)
        dfb = xp.concat([dfb[:n, :], d2], axis=0)
        if kind in ("cosine", "dot"):  # fa and fb are the same features of u: one VJP
            gu = back_f(dfa + dfb, xp.zeros_like(dfb))[0]
        else:
            g_rows, g_cols = back_f(dfa, dfb)
            gu = g_rows + g_cols
        return lse, {"z1": plus(gu[:n, :], ga), "z2": plus(gu[n:, :], gb), "temperature": dtau}

    def finish(out, g=None):
        def mul(v):
            return v if g is None else v * g
        return {"z1": ctx.like(mul(out["z1"]), z1), "z2": ctx.like(mul(out["z2"]), z2),
                "temperature": scalar_grad(ctx, mul(out["temperature"]), tau0)}

    unit = 1.0 / (2 * n) if reduction == "mean" else 1.0
    if not need_grad or reduction == "none":
        lse, _ = sweep(None)
        per = per_terms(lse)
        value = per if reduction == "none" else reduce_fwd(per, reduction, xp=xp)[0]

        def vjp(g):
            gl = ctx.to_compute(g)
            if reduction != "none":
                gl = xp.full((2 * n,), unit, dtype=ctx.dtype, device=ctx.device) * gl
            return finish(grads(gl)[1])

        return ctx.to_out(ctx.result_finite(value, "dcl")), (vjp if need_grad else None)
    lse, out = grads(xp.full((2 * n,), unit, dtype=ctx.dtype, device=ctx.device))
    value = ctx.result_finite(reduce_fwd(per_terms(lse), reduction, xp=xp)[0], "dcl")

    def vjp_scalar(g):
        return finish(out, ctx.to_compute(g))

    return ctx.to_out(value), vjp_scalar
