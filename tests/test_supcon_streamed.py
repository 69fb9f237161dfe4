"""supcon streamed over row blocks (``block_size`` / ``memory_budget``) against the dense path.

The reference is ``nce_ref.losses.supcon._dense_supcon``: the original computation with
the full (A, C) score matrix and masks (``sim_fwd``, the masked ``logsumexp``, ``ce_rows``),
which shares nothing with ``nce_ref._stream.supcon_stream`` but the validation.  The generic
oracle, finite-difference and backend checks of the streamed cases in
``nce_ref/testing/cases/supcon.py`` run in ``test_registry_generic.py``.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

import nce_ref
from nce_ref.losses.supcon import _dense_supcon, supcon
from nce_ref.testing import check_grad

from ._helpers import assert_close

N, V, D = 7, 3, 4  # C = 21 columns: a block of 4 does not divide it and crosses views
N1 = 9  # the (N, D) layout, with singleton classes (anchors without a positive)


@pytest.fixture
def data(rng):
    mask = rng.random((N, N)) < 0.4
    return {
        "f": rng.standard_normal((N, V, D)),
        "f1": rng.standard_normal((N1, D)),
        "labels": np.array([4, 1, 4, 9, 1, 4, 2]),
        "labels1": np.array([0, 1, 0, 2, 1, 0, 3, 5, 2]),
        "same": np.zeros(N, dtype=np.int64),
        "multi": np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0],
                           [0, 1, 0]]),
        "mask": mask,  # asymmetric, diagonal either way
        "mask01": mask.astype(np.float64),
    }


# (what the positives come from, options); every option of supcon appears somewhere
COMBOS = [
    ("labels", {}),
    ("labels", {"positives": "in"}),
    ("labels", {"positives": "per_pair"}),
    ("labels", {"reduction": "none"}),
    ("labels", {"reduction": "sum", "base_temperature": 0.07}),
    ("labels", {"positives": "in", "no_positive": "zero", "contrast_mode": "one", "reduction": "none"}),
    ("labels", {"similarity": "dot"}),
    ("labels", {"similarity": "dot", "positives": "in", "reduction": "none"}),
    ("labels", {"similarity": "neg_sq_euclidean", "positives": "per_pair", "contrast_mode": "one"}),
    ("labels", {"temperature_array": True, "positives": "in"}),
    ("same", {}),  # one class: no negatives
    ("same", {"positives": "in", "reduction": "none"}),
    ("same", {"positives": "per_pair", "similarity": "dot"}),
    ("same", {"temperature_array": True}),
    ("labels1", {}),
    ("labels1", {"no_positive": "zero", "base_temperature": 1.0}),
    ("labels1", {"positives": "per_pair", "reduction": "none", "similarity": "dot"}),
    ("labels1", {"positives": "in", "reduction": "sum", "temperature_array": True}),
    ("multi", {}),
    ("multi", {"positives": "per_pair", "reduction": "none"}),
    ("multi", {"positives": "in", "similarity": "neg_sq_euclidean"}),
    ("mask", {"positives": "in"}),
    ("mask", {"contrast_mode": "one", "no_positive": "zero"}),
    ("mask01", {"similarity": "dot", "positives": "per_pair", "reduction": "sum"}),
    ("mask", {"reduction": "none", "base_temperature": 0.07, "temperature_array": True}),
    ("none", {}),
    ("none", {"positives": "in", "base_temperature": 1.0}),
    ("none", {"similarity": "dot", "reduction": "none", "positives": "per_pair"}),
    ("none", {"similarity": "neg_sq_euclidean", "contrast_mode": "one"}),
    ("labels", {"similarity": "neg_euclidean"}),
    ("mask", {"similarity": "neg_euclidean", "positives": "in", "reduction": "none"}),
    ("labels1", {"similarity": "neg_euclidean", "positives": "per_pair", "temperature_array": True}),
]
TAU = 0.3


def _call_args(data, source, backend, dtype):
    """Positional arguments and options of one combination, as arrays of ``backend``."""
    f = data["f1"] if source == "labels1" else data["f"]
    args = [backend.asarray(f, dtype)]
    kw = {}
    if source in ("labels", "labels1", "multi", "same"):
        args.append(backend.asarray(data[source]))
    elif source in ("mask", "mask01"):
        m = data[source]
        kw["mask"] = backend.asarray(m, dtype) if m.dtype.kind == "f" else backend.asarray(m)
    return args, kw


def _blocks(c: int, itemsize: int):
    """One block, single rows, a block that divides neither C nor N, and a memory budget
    that holds two rows (one byte short of three)."""
    return [{"block_size": 10**6}, {"block_size": 1}, {"block_size": 4},
            {"memory_budget": 3 * 2 * c * itemsize - 1}]


def _value_and_grads(fn, backend, dtype, args, kw, ct):
    value, back = fn(*args, **kw)
    g = back(backend.xp.ones_like(value) if ct is None else backend.asarray(ct, dtype))
    return backend.to_numpy(value), {k: backend.to_numpy(v) for k, v in g.items()}


@pytest.mark.cover("backend", "dtype", "source,opts")
@pytest.mark.parametrize("source,opts", COMBOS, ids=[f"{s}-{'-'.join(f'{k}={v}' for k, v in o.items())}"
                                                       for s, o in COMBOS])
def test_streamed_equals_dense(backend, dtype, data, source, opts, rng):
    opts = dict(opts)
    args, kw = _call_args(data, source, backend, dtype)
    if opts.pop("temperature_array", False):  # no bound known ahead: the shifted kernel
        kw["temperature"] = backend.asarray(np.asarray(TAU), dtype)
    else:
        kw["temperature"] = TAU
    kw.update(opts)
    n, v = (N1, 1) if source == "labels1" else (N, V)
    c = n * v
    anchors = n if kw.get("contrast_mode") == "one" else c
    ct = rng.uniform(0.5, 1.5, anchors) if kw.get("reduction") == "none" else None
    want_v, want_g = _value_and_grads(_dense_supcon, backend, dtype, args, kw, ct)
    itemsize = 4 if dtype == "float32" else 8
    for sizes in _blocks(c, itemsize):
        got_v, got_g = _value_and_grads(lambda *a, **k: nce_ref.vjp(supcon, *a, **k), backend, dtype,
                                        args, kw | sizes, ct)
        msg = f"{source} {kw | sizes}"
        assert got_v.shape == want_v.shape
        assert_close(got_v, want_v, dtype=dtype, temperature=TAU, tol_scale=backend.tol_scale,
                     err_msg=msg)
        assert set(got_g) == set(want_g)
        for name, want in want_g.items():
            # gradient entries are sums of terms of the logits' size 1/τ: atol on that scale
            scale = float(np.max(np.abs(want), initial=1.0)) / TAU
            assert_close(got_g[name], want, dtype=dtype, temperature=TAU, scale=scale,
                         tol_scale=backend.tol_scale, err_msg=f"{msg}: gradient of {name}")


@pytest.mark.parametrize("source,opts", [
    ("labels", {}),
    ("labels", {"positives": "in", "contrast_mode": "one"}),
    ("labels1", {"positives": "per_pair", "reduction": "none"}),
    ("multi", {"base_temperature": 0.07, "reduction": "sum"}),
    ("mask01", {"positives": "in", "similarity": "dot"}),
    ("mask", {"similarity": "neg_sq_euclidean", "reduction": "none"}),
    ("none", {"positives": "per_pair", "similarity": "dot"}),
    ("labels1", {"no_positive": "zero", "similarity": "dot", "positives": "in"}),
    ("same", {}),
    ("same", {"positives": "in", "reduction": "none"}),
])
def test_streamed_gradients_match_finite_differences(data, source, opts):
    from backends import get

    args, kw = _call_args(data, source, get("numpy"), "float64")
    # blocks of 4 rows and of 1 row; the temperature (a float) is checked too
    for block in (4, 1):
        report = check_grad(supcon, *args, temperature=0.4, block_size=block, **kw, **opts)
        assert "temperature" in report.max_abs_err


def test_streamed_temperature_gradient_matches_finite_differences_without_bound(data):
    # a 0-d array temperature: no bound on |z| is known before the GEMM (the shifted kernel)
    f, y = data["f"], data["labels"]
    tau = 0.25
    h = 1e-6
    for pm in ("out", "in", "per_pair"):
        _, g = nce_ref.value_and_grad(supcon)(f, y, temperature=np.asarray(tau), positives=pm,
                                              block_size=4)
        fd = (float(supcon(f, y, temperature=np.asarray(tau + h), positives=pm, block_size=4))
              - float(supcon(f, y, temperature=np.asarray(tau - h), positives=pm, block_size=4))) / (2 * h)
        assert_close(g["temperature"], fd, rtol=1e-6, atol=1e-8, err_msg=pm)


# -- block options -------------------------------------------------------------------------

@pytest.mark.parametrize("similarity", ["cosine", "neg_euclidean"])  # two and four buffers a row
def test_bad_block_options_raise_naming_the_argument(data, similarity):
    f, y = data["f"], data["labels"]
    c = N * V
    buffers = 4 if similarity == "neg_euclidean" else 2
    with pytest.raises(ValueError, match=r"`block_size` must be >= 1; got 0"):
        supcon(f, y, block_size=0, similarity=similarity)
    with pytest.raises(TypeError, match=r"`block_size` must be an integer"):
        supcon(f, y, block_size=2.5, similarity=similarity)
    with pytest.raises(TypeError, match=r"`block_size` must be an integer"):
        supcon(f, y, block_size=True, similarity=similarity)
    with pytest.raises(ValueError, match=rf"`memory_budget` of 100 bytes is too small for one row "
                                         rf"of {c} scores; the smallest that works is {buffers * c * 8}"):
        supcon(f, y, memory_budget=100, similarity=similarity)
    with pytest.raises(ValueError, match=r"`memory_budget` must be >= 1"):
        supcon(f, y, memory_budget=0, similarity=similarity)
    with pytest.raises(TypeError, match=r"`memory_budget` must be an integer"):
        supcon(f, y, memory_budget=1e9, similarity=similarity)
    # the smallest budget that works is accepted: one row per block
    assert_close(supcon(f, y, memory_budget=buffers * c * 8, similarity=similarity),
                 supcon(f, y, similarity=similarity), rtol=1e-13)


def test_streaming_never_holds_the_score_matrix(rng):
    # N x N float64 would be 32 MiB; blocks of 16 rows hold a few (16, N) buffers of 256 KiB
    n, d = 2048, 8
    f = rng.standard_normal((n, d))
    y = rng.integers(0, 20, n)
    vg = nce_ref.value_and_grad(supcon)
    vg(f, y, block_size=16)  # imports, thread pool
    tracemalloc.start()
    try:
        for kw in ({}, {"positives": "per_pair"}, {"similarity": "dot", "positives": "in"}):
            tracemalloc.reset_peak()
            vg(f, y, block_size=16, **kw)
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < n * n * 8 / 4, (kw, peak)
    finally:
        tracemalloc.stop()


def test_streaming_with_a_reference_set_never_holds_the_score_matrix(rng):
    # a (1024, 2048) float64 score matrix would be 16 MiB; the ref path's blocks of 16
    # rows hold their own (16, M) masks, own-column comparison and buffers only
    n, m, d = 1024, 2048, 8
    f, r = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    y, ry = rng.integers(0, 20, n), rng.integers(0, 20, m)
    own = np.where(rng.random(n) < 0.5, rng.integers(0, m, n), -1)
    vg = nce_ref.value_and_grad(supcon)
    kw = dict(ref=r, ref_labels=ry, ref_self=own, block_size=16)
    vg(f, y, **kw)  # imports
    tracemalloc.start()
    try:
        for extra in ({}, {"positives": "per_pair"}, {"similarity": "dot", "positives": "in"}):
            tracemalloc.reset_peak()
            vg(f, y, **kw, **extra)
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < n * m * 8 / 4, (extra, peak)
    finally:
        tracemalloc.stop()
    v_s, g_s = vg(f[:64], y[:64], ref=r[:300], ref_labels=ry[:300], ref_self=own[:64] % 300,
                  block_size=7)
    v_d, g_d = vg(f[:64], y[:64], ref=r[:300], ref_labels=ry[:300], ref_self=own[:64] % 300,
                  method="dense")
    assert_close(v_s, v_d, rtol=1e-13)
    assert_close(g_s["ref"], g_d["ref"], rtol=1e-10, atol=1e-14)


# -- numerics of the streamed kernel ---------------------------------------------------------

@pytest.mark.parametrize("source", ["labels", "mask", "labels-one", "ref"])
def test_numpy_fast_path_equals_the_generic_kernel(rng, source):
    # NumPy runs the in-place, threaded, chunked paths; array-api-strict the generic ones.
    # Single labels take the group kernel (_stream.supcon_stream_groups: sums from the GEMMs,
    # P's diagonal blocks, or with contrast_mode="one" the chunked mask); a mask the
    # per-entry kernel (_stream._numpy.np_supcon_block), as does a reference set (its own
    # columns by index, some anchors without one)
    from backends import get

    strict = get("array_api_strict")
    if strict.unavailable():
        pytest.skip(strict.unavailable())
    with nce_ref.tuning(chunk_bytes=24 * 300 * 8, threads=2):  # chunks of 24 rows: several per thread
        _fast_path_equals_the_generic_kernel(rng, source, strict)


def _fast_path_equals_the_generic_kernel(rng, source, strict):
    f = rng.standard_normal((150, 2, 8))  # 300 anchors x 300 columns: two threads
    y = rng.integers(0, 6, 150)
    args, extra = (f, y), {}
    if source == "mask":
        args, extra = (f,), {"mask": y[:, None] == y[None, :]}
    elif source == "labels-one":
        extra = {"contrast_mode": "one"}
    elif source == "ref":
        memory = np.concatenate([rng.standard_normal((90, 8)), f[:, 0, :]])  # view 0's copies
        own = np.where(np.arange(300).reshape(2, 150).T == np.arange(150)[:, None],
                       np.arange(90, 240)[:, None], -1)  # (150, 2): view 0 -> its copy
        extra = {"ref": memory, "ref_labels": np.concatenate([rng.integers(0, 6, 90), y]),
                 "ref_self": own}
    anchors = 150 if source == "labels-one" else 300
    for pm in ("out", "in", "per_pair"):
        for red in ("mean", "none"):
            ct = None if red == "mean" else rng.standard_normal(anchors)
            kw = {"temperature": 0.2, "positives": pm, "reduction": red}
            v, back = nce_ref.vjp(supcon, *args, **kw, **extra)
            g = back(ct)
            vs, back_s = nce_ref.vjp(supcon, *(strict.asarray(x) for x in args), **kw,
                                     **{k: strict.asarray(x) for k, x in extra.items()
                                        if isinstance(x, np.ndarray)},
                                     **{k: x for k, x in extra.items() if not isinstance(x, np.ndarray)})
            gs = back_s(None if ct is None else strict.asarray(ct))
            assert_close(strict.to_numpy(vs), v, rtol=1e-13, atol=1e-13)
            for k in g:
                assert_close(strict.to_numpy(gs[k]), g[k], rtol=1e-11,
                             atol=1e-13 * float(np.max(np.abs(g[k]))), err_msg=f"{pm} {red} {k}")


@pytest.mark.parametrize("temperature", [0.05, np.asarray(0.05)])  # without and with the shift
def test_one_dominant_positive_keeps_its_relative_accuracy(temperature):
    # two views per sample, partners almost equal, others orthogonal: each term is
    # log(1 + Σ e^{z_n − z_p}) ≈ 2(N−1)·e^{−1/τ} ~ 1e-8, exact in the streamed form too
    e = np.eye(4)
    f = np.stack([e, e + 1e-3 * np.roll(e, 1, axis=1)], axis=1)
    for pm in ("out", "in", "per_pair"):
        want = nce_ref.nt_xent(f[:, 0], f[:, 1], temperature=float(temperature), reduction="none")
        got = supcon(f, temperature=temperature, positives=pm, reduction="none", block_size=3)
        assert float(np.max(want)) < 1e-7
        assert_close(got, want, rtol=1e-12, atol=0, err_msg=pm)


def test_positive_far_below_the_negatives_keeps_its_own_shift():
    # antipodal partner views at τ = 1e-3: each positive is ~2e3 nats below its row's
    # maximum, so e^{z − max} underflows; the positives' own maximum keeps the loss exact
    rng = np.random.default_rng(3)
    q = rng.standard_normal((4, 3))
    f = np.stack([q, -q], axis=1)
    for pm in ("out", "in", "per_pair"):
        for tau in (1e-3, np.asarray(1e-3)):
            v, g = nce_ref.value_and_grad(supcon)(f, temperature=tau, positives=pm, block_size=3)
            vd, back = _dense_supcon(f, temperature=tau, positives=pm)
            gd = back(np.asarray(1.0))
            assert math.isfinite(float(v)) and float(v) > 1e3
            assert_close(v, vd, rtol=1e-13, err_msg=pm)
            assert_close(g["features"], gd["features"], rtol=1e-10,
                         atol=1e-13 * float(np.max(np.abs(gd["features"]))), err_msg=pm)
            assert_close(g["temperature"], gd["temperature"], rtol=1e-10, err_msg=pm)


def test_subnormal_gradients_are_flushed_without_changing_the_result(rng):
    # float32, τ = 0.01 with dot similarity (no bound): most entries of e are subnormal
    f = rng.standard_normal((64, 2, 8)).astype(np.float32)
    f /= np.linalg.norm(f, axis=2, keepdims=True)
    y = rng.integers(0, 8, 64)
    for pm in ("out", "in", "per_pair"):
        v32, g32 = nce_ref.value_and_grad(supcon)(f, y, temperature=0.01, similarity="dot",
                                                  positives=pm, block_size=16)
        v64, g64 = nce_ref.value_and_grad(supcon)(f.astype(np.float64), y, temperature=0.01,
                                                  similarity="dot", positives=pm, block_size=16)
        assert_close(v32, v64, dtype="float32", temperature=0.01, err_msg=pm)
        scale = float(np.max(np.abs(g64["features"])))
        assert np.max(np.abs(g32["features"] - g64["features"])) <= 1e-3 * scale, pm


@pytest.mark.parametrize("opts", [{}, {"positives": "in", "block_size": 4},
                                  {"positives": "per_pair", "similarity": "dot", "block_size": 5}])
def test_streamed_runs_under_jax_jit(opts, rng):
    jax = pytest.importorskip("jax", reason="jax not installed")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    f = jnp.asarray(rng.standard_normal((5, 2, 3)))
    y = jnp.asarray(np.array([0, 1, 0, 2, 1]))
    fn = jax.jit(lambda f, y, t: nce_ref.value_and_grad(supcon)(f, y, temperature=t, **opts))
    v, g = fn(f, y, jnp.asarray(0.2))
    v0, g0 = nce_ref.value_and_grad(supcon)(np.asarray(f), np.asarray(y), temperature=0.2, **opts)
    assert_close(np.asarray(v), v0, rtol=1e-13)
    for k in ("features", "temperature"):
        assert_close(np.asarray(g[k]), g0[k], rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("labels,grouped", [
    (np.array([0.5, -1.0, 0.5, 2.0, -1.0, 0.5, 7.25, 2.0]), True),  # real labels
    (np.array([True, False, True, True, False, False, True, False]), True),
    (np.arange(40) % 20, False),  # 20 classes > max(16, D/4): the per-entry kernel
])
def test_group_kernel_takes_any_label_dtype_and_falls_back_for_many_classes(
        rng, monkeypatch, labels, grouped):
    import importlib

    module = importlib.import_module("nce_ref.losses.supcon")
    calls = []
    kernel = module.supcon_stream_groups
    monkeypatch.setattr(module, "supcon_stream_groups",
                        lambda *a, **k: calls.append(k["positives"]) or kernel(*a, **k))
    f = rng.standard_normal((labels.shape[0], 2, 4))
    for pm in ("out", "in", "per_pair"):
        kw = {"temperature": 0.3, "positives": pm, "block_size": 5}
        v, back = nce_ref.vjp(supcon, f, labels, **kw)
        want_v, want_back = _dense_supcon(f, labels, **kw)
        assert_close(v, want_v, rtol=1e-13, atol=1e-15, err_msg=pm)
        g, want = back(np.asarray(1.0)), want_back(np.asarray(1.0))
        for k in want:
            assert_close(g[k], want[k], rtol=1e-11, atol=1e-14, err_msg=f"{pm} {k}")
    assert calls == (["out", "in", "per_pair"] if grouped else [])
