"""Reference sets and PML's reducers for the triplet and pair losses (issue 14).

``batch_triplet``, ``multi_similarity`` and ``pairwise_contrastive`` with ``ref`` /
``ref_labels`` / ``ref_self`` against pytorch-metric-learning's
``loss(embeddings, labels, ref_emb=..., ref_labels=...)`` in float64 (values, and
torch autograd's gradients for both the embeddings and the reference set), and the
reductions ``"mean_nonzero"`` (``AvgNonZeroReducer``) and ``"per_anchor"``
(``PerAnchorReducer(AvgNonZeroReducer())``).  The generic checks of the new cases
(mpmath oracles, finite differences, every backend) run in ``test_registry_generic.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

import nce_ref
from nce_ref.losses.pairs import multi_similarity, pairwise_contrastive
from nce_ref.losses.triplet import batch_triplet, triplet
from nce_ref.testing import check_grad

from ._helpers import assert_close

vg = {f.__name__: nce_ref.value_and_grad(f)
      for f in (batch_triplet, multi_similarity, pairwise_contrastive)}
RTOL = 1e-12  # float64, the same formula in another order of summation


@pytest.fixture
def data(rng):
    """A batch of 7 rows, a reference set of 9 rows (some labels absent from the batch)."""
    x = rng.standard_normal((7, 3))
    y = np.array([0, 1, 2, 0, 1, 2, 0])
    r = rng.standard_normal((9, 3))
    ry = np.array([0, 1, 3, 0, 1, 2, 2, 3, 0])
    return x, y, r, ry


def _pml():
    torch = pytest.importorskip("torch", reason="torch not installed: PML comparison skipped")
    pytest.importorskip("pytorch_metric_learning",
                        reason="pytorch-metric-learning not installed: PML comparison skipped")
    return torch


def _pml_value_and_grads(torch, loss, x, y, r=None, ry=None, miner=None, indices=None):
    """PML's value and torch autograd's gradients for the embeddings and ``ref_emb``."""
    t = torch.tensor(x, requires_grad=True)
    kw = {}
    tr = None
    if r is not None:
        tr = torch.tensor(r, requires_grad=True)
        kw = {"ref_emb": tr, "ref_labels": torch.from_numpy(ry)}
    ty = torch.from_numpy(y)
    if miner is not None:
        indices = miner(t, ty, *kw.values())
    v = loss(t, ty, indices, **kw)
    v.backward()
    grads = {"embeddings": t.grad.numpy()}
    if tr is not None:
        grads["ref"] = tr.grad.numpy()
    return v.item(), grads


def _compare(got, want):
    v, g = got
    wv, wg = want
    assert_close(v, wv, rtol=RTOL, atol=1e-15)
    assert set(g) == set(wg)
    for k in wg:
        assert_close(g[k], wg[k], rtol=1e-10, atol=1e-13)


# -- against PML: the reference set ----------------------------------------------------------

@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("mining", ["all", "hard"])
def test_batch_triplet_ref_matches_pml(data, mining, smooth):
    torch = _pml()
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import TripletMarginLoss
    from pytorch_metric_learning.miners import BatchHardMiner

    x, y, r, ry = data
    dist = LpDistance(normalize_embeddings=False)
    loss = TripletMarginLoss(margin=0.7, distance=dist, smooth_loss=smooth)
    miner = BatchHardMiner(distance=dist) if mining == "hard" else None
    want = _pml_value_and_grads(torch, loss, x, y, r, ry, miner=miner)
    got = vg["batch_triplet"](x, y, ref=r, ref_labels=ry, mining=mining, margin=0.7, soft=smooth,
                              reduction="mean_nonzero")
    _compare(got, want)


def test_batch_triplet_ref_self_matches_pml_with_the_self_triplets_removed(data):
    """A memory that holds the batch (rows 0..N-1): PML is given every triplet but
    those with the anchor's own copy (CrossBatchMemory removes them by queue index)."""
    torch = _pml()
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import TripletMarginLoss
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    x, y, r, ry = data
    mem, mem_y = np.concatenate([x, r]), np.concatenate([y, ry])
    a, p, n = lmu.get_all_triplets_indices(torch.from_numpy(y), torch.from_numpy(mem_y))
    keep = p != a  # the anchor's copy (ref row a) has its label: never a negative
    loss = TripletMarginLoss(margin=0.7, distance=LpDistance(normalize_embeddings=False))
    want = _pml_value_and_grads(torch, loss, x, y, mem, mem_y,
                                indices=(a[keep], p[keep], n[keep]))
    got = vg["batch_triplet"](x, y, ref=mem, ref_labels=mem_y, ref_self=np.arange(7), margin=0.7,
                              reduction="mean_nonzero")
    _compare(got, want)


