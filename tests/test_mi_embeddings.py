"""``nce_ref.mi.bound_from_embeddings``: the streamed bounds against the dense composition.

The dense composition is ``mi.<bound>(nce_ref.similarity(x, y) / τ)`` with the registered
VJPs of the similarity and of the bound chained by hand (``∂/∂τ = −Σ G∘s/τ²``), in NumPy
float64 on the same-dtype inputs; the streamed result runs on every backend, in float32
and float64, for several block layouts.  The mpmath oracle, finite differences on the
registered cases and cross-backend gradients are in ``test_registry_generic.py``
(``nce_ref/testing/cases/mi_embeddings.py``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from array_api_compat import is_lazy_array

import nce_ref
from nce_ref import mi
from nce_ref.mi.embeddings import STREAMED_BOUNDS
from nce_ref.testing import check_grad

from ._helpers import assert_close, assert_like

SIMS = ["dot", "cosine", "neg_sq_euclidean"]
N, D = 7, 4
TAU = {"dot": 1.5, "cosine": 0.5, "neg_sq_euclidean": 4.0}

# block layouts: one row, a block that does not divide N, the smallest budget (one row), default
BLOCKS = {
    "block 1": {"block_size": 1},
    "block 3": {"block_size": 3},
    "tiny budget": "tiny",
    "default": {},
}


def _options(bound, x, y, tau, kind, opts=None):
    """(extra positional args, keyword options) of one bound, and the dense call's.

    ``opts`` are the variant's keyword options; its ``"log_baseline"`` ("scalar" or
    "per-sample") chooses the form of the baseline and is not passed on.
    """
    opts = dict(opts or {})
    form = opts.pop("log_baseline", "per-sample")
    if bound in ("tuba", "interpolated"):
        lb = np.random.default_rng(3).standard_normal(N) if form == "per-sample" else 0.375
        if bound == "interpolated":
            opts.setdefault("alpha", 0.5)
        return (lb,), opts, (lb,), dict(opts)
    if opts:
        extra, kw, dextra, dkw = _options(bound, x, y, tau, kind)
        return extra, {**kw, **opts}, dextra, {**dkw, **opts}
    if bound == "mine":
        s = nce_ref.similarity(x, y, similarity=kind) / tau
        lma = float(mi.mine_update(s)) - 0.25  # not the batch mean: MINE's own gradient
        return (), {"log_moving_average": lma}, (lma,), {}
    if bound == "smile":
        s = nce_ref.similarity(x, y, similarity=kind) / tau
        w = np.sort(np.abs(s[~np.eye(N, dtype=bool)]))
        c = float(0.5 * (w[len(w) // 2] + w[len(w) // 2 + 1]))  # between two |scores|: no kink
        return (), {"clip": c}, (), {"clip": c}
    return (), {}, (), {}


def _dense(bound, x, y, extra, kw, *, kind, tau, axis=1):
    """Value and gradients of the dense composition, by the registered VJPs (NumPy float64)."""
    s, back_s = nce_ref.vjp(nce_ref.similarity, x, y, similarity=kind)
    v, back = nce_ref.vjp(getattr(mi, bound), s / tau, *extra, axis=axis, **kw)
    g = back()
    ga = back_s(g["scores"] / tau)
    out = {"x": ga["a"], "y": ga["b"], "temperature": -float(np.sum(g["scores"] * s)) / tau ** 2}
    if "log_baseline" in g:
        out["log_baseline"] = g["log_baseline"]
    return float(v), out


def _variants():
    out = []
    for b in STREAMED_BOUNDS:
        if b == "interpolated":  # the alphas and baseline forms (all crossed on NumPy below)
            out += [(b, {"alpha": 0.5, "log_baseline": "per-sample"}),
                    (b, {"alpha": 0.01, "log_baseline": "scalar"}),
                    (b, {"alpha": 0.99, "log_baseline": "per-sample"})]
            continue
        out.append((b, {}))
        if b == "js":
            out.append((b, {"report": "objective"}))
    return out


VARIANTS = _variants()
IDS = [b + ("-" + "-".join(map(str, kw.values())) if kw else "") for b, kw in VARIANTS]


@pytest.mark.cover("backend", "dtype", "bound,opts", "kind", "blocks")
@pytest.mark.parametrize("blocks", list(BLOCKS), ids=list(BLOCKS))
@pytest.mark.parametrize("kind", SIMS)
@pytest.mark.parametrize("bound,opts", VARIANTS, ids=IDS)
def test_streamed_equals_dense_composition(backend, dtype, bound, opts, kind, blocks, rng):
    x64, y64 = rng.standard_normal((N, D)), rng.standard_normal((N, D))
    x_np, y_np = x64.astype(dtype), y64.astype(dtype)
    tau = TAU[kind]
    # the reference: the dense composition on the same-dtype inputs, in float64
    xr, yr = x_np.astype(np.float64), y_np.astype(np.float64)
    extra, kw, dextra, dkw = _options(bound, xr, yr, tau, kind, opts)
    v_ref, g_ref = _dense(bound, xr, yr, dextra, dkw, kind=kind, tau=tau)
    block = BLOCKS[blocks]
    if block == "tiny":
        block = {"memory_budget": 2 * N * np.dtype(dtype).itemsize}  # one row of scores
    x, y = backend.asarray(x_np, dtype), backend.asarray(y_np, dtype)
    args = (x, y) + tuple(backend.asarray(e, dtype) for e in extra)
    v, g = nce_ref.value_and_grad(mi.bound_from_embeddings)(
        *args, bound=bound, similarity=kind, temperature=tau, **kw, **block)
    got = assert_like(v, backend, dtype=dtype, shape=(), ref_array=x)
    assert_close(got, v_ref, dtype=dtype, temperature=tau, tol_scale=backend.tol_scale)
    assert set(g) == set(g_ref)
    for name, ref in g_ref.items():
        shape = np.shape(ref)
        gv = assert_like(g[name], backend, dtype=dtype, shape=shape,
                         ref_array=x if name != "temperature" else None)
        # gradient entries can be ~0: atol relative to the largest entry (STYLE.md B6, row 2)
        assert_close(gv, ref, dtype=dtype, temperature=tau, tol_scale=backend.tol_scale,
                     scale=float(np.max(np.abs(ref))), err_msg=f"{bound} {kind}: gradient of {name}")


@pytest.mark.parametrize("kind", SIMS)
@pytest.mark.parametrize("bound,opts", VARIANTS, ids=IDS)
def test_axis_zero_reads_the_transpose(bound, opts, kind, rng):
    x, y = rng.standard_normal((N, D)), rng.standard_normal((N, D))
    tau = TAU[kind]
    extra, kw, dextra, dkw = _options(bound, x, y, tau, kind, opts)
    v_ref, g_ref = _dense(bound, x, y, dextra, dkw, kind=kind, tau=tau, axis=0)
    v, g = nce_ref.value_and_grad(mi.bound_from_embeddings)(
        x, y, *extra, bound=bound, similarity=kind, temperature=tau, axis=0, block_size=3, **kw)
    assert_close(v, v_ref, dtype="float64")
    for name, ref in g_ref.items():
        assert_close(g[name], ref, dtype="float64", scale=float(np.max(np.abs(ref))))


def _fd_options(bound, x, y, tau, kind):
    """Options where the registered gradient is the value's derivative."""
    if bound == "js":
        return (), {"report": "objective"}
    if bound == "mine":  # at the batch mean MINE's gradient is DV's, the derivative of the value
        return (), {"log_moving_average": float(mi.mine_update(nce_ref.similarity(x, y, similarity=kind) / tau))}
    extra, kw, _, _ = _options(bound, x, y, tau, kind)
    return extra, kw


