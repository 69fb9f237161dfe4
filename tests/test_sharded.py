"""Sharded losses equal the single-process function of the concatenated batch.

W ranks are W threads of this process (``ThreadGroup``): the algorithms and the
contract (value the same on every rank, each rank's rows of the global gradient, the
full temperature gradient, the same error on every rank) are tested here quickly; the
real adapters (torch.distributed, MPI, JAX) in ``tests/test_sharded_comm.py`` and
``tests/test_sharded_processes.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

import nce_ref
from nce_ref.sharded import ShardingError, ThreadGroup
from nce_ref.sharded import losses as sharded
from nce_ref.testing import atol_for, rtol_for

SIMILARITIES = ["cosine", "dot", "neg_sq_euclidean", "neg_euclidean"]


def _splits(n: int, w: int, rng) -> list[int]:
    """Unequal shard boundaries: w shards of n rows, each at least one."""
    cuts = sorted(rng.choice(np.arange(1, n), w - 1, replace=False).tolist()) if w > 1 else []
    return [0, *cuts, n]


def _shard(arrays, bounds):
    return [tuple(None if a is None else a[bounds[r]:bounds[r + 1]] for a in arrays)
            for r in range(len(bounds) - 1)]


def _run(fn, w, shards, *, cotangents=None, **kw):
    """value_and_grad of ``fn`` on every rank; returns the per-rank results."""
    def rank(comm, *xs):
        extra = {} if cotangents is None else {"cotangent": cotangents[comm.rank]}
        return nce_ref.value_and_grad(fn)(*[x for x in xs if x is not None], comm=comm, **kw, **extra)

    return ThreadGroup(w).run(rank, shards)


def _assert_matches(out, want, names, *, per_row=False, tau=None):
    v0, g0 = want
    rtol = rtol_for("float64", temperature=tau)
    if per_row:
        v = np.concatenate([np.atleast_1d(o[0]) for o in out])
    else:
        v = out[0][0]
        assert all(float(o[0]) == float(v) for o in out), "the ranks' values differ"
    np.testing.assert_allclose(v, v0, rtol=rtol, atol=atol_for("float64"))
    for name in names:
        got = np.concatenate([o[1][name] for o in out])
        np.testing.assert_allclose(got, g0[name], rtol=rtol,
                                   atol=atol_for("float64", float(np.max(np.abs(g0[name]), initial=1.0))),
                                   err_msg=name)
    taus = [float(o[1]["temperature"]) for o in out]
    assert all(t == taus[0] for t in taus), "the ranks' temperature gradients differ"
    np.testing.assert_allclose(taus[0], float(g0["temperature"]), rtol=rtol,
                               atol=atol_for("float64", abs(float(g0["temperature"]))))


@pytest.mark.parametrize("algorithm", ["gather", "ring"])
@pytest.mark.parametrize("w", [1, 2, 3, 4])
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("options", [{}, {"symmetric": True}, {"reduction": "sum"},
                                     {"reduction": "none"}, {"symmetric": True, "reduction": "none"}],
                         ids=["one-way", "symmetric", "sum", "none", "symmetric-none"])
def test_info_nce_equals_the_single_process_loss(rng, algorithm, w, similarity, options):
    n, d = 13, 6
    q, k = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    bounds = _splits(n, w, rng)
    per_row = options.get("reduction") == "none"
    ct = rng.standard_normal(n) if per_row else None
    cts = None if ct is None else [ct[bounds[r]:bounds[r + 1]] for r in range(w)]
    kw = dict(options, temperature=0.3, similarity=similarity)
    out = _run(sharded.info_nce, w, _shard([q, k], bounds), cotangents=cts, algorithm=algorithm,
               block_size=4, **kw)
    want = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, **kw, **({} if ct is None else {"cotangent": ct}))
    _assert_matches(out, want, ["query", "key"], per_row=per_row, tau=0.3)


@pytest.mark.parametrize("algorithm", ["gather", "ring"])
@pytest.mark.parametrize("in_batch", [False, True])
def test_info_nce_with_each_ranks_negatives(rng, algorithm, in_batch):
    n, m, d, w = 10, 7, 4, 3
    q, k, neg = (rng.standard_normal((x, d)) for x in (n, n, m))
    bounds, nb = [0, 2, 3, 10], [0, 4, 4, 7]  # rank 1 holds no negative
    shards = [s + t for s, t in zip(_shard([q, k], bounds), _shard([neg], nb))]
    out = _run(sharded.info_nce, w, shards, in_batch_negatives=in_batch, temperature=0.2,
               algorithm=algorithm)
    want = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, neg, in_batch_negatives=in_batch,
                                                      temperature=0.2)
    _assert_matches(out, want, ["query", "key", "negatives"], tau=0.2)


@pytest.mark.parametrize("algorithm", ["gather", "ring"])
@pytest.mark.parametrize("w", [1, 2, 3])
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_nt_xent_equals_the_single_process_loss(rng, algorithm, w, similarity, reduction):
    n, d = 9, 5
    z1, z2 = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    bounds = _splits(n, w, rng)
    cts = ct = None
    if reduction == "none":  # each rank's 2 n_r terms: its z1 anchors, then its z2 anchors
        ct = rng.standard_normal(2 * n)
        cts = [np.concatenate([ct[bounds[r]:bounds[r + 1]], ct[n + bounds[r]:n + bounds[r + 1]]])
               for r in range(w)]
    kw = dict(temperature=0.4, similarity=similarity, reduction=reduction)
    out = _run(sharded.nt_xent, w, _shard([z1, z2], bounds), cotangents=cts, algorithm=algorithm,
               block_size=3, **kw)
    v0, g0 = nce_ref.value_and_grad(nce_ref.nt_xent)(z1, z2, **kw,
                                                      **({} if ct is None else {"cotangent": ct}))
    if reduction == "none":  # the single-process order: all z1 anchors, then all z2 anchors
        v0 = np.concatenate([np.concatenate([v0[bounds[r]:bounds[r + 1]], v0[n + bounds[r]:n + bounds[r + 1]]])
                             for r in range(w)])
    _assert_matches(out, (v0, g0), ["z1", "z2"], per_row=reduction == "none", tau=0.4)


def test_an_array_temperature_gets_an_array_gradient_on_every_rank(rng):
    q, k = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    out = _run(sharded.info_nce, 2, _shard([q, k], [0, 2, 6]), temperature=np.asarray(0.25))
    assert all(isinstance(o[1]["temperature"], np.ndarray) and o[1]["temperature"].shape == ()
               for o in out)


# -- bad input: the same error on every rank, never a hang ------------------------------

def _errors(w, shards, **kw):
    """Each rank's error message (or None) from a plain call."""
    def rank(comm, *xs):
        try:
            sharded.info_nce(*xs, comm=comm, **kw.get(f"rank{comm.rank}", kw.get("all", {})))
        except ShardingError as e:
            return str(e)
        return None

    return ThreadGroup(w, timeout=20).run(rank, shards)