@pytest.mark.parametrize("mined", [False, True])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_multi_similarity_ref_matches_pml(data, mined, similarity):
    torch = _pml()
    from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity
    from pytorch_metric_learning.losses import MultiSimilarityLoss
    from pytorch_metric_learning.miners import MultiSimilarityMiner

    x, y, r, ry = data
    # PML normalises before a dot product by default
    dist = (CosineSimilarity() if similarity == "cosine"
            else DotProductSimilarity(normalize_embeddings=False))
    loss = MultiSimilarityLoss(alpha=2.0, beta=10.0, base=0.5, distance=dist)
    miner = MultiSimilarityMiner(0.1, distance=dist) if mined else None
    want = _pml_value_and_grads(torch, loss, x, y, r, ry, miner=miner)
    got = vg["multi_similarity"](x, y, ref=r, ref_labels=ry, beta=10.0, similarity=similarity,
                                 mining_margin=0.1 if mined else None)
    _compare(got, want)


@pytest.mark.parametrize("reduction,reducer", [("mean_nonzero", None), ("per_anchor", "per_anchor")])
def test_pairwise_contrastive_ref_matches_pml(data, reduction, reducer):
    torch = _pml()
    from pytorch_metric_learning.losses import ContrastiveLoss
    from pytorch_metric_learning.reducers import AvgNonZeroReducer, PerAnchorReducer

    x, y, r, ry = data
    r = r[:6]  # PML's PerAnchorReducer indexes an N x N array: the reference set needs M <= N
    ry = ry[:6]
    red = PerAnchorReducer(AvgNonZeroReducer()) if reducer else None
    loss = ContrastiveLoss(pos_margin=0.2, neg_margin=1.3, reducer=red)
    want = _pml_value_and_grads(torch, loss, x, y, r, ry)
    got = vg["pairwise_contrastive"](x, y, ref=r, ref_labels=ry, pos_margin=0.2, neg_margin=1.3,
                                     normalize=True, split_pos_neg=True, reduction=reduction)
    _compare(got, want)


def test_pairwise_contrastive_ref_self_matches_pml_with_the_self_pairs_removed(data):
    torch = _pml()
    from pytorch_metric_learning.losses import ContrastiveLoss
    from pytorch_metric_learning.reducers import AvgNonZeroReducer, PerAnchorReducer
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    x, y, r, ry = data
    # a memory of 3 older rows and the batch's first 4 (M = 7 <= N: PML's per-anchor
    # reducer indexes an N x N array); anchors 4..6 have no copy in it
    mem, mem_y = np.concatenate([r[:3], x[:4]]), np.concatenate([ry[:3], y[:4]])
    own = np.array([3, 4, 5, 6, -1, -1, -1])
    a1, p, a2, n = lmu.get_all_pairs_indices(torch.from_numpy(y), torch.from_numpy(mem_y))
    t_own = torch.from_numpy(own)
    kp, kn = p != t_own[a1], n != t_own[a2]
    idx = (a1[kp], p[kp], a2[kn], n[kn])
    for red, reduction in ((None, "mean_nonzero"), (PerAnchorReducer(AvgNonZeroReducer()), "per_anchor")):
        loss = ContrastiveLoss(pos_margin=0.1, neg_margin=1.1, reducer=red)
        want = _pml_value_and_grads(torch, loss, x, y, mem, mem_y, indices=idx)
        got = vg["pairwise_contrastive"](x, y, ref=mem, ref_labels=mem_y, ref_self=own,
                                         pos_margin=0.1, neg_margin=1.1, normalize=True,
                                         split_pos_neg=True, reduction=reduction)
        _compare(got, want)


def test_pml_per_anchor_reducer_fails_with_a_reference_set_larger_than_the_batch(data):
    """The quirk named in the docstring: nce_ref's per_anchor is defined there."""
    torch = _pml()
    from pytorch_metric_learning.losses import ContrastiveLoss
    from pytorch_metric_learning.reducers import AvgNonZeroReducer, PerAnchorReducer

    x, y, r, ry = data
    loss = ContrastiveLoss(neg_margin=2.0, reducer=PerAnchorReducer(AvgNonZeroReducer()))
    with pytest.raises(IndexError):
        loss(torch.from_numpy(x[:3]), torch.from_numpy(y[:3]), ref_emb=torch.from_numpy(r),
             ref_labels=torch.from_numpy(ry))
    v = pairwise_contrastive(x[:3], y[:3], ref=r, ref_labels=ry, neg_margin=2.0, normalize=True,
                             split_pos_neg=True, reduction="per_anchor")
    assert np.isfinite(v) and float(v) > 0


