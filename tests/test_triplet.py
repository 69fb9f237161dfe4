"""triplet and batch_triplet: closed forms, mining on hand-built batches, peers, autograd.

The generic value/gradient/backend checks of every case in
``nce_ref/testing/cases/triplet.py`` run in ``test_registry_generic.py``; this file
holds what is specific to the triplet losses.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

import nce_ref
from nce_ref.losses.triplet import batch_triplet, triplet
from nce_ref.testing import check_grad

from ._helpers import assert_close, assert_like

# the module, not the function `nce_ref.losses.triplet` that shadows its name
triplet_module = importlib.import_module("nce_ref.losses.triplet")

vg_t = nce_ref.value_and_grad(triplet)
vg_b = nce_ref.value_and_grad(batch_triplet)
DISTANCES = [("euclidean", 2), ("sq_euclidean", 2), ("cosine", 2), ("lp", 1), ("lp", 3)]


@pytest.fixture
def apn(rng):
    a, p, n = (rng.standard_normal((6, 4)) for _ in range(3))
    return a, a + 0.7 * p, n


@pytest.fixture
def batch(rng):
    return rng.standard_normal((9, 3)), np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])


# -- triplet: closed forms --------------------------------------------------------------

_A = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
_P = np.array([[3.0, 4.0], [3.0, 0.0], [1.0, 1.0]])
_N = np.array([[6.0, 8.0], [0.0, 1.0], [1.0, 1.0]])


@pytest.mark.parametrize("distance,p,want", [
    ("euclidean", 2, [0.0, 3.0, 1.0]),     # max(5 - 10 + 1, 0), 3 - 1 + 1, 0 - 0 + 1
    ("sq_euclidean", 2, [0.0, 9.0, 1.0]),  # 25 - 100 + 1, 9 - 1 + 1, 1
    ("lp", 1, [0.0, 3.0, 1.0]),            # 7 - 14 + 1, 3 - 1 + 1, 1
    ("lp", 4, [0.0, 3.0, 1.0]),            # (81 + 256)^(1/4) - (1296 + 4096)^(1/4) + 1 < 0
])
def test_hand_computed_values(backend, dtype, distance, p, want):
    a, pp, n = (backend.asarray(x, dtype) for x in (_A, _P, _N))
    got = triplet(a, pp, n, distance=distance, p=p, reduction="none")
    got = assert_like(got, backend, dtype=dtype, shape=(3,), ref_array=a)
    assert_close(got, want, dtype=dtype)
    got = assert_like(triplet(a, pp, n, distance=distance, p=p, reduction="mean_nonzero"), backend,
                      dtype=dtype, shape=())
    assert_close(got, sum(want) / 2, dtype=dtype)


def test_lp_with_p2_is_euclidean_and_p1_is_the_l1_norm(apn):
    a, p, n = apn
    e = triplet(a, p, n, reduction="none")
    assert_close(triplet(a, p, n, distance="lp", p=2, reduction="none"), e, rtol=1e-14, atol=1e-15)
    d1 = np.abs(a - p).sum(1) - np.abs(a - n).sum(1) + 1.0
    assert_close(triplet(a, p, n, distance="lp", p=1, reduction="none"), np.maximum(d1, 0),
                 rtol=1e-14, atol=1e-15)


def test_zero_distance_has_a_finite_subgradient(apn):
    a, _, n = apn
    for distance, p in DISTANCES:
        v, g = vg_t(a, a, n, distance=distance, p=p, margin=10.0)
        assert np.isfinite(v)
        for k in ("anchor", "positive", "negative"):
            assert np.all(np.isfinite(g[k])), (distance, p, k)
        if distance in ("euclidean", "lp"):
            # only d(a, n) moves the loss: the positive's gradient is the subgradient 0
            assert np.all(g["positive"] == 0), (distance, p)
        else:  # smooth there, with gradient 0 (cosine: up to rounding)
            assert np.max(np.abs(g["positive"])) < 1e-15, (distance, p)


def test_same_array_twice_is_not_special(apn):
    a, p, n = apn
    v1, g1 = vg_t(a, a, n)
    v2, g2 = vg_t(a, a.copy(), n)
    assert float(v1) == float(v2)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])


def test_soft_is_softplus_without_overflow(backend, dtype):
    big = 1e4 if dtype == "float64" else 1e3
    a = backend.asarray(np.zeros((2, 1)), dtype)
    p = backend.asarray(np.array([[big], [0.0]]), dtype)
    n = backend.asarray(np.array([[0.0], [big]]), dtype)
    v, g = vg_t(a, p, n, soft=True, margin=0.0, reduction="none", cotangent=backend.asarray(np.ones(2), dtype))
    got = assert_like(v, backend, dtype=dtype, shape=(2,))
    assert_close(got, [big, 0.0], dtype=dtype)  # softplus(big) = big; softplus(-big) underflows to 0
    ga = backend.to_numpy(g["anchor"])
    assert np.all(np.isfinite(ga))
    assert_close(ga[:, 0], [-1.0, 0.0], dtype=dtype)  # σ(big) = 1, σ(-big) = 0


def test_mean_nonzero_averages_the_active_terms_only(apn):
    a, p, n = apn
    per = triplet(a, p, n, margin=0.5, reduction="none")
    k = int(np.sum(per > 0))
    assert 0 < k < per.size
    assert_close(triplet(a, p, n, margin=0.5, reduction="mean_nonzero"), per.sum() / k, rtol=1e-14)
    # nothing active: 0, and the gradient is 0, never NaN
    v, g = vg_t(a, a, a + 10.0, reduction="mean_nonzero")
    assert float(v) == 0.0 and all(np.all(x == 0) for x in g.values())


def test_swap_uses_the_smaller_negative_distance(apn):
    a, p, n = apn
    d = lambda x, y: np.linalg.norm(x - y, axis=1)  # noqa: E731
    want = np.maximum(d(a, p) - np.minimum(d(a, n), d(p, n)) + 1.0, 0)
    assert_close(triplet(a, p, n, swap=True, reduction="none"), want, rtol=1e-13, atol=1e-15)
    # on a tie the anchor's distance is used: d(p, n) gets no gradient
    a1, p1, n1 = np.array([[0.0, 0.0]]), np.array([[2.0, 0.0]]), np.array([[1.0, 5.0]])
    _, g = vg_t(a1, p1, n1, swap=True, margin=10.0)
    _, g0 = vg_t(a1, p1, n1, margin=10.0)
    np.testing.assert_array_equal(g["negative"], g0["negative"])


@pytest.mark.parametrize("distance,p", DISTANCES + [("lp", 1.5)])
@pytest.mark.parametrize("opts", [{}, {"swap": True, "reduction": "sum"},
                                  {"soft": True, "margin": 0.3, "reduction": "none"},
                                  {"reduction": "mean_nonzero", "margin": 0.5}])
def test_triplet_gradient_matches_finite_differences(apn, distance, p, opts):
    a, pp, n = (x[:4] for x in apn)
    check_grad(triplet, a, pp, n, distance=distance, p=p, **opts)


# -- triplet: peers and autograd ---------------------------------------------------------------

@pytest.mark.oracle
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_torch_triplet_margin_loss_and_its_autograd(apn, p, swap, reduction):
    torch = pytest.importorskip("torch", reason="torch not installed: peer skipped")
    a, pp, n = apn
    ta, tp, tn = (torch.tensor(x, requires_grad=True) for x in (a, pp, n))
    # torch adds eps to the difference (‖a − p + eps‖); eps=0 is the true distance
    loss = torch.nn.functional.triplet_margin_loss(ta, tp, tn, margin=0.7, p=p, eps=0.0, swap=swap,
                                                   reduction=reduction)
    loss.backward(torch.ones_like(loss))
    dist = ("euclidean", 2) if p == 2.0 else ("lp", p)
    ct = None if reduction != "none" else np.ones(6)
    v, g = vg_t(a, pp, n, margin=0.7, distance=dist[0], p=dist[1], swap=swap,
                reduction=reduction, cotangent=ct)
    assert_close(v, loss.detach().numpy(), rtol=1e-13, atol=1e-15)
    for name, t in (("anchor", ta), ("positive", tp), ("negative", tn)):
        assert_close(g[name], t.grad.numpy(), rtol=1e-11, atol=1e-14, err_msg=name)
    # torch's default eps = 1e-6 shifts every distance by O(1e-6)
    dflt = torch.nn.functional.triplet_margin_loss(*(torch.tensor(x) for x in (a, pp, n)), margin=0.7,
                                                   p=p, swap=swap, reduction=reduction)
    assert_close(v, dflt.numpy(), rtol=1e-4, atol=1e-5)


def test_optax_lp_has_no_absolute_value(apn):
    jax = pytest.importorskip("jax", reason="jax not installed")
    optax = pytest.importorskip("optax", reason="optax not installed")
    jax.config.update("jax_enable_x64", True)
    a, p, n = apn
    J = jax.numpy.asarray
    ours2 = triplet(a, p, n, reduction="none")
    theirs2 = np.asarray(optax.losses.triplet_margin_loss(J(a), J(p), J(n), eps=0.0))
    assert_close(ours2, theirs2, rtol=1e-13, atol=1e-15)  # p = 2: the same loss
    # p = 1: optax sums the signed differences, so its "distance" can be negative
    theirs1 = np.asarray(optax.losses.triplet_margin_loss(J(a), J(p), J(n), norm_degree=1, eps=0.0))
    ours1 = triplet(a, p, n, distance="lp", p=1, reduction="none")
    signed = (a - p).sum(1) - (a - n).sum(1) + 1.0
    assert_close(theirs1, np.maximum(signed, 0), rtol=1e-13, atol=1e-15)
    assert not np.allclose(ours1, theirs1)
    # p = 3: a negative sum raised to 1/3 is NaN there; nce_ref is finite
    with np.errstate(invalid="ignore"):
        theirs3 = np.asarray(optax.losses.triplet_margin_loss(J(a), J(p), J(n), norm_degree=3, eps=0.0))
    assert np.any(np.isnan(theirs3))
    assert np.all(np.isfinite(triplet(a, p, n, distance="lp", p=3, reduction="none")))


# -- batch_triplet: hand-built batches whose selection is known ----------------------------------

# points on a line, labels A A B B A
_LINE = np.array([[0.0], [1.0], [3.0], [7.0], [12.0]])
_LY = np.array([0, 0, 1, 1, 0])


def test_batch_hard_on_a_hand_built_line(backend, dtype):
    x, y = backend.asarray(_LINE, dtype), backend.asarray(_LY)
    # anchor 0: farthest positive 12 (row 4), nearest negative 3 -> 12 - 3 + 1 = 10
    # anchor 1: positive 11, negative 2 -> 10;  anchor 2 (B): positive 4, negative 2 -> 3
    # anchor 3: positive 4, negative 5 -> 0;  anchor 4: positive 12, negative 5 -> 8
    got = batch_triplet(x, y, mining="hard", margin=1.0, reduction="none")
    got = assert_like(got, backend, dtype=dtype, shape=(5,), ref_array=x)
    assert_close(got, [10.0, 10.0, 3.0, 0.0, 8.0], dtype=dtype)
    v, g = vg_b(_LINE, _LY, mining="hard", margin=1.0, reduction="sum")
    # d(0,4) pulls 0 right and 4 left, d(0,2) pushes them apart, and so on per anchor
    want = np.zeros(5)
    for i, j, k in [(0, 4, 2), (1, 4, 2), (2, 3, 1), (4, 0, 3)]:
        s_ij, s_ik = np.sign(_LINE[i, 0] - _LINE[j, 0]), np.sign(_LINE[i, 0] - _LINE[k, 0])
        want[i] += s_ij - s_ik
        want[j] -= s_ij
        want[k] += s_ik
    assert_close(g["embeddings"][:, 0], want, rtol=1e-15, atol=0)


def test_semi_hard_on_a_hand_built_line():
    # margin 2.5.  Positive pairs (i, j, d_ij) and negatives' distances from i:
    # (0,1,1): negs 3, 7 -> 3 in (1, 3.5): term 1 - 3 + 2.5 = 0.5
    # (0,4,12): negs 3, 7, both < 12 (hard): no semi-hard negative
    # (1,0,1): negs 2, 6 -> 2 in (1, 3.5): 1 - 2 + 2.5 = 1.5
    # (1,4,11): negs 2, 6 hard: none
    # (2,3,4): negs 3, 2 (hard) and 9 (easy: >= 4 + 2.5): none
    # (3,2,4): negs 7, 6, 5 -> 5 and 6 in (4, 6.5): nearest 5: 4 - 5 + 2.5 = 1.5
    # (4,0,12),(4,1,11): negs 9, 5: hard for both: none
    per = batch_triplet(_LINE, _LY, mining="semi_hard", margin=2.5, reduction="none")
    assert_close(per, [0.5, 1.5, 0.0, 1.5, 0.0], rtol=1e-13, atol=0)
    assert_close(batch_triplet(_LINE, _LY, mining="semi_hard", margin=2.5), 3.5 / 3, rtol=1e-13)
    # TensorFlow Addons counts all 8 positive pairs; where no negative is farther than
    # the positive it takes the largest negative (a hard one): pairs (0,4), (1,4), (4,0),
    # (4,1); pair (2,3) gets its easy negative 9 and a term 0
    tfa = _tfa_semihard(_LINE, _LY, 2.5, squared=False)
    hard_fallbacks = (12 - 7 + 2.5) + (11 - 6 + 2.5) + (12 - 9 + 2.5) + (11 - 9 + 2.5)
    assert_close(tfa, (3.5 + hard_fallbacks) / 8, rtol=1e-14)


def test_semi_hard_equals_tfa_when_every_pair_has_a_semi_hard_negative():
    x = np.array([[0.0], [1.0], [1.5], [2.25]])
    y = np.array([0, 0, 1, 1])
    # every positive pair has a negative at distance in (d_ap, d_ap + 2): TFA = nce_ref
    want = _tfa_semihard(x, y, 2.0, squared=False)
    got = batch_triplet(x, y, mining="semi_hard", margin=2.0)
    assert batch_triplet(x, y, mining="semi_hard", margin=2.0, reduction="mean_nonzero") == got
    assert_close(got, want, rtol=1e-14)


def _tfa_semihard(x, labels, margin, squared):
    """TensorFlow Addons' ``triplet_semihard_loss`` (losses/triplet.py), transcribed in
    NumPy; ``distance_metric="L2"`` is ``squared=True``."""
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    pdist = d2 if squared else np.sqrt(d2)
    n = len(labels)
    adj = labels[:, None] == labels[None, :]
    adj_not = ~adj
    tile = np.tile(pdist, (n, 1))
    mask = np.tile(adj_not, (n, 1)) & (tile > pdist.T.reshape(-1, 1))
    mask_final = (mask.sum(1, keepdims=True) > 0).reshape(n, n).T
    mx = tile.max(1, keepdims=True)
    outside = (((tile - mx) * mask).min(1, keepdims=True) + mx).reshape(n, n).T
    mn = pdist.min(1, keepdims=True)
    inside = np.tile(((pdist - mn) * adj_not).max(1, keepdims=True) + mn, (1, n))
    semi = np.where(mask_final, outside, inside)
    loss_mat = margin + pdist - semi
    mpos = adj.astype(float) - np.eye(n)
    return np.maximum(loss_mat * mpos, 0.0).sum() / mpos.sum()


def _tfa_hard(x, labels, margin, soft):
    """TensorFlow Addons' ``triplet_hard_loss`` (squared "L2"), transcribed in NumPy."""
    pdist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    n = len(labels)
    adj = labels[:, None] == labels[None, :]
    mx = pdist.max(1, keepdims=True)
    hn = ((pdist - mx) * ~adj).min(1, keepdims=True) + mx
    mpos = adj.astype(float) - np.eye(n)
    mn = pdist.min(1, keepdims=True)
    hp = ((pdist - mn) * mpos).max(1, keepdims=True) + mn
    loss = np.log1p(np.exp(hp - hn)) if soft else np.maximum(hp - hn + margin, 0.0)
    return loss.mean()


