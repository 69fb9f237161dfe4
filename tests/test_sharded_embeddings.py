"""``nce_ref.sharded.bound_from_embeddings`` equals the single-process bound of the concatenated batch.

W ranks are W threads of this process (``ThreadGroup``), with unequal shards: the value
(the same on every rank), each rank's rows of the gradients of ``x`` and ``y`` (and of a
per-sample ``log_baseline``), the full gradients of ``temperature`` and of a scalar
``log_baseline`` (the same on every rank); ``value="share"``; the same error on every rank.
"""

from __future__ import annotations

import numpy as np
import pytest

import nce_ref
from nce_ref import mi
from nce_ref.sharded import ShardingError, ThreadGroup
from nce_ref.sharded import bound_from_embeddings as sharded_bound
from nce_ref.testing import atol_for, rtol_for

N, D = 10, 4
TAU = 0.7
SPLITS = {1: [0, N], 2: [0, 3, N], 3: [0, 1, 6, N], 4: [0, 2, 3, 7, N]}

#: (bound, extra positional: "per-sample" or a scalar baseline, keyword options)
VARIANTS = [
    ("infonce", (), {}), ("nwj", (), {}), ("tuba", ("per-sample",), {}), ("tuba", (0.25,), {}),
    ("dv", (), {}), ("mine", (), {"log_moving_average": 1.0}), ("smile", (), {"clip": 1.0}),
    ("js", (), {}), ("js", (), {"report": "objective"}), ("loo_upper", (), {}),
    ("interpolated", ("per-sample",), {"alpha": 0.5}), ("interpolated", (0.25,), {"alpha": 0.01}),
]
IDS = [f"{b}-{'-'.join(map(str, e))}-{'-'.join(map(str, kw.values()))}".strip("-") for b, e, kw in VARIANTS]


def _data(rng):
    x, y = rng.standard_normal((N, D)), rng.standard_normal((N, D))
    return x, y, rng.standard_normal(N)


def _extra(extra, lb, rows=slice(None)):
    return tuple(lb[rows] if e == "per-sample" else e for e in extra)


def _shards(x, y, lb, extra, w):
    b = SPLITS[w]
    return [(x[b[r]:b[r + 1]], y[b[r]:b[r + 1]]) + _extra(extra, lb, slice(b[r], b[r + 1]))
            for r in range(w)]


def _run(w, shards, *, cotangents=None, **kw):
    def rank(comm, *args):
        extra = {} if cotangents is None else {"cotangent": cotangents[comm.rank]}
        return nce_ref.value_and_grad(sharded_bound)(*args, comm=comm, **kw, **extra)

    return ThreadGroup(w).run(rank, shards)


def _gathered(out, name):
    return np.concatenate([np.atleast_1d(o[1][name]) for o in out])


CASES = [(a, *v) for a in ("gather", "ring") for v in VARIANTS]
CASE_IDS = [f"{a}-{i}" for a in ("gather", "ring") for i in IDS]


@pytest.mark.cover()
@pytest.mark.parametrize("w", [1, 2, 3, 4])
@pytest.mark.parametrize("similarity", ["dot", "cosine", "neg_sq_euclidean", "neg_euclidean"])
@pytest.mark.parametrize("algorithm,bound,extra,kw", CASES, ids=CASE_IDS)
def test_equals_the_single_process_bound(rng, algorithm, bound, extra, kw, similarity, w):
    x, y, lb = _data(rng)
    opts = dict(kw, bound=bound, similarity=similarity, temperature=TAU)
    v0, g0 = nce_ref.value_and_grad(mi.bound_from_embeddings)(x, y, *_extra(extra, lb), **opts)
    out = _run(w, _shards(x, y, lb, extra, w), block_size=2, algorithm=algorithm, **opts)
    rtol = rtol_for("float64", temperature=TAU)
    assert all(float(o[0]) == float(out[0][0]) for o in out), "the ranks' values differ"
    np.testing.assert_allclose(float(out[0][0]), float(v0), rtol=rtol, atol=atol_for("float64"))
    assert sorted(out[0][1]) == sorted(g0)
    for name, want in g0.items():
        want = np.asarray(want)
        if want.ndim == 0:  # replicated: the full gradient, the same on every rank
            got = [float(o[1][name]) for o in out]
            assert all(g == got[0] for g in got), f"the ranks' {name} gradients differ"
            got = got[0]
        else:
            got = _gathered(out, name)
        np.testing.assert_allclose(got, want, rtol=rtol,
                                   atol=atol_for("float64", float(np.max(np.abs(want), initial=1.0))),
                                   err_msg=f"{bound} {similarity} W={w}: {name}")


AXIS0 = ("infonce", "dv", "tuba", "interpolated")


