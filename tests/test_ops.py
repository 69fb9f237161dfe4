"""Stable primitives: masked logsumexp, log-mean-exp, softplus, sigmoid."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nce_ref._ops import (
    flush_subnormals,
    log_mean_exp,
    logsumexp,
    sigmoid,
    softmax_from_lse,
    softplus,
    softplus_and_sigmoid,
    softplus_and_sigmoid_of_exp,
)
from nce_ref.testing import numeric_grad

from ._helpers import assert_close


def _lse_ref(x, keep):
    import mpmath as mp

    out = []
    with mp.workdps(50):
        for row, m in zip(x, keep):
            vals = [mp.mpf(float(v)) for v, k in zip(row, m) if k]
            out.append(float(mp.log(mp.fsum(mp.exp(v) for v in vals))) if vals else -math.inf)
    return np.array(out)


def test_masked_logsumexp_takes_the_max_over_kept_entries_only(xp, backend):
    x = np.array([[1e4, 0.0, -1.0], [0.0, 1e300, 2.0], [5.0, 6.0, 7.0], [3.0, 3.0, -1e308]])
    keep = np.array([[False, True, True], [True, False, True], [False, False, False],
                     [True, True, True]])
    X, K = backend.asarray(x), backend.asarray(keep)
    out = backend.to_numpy(logsumexp(X, K, axis=1, xp=xp))
    want = _lse_ref(x, keep)
    assert out[2] == -math.inf  # nothing kept: defined, not NaN
    assert_close(out[[0, 1, 3]], want[[0, 1, 3]], rtol=1e-15, atol=0)
    lse_k = logsumexp(X, K, axis=1, keepdims=True, xp=xp)
    p = backend.to_numpy(softmax_from_lse(X, lse_k, K, xp=xp))
    assert np.all(np.isfinite(p)) and np.all(p[2] == 0) and np.all(p[~keep] == 0)
    assert_close(p.sum(axis=1)[[0, 1, 3]], 1.0, rtol=1e-15, atol=0)


def test_logsumexp_gradient_is_the_softmax():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5)) * 4
    keep = rng.random((3, 5)) > 0.3
    lse = logsumexp(x, keep, axis=1, keepdims=True, xp=np)
    p = softmax_from_lse(x, lse, keep, xp=np)
    for i in range(3):
        num = numeric_grad(lambda r, i=i: float(logsumexp(r[None], keep[i:i + 1], axis=1, xp=np)[0]), x[i])
        assert_close(p[i], num, rtol=1e-7, atol=1e-9)


def test_log_mean_exp():
    x = np.log(np.array([[1.0, 2.0, 3.0, 100.0]]))
    keep = np.array([[True, True, True, False]])
    assert_close(log_mean_exp(x, keep, axis=1, xp=np), [math.log(2.0)], rtol=1e-15)
    assert_close(log_mean_exp(x, axis=1, xp=np), [math.log(26.5)], rtol=1e-15)
    assert log_mean_exp(x, np.zeros_like(keep), axis=1, xp=np)[0] == -math.inf


@pytest.mark.parametrize("x", [-1e308, -800.0, -30.0, -1e-20, 0.0, 1e-20, 30.0, 800.0, 1e308])
def test_softplus_and_sigmoid_are_exact_everywhere(x):
    import mpmath as mp

    a = np.array([x])
    sp, sg = float(softplus(a, xp=np)[0]), float(sigmoid(a, xp=np)[0])
    with mp.workdps(50):
        want_sp = float(mp.log1p(mp.exp(mp.mpf(x))))
        want_sg = float(1 / (1 + mp.exp(-mp.mpf(x))))
    assert sp == pytest.approx(want_sp, rel=4e-16, abs=0)
    assert sg == pytest.approx(want_sg, rel=4e-16, abs=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softplus_and_sigmoid_share_one_exp_bit_for_bit(backend, dtype):
    """The fused primitive equals softplus and sigmoid exactly, on every backend and in place."""
    vals = np.array([-1e30, -800.0, -88.0, -30.0, -1.5, -1e-20, 0.0, 1e-20, 0.7, 30.0, 88.0, 800.0, 1e30])
    xp, x = backend.xp, backend.asarray(vals, dtype)
    want_sp = backend.to_numpy(softplus(x, xp=xp))
    want_sg = backend.to_numpy(sigmoid(x, xp=xp))
    for overwrite in (False, True):
        sp, sg = softplus_and_sigmoid(backend.asarray(vals, dtype), overwrite=overwrite, xp=xp)
        np.testing.assert_array_equal(backend.to_numpy(sp), want_sp)
        np.testing.assert_array_equal(backend.to_numpy(sg), want_sg)
    np.testing.assert_array_equal(backend.to_numpy(x), vals.astype(dtype))  # not overwritten


@pytest.mark.parametrize("overwrite", [False, True])
def test_softplus_and_sigmoid_of_exp(overwrite):
    x = np.linspace(-30.0, 30.0, 61)
    ex = np.exp(x)
    ex[0] = 0.0  # a masked entry, x = -inf
    sp, sg = softplus_and_sigmoid_of_exp(ex, overwrite=overwrite, xp=np)
    assert sp[0] == 0.0 and sg[0] == 0.0
    assert_close(sp[1:], softplus(x[1:], xp=np), rtol=4e-16)
    assert_close(sg[1:], sigmoid(x[1:], xp=np), rtol=4e-16)
    sp, sg2 = softplus_and_sigmoid_of_exp(np.exp(x), softplus=False, xp=np)
    assert sp is None


def test_flush_subnormals():
    p = np.array([1e-40, 1e-30, 0.5], dtype=np.float32)
    out = flush_subnormals(p, xp=np)
    assert out[0] == 0 and out[1] == p[1] and out[2] == p[2]
    assert p[0] != 0  # input untouched