def _assert_same_error(msgs, match):
    assert all(m is not None for m in msgs), msgs
    assert len(set(msgs)) == 1, msgs
    assert match in msgs[0], msgs[0]


def test_a_nan_on_one_rank_raises_the_same_error_everywhere(rng):
    q, k = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    q[4, 1] = np.nan
    _assert_same_error(_errors(3, _shard([q, k], [0, 2, 3, 6])), "rank 2 of 3: ValueError: `query` must be finite")


def test_ranks_that_disagree_raise_the_same_error_everywhere(rng):
    q, k = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    shards = _shard([q, k], [0, 3, 6])
    _assert_same_error(_errors(2, shards, rank1={"temperature": 0.2}), "disagree on temperature")
    _assert_same_error(_errors(2, shards, rank0={"symmetric": True}), "disagree on symmetric")
    _assert_same_error(_errors(2, shards, rank1={"similarity": "dot"}), "disagree on similarity")
    wide = [shards[0], (rng.standard_normal((3, 4)), rng.standard_normal((3, 4)))]
    _assert_same_error(_errors(2, wide), "disagree on query trailing shape")
    f32 = [shards[0], tuple(x.astype(np.float32) for x in shards[1])]
    _assert_same_error(_errors(2, f32), "disagree on dtype")


def test_a_rank_without_rows_raises_the_same_error_everywhere(rng):
    q, k = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    _assert_same_error(_errors(2, _shard([q, k], [0, 4, 4])), "rank 1 of 2: ValueError: `query` must have at least one row")


