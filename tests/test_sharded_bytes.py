"""Bytes sent and received per rank, counted through a wrapper communicator, equal the
derivation of ``docs/sharded.md`` ("Memory and bytes per rank") and
``docs/derivations.md`` §10.

Notation: rank r holds n_r rows (C_r travelling columns), N = Σ n_r, K the features'
width (D; D + 2 for the squared euclidean features), ρ = 1 under the euclidean root
(its column noise travels as one more column), b the dtype's bytes.  A ring round
passes every shard but the last one a rank sees: rank r sends the shards of owners
r, r − 1, …, r − W + 2 (Σ = N_c − C_{r+1}) and receives N_c − C_r rows; the gradient
round adds the accumulators, W passes each, the last one home (N_c·K·b both ways).
"""

from __future__ import annotations

import numpy as np
import pytest

import nce_ref
from nce_ref.sharded import ThreadGroup
from nce_ref.sharded import bound_from_embeddings as sharded_bound
from nce_ref.sharded import losses as sharded
from nce_ref.testing.sharded import CountingCommunicator

D = 6
B = 8  # float64


def _counted(fn, w, shards, **kw):
    """value_and_grad of ``fn`` on every rank through a counting communicator."""
    def rank(comm, *xs):
        c = CountingCommunicator(comm)
        nce_ref.value_and_grad(fn)(*xs, comm=c, **kw)
        return c

    return ThreadGroup(w).run(rank, shards)


def _ring_bytes(cols, r, rounds, width, acc_width):
    """(sent, received) of rank r: ``rounds`` rounds of shards of ``width`` bytes per
    row, then the accumulators (``acc_width`` bytes per row) home."""
    total, w = sum(cols), len(cols)
    sent = rounds * (total - cols[(r + 1) % w]) * width
    received = rounds * (total - cols[r]) * width
    if w == 1:
        return 0, 0
    return sent + total * acc_width, received + total * acc_width


@pytest.mark.parametrize("similarity,k,rho", [("cosine", D, 0), ("neg_euclidean", D + 2, 1)])
@pytest.mark.parametrize("w", [1, 2, 3])
def test_info_nce_ring_bytes(rng, similarity, k, rho, w):
    sizes = [2, 5, 4][:w]
    n = sum(sizes)
    q, key = rng.standard_normal((n, D)), rng.standard_normal((n, D))
    bounds = np.cumsum([0, *sizes])
    shards = [(q[bounds[r]:bounds[r + 1]], key[bounds[r]:bounds[r + 1]]) for r in range(w)]
    out = _counted(sharded.info_nce, w, shards, algorithm="ring", similarity=similarity, block_size=3)
    for r, c in enumerate(out):
        # one forward round (the rows' (m, r) are kept for the VJP), one gradient round
        sent, received = _ring_bytes(sizes, r, 2, (k + rho) * B, k * B)
        assert (c.sent["ring_pass"], c.received["ring_pass"]) == (sent, received), r
        assert c.calls["gather_rows"] == c.calls["reduce_rows"] == 0
        assert c.sent["all_sum"] <= (D + 1 + 16) * B  # a few scalars (the euclidean centre: D + 1)


@pytest.mark.parametrize("w", [2, 3])
def test_info_nce_gather_bytes(rng, w):
    sizes = [2, 5, 4][:w]
    n = sum(sizes)
    q, key = rng.standard_normal((n, D)), rng.standard_normal((n, D))
    bounds = np.cumsum([0, *sizes])
    shards = [(q[bounds[r]:bounds[r + 1]], key[bounds[r]:bounds[r + 1]]) for r in range(w)]
    out = _counted(sharded.info_nce, w, shards, algorithm="gather")
    for r, c in enumerate(out):
        assert c.received["gather_rows"] == (n - sizes[r]) * D * B  # the keys
        assert c.sent["reduce_rows"] == (n - sizes[r]) * D * B      # their gradient
        assert c.calls["ring_pass"] == 0


def test_nt_xent_ring_bytes(rng):
    sizes, w = [3, 1, 4], 3
    n = sum(sizes)
    a, b = rng.standard_normal((n, D)), rng.standard_normal((n, D))
    bounds = np.cumsum([0, *sizes])
    shards = [(a[bounds[r]:bounds[r + 1]], b[bounds[r]:bounds[r + 1]]) for r in range(w)]
    out = _counted(sharded.nt_xent, w, shards, algorithm="ring", block_size=2)
    cols = [2 * s for s in sizes]  # both views travel
    for r, c in enumerate(out):
        assert (c.sent["ring_pass"], c.received["ring_pass"]) == _ring_bytes(cols, r, 2, D * B, D * B)


@pytest.mark.parametrize("positives,rounds", [("out", 2), ("in", 2), ("per_pair", 3)])
def test_supcon_ring_bytes(rng, positives, rounds):
    sizes, w, v = [3, 1, 4], 3, 2
    n = sum(sizes)
    f, y = rng.standard_normal((n, v, D)), rng.integers(0, 3, n)
    bounds = np.cumsum([0, *sizes])
    shards = [(f[bounds[r]:bounds[r + 1]], y[bounds[r]:bounds[r + 1]]) for r in range(w)]
    out = _counted(sharded.supcon, w, shards, algorithm="ring", positives=positives, block_size=2)
    cols = [v * s for s in sizes]  # each sample's views, with their labels (int64)
    for r, c in enumerate(out):
        want = _ring_bytes(cols, r, rounds, D * B + y.itemsize, D * B)
        assert (c.sent["ring_pass"], c.received["ring_pass"]) == want, r
        assert c.calls["gather_rows"] == c.calls["reduce_rows"] == 0


@pytest.mark.parametrize("bound,kw", [("dv", {}), ("tuba", {}), ("js", {"report": "objective"}),
                                      ("smile", {"clip": 1.0}), ("loo_upper", {}),
                                      ("interpolated", {"alpha": 0.5})])
def test_bound_ring_bytes(rng, bound, kw):
    """Two rounds of the columns (the row statistics, the gradient round); interpolated
    three (its top-two row summaries, then its per-entry terms, then the gradient)."""
    sizes, w = [3, 1, 4], 3
    n = sum(sizes)
    x, y = rng.standard_normal((n, D)), rng.standard_normal((n, D))
    bounds = np.cumsum([0, *sizes])
    shards = [(x[bounds[r]:bounds[r + 1]], y[bounds[r]:bounds[r + 1]]) for r in range(w)]
    out = _counted(sharded_bound, w, shards, algorithm="ring", bound=bound, block_size=2, **kw)
    rounds = 3 if bound == "interpolated" else 2
    for r, c in enumerate(out):
        want = _ring_bytes(sizes, r, rounds, D * B, D * B)
        assert (c.sent["ring_pass"], c.received["ring_pass"]) == want
        assert c.calls["reduce_rows"] == 0
        # DV and SMILE's log-sum-exp over the rows: one number from each other rank
        assert c.received["gather_rows"] == ((w - 1) * B if bound in ("dv", "smile") else 0)