# -- against PML: the reducers without a reference set ---------------------------------------------

def test_pairwise_per_anchor_matches_pml_per_anchor_reducer(data):
    torch = _pml()
    from pytorch_metric_learning.losses import ContrastiveLoss
    from pytorch_metric_learning.reducers import AvgNonZeroReducer, PerAnchorReducer

    x, y, _, _ = data
    loss = ContrastiveLoss(pos_margin=0.25, neg_margin=1.4,
                           reducer=PerAnchorReducer(AvgNonZeroReducer()))
    want = _pml_value_and_grads(torch, loss, x, y)
    got = vg["pairwise_contrastive"](x, y, pos_margin=0.25, neg_margin=1.4, normalize=True,
                                     split_pos_neg=True, reduction="per_anchor")
    _compare(got, want)


def test_multi_similarity_per_anchor_reducer_is_mean_nonzero(data):
    """PML passes MultiSimilarityLoss's per-anchor ("element") losses straight through."""
    torch = _pml()
    from pytorch_metric_learning.losses import MultiSimilarityLoss
    from pytorch_metric_learning.reducers import AvgNonZeroReducer, PerAnchorReducer

    x, y, _, _ = data
    y = np.array([0, 1, 2, 0, 1, 3, 0])  # anchors 2 and 5 alone: only a negative term
    loss = MultiSimilarityLoss(beta=5.0, reducer=PerAnchorReducer(AvgNonZeroReducer()))
    want = _pml_value_and_grads(torch, loss, x, y)
    _compare(vg["multi_similarity"](x, y, beta=5.0, reduction="mean_nonzero"), want)


def test_triplet_mean_nonzero_matches_pml_avg_non_zero_reducer(rng):
    """Explicit triplets as PML's indices_tuple over the stacked rows."""
    torch = _pml()
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import TripletMarginLoss

    a, p, n = (rng.standard_normal((6, 3)) for _ in range(3))
    stacked = np.concatenate([a, a + 1.2 * p, n])
    idx = tuple(torch.arange(6) + k * 6 for k in range(3))
    loss = TripletMarginLoss(margin=1.0, distance=LpDistance(normalize_embeddings=False))
    t = torch.tensor(stacked, requires_grad=True)
    want = loss(t, None, idx)
    want.backward()
    v, g = nce_ref.value_and_grad(triplet)(a, a + 1.2 * p, n, margin=1.0, reduction="mean_nonzero")
    assert 0 < np.sum(triplet(a, a + 1.2 * p, n, margin=1.0, reduction="none") > 0) < 6
    assert_close(v, want.item(), rtol=RTOL)
    gt = t.grad.numpy()
    for k, name in enumerate(("anchor", "positive", "negative")):
        assert_close(g[name], gt[6 * k:6 * (k + 1)], rtol=1e-10, atol=1e-13)


def test_all_zero_batch_returns_zero_like_pml(data):
    """AvgNonZeroReducer over no positive term returns 0 (``sum(embeddings * 0)``): a
    zero gradient; so do mean_nonzero and per_anchor."""
    torch = _pml()
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import ContrastiveLoss, TripletMarginLoss
    from pytorch_metric_learning.reducers import AvgNonZeroReducer, PerAnchorReducer

    x, y, _, _ = data
    xs = x + 50.0 * y[:, None]  # classes far apart: every hinge is inactive
    T = torch.from_numpy
    d = LpDistance(normalize_embeddings=False)
    for pml_loss in (TripletMarginLoss(margin=0.5, distance=d),
                     ContrastiveLoss(pos_margin=10.0, neg_margin=0.0, distance=d),
                     ContrastiveLoss(pos_margin=10.0, neg_margin=0.0, distance=d,
                                     reducer=PerAnchorReducer(AvgNonZeroReducer()))):
        t = torch.tensor(xs, requires_grad=True)
        v = pml_loss(t, T(y))
        v.backward()
        assert v.item() == 0.0 and torch.all(t.grad == 0)
    for f, kw in ((batch_triplet, {"margin": 0.5}), (pairwise_contrastive,
                                                    {"pos_margin": 10.0, "neg_margin": 0.0})):
        for reduction in ("mean_nonzero", "per_anchor"):
            v, g = vg[f.__name__](xs, y, reduction=reduction, **kw)
            assert float(v) == 0.0 and np.all(g["embeddings"] == 0)


# -- definitions and invariances ----------------------------------------------------------

