"""InfoNCE family: closed forms, invariances, edge cases, peers and autograd oracles.

The generic value/gradient/backend checks of every case live in
``test_registry_generic.py``; this file holds what is specific to the family.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nce_ref
from nce_ref.testing import check_grad, numeric_grad
from nce_ref.testing._tolerances import FD_ATOL, FD_RTOL

from ._helpers import assert_close, assert_like

KINDS = ["cosine", "dot", "neg_sq_euclidean", "neg_euclidean"]


@pytest.fixture
def qk(rng):
    return rng.standard_normal((7, 5)), rng.standard_normal((7, 5))


# -- closed forms -------------------------------------------------------------------

@pytest.mark.cover()
@pytest.mark.parametrize("n", [1, 2, 9])
def test_collinear_gives_log_n_and_log_2n_minus_1(backend, dtype, n, rng):
    base = np.abs(rng.standard_normal(4)) + 0.1
    z = np.outer(rng.uniform(0.5, 3.0, n), base)
    q, k = backend.asarray(z, dtype), backend.asarray(z[::-1].copy(), dtype)
    got = assert_like(nce_ref.info_nce(q, k), backend, dtype=dtype, shape=(), ref_array=q)
    assert_close(got, math.log(n), dtype=dtype, temperature=0.1)
    got = assert_like(nce_ref.nt_xent(q, k), backend, dtype=dtype, shape=(), ref_array=q)
    assert_close(got, math.log(2 * n - 1), dtype=dtype, temperature=0.5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("opts", [{}, {"symmetric": True}, {"reduction": "sum"}])
def test_single_pair_gives_zero(kind, opts, rng):
    q, k = rng.standard_normal((1, 3)), rng.standard_normal((1, 3))
    v, g = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, similarity=kind, **opts)
    assert float(v) == 0.0
    assert np.all(g["query"] == 0) and np.all(g["key"] == 0) and float(g["temperature"]) == 0.0
    assert float(nce_ref.nt_xent(q, k, similarity=kind)) == 0.0


def test_two_orthonormal_pairs_closed_form():
    e = np.eye(2)
    # each row: LSE(1/τ, 0) − 1/τ = log(1 + e^{−1/τ})
    for tau in (0.05, 1.0, 20.0):
        assert_close(nce_ref.info_nce(e, e, temperature=tau), math.log1p(math.exp(-1 / tau)),
                     rtol=1e-15, atol=0)


# -- no cap, no vanishing gradient -----------------------------------------------

@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_positive_below_tiny_grows_linearly_and_keeps_its_gradient(backend, dtype_name, rng):
    q = rng.standard_normal((4, 6))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k = -q  # each positive has cosine −1: the worst candidate of its row
    tiny = np.finfo(dtype_name).tiny
    vals = []
    for tau in (1e-3, 5e-4):
        x, y = backend.asarray(q, dtype_name), backend.asarray(k, dtype_name)
        v, g = nce_ref.value_and_grad(nce_ref.info_nce)(x, y, temperature=tau)
        v = float(backend.to_numpy(v))
        # probability of the positive is e^{-v} per row on average, far below tiny
        assert v > -math.log(tiny) * 1.5
        vals.append(v)
        gq = backend.to_numpy(g["query"])
        assert np.all(np.isfinite(gq))
        # the gradient keeps the 1/τ scale of a linear loss, it does not vanish
        assert np.max(np.abs(gq)) > 0.1 / tau
    # linear in 1/τ: halving τ doubles the loss (up to the LSE's log-count term)
    assert vals[1] == pytest.approx(2 * vals[0], rel=1e-3)


# -- invariances -------------------------------------------------------------------

def test_symmetric_is_the_mean_of_both_directions(qk):
    q, k = qk
    for kind in KINDS:
        both = nce_ref.info_nce(q, k, symmetric=True, similarity=kind, reduction="none")
        a = nce_ref.info_nce(q, k, similarity=kind, reduction="none")
        b = nce_ref.info_nce(k, q, similarity=kind, reduction="none")
        assert_close(both, (a + b) / 2, rtol=1e-14, atol=1e-14)


def test_permuting_the_batch_permutes_the_terms(qk, rng):
    q, k = qk
    p = rng.permutation(q.shape[0])
    for f in (nce_ref.info_nce, nce_ref.nt_xent):
        a = f(q, k, reduction="none")
        b = f(q[p], k[p], reduction="none")
        want = a[p] if f is nce_ref.info_nce else np.concatenate([a[:7][p], a[7:][p]])
        assert_close(b, want, rtol=1e-14, atol=1e-14)


def test_cosine_is_scale_invariant(qk, rng):
    q, k = qk
    s = rng.uniform(0.1, 10.0, (q.shape[0], 1))
    assert_close(nce_ref.info_nce(q * s, k), nce_ref.info_nce(q, k), rtol=1e-14, atol=0)
    assert_close(nce_ref.nt_xent(q, k * s), nce_ref.nt_xent(q, k), rtol=1e-14, atol=0)


def test_from_scores_equals_info_nce_on_its_logits(qk):
    q, k = qk
    s = nce_ref.similarity(q, k, similarity="dot") / 0.3
    assert_close(nce_ref.info_nce_from_scores(s), nce_ref.info_nce(q, k, similarity="dot",
                                                                  temperature=0.3), rtol=1e-14)


def test_negative_layouts_agree(qk, rng):
    q, k = qk
    negs = rng.standard_normal((4, 5))
    unpaired = nce_ref.info_nce(q, k, negs, reduction="none")
    paired = nce_ref.info_nce(q, k, np.broadcast_to(negs, (7, 4, 5)).copy(),
                              negative_mode="paired", reduction="none")
    assert_close(paired, unpaired, rtol=1e-14, atol=1e-14)
    # with in-batch keys too: the scores are [s(q, k) | s(q, n)]
    s = np.concatenate([nce_ref.similarity(q, k), nce_ref.similarity(q, negs)], axis=1) / 0.1
    assert_close(nce_ref.info_nce(q, k, negs, in_batch_negatives=True, reduction="none"),
                 nce_ref.info_nce_from_scores(s, reduction="none"), rtol=1e-13, atol=1e-14)


def test_sum_mean_none_are_consistent(qk):
    q, k = qk
    per = nce_ref.info_nce(q, k, reduction="none")
    assert_close(nce_ref.info_nce(q, k, reduction="sum"), per.sum(), rtol=1e-14)
    assert_close(nce_ref.info_nce(q, k), per.mean(), rtol=1e-14)


# -- temperature -------------------------------------------------------------------

def test_temperature_as_0d_array_is_differentiable(backend, qk):
    q, k = (backend.asarray(a) for a in qk)
    t = backend.asarray(np.asarray(0.2))
    v, g = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, temperature=t)
    v2, g2 = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, temperature=0.2)
    gt = assert_like(g["temperature"], backend, dtype="float64", shape=(), ref_array=q)
    assert_close(gt, backend.to_numpy(g2["temperature"]), rtol=1e-14)
    report = check_grad(nce_ref.info_nce, *qk, temperature=0.2, wrt=("temperature",))
    assert report.max_abs_err["temperature"] < 1e-8


@pytest.mark.parametrize("tau", [1e-4, 1e-2, 1.0, 1e4])
def test_temperature_gradient_at_extremes(qk, tau):
    q, k = qk
    # d/dτ of L(s/τ): compare with a centred difference in log τ (relative step)
    f = lambda t: float(nce_ref.info_nce(q, k, temperature=t, reduction="sum"))  # noqa: E731
    _, g = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, temperature=tau, reduction="sum")
    h = 1e-6
    num = (f(tau * math.exp(h)) - f(tau * math.exp(-h))) / (2 * h) / tau
    assert float(g["temperature"]) == pytest.approx(num, rel=1e-5, abs=1e-8 / tau)


# -- low precision ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_half_precision_is_computed_in_float32(backend, name, qk):
    try:
        q = backend.asarray(qk[0], name)
        k = backend.asarray(qk[1], name)
    except (TypeError, AttributeError) as exc:
        pytest.skip(f"{backend.name} has no {name}: {exc}")
    v, g = nce_ref.value_and_grad(nce_ref.info_nce)(q, k)
    got = assert_like(v, backend, dtype=name, shape=(), ref_array=q)
    assert g["query"].dtype == q.dtype and g["temperature"].dtype == q.dtype
    # reference: the float32 computation on the same (rounded) inputs, rounded once
    q32 = backend.to_numpy(q).astype(np.float32)
    k32 = backend.to_numpy(k).astype(np.float32)
    want = float(nce_ref.info_nce(q32, k32))
    assert_close(got, want, dtype=name)


# -- peers and autograd oracles ----------------------------------------------------------

def _torch_info_nce(torch, q, k, tau, symmetric=False):
    F = torch.nn.functional
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / tau
    labels = torch.arange(q.shape[0])
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = (loss + F.cross_entropy(logits.T, labels)) / 2
    return loss


@pytest.mark.oracle
@pytest.mark.parametrize("symmetric", [False, True])
def test_gradients_match_torch_autograd(qk, symmetric):
    torch = pytest.importorskip("torch", reason="torch not installed: autograd oracle skipped")
    q, k = (torch.tensor(a, requires_grad=True) for a in qk)
    t = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    loss = _torch_info_nce(torch, q, k, t, symmetric)
    loss.backward()
    v, g = nce_ref.value_and_grad(nce_ref.info_nce)(*qk, temperature=0.07, symmetric=symmetric)
    assert_close(v, loss.item(), rtol=1e-13)
    assert_close(g["query"], q.grad.numpy(), rtol=1e-11, atol=1e-13)
    assert_close(g["key"], k.grad.numpy(), rtol=1e-11, atol=1e-13)
    assert_close(g["temperature"], t.grad.item(), rtol=1e-11)


@pytest.mark.oracle
@pytest.mark.parametrize("kind", KINDS)
def test_nt_xent_gradients_match_jax_grad(qk, kind):
    jax = pytest.importorskip("jax", reason="jax not installed: autograd oracle skipped")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy

    def sim(a, b):
        if kind == "cosine":
            a = a / jnp.linalg.norm(a, axis=1, keepdims=True)
            b = b / jnp.linalg.norm(b, axis=1, keepdims=True)
            return a @ b.T
        if kind == "dot":
            return a @ b.T
        d2 = jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
        if kind == "neg_sq_euclidean":
            return -d2
        return -jnp.sqrt(jnp.where(d2 > 0, d2, 1.0)) * (d2 > 0)

    def loss(z1, z2, t):
        u = jnp.concatenate([z1, z2])
        n2 = u.shape[0]
        logits = sim(u, u) / t
        logits = jnp.where(jnp.eye(n2, dtype=bool), -jnp.inf, logits)
        partner = (jnp.arange(n2) + n2 // 2) % n2
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[jnp.arange(n2), partner])

    z1, z2 = qk
    val, grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(jnp.asarray(z1), jnp.asarray(z2), 0.3)
    v, g = nce_ref.value_and_grad(nce_ref.nt_xent)(z1, z2, temperature=0.3, similarity=kind)
    assert_close(v, float(val), rtol=1e-12)
    for name, ref in zip(("z1", "z2", "temperature"), grads):
        assert_close(g[name], np.asarray(ref), rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("mode", ["none", "unpaired", "paired"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_info_nce_pytorch(qk, rng, mode, reduction):
    torch = pytest.importorskip("torch", reason="torch not installed")
    info_nce_pt = pytest.importorskip("info_nce", reason="info-nce-pytorch not installed")
    q, k = qk
    negs = None if mode == "none" else (rng.standard_normal((5, 5)) if mode == "unpaired"
                                        else rng.standard_normal((7, 3, 5)))
    kw = {} if mode == "none" else {"negative_mode": mode}
    want = info_nce_pt.info_nce(torch.from_numpy(q), torch.from_numpy(k),
                                None if negs is None else torch.from_numpy(negs),
                                temperature=0.1, reduction=reduction, **kw)
    got = nce_ref.info_nce(q, k, negs, temperature=0.1, reduction=reduction, **kw)
    assert_close(got, want.numpy(), rtol=1e-12, atol=1e-13)


def test_nt_xent_matches_pytorch_metric_learning(qk):
    torch = pytest.importorskip("torch", reason="torch not installed")
    pml = pytest.importorskip("pytorch_metric_learning.losses",
                              reason="pytorch-metric-learning not installed")
    z1, z2 = qk
    loss = pml.SelfSupervisedLoss(pml.NTXentLoss(temperature=0.5), symmetric=True)
    want = loss(torch.from_numpy(z1), torch.from_numpy(z2)).item()
    assert_close(nce_ref.nt_xent(z1, z2, temperature=0.5), want, rtol=1e-12)


# -- random inputs: finite or a clear error --------------------------------------------

_shapes = st.tuples(st.integers(1, 6), st.integers(1, 5))


@st.composite
def _embeddings(draw, dtype=np.float64, lo=-30, hi=30):
    n, d = draw(_shapes)
    mant = draw(hnp.arrays(dtype, (2, n, d), elements=st.floats(-1, 1, width=64)))
    expo = draw(hnp.arrays(np.int64, (2, n, d), elements=st.integers(lo, hi)))
    x = (mant * 10.0 ** expo).astype(dtype)
    return x[0], x[1]


@given(qk=_embeddings(), log_tau=st.floats(-4, 4), kind=st.sampled_from(KINDS),
       sym=st.booleans())
def test_hypothesis_float64_finite_for_all_magnitudes(qk, log_tau, kind, sym):
    q, k = qk
    tau = 10.0 ** log_tau
    v, g = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, temperature=tau, similarity=kind,
                                                   symmetric=sym)
    assert np.isfinite(v) and v >= -1e-12 * max(1.0, abs(float(v)))
    for name in ("query", "key", "temperature"):
        assert np.all(np.isfinite(g[name])), name
    v2 = nce_ref.nt_xent(q, k, temperature=tau, similarity=kind)
    assert np.isfinite(v2)


@given(qk=_embeddings(np.float32, -20, 20), log_tau=st.floats(-4, 4),
       kind=st.sampled_from(KINDS))
def test_hypothesis_float32_finite_or_clear_error(qk, log_tau, kind):
    q, k = qk
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            v = nce_ref.info_nce(q, k, temperature=10.0 ** log_tau, similarity=kind)
    except FloatingPointError as exc:
        assert "overflowed" in str(exc)
        return
    assert v.dtype == np.float32 and np.isfinite(v)


# -- value_and_grad API ---------------------------------------------------------------

def test_value_and_grad_keys_shapes_and_no_mutation(qk, rng):
    q, k = qk
    negs = rng.standard_normal((3, 5))
    copies = [a.copy() for a in (q, k, negs)]
    v, g = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, negs)
    assert set(g) == {"query", "key", "negatives", "temperature"}
    assert g["negatives"].shape == negs.shape and g["query"].shape == q.shape
    for a, c in zip((q, k, negs), copies):
        np.testing.assert_array_equal(a, c)
    assert float(v) == float(nce_ref.info_nce(q, k, negs))


def test_cotangent_required_and_checked_for_unreduced_output(qk):
    vg = nce_ref.value_and_grad(nce_ref.info_nce)
    with pytest.raises(ValueError, match="cotangent"):
        vg(*qk, reduction="none")
    with pytest.raises(ValueError, match=r"cotangent.*shape \(7,\)"):
        vg(*qk, reduction="none", cotangent=np.ones(3))
    v, g = vg(*qk, reduction="none", cotangent=np.ones(7))
    _, g_sum = vg(*qk, reduction="sum")
    assert_close(g["query"], g_sum["query"], rtol=1e-14, atol=1e-16)


def test_value_and_grad_rejects_unregistered_functions():
    with pytest.raises(TypeError, match="not a differentiable nce_ref function"):
        nce_ref.value_and_grad(np.sum)


# -- streaming ------------------------------------------------------------------------

@pytest.mark.cover()
@pytest.mark.parametrize("kind", ["cosine", "dot", "neg_sq_euclidean", "neg_euclidean"])
@pytest.mark.parametrize("block", [1, 2, 5, 7, 100])
def test_streamed_blocks_equal_one_block(backend, kind, block, rng):
    q, k, negs = rng.standard_normal((7, 4)), rng.standard_normal((7, 4)), rng.standard_normal((3, 4))
    Q, K, Nn = (backend.asarray(a) for a in (q, k, negs))
    for f, args, kw in [(nce_ref.info_nce, (Q, K), {}),
                        (nce_ref.info_nce, (Q, K), {"symmetric": True}),
                        (nce_ref.info_nce, (Q, K, Nn), {"in_batch_negatives": True}),
                        (nce_ref.nt_xent, (Q, K), {})]:
        v1, g1 = nce_ref.value_and_grad(f)(*args, similarity=kind, block_size=10**6, **kw)
        vb, gb = nce_ref.value_and_grad(f)(*args, similarity=kind, block_size=block, **kw)
        assert_close(backend.to_numpy(vb), backend.to_numpy(v1), rtol=1e-14, atol=1e-14)
        for name in g1:
            assert_close(backend.to_numpy(gb[name]), backend.to_numpy(g1[name]), rtol=1e-12,
                         atol=1e-14, err_msg=name)


@pytest.mark.cover()
@pytest.mark.parametrize("kind", ["cosine", "dot", "neg_sq_euclidean", "neg_euclidean"])
@pytest.mark.parametrize("block", [1, 3, 7])
def test_streamed_equals_the_dense_score_matrix(backend, kind, block, rng):
    # the streamed kernel against the dense path: the materialized similarity matrix
    # through info_nce_from_scores (columns: keys, then the unpaired negatives)
    q, k, negs = rng.standard_normal((7, 4)), rng.standard_normal((7, 4)), rng.standard_normal((3, 4))
    Q, K, Nn = (backend.asarray(a) for a in (q, k, negs))
    tau = 0.3

    def dense(query, key, negatives, temperature):
        s = nce_ref.similarity(query, np.concatenate([key, negatives]), similarity=kind) / temperature
        return nce_ref.info_nce_from_scores(s)

    v, g = nce_ref.value_and_grad(nce_ref.info_nce)(Q, K, Nn, in_batch_negatives=True, similarity=kind,
                                                      temperature=tau, block_size=block)
    want = dense(q, k, negs, tau)
    assert_close(backend.to_numpy(v), want, rtol=1e-13, atol=1e-14)
    # gradients against central differences of the dense composition
    args = {"query": q, "key": k, "negatives": negs}
    for name in args:
        num = numeric_grad(lambda x, name=name: float(dense(**(args | {name: x}), temperature=tau)),
                           args[name])
        assert_close(backend.to_numpy(g[name]), num, rtol=FD_RTOL, atol=FD_ATOL, err_msg=name)
    num_t = numeric_grad(lambda t: float(dense(q, k, negs, t)), tau)
    assert_close(backend.to_numpy(g["temperature"]), num_t, rtol=FD_RTOL, atol=FD_ATOL)


def test_memory_budget_picks_the_block():
    from nce_ref._stream import choose_block, on_accelerator

    assert choose_block(1000, 1000, 4, memory_budget=2 * 1000 * 4 * 10) == 10
    assert choose_block(5, 1000, 8) == 5
    assert choose_block(5, 1000, 8, block_size=3) == 3
    # defaults: NumPy keeps each buffer under the heap cap (except where one block saves a
    # GEMM); other CPU arrays and no array at all get the plain budget
    t = nce_ref.get_tuning()
    per_row = 2 * 10**4 * 4
    assert choose_block(10**5, 10**4, 4, like=np.zeros(1)) == 2 * t.heap_buffer_bytes // per_row
    # ... unless that leaves fewer than heap_min_rows rows: then the plain budget
    assert choose_block(10**5, 10**5, 4, like=np.zeros(1)) == t.memory_budget // (2 * 10**5 * 4)
    assert choose_block(10**5, 10**4, 4, like=np.zeros(1), heap_cap=False) == \
        t.memory_budget // per_row
    assert choose_block(10**5, 10**4, 4) == t.memory_budget // per_row
    # the tuning in effect sets the defaults
    with nce_ref.tuning(memory_budget=per_row * 7, heap_buffer_bytes=per_row, heap_min_rows=1):
        assert choose_block(10**5, 10**4, 4) == 7
        assert choose_block(10**5, 10**4, 4, like=np.zeros(1)) == 2
    assert not on_accelerator(np.zeros(1))
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((50, 8)), rng.standard_normal((50, 8))
    small = nce_ref.info_nce(q, k, memory_budget=2 * 50 * 8)  # one row per block
    assert_close(small, nce_ref.info_nce(q, k), rtol=1e-14)


def test_subnormal_probabilities_are_flushed_without_changing_the_result(rng):
    # float32, CLIP's temperature 0.01: most softmax entries are subnormal
    q = rng.standard_normal((64, 16)).astype(np.float32)
    k = (q + 0.3 * rng.standard_normal((64, 16))).astype(np.float32)
    v32, g32 = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, temperature=0.01)
    v64, g64 = nce_ref.value_and_grad(nce_ref.info_nce)(q.astype(float), k.astype(float),
                                                       temperature=0.01)
    assert_close(v32, v64, dtype="float32", temperature=0.01)
    for name in ("query", "key"):
        scale = float(np.max(np.abs(g64[name])))
        assert np.max(np.abs(g32[name] - g64[name])) <= 1e-3 * scale, name


@pytest.mark.parametrize("opts", [{}, {"symmetric": True, "block_size": 2},
                                  {"similarity": "neg_euclidean"}])
def test_runs_under_jax_jit(opts, rng):
    jax = pytest.importorskip("jax", reason="jax not installed")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    q, k = jnp.asarray(rng.standard_normal((6, 3))), jnp.asarray(rng.standard_normal((6, 3)))
    f = jax.jit(lambda q, k, t: nce_ref.value_and_grad(nce_ref.info_nce)(q, k, temperature=t, **opts))
    v, g = f(q, k, jnp.asarray(0.2))
    v0, g0 = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, temperature=0.2, **opts)
    assert_close(np.asarray(v), np.asarray(v0), rtol=1e-13)
    for name in ("query", "key", "temperature"):
        assert_close(np.asarray(g[name]), np.asarray(g0[name]), rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("kw", [{}, {"symmetric": True}, {"similarity": "dot"},
                                {"temperature": 0.01}, {"similarity": "dot", "temperature": 5.0}])
def test_numpy_fast_paths_equal_the_generic_path(kw, rng):
    # NumPy's fast paths (exp on two threads, row sums from the gradient GEMM, the O(N·D)
    # chain in chunks of rows) against the generic Array API path that array-api-strict
    # runs: the same arithmetic; thresholds lowered so that every fast path runs at N = 40
    import array_api_strict as xs

    with nce_ref.tuning(thread_min_rows=4, thread_min_size=16, threads=2,
                        chunk_bytes=3 * 4 * 6 * 8):  # chunks of 3 rows (+ a remainder)
        _fast_paths_equal_the_generic_path(kw, rng, xs)


def _fast_paths_equal_the_generic_path(kw, rng, xs):
    q, k = rng.standard_normal((40, 6)), rng.standard_normal((40, 6))
    kw = {"temperature": 0.2} | kw
    vg = nce_ref.value_and_grad(nce_ref.info_nce)
    for block in (40, 9):
        v, g = vg(q, k, block_size=block, **kw)
        vs, gs = vg(xs.asarray(q), xs.asarray(k), block_size=block, **kw)
        assert_close(v, np.asarray(vs), rtol=1e-14, atol=0)
        for name in g:
            assert_close(g[name], np.asarray(gs[name]), rtol=1e-13, atol=1e-16, err_msg=name)
    # the pullback is reusable: the cotangent scales fresh arrays, the stored ones stay
    _, back = nce_ref.vjp(nce_ref.info_nce, q, k, **kw)
    g1, g3, g1_again = back(np.asarray(1.0)), back(np.asarray(-3.0)), back(np.asarray(1.0))
    for name in g1:
        ref = -3.0 * np.asarray(g1[name])  # the chain's rounding, on its largest terms
        assert_close(g3[name], ref, rtol=1e-13, atol=1e-14 * np.max(np.abs(ref)), err_msg=name)
        assert_close(g1_again[name], g1[name], rtol=0, atol=0, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_logits_far_below_their_row_max_give_the_dense_result(rng, dtype):
    # dot scores spread over thousands of nats: most e^{z − m} are far below the smallest
    # normal, where the exp is clamped (_stream.exp_floor) instead of taking libm's slow
    # subnormal path; value and gradient equal the dense score matrix's to rounding
    q = (8.0 * rng.standard_normal((60, 6))).astype(dtype)
    k = (8.0 * rng.standard_normal((60, 6))).astype(dtype)
    tau = 0.05
    v, g = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, similarity="dot", temperature=tau,
                                                    block_size=7)
    q64, k64 = q.astype(np.float64), k.astype(np.float64)
    s = q64 @ k64.T / tau
    assert float(np.max(s) - np.min(s)) > 2000.0
    want, gs = nce_ref.value_and_grad(nce_ref.info_nce_from_scores)(s)
    assert_close(v, want, dtype=dtype, temperature=tau)
    for name, ref in (("query", gs["scores"] @ k64 / tau), ("key", gs["scores"].T @ q64 / tau)):
        scale = float(np.max(np.abs(ref)))
        assert_close(g[name], ref, rtol=1e-4 if dtype == "float32" else 1e-10,
                     atol=(1e-5 if dtype == "float32" else 1e-12) * scale, err_msg=name)
