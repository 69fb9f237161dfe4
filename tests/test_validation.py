"""Bad input: a clear ValueError/TypeError naming the argument, raised before computing."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nce_ref


@pytest.fixture
def qk(rng):
    return rng.standard_normal((4, 3)), rng.standard_normal((4, 3))


@pytest.mark.parametrize("call,exc,match", [
    (lambda q, k: nce_ref.info_nce(q, k[:3]), ValueError, r"`key` must have the shape of `query`"),
    (lambda q, k: nce_ref.info_nce(q, k[:, :2]), ValueError, r"`key` must have the shape"),
    (lambda q, k: nce_ref.info_nce(q[0], k), ValueError, r"`query` must be 2-D; got 1-D"),
    (lambda q, k: nce_ref.info_nce(q[:0], k[:0]), ValueError, r"`query` must have at least one row"),
    (lambda q, k: nce_ref.info_nce(q[:, :0], k[:, :0]), ValueError, r"at least one column"),
    (lambda q, k: nce_ref.info_nce(q, k, temperature=0.0), ValueError, r"`temperature` must be > 0"),
    (lambda q, k: nce_ref.info_nce(q, k, temperature=-1.0), ValueError, r"`temperature` must be > 0"),
    (lambda q, k: nce_ref.info_nce(q, k, temperature=math.nan), ValueError, r"`temperature` must be finite"),
    (lambda q, k: nce_ref.info_nce(q, k, temperature=math.inf), ValueError, r"`temperature` must be finite"),
    (lambda q, k: nce_ref.info_nce(q, k, temperature="0.1"), TypeError, r"`temperature` must be a real"),
    (lambda q, k: nce_ref.info_nce(q, k, temperature=np.ones(2)), ValueError, r"`temperature` must be a scalar"),
    (lambda q, k: nce_ref.info_nce(q.astype(int), k), TypeError, r"`query` must have a real floating dtype"),
    (lambda q, k: nce_ref.info_nce(q.tolist(), k), TypeError, r"`query` must be an array"),
    (lambda q, k: nce_ref.info_nce(q, k, similarity="cos"), ValueError, r"`similarity` must be one of"),
    (lambda q, k: nce_ref.info_nce(q, k, reduction="avg"), ValueError, r"`reduction` must be one of"),
    (lambda q, k: nce_ref.info_nce(q, k, negative_mode="pairs"), ValueError, r"`negative_mode` must be one of"),
    (lambda q, k: nce_ref.info_nce(q, k, in_batch_negatives=False), ValueError, r"needs explicit `negatives`"),
    (lambda q, k: nce_ref.info_nce(q, k, in_batch_negatives=1), TypeError, r"`in_batch_negatives`"),
    (lambda q, k: nce_ref.info_nce(q, k, q, symmetric=True), ValueError, r"`symmetric=True`"),
    (lambda q, k: nce_ref.info_nce(q, k, q[:, :2]), ValueError, r"`negatives` must have shape \(M, 3\)"),
    (lambda q, k: nce_ref.info_nce(q, k, q, negative_mode="paired"), ValueError, r"`negatives` must be 3-D"),
    (lambda q, k: nce_ref.info_nce(q, k, np.ones((3, 2, 3)), negative_mode="paired"), ValueError,
     r"`negatives` must have shape \(4, M, 3\)"),
    (lambda q, k: nce_ref.info_nce(q, k, eps=0.0), ValueError, r"`eps` must be > 0"),
    (lambda q, k: nce_ref.nt_xent(q, k[:2]), ValueError, r"`z2` must have the shape of `z1`"),
    (lambda q, k: nce_ref.nt_xent(q, k, temperature=0), ValueError, r"`temperature` must be > 0"),
    (lambda q, k: nce_ref.info_nce_from_scores(q), ValueError, r"at least as many columns as rows"),
    (lambda q, k: nce_ref.similarity(q, k[:, :2]), ValueError, r"same number of columns"),
    (lambda q, k: nce_ref.similarity(q, k, similarity="l2"), ValueError, r"`similarity` must be one of"),
    (lambda q, k: nce_ref.info_nce(q, k, block_size=0), ValueError, r"`block_size` must be >= 1; got 0"),
    (lambda q, k: nce_ref.info_nce(q, k, block_size=2.5), TypeError, r"`block_size` must be an integer"),
    (lambda q, k: nce_ref.nt_xent(q, k, block_size=-3), ValueError, r"`block_size` must be >= 1"),
    (lambda q, k: nce_ref.info_nce(q, k, memory_budget=10), ValueError,
     r"`memory_budget` of 10 bytes is too small for one row of 4 scores; the smallest that works is 64"),
    (lambda q, k: nce_ref.nt_xent(q, k, memory_budget=127), ValueError, r"the smallest that works is 128"),
])
def test_bad_input_names_the_argument(qk, call, exc, match):
    with pytest.raises(exc, match=match):
        call(*qk)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_refused(qk, bad):
    q, k = qk
    q = q.copy()
    q[1, 2] = bad
    with pytest.raises(ValueError, match=r"`query` must be finite"):
        nce_ref.info_nce(q, k)
    with pytest.raises(ValueError, match=r"`z2` must be finite"):
        nce_ref.nt_xent(k, q)
    # opting out computes anyway (and the NaN/inf propagates, it is not hidden)
    with np.errstate(invalid="ignore", over="ignore"):
        out = nce_ref.info_nce(q, k, check_finite=False, reduction="none")
    assert not np.all(np.isfinite(out))


def test_mixed_libraries_are_refused(qk):
    torch = pytest.importorskip("torch", reason="torch not installed")
    q, k = qk
    with pytest.raises(TypeError, match="one array library"):
        nce_ref.info_nce(q, torch.from_numpy(k))
    with pytest.raises(TypeError, match="same library"):
        nce_ref.info_nce(torch.from_numpy(q), torch.from_numpy(k), temperature=np.asarray(0.1))


def test_two_devices_are_refused(qk):
    xps = pytest.importorskip("array_api_strict", reason="array-api-strict not installed")
    q, k = (xps.asarray(a) for a in qk)
    k2 = xps.asarray(qk[1], device=xps.Device("device1"))
    with pytest.raises(ValueError, match="one device"):
        nce_ref.info_nce(q, k2)


def test_outputs_follow_the_inputs_device():
    xps = pytest.importorskip("array_api_strict", reason="array-api-strict not installed")
    dev = xps.Device("device1")
    rng = np.random.default_rng(1)
    q = xps.asarray(rng.standard_normal((4, 3)), device=dev)
    k = xps.asarray(rng.standard_normal((4, 3)), device=dev)
    v, g = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, symmetric=True)
    assert v.device == dev and g["query"].device == dev and g["temperature"].device == dev
    v, g = nce_ref.value_and_grad(nce_ref.nt_xent)(q, k, temperature=xps.asarray(0.3, device=dev))
    assert v.device == dev and g["z1"].device == dev and g["temperature"].device == dev


def test_inputs_are_never_mutated(rng):
    import backends

    backend = backends.get("numpy_readonly")  # any write into an input raises there
    q, k = (backend.asarray(rng.standard_normal((5, 3))) for _ in range(2))
    negs = backend.asarray(rng.standard_normal((5, 2, 3)))
    for kind in ("cosine", "dot", "neg_sq_euclidean", "neg_euclidean"):
        nce_ref.value_and_grad(nce_ref.info_nce)(q, k, negs, similarity=kind, negative_mode="paired",
                                                 in_batch_negatives=True)
        nce_ref.value_and_grad(nce_ref.info_nce)(q, k, similarity=kind, symmetric=True)
        nce_ref.value_and_grad(nce_ref.nt_xent)(q, k, similarity=kind)
    assert not q.flags.writeable
