"""supcon: closed forms, NT-Xent equivalence, every option, peers and autograd oracles.

The generic value/gradient/backend checks of every case in
``nce_ref/testing/cases/supcon.py`` run in ``test_registry_generic.py``; this file
holds what is specific to SupCon.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import nce_ref
from nce_ref.losses.supcon import supcon
from nce_ref.testing import check_grad
from nce_ref.testing.conventions import supcontrast_supcon

from ._helpers import assert_close, assert_like

KINDS = ["cosine", "dot", "neg_sq_euclidean", "neg_euclidean"]
POSITIVES = ["out", "in", "per_pair"]
vg = nce_ref.value_and_grad(supcon)


@pytest.fixture
def views(rng):
    return rng.standard_normal((5, 2, 3))


@pytest.fixture
def labelled(rng):
    return rng.standard_normal((6, 2, 3)), np.array([4, 1, 4, 9, 1, 4])


# -- NT-Xent and closed forms ------------------------------------------------------------

@pytest.mark.parametrize("positives", POSITIVES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_no_labels_equals_nt_xent_on_every_backend(backend, dtype, views, positives, reduction):
    f = backend.asarray(views, dtype)
    z1, z2 = backend.asarray(views[:, 0], dtype), backend.asarray(views[:, 1], dtype)
    got = supcon(f, temperature=0.3, positives=positives, reduction=reduction)
    shape = () if reduction == "mean" else (10,)
    got = assert_like(got, backend, dtype=dtype, shape=shape, ref_array=f)
    want = backend.to_numpy(nce_ref.nt_xent(z1, z2, temperature=0.3, reduction=reduction))
    assert_close(got, want, dtype=dtype, temperature=0.3)


@pytest.mark.parametrize("kind", KINDS)
def test_no_labels_gradients_equal_nt_xent(views, kind):
    v, g = vg(views, temperature=0.2, similarity=kind)
    v2, g2 = nce_ref.value_and_grad(nce_ref.nt_xent)(views[:, 0], views[:, 1], temperature=0.2,
                                                    similarity=kind)
    assert_close(v, v2, rtol=1e-13)
    assert_close(g["features"][:, 0], g2["z1"], rtol=1e-11, atol=1e-13)
    assert_close(g["features"][:, 1], g2["z2"], rtol=1e-11, atol=1e-13)
    assert_close(g["temperature"], g2["temperature"], rtol=1e-11)


def test_same_array_as_both_views_is_nt_xent(rng):
    # the partner view is identical (cosine 1): excluded only by index, never by identity
    z = rng.standard_normal((4, 3))
    got = supcon(np.stack([z, z], axis=1), temperature=0.5)
    assert_close(got, nce_ref.nt_xent(z, z, temperature=0.5), rtol=1e-14)
    assert float(got) > 0


def test_orthogonal_two_classes_is_log3_where_supcontrast_is_nan(backend, dtype):
    e = backend.asarray(np.eye(4), dtype)
    y = backend.asarray(np.array([0, 0, 1, 1]))
    got = assert_like(supcon(e, y, temperature=0.005), backend, dtype=dtype, shape=())
    assert_close(got, math.log(3), dtype=dtype)
    # SupContrast's formula (max over all logits, self included, then exp): exp(-200) is 0
    # in float32, log(0) = -inf, and 0 * -inf = NaN
    with np.errstate(divide="ignore", invalid="ignore"):
        logits = np.eye(4, dtype=np.float32) / np.float32(0.005)
        logits = logits - logits.max(axis=1, keepdims=True)
        log_prob = logits - np.log((np.exp(logits) * (1 - np.eye(4, dtype=np.float32))).sum(1,
                                                                                       keepdims=True))
        pos = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], np.float32)
        assert np.isnan(-(pos * log_prob).sum(1).mean())


def test_duplicate_rows_are_positives_not_self(rng):
    e = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    y = np.array([0, 0, 1, 1])
    # anchors 0, 1: positive at cosine 1, two negatives at 0; anchors 2, 3: all at 0
    want = (2 * (math.log(math.e + 2) - 1) + 2 * math.log(3)) / 4
    assert_close(supcon(e, y, temperature=1.0), want, rtol=1e-15)


def test_hand_computed_in_out_and_per_pair():
    # one anchor class of 3 (two positives per anchor) and one negative, all orthogonal
    # except rows 0 and 1 (cosine 1): logits at τ = 1
    f = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    y = np.array([0, 0, 0, 1])
    e = math.e
    # anchor 0: candidates z = [1 (row 1, pos), 0 (row 2, pos), 0 (row 3, neg)]
    out0 = math.log(e + 2) - 0.5
    in0 = math.log(e + 2) - math.log((e + 1) / 2)
    pp0 = (math.log(e + 1) - 1) + math.log(2)
    # anchor 2: candidates [0, 0 (pos), 0 (neg)]
    out2 = in2 = math.log(3)
    pp2 = 2 * math.log(2)
    got = {m: supcon(f, y, temperature=1.0, positives=m, reduction="none") for m in POSITIVES}
    assert_close(got["out"][[0, 2]], [out0, out2], rtol=1e-15)
    assert_close(got["in"][[0, 2]], [in0, in2], rtol=1e-15)
    assert_close(got["per_pair"][[0, 2]], [pp0, pp2], rtol=1e-15)
    assert float(got["out"][3]) == 0.0  # anchor 3 has no positive
    # per_pair "mean" averages over the 6 pairs, not the anchors
    assert_close(supcon(f, y, temperature=1.0, positives="per_pair"), got["per_pair"].sum() / 6,
                 rtol=1e-15)


# -- anchors without positives ----------------------------------------------------------------

@pytest.mark.parametrize("positives,no_positive", [
    ("out", "exclude"), ("out", "zero"), ("in", "exclude"), ("in", "zero"), ("per_pair", "exclude")])
def test_no_positive_pair_in_the_batch_gives_zero_and_zero_gradient(rng, positives, no_positive):
    f = rng.standard_normal((5, 3))
    for y in (np.arange(5), None):  # all labels distinct; no labels with one view
        v, g = vg(f, y, temperature=0.1, positives=positives, no_positive=no_positive)
        assert float(v) == 0.0
        assert np.all(g["features"] == 0) and float(g["temperature"]) == 0.0
    v, g = vg(f[:1], temperature=0.1)  # N = 1, V = 1
    assert float(v) == 0.0 and np.all(g["features"] == 0)


def test_exclude_and_zero_differ_by_the_share_of_anchors_with_a_positive(rng):
    f = rng.standard_normal((8, 3))
    y = np.array([3, 3, 1, 1, 1, 0, 5, 6])  # anchors 5, 6 and 7 have no positive
    per = supcon(f, y, reduction="none")
    assert np.all(per[5:] == 0) and np.all(per[:5] > 0)
    assert_close(supcon(f, y), per.sum() / 5, rtol=1e-14)
    assert_close(supcon(f, y, no_positive="zero"), per.sum() / 8, rtol=1e-14)


# -- options ----------------------------------------------------------------------------------

def test_all_labels_equal_has_no_negatives(labelled):
    f, _ = labelled
    y = np.zeros(6, dtype=np.int64)
    # every candidate is a positive: L_in = log n_a, per_pair terms are 0
    assert_close(supcon(f, y, positives="in", reduction="none"), np.full(12, math.log(11)),
                 rtol=1e-14)
    assert_close(supcon(f, y, positives="per_pair"), 0.0, atol=0)
    assert float(supcon(f, y)) >= math.log(11)  # L_out >= L_in (Jensen)


def test_labels_equal_the_mask_built_from_them(labelled):
    f, y = labelled
    m = y[:, None] == y[None, :]
    for kw in ({}, {"positives": "per_pair"}, {"contrast_mode": "one", "positives": "in"}):
        a = supcon(f, y, reduction="none", **kw)
        assert_close(supcon(f, mask=m, reduction="none", **kw), a, rtol=1e-15, atol=0)
        assert_close(supcon(f, mask=m.astype(np.int32), reduction="none", **kw), a, rtol=1e-15, atol=0)
        onehot = (y[:, None] == np.unique(y)[None, :]).astype(np.int64)
        assert_close(supcon(f, onehot, reduction="none", **kw), a, rtol=1e-15, atol=0)


def test_label_values_do_not_matter_only_equality(labelled):
    f, y = labelled
    a = supcon(f, y, reduction="none")
    for y2 in (y * 10**12 - 7, -y, y.astype(np.float64) / 3, np.array([0, 1, 0, 2, 1, 0])):
        assert_close(supcon(f, y2, reduction="none"), a, rtol=1e-15, atol=0)


def test_permuting_samples_permutes_the_terms(labelled, rng):
    f, y = labelled
    p = rng.permutation(6)
    a = supcon(f, y, reduction="none").reshape(2, 6)
    b = supcon(f[p], y[p], reduction="none").reshape(2, 6)
    assert_close(b, a[:, p], rtol=1e-13, atol=1e-14)


def test_asymmetric_mask_is_read_row_by_row(rng):
    f = rng.standard_normal((3, 2))
    m = np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=bool)  # only 1 is a positive of 0
    per = supcon(f, mask=m, temperature=0.5, reduction="none")
    assert per[0] > 0 and per[1] == 0 and per[2] == 0
    # mask[i, i] = 0 with two views: the other view of i is a negative
    f2 = rng.standard_normal((2, 2, 3))
    per = supcon(f2, mask=np.zeros((2, 2), bool), reduction="none")
    assert np.all(per == 0)
    per = supcon(f2, mask=np.eye(2, dtype=bool), reduction="none", temperature=0.5)
    assert_close(per, nce_ref.nt_xent(f2[:, 0], f2[:, 1], temperature=0.5, reduction="none"),
                 rtol=1e-14)


def test_contrast_mode_one_is_the_first_view_rows_of_all(labelled):
    f, y = labelled
    all_ = supcon(f, y, reduction="none", contrast_mode="all")
    one = supcon(f, y, reduction="none", contrast_mode="one")
    assert one.shape == (6,)
    assert_close(one, all_[:6], rtol=1e-15, atol=0)


def test_base_temperature_scales_value_and_gradients(labelled):
    f, y = labelled
    v0, g0 = vg(f, y, temperature=0.2)
    v1, g1 = vg(f, y, temperature=0.2, base_temperature=0.07)
    k = 0.2 / 0.07
    assert_close(v1, k * v0, rtol=1e-14)
    assert_close(g1["features"], k * g0["features"], rtol=1e-13, atol=1e-15)
    assert_close(g1["temperature"], k * g0["temperature"] + float(v0) / 0.07, rtol=1e-12)


@pytest.mark.parametrize("positives", POSITIVES)
@pytest.mark.parametrize("contrast_mode", ["all", "one"])
@pytest.mark.parametrize("opts", [
    {"temperature": 0.3},
    {"temperature": 0.1, "similarity": "dot", "reduction": "none"},
    {"temperature": 0.5, "base_temperature": 0.07, "reduction": "sum"},
    {"temperature": 0.2, "similarity": "neg_euclidean", "no_positive": "zero"},
    {"temperature": 0.7, "similarity": "neg_sq_euclidean", "mask": "asym"},
])
def test_gradient_matches_finite_differences(rng, positives, contrast_mode, opts):
    if positives == "per_pair" and opts.get("no_positive") == "zero":
        opts = {k: v for k, v in opts.items() if k != "no_positive"}
    f = rng.standard_normal((4, 2, 3))
    kw = dict(opts)
    y = np.array([0, 1, 0, 2])
    if kw.get("mask") == "asym":
        kw["mask"], y = np.array([[1, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 1, 1]]), None
    check_grad(supcon, f, y, positives=positives, contrast_mode=contrast_mode, **kw)


@pytest.mark.parametrize("tau", [1e-3, 1e-2, 1.0, 1e3])
def test_temperature_gradient_at_extremes(labelled, tau):
    f, y = labelled
    fn = lambda t: float(supcon(f, y, temperature=t, reduction="sum"))  # noqa: E731
    _, g = vg(f, y, temperature=tau, reduction="sum")
    h = 1e-6
    num = (fn(tau * math.exp(h)) - fn(tau * math.exp(-h))) / (2 * h) / tau
    assert float(g["temperature"]) == pytest.approx(num, rel=1e-5, abs=1e-8 / tau)


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_positive_below_tiny_grows_linearly_and_keeps_its_gradient(backend, dtype_name, rng):
    z = rng.standard_normal((4, 3))
    # each positive is nearly antipodal: the worst candidate of its row by ~1/τ nats
    f = np.stack([z, -z + 0.2 * rng.standard_normal((4, 3))], axis=1)
    vals = []
    for tau in (1e-3, 5e-4):
        v, g = vg(backend.asarray(f, dtype_name), temperature=tau)
        v = float(backend.to_numpy(v))
        assert v > -math.log(np.finfo(dtype_name).tiny) * 1.5
        vals.append(v)
        gf = backend.to_numpy(g["features"])
        # the gradient keeps the 1/τ scale of a linear loss, it does not vanish
        assert np.all(np.isfinite(gf)) and np.max(np.abs(gf)) > 0.01 / tau  # mean of 8 anchors
        assert float(backend.to_numpy(g["temperature"])) == pytest.approx(-v / tau, rel=1e-2)
    assert vals[1] == pytest.approx(2 * vals[0], rel=1e-3)


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_half_precision_is_computed_in_float32(backend, name, labelled):
    f, y = labelled
    try:
        x = backend.asarray(f, name)
    except (TypeError, AttributeError) as exc:
        pytest.skip(f"{backend.name} has no {name}: {exc}")
    v, g = vg(x, backend.asarray(y), temperature=0.5)
    got = assert_like(v, backend, dtype=name, shape=(), ref_array=x)
    assert g["features"].dtype == x.dtype and g["temperature"].dtype == x.dtype
    want = float(supcon(backend.to_numpy(x).astype(np.float32), y, temperature=0.5))
    assert_close(got, want, dtype=name)


@pytest.mark.parametrize("positives", POSITIVES)
def test_backend_gradients_match_numpy_with_labels_and_one_view(backend, rng, positives):
    f = rng.standard_normal((7, 3))
    y = np.array([2, 2, 5, 5, 5, 0, 1])
    ref_v, ref_g = vg(f, y, temperature=0.2, positives=positives)
    v, g = vg(backend.asarray(f), backend.asarray(y), temperature=0.2, positives=positives)
    assert_close(backend.to_numpy(v), ref_v, rtol=1e-13)
    assert_close(backend.to_numpy(g["features"]), ref_g["features"], rtol=1e-10, atol=1e-13)


def test_runs_under_jax_jit(labelled):
    jax = pytest.importorskip("jax", reason="jax not installed")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    f, y = labelled
    fn = jax.jit(lambda f, y, t: vg(f, y, temperature=t, positives="per_pair"))
    v, g = fn(jnp.asarray(f), jnp.asarray(y), jnp.asarray(0.2))
    v0, g0 = vg(f, y, temperature=0.2, positives="per_pair")
    assert_close(np.asarray(v), v0, rtol=1e-13)
    assert_close(np.asarray(g["features"]), g0["features"], rtol=1e-11, atol=1e-13)


# -- peers and autograd oracles ------------------------------------------------------------------

@pytest.mark.oracle
@pytest.mark.parametrize("setup", ["labels", "labels-one", "mask", "none", "singletons"])
def test_matches_supcontrast_values_and_autograd(rng, setup):
    torch = pytest.importorskip("torch", reason="torch not installed: SupContrast oracle skipped")
    F = torch.nn.functional
    raw = rng.standard_normal((6, 2, 4))
    y = np.array([0, 1, 0, 2, 1, 0]) if setup != "singletons" else np.array([0, 1, 2, 0, 3, 4])
    m = np.triu(rng.random((6, 6)) < 0.6).astype(np.float64)
    mode = "one" if setup == "labels-one" else "all"
    x = torch.tensor(raw, requires_grad=True)
    t = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    kw = {"labels": torch.tensor(y)} if setup in ("labels", "labels-one", "singletons") else {}
    if setup == "mask":
        kw = {"mask": torch.tensor(m)}
    # the transcription of SupContrast that `nce-ref verify` also uses (one copy)
    loss = supcontrast_supcon(F.normalize(x, dim=2), temperature=t, contrast_mode=mode, **kw)
    loss.backward()
    args = (raw,) if setup in ("mask", "none") else (raw, y)
    extra = {"mask": m} if setup == "mask" else {}
    v, g = vg(*args, temperature=0.1, base_temperature=0.07, no_positive="zero",
              contrast_mode=mode, **extra)
    assert_close(v, loss.item(), rtol=1e-12)
    assert_close(g["features"], x.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert_close(g["temperature"], t.grad.item(), rtol=1e-10)


def _torch_reference(torch, f, pos, neg, t, positives):
    """A plain torch formulation of the three objectives on logits with boolean masks."""
    F = torch.nn.functional
    u = F.normalize(f, dim=1)
    z = u @ u.T / t
    ninf = torch.tensor(-math.inf, dtype=z.dtype)
    cand = pos | neg
    lse_k = torch.logsumexp(torch.where(cand, z, ninf), dim=1)
    npos = pos.sum(1).to(z.dtype)
    has = npos > 0
    if positives == "out":
        per = lse_k - torch.where(pos, z, 0.0).sum(1) / npos.clamp(min=1)
    elif positives == "in":
        per = lse_k - torch.logsumexp(torch.where(pos, z, ninf), dim=1) + torch.log(npos.clamp(min=1))
    else:
        lse_n = torch.logsumexp(torch.where(neg, z, ninf), dim=1, keepdim=True)
        terms = torch.logaddexp(z, lse_n) - z
        return torch.where(pos, terms, 0.0).sum() / pos.sum()
    return torch.where(has, per, 0.0).sum() / has.sum()


@pytest.mark.oracle
@pytest.mark.parametrize("positives", POSITIVES)
def test_gradients_match_torch_autograd(rng, positives):
    torch = pytest.importorskip("torch", reason="torch not installed: autograd oracle skipped")
    f = rng.standard_normal((7, 3))
    y = np.array([2, 2, 5, 5, 5, 0, 1])
    x = torch.tensor(f, requires_grad=True)
    t = torch.tensor(0.15, dtype=torch.float64, requires_grad=True)
    same = torch.tensor(y[:, None] == y[None, :])
    eye = torch.eye(7, dtype=torch.bool)
    loss = _torch_reference(torch, x, same & ~eye, ~same, t, positives)
    loss.backward()
    v, g = vg(f, y, temperature=0.15, positives=positives)
    assert_close(v, loss.item(), rtol=1e-13)
    assert_close(g["features"], x.grad.numpy(), rtol=1e-10, atol=1e-13)
    assert_close(g["temperature"], t.grad.item(), rtol=1e-10)


def test_matches_pytorch_metric_learning_supcon_and_ntxent(rng):
    torch = pytest.importorskip("torch", reason="torch not installed")
    pml = pytest.importorskip("pytorch_metric_learning.losses",
                              reason="pytorch-metric-learning not installed")
    f = rng.standard_normal((9, 4))
    y = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3])  # sample 8 has no positive
    T = torch.from_numpy
    for tau in (0.1, 0.5):
        want = pml.SupConLoss(temperature=tau)(T(f), T(y)).item()
        assert_close(supcon(f, y, temperature=tau), want, rtol=1e-12)
        want = pml.NTXentLoss(temperature=tau)(T(f), T(y)).item()
        assert_close(supcon(f, y, temperature=tau, positives="per_pair"), want, rtol=1e-12)


def test_matches_optax_ntxent_with_labels(rng):
    jax = pytest.importorskip("jax", reason="jax not installed")
    optax = pytest.importorskip("optax", reason="optax not installed")
    jax.config.update("jax_enable_x64", True)
    f = rng.standard_normal((8, 3))
    y = np.array([3, 3, 3, 1, 1, 4, 4, 4])
    want = float(optax.losses.ntxent(jax.numpy.asarray(f), jax.numpy.asarray(y), 0.2))
    assert_close(supcon(f, y, temperature=0.2, positives="per_pair"), want, rtol=1e-12)


def test_matches_lightly_transcription(rng):
    """lightly's ``SupConLoss(temperature=τ, rescale=True)(out0, out1, labels)``,
    transcribed in NumPy (lightly/loss/supcon_loss.py, single process)."""
    out0, out1 = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    y = np.array([0, 1, 0, 1, 2])
    tau = 0.5
    o = np.vstack([out0, out1])
    o = o / np.linalg.norm(o, axis=1, keepdims=True)
    logits = o @ o.T / tau
    np.fill_diagonal(logits, -1e9)
    lab = np.tile(y, 2)
    soft = (lab[None, :] == lab[:, None]).astype(float)
    np.fill_diagonal(soft, 0.0)
    soft /= soft.sum(axis=1)
    m = logits.max(axis=1, keepdims=True)
    log_proba = logits - (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))
    want = -(soft * log_proba).sum(-1).mean() * tau
    got = supcon(np.stack([out0, out1], axis=1), y, temperature=tau, base_temperature=1.0)
    assert_close(got, want, rtol=1e-13)


# -- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("call,exc,match", [
    (lambda f, y: supcon(f, y[:5]), ValueError, r"`labels` must have shape \(6,\) or \(6, C\)"),
    (lambda f, y: supcon(f, y[:, None, None]), ValueError, r"`labels` must be 1-D or 2-D"),
    (lambda f, y: supcon(f, y.astype(np.complex128)), TypeError, r"`labels` must have a bool, integer"),
    (lambda f, y: supcon(f, np.full((6, 2), 2)), ValueError, r"`labels` must hold only 0 and 1"),
    (lambda f, y: supcon(f, y.astype(float) * np.nan), ValueError, r"`labels` must be finite"),
    (lambda f, y: supcon(f, mask=np.ones((6, 5))), ValueError, r"`mask` must have shape \(6, 6\)"),
    (lambda f, y: supcon(f, mask=np.ones(6)), ValueError, r"`mask` must be 2-D"),
    (lambda f, y: supcon(f, mask=np.full((6, 6), 0.5)), ValueError, r"`mask` must hold only 0 and 1"),
    (lambda f, y: supcon(f, y, mask=np.ones((6, 6))), ValueError, r"`labels` or `mask`, not both"),
    (lambda f, y: supcon(f[:, :0]), ValueError, r"at least one view \(V >= 1\)"),
    (lambda f, y: supcon(f[:0]), ValueError, r"at least one sample"),
    (lambda f, y: supcon(f[:, :, :0]), ValueError, r"at least one column"),
    (lambda f, y: supcon(f[0, 0]), ValueError, r"`features` must be 2-D or 3-D"),
    (lambda f, y: supcon(f, y, positives="all"), ValueError, r"`positives` must be one of"),
    (lambda f, y: supcon(f, y, no_positive="skip"), ValueError, r"`no_positive` must be one of"),
    (lambda f, y: supcon(f, y, contrast_mode="first"), ValueError, r"`contrast_mode` must be one of"),
    (lambda f, y: supcon(f, y, reduction="mean_nonzero"), ValueError, r"`reduction` must be one of"),
    (lambda f, y: supcon(f, y, similarity="l2"), ValueError, r"`similarity` must be one of"),
    (lambda f, y: supcon(f, y, positives="per_pair", no_positive="zero"), ValueError,
     r"`no_positive` must be 'exclude' with positives='per_pair'"),
    (lambda f, y: supcon(f, y, temperature=0.0), ValueError, r"`temperature` must be > 0"),
    (lambda f, y: supcon(f, y, base_temperature=-1.0), ValueError, r"`base_temperature` must be > 0"),
    (lambda f, y: supcon(f.astype(np.int64), y), TypeError, r"`features` must have a real floating"),
    (lambda f, y: supcon(f, y.tolist()), TypeError, r"`labels` must be an array"),
])
def test_bad_input_names_the_argument(labelled, call, exc, match):
    with pytest.raises(exc, match=match):
        call(*labelled)