@pytest.mark.parametrize("soft", [False, True])
def test_batch_hard_matches_tfa_with_squared_distance(batch, soft):
    x, y = batch
    want = _tfa_hard(x, y, 1.0, soft)
    got = batch_triplet(x, y, mining="hard", distance="sq_euclidean", soft=soft,
                        margin=0.0 if soft else 1.0)
    assert_close(got, want, rtol=1e-13)


def test_batch_all_and_hard_equal_triplet_on_the_enumerated_triplets(batch):
    x, y = batch
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    trip = [(i, j, k) for i in range(9) for j in range(9) for k in range(9)
            if i != j and y[i] == y[j] and y[k] != y[i]]
    i, j, k = (np.array(t) for t in zip(*trip))
    for red in ("sum", "mean", "mean_nonzero"):
        assert_close(batch_triplet(x, y, mining="all", reduction=red, margin=0.9),
                     triplet(x[i], x[j], x[k], reduction=red, margin=0.9), rtol=1e-12)
    jh = np.array([max((jj for jj in range(9) if jj != ii and y[jj] == y[ii]), key=lambda jj: d[ii, jj])
                   for ii in range(9)])
    kh = np.array([min((kk for kk in range(9) if y[kk] != y[ii]), key=lambda kk: d[ii, kk])
                   for ii in range(9)])
    assert_close(batch_triplet(x, y, mining="hard", reduction="none"),
                 triplet(x, x[jh], x[kh], reduction="none"), rtol=1e-12, atol=1e-14)