@pytest.mark.parametrize("kind", SIMS)
@pytest.mark.parametrize("bound", STREAMED_BOUNDS)
def test_gradient_matches_finite_differences(bound, kind, rng):
    x, y = rng.standard_normal((N, D)), rng.standard_normal((N, D))
    tau = TAU[kind]
    extra, kw = _fd_options(bound, x, y, tau, kind)
    check_grad(mi.bound_from_embeddings, x, y, *extra, bound=bound, similarity=kind,
               temperature=tau, block_size=3, **kw)


@pytest.mark.cover("backend", "dtype", "bound,opts", "tau")
@pytest.mark.parametrize("tau", [1e-3, 1e3])
@pytest.mark.parametrize("bound,opts", VARIANTS, ids=IDS)
def test_extreme_temperatures_with_cosine(backend, dtype, bound, opts, tau, rng):
    x64, y64 = rng.standard_normal((N, D)), rng.standard_normal((N, D))
    xr, yr = x64.astype(dtype).astype(np.float64), y64.astype(dtype).astype(np.float64)
    extra, kw, dextra, dkw = _options(bound, xr, yr, tau, "cosine", opts)
    if bound == "mine":  # a moving average of the batch's order keeps the gradient finite
        lma = float(mi.mine_update(nce_ref.similarity(xr, yr, similarity="cosine") / tau))
        kw, dextra = {"log_moving_average": lma}, (lma,)
    call = nce_ref.value_and_grad(mi.bound_from_embeddings)
    x, y = backend.asarray(xr, dtype), backend.asarray(yr, dtype)
    args = (x, y) + tuple(backend.asarray(e, dtype) for e in extra)
    try:
        v_ref, g_ref = _dense(bound, xr, yr, dextra, dkw, kind="cosine", tau=tau)
    except FloatingPointError:
        # e^{1/τ} overflows the marginal term of NWJ/TUBA/JS-mi: a clear error, never NaN
        if is_lazy_array(x):  # JAX: values are not inspected (STYLE.md); the estimate is -inf
            v = call(*args, bound=bound, similarity="cosine", temperature=tau, block_size=3, **kw)[0]
            assert backend.to_numpy(v) == -np.inf
            return
        with pytest.raises(FloatingPointError):
            call(*args, bound=bound, similarity="cosine", temperature=tau, block_size=3, **kw)
        return
    if dtype == "float32" and not math.isfinite(float(np.float32(v_ref))):
        pytest.skip("the float64 estimate is beyond float32's range")
    try:
        v, g = call(*args, bound=bound, similarity="cosine", temperature=tau, block_size=3, **kw)
    except FloatingPointError:
        assert dtype == "float32"  # an overflow in float32 only, reported as an error
        return
    got = assert_like(v, backend, dtype=dtype, shape=(), ref_array=x)
    assert np.isfinite(got)
    assert_close(got, v_ref, dtype=dtype, temperature=tau, tol_scale=backend.tol_scale)
    for name, ref in g_ref.items():
        gv = backend.to_numpy(g[name])
        assert np.all(np.isfinite(gv)), name
        assert_close(gv, ref, dtype=dtype, temperature=tau, tol_scale=backend.tol_scale,
                     scale=float(np.max(np.abs(ref))), err_msg=f"{bound}: gradient of {name}")