def test_a_rank_that_never_calls_makes_the_others_time_out_not_hang(rng):
    q, k = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))

    def rank(comm, a, b):
        if comm.rank == 1:
            return "skipped"
        return sharded.info_nce(a, b, comm=comm)

    with pytest.raises(TimeoutError, match="not reached by every rank"):
        ThreadGroup(2, timeout=1.0).run(rank, _shard([q, k], [0, 2, 4]))


def test_comm_must_be_a_communicator(rng):
    q = rng.standard_normal((3, 2))
    with pytest.raises(TypeError, match="`comm` must be a nce_ref.sharded.Communicator"):
        sharded.info_nce(q, q, comm=object())


SUPCON_OPTIONS = [{}, {"positives": "in"}, {"positives": "per_pair"}, {"contrast_mode": "one"},
                  {"no_positive": "zero"}, {"base_temperature": 0.07}, {"reduction": "sum"},
                  {"similarity": "neg_euclidean"}, {"similarity": "dot", "temperature": 0.5},
                  {"reduction": "none"}]


@pytest.mark.cover()
@pytest.mark.parametrize("algorithm", ["gather", "ring"])
@pytest.mark.parametrize("w", [1, 2, 3, 4])
@pytest.mark.parametrize("labels", ["single", "multi", "views"])
@pytest.mark.parametrize("options", SUPCON_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_supcon_equals_the_single_process_loss_with_positives_across_ranks(rng, labels, options, w,
                                                                           algorithm):
    n, v, d = 11, 2, 5
    f = rng.standard_normal((n, v, d))
    lab = {"single": rng.integers(0, 3, n), "multi": (rng.random((n, 4)) < 0.4).astype(float),
           "views": None}[labels]
    bounds = _splits(n, w, rng)
    kw = dict({"temperature": 0.2, "algorithm": algorithm, "block_size": 4}, **options)
    cts = ct = None
    if options.get("reduction") == "none":  # anchors view-major: all samples' view 0, then view 1
        ct = rng.standard_normal(n * v)
        cts = [np.concatenate([ct[j * n + bounds[r]:j * n + bounds[r + 1]] for j in range(v)])
               for r in range(w)]
    shards = [(f[bounds[r]:bounds[r + 1]], None if lab is None else lab[bounds[r]:bounds[r + 1]])
              for r in range(w)]
    out = _run(sharded.supcon, w, shards, cotangents=cts, **kw)
    del kw["algorithm"]
    v0, g0 = nce_ref.value_and_grad(nce_ref.supcon)(f, lab, **kw, **({} if ct is None else {"cotangent": ct}))
    if ct is not None:
        v0 = np.concatenate([np.concatenate([v0[j * n + bounds[r]:j * n + bounds[r + 1]] for j in range(v)])
                             for r in range(w)])
    _assert_matches(out, (v0, g0), ["features"], per_row=ct is not None, tau=kw["temperature"])


@pytest.mark.parametrize("positives", ["out", "in", "per_pair"])
def test_supcon_ring_equals_gather_with_anchors_without_positives(rng, positives):
    """Labels whose only positives live on another rank, anchors without any, one view,
    the squared euclidean features (centred on the global mean when they travel)."""
    f = rng.standard_normal((9, 3))
    y = np.array([0, 1, 2, 3, 4, 5, 0, 6, 1])  # 0 and 1 pair across ranks; the rest alone
    kw = dict(temperature=0.4, positives=positives, similarity="neg_sq_euclidean", block_size=2)
    shards = [(f[:4], y[:4]), (f[4:], y[4:])]
    ring = _run(sharded.supcon, 2, shards, algorithm="ring", **kw)
    gather = _run(sharded.supcon, 2, shards, algorithm="gather", **kw)
    _assert_matches(ring, (gather[0][0], {"features": np.concatenate([o[1]["features"] for o in gather]),
                                          "temperature": gather[0][1]["temperature"]}),
                    ["features"], tau=0.4)
    _assert_matches(ring, nce_ref.value_and_grad(nce_ref.supcon)(f, y, **kw), ["features"], tau=0.4)


@pytest.mark.parametrize("algorithm", ["gather", "ring"])
@pytest.mark.parametrize("positives", ["out", "in", "per_pair"])
@pytest.mark.parametrize("classes", [1, 3], ids=["no-negative", "negatives"])
def test_supcon_no_negative_zero_is_decided_across_ranks(rng, classes, positives, algorithm):
    """PML's 0 (``no_negative="zero"``): one class over every rank gives 0 and zero
    gradients; with one rank's negatives only, every rank keeps its terms, as the single
    process does."""
    f = rng.standard_normal((7, 2, 3))
    y = np.zeros(7, dtype=int) if classes == 1 else np.array([0, 0, 0, 0, 0, 1, 2])
    kw = dict(temperature=0.3, positives=positives, no_negative="zero", block_size=3)
    shards = [(f[:4], y[:4]), (f[4:], y[4:])]  # rank 0 alone has no negative in its own rows
    out = _run(sharded.supcon, 2, shards, algorithm=algorithm, **kw)
    want = nce_ref.value_and_grad(nce_ref.supcon)(f, y, **kw)
    _assert_matches(out, want, ["features"], tau=0.3)
    keep = nce_ref.supcon(f, y, **dict(kw, no_negative="keep"))
    assert (float(out[0][0]) == 0.0) == (classes == 1)
    # without a negative, "out" and "in" keep a positive value; per_pair's terms are all 0
    assert (float(keep) > 0) == (positives != "per_pair" or classes > 1)


def _message(call):
    try:
        call()
    except ShardingError as e:
        return str(e)
    return None


def test_supcon_refuses_a_mask(rng):
    f = rng.standard_normal((3, 2, 2))
    with pytest.raises(TypeError, match="mask"):
        ThreadGroup(1).run(lambda comm, x: sharded.supcon(x, comm=comm, mask=np.eye(3)), [(f,)])


# -- value="share": each rank's share of the loss, per-rank cotangents ------------------

def _share_case(name, rng):
    n, d = 10, 4
    if name == "supcon":
        f, y = rng.standard_normal((n, 2, d)), rng.integers(0, 3, n)
        return sharded.supcon, nce_ref.supcon, (f, y), ["features"], {"temperature": 0.3}, n
    a, b = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    if name == "nt_xent":
        return sharded.nt_xent, nce_ref.nt_xent, (a, b), ["z1", "z2"], {"temperature": 0.3}, n
    return sharded.info_nce, nce_ref.info_nce, (a, b), ["query", "key"], \
        {"temperature": 0.3, "symmetric": name == "clip"}, n


def _rows_of_rank(name, bounds, r, n):
    """The indices of rank r's terms in the single-process reduction='none' output."""
    own = np.arange(bounds[r], bounds[r + 1])
    if name in ("nt_xent", "supcon"):  # two blocks of n: z1/view 0 anchors, z2/view 1 anchors
        return np.concatenate([own, n + own])
    return own


@pytest.mark.parametrize("name,algorithm", [(f, a) for f in ("info_nce", "clip", "nt_xent", "supcon")
                                            for a in ("gather", "ring")])
def test_share_gives_the_gradient_of_the_weighted_sum_of_the_ranks_shares(rng, name, algorithm):
    """S_r = W·L_r; with per-rank upstream weights g_r the inputs get the gradient of
    Σ_r g_r S_r and each rank's temperature its own g_r ∂S_r/∂τ: the ranks' mean of
    everything is then (1/W)·∇Σ_r g_r S_r, the single-device gradient when g_r = 1."""
    f_sh, f_1, arrays, names, kw, n = _share_case(name, rng)
    w, bounds = 3, [0, 2, 3, 10]
    g = np.array([1.0, -0.5, 2.0])
    shards = [tuple(x[bounds[r]:bounds[r + 1]] for x in arrays) for r in range(w)]
    out = _run(f_sh, w, shards, cotangents=list(g), value="share", algorithm=algorithm, **kw)
    # the single-process per-term loss: S_r = W * (rank r's terms' share of the mean)
    per, back = nce_ref.vjp(f_1, *arrays, reduction="none", **kw)
    n_terms = per.shape[0]
    owner = np.empty(n_terms, dtype=int)
    for r in range(w):
        owner[_rows_of_rank(name, bounds, r, n)] = r
    # (supcon: every anchor has a positive in this batch, so the mean is over all n_terms)
    shares = [w * float(np.sum(per[owner == r])) / n_terms for r in range(w)]
    for r in range(w):
        np.testing.assert_allclose(float(out[r][0]), shares[r], rtol=1e-12)
    np.testing.assert_allclose(np.mean([float(o[0]) for o in out]), float(f_1(*arrays, **kw)), rtol=1e-12)
    want = back(w * g[owner] / n_terms)
    for key in names:
        got = np.concatenate([o[1][key] for o in out])
        np.testing.assert_allclose(got, want[key], rtol=1e-10, atol=1e-13, err_msg=key)
    for r in range(w):
        mine = np.where(owner == r, w * g[owner] / n_terms, 0.0)
        np.testing.assert_allclose(float(out[r][1]["temperature"]), float(back(mine)["temperature"]),
                                   rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("library", ["array_api_strict", "torch"])
def test_the_rings_of_supcon_and_the_bounds_run_on_other_libraries(rng, library):
    """The rings' generic path (immutable-style, strict indexing) and the in-place one (torch)."""
    lib = pytest.importorskip(library)
    f, y = rng.standard_normal((7, 2, 3)), rng.integers(0, 2, 7)
    x1, x2 = rng.standard_normal((7, 3)), rng.standard_normal((7, 3))
    cases = [(sharded.supcon, nce_ref.supcon, (f, y), {"positives": "per_pair"}),
             (sharded.supcon, nce_ref.supcon, (f, (rng.random((7, 3)) < 0.5).astype(np.int64)),
              {"positives": "in", "similarity": "neg_euclidean"}),
             (nce_ref.sharded.bound_from_embeddings, nce_ref.mi.bound_from_embeddings, (x1, x2),
              {"bound": "smile", "clip": 0.5})]
    for fn, ref, arrays, kw in cases:
        v0, g0 = nce_ref.value_and_grad(ref)(*arrays, **kw)
        shards = [tuple(lib.asarray(a[s]) for a in arrays) for s in (slice(0, 3), slice(3, 7))]
        out = _run(fn, 2, shards, algorithm="ring", block_size=2, **kw)
        name = "features" if "features" in g0 else "x"
        np.testing.assert_allclose(float(out[0][0]), float(v0), rtol=1e-12)
        np.testing.assert_allclose(np.concatenate([np.asarray(o[1][name]) for o in out]), g0[name],
                                   rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(float(out[1][1]["temperature"]), float(g0["temperature"]), rtol=1e-10)