@pytest.mark.parametrize("bound,extra,kw", [v for v in VARIANTS if v[0] in AXIS0],
                         ids=[i for i, v in zip(IDS, VARIANTS) if v[0] in AXIS0])
def test_axis_zero_and_the_ring(rng, bound, extra, kw):
    x, y, lb = _data(rng)
    opts = dict(kw, bound=bound, similarity="cosine", temperature=TAU, axis=0)
    v0, g0 = nce_ref.value_and_grad(mi.bound_from_embeddings)(x, y, *_extra(extra, lb), **opts)
    for algorithm in ("gather", "ring"):
        out = _run(3, _shards(x, y, lb, extra, 3), algorithm=algorithm, **opts)
        np.testing.assert_allclose(float(out[1][0]), float(v0), rtol=1e-12)
        for name in ("x", "y"):
            np.testing.assert_allclose(_gathered(out, name), g0[name], rtol=1e-10, atol=1e-13,
                                       err_msg=f"{algorithm}: {name}")


@pytest.mark.parametrize("bound,extra,kw", VARIANTS, ids=IDS)
def test_share_gives_the_gradient_of_the_weighted_sum_of_the_ranks_shares(rng, bound, extra, kw):
    """S_r = W (Σ_{i∈r} t_i + (n_r/N) P): the shares average to the bound; with per-rank
    cotangents g_r the inputs get the gradient of Σ_r g_r S_r (the pooled term weighted by
    the rows' mean of g), and each rank's replicated scalars its own g_r ∂S_r."""
    x, y, lb = _data(rng)
    w, b = 3, SPLITS[3]
    g = np.array([1.0, -0.5, 2.0])
    owner = np.repeat(np.arange(w), np.diff(b))
    opts = dict(kw, bound=bound, similarity="dot", temperature=TAU)
    out = _run(w, _shards(x, y, lb, extra, w), cotangents=list(g), value="share", **opts)
    # the ring (every bound; interpolated: two forward rounds) gives the gather's shares
    ring = _run(w, _shards(x, y, lb, extra, w), cotangents=list(g), value="share",
                algorithm="ring", **opts)
    for o, q in zip(out, ring):
        np.testing.assert_allclose(float(q[0]), float(o[0]), rtol=1e-12, atol=1e-14)
        for name, want in o[1].items():
            np.testing.assert_allclose(np.asarray(q[1][name]), np.asarray(want), rtol=1e-10,
                                       atol=1e-13, err_msg=f"ring: {name}")
    full = float(mi.bound_from_embeddings(x, y, *_extra(extra, lb), **opts))
    np.testing.assert_allclose(np.mean([float(o[0]) for o in out]), full, rtol=1e-12, atol=1e-14)
    if bound == "infonce":
        per, back = nce_ref.vjp(nce_ref.info_nce, x, y, similarity="dot", temperature=TAU,
                                reduction="none")
        terms, pooled = -np.asarray(per) / N, float(np.log(N))
    else:
        terms, pooled = _split_with_tau(bound, extra, kw, x, y, lb, TAU)
    sizes = np.diff(b)
    for r in range(w):
        want = w * (terms[owner == r].sum() + sizes[r] / N * pooled)
        np.testing.assert_allclose(float(out[r][0]), want, rtol=1e-12, atol=1e-14)
    if bound == "mine" or (bound == "js" and not kw):
        return  # their registered gradient is not the value's derivative (mi.mine, mi.js)
    # the gradient of Σ_r g_r S_r = Σ_i w_i t_i + w̄ P (w_i = W g_{owner(i)}, w̄ = W Σ_r g_r n_r/N)
    want = _weighted_gradient(bound, extra, kw, x, y, lb, w * g[owner], w * float(g @ sizes) / N)
    for name in ("x", "y"):
        ref = want[name]
        np.testing.assert_allclose(_gathered(out, name), ref, rtol=1e-6,
                                   atol=1e-7 * float(np.max(np.abs(ref))), err_msg=name)
    total_tau = sum(float(o[1]["temperature"]) for o in out)
    np.testing.assert_allclose(total_tau, float(want["temperature"]), rtol=1e-6, atol=1e-8)


def _weighted_gradient(bound, extra, kw, x, y, lb, w_rows, w_pool):
    """∇ of Σ_i w_i t_i + w_pool P by central finite differences (float64) of the
    single-process split, for x, y and the temperature: an independent check."""
    def objective(xa, ya, tau):
        if bound == "infonce":
            per = nce_ref.info_nce(xa, ya, similarity="dot", temperature=tau, reduction="none")
            return float(np.sum(w_rows * -np.asarray(per) / N))
        t, p = _split_with_tau(bound, extra, kw, xa, ya, lb, tau)
        return float(np.sum(w_rows * t) + w_pool * p)

    h = 1e-6
    out = {}
    for name, arr in (("x", x), ("y", y)):
        grad = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            plus_, minus = arr.copy(), arr.copy()
            plus_[idx] += h
            minus[idx] -= h
            args_p = (plus_, y) if name == "x" else (x, plus_)
            args_m = (minus, y) if name == "x" else (x, minus)
            grad[idx] = (objective(*args_p, TAU) - objective(*args_m, TAU)) / (2 * h)
        out[name] = grad
    out["temperature"] = (objective(x, y, TAU + h) - objective(x, y, TAU - h)) / (2 * h)
    return out


