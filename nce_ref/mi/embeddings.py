r"""The MI bounds of :mod:`nce_ref.mi.bounds` on the critic ``sim(x_i, y_j)/τ`` of two embedding batches.

:func:`bound_from_embeddings` validates its inputs once (:func:`setup_bound`), then runs
one of two paths, chosen by its ``method`` option:

- the **reference**, :func:`bound_dense`: the formula as the docs write it,
  ``getattr(nce_ref.mi, bound)(nce_ref.similarity(x, y) / τ, <the bound's options>)``,
  and the VJPs of those two registered functions chained (the temperature's
  ``−Σ G∘s/τ²`` included);
- the **engine**, :func:`bound_engine`: the same value and gradient over row blocks of
  ``z = s/τ``, never the N x N matrix.  Every bound is a :class:`BoundRule` of the table
  :data:`RULES`: the per-row statistics a block gives (its row kernel: the off-diagonal
  row log-sum-exp ``(m_i, r_i)``, SMILE's clipped; JS's softplus sums; the interpolated
  bound's row terms) and short functions from them to its value (per-row terms plus one
  pooled term) and to the factors of its gradient ``G_ij = −e_ij e^{λ_i − Λ}``.  One
  driver, :func:`_sweep`, runs every rule: three GEMMs per block, forward and backward.

``bound="infonce"`` is ``log N − info_nce`` on both paths (the engine: ``info_nce``'s).
``docs/mi.md`` §7 derives the table; :mod:`nce_ref.sharded.embeddings` runs the same
engine on one rank's rows of a sharded batch (``red`` and the per-row/pooled split of
the value are what it needs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from array_api_compat import device, is_array_api_obj

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
from .._ops import (
    flush_below,
    logsumexp,
    sigmoid,
    softplus,
    softplus_and_sigmoid,
    softplus_and_sigmoid_of_exp,
)
from .._stream import by_chunks, choose_block, clamp_below, exp_floor
from .._stream._blocks import exp_inplace, logit_blocks, mask_band, set_band, untranspose
from .._stream._logits import buffers, feature_kind, prepare_logits
from .._stream._numpy import np_clip, np_multiply, np_namespace, np_negate_into, np_owns, np_row_lse
from ..autodiff import differentiable
from ..autodiff import vjp as vjp_of
from ..losses.infonce import info_nce
from ..similarity import DEFAULT_EPS, bilinear_features, check_similarity, pair_sim_from_features
from ..similarity import similarity as similarity_fn
from . import bounds as mi_bounds
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

__all__ = ["bound_from_embeddings", "STREAMED_BOUNDS", "RULES", "BoundRule", "BoundSetup",
           "setup_bound", "bound_block", "bound_dense", "bound_engine", "LocalRows"]

#: the bounds of :mod:`nce_ref.mi.bounds` that :func:`bound_from_embeddings` computes
STREAMED_BOUNDS = ("infonce", "nwj", "tuba", "dv", "mine", "js", "interpolated", "smile", "loo_upper")

#: the bound's own options: which bound takes which (the others refuse them)
_TAKES = {"tuba": ("log_baseline",), "smile": ("clip",), "js": ("report",),
          "mine": ("log_moving_average",), "interpolated": ("log_baseline", "alpha")}

#: the (R, N) buffers the interpolated bound holds per block at its peak (measured with
#: tracemalloc: ~19.4 in interpolated_rows); the budget counts 2, so its blocks have 1/10 the rows
_INTERPOLATED_BUFFERS = 20


# -- validation (one place, for this function and its sharded form) -------------------

@dataclass
class BoundSetup:
    """The validated inputs and options of one call.

    ``rows_in``/``cols_in`` are ``x``/``y`` (``axis=1``) or ``y``/``x`` (``axis=0``; the
    similarities are symmetric), ``names`` their argument names.  ``lb`` is the
    log-baseline in the compute dtype, 0-d or (n,) (tuba, interpolated), else None,
    ``lb_grad`` the caster of its gradient; ``b`` the engine's ``b`` (NWJ 1, JS 0).
    """

    ctx: Any
    bound: str
    kind: str
    eps: float
    axis: int
    n: int
    tau: Array
    tau0: Any
    clip: float | None
    report: str
    log_mu: Array | None
    alpha: float | None
    log_baseline: Any
    lb: Array | None
    lb_grad: Callable | None
    rows_in: Array
    cols_in: Array
    names: tuple[str, str]

    @property
    def b(self):
        if self.lb is not None:
            return self.lb[:, 0] if self.lb.ndim == 2 else self.lb
        return 1.0 if self.bound == "nwj" else 0.0

    @property
    def per_sample(self) -> bool:
        return self.lb is not None and self.lb.ndim == 2


def _is_default_zero(v) -> bool:
    return v is None or (not is_array_api_obj(v) and isinstance(v, (int, float)) and v == 0.0)


def _check_options(bound, log_baseline, clip, report, log_moving_average, alpha):
    """The bound's own options: required where it takes them, refused elsewhere (a
    default value, ``log_baseline=0.0`` and ``report="mi"``, passes everywhere)."""
    given = {"log_baseline": None if _is_default_zero(log_baseline) else log_baseline,
             "clip": clip, "report": None if report in (None, "mi") else report,
             "log_moving_average": log_moving_average, "alpha": alpha}
    takes = _TAKES.get(bound, ())
    for name, v in given.items():
        if v is not None and name not in takes:
            raise ValueError(f"`{name}` is not an option of bound={bound!r}; got {v!r}")
    if bound == "smile" and clip is None:
        raise ValueError("bound='smile' needs `clip` (a float > 0, inf allowed), as "
                         "nce_ref.mi.smile does")
    if bound == "mine" and log_moving_average is None:
        raise ValueError("bound='mine' needs `log_moving_average` (see nce_ref.mi.mine_update), "
                         "as nce_ref.mi.mine does")
    if bound == "interpolated" and alpha is None:
        raise ValueError("bound='interpolated' needs `alpha` (a float in [0, 1]), as "
                         "nce_ref.mi.interpolated does")


def setup_bound(x, y, log_baseline, *, bound, similarity, temperature, clip, report,
                log_moving_average, alpha, axis, eps, check_finite, xp, min_n: int = 2):
    """Validate every argument (before any computation) and return a :class:`BoundSetup`.

    ``min_n``: the rows a bound with a marginal term needs here (the sharded form checks
    the global N after its ranks agree, and passes 1)."""
    check_option(bound, "bound", STREAMED_BOUNDS)
    kind, eps = check_similarity(similarity, eps)
    _check_options(bound, log_baseline, clip, report, log_moving_average, alpha)
    a_opt = check_alpha(alpha) if bound == "interpolated" else None
    ax = check_axis(axis)
    clip_c = check_real(clip, "clip", positive=True, finite=False) if bound == "smile" else None
    report = check_option("mi" if report is None else report, "report", JS_REPORTS)
    arrays = {"x": x, "y": y}
    takes_lb = bound in ("tuba", "interpolated")
    if takes_lb and is_array_api_obj(log_baseline) and log_baseline.ndim == 1:
        arrays["log_baseline"] = log_baseline
    ctx = resolve(arrays, ndims={"x": 2, "y": 2}, xp=xp, check_finite=check_finite)
    n, _ = check_pair(x, y, "x", "y")
    if bound != "infonce" and n < min_n:
        raise ValueError(f"bound={bound!r} needs N >= 2 joint samples (its marginal term averages "
                         f"the off-diagonal pairs); got `x` of shape {tuple(x.shape)}")
    tau, tau0 = scalar_param(ctx, temperature, "temperature", positive=True)
    lb_arg = 0.0 if log_baseline is None else log_baseline
    lb, lb_grad = baseline_param(ctx, lb_arg, n) if takes_lb else (None, None)
    log_mu = (log_moving_average_param(ctx, log_moving_average, "log_moving_average")
              if bound == "mine" else None)
    rows_in, cols_in, names = (y, x, ("y", "x")) if ax == 0 else (x, y, ("x", "y"))
    return BoundSetup(ctx=ctx, bound=bound, kind=kind, eps=eps, axis=ax, n=n, tau=tau, tau0=tau0,
                      clip=clip_c, report=report, log_mu=log_mu, alpha=a_opt,
                      log_baseline=lb_arg if takes_lb else None, lb=lb, lb_grad=lb_grad,
                      rows_in=rows_in, cols_in=cols_in, names=names)


def bound_block(su: BoundSetup, n_cols: int, *, block_size, memory_budget, like) -> int:
    """Rows per block for ``su.n`` rows against ``n_cols`` columns (as ``info_nce``; the
    interpolated bound's blocks have 1/10 of the rows off NumPy, which chunks them)."""
    block = choose_block(su.n, n_cols, su.ctx.finfo().bits // 8, block_size=block_size,
                         memory_budget=memory_budget, buffers=buffers(su.kind), like=like)
    if su.bound == "interpolated" and block_size is None and not np_namespace(su.ctx.xp):
        block = max(1, block // (_INTERPOLATED_BUFFERS // 2))  # NumPy: in chunks of rows
    return block


# -- the public function --------------------------------------------------------------

@differentiable("mi.bound_from_embeddings", wrt=("x", "y", "log_baseline", "temperature"),
                scalars=("log_baseline", "temperature"))
def bound_from_embeddings(x: Array, y: Array, log_baseline: float | Array = 0.0, /, *,
                          bound: str = "infonce", similarity: str = "dot",
                          temperature: float | Array = 1.0, clip: float | None = None,
                          report: str = "mi", log_moving_average: float | Array | None = None,
                          alpha: float | None = None, axis: int = 1, eps: float = DEFAULT_EPS,
                          method: str = "auto", block_size: int | None = None,
                          memory_budget: int | None = None, check_finite: bool = True, xp=None,
                          need_grad: bool = True):
    r"""An MI bound of :mod:`nce_ref.mi` on the critic ``sim(x_i, y_j)/τ`` of two embedding batches.

    Equals ``getattr(nce_ref.mi, bound)(nce_ref.similarity(x, y, similarity=similarity) /
    temperature, <the bound's options>)``, value and gradient: that composition is the
    reference (``method="dense"``); the engine (``method="streamed"``, and ``"auto"``,
    which covers every bound and similarity) computes the rows of
    :math:`z_{ij} = s(x_i, y_j)/\tau` in blocks, never the N x N matrix, and forward plus
    backward cost the three N x N x D GEMMs of the floor (one for ``bound="infonce"``'s
    forward, which is :func:`nce_ref.info_nce`'s kernel).  Peak extra memory: two blocks
    of rows (four for ``"neg_euclidean"``) plus O(N·D).

    With :math:`p_i = z_{ii}` (computed row-wise), :math:`|O| = N(N-1)`, and per row
    over the off-diagonal entries :math:`\ell_i = \log\sum_{j\ne i} e^{w_{ij}}`
    (:math:`w = z`; SMILE: :math:`w = \operatorname{clip}(z, -c, c)`), the engine's table
    (:data:`RULES`; the value is a sum of per-row terms plus one pooled term):

    ==================  ==================================================================================
    ``bound``           value from the streamed statistics
    ==================  ==================================================================================
    ``"infonce"``       :math:`\log N - \mathcal{L}`, :math:`\mathcal{L}` = :func:`nce_ref.info_nce`
                        (its kernel)
    ``"tuba"``          :math:`1 + \sum_i\big[(p_i - b_i)/N - e^{\ell_i - b_i}/|O|\big]`
    ``"nwj"``           ``"tuba"`` with :math:`b = 1`
    ``"js"``            ``report="mi"``: ``"tuba"`` with :math:`b = 0` (NWJ at :math:`1 + f`);
                        ``report="objective"``: :math:`-\overline{\operatorname{softplus}(-p)} -
                        \frac{1}{|O|}\sum_{i\ne j}\operatorname{softplus}(z_{ij})`
    ``"dv"``            :math:`\bar p - (\operatorname{LSE}_i \ell_i - \log|O|)`
    ``"mine"``          ``"dv"``'s value; gradient normalised by :math:`\mu` (:func:`nce_ref.mi.mine`)
    ``"smile"``         ``"dv"`` with the clipped :math:`w` in :math:`\ell`
    ``"loo_upper"``     :math:`\overline{p - \ell} + \log(N - 1)`
    ``"interpolated"``  :math:`1 + \bar t`, :math:`t_i` the row terms of
                        :func:`nce_ref.mi.bounds.interpolated_rows` (its kernel, per block)
    ==================  ==================================================================================

    (:math:`\bar v` is the mean over i; :math:`b_i = \log a_i` the log-baseline.)

    Parameters
    ----------
    x, y : array, shape (N, D)
        The joint samples :math:`(x_i, y_i)`; ``scores[i, j] = sim(x_i, y_j)/τ`` has rows x.
        N >= 2 (N >= 1 for ``"infonce"``).
    log_baseline : float, 0-d array or array of shape (N,), default 0.0
        ``bound="tuba"`` or ``"interpolated"`` (the others refuse a value other than the
        default): :math:`\log a`, scalar or one value per conditioning sample (per x with
        ``axis=1``, per y with ``axis=0``), as in :func:`nce_ref.mi.tuba`.  Differentiable.
    bound : str, default "infonce"
        One of ``"infonce"``, ``"nwj"``, ``"tuba"``, ``"dv"``, ``"mine"``, ``"js"``,
        ``"interpolated"``, ``"smile"``, ``"loo_upper"``.
    similarity : {"dot", "cosine", "neg_sq_euclidean", "neg_euclidean"}, default "dot"
        As in :func:`nce_ref.similarity`.  The default is the separable critic
        :math:`f(x, y) = g(x)^\top h(y)` of the MI literature (Poole et al. 2019, whose
        critics are inner products of two encoders), not the losses' cosine.  Every
        similarity streams ("neg_euclidean" as the root of the squared distance's
        bilinear form, per block).
    temperature : float or 0-d array, default 1.0
        :math:`\tau > 0`; differentiable.
    clip : float > 0, optional
        ``bound="smile"`` only, and required there (as :func:`nce_ref.mi.smile`): the clip
        :math:`c` (``inf`` is DV).
    report : {"mi", "objective"}, default "mi"
        ``bound="js"`` only, as in :func:`nce_ref.mi.js`.
    log_moving_average : float or 0-d array, optional
        ``bound="mine"`` only, and required there (as :func:`nce_ref.mi.mine`): :math:`\log\mu`,
        not differentiated.
    alpha : float in [0, 1], optional
        ``bound="interpolated"`` only, and required there (as :func:`nce_ref.mi.interpolated`):
        the weight of the batch mean; not differentiated.
    axis : {1, 0}, default 1
        As in :mod:`nce_ref.mi.bounds`: 0 reads the score matrix transposed (each
        :math:`y_j` contrasts the :math:`x_i`); the similarities are symmetric, so the
        engine exchanges ``x`` and ``y``.
    eps : float, default 1e-12
        Norm floor of the cosine similarity.
    method : {"auto", "dense", "streamed"}, default "auto"
        ``"dense"``: the reference, :func:`bound_dense`, the composition above on the
        N x N score matrix.  ``"streamed"``: the engine, :func:`bound_engine`.
        ``"auto"``: the engine, which covers every bound and similarity.
    block_size, memory_budget : int, optional
        Rows per block, or the bytes of the block buffers (the default as in
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
        Unknown ``bound`` or ``method``, an option the bound does not take (or a missing
        required one: ``clip`` for smile, ``alpha`` for interpolated,
        ``log_moving_average`` for mine), mismatched shapes, N too small, bad
        ``block_size``/``memory_budget``/``temperature``; the message names the argument.

    See Also
    --------
    nce_ref.mi.infonce, nce_ref.mi.nwj, nce_ref.mi.tuba, nce_ref.mi.dv, nce_ref.mi.mine
    nce_ref.mi.js, nce_ref.mi.interpolated, nce_ref.mi.smile, nce_ref.mi.loo_upper
        The bounds on a critic score matrix (``method="dense"`` composes them).
    nce_ref.sharded.bound_from_embeddings
        This function on a batch split over ranks.

    Notes
    -----
    Off the diagonal every gradient is
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
    -(\sum_{ij} G_{ij} z_{ij} + \sum_i p_i\,\partial_{p_i} I)/\tau` with
    :math:`\sum G\circ z = \sum_i a_i\cdot\partial_{a_i} I` (twice that under the
    euclidean root), O(N·D).

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
    >>> v = mi.bound_from_embeddings(x, y, bound="nwj", similarity="neg_euclidean", block_size=10)
    >>> w = mi.bound_from_embeddings(x, y, bound="nwj", similarity="neg_euclidean", method="dense")
    >>> bool(np.isclose(v, w, rtol=1e-12))
    True
    """
    su = setup_bound(x, y, log_baseline, bound=bound, similarity=similarity,
                     temperature=temperature, clip=clip, report=report,
                     log_moving_average=log_moving_average, alpha=alpha, axis=axis, eps=eps,
                     check_finite=check_finite, xp=xp)
    path = check_method(method, streamable=True)
    block = bound_block(su, su.n, block_size=block_size, memory_budget=memory_budget, like=x)
    inputs = {"x": x, "y": y}
    if path == "dense":
        return bound_dense(su, inputs, need_grad=need_grad)
    if su.bound == "infonce":
        return _infonce(su, block=block, need_grad=need_grad)
    ctx, xp = su.ctx, su.ctx.xp
    res = bound_engine(su, ctx.to_compute(su.rows_in), ctx.to_compute(su.cols_in), n_total=su.n,
                       block=block, need_grad=need_grad, red=LocalRows(xp))
    value = ctx.result_finite(xp.sum(res.terms) + res.pooled, "mi.bound_from_embeddings")
    if not need_grad:
        return ctx.to_out(value), None
    res.finish()

    def vjp(g):
        g = ctx.to_compute(g)
        g_rows, g_cols = res.inputs(g, g)
        out = {su.names[0]: ctx.like(g_rows, inputs[su.names[0]]),
               su.names[1]: ctx.like(g_cols, inputs[su.names[1]]),
               "temperature": scalar_grad(ctx, g * res.dtau(res.zdz + res.pos_part), su.tau0)}
        if res.dlb is not None:
            out["log_baseline"] = su.lb_grad(res.dlb * g)
        return out

    return ctx.to_out(value), vjp


# -- the reference ----------------------------------------------------------------------

def _bound_options(su: BoundSetup):
    """``mi.<bound>``'s own arguments after the scores: ``(positional, keywords)``."""
    ctx = su.ctx

    def compute(v):
        return ctx.to_compute(v) if is_array_api_obj(v) else v

    if su.bound in ("tuba", "interpolated"):
        kw = {"alpha": su.alpha} if su.bound == "interpolated" else {}
        return (compute(su.log_baseline),), kw
    if su.bound == "mine":
        return (su.log_mu,), {}
    return (), {"smile": {"clip": su.clip}, "js": {"report": su.report}}.get(su.bound, {})


def bound_dense(su: BoundSetup, inputs: dict, *, need_grad: bool):
    r"""The reference of :func:`bound_from_embeddings`: the formula on the N x N matrix.

    ``s = nce_ref.similarity(x, y)``, ``I = getattr(nce_ref.mi, bound)(s/τ, ...)`` with the
    bound's own options and ``axis``; the VJP chains the two registered VJPs:
    :math:`\bar s = G/\tau`, :math:`\partial I/\partial\tau = -\sum_{ij} G_{ij} s_{ij}/\tau^2`
    (``G = ∂I/∂scores``).  Returns ``(value, vjp)``.
    """
    ctx, xp = su.ctx, su.ctx.xp
    x, y = ctx.to_compute(inputs["x"]), ctx.to_compute(inputs["y"])
    s, back_s = vjp_of(similarity_fn, x, y, similarity=su.kind, eps=su.eps, check_finite=False)
    args, kw = _bound_options(su)
    value, back = vjp_of(getattr(mi_bounds, su.bound), s / su.tau, *args, axis=su.axis,
                         check_finite=False, **kw)
    value = ctx.result_finite(ctx.to_compute(value), "mi.bound_from_embeddings")

    def vjp(g):
        gb = back(ctx.to_compute(g))
        gs = back_s(gb["scores"] / su.tau)
        out = {"x": ctx.like(gs["a"], inputs["x"]), "y": ctx.like(gs["b"], inputs["y"]),
               "temperature": scalar_grad(ctx, -xp.sum(gb["scores"] * s) / (su.tau * su.tau),
                                          su.tau0)}
        if "log_baseline" in gb:
            lb0 = su.log_baseline
            out["log_baseline"] = (ctx.like(gb["log_baseline"], lb0) if su.per_sample
                                   else scalar_grad(ctx, ctx.to_compute(gb["log_baseline"]), lb0))
        return out

    return ctx.to_out(value), (vjp if need_grad else None)


# -- the engine: the rules ------------------------------------------------------------

@dataclass(frozen=True)
class RowEnv:
    """What the rules read: ``n`` the batch's N (all ranks), ``pos`` (R,) the rows' joint
    scores, ``b`` the log-baseline (0-d, (R,) or a constant) and the bound's options;
    ``grad``, ``shift_free``, ``flush`` the engine's decisions."""

    xp: Any
    n: int
    pos: Array
    b: Any
    clip: float | None
    objective: bool
    log_mu: Array | None
    alpha: float | None
    grad: bool
    shift_free: bool
    flush: bool

    @property
    def log_o(self) -> float:
        return math.log(self.n * (self.n - 1))

    def b_rows(self, r0: int, r1: int):
        return self.b[r0:r1] if getattr(self.b, "ndim", 0) == 1 else self.b

    def zeros(self, r: int) -> Array:
        return self.xp.zeros((r,), dtype=self.pos.dtype, device=device(self.pos))


@dataclass(frozen=True)
class BoundRule:
    """One bound on the engine.

    - ``kernel(z, r0, r1, env) -> (stats, e, lam)``: a block's per-row statistics (a tuple
      of (R,) arrays) and, with ``env.grad``, its gradient matrix ``e`` and log-scales ``lam``
      (``G = −e ∘ e^{lam − Λ}`` off the diagonal);
    - ``terms(st, env)``: the per-row part of the value, ``(R,)``;
    - ``pooled(st, env, red) -> (P, Λ)``: the pooled part ``P`` (a constant, or a function
      of a log-sum-exp over every row, ``red.lse``) and the ``Λ`` it gives (None: ``fixed``);
    - ``fixed(env)``: ``Λ`` known before the pass, or None;
    - ``dpos(st, env)``, ``dlb(st, env)``: ``∂I/∂p_i`` and ``∂I/∂b_i`` (tuba, interpolated);
    - ``pooled_grad``: the off-diagonal gradient is the pooled term's (DV, SMILE, MINE).
    """

    kernel: Callable
    terms: Callable
    pooled: Callable
    fixed: Callable
    dpos: Callable
    dlb: Callable | None = None
    pooled_grad: bool = False


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


def _lse_kernel(lam: Callable) -> Callable:
    """The row kernel of the log-sum-exp bounds: statistics ``(m, r)``, ``e = e^{w − m}``,
    and the bound's ``lam(m, r, env, r0, r1)``."""
    def kernel(z, r0, r1, env):
        m, r, e = _row_lse(z, r0, r1, clip=env.clip, shift_free=env.shift_free, want=env.grad,
                           flush=env.flush, xp=env.xp)
        return (m, r), e, (lam(m, r, env, r0, r1) if env.grad else None)
    return kernel


def _js_kernel(z, r0, r1, env):
    """JS's row kernel: ``e = σ(z)``, ``lam = 0``; statistics ``(Σ_j softplus(z_ij),)``
    (report "objective") or the row log-sum-exp ``(m, r)`` (report "mi")."""
    xp = env.xp
    z = mask_band(z, r0, r1, 0, xp)  # softplus(-inf) = sigmoid(-inf) = 0
    lam = env.zeros(r1 - r0) if env.grad else None
    if env.shift_free:
        if np_owns(z, xp):  # σ lands in z itself, by chunks of rows in cache
            st = by_chunks(lambda c0, c1: _js_bounded(z[c0:c1], env)[0], z.shape[0],
                           z.shape[1] * z.itemsize)
            return st, (z if env.grad else None), lam
        st, sg = _js_bounded(z, env)
        return st, sg, lam
    e = None
    if env.objective:  # one exp(−|z|) for both
        if env.grad:
            sp, e = softplus_and_sigmoid(z, overwrite=True, xp=xp)
        else:
            sp = softplus(z, xp=xp)
        st = (xp.sum(sp, axis=1),)
    else:  # σ(z) and the row's shifted e^{z − m}: unbounded z needs both exps
        if env.grad:
            e = sigmoid(z, xp=xp)
        m, r, _ = _row_lse(z, r0, r1, clip=None, shift_free=False, want=False, flush=False, xp=xp)
        st = (m, r)
    if e is not None and env.flush:
        e = flush_below(e, xp.finfo(e.dtype).smallest_normal, xp=xp)
    return st, e, lam


def _js_bounded(zs, env):
    """JS on a block of bounded ``z``: ``E = e^z`` is a normal number, one exp serves the
    value and the gradient: ``softplus(z) = log1p(E)``, ``σ(z) = E/(1 + E)`` (in place),
    ``e^{z − 0} = E``.  Returns ``(stats, σ or None)``."""
    xp = env.xp
    ez = exp_inplace(zs, xp)
    if not env.objective:  # the row sums of E, before σ may overwrite it
        st = (xp.zeros((ez.shape[0],), dtype=ez.dtype, device=device(ez)), xp.sum(ez, axis=1))
    sp, sg = softplus_and_sigmoid_of_exp(ez, softplus=env.objective, sigmoid=env.grad,
                                         overwrite=True, xp=xp)
    return ((xp.sum(sp, axis=1),) if env.objective else st), sg


def _interpolated_part(z, r0, r1, env):
    """``(terms, dpos, dlb), dz`` of rows ``[r0, r1)`` (``z`` their scores)."""
    xp = env.xp
    # the joint scores: the accurate row-wise pos (as every bound's value uses)
    z, _ = set_band(z, r0, r1, 0, env.pos[r0:r1], xp, read=True)
    b = env.b_rows(r0, r1)
    terms, back = interpolated_rows(z, xp.expand_dims(b, axis=1) if getattr(b, "ndim", 0) else b,
                                    r0, alpha=env.alpha, xp=xp)
    if not env.grad:
        return (terms, None, None), None
    dz, dlb_rows = back(1.0 / env.n)
    # the diagonal's share goes through pos (dpos), the rest through the two GEMMs
    dz, dpos_rows = set_band(dz, r0, r1, 0, 0.0, xp, read=True)
    return (terms, dpos_rows, dlb_rows), dz


def _interpolated_kernel(z, r0, r1, env):
    """The interpolated bound's row kernel: its row terms and block VJP, ``e = −G``,
    ``lam = 0``; statistics ``(t, dpos, dlb)``."""
    lam = env.zeros(r1 - r0) if env.grad else None
    if np_owns(z, env.xp):
        # NumPy: the kernel's many passes on a few rows at a time, in cache, on two
        # threads; −dz overwrites the block's scores
        def part(c0, c1):
            st, dz = _interpolated_part(z[c0:c1], r0 + c0, r0 + c1, env)
            if dz is not None:
                np_negate_into(dz, z[c0:c1])
            return st

        # chunks of ~Tuning.chunk_bytes / (2 N itemsize) rows (32 in float32 at N = 4096): its
        # ~20 temporaries then sit in L3; fewer rows cost more in Python than in memory
        st = by_chunks(part, r1 - r0, 2 * z.shape[1] * z.itemsize)
        return (st if env.grad else st[:1]), (z if env.grad else None), lam
    st, dz = _interpolated_part(z, r0, r1, env)
    return (st if env.grad else st[:1]), (None if dz is None else -dz), lam


def _ell(st, xp):
    """The off-diagonal row log-sum-exp ``ℓ_i = m_i + log r_i``."""
    return st[0] + xp.log(st[1])


def _tuba_terms(st, env):
    """``(p_i − b_i)/N − e^{ℓ_i − b_i}/|O|`` (the pooled part is the constant 1)."""
    xp = env.xp
    return (env.pos - env.b) / env.n - exp_quiet(_ell(st, xp) - env.b - env.log_o, xp=xp)


def _tuba_dlb(st, env):
    """``∂I/∂b_i = −1/N + e^{ℓ_i − b_i}/|O|``."""
    return exp_quiet(_ell(st, env.xp) - env.b - env.log_o, xp=env.xp) - 1.0 / env.n


def _dv_pooled(st, env, red):
    """``−(LSE_i ℓ_i − log|O|)``; ``Λ = LSE_i ℓ_i`` over every row."""
    lse = red.lse(_ell(st, env.xp))
    return -(lse - env.log_o), lse


def _loo_terms(st, env):
    return (env.pos - _ell(st, env.xp)) / env.n


def _js_terms(st, env):
    """report "mi": TUBA's with ``b = 0``; "objective": ``−softplus(−p_i)/N − Σ_j softplus(z_ij)/|O|``."""
    if not env.objective:
        return _tuba_terms(st, env)
    return -softplus(-env.pos, xp=env.xp) / env.n - st[0] / float(env.n * (env.n - 1))


def _constant(c: float) -> Callable:
    return lambda st, env, red: (c, None)


def _mean_dpos(st, env):
    return env.xp.full_like(env.pos, 1.0 / env.n)


def _lam_m(m, r, env, r0, r1):
    return m


RULES = {
    "tuba": BoundRule(kernel=_lse_kernel(lambda m, r, env, r0, r1: m - env.b_rows(r0, r1)),
                      terms=_tuba_terms, pooled=_constant(1.0), fixed=lambda env: env.log_o,
                      dpos=_mean_dpos, dlb=_tuba_dlb),
    "dv": BoundRule(kernel=_lse_kernel(_lam_m), terms=lambda st, env: env.pos / env.n,
                    pooled=_dv_pooled, fixed=lambda env: None, dpos=_mean_dpos, pooled_grad=True),
    "mine": BoundRule(kernel=_lse_kernel(_lam_m), terms=lambda st, env: env.pos / env.n,
                      pooled=_dv_pooled, fixed=lambda env: env.log_mu + env.log_o, dpos=_mean_dpos,
                      pooled_grad=True),
    "loo_upper": BoundRule(kernel=_lse_kernel(lambda m, r, env, r0, r1: -env.xp.log(r)),
                           terms=_loo_terms, pooled=lambda st, env, red: (math.log(env.n - 1), None),
                           fixed=lambda env: math.log(env.n), dpos=_mean_dpos),
    "js": BoundRule(kernel=_js_kernel, terms=_js_terms,
                    pooled=lambda st, env, red: (0.0 if env.objective else 1.0, None),
                    fixed=lambda env: env.log_o,
                    dpos=lambda st, env: sigmoid(-env.pos, xp=env.xp) / env.n),
    "interpolated": BoundRule(kernel=_interpolated_kernel, terms=lambda st, env: st[0] / env.n,
                              pooled=_constant(1.0), fixed=lambda env: 0.0,
                              dpos=lambda st, env: st[1], dlb=lambda st, env: st[2]),
}
RULES["nwj"] = RULES["tuba"]  # with b = 1 (BoundSetup.b)
RULES["smile"] = RULES["dv"]  # with the clip in the kernel (RowEnv.clip)


# -- the engine: the driver -----------------------------------------------------------

class LocalRows:
    """The reductions over every row of the batch when they all live here."""

    def __init__(self, xp):
        self.xp = xp

    def lse(self, v: Array) -> Array:
        return logsumexp(v, axis=0, xp=self.xp)


def _flush_signed(e, xp):
    """``e`` with the entries of magnitude below ``smallest_normal`` set to 0."""
    return xp.where(xp.abs(e) < xp.finfo(e.dtype).smallest_normal, xp.zeros_like(e), e)


def _sweep(lg, kernel, env: RowEnv, *, block: int, fixed):
    """One pass over the row blocks of the logits ``lg`` (:class:`StreamLogits`).

    ``kernel(z, r0, r1, env) -> (stats, e, lam)`` (:class:`BoundRule`); under the root the
    block's ``e`` is multiplied by the chain factor ``dz/dy`` (the gradient of the GEMM's
    output).  With ``env.grad`` the two gradient GEMMs are fused in: ``U = e fb`` is kept
    per row (rescaled exactly at the end), and ``db = eᵀ (a ∘ e^{lam − M})`` is accumulated
    relative to ``M`` = ``fixed`` (Λ known up front) or the running maximum of ``lam`` (Λ
    known only at the end: the accumulator is rescaled by ``e^{M_old − M_new}`` when the
    maximum grows).  Returns ``(stats, grads)`` with ``grads = (U, lam, db, M)`` or None.
    """
    xp = env.xp
    stats, us, lams = [], [], []
    db = m_run = None
    for r0, r1, ab, z, dzdy in logit_blocks(lg.a, lg.fb, block, lg.root, xp):
        st, e, lam = kernel(z, r0, r1, env)
        stats.append(st)
        if not env.grad:
            continue
        if dzdy is not None:
            e = e * dzdy
            e = _flush_signed(e, xp) if env.flush else e
        us.append(e @ lg.fb)
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
    if not env.grad:
        return stats, None
    u = us[0] if len(us) == 1 else xp.concat(us, axis=0)
    lam = lams[0] if len(lams) == 1 else xp.concat(lams)
    return stats, (u, lam, untranspose(db, xp), m_run)


@dataclass
class EngineResult:
    """What :func:`bound_engine` gives its caller.

    ``terms`` (R,) and ``pooled``: the value is ``Σ_i terms_i + pooled`` (over every row of
    the batch).  With the gradient: ``zdz = Σ_ij G_ij z_ij`` over these rows (off the
    diagonal), ``pos_part = Σ_i p_i ∂I/∂p_i``, ``dlb`` (R,) or None, ``dtau(s) = −s/τ``, and
    ``inputs(w_rows, w_off) -> (d rows_in, d cols_in)``: the inputs' gradients with the
    per-row terms weighted by ``w_rows`` and the off-diagonal entries by ``w_off``
    (``rule.pooled_grad``: they are the pooled term's; else both ``w_rows``).  These are
    filled by ``finish()``, which the caller runs once the value is known to be finite (an
    overflowed estimate raises before its gradient is formed).
    """

    terms: Array
    pooled: Any
    rule: BoundRule
    finish: Callable | None = None
    inputs: Callable | None = None
    zdz: Array | None = None
    pos_part: Array | None = None
    dlb: Array | None = None
    dtau: Callable | None = None


def bound_engine(su: BoundSetup, rows: Array, cols: Array, *, n_total: int, block: int,
                 need_grad: bool, red) -> EngineResult:
    """The engine on rows ``rows`` (R, D) against the columns ``cols`` (C, D), the first R
    columns being the rows' partners (a sharded batch's gathered columns, this rank's
    first; ``n_total`` = N, the batch).  ``red.lse(v)``: the log-sum-exp of the per-row
    ``v`` over every row of the batch.  One :func:`_sweep` of the bound's rule, then
    :class:`EngineResult`.
    """
    ctx, xp, rule = su.ctx, su.ctx.xp, RULES[su.bound]
    r = rows.shape[0]
    fa, fb, back_f = bilinear_features(rows, cols, kind=feature_kind(su.kind), eps=su.eps, xp=xp)
    s_pos, back_pos = pair_sim_from_features(rows, cols[:r, :], fa, fb[:r, :], kind=su.kind,
                                             eps=su.eps, xp=xp)
    lg = prepare_logits(fa, fb, su.tau, concrete_float(su.tau0), kind=su.kind,
                        n_entries=r * cols.shape[0], dtype=ctx.dtype, xp=xp, bound_by_norms=True,
                        clip=su.clip)
    shift_free = lg.shift_free(cols.shape[0], ctx.dtype, xp)
    env = RowEnv(xp=xp, n=n_total, pos=s_pos / su.tau, b=su.b, clip=su.clip,
                 objective=su.report == "objective", log_mu=su.log_mu, alpha=su.alpha,
                 grad=need_grad, shift_free=shift_free, flush=need_grad and not shift_free and lg.flush)
    fixed = rule.fixed(env)
    stats, gr = _sweep(lg, rule.kernel, env, block=block, fixed=fixed)
    pooled, lse = rule.pooled(stats, env, red)
    res = EngineResult(terms=rule.terms(stats, env), pooled=pooled, rule=rule)
    if not need_grad:
        return res
    res.finish = lambda: _gradient(res, su, lg, env, stats, gr, big=fixed if fixed is not None else lse,
                                   back_pos=back_pos, back_f=back_f, cols=cols)
    return res


def _gradient(res: EngineResult, su: BoundSetup, lg, env: RowEnv, stats, gr, *, big, back_pos, back_f,
              cols) -> None:
    """Fill the gradient of ``res`` (called once the value is known to be finite)."""
    xp, rule, r = env.xp, res.rule, env.pos.shape[0]
    u, lam, db_acc, m_run = gr
    da = -u * xp.expand_dims(exp_quiet(lam - big, xp=xp), axis=1)
    dfb = -db_acc if m_run is None else -db_acc * xp.exp(m_run - big)
    dpos = rule.dpos(stats, env)

    def inputs(w_rows, w_off):
        """The features' cotangents (before the fold: ``da/fold``, ``dpos/τ``) through the
        pairs' and the features' VJPs to ``rows`` and ``cols``."""
        dfa, dfb_w = da * (w_off / lg.fold), dfb * w_off
        dfa, dfk, g_pa, g_pb = back_pos(dpos * (w_rows / su.tau), dfa, dfb_w[:r, :])
        dfb_w = xp.concat([dfk, dfb_w[r:, :]], axis=0) if cols.shape[0] > r else dfk
        g_rows, g_cols = back_f(dfa, dfb_w)
        if g_pb is not None:
            g_cols = (xp.concat([g_cols[:r, :] + g_pb, g_cols[r:, :]], axis=0)
                      if cols.shape[0] > r else g_cols + g_pb)
        return plus(g_rows, g_pa), g_cols

    res.inputs = inputs
    res.dlb = None if rule.dlb is None or su.lb is None else rule.dlb(stats, env)
    # Σ G∘z = Σ_i ⟨a_i, da_i⟩, twice that under the root (z is homogeneous of degree ½ in y)
    res.zdz = (2.0 if lg.root is not None else 1.0) * xp.sum(lg.a * da)
    res.pos_part = xp.sum(dpos * env.pos)
    res.dtau = lambda s: -s / su.tau


def _infonce(su: BoundSetup, *, block: int, need_grad: bool):
    """``log N − L`` with ``L`` from :func:`nce_ref.info_nce`'s engine (reused)."""
    ctx = su.ctx
    kw = dict(temperature=su.tau0, similarity=su.kind, eps=su.eps, block_size=block,
              method="streamed", check_finite=False, xp=ctx.xp)
    if need_grad:
        loss, back = vjp_of(info_nce, su.rows_in, su.cols_in, **kw)
    else:
        loss, back = info_nce(su.rows_in, su.cols_in, **kw), None
    value = ctx.to_out(ctx.result_finite(math.log(su.n) - loss, "mi.bound_from_embeddings"))
    if back is None:
        return value, None

    def vjp(g):
        gl = back(-g)
        return {su.names[0]: gl["query"], su.names[1]: gl["key"], "temperature": gl["temperature"]}

    return value, vjp