def test_forward_equals_value_of_value_and_grad(rng):
    x, y = rng.standard_normal((N, D)), rng.standard_normal((N, D))
    for bound, opts in VARIANTS:
        extra, kw, _, _ = _options(bound, x, y, 1.0, "dot", opts)
        v = mi.bound_from_embeddings(x, y, *extra, bound=bound, block_size=2, **kw)
        w, _ = nce_ref.value_and_grad(mi.bound_from_embeddings)(x, y, *extra, bound=bound, **kw)
        assert_close(v, w, dtype="float64")


@pytest.mark.parametrize("form", ["default", "scalar", "per-sample"])
@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("kind", SIMS)
def test_interpolated_every_alpha_and_baseline(kind, alpha, form, rng):
    """The streamed interpolated bound against the dense composition, to rounding in float64:
    every alpha (the ends too), the baseline omitted, scalar or per sample, both axes, three layouts."""
    x, y = rng.standard_normal((N, D)), rng.standard_normal((N, D))
    tau = TAU[kind]
    lb = {"default": (), "scalar": (-0.625,), "per-sample": (rng.standard_normal(N),)}[form]
    for axis in (1, 0):
        v_ref, g_ref = _dense("interpolated", x, y, lb, {"alpha": alpha}, kind=kind, tau=tau, axis=axis)
        for block in ({"block_size": 1}, {"block_size": 3}, {}):
            v, g = nce_ref.value_and_grad(mi.bound_from_embeddings)(
                x, y, *lb, bound="interpolated", alpha=alpha, similarity=kind, temperature=tau,
                axis=axis, **block)
            assert_close(v, v_ref, dtype="float64")
            assert set(g) == set(g_ref) | {"log_baseline"}
            for name, ref in g_ref.items():
                assert_close(g[name], ref, dtype="float64", scale=float(np.max(np.abs(ref))),
                             err_msg=f"axis={axis} {block}: gradient of {name}")
            if not lb:  # the default baseline 0.0: its gradient is that of a scalar
                assert np.shape(g["log_baseline"]) == ()


