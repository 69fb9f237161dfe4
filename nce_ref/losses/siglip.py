"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023), dense reference and streamed engine.

:func:`siglip` validates its inputs once, then runs the path its ``method`` names:

- the **reference** (``method="dense"``), :func:`siglip_dense`: the similarity of the
  whole (N, N) score matrix (``nce_ref.similarity.sim_fwd``), the logits
  ``u = t·s + b``, the softplus of every pair with its sign, row sums, the reduction,
  and the composition of their VJPs;
- the **engine** (``method="streamed"``, and ``"auto"``): row blocks of the bilinear
  score matrix (``nce_ref._stream``), never N x N.  The objective has no row
  normalisation (no log-sum-exp), so a block needs one elementwise pass: the softplus
  for the value and the sigmoid for the gradient from one ``exp``
  (``nce_ref._ops.softplus_and_sigmoid_of_exp`` where the logits are bounded, else
  ``softplus_and_sigmoid``), then the two gradient GEMMs; three GEMMs in all.

The positive pairs (the diagonal) are masked out of the blocks and computed row-wise
(``pair_sim_from_features``), as in ``info_nce``: their term ``softplus(−u_ii)`` is
then exact even when it is far below ``softplus(u_ii) ≈ u_ii``.
Derivation: ``docs/derivations.md``, section "SigLIP's sigmoid loss".
"""

from __future__ import annotations

import math
from typing import Any

from .._array import (
    check_method,
    check_pair,
    concrete_float,
    resolve,
    scalar_grad,
    scalar_param,
)
from .._ops import flush_below, sigmoid, softplus, softplus_and_sigmoid, softplus_and_sigmoid_of_exp
from .._reduce import check_reduction, reduce_fwd
from .._stream import by_blas_halves, by_row_chunks, choose_block
from .._stream._blocks import (
    accumulate,
    cat,
    exp_inplace,
    grad_gemms,
    logit_blocks,
    mask_band,
    untranspose,
)
from .._stream._logits import buffers, feature_kind, prepare_logits
from .._stream._numpy import np_namespace, np_sigmoid_block
from ..autodiff import differentiable
from ..similarity import (
    DEFAULT_EPS,
    bilinear_features,
    check_similarity,
    pair_sim,
    pair_sim_from_features,
    sim_fwd,
)

Array = Any

__all__ = ["siglip", "siglip_dense"]


@differentiable("siglip", wrt=("x", "y", "scale", "bias"), scalars=("scale", "bias"))
def siglip(x: Array, y: Array, /, *, scale: float | Array = 10.0, bias: float | Array = -10.0,
           similarity: str = "cosine", reduction: str = "mean", eps: float = DEFAULT_EPS,
           method: str = "auto", block_size: int | None = None, memory_budget: int | None = None,
           check_finite: bool = True, xp=None, need_grad: bool = True):
    r"""SigLIP's sigmoid loss: every pair a binary classification, positive on the diagonal.

    With :math:`s_{ij} = s(x_i, y_j)` the similarity, :math:`t` the ``scale`` and
    :math:`b` the ``bias``, the logits are :math:`u_{ij} = t\,s_{ij} + b` and the labels
    :math:`z_{ij} = +1` for :math:`i = j`, :math:`-1` otherwise:

    .. math::

        \ell_i = -\sum_{j=1}^{N} \log\sigma(z_{ij} u_{ij})
               = \operatorname{softplus}(-u_{ii}) + \sum_{j\ne i}\operatorname{softplus}(u_{ij}),
        \qquad L = \frac1N \sum_{i=1}^N \ell_i,

    so the loss is **normalised by the batch size N**, not by the N² pairs: OpenCLIP's
    ``SigLipLoss._loss`` is ``-F.logsigmoid(labels * logits).sum() / N`` (and so is the
    paper's pseudocode and big_vision).  The loss is symmetric in ``x`` and ``y``.

    Parameters
    ----------
    x, y : array, shape (N, D)
        Row i of ``y`` is the positive of row i of ``x`` (image and text features).
    scale : float or 0-d array, default 10.0
        :math:`t > 0`, the logit scale, differentiable.  SigLIP learns it as
        :math:`t = e^{t'}` with :math:`t' = \log 10` at initialisation; OpenCLIP's
        ``SigLipLoss`` is called with ``logit_scale`` **already exponentiated** (the
        model returns ``self.logit_scale.exp()``): pass that value.  The gradient is
        :math:`\partial L/\partial t`; the log-parameter's is :math:`t\,\partial L/\partial t`.
        It plays the role of ``1/temperature`` of the softmax losses.
    bias : float or 0-d array, default -10.0
        :math:`b`, differentiable (SigLIP's initialisation, ``logit_bias`` in OpenCLIP;
        ``bias=0.0`` is OpenCLIP's ``logit_bias=None``).
    similarity : {"cosine", "dot", "neg_sq_euclidean", "neg_euclidean"}, default "cosine"
        See :func:`nce_ref.similarity`.  OpenCLIP normalises the features in the model
        (``normalize=True``) and takes their dot product: ``"cosine"`` on raw features,
        or ``"dot"`` on features normalised beforehand.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"``: :math:`\frac1N\sum_i \ell_i` (OpenCLIP); ``"none"``: the N terms
        :math:`\ell_i` (each a sum over a row of the N x N pairs).
    eps : float, default 1e-12
        Norm floor of the cosine similarity.
    method : {"auto", "dense", "streamed"}, default "auto"
        ``"dense"``: the reference, :func:`siglip_dense`, on the whole (N, N) matrix;
        ``"streamed"`` and ``"auto"``: the engine, row blocks of the score matrix (every
        similarity), never N x N.
    block_size, memory_budget, check_finite, xp
        As in :func:`nce_ref.info_nce`.

    Returns
    -------
    loss : array
        0-d, or (N,) for ``reduction="none"``, in the inputs' namespace, device and
        floating dtype (float16/bfloat16 computed in float32).

    Raises
    ------
    ValueError, TypeError
        On mismatched shapes, N = 0, D = 0, a non-positive or non-finite ``scale``, a
        non-finite ``bias``, unknown options, NaN/inf inputs; the message names the
        argument.

    Notes
    -----
    With :math:`g_i` the cotangent of :math:`\ell_i`, the logits' cotangent is
    :math:`\bar u_{ij} = g_i\,\sigma(u_{ij})` off the diagonal and
    :math:`\bar u_{ii} = -g_i\,\sigma(-u_{ii})` on it; then :math:`\bar s = t\,\bar u`,
    :math:`\bar t = \sum_{ij}\bar u_{ij}s_{ij}`, :math:`\bar b = \sum_{ij}\bar u_{ij}`, and
    the similarity's VJP.  The softplus is :math:`\max(u, 0) + \log(1 + e^{-|u|})`
    (or :math:`\log(1 + e^u)` from one ``exp`` where :math:`|u|` is bounded well inside
    the dtype's range): no overflow for any logit.

    References
    ----------
    Zhai, Mustafa, Kolesnikov and Beyer, "Sigmoid Loss for Language Image Pre-Training"
    (ICCV 2023).

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> loss = nce_ref.siglip(x, x, scale=1.0, bias=0.0)
    >>> # each row: softplus(-1) for its positive, softplus(0) = log 2 for its negative
    >>> bool(np.isclose(loss, np.log1p(np.exp(-1.0)) + np.log(2.0)))
    True
    >>> loss, g = nce_ref.value_and_grad(nce_ref.siglip)(x, x)
    >>> sorted(g)
    ['bias', 'scale', 'x', 'y']
    """
    kind, eps = check_similarity(similarity, eps)
    check_reduction(reduction)
    path = check_method(method, streamable=True)
    ctx = resolve({"x": x, "y": y}, ndims={"x": 2, "y": 2}, xp=xp, check_finite=check_finite)
    n, _ = check_pair(x, y, "x", "y")
    t, t0 = scalar_param(ctx, scale, "scale", positive=True)
    b, b0 = scalar_param(ctx, bias, "bias")
    if path == "dense":
        return siglip_dense(ctx, x, y, t, t0, b, b0, kind=kind, eps=eps, reduction=reduction)
    block = choose_block(n, n, ctx.finfo().bits // 8, block_size=block_size,
                         memory_budget=memory_budget, buffers=buffers(kind), like=x)
    if block_size is None:
        block = _equal_blocks(n, block)
    return _siglip_streamed(ctx, x, y, t, t0, b, b0, kind=kind, eps=eps, reduction=reduction,
                            block=block, equal=block_size is None, need_grad=need_grad)


def siglip_dense(ctx, x, y, t, t0, b, b0, *, kind, eps, reduction):
    r"""The reference of :func:`siglip`: the formula on the whole (N, N) score matrix.

    ``u = t·s(x, y) + b`` with the diagonal masked (``-inf``: softplus 0, sigmoid 0) and
    the positives ``u⁺_i = t·s(x_i, y_i) + b`` held apart (row-wise, as ``info_nce``),
    :math:`\ell_i = \operatorname{softplus}(-u^+_i) + \sum_{j\ne i}\operatorname{softplus}(u_{ij})`,
    the reduction; the VJP is their composition.  Returns ``(value, vjp)``.
    """
    xp = ctx.xp
    a, c = ctx.to_compute(x), ctx.to_compute(y)
    n = a.shape[0]
    s, back_s = sim_fwd(a, c, kind=kind, eps=eps, xp=xp)
    s_pos, back_pos = pair_sim(a, c, kind=kind, eps=eps, xp=xp)
    diag = ctx.eye(n, dtype=xp.bool)
    u = xp.where(diag, xp.full_like(s, -math.inf), t * s + b)
    u_pos = t * s_pos + b
    per = xp.sum(softplus(u, xp=xp), axis=1) + softplus(-u_pos, xp=xp)
    value, back_red = reduce_fwd(per, reduction, xp=xp)
    value = ctx.result_finite(value, "siglip")

    def vjp(g):
        gl = back_red(ctx.to_compute(g))
        du = xp.expand_dims(gl, axis=1) * sigmoid(u, xp=xp)  # 0 on the masked diagonal
        du_pos = -gl * sigmoid(-u_pos, xp=xp)
        s_off = xp.where(diag, xp.zeros_like(s), s)
        ga, gc = back_s(t * du)
        ga_p, gc_p = back_pos(t * du_pos)
        return {"x": ctx.like(ga + ga_p, x), "y": ctx.like(gc + gc_p, y),
                "scale": scalar_grad(ctx, xp.sum(du * s_off) + xp.sum(du_pos * s_pos), t0),
                "bias": scalar_grad(ctx, xp.sum(du) + xp.sum(du_pos), b0)}

    return ctx.to_out(value), vjp


# -- the engine ------------------------------------------------------------------------

def _exp_safe(bound: float | None, bias: float | None, dtype, xp) -> str | bool:
    """Whether ``E = e^u`` is finite and normal for every logit: ``|u| <= bound + |b|``
    with a margin of 1 inside ``(log smallest_normal, log max)``; then
    ``softplus = log1p(E)`` and ``σ = E/(1 + E)`` keep full relative accuracy from one
    ``exp``, and no sigmoid is subnormal (no flush).  Returns ``"pairs"`` where a product
    of two ``1 + E`` is finite too (the row sums of the softplus then take half the
    ``log1p``), ``"one"`` where only ``E`` is, and False otherwise."""
    if bound is None or bias is None:
        return False
    fi = xp.finfo(dtype)
    lim = min(math.log(float(fi.max)), -math.log(float(fi.smallest_normal))) - 1.0
    big = bound + abs(bias)
    if 2.0 * big < lim:
        return "pairs"
    return "one" if big < lim else False


def _block_terms(z, b, ones, *, fast: bool, want_grad: bool, xp):
    """One block's (or chunk's) row sums of ``softplus(z + b)`` (``b`` None: already in
    ``z``) and, with ``want_grad``,
    ``σ(z + b)`` (subnormal entries flushed to 0 on the general path).  Masked entries
    (``z = -inf``) give 0 and 0.  ``z`` is our own buffer: it is overwritten (in place
    where the library allows it) and may be returned as the sigmoid.  ``ones`` (C,) sums
    the rows by a matrix-vector product."""
    if b is not None:
        z += b
    if fast:
        e = exp_inplace(z, xp)
        c = e.shape[1]
        if fast == "pairs" and c >= 2:
            # Σ_j log1p(E_j) over the pairs (j, j + h): log1p(E_l + E_r (1 + E_l)) is
            # log((1 + E_l)(1 + E_r)), a sum of positive terms (no cancellation), for half
            # the log1p's; the product is finite where 2 max|u| is (``_exp_safe``)
            h = c // 2
            el, er = e[:, :h], e[:, h:2 * h]
            rs = xp.log1p(el + er * (1.0 + el)) @ ones[:h]
            if c % 2:
                rs = rs + xp.log1p(e[:, c - 1])
        else:
            rs = xp.log1p(e) @ ones
        sg = softplus_and_sigmoid_of_exp(e, softplus=False, overwrite=True, xp=xp)[1] \
            if want_grad else None
        return rs, sg
    if want_grad:
        sp, sg = softplus_and_sigmoid(z, overwrite=True, xp=xp)
        return sp @ ones, flush_below(sg, float(xp.finfo(sg.dtype).smallest_normal), xp=xp)
    return softplus(z, xp=xp) @ ones, None


def _sweep(lg, b, weights, *, fast: bool, block: int, itemsize: int, xp, bias_value=None,
           equal: bool = False):
    """Stream the row blocks of ``z = t·s`` (diagonal masked): the rows' softplus sums
    and, with ``weights`` (the cotangents of the rows' terms), the gradient:
    ``(da, dfb, Σ_ij ū_ij z_ij, Σ_ij ū_ij)`` with ``ū = diag(w) σ(z + b)``.

    NumPy on the one-``exp`` path (``fast``, no root, ``bias_value`` the bias' float):
    :func:`_sweep_numpy`."""
    k = lg.fb.shape[1]
    rooted = lg.root is not None
    if fast and not rooted and bias_value is not None and np_namespace(xp):
        return _sweep_numpy(lg, bias_value, weights, pairs=fast == "pairs", block=block,
                            equal=equal, xp=xp)
    # without a chain factor, the rows' sums of σ come from the first gradient GEMM, as
    # one more column of fb (of ones)
    fb1 = None
    col = xp.ones((lg.fb.shape[0], 1), dtype=lg.fb.dtype, device=_device(lg.fb))
    if weights is not None and not rooted:
        fb1 = xp.concat([lg.fb, col], axis=1)
    ones = col[:, 0]
    a_op, fb_op, b_add = lg.a, lg.fb, b
    if not rooted:  # the bias as one more feature: u = [a, 1]·[fb, b] from the GEMM itself
        a_op = xp.concat([lg.a, xp.ones((lg.a.shape[0], 1), dtype=lg.a.dtype,
                                        device=_device(lg.a))], axis=1)
        fb_op, b_add = xp.concat([lg.fb, col * b], axis=1), None
    want = weights is not None
    sps, das = [], []
    db = zdz = dbias = None
    for r0, r1, ab, z, dzdy in logit_blocks(a_op, fb_op, block, lg.root, xp):
        ab = ab[:, :k]
        z = mask_band(z, r0, r1, 0, xp)
        def elem(rows, z=z):
            if rows is None:
                sp, sg = _block_terms(z, b_add, ones, fast=fast, want_grad=want, xp=xp)
                return {"sp": sp} if sg is None else {"sp": sp, "sg": sg}
            zz = z[rows, ...]  # NumPy, chunked: σ replaces z in our own block buffer
            sp, sg = _block_terms(zz, b_add, ones, fast=fast, want_grad=want, xp=xp)
            if sg is not None and sg is not zz:
                zz[...] = sg
            return {"sp": sp}

        out = by_row_chunks(elem, r1 - r0, 4 * z.shape[1] * itemsize, xp)
        sps.append(out["sp"])
        sg = out.get("sg", z) if want else None
        z = out = elem = None  # no name keeps the block alive while the next one is computed
        if not want:
            continue
        w = weights[r0:r1]
        if rooted:
            rs = xp.sum(sg, axis=1)
            dab, db, part = grad_gemms(sg * dzdy, w, ab, lg.fb, db, xp)
            part = 2.0 * part
        else:
            eb = sg @ fb1
            rs = eb[:, k]
            dab, db, part = grad_gemms(sg, w, ab, lg.fb, db, xp, eb=eb[:, :k])
        sg = None
        das.append(dab)
        zdz = part if zdz is None else zdz + part
        bsum = xp.sum(w * rs)
        dbias = bsum if dbias is None else dbias + bsum
    sp = cat(sps, xp)
    if weights is None:
        return sp, None
    return sp, (cat(das, xp), untranspose(db, xp), zdz, dbias)


def _equal_blocks(n: int, block: int) -> int:
    """Rows per block for as many blocks of ``n`` rows, of equal rows: no short last block
    (its GEMMs run far below the floor's rate)."""
    return -(-n // -(-n // block))


def _sweep_numpy(lg, bias: float, weights, *, pairs: bool, block: int, equal: bool, xp):
    """:func:`_sweep` for NumPy on the one-``exp`` path.

    Each block ``z = a fbᵀ`` (K columns, the bias not among them: the three GEMMs are the
    floor's shapes) is written into one buffer per sweep and goes to
    :func:`nce_ref._stream._numpy.np_sigmoid_block`, which adds the bias, masks the
    diagonal and leaves ``σ`` in the block with the rows' sums of the softplus and of
    ``σ``, by chunks of rows in cache; then the two gradient GEMMs,
    ``ā = diag(w) σ fb`` and ``f̄b += σᵀ diag(w) a``, both row-major (``σᵀ`` as the GEMM's
    transposed operand: as fast here as ``aᵀσ``, and no transposed copy afterwards).

    Where :func:`nce_ref._stream._exec.by_blas_halves` applies (two threads, a BLAS of at
    most two), the two halves of the rows are two such sweeps at once, each on one core
    with its own buffer of ``block`` rows (``equal``: re-cut into equal blocks of its
    half) and its own ``f̄b``, added at the end; else one sweep over all the rows."""
    want = weights is not None

    def sweep(r0, r1):
        nb = _equal_blocks(r1 - r0, block) if equal else block
        sps, das = [], []
        db = zdz = dbias = None
        for b0, b1, ab, z, _ in logit_blocks(lg.a, lg.fb, nb, None, xp, rows=(r0, r1),
                                             reuse=True):
            sp, rs = np_sigmoid_block(z, bias, b0, pairs, want)  # z: our block buffer
            sps.append(sp)
            if not want:
                continue
            w = weights[b0:b1]
            wk = xp.expand_dims(w, axis=1)
            dab = z @ lg.fb
            dab *= wk  # our own GEMM output, in place
            db = accumulate(db, xp.matrix_transpose(z) @ (ab * wk))
            z = None
            das.append(dab)
            part = xp.sum(xp.vecdot(ab, dab, axis=-1))  # Σ ū∘z (see grad_gemms)
            zdz = part if zdz is None else zdz + part
            bsum = xp.sum(w * rs)
            dbias = bsum if dbias is None else dbias + bsum
        return sps, das, db, zdz, dbias

    n = lg.a.shape[0]
    halves = by_blas_halves(sweep, n)
    if halves is None:
        sps, das, db, zdz, dbias = sweep(0, n)
    else:
        (sps, das, db, zdz, dbias), (sps2, das2, db2, zdz2, dbias2) = halves
        sps, das = sps + sps2, das + das2
        if want:
            db, zdz, dbias = db + db2, zdz + zdz2, dbias + dbias2
    sp = cat(sps, xp)
    if not want:
        return sp, None
    return sp, (cat(das, xp), db, zdz, dbias)


def _device(x):
    from array_api_compat import device

    return device(x)


def _siglip_streamed(ctx, x, y, t, t0, b, b0, *, kind, eps, reduction, block, need_grad,
                     equal=False):
    """:func:`siglip` by the engine; returns ``(value, vjp)``."""
    xp = ctx.xp
    a, c = ctx.to_compute(x), ctx.to_compute(y)
    n = a.shape[0]
    fa, fb, back_f = bilinear_features(a, c, kind=feature_kind(kind), eps=eps, xp=xp)
    s_pos, back_pos = pair_sim_from_features(a, c, fa, fb, kind=kind, eps=eps, xp=xp)
    t_value = concrete_float(t0)
    tau = 1.0 / t
    lg = prepare_logits(fa, fb, tau, None if t_value is None else 1.0 / t_value, kind=kind,
                        n_entries=n * n, dtype=ctx.dtype, xp=xp, bound_by_norms=True)
    itemsize = ctx.finfo().bits // 8
    b_value = concrete_float(b0)
    fast = _exp_safe(lg.bound, b_value, ctx.dtype, xp)
    u_pos = t * s_pos + b
    sp_pos, sg_pos = softplus_and_sigmoid(-u_pos, xp=xp)  # softplus(−u⁺), σ(−u⁺)

    def grads(weights):
        """The inputs' gradients for the rows' cotangents ``weights``."""
        sp, gr = _sweep(lg, b, weights, fast=fast, block=block, itemsize=itemsize, xp=xp,
                       bias_value=b_value, equal=equal)
        da, dfb, zdz, dbias = gr
        du_pos = -weights * sg_pos
        dfa = da / lg.fold
        ds_pos = t * du_pos
        if kind in ("cosine", "dot"):  # row-wise chain: NumPy runs it by chunks in cache
            def chain(rows):
                if rows is None:
                    fa_r, fb_r = back_pos(ds_pos, dfa, dfb)[:2]
                    ga, gc = back_f(fa_r, fb_r)
                else:
                    fa_r, fb_r = back_pos(ds_pos[rows], dfa[rows, ...], dfb[rows, ...],
                                          rows=rows)[:2]
                    ga, gc = back_f(fa_r, fb_r, rows=rows)
                return {"x": ga, "y": gc}

            out = by_row_chunks(chain, n, 6 * dfa.shape[1] * itemsize, xp)
            ga, gc = out["x"], out["y"]
        else:
            dfa, dfb, ga_p, gc_p = back_pos(ds_pos, dfa, dfb)
            ga, gc = back_f(dfa, dfb)
            ga, gc = ga + ga_p, gc + gc_p
        dscale = zdz / t + xp.sum(du_pos * s_pos)
        return sp, {"x": ga, "y": gc, "scale": dscale, "bias": dbias + xp.sum(du_pos)}

    def finish(out, g=None):
        def mul(v):  # fresh arrays: a second call of the VJP sees the same
            return v if g is None else v * g
        return {"x": ctx.like(mul(out["x"]), x), "y": ctx.like(mul(out["y"]), y),
                "scale": scalar_grad(ctx, mul(out["scale"]), t0),
                "bias": scalar_grad(ctx, mul(out["bias"]), b0)}

    if not need_grad or reduction == "none":
        sp, _ = _sweep(lg, b, None, fast=fast, block=block, itemsize=itemsize, xp=xp,
                       bias_value=b_value, equal=equal)
        per = sp + sp_pos
        value = per if reduction == "none" else reduce_fwd(per, reduction, xp=xp)[0]

        def vjp(g):
            w = ctx.to_compute(g)
            if reduction != "none":
                w = xp.full((n,), 1.0 / n if reduction == "mean" else 1.0, dtype=ctx.dtype,
                            device=ctx.device) * w
            return finish(grads(w)[1])

        return ctx.to_out(ctx.result_finite(value, "siglip")), (vjp if need_grad else None)
    w = xp.full((n,), 1.0 / n if reduction == "mean" else 1.0, dtype=ctx.dtype, device=ctx.device)
    sp, out = grads(w)
    value = ctx.result_finite(reduce_fwd(sp + sp_pos, reduction, xp=xp)[0], "siglip")

    def vjp_scalar(g):
        return finish(out, ctx.to_compute(g))

    return ctx.to_out(value), vjp_scalar
