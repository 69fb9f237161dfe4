r"""Variational bounds on mutual information, as objectives on a critic score matrix.

Every function here takes the critic's scores on a batch of N joint samples
:math:`(x_i, y_i)`:

.. math::

    \texttt{scores}[i, j] = f(x_i, y_j), \qquad i, j = 1..N,

**rows are x, columns are y** (``axis=1``, the default; pass ``axis=0`` for a matrix
whose rows are y).  The diagonal holds samples of the joint :math:`p(x, y)`; the
off-diagonal entries :math:`O = \{(i, j): i \ne j\}`, :math:`|O| = N(N-1)`, hold
samples of the product of the marginals :math:`p(x)p(y)`.  Every marginal term is
taken over the off-diagonal entries only (masked, never multiplied by zero).
Functions that use that set require N >= 2.

Where a bound normalises per sample (InfoNCE, the interpolated bound, the
leave-one-out upper bound), each :math:`x_i` contrasts the :math:`y_j` along ``axis``
(the convention of :func:`nce_ref.info_nce_from_scores`), and a per-sample baseline
has one value per :math:`x_i`.  ``axis=0`` exchanges the roles: each :math:`y_j`
contrasts the :math:`x_i` and the baselines are one value per y, which is the
orientation of Poole et al.'s derivations (:math:`q(x|y)`, :math:`a(y)`, the upper
bound for a known :math:`p(y|x)`).  MI being symmetric, both are bounds on the same
:math:`I(X;Y)`.  The pooled bounds (NWJ, TUBA with a scalar baseline, DV, MINE, JS,
SMILE) do not depend on the orientation.

Each estimate is in nats and is a 0-d array of the inputs' namespace, device and
floating dtype.  Gradients are hand-derived and registered (``nce_ref.value_and_grad``);
``docs/mi.md`` derives each one with the symbols of this file.

References
----------
Poole, Ozair, van den Oord, Alemi, Tucker, "On Variational Bounds of Mutual
Information", ICML 2019.  Song & Ermon, "Understanding the Limitations of
Variational Mutual Information Estimators", ICLR 2020.  Belghazi et al., "Mutual
Information Neural Estimation", ICML 2018.  Nguyen, Wainwright, Jordan (NWJ), IEEE
Trans. Inf. Theory 2010.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import is_array_api_obj, is_lazy_array

from .._array import check_int, check_option, check_real, resolve, scalar_grad, scalar_param
from .._ops import logsumexp, sigmoid, softmax_from_lse, softplus_and_sigmoid
from ..autodiff import differentiable
from ..autodiff import vjp as vjp_of
from ..losses.infonce import info_nce_from_scores

Array = Any

__all__ = [
    "infonce",
    "nwj",
    "tuba",
    "dv",
    "mine",
    "mine_update",
    "js",
    "interpolated",
    "smile",
    "loo_upper",
]

JS_REPORTS = ("mi", "objective")


# -- validation and orientation ------------------------------------------------------------

def check_axis(axis: Any) -> int:
    a = check_int(axis, "axis")
    if a not in (0, 1, -1, -2):
        raise ValueError(f"`axis` must be 1 (rows are x, the default) or 0 (rows are y); got {axis}")
    return 1 if a in (1, -1) else 0


def _prepare(scores: Array, *, axis: Any, check_finite: bool, allow_neg_inf: bool, xp: Any,
             min_n: int, baseline: Array | None = None):
    """Validate ``scores`` (square, N >= min_n) and return ``(ctx, C, n, untranspose)``.

    ``allow_neg_inf``: ``-inf`` scores pass (NaN and ``+inf`` are still refused when
    ``check_finite``), and the result may be infinite (``ctx.check_finite`` is off).

    ``C`` is the score matrix in the compute dtype with rows x and columns y
    (the transpose of ``scores`` when ``axis=0``); ``untranspose`` maps a gradient
    with respect to ``C`` back to ``scores``' orientation.
    """
    ax = check_axis(axis)
    arrays = {"scores": scores}
    if baseline is not None and is_array_api_obj(baseline) and baseline.ndim == 1:
        arrays["log_baseline"] = baseline
    if not isinstance(allow_neg_inf, bool):
        raise TypeError(f"`allow_neg_inf` must be a bool; got {allow_neg_inf!r}")
    ctx = resolve(arrays, ndims={"scores": 2}, xp=xp, check_finite=check_finite and not allow_neg_inf)
    xp = ctx.xp
    if check_finite and allow_neg_inf and not is_lazy_array(scores):
        bad = xp.isnan(scores) | (scores == math.inf)
        if bool(xp.any(bad)):
            raise ValueError("`scores` must not hold NaN or +inf (allow_neg_inf=True admits -inf "
                             "only); pass check_finite=False to skip this check")
    n, m = scores.shape
    if n != m:
        raise ValueError(
            "`scores` must be square (N, N): scores[i, j] = f(x_i, y_j) for a batch of N "
            f"joint samples, the joint pairs on the diagonal; got shape {(n, m)}")
    if n < min_n:
        raise ValueError(
            f"`scores` must be at least {min_n} x {min_n}: the product-of-marginals term "
            f"averages the off-diagonal entries; got shape {(n, m)}")
    c = ctx.to_compute(scores)
    if ax == 0:
        c = xp.matrix_transpose(c)

        def untranspose(g):
            return xp.matrix_transpose(g)
    else:
        def untranspose(g):
            return g

    return ctx, c, n, untranspose


def baseline_param(ctx, log_baseline: Any, n: int):
    """``log_baseline`` as an (N, 1) column (or a 0-d array) and its gradient's caster.

    Returns ``(lb, to_grad)``: ``lb`` broadcasts against ``(N, N)``;
    ``to_grad(d)`` maps the cotangent of the (N,) per-row baseline to the argument's.
    """
    xp = ctx.xp
    if is_array_api_obj(log_baseline) and log_baseline.ndim == 1:
        if log_baseline.shape[0] != n:
            raise ValueError(
                f"`log_baseline` must be a scalar or have one value per conditioning sample, "
                f"shape ({n},); got shape {tuple(log_baseline.shape)}")
        lb = xp.expand_dims(ctx.to_compute(log_baseline), axis=1)

        def to_grad(d):
            return ctx.like(d, log_baseline)

        return lb, to_grad
    if is_array_api_obj(log_baseline) and log_baseline.ndim > 1:
        raise ValueError(f"`log_baseline` must be a scalar, a 0-d array or a 1-D array of shape "
                         f"({n},); got shape {tuple(log_baseline.shape)}")
    lb, original = scalar_param(ctx, log_baseline, "log_baseline")

    def to_grad_scalar(d):
        return scalar_grad(ctx, xp.sum(d), original)

    return lb, to_grad_scalar


def _diag_mask(ctx, n: int):
    xp = ctx.xp
    diag = ctx.eye(n, dtype=xp.bool)
    return diag, xp.logical_not(diag)


def _diagonal(c: Array, diag: Array, *, xp) -> Array:
    """The diagonal of ``c`` as an (N,) array (off-diagonal entries never enter the sum)."""
    return xp.sum(xp.where(diag, c, xp.zeros_like(c)), axis=1)


# -- the shared pieces ------------------------------------------------------------------

def _offdiag_lme(z: Array, off: Array, *, xp):
    r"""Pooled ``log((1/|O|) Σ_{i≠j} e^{z_ij})`` over the off-diagonal entries.

    Returns ``(lme, log_count)`` with ``lme`` 0-d; the masked logsumexp of
    ``nce_ref._ops`` takes its maximum over the kept entries only.
    """
    n = z.shape[0]
    log_count = math.log(n * (n - 1))
    flat = xp.reshape(z, (n * n,))
    lse = logsumexp(flat, xp.reshape(off, (n * n,)), axis=0, xp=xp)
    return lse - log_count, log_count


def exp_quiet(x: Array, *, xp) -> Array:
    """``e^x`` that returns ``inf`` past the dtype's range without an overflow warning.

    The only overflow left in the bounds is a genuine one (NWJ/TUBA's mean of
    ``e^f`` beyond the dtype); ``ctx.result_finite`` turns it into a clear error.
    """
    big = x > math.log(float(xp.finfo(x.dtype).max))
    e = xp.exp(xp.where(big, xp.zeros_like(x), x))
    return xp.where(big, xp.full_like(x, math.inf), e)


def _offdiag_weights(z: Array, off: Array, log_den: Array, log_count: float, *, xp) -> Array:
    r"""``e^{z_ij} / (|O| e^{log_den})`` on the off-diagonal entries, 0 on the diagonal.

    With ``log_den`` the pooled log-mean-exp of ``z`` these are the pooled softmax
    weights (the VJP of the log-mean-exp, as ``softmax_from_lse``: every exponent
    is then <= 0); MINE passes its moving average instead.
    """
    shift = log_den + log_count
    ok = xp.isfinite(shift)
    shift = xp.where(ok, shift, xp.zeros_like(shift))
    w = exp_quiet(xp.where(off, z, xp.full_like(z, -math.inf)) - shift, xp=xp)
    return xp.where(ok, w, xp.zeros_like(w))


def _offdiag_mean_weights(z: Array, off: Array, log_count: float, *, xp) -> Array:
    r"""``e^{z_ij} / K`` on the off-diagonal entries, 0 on the diagonal (one ``exp``).

    ``log_count`` is :math:`\log K`: :math:`K = |O|` for the pooled mean
    :math:`\frac{1}{|O|}\sum_O e^{z}` (this is its derivative), :math:`N - 1` for a
    per-row mean (:func:`interpolated_rows`); it overflows only where that mean does.
    """
    return exp_quiet(xp.where(off, z, xp.full_like(z, -math.inf)) - log_count, xp=xp)


def _tuba_fwd(ctx, c: Array, lb: Array, diag: Array, off: Array):
    r"""``1 + mean_i (C_ii − b_i) − (1/|O|) Σ_{i≠j} e^{C_ij − b_i}`` and its VJP.

    ``lb`` (``b``) broadcasts against (N, N) along rows (one value per x_i) or is
    0-d.  ``back(g) -> (dC, db)`` with ``db`` of shape (N, 1) (rows' cotangents).
    """
    xp = ctx.xp
    n = c.shape[0]
    z = c - lb
    lme, log_count = _offdiag_lme(z, off, xp=xp)
    marg = exp_quiet(lme, xp=xp)
    joint = xp.mean(_diagonal(z, diag, xp=xp))
    value = 1.0 + joint - marg

    def back(g):
        w = _offdiag_mean_weights(z, off, log_count, xp=xp)  # e^{z}/|O| on O
        dz = g * (xp.astype(diag, c.dtype) / float(n) - w)
        db = -xp.sum(dz, axis=1, keepdims=True)
        return dz, db

    return value, back


def _dv_fwd(ctx, c: Array, diag: Array, off: Array, *, clip: float | None = None,
            log_denominator: Array | None = None):
    r"""``mean_i C_ii − log((1/|O|) Σ_{i≠j} e^{clip(C_ij)})`` and its VJP.

    ``clip=None`` is Donsker–Varadhan, a float is SMILE's clipped partition.
    ``log_denominator`` (MINE) replaces the batch log-mean-exp in the gradient's
    denominator; the value is unchanged.
    """
    xp = ctx.xp
    n = c.shape[0]
    cc = c if clip is None else xp.clip(c, min=-clip, max=clip)
    lme, log_count = _offdiag_lme(cc, off, xp=xp)
    value = xp.mean(_diagonal(c, diag, xp=xp)) - lme

    def back(g):
        den = lme if log_denominator is None else log_denominator
        w = _offdiag_weights(cc, off, den, log_count, xp=xp)
        if clip is not None:  # the clip passes the gradient inside [−clip, clip] (torch.clamp's)
            inside = (c >= -clip) & (c <= clip)
            w = xp.where(inside, w, xp.zeros_like(w))
        return g * (xp.astype(diag, c.dtype) / float(n) - w)

    return value, back


def _safe_log(s: Array, *, xp) -> Array:
    """``log s`` for ``s >= 0``, ``-inf`` at 0, without a divide-by-zero warning."""
    pos = s > 0
    return xp.where(pos, xp.log(xp.where(pos, s, xp.ones_like(s))), xp.full_like(s, -math.inf))


def _safe_recip(s: Array, *, xp) -> Array:
    pos = s > 0
    return xp.where(pos, 1.0 / xp.where(pos, s, xp.ones_like(s)), xp.zeros_like(s))


def loo_log_mean_exp(c: Array, *, xp):
    r"""Leave-one-out log-mean-exp along the rows and its VJP.

    ``L[i, k] = log( (1/(N−1)) Σ_{j≠k} e^{C_ij} )`` for every row i and left-out
    column k, in O(N²) without cancellation: with ``a_i`` the (first) argmax of row
    i, ``m1`` its maximum and ``m2`` the maximum of the others,

    - for ``k ≠ a_i``: ``L = m1 + log(T1_i − E1_ik)``, ``E1 = e^{C − m1}``,
      ``T1 = Σ_j E1_ij``.  The row's maximum stays in the sum, so
      ``T1 − E1_ik ≥ max(1, T1/2)``: the subtraction loses at most one bit;
    - for ``k = a_i``: ``L = m2 + log Σ_{j≠a_i} e^{C_ij − m2}``, summed directly.

    Rows of ``-inf`` give ``-inf`` (never NaN, never a warning).  The VJP
    ``∂L_ik/∂C_ij = e^{C_ij − L_ik}/(N−1)`` (j ≠ k) is evaluated in the same two
    parts, every factor bounded by 1: see ``docs/mi.md``, "The interpolated bound".
    """
    n = c.shape[1]
    dev_idx = xp.argmax(c, axis=1)
    cols = xp.arange(n, dtype=dev_idx.dtype, device=_device(c))
    is_arg = xp.expand_dims(cols, axis=0) == xp.expand_dims(dev_idx, axis=1)
    m1 = xp.max(c, axis=1, keepdims=True)
    s1 = xp.where(xp.isfinite(m1), m1, xp.zeros_like(m1))
    e1 = xp.exp(c - s1)
    t1 = xp.sum(e1, axis=1, keepdims=True)
    rest = t1 - e1  # exact enough for k != argmax (see above)
    c_rest = xp.where(is_arg, xp.full_like(c, -math.inf), c)
    m2 = xp.max(c_rest, axis=1, keepdims=True)
    s2 = xp.where(xp.isfinite(m2), m2, xp.zeros_like(m2))
    e2 = xp.exp(c_rest - s2)  # 0 at the argmax
    t2 = xp.sum(e2, axis=1, keepdims=True)
    log_n1 = math.log(n - 1)
    loo_other = s1 + _safe_log(rest, xp=xp)
    loo_arg = s2 + _safe_log(t2, xp=xp)
    loo = xp.where(is_arg, xp.broadcast_to(loo_arg, c.shape), loo_other) - log_n1

    def back(G):
        # k != a_i: e^{C_ij − lse_ik} = E1_ij · R_ik with R = 1/(T1 − E1) <= 1
        r = xp.where(is_arg, xp.zeros_like(rest), _safe_recip(rest, xp=xp))
        w = G * r
        sw = xp.sum(w, axis=1, keepdims=True)
        part1 = e1 * (sw - w)
        # k = a_i: e^{C_ij − lse_ia} = E2_ij / T2 (j != a_i)
        g_arg = xp.sum(xp.where(is_arg, G, xp.zeros_like(G)), axis=1, keepdims=True)
        part2 = g_arg * (e2 * _safe_recip(t2, xp=xp))
        return part1 + part2

    return loo, back


def check_alpha(alpha: Any) -> float:
    a = check_real(alpha, "alpha", nonnegative=True)
    if not a <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1]; got {alpha}")
    return a


def interpolated_rows(c: Array, lb: Array | float, r0: int, *, alpha: float, xp):
    r"""Rows ``r0 .. r0 + R − 1`` of the interpolated bound and their VJP (the one kernel).

    ``c`` is an (R, N) block of rows of the score matrix, rows x, whose joint score of
    row i (global index ``r0 + i``) sits at column ``r0 + i``; ``lb`` the rows'
    log-baselines, (R, 1), or 0-d.  :func:`interpolated` calls it once on the whole
    matrix, :func:`nce_ref.mi.bound_from_embeddings` once per streamed block: every
    quantity is row-local.  Returns ``(terms, back)``, ``terms`` of shape (R,):

    .. math::

        t_i = c_{ii} - \frac{1}{N-1}\sum_{k \ne i} B_{ik}
              - \frac{1}{N-1}\sum_{j \ne i} e^{c_{ij} - B_{ii}},
        \qquad I_\alpha = 1 + \frac1N \sum_{i=1}^N t_i,

    and ``back(w) -> (dc (R, N), dlb (R,))``, the VJP of :math:`w \sum_i t_i` for a
    scalar ``w`` (``g/N`` for the bound).  ``docs/mi.md``, "The interpolated bound".
    """
    n = c.shape[1]
    rows = xp.arange(r0, r0 + c.shape[0], device=_device(c))
    diag = xp.expand_dims(xp.arange(n, device=_device(c)), axis=0) == xp.expand_dims(rows, axis=1)
    off = xp.logical_not(diag)
    log_a = math.log(alpha) if alpha > 0 else -math.inf
    log_1ma = math.log1p(-alpha) if alpha < 1 else -math.inf
    loo, back_loo = loo_log_mean_exp(c, xp=xp)
    both = xp.stack([loo + log_a, xp.broadcast_to(lb + log_1ma, c.shape)])
    B = logsumexp(both, axis=0, keepdims=True, xp=xp)  # (1, R, N)
    B2 = B[0, ...]
    b_diag = xp.expand_dims(_diagonal(B2, diag, xp=xp), axis=1)
    # B_ii = -inf only when alpha = 1 and every other y_j of row i is ruled out (-inf):
    # the row's marginal terms are then 0 (their limit as alpha -> 1), never -inf + inf
    live = b_diag > -math.inf
    z = xp.where(live, c - xp.where(live, b_diag, xp.zeros_like(b_diag)), xp.full_like(c, -math.inf))
    # e^{z_ij}/(N−1) on the off-diagonal entries: each <= 1/alpha (B_ii >= L_ii + log alpha)
    w = _offdiag_mean_weights(z, off, math.log(n - 1), xp=xp)
    terms = (_diagonal(c, diag, xp=xp)
             - xp.sum(xp.where(off, B2, xp.zeros_like(B2)), axis=1) / float(n - 1)
             - xp.sum(w, axis=1))

    def back(g):
        fd = xp.astype(diag, c.dtype)
        dz = -g * w                                      # ∂/∂z_ij of −Σ_j e^{z_ij}/(N−1)
        db_diag = -xp.sum(dz, axis=1, keepdims=True)     # z_ij = c_ij − B_ii
        dB = xp.where(off, xp.full_like(c, -1.0) * (g / float(n - 1)), db_diag)
        p = softmax_from_lse(both, B, xp=xp)             # the weights of B's two terms
        dlb = xp.sum(dB * p[1, ...], axis=1)
        dc = g * fd + dz + back_loo(dB * p[0, ...])
        return dc, dlb

    return terms, back


def _device(x):
    from array_api_compat import device

    return device(x)


# -- the bounds ----------------------------------------------------------------------------

@differentiable("mi.infonce", wrt=("scores",))
def infonce(scores: Array, /, *, axis: int = 1, allow_neg_inf: bool = False,
        check_finite: bool = True, xp=None):
    r"""The InfoNCE lower bound :math:`\log N - \mathcal{L}` (van den Oord et al.; Poole et al. eq. 12).

    .. math::

        I_{\rm NCE} = \frac1N \sum_{i=1}^N \log
            \frac{e^{f(x_i, y_i)}}{\frac1N \sum_{j=1}^N e^{f(x_i, y_j)}}
          = \log N - \mathcal{L},

    :math:`\mathcal{L}` being :func:`nce_ref.info_nce_from_scores` (the positive kept
    in the denominator).  For any critic and any batch, :math:`I_{\rm NCE} \le \log N`
    (each term is the log of N times a probability), and
    :math:`\mathbb{E}[I_{\rm NCE}] \le I(X;Y)`.  The optimal critic is
    :math:`\log p(y|x)/p(y) + c(x)`.

    Parameters
    ----------
    scores : array, shape (N, N)
        ``scores[i, j] = f(x_i, y_j)``: rows are x, the joint pairs on the diagonal.
    axis : {1, 0}, default 1
        The axis of ``scores`` indexing y.  With 1 each :math:`x_i` contrasts the
        :math:`y_j` (softmax along the rows); with 0 the matrix is read transposed
        (rows are y), so each :math:`x_i` contrasts down a column.
    allow_neg_inf : bool, default False
        ``-inf`` scores are part of the input: a critic that rules a pair out (e.g.
        :func:`nce_ref.mi.critics.discrete` off the support).  NaN and ``+inf`` are
        still refused (with ``check_finite``), and the estimate may then be infinite.
    check_finite : bool, default True
        Refuse NaN and ±inf scores (and a result that overflows); ``False`` skips
        the checks (for speed, or lazy arrays), whatever the values.
    xp : namespace, optional

    Returns
    -------
    estimate : 0-d array, in nats

    See Also
    --------
    nce_ref.mi.bound_from_embeddings
        This bound on two embedding batches, streamed.
    nce_ref.info_nce_from_scores
        The loss ``L`` itself.
    nce_ref.mi.theory.expected_infonce_bound
        Its exact expectation at finite N.
    nce_ref.mi.loo_upper
        The leave-one-out upper bound.

    Notes
    -----
    Gradient: :math:`-\partial\mathcal{L}/\partial s_{ij} = (\delta_{ij} - p_{ij})/N`,
    :math:`p` the row softmax; the VJP of :func:`nce_ref.info_nce_from_scores`, negated.

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref import mi
    >>> float(mi.infonce(np.diag([50.0, 50.0, 50.0, 50.0])))   # a perfect critic: log N
    1.3862943611198906
    >>> float(mi.infonce(np.zeros((4, 4))))                      # an uninformative one: 0
    0.0
    """
    ctx, c, n, untranspose = _prepare(scores, axis=axis, check_finite=check_finite,
                      allow_neg_inf=allow_neg_inf, xp=xp, min_n=1)
    # the objective of nce_ref.info_nce_from_scores, reused (on the compute-dtype matrix)
    loss, back_loss = vjp_of(info_nce_from_scores, c, check_finite=False, xp=ctx.xp)
    value = ctx.result_finite(math.log(n) - loss, "mi.infonce")

    def back(g):
        dc = back_loss(-ctx.to_compute(g))["scores"]
        return {"scores": ctx.like(untranspose(dc), scores)}

    return ctx.to_out(value), back


@differentiable("mi.tuba", wrt=("scores", "log_baseline"), scalars=("log_baseline",))
def tuba(scores: Array, log_baseline: float | Array = 0.0, /, *, axis: int = 1,
         allow_neg_inf: bool = False,
        check_finite: bool = True, xp=None):
    r"""The tractable unnormalized Barber–Agakov bound (TUBA, Poole et al. eq. 8).

    .. math::

        I_{\rm TUBA} = 1 + \frac1N\sum_i \big(f(x_i, y_i) - \log a_i\big)
            - \frac{1}{N(N-1)} \sum_{i \ne j} e^{f(x_i, y_j) - \log a_i},

    a lower bound on :math:`I(X;Y)` in expectation for any critic and any positive
    baseline :math:`a` (from :math:`\log Z \le Z/a + \log a - 1`).  It is tight for
    :math:`f = \log p(y|x)/p(y) + c(x)` and :math:`a = e^{c(x)}`.

    Parameters
    ----------
    scores : array, shape (N, N)
        ``scores[i, j] = f(x_i, y_j)``: rows are x, joint pairs on the diagonal; N >= 2.
    log_baseline : float, 0-d array or array of shape (N,), default 0.0
        :math:`\log a`: a scalar, or one value per conditioning sample: per
        :math:`x_i` with ``axis=1`` (the default), per :math:`y_j` with ``axis=0``
        (Poole et al.'s :math:`a(y)`).  Differentiable.
    axis : {1, 0}, default 1
        The axis of ``scores`` indexing y.  The pooled value does not depend on it
        except through which samples the baseline belongs to.
    allow_neg_inf, check_finite : bool
        As in :func:`infonce`.
    xp : namespace, optional

    Returns
    -------
    estimate : 0-d array, in nats

    See Also
    --------
    nce_ref.mi.bound_from_embeddings
        This bound on two embedding batches, streamed.
    nce_ref.mi.nwj
        TUBA with the baseline ``a = e``.
    nce_ref.mi.interpolated
        Between InfoNCE and TUBA.

    Notes
    -----
    With :math:`z_{ij} = s_{ij} - \log a_i` and :math:`M = \frac{1}{|O|}\sum_O e^{z}`:
    :math:`\partial I/\partial s_{ii} = 1/N`,
    :math:`\partial I/\partial s_{ij} = -e^{z_{ij}}/|O|` (:math:`i \ne j`), and
    :math:`\partial I/\partial \log a_i = -1/N + \sum_{j\ne i} e^{z_{ij}}/|O|`
    (summed over i for a scalar baseline: :math:`M - 1`).

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref import mi
    >>> s = np.array([[1.0, -1.0], [0.0, 2.0]])
    >>> float(mi.tuba(s, 0.5)), float(1 + (1.0 + 2.0) / 2 - 0.5 - (np.exp(-1.5) + np.exp(-0.5)) / 2)
    (1.5851695900694684, 1.5851695900694684)
    """
    ctx, c, n, untranspose = _prepare(scores, axis=axis, check_finite=check_finite,
                      allow_neg_inf=allow_neg_inf, xp=xp, min_n=2,
                                      baseline=log_baseline)
    lb, to_grad = baseline_param(ctx, log_baseline, n)
    diag, off = _diag_mask(ctx, n)
    value, back = _tuba_fwd(ctx, c, lb, diag, off)
    value = ctx.result_finite(value, "mi.tuba")

    def vjp(g):
        dc, db = back(ctx.to_compute(g))
        gb = db[:, 0] if lb.ndim == 2 else db
        return {"scores": ctx.like(untranspose(dc), scores), "log_baseline": to_grad(gb)}

    return ctx.to_out(value), vjp


@differentiable("mi.nwj", wrt=("scores",))
def nwj(scores: Array, /, *, axis: int = 1, allow_neg_inf: bool = False,
        check_finite: bool = True, xp=None):
    r"""The NWJ bound (Nguyen, Wainwright, Jordan; :math:`f`-GAN KL; MINE-f).

    .. math::

        I_{\rm NWJ} = \frac1N \sum_i f(x_i, y_i)
            - \frac{1}{N(N-1)} \sum_{i \ne j} e^{f(x_i, y_j) - 1},

    TUBA with :math:`\log a = 1` (:func:`tuba`).  Its optimal critic is
    :math:`f^* = 1 + \log p(y|x)/p(y)`, where the batch estimate is **unbiased**:
    :math:`\mathbb{E}[I_{\rm NWJ}(f^*)] = I(X;Y)` (its variance grows like
    :math:`e^{I}`).

    Parameters
    ----------
    scores : array, shape (N, N)
        ``scores[i, j] = f(x_i, y_j)``: rows are x, joint pairs on the diagonal; N >= 2.
    axis : {1, 0}, default 1
        The axis indexing y (the value is the same for both: the sums are pooled).
    allow_neg_inf, check_finite : bool
        As in :func:`infonce`.
    xp : namespace, optional

    Returns
    -------
    estimate : 0-d array, in nats

    See Also
    --------
    nce_ref.mi.bound_from_embeddings
        This bound on two embedding batches, streamed.
    nce_ref.mi.tuba
        NWJ with a learned baseline.
    nce_ref.mi.js
        The Jensen-Shannon objective, reported as NWJ.

    Notes
    -----
    :math:`\partial I/\partial s_{ii} = 1/N`,
    :math:`\partial I/\partial s_{ij} = -e^{s_{ij} - 1}/(N(N-1))` for :math:`i \ne j`.

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref import mi
    >>> float(mi.nwj(np.ones((3, 3))))    # f = 1 everywhere (independence, optimal): 1 - e^0
    0.0
    """
    ctx, c, n, untranspose = _prepare(scores, axis=axis, check_finite=check_finite,
                      allow_neg_inf=allow_neg_inf, xp=xp, min_n=2)
    diag, off = _diag_mask(ctx, n)
    value, back = _tuba_fwd(ctx, c, 1.0, diag, off)
    value = ctx.result_finite(value, "mi.nwj")

    def vjp(g):
        dc, _ = back(ctx.to_compute(g))
        return {"scores": ctx.like(untranspose(dc), scores)}

    return ctx.to_out(value), vjp


@differentiable("mi.dv", wrt=("scores",))
def dv(scores: Array, /, *, axis: int = 1, allow_neg_inf: bool = False,
        check_finite: bool = True, xp=None):
    r"""The Donsker–Varadhan estimate (MINE's objective).

    .. math::

        I_{\rm DV} = \frac1N \sum_i f(x_i, y_i)
            - \log \frac{1}{N(N-1)} \sum_{i \ne j} e^{f(x_i, y_j)}.

    In the population this lower-bounds :math:`I(X;Y)` and is tight at
    :math:`f = \log p(y|x)/p(y) + c` for any constant :math:`c`; the batch estimate is
    biased **upward** (:math:`-\log` of a sample mean, Jensen), and it is at least
    :func:`nwj` of the same scores on every batch (:math:`\log u \le u/e`).

    Parameters
    ----------
    scores : array, shape (N, N)
        ``scores[i, j] = f(x_i, y_j)``: rows are x, joint pairs on the diagonal; N >= 2.
    axis : {1, 0}, default 1
        The axis indexing y (the value is the same for both).
    allow_neg_inf, check_finite : bool
        As in :func:`infonce`.
    xp : namespace, optional

    Returns
    -------
    estimate : 0-d array, in nats

    See Also
    --------
    nce_ref.mi.bound_from_embeddings
        This bound on two embedding batches, streamed.
    nce_ref.mi.mine
        DV's value with MINE's bias-corrected gradient.
    nce_ref.mi.smile
        DV with the critic clipped in the marginal term.

    Notes
    -----
    :math:`\partial I/\partial s_{ii} = 1/N` and :math:`\partial I/\partial s_{ij} = -P_{ij}`
    with :math:`P` the softmax over the off-diagonal entries, pooled.  Its expectation
    at the optimal critic is not zero (the ratio of two batch means); :func:`mine`
    corrects the denominator.

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref import mi
    >>> s = np.array([[2.0, 0.0], [0.0, 2.0]])
    >>> float(mi.dv(s)), float(mi.nwj(s))       # DV above NWJ on the same scores
    (2.0, 1.6321205588285577)
    """
    ctx, c, n, untranspose = _prepare(scores, axis=axis, check_finite=check_finite,
                      allow_neg_inf=allow_neg_inf, xp=xp, min_n=2)
    diag, off = _diag_mask(ctx, n)
    value, back = _dv_fwd(ctx, c, diag, off)
    value = ctx.result_finite(value, "mi.dv")

    def vjp(g):
        return {"scores": ctx.like(untranspose(back(ctx.to_compute(g))), scores)}

    return ctx.to_out(value), vjp


def log_moving_average_param(ctx, value: Any, name: str):
    return scalar_param(ctx, value, name)[0]


@differentiable("mi.mine", wrt=("scores",))
def mine(scores: Array, log_moving_average: float | Array, /, *, axis: int = 1,
         allow_neg_inf: bool = False,
        check_finite: bool = True, xp=None):
    r"""MINE: the DV value, with the gradient's denominator from a moving average.

    The value is :func:`dv`'s.  The gradient replaces the batch mean
    :math:`\bar e = \frac{1}{|O|}\sum_O e^{f}` in the denominator of DV's gradient by
    the moving average :math:`\mu = e^{\texttt{log\_moving\_average}}` (Belghazi et
    al., sec. 3.2):

    .. math::

        \nabla I_{\rm MINE} = \frac1N \sum_i \nabla f(x_i, y_i)
            - \frac{1}{\mu}\,\frac{1}{N(N-1)} \sum_{i \ne j} e^{f(x_i, y_j)}\,
              \nabla f(x_i, y_j).

    With :math:`\mu = \mathbb{E}_{p(x)p(y)}[e^f]` (an exact average) the gradient is
    unbiased for the gradient of the population DV bound, where DV's own batch
    gradient is not.  This registered gradient is therefore **not** the derivative
    of the returned value unless ``log_moving_average`` equals the batch's
    log-mean-exp.

    The state is explicit: :func:`mine_update` returns the new moving average from
    the old one and the batch; pass it here::

        state = None
        for scores in batches:
            state = mi.mine_update(scores, state, decay=0.99)
            value, grads = nce_ref.value_and_grad(mi.mine)(scores, state)

    Parameters
    ----------
    scores : array, shape (N, N)
        ``scores[i, j] = f(x_i, y_j)``: rows are x, joint pairs on the diagonal; N >= 2.
    log_moving_average : float or 0-d array
        :math:`\log\mu`; not differentiated.
    axis, allow_neg_inf, check_finite, xp
        As in :func:`dv`.

    Returns
    -------
    estimate : 0-d array, in nats (the DV value)

    See Also
    --------
    nce_ref.mi.bound_from_embeddings
        This bound on two embedding batches, streamed.
    nce_ref.mi.mine_update
        The moving average's explicit state.
    nce_ref.mi.dv
        The same value, the plain gradient.

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> from nce_ref import mi
    >>> s = np.array([[2.0, 0.0], [0.0, 2.0]])
    >>> v, g = nce_ref.value_and_grad(mi.mine)(s, 0.0)     # mu = 1 = E[e^f] at independence
    >>> float(v), g["scores"].tolist()
    (2.0, [[0.5, -0.5], [-0.5, 0.5]])
    """
    ctx, c, n, untranspose = _prepare(scores, axis=axis, check_finite=check_finite,
                      allow_neg_inf=allow_neg_inf, xp=xp, min_n=2)
    log_mu = log_moving_average_param(ctx, log_moving_average, "log_moving_average")
    diag, off = _diag_mask(ctx, n)
    value, back = _dv_fwd(ctx, c, diag, off, log_denominator=log_mu)
    value = ctx.result_finite(value, "mi.mine")

    def vjp(g):
        return {"scores": ctx.like(untranspose(back(ctx.to_compute(g))), scores)}

    return ctx.to_out(value), vjp


def mine_update(scores: Array, log_moving_average: float | Array | None = None, /, *,
                decay: float = 0.99, axis: int = 1, allow_neg_inf: bool = False,
        check_finite: bool = True, xp=None) -> Array:
    r"""MINE's moving average of :math:`\mathbb{E}_{p(x)p(y)}[e^f]`, updated with one batch.

    .. math::

        \mu' = \text{decay}\cdot\mu + (1 - \text{decay})\cdot
               \frac{1}{N(N-1)}\sum_{i\ne j} e^{f(x_i, y_j)},

    computed in log space (``log_moving_average`` is :math:`\log\mu`, returned as
    :math:`\log\mu'`), so that large scores cannot overflow it.  ``None`` starts the
    average at the batch's value.  Not differentiable (MINE treats it as a constant).

    Parameters
    ----------
    scores : array, shape (N, N)
    log_moving_average : float, 0-d array or None
    decay : float in [0, 1), default 0.99
    axis, allow_neg_inf, check_finite, xp
        As in :func:`dv`.

    Returns
    -------
    log_moving_average : 0-d array
        In the scores' namespace, device and dtype.

    See Also
    --------
    nce_ref.mi.mine
        The bound whose gradient this state normalises.

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref import mi
    >>> s = np.zeros((3, 3))
    >>> float(mi.mine_update(s)), round(float(mi.mine_update(s, np.log(3.0), decay=0.5)), 12)
    (0.0, 0.69314718056)
    """
    decay = check_real(decay, "decay", nonnegative=True)
    if not decay < 1.0:
        raise ValueError(f"`decay` must be in [0, 1); got {decay}")
    ctx, c, n, _ = _prepare(scores, axis=axis, check_finite=check_finite,
                      allow_neg_inf=allow_neg_inf, xp=xp, min_n=2)
    xp = ctx.xp
    _, off = _diag_mask(ctx, n)
    lme, _ = _offdiag_lme(c, off, xp=xp)
    if log_moving_average is None:
        return ctx.to_out(lme)
    old = log_moving_average_param(ctx, log_moving_average, "log_moving_average")
    if decay == 0.0:
        return ctx.to_out(lme)
    both = xp.stack([old + math.log(decay), lme + math.log1p(-decay)])
    return ctx.to_out(logsumexp(both, axis=0, xp=xp))


@differentiable("mi.js", wrt=("scores",))
def js(scores: Array, /, *, report: str = "mi", axis: int = 1, allow_neg_inf: bool = False,
        check_finite: bool = True, xp=None):
    r"""The Jensen–Shannon (GAN) objective to train a critic, reporting NWJ at :math:`1 + f`.

    The training objective (the gradient this function registers):

    .. math::

        J = \frac1N \sum_i -\operatorname{softplus}\big(-f(x_i, y_i)\big)
            - \frac{1}{N(N-1)} \sum_{i \ne j} \operatorname{softplus}\big(f(x_i, y_j)\big),

    whose optimal critic is :math:`f^* = \log p(y|x)/p(y)` (the discriminator
    :math:`\sigma(f)` is then :math:`p/(p + q)`).  The MI it reports (``report="mi"``,
    the default) is :func:`nwj` evaluated at :math:`1 + f`:

    .. math::

        I_{\rm JS} = 1 + \frac1N\sum_i f(x_i, y_i) - \frac{1}{N(N-1)}\sum_{i\ne j} e^{f(x_i, y_j)},

    unbiased for :math:`I(X;Y)` at :math:`f^*`.  Poole et al.'s colab and the SMILE
    repository evaluate NWJ at :math:`f` itself, which at the optimum reports
    :math:`I - 1/e`; nce_ref does not.

    Parameters
    ----------
    scores : array, shape (N, N)
        ``scores[i, j] = f(x_i, y_j)``: rows are x, joint pairs on the diagonal; N >= 2.
    report : {"mi", "objective"}, default "mi"
        The value returned: the MI estimate, or :math:`J` itself.  The gradient is
        always :math:`\nabla J` (so with ``"mi"`` it is not the derivative of the
        value: Poole et al.'s ``stop_gradient(nwj − js) + js``).
    axis, allow_neg_inf, check_finite, xp
        As in :func:`nwj` (the value does not depend on ``axis``).

    Returns
    -------
    estimate : 0-d array

    See Also
    --------
    nce_ref.mi.bound_from_embeddings
        This bound on two embedding batches, streamed.
    nce_ref.mi.nwj
        What ``report="mi"`` reports (at ``1 + f``).

    Notes
    -----
    :math:`\partial J/\partial s_{ii} = \sigma(-s_{ii})/N`,
    :math:`\partial J/\partial s_{ij} = -\sigma(s_{ij})/(N(N-1))` (:math:`i \ne j`).

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref import mi
    >>> s = np.zeros((3, 3))                  # the optimal critic at independence: reports 0
    >>> float(mi.js(s)), float(mi.js(s, report="objective"))   # J = -2 log 2
    (0.0, -1.3862943611198906)
    """
    check_option(report, "report", JS_REPORTS)
    ctx, c, n, untranspose = _prepare(scores, axis=axis, check_finite=check_finite,
                      allow_neg_inf=allow_neg_inf, xp=xp, min_n=2)
    xp = ctx.xp
    diag, off = _diag_mask(ctx, n)
    d = _diagonal(c, diag, xp=xp)
    sg = sg_d = None
    if report == "mi":
        value, _ = _tuba_fwd(ctx, c, 0.0, diag, off)  # NWJ at 1 + f = TUBA at f with a = 1
    else:
        # one exp(−|s|) for softplus(s) and σ(s) (the gradient's), one of N for the diagonal
        sp, sg = softplus_and_sigmoid(c, xp=xp)
        sp_d, sg_d = softplus_and_sigmoid(-d, xp=xp)
        marg = xp.sum(xp.where(off, sp, xp.zeros_like(c))) / float(n * (n - 1))
        value = -xp.mean(sp_d) - marg
    value = ctx.result_finite(value, "mi.js")

    def vjp(g):
        g = ctx.to_compute(g)
        s_off = sigmoid(c, xp=xp) if sg is None else sg   # σ(s_ij), used off the diagonal
        s_diag = sigmoid(-d, xp=xp) if sg_d is None else sg_d  # σ(−s_ii), N values
        dc = xp.where(diag, xp.expand_dims(s_diag, axis=1) * (g / float(n)),
                      s_off * (-g / float(n * (n - 1))))
        return {"scores": ctx.like(untranspose(dc), scores)}

    return ctx.to_out(value), vjp


@differentiable("mi.interpolated", wrt=("scores", "log_baseline"), scalars=("log_baseline",))
def interpolated(scores: Array, log_baseline: float | Array = 0.0, /, *, alpha: float,
                 axis: int = 1, allow_neg_inf: bool = False,
        check_finite: bool = True, xp=None):
    r"""The interpolated bound :math:`I_\alpha` between TUBA and InfoNCE (Poole et al. eq. 11).

    Each :math:`x_i`'s baseline mixes InfoNCE's leave-one-out batch mean with a
    learned baseline :math:`a_i`:

    .. math::

        L_{ik} &= \log \frac{1}{N-1}\sum_{j \ne k} e^{f(x_i, y_j)}, \qquad
        B_{ik} = \log\big(\alpha\, e^{L_{ik}} + (1-\alpha)\, a_i\big),\\
        I_\alpha &= 1 + \frac{1}{N(N-1)} \sum_{i \ne k} \big(f(x_i, y_i) - B_{ik}\big)
            - \frac{1}{N(N-1)} \sum_{i \ne j} e^{f(x_i, y_j) - B_{ii}}.

    For the joint pair :math:`(x_i, y_i)` the batch mean leaves out one other
    :math:`y_k` (averaged over k); for the marginal pairs of row i it leaves out the
    positive :math:`y_i`.  :math:`\alpha \to 0` gives :func:`tuba` with the same
    baseline; :math:`\alpha = 1` gives InfoNCE over :math:`N - 1` candidates (the
    marginal term is then exactly 1).  For every batch
    :math:`I_\alpha \le 1 + \log((N-1)/\alpha)` (below :math:`1 + \log(N/\alpha)`).

    Parameters
    ----------
    scores : array, shape (N, N)
        ``scores[i, j] = f(x_i, y_j)``: rows are x, joint pairs on the diagonal; N >= 2.
    log_baseline : float, 0-d array or array of shape (N,), default 0.0
        :math:`\log a`, scalar or one value per conditioning sample (per :math:`x_i`
        with ``axis=1``; per :math:`y_j`, Poole et al.'s :math:`a(y)`, with ``axis=0``).
        Differentiable.
    alpha : float in [0, 1]
        The weight of the batch mean.
    axis : {1, 0}, default 1
        The axis of ``scores`` indexing y: the batch means run along it.
    allow_neg_inf, check_finite, xp
        As in :func:`infonce`.

    Returns
    -------
    estimate : 0-d array, in nats

    See Also
    --------
    nce_ref.mi.bound_from_embeddings
        This bound on two embedding batches, streamed.
    nce_ref.mi.infonce
        One end of the interpolation.
    nce_ref.mi.tuba
        The other end.

    Notes
    -----
    The leave-one-out log-mean-exp is computed in O(N²) without cancellation
    (:func:`loo_log_mean_exp`), and :math:`B` by a two-term logsumexp, so no term
    overflows: :math:`f(x_i,y_j) - B_{ii} \le \log((N-1)/\alpha)`.  Every quantity
    is row-local: the forward and the VJP are :func:`interpolated_rows`, here on all N
    rows at once, in :func:`nce_ref.mi.bound_from_embeddings` on each streamed block.
    Gradient: ``docs/mi.md``, "The interpolated bound".

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref import mi
    >>> s = np.array([[3.0, 0.0, 1.0], [0.5, 2.0, 0.0], [0.0, -1.0, 1.0]])
    >>> bool(np.isclose(mi.interpolated(s, 0.3, alpha=1e-12), mi.tuba(s, 0.3)))
    True
    """
    a = check_alpha(alpha)
    ctx, c, n, untranspose = _prepare(scores, axis=axis, check_finite=check_finite,
                      allow_neg_inf=allow_neg_inf, xp=xp, min_n=2,
                                      baseline=log_baseline)
    xp = ctx.xp
    lb, to_grad = baseline_param(ctx, log_baseline, n)
    terms, back = interpolated_rows(c, lb, 0, alpha=a, xp=xp)  # all N rows: one block
    value = ctx.result_finite(1.0 + xp.mean(terms), "mi.interpolated")

    def vjp(g):
        dc, dlb = back(ctx.to_compute(g) / float(n))
        return {"scores": ctx.like(untranspose(dc), scores), "log_baseline": to_grad(dlb)}

    return ctx.to_out(value), vjp


@differentiable("mi.smile", wrt=("scores",))
def smile(scores: Array, /, *, clip: float, axis: int = 1, allow_neg_inf: bool = False,
        check_finite: bool = True, xp=None):
    r"""SMILE (Song & Ermon): DV with the scores clipped in the partition term.

    .. math::

        I_{\rm SMILE} = \frac1N \sum_i f(x_i, y_i)
            - \log \frac{1}{N(N-1)} \sum_{i \ne j} e^{\operatorname{clip}(f(x_i, y_j), -\tau, \tau)},

    :math:`\tau` = ``clip``.  Clipping bounds the variance of the partition estimate
    (by :math:`(e^{\tau} - e^{-\tau})^2/4` per sample) at the price of a bias;
    ``clip=inf`` is :func:`dv`.  The SMILE repository trains the critic with the JS
    gradient (:func:`js`) and reports this value; here the gradient registered is
    this value's own.

    Parameters
    ----------
    scores : array, shape (N, N)
        ``scores[i, j] = f(x_i, y_j)``: rows are x, joint pairs on the diagonal; N >= 2.
    clip : float > 0 (``inf`` allowed)
        :math:`\tau`.
    axis, allow_neg_inf, check_finite, xp
        As in :func:`dv`.

    Returns
    -------
    estimate : 0-d array, in nats

    See Also
    --------
    nce_ref.mi.bound_from_embeddings
        This bound on two embedding batches, streamed.
    nce_ref.mi.dv
        SMILE without the clip.

    Notes
    -----
    As :func:`dv`, with the pooled softmax of the clipped scores, times the indicator
    :math:`-\tau \le s_{ij} \le \tau` (the convention of ``torch.clamp`` at the ends).

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref import mi
    >>> s = np.array([[2.0, 9.0], [-9.0, 2.0]])
    >>> float(mi.smile(s, clip=1.0)), round(float(2.0 - np.log(np.cosh(1.0))), 12)
    (1.5662191695169727, 1.566219169517)
    """
    tau = check_real(clip, "clip", positive=True, finite=False)
    ctx, c, n, untranspose = _prepare(scores, axis=axis, check_finite=check_finite,
                      allow_neg_inf=allow_neg_inf, xp=xp, min_n=2)
    diag, off = _diag_mask(ctx, n)
    value, back = _dv_fwd(ctx, c, diag, off, clip=tau)
    value = ctx.result_finite(value, "mi.smile")

    def vjp(g):
        return {"scores": ctx.like(untranspose(back(ctx.to_compute(g))), scores)}

    return ctx.to_out(value), vjp


@differentiable("mi.loo_upper", wrt=("scores",))
def loo_upper(scores: Array, /, *, axis: int = 1, allow_neg_inf: bool = False,
        check_finite: bool = True, xp=None):
    r"""The minibatch leave-one-out **upper** bound for a known conditional (Poole et al. eq. 13).

    .. math::

        I_{\rm LOO} = \frac1N \sum_i \Big( f(x_i, y_i)
            - \log \frac{1}{N-1} \sum_{j \ne i} e^{f(x_i, y_j)} \Big):

    InfoNCE with the positive excluded from the denominator, divided by
    :math:`N - 1`.  When the critic is a known log-density ratio,
    :math:`f(x, y) = \log p(x|y) + c(x)` with ``axis=1`` (each :math:`x_i` averages
    over the :math:`y_j`), or :math:`f = \log p(y|x) + c(y)` with ``axis=0``
    (Poole et al.'s form: each :math:`y_j` averages :math:`p(y_j|x_i)` over the
    other :math:`x_i`), :math:`\mathbb{E}[I_{\rm LOO}] \ge I(X;Y)`.  The pointwise MI
    :math:`\log p(y|x)/p(y)` qualifies for both.  Beside it, :func:`infonce` of the
    same scores is a lower bound: together they sandwich :math:`I(X;Y)`.  Not a bound
    for an arbitrary critic.

    Parameters
    ----------
    scores : array, shape (N, N)
        ``scores[i, j] = f(x_i, y_j)``: rows are x, joint pairs on the diagonal; N >= 2.
    axis : {1, 0}, default 1
        The axis of ``scores`` indexing y (see above).
    allow_neg_inf, check_finite, xp
        As in :func:`infonce`.  A batch where a row's conditional vanishes on every
        other sample gives ``+inf`` (with ``allow_neg_inf=True``).

    Returns
    -------
    estimate : 0-d array, in nats

    See Also
    --------
    nce_ref.mi.bound_from_embeddings
        This bound on two embedding batches, streamed.
    nce_ref.mi.infonce
        The matching lower bound.

    Notes
    -----
    :math:`\partial I/\partial s_{ii} = 1/N`,
    :math:`\partial I/\partial s_{ij} = -q_{ij}/N` (:math:`i \ne j`), :math:`q` the
    softmax of row i over its off-diagonal entries.

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref import mi
    >>> s = np.diag([5.0, 5.0, 5.0])
    >>> float(mi.loo_upper(s)), float(mi.infonce(s))     # above and below
    (5.0, 1.085226386946661)
    """
    ctx, c, n, untranspose = _prepare(scores, axis=axis, check_finite=check_finite,
                      allow_neg_inf=allow_neg_inf, xp=xp, min_n=2)
    xp = ctx.xp
    diag, off = _diag_mask(ctx, n)
    lse = logsumexp(c, off, axis=1, keepdims=True, xp=xp)
    per = _diagonal(c, diag, xp=xp) - (lse[:, 0] - math.log(n - 1))
    value = ctx.result_finite(xp.mean(per), "mi.loo_upper")

    def vjp(g):
        g = ctx.to_compute(g)
        q = softmax_from_lse(c, lse, off, xp=xp)
        dc = (g / float(n)) * (xp.astype(diag, c.dtype) - q)
        return {"scores": ctx.like(untranspose(dc), scores)}

    return ctx.to_out(value), vjp
