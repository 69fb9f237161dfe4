"""The autograd bridges of the sharded losses: a training step whose parameter gradients,
averaged over the ranks as DDP does, equal the single-device step on the whole batch.

Ranks are threads here (``ThreadGroup``) and DDP's mean is taken by hand; the same step
under real ``torch.distributed`` DDP runs in ``tests/test_sharded_processes.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

import nce_ref
from nce_ref.sharded import ThreadGroup

torch = pytest.importorskip("torch", reason="torch is not installed: the torch bridge is untested")
from nce_ref.interop.torch import function  # noqa: E402

N, D, E = 10, 6, 4
BOUNDS = [0, 3, 4, 10]


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * N, D, dtype=torch.float64, generator=g)  # two views: rows i and N + i
    labels = torch.randint(0, 3, (N,), generator=g)
    return x, labels


def _loss(kind, f, lin, x, labels, sl, t, **kw):
    za, zb = lin(x[:N][sl]), lin(x[N:][sl])
    if kind == "clip":
        return function(f)(za, zb, temperature=t, symmetric=True, **kw)
    if kind == "nt_xent":
        return function(f)(za, zb, temperature=t, **kw)
    return function(f)(torch.stack([za, zb], 1), labels[sl], temperature=t, **kw)


def _grads(lin, t):
    return [p.grad.clone() for p in lin.parameters()] + [t.grad.clone()]


SINGLE = {"clip": nce_ref.info_nce, "nt_xent": nce_ref.nt_xent, "supcon": nce_ref.supcon}
SHARDED = {"clip": nce_ref.sharded.info_nce, "nt_xent": nce_ref.sharded.nt_xent,
           "supcon": nce_ref.sharded.supcon}


@pytest.mark.parametrize("kind", ["clip", "nt_xent", "supcon"])
@pytest.mark.parametrize("value", ["share", "global"])
def test_the_ranks_mean_gradient_is_the_single_device_gradient(kind, value):
    x, labels = _batch()
    torch.manual_seed(1)
    lin0 = torch.nn.Linear(D, E, dtype=torch.float64)

    def fresh():
        lin = torch.nn.Linear(D, E, dtype=torch.float64)
        lin.load_state_dict(lin0.state_dict())
        return lin, torch.tensor(0.2, dtype=torch.float64, requires_grad=True)

    lin, t = fresh()
    single = _loss(kind, SINGLE[kind], lin, x, labels, slice(None), t)
    single.backward()
    want = _grads(lin, t)

    def rank(comm, sl, weight):
        lin, t = fresh()
        loss = _loss(kind, SHARDED[kind], lin, x, labels, sl, t, comm=comm, value=value)
        (loss * weight).backward()
        return float(loss.detach()), _grads(lin, t)

    w = len(BOUNDS) - 1
    ones = ThreadGroup(w).run(rank, [(slice(BOUNDS[r], BOUNDS[r + 1]), 1.0) for r in range(w)])
    values = [o[0] for o in ones]
    if value == "global":
        assert values == [values[0]] * w
        np.testing.assert_allclose(values[0], float(single.detach()), rtol=1e-13)
    else:  # the shares average to the loss
        np.testing.assert_allclose(np.mean(values), float(single.detach()), rtol=1e-13)
    for i, g in enumerate(want):  # DDP's mean over the ranks, the temperature's replicas too
        mean = sum(o[1][i] for o in ones) / w
        np.testing.assert_allclose(mean.numpy(), g.numpy(), rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("kind", ["clip", "supcon"])
@pytest.mark.parametrize("value", ["share", "global"])
def test_an_upstream_weight_per_rank_gives_the_gradient_of_the_weighted_sum(kind, value):
    """Rank r backpropagates c_r times its loss: the parameters' gradients summed over the
    ranks are those of Σ_r c_r loss_r (a backward that kept only its own slice, or
    dropped the cross-rank sum, fails this)."""
    x, labels = _batch()
    torch.manual_seed(2)
    lin0 = torch.nn.Linear(D, E, dtype=torch.float64)
    c = [1.0, -0.5, 2.0]
    w = len(BOUNDS) - 1

    def fresh():
        lin = torch.nn.Linear(D, E, dtype=torch.float64)
        lin.load_state_dict(lin0.state_dict())
        return lin, torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def rank(comm, sl, weight):
        lin, t = fresh()
        loss = _loss(kind, SHARDED[kind], lin, x, labels, sl, t, comm=comm, value=value)
        (loss * weight).backward()
        return _grads(lin, t)

    got = ThreadGroup(w).run(rank, [(slice(BOUNDS[r], BOUNDS[r + 1]), c[r]) for r in range(w)])
    # the same objective on one device: rank r's returned loss, from the single-process
    # per-term loss (its rows' share of the mean times W), or the global loss
    lin, t = fresh()
    za, zb = lin(x[:N]), lin(x[N:])
    if kind == "clip":
        per = function(nce_ref.info_nce)(za, zb, temperature=t, symmetric=True, reduction="none")
        owner = np.repeat(np.arange(w), np.diff(BOUNDS))
    else:
        per = function(nce_ref.supcon)(torch.stack([za, zb], 1), labels, temperature=t, reduction="none")
        owner = np.tile(np.repeat(np.arange(w), np.diff(BOUNDS)), 2)
    n_terms = per.shape[0]
    if value == "share":
        weights = torch.tensor([w * c[r] / n_terms for r in owner], dtype=torch.float64)
    else:
        weights = torch.full((n_terms,), sum(c) / n_terms, dtype=torch.float64)
    (per * weights).sum().backward()
    want = _grads(lin, t)
    for i, g in enumerate(want):
        total = sum(o[i] for o in got)  # the replicas' and the ranks' gradients, summed
        np.testing.assert_allclose(total.numpy(), g.numpy(), rtol=1e-11, atol=1e-14)
