"""The pair losses' engine (``method="streamed"``: blocks of anchor rows) against their
dense reference (``method="dense"``), values and gradients w.r.t. ``embeddings`` and
``ref``, on every backend, for every option; and against pytorch-metric-learning in
float64 on one case each.

``multi_similarity``: every similarity, every reduction, with and without mining, with
and without a reference set (and ``ref_self``).  ``pairwise_contrastive``: every
distance, ``squared``, ``normalize``, ``split_pos_neg``, every reduction, the
reference set.  Blocks of 1 row, of 4 rows (N = 11: blocks 4, 4, 3) and one block
holding every row.  The default run keeps a covering subset (``cover``); the full
product runs with ``-m slow``.
"""

from __future__ import annotations

import numpy as np
import pytest

import nce_ref
from nce_ref.losses.pairs import block_relations, multi_similarity, pairwise_contrastive
from nce_ref.losses.triplet import pair_relations

from ._helpers import assert_close

N, D, M = 11, 4, 9
BLOCKS = (1, 4, 10**6)


@pytest.fixture
def data(rng):
    """11 anchors (a singleton class: an anchor without positives), a reference set of
    9 rows whose rows 2, 5 and 7 are copies of anchors 0, 3 and 8 (``ref_self``)."""
    x = rng.standard_normal((N, D)) / np.sqrt(D)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 3, 2, 0])
    r = rng.standard_normal((M, D)) / np.sqrt(D)
    ry = np.array([0, 1, 0, 2, 1, 2, 3, 3, 0])
    r[2], r[5], r[7] = x[0], x[3], x[8]
    ry[2], ry[5], ry[7] = y[0], y[3], y[8]
    rs = np.full(N, -1)
    rs[0], rs[3], rs[8] = 2, 5, 7
    return {"x": x, "y": y, "r": r, "ry": ry, "rs": rs}


def _args(data, backend, dtype, refset):
    args = [backend.asarray(data["x"], dtype), backend.asarray(data["y"])]
    kw = {}
    if refset != "none":
        kw = {"ref": backend.asarray(data["r"], dtype), "ref_labels": backend.asarray(data["ry"])}
        if refset == "ref_self":
            kw["ref_self"] = backend.asarray(data["rs"])
    return args, kw


def _vg(fn, backend, dtype, args, kw, ct):
    value, back = nce_ref.vjp(fn, *args, **kw)
    g = back(backend.xp.ones_like(value) if ct is None else backend.asarray(ct, dtype))
    return backend.to_numpy(value), {k: backend.to_numpy(v) for k, v in g.items()}


def _check(fn, backend, dtype, data, refset, opts, rng, blocks=BLOCKS):
    args, kw = _args(data, backend, dtype, refset)
    kw.update(opts)
    ct = rng.uniform(0.5, 1.5, N) if kw.get("reduction") == "none" else None
    want_v, want_g = _vg(fn, backend, dtype, args, kw | {"method": "dense"}, ct)
    assert set(want_g) == ({"embeddings"} if refset == "none" else {"embeddings", "ref"})
    tol = getattr(backend, "tol_scale", 1.0)
    for b in blocks:
        got_v, got_g = _vg(fn, backend, dtype, args, kw | {"method": "streamed", "block_size": b}, ct)
        msg = f"{fn.__name__} {refset} {opts} block_size={b}"
        assert got_v.shape == want_v.shape, msg
        assert_close(got_v, want_v, dtype=dtype, tol_scale=tol, err_msg=msg)
        assert set(got_g) == set(want_g)
        for name, want in want_g.items():
            # beta = 50: the scores' cotangents carry the scale of beta
            scale = float(np.max(np.abs(want), initial=1.0)) * 50
            assert_close(got_g[name], want, dtype=dtype, scale=scale, tol_scale=tol,
                         err_msg=f"{msg}: gradient of {name}")


MS_SIMILARITIES = ["cosine", "dot", "neg_sq_euclidean", "neg_euclidean"]
MS_REDUCTIONS = ["mean", "sum", "none", "mean_nonzero"]
REFSETS = ["none", "ref", "ref_self"]