@pytest.mark.parametrize("f,kw", [
    (batch_triplet, {"mining": "all"}), (batch_triplet, {"mining": "hard"}),
    (batch_triplet, {"mining": "semi_hard", "margin": 1.5}),
    (batch_triplet, {"reduction": "per_anchor"}),
    (multi_similarity, {"mining_margin": 0.2}), (multi_similarity, {"similarity": "neg_euclidean"}),
    (pairwise_contrastive, {"normalize": True, "split_pos_neg": True, "reduction": "per_anchor"}),
    (pairwise_contrastive, {"reduction": "mean_nonzero", "squared": True}),
])
def test_the_batch_as_its_own_reference_set_with_ref_self_is_the_default(data, f, kw):
    """``ref=x, ref_labels=y, ref_self=arange(N)`` is the batch with itself: the same
    value, and the two gradients add up to the embeddings' gradient."""
    x, y, _, _ = data
    v0, g0 = vg[f.__name__](x, y, **kw)
    v1, g1 = vg[f.__name__](x, y, ref=x.copy(), ref_labels=y, ref_self=np.arange(7), **kw)
    assert_close(v1, v0, rtol=1e-13, atol=1e-15)
    assert_close(g1["embeddings"] + g1["ref"], g0["embeddings"], rtol=1e-10, atol=1e-13)
    assert set(g0) == {"embeddings"}


def test_without_ref_self_the_copy_is_a_positive_at_distance_zero(data):
    x, y, _, _ = data
    per0 = pairwise_contrastive(x, y, reduction="none", pos_margin=0.0)
    per1 = pairwise_contrastive(x, y, ref=x.copy(), ref_labels=y, reduction="none", pos_margin=0.0)
    assert_close(per1, per0, rtol=1e-13, atol=1e-15)  # the self pair adds h(0 - 0) = 0
    # but it is counted: the mean divides by one more pair per anchor
    m0 = pairwise_contrastive(x, y, pos_margin=0.0)
    m1 = pairwise_contrastive(x, y, ref=x.copy(), ref_labels=y, pos_margin=0.0)
    assert_close(m1 * (7 * 7), m0 * (7 * 6), rtol=1e-13)


def test_per_anchor_is_the_mean_of_the_positive_anchor_means(data):
    x, y, r, ry = data
    # anchor 4 (triplets) and anchor 6 (pairs) have terms, all 0: they do not count
    for f, kw in ((batch_triplet, {"margin": 0.0}),
                  (pairwise_contrastive, {"pos_margin": 2.0, "neg_margin": 0.5})):
        per = np.asarray(f(x, y, ref=r, ref_labels=ry, reduction="none", **kw))
        if f is batch_triplet:  # the anchors' triplet counts: positives x negatives
            cnt = np.array([np.sum(ry == c) * np.sum(ry != c) for c in y])
        else:
            cnt = np.full(7, 9)
        v = per / cnt
        want = v[v > 0].mean()
        assert np.sum(v > 0) == 6 and np.all(cnt > 0)
        assert_close(f(x, y, ref=r, ref_labels=ry, reduction="per_anchor", **kw), want, rtol=1e-13)


def test_hard_mining_per_anchor_equals_mean_nonzero(data):
    x, y, r, ry = data
    a = batch_triplet(x, y, ref=r, ref_labels=ry, mining="hard", reduction="per_anchor")
    b = batch_triplet(x, y, ref=r, ref_labels=ry, mining="hard", reduction="mean_nonzero")
    assert_close(a, b, rtol=1e-14)


@pytest.mark.parametrize("f,kw", [
    (batch_triplet, {"mining": "all", "reduction": "per_anchor", "distance": "cosine", "margin": 0.3}),
    (batch_triplet, {"mining": "semi_hard", "margin": 1.5, "distance": "lp", "p": 3}),
    (multi_similarity, {"similarity": "neg_sq_euclidean", "base": -2.0, "beta": 3.0}),
    (pairwise_contrastive, {"normalize": True, "reduction": "per_anchor", "neg_margin": 1.2}),
    (pairwise_contrastive, {"distance": "lp", "p": 1.5, "squared": True, "neg_margin": 2.5}),
])
def test_ref_gradients_match_finite_differences(data, f, kw):
    x, y, r, ry = data
    mem, mem_y = np.concatenate([r, x]), np.concatenate([ry, y])
    rep = check_grad(f, x, y, ref=mem, ref_labels=mem_y, ref_self=np.arange(9, 16), **kw)
    assert set(rep.max_abs_err) == {"embeddings", "ref"}


