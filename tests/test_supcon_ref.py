"""supcon with a reference set (``ref``, ``ref_labels``, ``ref_self``; issue 14) and
``no_negative`` (pytorch-metric-learning's 0 for a batch without a negative pair).

The generic oracle (mpmath), finite-difference and backend checks of the reference-set
cases in ``nce_ref/testing/cases/supcon.py`` run in ``test_registry_generic.py``; this
file holds the identities, the peers (PML ``SupConLoss``, ``NTXentLoss`` and
``CrossBatchMemory`` with ``ref_emb``), torch autograd, the engine against the
reference, and the refusals.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import nce_ref
from nce_ref.losses.supcon import supcon
from nce_ref.testing import check_grad

from ._helpers import assert_close, assert_like

POSITIVES = ["out", "in", "per_pair"]
KINDS = ["cosine", "dot", "neg_sq_euclidean", "neg_euclidean"]
vg = nce_ref.value_and_grad(supcon)


@pytest.fixture
def data(rng):
    return {
        "f": rng.standard_normal((6, 2, 3)),
        "y": np.array([0, 1, 0, 2, 1, 5]),  # class 5: no positive in the batch
        "r": rng.standard_normal((9, 3)),
        "ry": np.array([0, 1, 1, 2, 3, 0, 0, 4, 5]),
        "own": np.array([[0, -1], [1, 2], [-1, 5], [3, 3], [-1, -1], [8, -1]]),
    }


def _as_batch_ref(f, y):
    """The batch as its own reference set: the view-major rows, each anchor's own copy."""
    n, v, _ = f.shape
    u = np.concatenate([f[:, k] for k in range(v)])
    own = np.arange(n * v).reshape(v, n).T  # own[i, k] = k·N + i
    return u, np.tile(y, v), own


# -- identities -----------------------------------------------------------------------------

@pytest.mark.parametrize("positives", POSITIVES)
@pytest.mark.parametrize("opts", [
    {"temperature": 0.3},
    {"temperature": 0.2, "similarity": "neg_euclidean", "reduction": "none"},
    {"temperature": 0.5, "base_temperature": 0.07, "contrast_mode": "one", "reduction": "sum"},
    {"temperature": 0.1, "similarity": "dot", "method": "dense"},
])
def test_the_batch_as_its_own_reference_is_supcon(data, positives, opts):
    """``ref`` = the batch's rows with ``ref_self`` their own index: the same pairs, the
    same value; the features' gradient is the anchors' part plus the ref's part."""
    f, y = data["f"], data["y"]
    u, yu, own = _as_batch_ref(f, y)
    kw = dict(opts, positives=positives)
    ct = None if kw.get("reduction") != "none" else np.linspace(-1, 1, 12)
    v0, g0 = vg(f, y, cotangent=ct, **kw)
    v1, g1 = vg(f, y, ref=u, ref_labels=yu, ref_self=own, cotangent=ct, **kw)
    assert_close(v1, v0, rtol=1e-13, atol=1e-15)
    g_ref = g1["ref"].reshape(2, 6, 3).transpose(1, 0, 2)  # view-major rows back to (N, V, D)
    assert_close(g1["features"] + g_ref, g0["features"], rtol=1e-11, atol=1e-13)
    assert_close(g1["temperature"], g0["temperature"], rtol=1e-11, atol=1e-14)


def test_without_ref_self_the_own_copy_is_a_positive(rng):
    f, y = rng.standard_normal((4, 3)), np.array([0, 1, 0, 1])
    r = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    per = supcon(f, y, ref=f, ref_labels=y, temperature=1.0, reduction="none")
    # anchor 0's candidates are all four rows, itself included (cosine 1, a positive)
    u = f / np.linalg.norm(f, axis=1, keepdims=True)
    z = u @ u.T
    want0 = math.log(np.exp(z[0]).sum()) - (z[0, 0] + z[0, 2]) / 2
    assert_close(per[0], want0, rtol=1e-14)
    # a ref set that holds no copy: nothing is excluded, ref_self=-1 changes nothing
    a = supcon(f, y, ref=r, ref_labels=np.array([0, 1]), reduction="none")
    b = supcon(f, y, ref=r, ref_labels=np.array([0, 1]), ref_self=np.full(4, -1),
               reduction="none")
    assert np.array_equal(a, b) and np.all(a > 0)  # each anchor: one positive, one negative