def test_interpolated_alpha_one_is_infonce_over_n_minus_one(rng):
    """At alpha = 1 the marginal term is exactly 1: I = mean_i (z_ii − mean_{k≠i} L_ik)."""
    x, y = rng.standard_normal((N, D)), rng.standard_normal((N, D))
    s = nce_ref.similarity(x, y, similarity="cosine") / 0.2
    v = mi.bound_from_embeddings(x, y, bound="interpolated", alpha=1.0, similarity="cosine",
                                 temperature=0.2, block_size=2)
    e = np.exp(s)
    loo = np.log((e.sum(axis=1, keepdims=True) - e) / (N - 1))
    off = ~np.eye(N, dtype=bool)
    want = np.mean(np.diag(s) - np.where(off, loo, 0.0).sum(axis=1) / (N - 1))
    assert_close(v, want, dtype="float64")


def test_shifted_path_for_unbounded_dot_scores(rng):
    """Dot scores beyond the shift-free range (Cauchy–Schwarz bound too large) take the
    shifted path; it equals the dense composition."""
    x, y = 40.0 * rng.standard_normal((N, D)), rng.standard_normal((N, D))
    for bound, opts in VARIANTS:
        if bound in ("nwj", "tuba", "mine") or opts.get("report") == "mi" or bound == "js" and not opts:
            continue  # e^{f} of scores ~100 overflows their marginal term in float32, not here
        extra, kw, dextra, dkw = _options(bound, x, y, 1.0, "dot", opts)
        for dt in ("float32", "float64"):
            xs, ys = x.astype(dt), y.astype(dt)
            v_ref, g_ref = _dense(bound, xs.astype(float), ys.astype(float), dextra, dkw,
                                  kind="dot", tau=1.0)
            v, g = nce_ref.value_and_grad(mi.bound_from_embeddings)(
                xs, ys, *extra, bound=bound, similarity="dot", block_size=3, **kw)
            assert_close(v, v_ref, dtype=dt, err_msg=f"{bound} {opts}")
            for name, ref in g_ref.items():
                assert_close(g[name], ref, dtype=dt, scale=float(np.max(np.abs(ref))),
                             err_msg=f"{bound} {opts} {dt}: gradient of {name}")


def test_infonce_is_log_n_minus_info_nce(rng):
    x, y = rng.standard_normal((N, D)), rng.standard_normal((N, D))
    v = mi.bound_from_embeddings(x, y, similarity="cosine", temperature=0.1)
    loss = nce_ref.info_nce(x, y, similarity="cosine", temperature=0.1)
    assert float(v) == math.log(N) - float(loss)
    assert float(v) <= math.log(N)