@pytest.mark.cover("backend", "dtype", "similarity", "reduction", "mining", "refset")
@pytest.mark.parametrize("refset", REFSETS)
@pytest.mark.parametrize("mining", [None, 0.1])
@pytest.mark.parametrize("reduction", MS_REDUCTIONS)
@pytest.mark.parametrize("similarity", MS_SIMILARITIES)
def test_multi_similarity_streamed_equals_dense(backend, dtype, data, similarity, reduction,
                                                mining, refset, rng):
    opts = {"similarity": similarity, "reduction": reduction, "mining_margin": mining}
    if similarity != "cosine":  # scores of a few units: keep beta (s - base) moderate
        opts.update(beta=5.0, base=-1.0 if "euclidean" in similarity else 0.2)
    _check(multi_similarity, backend, dtype, data, refset, opts, rng)


CONTRASTIVE_DISTANCES = [("euclidean", {}), ("sq_euclidean", {}), ("cosine", {}),
                         ("lp", {"p": 3.0})]
CONTRASTIVE_REDUCTIONS = ["mean", "sum", "none", "mean_nonzero", "per_anchor"]


#: (squared, normalize, split_pos_neg): every pair of the three flags' values occurs in one
#: of these four (a covering array: half the full product, every two-way interaction)
CONTRASTIVE_FLAGS = [(False, False, False), (False, True, True), (True, False, True),
                     (True, True, False)]


@pytest.mark.cover("backend", "dtype", "distance", "reduction", "flags", "refset")
@pytest.mark.parametrize("refset", REFSETS)
@pytest.mark.parametrize("flags", CONTRASTIVE_FLAGS,
                         ids=["-".join(f"{k}={v}" for k, v in zip(("sq", "norm", "split"), f))
                              for f in CONTRASTIVE_FLAGS])
@pytest.mark.parametrize("reduction", CONTRASTIVE_REDUCTIONS)
@pytest.mark.parametrize("distance", CONTRASTIVE_DISTANCES, ids=[d for d, _ in CONTRASTIVE_DISTANCES])
def test_pairwise_contrastive_streamed_equals_dense(backend, dtype, data, distance, reduction,
                                                    flags, refset, rng):
    name, extra = distance
    squared, normalize, split = flags
    # margins inside the distances' range: both hinges are active on some pairs
    opts = {"distance": name, **extra, "reduction": reduction, "squared": squared,
            "normalize": normalize, "split_pos_neg": split, "pos_margin": 0.3,
            "neg_margin": 0.6 if name == "cosine" else 1.0}
    _check(pairwise_contrastive, backend, dtype, data, refset, opts, rng)


# -- the pieces --------------------------------------------------------------------------------

@pytest.mark.parametrize("refset", REFSETS)
def test_block_relations_are_the_rows_of_pair_relations(backend, data, refset):
    from nce_ref._array import resolve

    args, kw = _args(data, backend, "float64", refset)
    labels = args[1]
    ctx = resolve({"embeddings": args[0], "labels": labels}, ndims={"embeddings": 2}, floating=("embeddings",), xp=None,
                  check_finite=False)
    rl, rs = kw.get("ref_labels"), kw.get("ref_self")
    pos, neg = (backend.to_numpy(a) for a in pair_relations(ctx, labels, rl, rs))
    for r0, r1 in ((0, 4), (4, 8), (8, N), (0, N)):
        bp, bn = (backend.to_numpy(a) for a in block_relations(ctx, labels, rl, rs, r0, r1))
        np.testing.assert_array_equal(bp, pos[r0:r1])
        np.testing.assert_array_equal(bn, neg[r0:r1])


def test_auto_is_the_engine(data):
    """``"auto"`` runs the engine for every option (it covers them all): bit for bit the
    result of ``"streamed"`` with the same blocks."""
    x, y = data["x"], data["y"]
    for fn, kw in ((multi_similarity, {"mining_margin": 0.1}),
                   (pairwise_contrastive, {"reduction": "per_anchor", "split_pos_neg": True})):
        auto = nce_ref.value_and_grad(fn)(x, y, block_size=4, **kw)
        streamed = nce_ref.value_and_grad(fn)(x, y, method="streamed", block_size=4, **kw)
        assert float(auto[0]) == float(streamed[0])
        np.testing.assert_array_equal(auto[1]["embeddings"], streamed[1]["embeddings"])


@pytest.mark.parametrize("fn", [multi_similarity, pairwise_contrastive])
def test_bad_method_and_block_size_are_refused_by_name(data, fn):
    x, y = data["x"], data["y"]
    with pytest.raises(ValueError, match="`method` must be one of 'auto', 'dense', 'streamed'"):
        fn(x, y, method="fast")
    with pytest.raises(ValueError, match="`block_size`"):
        fn(x, y, method="streamed", block_size=0)
    with pytest.raises(TypeError, match="`block_size`"):
        fn(x, y, block_size=2.5)


