r"""The MI bounds of :mod:`nce_ref.mi.bounds` on a separable critic, streamed over row blocks.

For embeddings ``x (N, D)`` and ``y (N, D)`` the critic is
``scores[i, j] = sim(x_i, y_j) / τ``, a bilinear form
:math:`z = a\,f_b^\top` of the features of :func:`nce_ref.similarity.bilinear_features`
(``a = f_a/τ``).  Every supported bound is a function of a few statistics of ``z``
that can be accumulated over blocks of rows without the N x N matrix:

- the diagonal :math:`p_i = z_{ii}` (row-wise, O(N·D), no GEMM);
- per row, over the off-diagonal entries :math:`w_{ij}` (:math:`w = z`, or SMILE's
  clipped :math:`\operatorname{clip}(z, -c, c)`): the shift :math:`m_i = \max_{j\ne i} w_{ij}`,
  the shifted sum :math:`r_i = \sum_{j\ne i} e^{w_{ij} - m_i}` and the row log-sum-exp
  :math:`\ell_i = m_i + \log r_i`;
- pooled sums of :math:`\operatorname{softplus}(z_{ij})` (JS);
- the interpolated bound's row terms, by :func:`nce_ref.mi.bounds.interpolated_rows`
  itself (the kernel of :func:`nce_ref.mi.interpolated`, called once per block).

The gradient with respect to ``z`` of every supported bound has, off the diagonal, the
form :math:`G_{ij} = -e_{ij}\,e^{\lambda_i - \Lambda}` with :math:`e_{ij}` the block's
own elementwise matrix (:math:`e^{w_{ij} - m_i}`, or :math:`\sigma(z_{ij})` for JS), a
per-row log-scale :math:`\lambda_i` known once the row is done and one global
:math:`\Lambda` (for the interpolated bound, whose gradient is row-local,
:math:`e = -G` itself and :math:`\lambda = \Lambda = 0`).  So the three GEMMs of each
block (:math:`z`, :math:`U = e f_b`, :math:`e^\top(\rho\,a)`) run in a single pass; ``docs/mi.md``, "Bounds on
embeddings, streamed", derives it with the symbols of this file.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device

from .._array import (
    check_option,
    check_pair,
    check_real,
    concrete_float,
    plus,
    resolve,
    scalar_grad,
    scalar_param,
)
from .._ops import (
    flush_below,
    logsumexp,
    sigmoid,
    softplus,
    softplus_and_sigmoid,
    softplus_and_sigmoid_of_exp,
)
from .._stream import by_chunks, choose_block, clamp_below, exp_floor
from .._stream._blocks import exp_inplace, mask_band, set_band, untranspose
from .._stream._logits import needs_flush, norm_bound
from .._stream._logits import shift_free as logits_shift_free
from .._stream._numpy import np_clip, np_multiply, np_namespace, np_negate_into, np_owns, np_row_lse
from ..autodiff import differentiable
from ..autodiff import vjp as vjp_of
from ..losses.infonce import info_nce
from ..similarity import (
    BILINEAR,
    DEFAULT_EPS,
    bilinear_features,
    check_similarity,
    pair_sim_from_features,
)
from .bounds import (
    JS_REPORTS,
    baseline_param,
    check_alpha,
    check_axis,
    exp_quiet,
    interpolated_rows,
    log_moving_average_param,
)

Array = Any

__all__ = ["bound_from_embeddings", "STREAMED_BOUNDS"]

#: the bounds of :mod:`nce_ref.mi.bounds` that :func:`bound_from_embeddings` streams
STREAMED_BOUNDS = ("infonce", "nwj", "tuba", "dv", "mine", "js", "interpolated", "smile", "loo_upper")

#: the (R, N) buffers the interpolated bound holds per block at its peak (measured with
#: tracemalloc: ~19.4 in interpolated_rows); the budget counts 2, so its blocks have 1/10 the rows
_INTERPOLATED_BUFFERS = 20

def _row_lse(z: Array, r0: int, r1: int, *, clip: float | None, shift_free: bool, want: bool,
             flush: bool, xp):
    """Row statistics of a block over its off-diagonal entries; ``z`` is consumed.

    Returns ``(m, r, e)``: ``m_i = max_{j≠i} w_ij`` (0 when shift-free), ``r_i =
    Σ_{j≠i} e^{w_ij − m_i}`` and, with ``want``, ``e_ij = e^{w_ij − m_i}`` (0 on the
    diagonal, and where SMILE's clip is active), flushed below ``smallest_normal``.
    Unshifted on a NumPy buffer of ours: :func:`nce_ref._stream._numpy.np_row_lse`.
    """
    own = np_owns(z, xp)
    if shift_free and own:  # NumPy: every pass of a chunk of rows in cache
        return np_row_lse(z, r0, clip=clip, want=want)
    inside = None
    if clip is not None:
        if want and math.isfinite(clip):
            inside = xp.abs(z) <= clip  # torch.clamp's gradient at the ends
        z = np_clip(z, clip) if own else xp.clip(z, min=-clip, max=clip)
    z = mask_band(z, r0, r1, 0, xp)  # after the clip: the diagonal must stay -inf
    if shift_free:
        m = xp.zeros((z.shape[0],), dtype=z.dtype, device=device(z))
    else:
        m = xp.max(z, axis=1)
        z -= xp.expand_dims(m, axis=1)
        if flush:  # no subnormal exp (_stream.exp_floor); the masked diagonal stays 0
            z = clamp_below(z, exp_floor(z.dtype, xp), xp)
    e = exp_inplace(z, xp)
    r = xp.sum(e, axis=1)
    if not want:
        return m, r, None
    if inside is not None:
        e = np_multiply(e, inside) if np_owns(e, xp) else xp.where(inside, e, xp.zeros_like(e))
    if flush:  # entries of a row are <= 1 = its maximum: below tiny, below the rounding
        e = flush_below(e, xp.finfo(e.dtype).smallest_normal, xp=xp)
    return m, r, e


def _sweep(a: Array, fb: Array, rows, *, block: int, grad: bool, fixed: Array | float | None, xp):
    """One pass over the row blocks of ``z = a fbᵀ``.

    ``rows(z, r0, r1) -> (stats, e, lam)``: per-row statistics (a tuple of (R,)
    arrays), the block's gradient matrix ``e`` and its per-row log-scales ``lam``
    (``G = −e ∘ e^{lam − Λ}``).  With ``grad`` the two gradient GEMMs are fused in:
    ``U = e fb`` is kept per row (rescaled exactly at the end), and
    ``db = eᵀ (a ∘ e^{lam − M})`` is accumulated relative to ``M`` = ``fixed`` (Λ
    known up front) or the running maximum of ``lam`` (Λ known only at the end:
    the accumulator is rescaled by ``e^{M_old − M_new}`` when the maximum grows).

    Returns ``(stats, grads)`` with ``grads = (U, lam, db, M)`` or ``None``.
    """
    n = a.shape[0]
    bt = xp.matrix_transpose(fb)
    stats, us, lams = [], [], []
    db = m_run = None
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        ab = a[r0:r1, :]
        st, e, lam = rows(ab @ bt, r0, r1)
        stats.append(st)
        if not grad:
            continue
        us.append(e @ fb)
        lams.append(lam)
        # db is accumulated transposed, (ρ ab)ᵀ e = (eᵀ (ρ ab))ᵀ: e read in its own order
        if fixed is not None:
            # ρ = e^{lam − Λ} <= the marginal term: inf only where the estimate overflows
            # (reported by result_finite); 0 then keeps the GEMM free of inf·0
            rho = exp_quiet(lam - fixed, xp=xp)
            rho = xp.where(rho == math.inf, xp.zeros_like(rho), rho)
            part = xp.matrix_transpose(ab * xp.expand_dims(rho, axis=1)) @ e
            db = part if db is None else db + part
            continue
        new = xp.max(lam) if m_run is None else xp.maximum(m_run, xp.max(lam))
        part = xp.matrix_transpose(ab * xp.expand_dims(xp.exp(lam - new), axis=1)) @ e
        db = part if db is None else db * xp.exp(m_run - new) + part
        m_run = new
    stats = tuple(stats[0][k] if len(stats) == 1 else xp.concat([s[k] for s in stats])
                  for k in range(len(stats[0])))
    if not grad:
        return stats, None
    u = us[0] if len(us) == 1 else xp.concat(us, axis=0)
    lam = lams[0] if len(lams) == 1 else xp.concat(lams)
    return stats, (u, lam, untranspose(db, xp), m_run)


def _check_options(bound, log_baseline, clip, report, log_moving_average, alpha):
    """The bound's own options: required where it takes them, refused elsewhere."""
    given = {"log_baseline": log_baseline, "clip": clip, "report": report,
             "log_moving_average": log_moving_average, "alpha": alpha}
    takes = {"tuba": ("log_baseline",), "smile": ("clip",), "js": ("report",),
             "mine": ("log_moving_average",), "interpolated": ("log_baseline", "alpha")}.get(bound, ())
    for name, v in given.items():
        if v is not None and name not in takes:
            raise ValueError(f"`{name}` is not an option of bound={bound!r}; got {v!r}")
    if bound == "smile" and clip is None:
        raise ValueError("bound='smile' needs `clip` (a float > 0, inf allowed)")
    if bound == "mine" and log_moving_average is None:
        raise ValueError("bound='mine' needs `log_moving_average` (see nce_ref.mi.mine_update)")
    if bound == "interpolated" and alpha is None:
        raise ValueError("bound='interpolated' needs `alpha` (a float in [0, 1])")


@differentiable("mi.bound_from_embeddings", wrt=("x", "y", "log_baseline", "temperature"),
                scalars=("log_baseline", "temperature"))
def bound_from_embeddings(x: Array, y: Array, log_baseline: float | Array | None = None, /, *,
                          bound: str = "infonce", similarity: str = "dot",
                          temperature: float | Array = 1.0, clip: float | None = None,
                          report: str | None = None, log_moving_average: float | Array | None = None,
                          alpha: float | None = None, axis: int = 1, eps: float = DEFAULT_EPS,
                          block_size: int | None = None, memory_budget: int | None = None,
                          check_finite: bool = True, xp=None, need_grad: bool = True):
    r"""An MI bound of :mod:`nce_ref.mi` on the critic ``sim(x_i, y_j)/τ``, streamed.

    Equals ``getattr(nce_ref.mi, bound)(nce_ref.similarity(x, y, similarity=similarity) /
    temperature, ...)``, value and gradient, to rounding, without holding the N x N
    score matrix: rows of :math:`z_{ij} = s(x_i, y_j)/\tau` are computed in blocks,
    and forward plus backward cost the three N x N x D GEMMs of the floor (one for
    ``bound="infonce"``'s forward, which is :func:`nce_ref.info_nce`'s kernel).
    Peak extra memory: two blocks of rows plus O(N·D).

    With :math:`p_i = z_{ii}` (computed row-wise), :math:`|O| = N(N-1)`, and per row
    over the off-diagonal entries :math:`\ell_i = \log\sum_{j\ne i} e^{w_{ij}}`
    (:math:`w = z`; SMILE: :math:`w = \operatorname{clip}(z, -c, c)`):

    ==============  ==================================================================================
    ``bound``       value from the streamed statistics
    ==============  ==================================================================================
    ``"infonce"``   :math:`\log N - \mathcal{L}`, :math:`\mathcal{L}` = :func:`nce_ref.info_nce` (its kernel)
    ``"tuba"``      :math:`1 + \overline{p - b} - \exp(\operatorname{LSE}_i(\ell_i - b_i) - \log|O|)`
    ``"nwj"``       ``"tuba"`` with :math:`b = 1`
    ``"js"``        ``report="mi"``: ``"tuba"`` with :math:`b = 0` (NWJ at :math:`1 + f`);
                    ``report="objective"``: :math:`-\overline{\operatorname{softplus}(-p)} -
                    \frac{1}{|O|}\sum_{i\ne j}\operatorname{softplus}(z_{ij})`
    ``"dv"``        :math:`\bar p - (\operatorname{LSE}_i \ell_i - \log|O|)`
    ``"mine"``      ``"dv"``'s value; gradient normalised by :math:`\mu` (:func:`nce_ref.mi.mine`)
    ``"smile"``     ``"dv"`` with the clipped :math:`w` in :math:`\ell`
    ``"loo_upper"`` :math:`\overline{p - \ell} + \log(N - 1)`
    ``"interpolated"`` :math:`1 + \bar t`, :math:`t_i` the row terms of
                    :func:`nce_ref.mi.bounds.interpolated_rows` (its kernel, per block)
    ==============  ==================================================================================

    (:math:`\bar v` is the mean over i; :math:`b_i = \log a_i` the log-baseline.)

    Parameters
    ----------
    x, y : array, shape (N, D)
        The joint samples :math:`(x_i, y_i)`; ``scores[i, j] = sim(x_i, y_j)/τ`` has rows x.
        N >= 2 (N >= 1 for ``"infonce"``).
    log_baseline : float, 0-d array or array of shape (N,), optional
        ``bound="tuba"`` or ``"interpolated"`` only (default 0.0): :math:`\log a`, scalar
        or one value per conditioning sample (per x with ``axis=1``, per y with
        ``axis=0``).  Differentiable.
    bound : str, default "infonce"
        One of ``"infonce"``, ``"nwj"``, ``"tuba"``, ``"dv"``, ``"mine"``, ``"js"``,
        ``"interpolated"``, ``"smile"``, ``"loo_upper"``.
    similarity : {"dot", "cosine", "neg_sq_euclidean"}, default "dot"
        The bilinear similarities of :func:`nce_ref.similarity` ("neg_euclidean" is
        not a product of features and cannot be streamed).
    temperature : float or 0-d array, default 1.0
        :math:`\tau > 0`; differentiable.
    clip : float > 0, optional
        ``bound="smile"`` only (required): the clip :math:`c` (``inf`` is DV).
    report : {"mi", "objective"}, optional
        ``bound="js"`` only (default ``"mi"``), as in :func:`nce_ref.mi.js`.
    log_moving_average : float or 0-d array, optional
        ``bound="mine"`` only (required): :math:`\log\mu`, not differentiated.
    alpha : float in [0, 1], optional
        ``bound="interpolated"`` only (required): the weight of the batch mean, as in
        :func:`nce_ref.mi.interpolated`; not differentiated.
    axis : {1, 0}, default 1
        As in :mod:`nce_ref.mi.bounds`: 0 reads the score matrix transposed (each
        :math:`y_j` contrasts the :math:`x_i`); the bilinear similarities are
        symmetric, so this exchanges ``x`` and ``y``.
    eps : float, default 1e-12
        Norm floor of the cosine similarity.
    block_size, memory_budget : int, optional
        Rows per block, or the bytes of the two block buffers (the default as in
        :func:`nce_ref.info_nce`; the same errors).  ``"interpolated"`` holds about 20
        block buffers per row: NumPy runs it on chunks of a few rows at a time, other
        libraries on blocks with 1/10 of the rows (without ``block_size``).
    check_finite : bool, default True
        Refuse NaN/inf inputs (``ValueError``) and an estimate that overflows the
        dtype (``FloatingPointError``).
    xp : namespace, optional

    Returns
    -------
    estimate : 0-d array, in nats
        In the inputs' namespace, device and floating dtype (float16/bfloat16 are
        computed in float32).

    Raises
    ------
    ValueError, TypeError
        Unknown ``bound``, a non-bilinear ``similarity``, an option the
        bound does not take (or a missing required one), mismatched shapes, N too
        small, bad ``block_size``/``memory_budget``/``temperature``; the message
        names the argument.

    Notes
    -----
    Off the diagonal every supported gradient is
    :math:`G_{ij} = \partial I/\partial z_{ij} = -e_{ij}\, e^{\lambda_i - \Lambda}`:

    - TUBA, NWJ: :math:`e = e^{z - m}`,
      :math:`\lambda_i = m_i - b_i`, :math:`\Lambda = \log|O|`;
    - MINE: :math:`\lambda_i = m_i`, :math:`\Lambda = \log\mu + \log|O|`;
    - DV, SMILE: :math:`\lambda_i = m_i`, :math:`\Lambda = \operatorname{LSE}_i \ell_i`
      (known only after the pass), times :math:`[-c \le z_{ij} \le c]` for SMILE;
    - LOO: :math:`\lambda_i = -\log r_i`, :math:`\Lambda = \log N`;
    - JS (either report): :math:`e = \sigma(z)`, :math:`\lambda = 0`, :math:`\Lambda = \log|O|`;
    - interpolated: :math:`e = -G` (the VJP of
      :func:`~nce_ref.mi.bounds.interpolated_rows` on the block), :math:`\lambda = \Lambda = 0`.

    The diagonal's :math:`\partial I/\partial p_i` is :math:`1/N` (JS:
    :math:`\sigma(-p_i)/N`; interpolated: the diagonal of its block VJP, taken out of
    :math:`G`).  So :math:`\partial I/\partial a = -\operatorname{diag}(e^{\lambda-\Lambda})\,U`
    with :math:`U = e f_b` kept per row, and :math:`\partial I/\partial f_b =
    -e^{M - \Lambda}\sum_{\rm blocks} e^\top(e^{\lambda - M} \circ a)` with :math:`M`
    either :math:`\Lambda` itself or, for DV/SMILE, the running maximum of
    :math:`\lambda` (the accumulator is rescaled when it grows, as in an online
    softmax): one pass, three GEMMs.  :math:`\partial I/\partial\tau =
    -(\sum_i a_i\cdot\partial_{a_i} I + \sum_i p_i\,\partial_{p_i} I)/\tau`, O(N·D).

    Where no bound on :math:`|z|` is known from the similarity (cosine: :math:`1/\tau`),
    :math:`\max_i\lVert a_i\rVert\max_j\lVert f_{b,j}\rVert` (Cauchy–Schwarz, O(N·D), one
    read to the host; not for lazy arrays) serves: when it is small enough the row
    maximum is skipped and JS takes :math:`\sigma` and softplus from the one
    :math:`e^{z}` (``docs/mi.md`` §7.2).

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> from nce_ref import mi
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.standard_normal((64, 8)), rng.standard_normal((64, 8))
    >>> v = mi.bound_from_embeddings(x, y, bound="dv", similarity="cosine", temperature=0.1,
    ...                              block_size=10)
    >>> dense = mi.dv(nce_ref.similarity(x, y, similarity="cosine") / 0.1)
    >>> bool(np.isclose(v, dense, rtol=1e-12))
    True
    >>> v, g = nce_ref.value_and_grad(mi.bound_from_embeddings)(x, y, 0.5, bound="tuba")
    >>> sorted(g), g["x"].shape
    (['log_baseline', 'temperature', 'x', 'y'], (64, 8))
    >>> v = mi.bound_from_embeddings(x, y, 0.5, bound="interpolated", alpha=0.01, block_size=10)
    >>> bool(np.isclose(v, mi.interpolated(nce_ref.similarity(x, y, similarity="dot"), 0.5, alpha=0.01),
    ...                 rtol=1e-12))
    True
    """
    check_option(bound, "bound", STREAMED_BOUNDS)
    kind, eps = check_similarity(similarity, eps)
    if kind not in BILINEAR:
        raise ValueError(f"`similarity` must be one of {', '.join(map(repr, BILINEAR))} (a product "
                         f"of row features, which streams); got {kind!r}: compose "
                         f"nce_ref.mi.{bound}(nce_ref.similarity(x, y, similarity={kind!r}) / temperature)")
    _check_options(bound, log_baseline, clip, report, log_moving_average, alpha)
    a_opt = check_alpha(alpha) if bound == "interpolated" else None
    ax = check_axis(axis)
    arrays = {"x": x, "y": y}
    if bound in ("tuba", "interpolated") and hasattr(log_baseline, "ndim") and log_baseline.ndim == 1:
        arrays["log_baseline"] = log_baseline
    ctx = resolve(arrays, ndims={"x": 2, "y": 2}, xp=xp, check_finite=check_finite)
    xp = ctx.xp
    n, _ = check_pair(x, y, "x", "y")
    if bound != "infonce" and n < 2:
        raise ValueError(f"bound={bound!r} needs N >= 2 joint samples (its marginal term averages "
                         f"the off-diagonal pairs); got `x` of shape {tuple(x.shape)}")
    tau, tau0 = scalar_param(ctx, temperature, "temperature", positive=True)
    block = choose_block(n, n, ctx.finfo().bits // 8, block_size=block_size,
                         memory_budget=memory_budget, like=x)
    if bound == "interpolated" and block_size is None and not np_namespace(xp):
        block = max(1, block // (_INTERPOLATED_BUFFERS // 2))  # NumPy: in chunks of rows
    if ax == 0:  # rows are y: the similarities are symmetric, so exchange the operands
        rows_in, cols_in, names = y, x, ("y", "x")
    else:
        rows_in, cols_in, names = x, y, ("x", "y")

    if bound == "infonce":
        return _infonce(ctx, rows_in, cols_in, names, n, temperature=temperature, kind=kind, eps=eps,
                        block_size=block, need_grad=need_grad)

    clip_c = check_real(clip, "clip", positive=True, finite=False) if bound == "smile" else None
    report = check_option("mi" if report is None else report, "report", JS_REPORTS)
    if bound in ("tuba", "interpolated"):
        lb, to_grad = baseline_param(ctx, 0.0 if log_baseline is None else log_baseline, n)
        b = lb[:, 0] if lb.ndim == 2 else lb
    else:
        b = {"nwj": 1.0, "js": 0.0}.get(bound, 0.0)
    log_mu = (log_moving_average_param(ctx, log_moving_average, "log_moving_average")
              if bound == "mine" else None)

    a_in, b_in = ctx.to_compute(rows_in), ctx.to_compute(cols_in)
    fa, fb, back_f = bilinear_features(a_in, b_in, kind=kind, eps=eps, xp=xp)
    s_pos, back_pos = pair_sim_from_features(a_in, b_in, fa, fb, kind=kind, eps=eps, xp=xp)
    pos = s_pos / tau
    a = fa / tau
    # a bound on |w| known before any GEMM: cosine scores lie in [-1, 1]; otherwise
    # Cauchy–Schwarz on the features (one host read, O(N·D)); SMILE clips
    tau_value = concrete_float(tau0)
    wbound = 1.0 / tau_value if kind == "cosine" and tau_value is not None else norm_bound(a, fb, xp)
    if clip_c is not None and math.isfinite(clip_c):
        wbound = clip_c if wbound is None else min(wbound, clip_c)
    shift_free = logits_shift_free(wbound, n, ctx.dtype, xp)
    grad = need_grad
    flush = grad and not shift_free and needs_flush(
        ctx.dtype, None if wbound is None else 2.0 * wbound, n * n, xp)
    log_o = math.log(n * (n - 1))

    if bound == "js":
        objective = report == "objective"

        def js_bounded(zs):
            # |z| is bounded: E = e^z is a normal number, one exp serves the value and the
            # gradient: softplus(z) = log1p(E), σ(z) = E/(1 + E) (in place), e^{z − 0} = E
            ez = exp_inplace(zs, xp)
            if not objective:  # the row sums of E, before σ may overwrite it
                st = (xp.zeros((ez.shape[0],), dtype=ez.dtype, device=ctx.device), xp.sum(ez, axis=1))
            sp, sg = softplus_and_sigmoid_of_exp(ez, softplus=objective, sigmoid=grad, overwrite=True,
                                                 xp=xp)
            return ((xp.sum(sp, axis=1),) if objective else st), sg

        def rows(z, r0, r1):
            z = mask_band(z, r0, r1, 0, xp)  # softplus(-inf) = sigmoid(-inf) = 0
            lam = xp.zeros((r1 - r0,), dtype=z.dtype, device=ctx.device) if grad else None
            if shift_free:
                if np_owns(z, xp):  # σ lands in z itself, by chunks of rows in cache
                    st = by_chunks(lambda c0, c1: js_bounded(z[c0:c1])[0], z.shape[0],
                                   z.shape[1] * z.itemsize)
                    return st, (z if grad else None), lam
                st, sg = js_bounded(z)
                return st, sg, lam
            e = None
            if objective:  # one exp(−|z|) for both
                if grad:
                    sp, e = softplus_and_sigmoid(z, overwrite=True, xp=xp)
                else:
                    sp = softplus(z, xp=xp)
                st = (xp.sum(sp, axis=1),)
            else:  # σ(z) and the row's shifted e^{z − m}: unbounded z needs both exps
                if grad:
                    e = sigmoid(z, xp=xp)
                m, r, _ = _row_lse(z, r0, r1, clip=None, shift_free=False, want=False,
                                   flush=False, xp=xp)
                st = (m, r)
            if e is not None and flush:
                e = flush_below(e, xp.finfo(e.dtype).smallest_normal, xp=xp)
            return st, e, lam
        fixed = log_o
    elif bound == "interpolated":
        def interpolated_part(z, r0, r1):
            """``(terms, dpos, dlb), dz`` of rows ``[r0, r1)`` (``z`` their scores)."""
            # the joint scores: the accurate row-wise pos (as every bound's value uses)
            z, _ = set_band(z, r0, r1, 0, pos[r0:r1], xp, read=True)
            terms, back = interpolated_rows(z, b if getattr(b, "ndim", 0) == 0 else
                                            xp.expand_dims(b[r0:r1], axis=1), r0, alpha=a_opt, xp=xp)
            if not grad:
                return (terms, None, None), None
            dz, dlb_rows = back(1.0 / n)
            # the diagonal's share goes through pos (dpos), the rest through the two GEMMs
            dz, dpos_rows = set_band(dz, r0, r1, 0, 0.0, xp, read=True)
            return (terms, dpos_rows, dlb_rows), dz

        def rows(z, r0, r1):
            lam = xp.zeros((r1 - r0,), dtype=z.dtype, device=ctx.device)
            if np_owns(z, xp):
                # NumPy: the kernel's many passes on a few rows at a time, in cache, on two
                # threads; −dz overwrites the block's scores
                def part(c0, c1):
                    st, dz = interpolated_part(z[c0:c1], r0 + c0, r0 + c1)
                    if dz is not None:
                        np_negate_into(dz, z[c0:c1])
                    return st

                # chunks of ~Tuning.chunk_bytes / (2 N itemsize) rows (32 in float32 at N = 4096): its
                # ~20 temporaries then sit in L3; fewer rows cost more in Python than in memory
                st = by_chunks(part, r1 - r0, 2 * z.shape[1] * z.itemsize)
                return (st[:1] if not grad else st), (z if grad else None), (lam if grad else None)
            st, dz = interpolated_part(z, r0, r1)
            if not grad:
                return st[:1], None, None
            return st, -dz, lam
        fixed = 0.0  # G = dz itself: e = −dz, λ = Λ = 0
    else:
        def rows(z, r0, r1):
            m, r, e = _row_lse(z, r0, r1, clip=clip_c, shift_free=shift_free, want=grad,
                               flush=flush, xp=xp)
            if not grad:
                return (m, r), None, None
            if bound in ("tuba", "nwj"):
                lam = m - (b[r0:r1] if getattr(b, "ndim", 0) == 1 else b)
            elif bound == "loo_upper":
                lam = -xp.log(r)
            else:
                lam = m
            return (m, r), e, lam
        fixed = {"tuba": log_o, "nwj": log_o, "mine": None if log_mu is None else log_mu + log_o,
                 "loo_upper": math.log(n)}.get(bound)

    stats, gr = _sweep(a, fb, rows, block=block, grad=grad, fixed=fixed, xp=xp)

    def mean(v):
        return xp.sum(v) / float(n)

    sg_pos = None
    if bound == "js" and report == "objective":
        sp_pos, sg_pos = softplus_and_sigmoid(-pos, xp=xp)
        value = -mean(sp_pos) - xp.sum(stats[0]) / float(n * (n - 1))
    elif bound == "interpolated":
        value = 1.0 + mean(stats[0])
    else:
        ell = stats[0] + xp.log(stats[1])  # the off-diagonal row log-sum-exp
        if bound in ("tuba", "nwj", "js"):
            marg_log = logsumexp(ell - b, axis=0, xp=xp) - log_o
            value = 1.0 + mean(pos - b) - exp_quiet(marg_log, xp=xp)
        elif bound == "loo_upper":
            value = mean(pos - ell) + math.log(n - 1)
        else:  # dv, mine, smile
            lse_all = logsumexp(ell, axis=0, xp=xp)
            value = mean(pos) - (lse_all - log_o)
    value = ctx.result_finite(value, "mi.bound_from_embeddings")
    if not grad:
        return ctx.to_out(value), None

    u, lam, db_acc, m_run = gr
    big_lambda = lse_all if bound in ("dv", "smile") else fixed
    da = -u * xp.expand_dims(exp_quiet(lam - big_lambda, xp=xp), axis=1)
    dfb = -db_acc if m_run is None else -db_acc * xp.exp(m_run - big_lambda)
    if bound == "js":
        dpos = (sigmoid(-pos, xp=xp) if sg_pos is None else sg_pos) / float(n)
    elif bound == "interpolated":
        dpos = stats[1]
    else:
        dpos = xp.full_like(pos, 1.0 / n)
    dtau = -(xp.sum(a * da) + xp.sum(dpos * pos)) / tau
    dfa, dfb, g_pa, g_pb = back_pos(dpos / tau, da / tau, dfb)
    ga, gb = back_f(dfa, dfb)
    ga, gb = plus(ga, g_pa), plus(gb, g_pb)
    dlb = None
    if bound == "tuba":  # ∂I/∂b_i = −1/N + Σ_{j≠i} e^{z_ij − b_i}/|O|
        dlb = exp_quiet(ell - b - log_o, xp=xp) - 1.0 / n
    elif bound == "interpolated":
        dlb = stats[2]
    grads = {names[0]: ga, names[1]: gb}
    inputs = {"x": x, "y": y}

    def vjp(g):
        g = ctx.to_compute(g)
        out = {k: ctx.like(v * g, inputs[k]) for k, v in grads.items()}
        out["temperature"] = scalar_grad(ctx, dtau * g, tau0)
        if dlb is not None:
            out["log_baseline"] = to_grad(dlb * g)
        return out

    return ctx.to_out(value), vjp


def _infonce(ctx, rows_in, cols_in, names, n, *, temperature, kind, eps, block_size, need_grad):
    """``log N − L`` with ``L`` from :func:`nce_ref.info_nce`'s engine (reused)."""
    kw = dict(temperature=temperature, similarity=kind, eps=eps, block_size=block_size,
              method="streamed", check_finite=False, xp=ctx.xp)
    if need_grad:
        loss, back = vjp_of(info_nce, rows_in, cols_in, **kw)
    else:
        loss, back = info_nce(rows_in, cols_in, **kw), None
    value = ctx.to_out(ctx.result_finite(math.log(n) - loss, "mi.bound_from_embeddings"))
    if back is None:
        return value, None

    def vjp(g):
        gl = back(-g)
        return {names[0]: gl["query"], names[1]: gl["key"], "temperature": gl["temperature"]}

    return value, vjp