# -- errors -------------------------------------------------------------------------------

def _xy(n=4, d=3):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d)), rng.standard_normal((n, d))


@pytest.mark.parametrize("kwargs,exc,name", [
    ({"bound": "nope"}, ValueError, "`bound`"),
    ({"bound": "interpolated"}, ValueError, "`alpha`"),
    ({"bound": "interpolated", "alpha": 1.5}, ValueError, "`alpha`"),
    ({"bound": "interpolated", "alpha": -0.1}, ValueError, "`alpha`"),
    ({"bound": "dv", "alpha": 0.5}, ValueError, "`alpha`"),
    ({"bound": "interpolated", "alpha": 0.5, "clip": 1.0}, ValueError, "`clip`"),
    ({"bound": 3}, ValueError, "`bound`"),
    ({"similarity": "manhattan"}, ValueError, "`similarity`"),
    ({"block_size": 0}, ValueError, "`block_size`"),
    ({"block_size": 1.5}, TypeError, "`block_size`"),
    ({"memory_budget": 8}, ValueError, "`memory_budget`"),
    ({"memory_budget": "1MB"}, TypeError, "`memory_budget`"),
    ({"temperature": 0.0}, ValueError, "`temperature`"),
    ({"bound": "dv", "clip": 1.0}, ValueError, "`clip`"),
    ({"bound": "smile"}, ValueError, "`clip`"),
    ({"bound": "smile", "clip": -1.0}, ValueError, "`clip`"),
    ({"bound": "mine"}, ValueError, "`log_moving_average`"),
    ({"bound": "js", "report": "value"}, ValueError, "`report`"),
    ({"bound": "nwj", "report": "objective"}, ValueError, "`report`"),
    ({"axis": 2}, ValueError, "`axis`"),
])
def test_bad_options_raise_naming_the_argument(kwargs, exc, name):
    x, y = _xy()
    with pytest.raises(exc, match=name):
        mi.bound_from_embeddings(x, y, **kwargs)


def test_bad_arrays_raise_naming_the_argument():
    x, y = _xy()
    with pytest.raises(ValueError, match="`y`"):
        mi.bound_from_embeddings(x, y[:3])
    with pytest.raises(ValueError, match="`y`"):
        mi.bound_from_embeddings(x, y[:, :2])
    with pytest.raises(ValueError, match="`x`"):
        mi.bound_from_embeddings(x[0], y)
    with pytest.raises(TypeError, match="`x`"):
        mi.bound_from_embeddings(x.tolist(), y)
    with pytest.raises(ValueError, match="`x`"):
        mi.bound_from_embeddings(x[:1], y[:1], bound="dv")  # N >= 2 for a marginal term
    with pytest.raises(ValueError, match="`log_baseline`"):
        mi.bound_from_embeddings(x, y, 0.5, bound="dv")
    with pytest.raises(ValueError, match="`log_baseline`"):
        mi.bound_from_embeddings(x, y, np.zeros(3), bound="tuba")
    with pytest.raises(ValueError, match="`log_baseline`"):
        mi.bound_from_embeddings(x, y, np.zeros(3), bound="interpolated", alpha=0.5)
    with pytest.raises(ValueError, match="`log_baseline`"):
        mi.bound_from_embeddings(x, y, np.zeros((4, 1)), bound="interpolated", alpha=0.5)
    with pytest.raises(ValueError, match="`x`"):
        mi.bound_from_embeddings(np.where(x > 0, np.nan, x), y)