def test_ref_in_float32_and_does_not_mutate(data):
    x, y, r, ry = data
    x32, r32 = x.astype(np.float32), r.astype(np.float32)
    keep = (x32.copy(), r32.copy(), ry.copy())
    own = np.full(7, -1)
    v, g = vg["pairwise_contrastive"](x32, y, ref=r32, ref_labels=ry, ref_self=own,
                                      reduction="per_anchor", neg_margin=2.0)
    assert v.dtype == np.float32 and g["ref"].dtype == np.float32 and g["ref"].shape == r.shape
    want = pairwise_contrastive(x, y, ref=r, ref_labels=ry, reduction="per_anchor", neg_margin=2.0)
    assert_close(v, want, dtype="float32")
    for a, b in zip(keep, (x32, r32, ry)):
        assert np.array_equal(a, b)


# -- bad input ----------------------------------------------------------------------------

_X = np.zeros((4, 2))
_Y = np.array([0, 1, 0, 1])
_R = np.ones((3, 2))
_RY = np.array([0, 1, 1])


@pytest.mark.parametrize("f", [batch_triplet, multi_similarity, pairwise_contrastive])
@pytest.mark.parametrize("kw,exc,match", [
    ({"ref": _R}, ValueError, "ref_labels"),
    ({"ref_labels": _RY}, ValueError, "ref_labels"),
    ({"ref_self": np.arange(4)}, ValueError, "ref_self"),
    ({"ref": np.ones((3, 5)), "ref_labels": _RY}, ValueError, "`ref`"),
    ({"ref": np.ones((0, 2)), "ref_labels": np.zeros(0, dtype=int)}, ValueError, "`ref`"),
    ({"ref": np.ones(3), "ref_labels": _RY}, ValueError, "`ref`"),
    ({"ref": np.ones((3, 2), dtype=np.int64), "ref_labels": _RY}, TypeError, "`ref`"),
    ({"ref": [[1.0, 2.0]], "ref_labels": _RY[:1]}, TypeError, "`ref`"),
    ({"ref": np.array([[np.nan, 1.0]]), "ref_labels": _RY[:1]}, ValueError, "`ref`"),
    ({"ref": _R, "ref_labels": np.array([0, 1])}, ValueError, "ref_labels"),
    ({"ref": _R, "ref_labels": np.array(["a", "b", "c"])}, TypeError, "ref_labels"),
    ({"ref": _R, "ref_labels": _RY, "ref_self": np.arange(4.0)}, TypeError, "ref_self"),
    ({"ref": _R, "ref_labels": _RY, "ref_self": np.arange(3)}, ValueError, "ref_self"),
    ({"ref": _R, "ref_labels": _RY, "ref_self": np.array([0, 1, 2, 3])}, ValueError, "ref_self"),
    ({"ref": _R, "ref_labels": _RY, "ref_self": np.array([0, 1, -2, 0])}, ValueError, "ref_self"),
])
def test_bad_reference_set_names_the_argument(f, kw, exc, match):
    with pytest.raises(exc, match=match):
        f(_X, _Y, **kw)


def test_per_anchor_is_refused_where_it_is_not_defined():
    with pytest.raises(ValueError, match="reduction"):
        multi_similarity(_X, _Y, reduction="per_anchor")
    with pytest.raises(ValueError, match="reduction"):
        triplet(_X, _X, _X, reduction="per_anchor")


@pytest.mark.parametrize("f,kw", [
    (batch_triplet, {"mining": "semi_hard", "margin": 1.5, "reduction": "per_anchor"}),
    (batch_triplet, {"mining": "hard"}),
    (multi_similarity, {"mining_margin": 0.1}),
    (pairwise_contrastive, {"reduction": "per_anchor", "split_pos_neg": True, "neg_margin": 1.6}),
])
def test_permuting_the_reference_set_changes_nothing(data, f, kw):
    """The reference rows are a set: permuting them (and ``ref_self`` with them) permutes
    the reference gradient's rows and leaves the value and the embeddings' gradient."""
    x, y, r, ry = data
    mem, mem_y = np.concatenate([r, x]), np.concatenate([ry, y])
    own = np.arange(9, 16)
    perm = np.random.default_rng(5).permutation(16)
    inv = np.argsort(perm)
    v0, g0 = vg[f.__name__](x, y, ref=mem, ref_labels=mem_y, ref_self=own, **kw)
    v1, g1 = vg[f.__name__](x, y, ref=mem[perm], ref_labels=mem_y[perm], ref_self=inv[own], **kw)
    assert_close(v1, v0, rtol=1e-13, atol=1e-15)
    assert_close(g1["embeddings"], g0["embeddings"], rtol=1e-10, atol=1e-13)
    assert_close(g1["ref"], g0["ref"][perm], rtol=1e-10, atol=1e-13)