def test_hand_computed_with_ref_self():
    # anchor 0 (class 0) against 4 orthogonal ref rows: row 0 its own copy (excluded),
    # row 1 a positive, rows 2 and 3 negatives; all at cosine 0 but the copy: log 3
    f = np.array([[1.0, 0, 0, 0]])
    r = np.eye(4)
    ry = np.array([0, 0, 1, 2])
    for pm, want in (("out", math.log(3)), ("in", math.log(3)), ("per_pair", math.log(3))):
        got = supcon(f, np.array([0]), ref=r, ref_labels=ry, ref_self=np.array([0]),
                     temperature=0.5, positives=pm)
        assert_close(got, want, rtol=1e-15)
    # without ref_self the copy (z = 1/τ = 2) is a second positive
    got = supcon(f, np.array([0]), ref=r, ref_labels=ry, temperature=0.5)
    assert_close(got, math.log(math.exp(2) + 3) - 1.0, rtol=1e-15)


def test_ref_rows_without_an_anchor_class_are_negatives_only(data):
    f, y, r, ry = data["f"], data["y"], data["r"], data["ry"]
    per = supcon(f, y, ref=r, ref_labels=ry, reduction="none").reshape(2, 6)
    # moving a class-3 ref row (no anchor has class 3) to class 4 changes nothing
    ry2 = np.where(ry == 3, 4, ry)
    assert_close(supcon(f, y, ref=r, ref_labels=ry2, reduction="none").reshape(2, 6), per,
                 rtol=1e-15, atol=0)
    assert np.all(per > 0)


# -- the engine and the reference -------------------------------------------------------------