@pytest.mark.parametrize("bound,extra,kw", [
    ("nwj", (), {}), ("dv", (), {}), ("loo_upper", (), {}), ("tuba", (0.25,), {}),
    ("mine", (), {"log_moving_average": 1.0}), ("smile", (), {"clip": 2.0}),
    ("smile", (), {"clip": math.inf}), ("js", (), {}), ("js", (), {"report": "objective"}),
    ("interpolated", (0.25,), {"alpha": 0.5}),
])
def test_numpy_fast_paths_equal_the_generic_path(rng, bound, extra, kw):
    # NumPy's unshifted blocks run in chunks of rows in cache on two threads
    # (_stream._numpy.np_row_lse, _stream.by_chunks); array-api-strict runs the generic code.
    # Thresholds lowered so that chunks and threads occur at N = 40
    import array_api_strict as xs

    with nce_ref.tuning(thread_min_rows=4, thread_min_size=16, threads=2,
                        chunk_bytes=3 * 40 * 8):  # chunks of 3 rows
        _fast_paths_equal_the_generic_path(rng, bound, extra, kw, xs)


def _fast_paths_equal_the_generic_path(rng, bound, extra, kw, xs):
    x, y = rng.standard_normal((40, 5)), rng.standard_normal((40, 5))
    vg = nce_ref.value_and_grad(mi.bound_from_embeddings)
    opts = {"bound": bound, "similarity": "cosine", "temperature": 0.3, **kw}
    for block in (40, 9):
        v, g = vg(x, y, *extra, block_size=block, **opts)
        vs, gs = vg(xs.asarray(x), xs.asarray(y), *extra, block_size=block, **opts)
        assert_close(v, np.asarray(vs), rtol=1e-13, atol=1e-15)
        for name in g:
            want = np.asarray(gs[name])
            assert_close(g[name], want, rtol=1e-12, atol=1e-14 * float(np.max(np.abs(want))),
                         err_msg=name)


# -- the reference (method="dense") and the engine (method="streamed") ------------------------

ALL_SIMS = ["dot", "cosine", "neg_sq_euclidean", "neg_euclidean"]


@pytest.mark.parametrize("blocks", list(BLOCKS), ids=list(BLOCKS))
@pytest.mark.parametrize("kind", ALL_SIMS)
@pytest.mark.parametrize("bound,opts", VARIANTS, ids=IDS)
def test_dense_method_equals_streamed_method(bound, opts, kind, blocks, rng):
    """The reference and the engine, value and every gradient, in float64, every bound,
    similarity (the euclidean root included) and block layout, both axes."""
    x, y = rng.standard_normal((N, D)), rng.standard_normal((N, D))
    tau = TAU.get(kind, 2.0)
    extra, kw, _, _ = _options(bound, x, y, tau, kind, opts)
    block = BLOCKS[blocks]
    if block == "tiny":
        block = {"memory_budget": 4 * N * 8}  # one row of the four buffers of the root
    vg = nce_ref.value_and_grad(mi.bound_from_embeddings)
    for axis in (1, 0):
        common = dict(bound=bound, similarity=kind, temperature=tau, axis=axis, **kw)
        v0, g0 = vg(x, y, *extra, method="dense", **common)
        v1, g1 = vg(x, y, *extra, method="streamed", **block, **common)
        assert_close(v1, v0, dtype="float64", temperature=tau, err_msg=f"{bound} {kind} axis={axis}")
        assert sorted(g1) == sorted(g0)
        for name in g0:
            assert_close(g1[name], g0[name], dtype="float64", temperature=tau,
                         scale=float(np.max(np.abs(g0[name]), initial=1e-300)),
                         err_msg=f"{bound} {kind} axis={axis}: gradient of {name}")


def test_auto_runs_the_engine_and_dense_runs_the_composition(rng):
    x, y = rng.standard_normal((N, D)), rng.standard_normal((N, D))
    for kind in ALL_SIMS:
        auto = mi.bound_from_embeddings(x, y, bound="dv", similarity=kind, block_size=2)
        streamed = mi.bound_from_embeddings(x, y, bound="dv", similarity=kind, block_size=2,
                                            method="streamed")
        assert float(auto) == float(streamed)  # the same code: bit for bit
        dense = mi.bound_from_embeddings(x, y, bound="dv", similarity=kind, method="dense")
        assert float(dense) == float(mi.dv(nce_ref.similarity(x, y, similarity=kind)))
    with pytest.raises(ValueError, match="`method`"):
        mi.bound_from_embeddings(x, y, method="fast")