def test_blocks_give_the_one_block_result(batch, monkeypatch):
    x, y = batch
    ref = {m: vg_b(x, y, mining=m, reduction="none", cotangent=np.arange(9.0))
           for m in ("all", "semi_hard")}
    monkeypatch.setattr(triplet_module, "_BLOCK_ELEMENTS", 2 * 81)  # blocks of 2 anchors
    for m, (v0, g0) in ref.items():
        v, g = vg_b(x, y, mining=m, reduction="none", cotangent=np.arange(9.0))
        assert_close(v, v0, rtol=1e-15, atol=0)
        assert_close(g["embeddings"], g0["embeddings"], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("labels", [np.arange(6), np.zeros(6, dtype=np.int64), np.array([7])])
@pytest.mark.parametrize("mining", ["all", "hard", "semi_hard"])
@pytest.mark.parametrize("reduction", ["mean", "mean_nonzero", "sum"])
def test_no_triplet_gives_zero_and_zero_gradient(rng, labels, mining, reduction):
    x = rng.standard_normal((labels.size, 3))
    v, g = vg_b(x, labels, mining=mining, reduction=reduction)
    assert float(v) == 0.0 and np.all(g["embeddings"] == 0)


def test_identical_embeddings_have_finite_subgradients(rng):
    x = np.ones((6, 3))
    y = np.array([0, 1, 0, 1, 1, 0])
    for mining in ("all", "hard", "semi_hard"):
        for distance, p in DISTANCES:
            v, g = vg_b(x, y, mining=mining, distance=distance, p=p)
            want = 0.0 if mining == "semi_hard" else 1.0  # all distances 0: every term is the margin
            assert_close(v, want, atol=1e-15, rtol=0)
            assert np.all(np.isfinite(g["embeddings"])) and np.all(np.abs(g["embeddings"]) < 1e-12)


@pytest.mark.parametrize("mining", ["all", "hard", "semi_hard"])
@pytest.mark.parametrize("distance,p", [("euclidean", 2), ("sq_euclidean", 2), ("cosine", 2), ("lp", 3)])
@pytest.mark.parametrize("opts", [{}, {"soft": True, "reduction": "none"},
                                  {"reduction": "mean_nonzero", "margin": 0.4}])
def test_batch_gradient_matches_finite_differences(rng, mining, distance, p, opts):
    x = rng.standard_normal((7, 2))
    y = np.array([0, 1, 0, 1, 2, 2, 0])
    if mining == "semi_hard" and "margin" not in opts:
        opts = {**opts, "margin": 1.5 if distance != "cosine" else 0.6}
    check_grad(batch_triplet, x, y, mining=mining, distance=distance, p=p, **opts)


# -- batch_triplet: peers and autograd ---------------------------------------------------------------

@pytest.mark.parametrize("smooth", [False, True])
def test_matches_pytorch_metric_learning_triplet_margin_loss(batch, smooth):
    torch = pytest.importorskip("torch", reason="torch not installed")
    pml = pytest.importorskip("pytorch_metric_learning", reason="pytorch-metric-learning not installed")
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import TripletMarginLoss
    from pytorch_metric_learning.miners import BatchHardMiner

    assert pml is not None
    x, y = batch
    T = torch.from_numpy
    dist = LpDistance(normalize_embeddings=False)
    loss = TripletMarginLoss(margin=0.3, distance=dist, smooth_loss=smooth)
    want = loss(T(x), T(y)).item()
    got = batch_triplet(x, y, margin=0.3, soft=smooth, reduction="mean_nonzero")
    assert_close(got, want, rtol=1e-12)
    mined = BatchHardMiner(distance=dist)(T(x), T(y))
    want = loss(T(x), T(y), mined).item()
    got = batch_triplet(x, y, mining="hard", margin=0.3, soft=smooth, reduction="mean_nonzero")
    assert_close(got, want, rtol=1e-12)
    # PML's default LpDistance normalises the embeddings first
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    want = TripletMarginLoss(margin=0.3)(T(x), T(y)).item()
    assert_close(batch_triplet(xn, y, margin=0.3, reduction="mean_nonzero"), want, rtol=1e-12)


@pytest.mark.oracle
@pytest.mark.parametrize("mining", ["all", "hard", "semi_hard"])
def test_batch_gradients_match_torch_autograd(batch, mining):
    torch = pytest.importorskip("torch", reason="torch not installed: autograd oracle skipped")
    x, y = batch
    t = torch.tensor(x, requires_grad=True)
    d = torch.sqrt(((t[:, None, :] - t[None, :, :]) ** 2).sum(-1) + torch.eye(9, dtype=t.dtype))
    d = d * (1 - torch.eye(9, dtype=t.dtype))
    same = torch.tensor(y[:, None] == y[None, :])
    pos, neg = same & ~torch.eye(9, dtype=torch.bool), ~same
    m = 1.2
    if mining == "all":
        valid = pos[:, :, None] & neg[:, None, :]
        terms = torch.relu(d[:, :, None] - d[:, None, :] + m)[valid]
    elif mining == "hard":
        hp = torch.where(pos, d, -math.inf).max(1).values
        hn = torch.where(neg, d, math.inf).min(1).values
        terms = torch.relu(hp - hn + m)
    else:
        dap, dan = d[:, :, None], d[:, None, :]
        semi = pos[:, :, None] & neg[:, None, :] & (dan > dap) & (dan < dap + m)
        cand = torch.where(semi, dan.expand_as(semi), math.inf).min(2).values
        has = semi.any(2)
        terms = torch.relu(d[has] - cand[has] + m)
    loss = terms.mean()
    loss.backward()
    v, g = vg_b(x, y, mining=mining, margin=m)
    assert_close(v, loss.item(), rtol=1e-13)
    assert_close(g["embeddings"], t.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("mining", ["all", "hard", "semi_hard"])
def test_runs_under_jax_jit(batch, mining):
    jax = pytest.importorskip("jax", reason="jax not installed")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    x, y = batch
    f = jax.jit(lambda x, y: vg_b(x, y, mining=mining, margin=1.5))
    v, g = f(jnp.asarray(x), jnp.asarray(y))
    v0, g0 = vg_b(x, y, mining=mining, margin=1.5)
    assert_close(np.asarray(v), v0, rtol=1e-13)
    assert_close(np.asarray(g["embeddings"]), g0["embeddings"], rtol=1e-11, atol=1e-13)
    ft = jax.jit(lambda a, p, n: vg_t(a, p, n, swap=True, soft=True))
    v, g = ft(jnp.asarray(x[:3]), jnp.asarray(x[3:6]), jnp.asarray(x[6:]))
    v0, g0 = vg_t(x[:3], x[3:6], x[6:], swap=True, soft=True)
    assert_close(np.asarray(v), v0, rtol=1e-13)
    assert_close(np.asarray(g["negative"]), g0["negative"], rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("mining", ["all", "hard", "semi_hard"])
def test_backend_values_and_gradients_match_numpy(backend, dtype, batch, mining):
    x, y = batch
    kw = {"mining": mining, "margin": 1.5, "distance": "euclidean"}
    v0, g0 = vg_b(x, y, **kw)
    xb = backend.asarray(x, dtype)
    v, g = vg_b(xb, backend.asarray(y), **kw)
    got = assert_like(v, backend, dtype=dtype, shape=(), ref_array=xb)
    assert_close(got, v0, dtype=dtype, tol_scale=backend.tol_scale)
    gb = assert_like(g["embeddings"], backend, dtype=dtype, shape=x.shape, ref_array=xb)
    if dtype == "float64":
        assert_close(gb, g0["embeddings"], rtol=1e-10 * backend.tol_scale, atol=1e-13)
    a, p, n = x[:3], x[3:6], x[6:]
    t0, h0 = vg_t(a, p, n, swap=True, distance="lp", p=3, reduction="sum")
    t, h = vg_t(*(backend.asarray(z, dtype) for z in (a, p, n)), swap=True, distance="lp", p=3,
                reduction="sum")
    assert_close(assert_like(t, backend, dtype=dtype, shape=()), t0, dtype=dtype)
    if dtype == "float64":
        for k in h0:
            assert_close(backend.to_numpy(h[k]), h0[k], rtol=1e-10, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_half_precision_is_computed_in_float32(backend, name, batch):
    x, y = batch
    try:
        xb = backend.asarray(x, name)
    except (TypeError, AttributeError) as exc:
        pytest.skip(f"{backend.name} has no {name}: {exc}")
    for f, args in ((batch_triplet, (xb, backend.asarray(y))), (triplet, (xb[:3], xb[3:6], xb[6:]))):
        v, g = nce_ref.value_and_grad(f)(*args)
        got = assert_like(v, backend, dtype=name, shape=(), ref_array=xb)
        assert all(gv.dtype == xb.dtype for gv in g.values())
        x32 = backend.to_numpy(xb).astype(np.float32)
        ref_args = (x32, y) if f is batch_triplet else (x32[:3], x32[3:6], x32[6:])
        assert_close(got, float(f(*ref_args)), dtype=name)


# -- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("call,exc,match", [
    (lambda a, p, n: triplet(a, p[:3], n), ValueError, r"`positive` must have the shape of `anchor`"),
    (lambda a, p, n: triplet(a, p, n[:, :2]), ValueError, r"`negative` must have the shape of `anchor`"),
    (lambda a, p, n: triplet(a, p, n, margin=-0.1), ValueError, r"`margin` must be >= 0"),
    (lambda a, p, n: triplet(a, p, n, distance="lp", p=0.5), ValueError, r"`p` must be >= 1"),
    (lambda a, p, n: triplet(a, p, n, p=3), ValueError, r"`p` applies to distance='lp' only"),
    (lambda a, p, n: triplet(a, p, n, distance="manhattan"), ValueError, r"`distance` must be one of"),
    (lambda a, p, n: triplet(a, p, n, reduction="avg"), ValueError, r"`reduction` must be one of"),
    (lambda a, p, n: triplet(a, p, n, swap=1), TypeError, r"`swap` must be a bool"),
    (lambda a, p, n: triplet(a, p, n, soft="yes"), TypeError, r"`soft` must be a bool"),
    (lambda a, p, n: triplet(a, p, n, eps=0.0), ValueError, r"`eps` must be > 0"),
    (lambda a, p, n: triplet(a[:0], p[:0], n[:0]), ValueError, r"`anchor` must have at least one row"),
    (lambda a, p, n: batch_triplet(a, np.arange(5)), ValueError, r"`labels` must have shape \(6,\)"),
    (lambda a, p, n: batch_triplet(a, np.zeros((6, 2))), ValueError, r"`labels` must be 1-D"),
    (lambda a, p, n: batch_triplet(a, np.arange(6), mining="easy"), ValueError, r"`mining` must be one of"),
    (lambda a, p, n: batch_triplet(a, np.arange(6), margin=-1.0), ValueError, r"`margin` must be >= 0"),
    (lambda a, p, n: batch_triplet(a, np.arange(6), distance="lp", p=0.0), ValueError, r"`p` must be >= 1"),
    (lambda a, p, n: batch_triplet(a[:, :0], np.arange(6)), ValueError, r"at least one column"),
    (lambda a, p, n: batch_triplet(a, np.arange(6) + 0j), TypeError, r"`labels` must have a bool, integer"),
])
def test_bad_input_names_the_argument(apn, call, exc, match):
    with pytest.raises(exc, match=match):
        call(*apn)


# -- the reference set and per_anchor (issue 14) -------------------------------------------

@pytest.mark.oracle
@pytest.mark.parametrize("reduction", ["mean", "per_anchor"])
def test_semi_hard_with_a_reference_set_matches_torch_autograd(batch, reduction):
    """Semi-hard mining against a memory holding the batch (no PML counterpart): the
    selection written out in torch, both gradients by autograd."""
    torch = pytest.importorskip("torch", reason="torch not installed: autograd oracle skipped")
    x, y = batch
    r = np.random.default_rng(3).standard_normal((5, 3))
    mem, mem_y = np.concatenate([x, r]), np.concatenate([y, np.array([0, 1, 2, 0, 1])])
    own = np.arange(9)
    t, tr = torch.tensor(x, requires_grad=True), torch.tensor(mem, requires_grad=True)
    d = torch.sqrt(((t[:, None, :] - tr[None, :, :]) ** 2).sum(-1) + 1e-300)
    m = 1.5
    same = torch.tensor(y[:, None] == mem_y[None, :])
    self_ = torch.tensor(own[:, None] == np.arange(14)[None, :])
    pos, neg = same & ~self_, ~same & ~self_
    dap, dan = d[:, :, None], d[:, None, :]
    semi = pos[:, :, None] & neg[:, None, :] & (dan > dap) & (dan < dap + m)
    cand = torch.where(semi, dan.expand_as(semi), math.inf).min(2).values
    has = semi.any(2)
    terms = torch.where(has, torch.relu(d - torch.where(has, cand, 0.0) + m), 0.0)
    if reduction == "mean":
        loss = terms.sum() / has.sum()
    else:
        v = terms.sum(1) / has.sum(1).clamp(min=1)
        loss = v[v > 0].mean()
    loss.backward()
    got, g = vg_b(x, y, mining="semi_hard", margin=m, ref=mem, ref_labels=mem_y, ref_self=own,
                  reduction=reduction)
    assert_close(got, loss.item(), rtol=1e-13)
    assert_close(g["embeddings"], t.grad.numpy(), rtol=1e-10, atol=1e-13)
    assert_close(g["ref"], tr.grad.numpy(), rtol=1e-10, atol=1e-13)


def test_per_anchor_on_a_hand_built_line():
    x = np.array([[0.0], [1.0], [3.0], [7.0], [12.0]])
    y = np.array([0, 0, 1, 1, 0])
    # margin 0.5; per anchor (positives x negatives triplets): 15/4, 15/4, 4/3, 0 (every
    # term of anchor 3 is 0: it is left out), 20/4
    per = batch_triplet(x, y, margin=0.5, reduction="none")
    assert_close(per, [15.0, 15.0, 4.0, 0.0, 20.0], rtol=1e-15)
    assert_close(batch_triplet(x, y, margin=0.5, reduction="per_anchor"), 83 / 24, rtol=1e-15)


def test_verify_agrees_with_pml_triplet_margin_loss():
    """`nce-ref verify nce_ref.testing.conventions:pml_batch_triplet --as batch_triplet
    --convention pytorch_metric_learning --cases all`: every case, the reference-set ones
    included, values and gradients."""
    pytest.importorskip("torch", reason="torch not installed")
    pytest.importorskip("pytorch_metric_learning", reason="pytorch-metric-learning not installed")
    from nce_ref.testing import conventions, verify

    report = verify(conventions.ADAPTERS["pml_batch_triplet"], "batch_triplet",
                    convention="pytorch_metric_learning", cases="all", dtype="float64")
    assert report.passed and "ref set, hard" in str(report), str(report)


def test_blocks_with_a_reference_set_give_the_one_block_result(batch, monkeypatch):
    """Anchor blocks of (b, M, M) triplets with M != N."""
    x, y = batch
    r = np.random.default_rng(4).standard_normal((11, 3))
    ry = np.arange(11) % 3
    kw = {"ref": r, "ref_labels": ry, "reduction": "none", "cotangent": np.arange(9.0)}
    one = {m: vg_b(x, y, mining=m, margin=1.5, **kw) for m in ("all", "semi_hard")}
    monkeypatch.setattr(triplet_module, "_BLOCK_ELEMENTS", 2 * 121)  # blocks of 2 anchors
    assert len(triplet_module._blocks(9, 11)) == 5
    for m, (v0, g0) in one.items():
        v, g = vg_b(x, y, mining=m, margin=1.5, **kw)
        assert_close(v, v0, rtol=1e-15, atol=0)
        for k in ("embeddings", "ref"):
            assert_close(g[k], g0[k], rtol=1e-14, atol=1e-15)