@pytest.mark.cover("backend", "positives", "kind")
@pytest.mark.parametrize("positives", POSITIVES)
@pytest.mark.parametrize("kind", KINDS)
def test_engine_equals_reference_on_every_backend(backend, data, positives, kind):
    f, y, r, ry, own = (backend.asarray(data[k]) for k in ("f", "y", "r", "ry", "own"))
    kw = dict(ref=r, ref_labels=ry, ref_self=own, temperature=0.3, positives=positives,
              similarity=kind)
    vd, gd = vg(f, y, method="dense", **kw)
    vs, gs = vg(f, y, method="streamed", block_size=5, **kw)
    assert_like(vs, backend, dtype="float64", shape=(), ref_array=f)
    assert_close(backend.to_numpy(vs), backend.to_numpy(vd), rtol=1e-13, atol=1e-15)
    assert set(gs) == {"features", "ref", "temperature"}
    for k in gs:
        assert_close(backend.to_numpy(gs[k]), backend.to_numpy(gd[k]), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("positives", POSITIVES)
@pytest.mark.parametrize("opts", [
    {"temperature": 0.3, "contrast_mode": "one"},
    {"temperature": 0.2, "similarity": "neg_euclidean", "reduction": "none"},
    {"temperature": 0.5, "base_temperature": 0.07, "reduction": "sum", "method": "dense"},
    {"temperature": 0.1, "no_negative": "zero", "block_size": 2},
])
def test_gradient_matches_finite_differences(data, positives, opts):
    check_grad(supcon, data["f"], data["y"], ref=data["r"], ref_labels=data["ry"],
               ref_self=data["own"], positives=positives, **opts)


# -- torch autograd and pytorch-metric-learning ----------------------------------------------

def _torch_ref_supcon(torch, f, r, pos, cand, t, positives):
    """An independent torch formulation: anchors ``f`` against ``r`` under cosine, the
    candidates and positives as boolean (A, M) masks; the mean over anchors (pairs)."""
    F = torch.nn.functional
    z = F.normalize(f, dim=1) @ F.normalize(r, dim=1).T / t
    ninf = torch.tensor(-math.inf, dtype=z.dtype)
    neg = cand & ~pos
    npos = pos.sum(1).to(z.dtype)
    has = npos > 0
    if positives == "per_pair":
        lse_n = torch.logsumexp(torch.where(neg, z, ninf), dim=1, keepdim=True)
        terms = torch.logaddexp(z, lse_n) - z
        return torch.where(pos, terms, 0.0).sum() / pos.sum()
    lse_k = torch.logsumexp(torch.where(cand, z, ninf), dim=1)
    if positives == "out":
        per = lse_k - torch.where(pos, z, 0.0).sum(1) / npos.clamp(min=1)
    else:
        per = lse_k - torch.logsumexp(torch.where(pos, z, ninf), dim=1) + torch.log(
            npos.clamp(min=1))
    return torch.where(has, per, 0.0).sum() / has.sum()


@pytest.mark.oracle
@pytest.mark.parametrize("positives", POSITIVES)
def test_gradients_match_torch_autograd(data, positives):
    torch = pytest.importorskip("torch", reason="torch not installed: autograd oracle skipped")
    f1 = data["f"][:, 0]  # (N, D) layout
    y, r, ry, own = data["y"], data["r"], data["ry"], data["own"][:, 0]
    x, rt = torch.tensor(f1, requires_grad=True), torch.tensor(r, requires_grad=True)
    t = torch.tensor(0.15, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor(y[:, None] == ry[None, :])
    cand = torch.tensor(own[:, None] != np.arange(9)[None, :])
    loss = _torch_ref_supcon(torch, x, rt, pos & cand, cand, t, positives)
    loss.backward()
    for method in ("dense", "streamed"):
        v, g = vg(f1, y, ref=r, ref_labels=ry, ref_self=own, temperature=0.15,
                  positives=positives, method=method)
        assert_close(v, loss.item(), rtol=1e-13)
        assert_close(g["features"], x.grad.numpy(), rtol=1e-10, atol=1e-13)
        assert_close(g["ref"], rt.grad.numpy(), rtol=1e-10, atol=1e-13)
        assert_close(g["temperature"], t.grad.item(), rtol=1e-10)


def _pml():
    torch = pytest.importorskip("torch", reason="torch not installed")
    pml = pytest.importorskip("pytorch_metric_learning.losses",
                              reason="pytorch-metric-learning not installed")
    return torch, pml


@pytest.mark.parametrize("tau", [0.1, 0.5])
@pytest.mark.parametrize("peer,positives", [("SupConLoss", "out"), ("NTXentLoss", "per_pair")])
def test_matches_pml_with_ref_emb_values_and_gradients(data, tau, peer, positives):
    """PML ``loss(emb, labels, ref_emb=r, ref_labels=ry)`` in float64: the same value and
    the same gradients of the embeddings and of the reference."""
    torch, pml = _pml()
    f, y, r, ry = data["f"][:, 0], data["y"], data["r"], data["ry"]
    x, rt = torch.tensor(f, requires_grad=True), torch.tensor(r, requires_grad=True)
    loss = getattr(pml, peer)(temperature=tau)(x, torch.from_numpy(y), ref_emb=rt,
                                                ref_labels=torch.from_numpy(ry))
    loss.backward()
    v, g = vg(f, y, ref=r, ref_labels=ry, temperature=tau, positives=positives)
    assert_close(v, loss.item(), rtol=1e-12)
    assert_close(g["features"], x.grad.numpy(), rtol=1e-9, atol=1e-12)
    assert_close(g["ref"], rt.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss_name,positives", [("SupConLoss", "out"),
                                                 ("NTXentLoss", "per_pair")])
def test_matches_pml_cross_batch_memory_with_ref_self(rng, loss_name, positives):
    """PML ``CrossBatchMemory`` enqueues the batch, then scores it against the memory with
    its own rows removed by queue index: ``ref=memory, ref_self=the batch's slots``.
    Three steps of 4 into a memory of 10, so that the third wraps around."""
    torch, pml = _pml()
    tau = 0.2
    xbm = pml.CrossBatchMemory(getattr(pml, loss_name)(temperature=tau), embedding_size=3,
                               memory_size=10)
    mem = np.zeros((10, 3))
    mem_y = np.zeros(10, dtype=np.int64)
    filled = 0
    for step in range(3):
        f = rng.standard_normal((4, 3))
        y = rng.integers(0, 3, 4)
        slots = (4 * step + np.arange(4)) % 10
        mem[slots], mem_y[slots] = f, y
        filled = min(10, filled + 4)
        x = torch.tensor(f, requires_grad=True)
        want = xbm(x, torch.from_numpy(y))
        want.backward()
        v, g = vg(f, y, ref=mem[:filled].copy(), ref_labels=mem_y[:filled].copy(),
                  ref_self=slots, temperature=tau, positives=positives)
        assert_close(v, want.item(), rtol=1e-12, err_msg=f"step {step}")
        # PML's memory holds a detached copy: the embeddings' gradient is the anchors' part
        assert_close(g["features"], x.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=f"step {step}")


# -- no_negative -------------------------------------------------------------------------------

@pytest.mark.parametrize("peer,positives", [("SupConLoss", "out"), ("NTXentLoss", "per_pair")])
@pytest.mark.parametrize("layout", ["batch", "ref"])
def test_no_negative_zero_reproduces_pml(rng, peer, positives, layout):
    torch, pml = _pml()
    f = rng.standard_normal((3, 4))
    y = np.zeros(3, dtype=np.int64)
    kw, pkw = {}, {}
    if layout == "ref":
        r = rng.standard_normal((5, 4))
        kw = {"ref": r, "ref_labels": np.zeros(5, dtype=np.int64)}
        pkw = {"ref_emb": torch.tensor(r), "ref_labels": torch.zeros(5, dtype=torch.int64)}
    x = torch.tensor(f, requires_grad=True)
    want = getattr(pml, peer)(temperature=0.1)(x, torch.from_numpy(y), **pkw)
    assert want.item() == 0.0  # PML: no negative pair in the batch
    v, g = vg(f, y, temperature=0.1, positives=positives, no_negative="zero", **kw)
    assert float(v) == 0.0
    assert all(np.all(np.asarray(g[k]) == 0) for k in g)
    # the default keeps the mathematical value: "out" >= log 2 (two positives each)
    keep = supcon(f, y, temperature=0.1, positives=positives, **kw)
    assert float(keep) >= (math.log(2) if positives == "out" and layout == "batch" else 0.0)
    if positives == "out":
        assert float(keep) > 0.69


def test_no_negative_keep_is_the_value_of_the_issue():
    # three samples of one class, PML's temperature: the documented value 0.693227 of
    # issue 14 is log 2 plus the positives' spread; here with unit vectors near each other
    f = np.array([[1.0, 0.0], [1.0, 0.001], [1.0, -0.001]])
    got = float(supcon(f, np.zeros(3, dtype=int), temperature=0.1))
    assert math.log(2) < got < math.log(2) + 1e-4


def test_no_negative_zero_changes_nothing_when_some_anchor_has_a_negative(data, backend):
    f, y = backend.asarray(data["f"]), backend.asarray(data["y"])
    for kw in ({}, {"ref": backend.asarray(data["r"]), "ref_labels": backend.asarray(data["ry"])}):
        a = supcon(f, y, reduction="none", **kw)
        b = supcon(f, y, reduction="none", no_negative="zero", **kw)
        assert np.array_equal(backend.to_numpy(a), backend.to_numpy(b))


def test_no_negative_zero_is_all_or_nothing_over_the_anchors(rng):
    # one anchor has a negative, the others none: the batch has a negative pair, so every
    # anchor keeps its term (PML's rule is about the batch, not the anchor)
    f = rng.standard_normal((4, 3))
    y = np.array([0, 0, 0, 1])
    a = supcon(f, y, reduction="none", no_negative="zero")
    assert np.all(a[:3] > 0)
    r = rng.standard_normal((3, 3))
    ry = np.array([0, 0, 1])
    one = supcon(f[:1], y[:1], ref=r, ref_labels=ry, no_negative="zero")
    assert float(one) > 0
    none = supcon(f[:1], y[:1], ref=r[:2], ref_labels=ry[:2], no_negative="zero")
    assert float(none) == 0.0


def test_pml_zero_with_a_single_positive_and_negative_pair_is_not_reproduced(rng):
    """A PML quirk, documented rather than reproduced: ``GenericPairLoss`` returns 0 when
    the batch has at most one positive and at most one negative pair (``len(x) <= 1`` for
    every index list).  Without ``ref`` the pairs come in symmetric pairs, so this only
    happens with no positive pair, where nce_ref is 0 too; with ``ref`` one anchor with
    one positive and one negative reference row gets 0 from PML."""
    torch, pml = _pml()
    f, r = rng.standard_normal((1, 3)), rng.standard_normal((2, 3))
    y, ry = np.array([0]), np.array([0, 1])
    want = pml.SupConLoss()(torch.tensor(f), torch.from_numpy(y), ref_emb=torch.tensor(r),
                           ref_labels=torch.from_numpy(ry)).item()
    assert want == 0.0
    got = float(supcon(f, y, ref=r, ref_labels=ry, temperature=0.1, no_negative="zero"))
    assert got > 0  # log(1 + e^{z_n − z_p}) > 0: the term that PML drops


def test_runs_under_jax_jit_with_ref(data):
    jax = pytest.importorskip("jax", reason="jax not installed")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    args = [jnp.asarray(data[k]) for k in ("f", "y", "r", "ry", "own")]
    fn = jax.jit(lambda f, y, r, ry, own: vg(f, y, ref=r, ref_labels=ry, ref_self=own,
                                             temperature=0.2, no_negative="zero"))
    v, g = fn(*args)
    v0, g0 = vg(data["f"], data["y"], ref=data["r"], ref_labels=data["ry"],
                ref_self=data["own"], temperature=0.2)
    assert_close(np.asarray(v), v0, rtol=1e-13)
    assert_close(np.asarray(g["ref"]), g0["ref"], rtol=1e-11, atol=1e-13)


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,exc,match", [
    ({"ref": "r"}, ValueError, r"`ref_labels` are required with `ref`"),
    ({"ref_labels": "ry"}, ValueError, r"`ref_labels` is only valid with `ref`"),
    ({"ref_self": "own"}, ValueError, r"`ref_self` is only valid with `ref`"),
    ({"ref": "r", "ref_labels": "ry", "labels": None}, ValueError,
     r"`labels` are required with `ref`"),
    ({"ref": "r", "ref_labels": "ry", "labels": None, "mask": np.eye(6)}, ValueError,
     r"`mask` cannot be combined with `ref`"),
    ({"ref": np.ones((9, 4)), "ref_labels": "ry"}, ValueError, r"`ref` must have shape \(M, 3\)"),
    ({"ref": np.ones((0, 3)), "ref_labels": np.zeros(0, int)}, ValueError,
     r"`ref` must have at least one row"),
    ({"ref": np.ones(3), "ref_labels": "ry"}, ValueError, r"`ref` must be 2-D"),
    ({"ref": np.ones((9, 3), dtype=np.int64), "ref_labels": "ry"}, TypeError,
     r"`ref` must have a real floating"),
    ({"ref": np.full((9, 3), np.nan), "ref_labels": "ry"}, ValueError, r"`ref` must be finite"),
    ({"ref": "r", "ref_labels": np.zeros(8, int)}, ValueError,
     r"`ref_labels` must have shape \(9,\)"),
    ({"ref": "r", "ref_labels": np.zeros((9, 2), int)}, ValueError,
     r"`ref_labels` must be of the same kind as `labels`"),
    ({"ref": "r", "ref_labels": np.zeros(9)}, TypeError,
     r"`ref_labels` must have the same kind of dtype as `labels` \(integral\)"),
    ({"ref": "r", "ref_labels": "ry", "ref_self": np.zeros((6, 2))}, TypeError,
     r"`ref_self` must be an integer array"),
    ({"ref": "r", "ref_labels": "ry", "ref_self": np.zeros((6, 2), bool)}, TypeError,
     r"`ref_self` must be an integer array"),
    ({"ref": "r", "ref_labels": "ry", "ref_self": np.zeros(6, int)}, ValueError,
     r"`ref_self` must have shape \(6, 2\)"),
    ({"ref": "r", "ref_labels": "ry", "ref_self": np.full((6, 2), 9)}, ValueError,
     r"`ref_self` must hold indices in \[-1, 9\)"),
    ({"ref": "r", "ref_labels": "ry", "ref_self": np.full((6, 2), -2)}, ValueError,
     r"`ref_self` must hold indices in \[-1, 9\)"),
    ({"no_negative": "exclude"}, ValueError, r"`no_negative` must be one of"),
])
def test_bad_input_names_the_argument(data, kw, exc, match):
    kw = {k: (data[v] if isinstance(v, str) and v in data else v) for k, v in kw.items()}
    labels = kw.pop("labels", data["y"])
    with pytest.raises(exc, match=match):
        supcon(data["f"], labels, **kw)


# -- nce-ref verify: the PML convention --------------------------------------------------------

def test_pml_convention_agrees_on_every_case_it_can_run():
    """The PML convention sets ``no_negative="zero"``: the adapter (with ``ref_emb`` where a
    case gives ``ref``) passes every case, the batches without a negative pair included."""
    _pml()
    from nce_ref.testing import conventions as conv
    from nce_ref.testing import verify

    r = verify(conv.pml_supcon, "supcon", convention="pytorch_metric_learning", cases="all",
               dtype="float64")
    assert r.passed, str(r)
    ran = {x.label: x.status for x in r.results}
    for label in ("all labels equal (no negatives)", "N = 1, V = 2 (one positive, no negative)",
                  "ref, positives=out", "ref: one class, no negative (keep)"):
        assert ran[label] == "pass", (label, ran.get(label))
    assert conv.get("pytorch_metric_learning", "supcon").options["no_negative"] == "zero"