def test_one_pass_and_two_passes_agree_with_the_public_value(data):
    """The value of the one-pass path (scalar reductions with a gradient) equals the
    public function's (no gradient, one pass without weights)."""
    x, y = data["x"], data["y"]
    for fn in (multi_similarity, pairwise_contrastive):
        v, _ = nce_ref.value_and_grad(fn)(x, y, block_size=3)
        assert float(v) == float(fn(x, y, block_size=3))


def test_streaming_never_holds_the_pair_matrix(rng):
    """N = 1200 anchors against themselves in blocks of 25: the peak of the value and
    gradient (a dozen (25, N) arrays) stays below half of one (N, N) float64 matrix
    (11.5 MB)."""
    import tracemalloc

    n = 1200
    x = rng.standard_normal((n, 8))
    y = rng.integers(0, 10, n)
    for fn in (multi_similarity, pairwise_contrastive):
        nce_ref.value_and_grad(fn)(x, y, block_size=25)  # warm
        tracemalloc.start()
        nce_ref.value_and_grad(fn)(x, y, block_size=25)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < n * n * 8 / 2, (fn.__name__, peak)


# -- against PML in float64 --------------------------------------------------------------------

def test_multi_similarity_streamed_equals_pml(rng):
    torch = pytest.importorskip("torch")
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.losses import MultiSimilarityLoss
    from pytorch_metric_learning.miners import MultiSimilarityMiner

    x = rng.standard_normal((13, 5))
    y = rng.integers(0, 3, 13)
    X = torch.tensor(x, requires_grad=True)
    Y = torch.tensor(y)
    want = MultiSimilarityLoss()(X, Y, MultiSimilarityMiner(epsilon=0.1)(X, Y))
    want.backward()
    v, g = nce_ref.value_and_grad(multi_similarity)(x, y, mining_margin=0.1, method="streamed",
                                                    block_size=4)
    assert_close(v, want.item(), rtol=1e-12, atol=1e-15)
    assert_close(g["embeddings"], X.grad.numpy(), rtol=1e-10, atol=1e-13)


def test_pairwise_contrastive_streamed_equals_pml(rng):
    torch = pytest.importorskip("torch")
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.losses import ContrastiveLoss

    x = rng.standard_normal((13, 5))
    y = rng.integers(0, 3, 13)
    X = torch.tensor(x, requires_grad=True)
    want = ContrastiveLoss(pos_margin=0.2, neg_margin=1.1)(X, torch.tensor(y))
    want.backward()
    v, g = nce_ref.value_and_grad(pairwise_contrastive)(
        x, y, pos_margin=0.2, neg_margin=1.1, distance="euclidean", normalize=True,
        reduction="mean_nonzero", split_pos_neg=True, method="streamed", block_size=4)
    assert_close(v, want.item(), rtol=1e-12, atol=1e-15)
    assert_close(g["embeddings"], X.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("fn,kw", [(multi_similarity, {"mining_margin": 0.1}),
                                   (pairwise_contrastive, {"reduction": "per_anchor"})],
                         ids=["multi_similarity", "pairwise_contrastive"])
def test_streamed_runs_under_jax_jit(data, fn, kw):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    x, y = jax.numpy.asarray(data["x"]), jax.numpy.asarray(data["y"])
    got = jax.jit(lambda a, b: fn(a, b, method="streamed", block_size=4, **kw))(x, y)
    want = fn(data["x"], data["y"], method="dense", **kw)
    assert_close(np.asarray(got), want)


@pytest.mark.parametrize("fn", [multi_similarity, pairwise_contrastive])
def test_one_block_vjp_reuses_the_first_pass_and_can_be_called_again(data, fn, rng):
    """With one block (every row), the second pass of a two-pass reduction reuses the
    first pass's block; a second call of the VJP computes it again, equal."""
    x, y = data["x"], data["y"]
    _, back = nce_ref.vjp(fn, x, y, reduction="none", method="streamed")
    _, back_dense = nce_ref.vjp(fn, x, y, reduction="none", method="dense")
    for _ in range(2):
        ct = rng.uniform(0.5, 1.5, N)
        assert_close(back(ct)["embeddings"], back_dense(ct)["embeddings"])