def test_neg_euclidean_streams_without_the_matrix(rng):
    """neg_euclidean is the root of the squared distance's bilinear form, per block: the
    engine equals the dense composition, gradients included, with rows at distance 0."""
    x, y = rng.standard_normal((N, D)), rng.standard_normal((N, D))
    y[2] = x[2]  # a joint pair at distance 0: the subgradient 0 of the root
    y[4] = x[1]  # and an off-diagonal one
    for bound, opts in VARIANTS:
        extra, kw, _, _ = _options(bound, x, y, 2.0, "neg_euclidean", opts)
        v0, g0 = nce_ref.value_and_grad(mi.bound_from_embeddings)(
            x, y, *extra, bound=bound, similarity="neg_euclidean", temperature=2.0, method="dense", **kw)
        v1, g1 = nce_ref.value_and_grad(mi.bound_from_embeddings)(
            x, y, *extra, bound=bound, similarity="neg_euclidean", temperature=2.0, block_size=3, **kw)
        assert_close(v1, v0, dtype="float64", err_msg=bound)
        for name in g0:
            assert_close(g1[name], g0[name], dtype="float64", scale=float(np.max(np.abs(g0[name]))),
                         err_msg=f"{bound} {opts}: gradient of {name}")


# -- the bound's own options, with the defaults of nce_ref.mi.<bound> -------------------------

def test_option_defaults_are_the_bounds_own():
    import inspect

    sig = inspect.signature(mi.bound_from_embeddings).parameters
    assert sig["log_baseline"].default == inspect.signature(mi.tuba).parameters["log_baseline"].default == 0.0
    assert (sig["log_baseline"].default
            == inspect.signature(mi.interpolated).parameters["log_baseline"].default)
    assert sig["report"].default == inspect.signature(mi.js).parameters["report"].default == "mi"
    assert sig["similarity"].default == "dot"
    assert sig["method"].default == "auto"


def test_default_baseline_and_report_equal_their_explicit_values(rng):
    x, y = rng.standard_normal((N, D)), rng.standard_normal((N, D))
    vg = nce_ref.value_and_grad(mi.bound_from_embeddings)
    for bound, kw in (("tuba", {}), ("interpolated", {"alpha": 0.5})):
        v0, g0 = vg(x, y, bound=bound, **kw)
        v1, g1 = vg(x, y, 0.0, bound=bound, **kw)
        v2, _ = vg(x, y, None, bound=bound, **kw)  # None, the former default, still means 0.0
        assert float(v0) == float(v1) == float(v2)
        assert np.shape(g0["log_baseline"]) == ()
        np.testing.assert_array_equal(g0["x"], g1["x"])
    assert float(mi.bound_from_embeddings(x, y, bound="js")) == float(
        mi.bound_from_embeddings(x, y, bound="js", report="mi"))
    # the defaults pass for every bound; only another value is refused
    for bound in ("dv", "nwj", "loo_upper"):
        mi.bound_from_embeddings(x, y, 0.0, bound=bound, report="mi")
    with pytest.raises(ValueError, match="`log_baseline`"):
        mi.bound_from_embeddings(x, y, 0.5, bound="nwj")


@pytest.mark.parametrize("bound,name", [("smile", "clip"), ("interpolated", "alpha"),
                                        ("mine", "log_moving_average")])
@pytest.mark.parametrize("method", ["auto", "dense", "streamed"])
def test_required_options_are_required(bound, name, method):
    x, y = _xy()
    with pytest.raises(ValueError, match=f"`{name}`"):
        mi.bound_from_embeddings(x, y, bound=bound, method=method)