def _split_with_tau(bound, extra, kw, x, y, lb, tau):
    """The bound as ``Σ_i t_i + P`` (the engine's own table, single process)."""
    from nce_ref.mi.embeddings import LocalRows, bound_engine, setup_bound

    su = setup_bound(x, y, (_extra(extra, lb) or (None,))[0], bound=bound, similarity="dot", temperature=tau,
                     clip=kw.get("clip"), report=kw.get("report", "mi"),
                     log_moving_average=kw.get("log_moving_average"), alpha=kw.get("alpha"), axis=1,
                     eps=1e-12, check_finite=True, xp=None)
    res = bound_engine(su, x, y, n_total=N, block=3, need_grad=False, red=LocalRows(su.ctx.xp))
    return np.asarray(res.terms), float(res.pooled)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_interpolated_ring_where_one_entry_dominates_each_row(rng, alpha):
    """The leave-one-out sums ``S_i − e^{z_ij}``: rows whose maximum dwarfs the rest (row
    3's joint score is 400, the rest hundreds of nats below: a naive ``S_i − e^{z_ia}`` at
    its argmax would be pure rounding), the argmax on the diagonal, on another rank's
    column or tied across ranks; the ring equals the single-process bound, whose kernel
    takes the argmax's sum apart."""
    x, y, lb = _data(rng)
    y = y.copy()
    y[3] = x[3] * (100.0 / (x[3] @ x[3]))  # row 3's joint score, 100/τ = 400, dominates it
    y[8] = 10.0 * x[0]  # row 0's maximum is column 8, on rank 2
    y[9] = 10.0 * x[0]  # and tied with column 9 (the same rank) ...
    y[1] = 10.0 * x[0]  # ... and with column 1 (rank 1): ties take either, the value is one
    opts = dict(bound="interpolated", alpha=alpha, similarity="dot", temperature=0.25)
    v0, g0 = nce_ref.value_and_grad(mi.bound_from_embeddings)(x, y, lb, **opts)
    for w in (2, 3, 4):
        out = _run(w, _shards(x, y, lb, ("per-sample",), w), block_size=2, algorithm="ring", **opts)
        np.testing.assert_allclose(float(out[0][0]), float(v0), rtol=1e-12)
        for name in ("x", "y", "log_baseline"):
            np.testing.assert_allclose(_gathered(out, name), g0[name], rtol=1e-9,
                                       atol=1e-12 * float(np.max(np.abs(g0[name]))),
                                       err_msg=f"W={w}: {name}")


@pytest.mark.parametrize("bound", ["infonce", "dv", "interpolated"])
@pytest.mark.parametrize("algorithm", ["gather", "ring"])
def test_a_nan_on_one_rank_raises_the_same_error_everywhere(rng, bound, algorithm):
    x, y, _ = _data(rng)
    x = x.copy()
    x[7, 1] = np.nan  # rank 2's rows
    kw = {"alpha": 0.5} if bound == "interpolated" else {}

    def rank(comm, xr, yr):
        try:
            sharded_bound(xr, yr, comm=comm, bound=bound, algorithm=algorithm, **kw)
        except ShardingError as e:
            return str(e)
        return None

    msgs = ThreadGroup(3).run(rank, _shards(x, y, None, (), 3))
    assert msgs[0] is not None and all(m == msgs[0] for m in msgs)
    assert "rank 2" in msgs[0] and "`x`" in msgs[0]


def test_the_ranks_must_agree(rng):
    x, y, _ = _data(rng)

    def rank(comm, xr, yr, tau):
        sharded_bound(xr, yr, comm=comm, bound="dv", temperature=tau)

    with pytest.raises(ShardingError, match="temperature"):
        ThreadGroup(2).run(rank, [(x[:4], y[:4], 0.5), (x[4:], y[4:], 0.6)])
    with pytest.raises(ShardingError, match="`clip`"):
        ThreadGroup(2).run(lambda comm, a, b: sharded_bound(a, b, comm=comm, bound="smile"),
                           [(x[:4], y[:4]), (x[4:], y[4:])])
    with pytest.raises(ShardingError, match="N >= 2"):
        ThreadGroup(1).run(lambda comm, a, b: sharded_bound(a, b, comm=comm, bound="dv"), [(x[:1], y[:1])])
