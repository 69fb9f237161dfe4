"""Similarities: special inputs (values and VJPs at zero vectors and zero distances)."""

from __future__ import annotations

import numpy as np
import pytest

import nce_ref
from nce_ref.testing import check_grad

from ._helpers import assert_close


def test_zero_distance_has_a_finite_zero_subgradient(rng):
    a = rng.standard_normal((3, 4))
    v, g = nce_ref.value_and_grad(nce_ref.similarity)(a, a.copy(), similarity="neg_euclidean",
                                                      cotangent=np.eye(3))
    assert np.all(np.diag(v) == 0)
    assert np.all(g["a"] == 0) and np.all(g["b"] == 0)  # only the zero-distance entries weighted
    # away from the diagonal the gradient is the unit vector (a_i − b_j)/d_ij
    ct = np.zeros((3, 3))
    ct[0, 1] = 1.0
    _, g = nce_ref.value_and_grad(nce_ref.similarity)(a, a.copy(), similarity="neg_euclidean", cotangent=ct)
    u = (a[0] - a[1]) / np.linalg.norm(a[0] - a[1])
    assert_close(g["a"][0], -u, rtol=1e-12, atol=1e-15)


def test_squared_distance_error_is_bounded_by_the_spread_not_the_offset(rng):
    # The documented accuracy: |error of d²| <= O(eps) * (‖a − c‖² + ‖b − c‖²), c the
    # common mean; an offset of 1e6 shared by all points costs nothing.
    a = rng.standard_normal((3, 5)) + 1e6
    b = a + 1e-3 * rng.standard_normal((3, 5))
    d2 = -nce_ref.similarity(a, b, similarity="neg_sq_euclidean")
    want = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    c = np.vstack([a, b]).mean(0)
    spread = ((a - c) ** 2).sum(1)[:, None] + ((b - c) ** 2).sum(1)[None, :]
    assert np.all(np.abs(d2 - want) <= 64 * np.finfo(float).eps * spread + 1e-300)
    check_grad(nce_ref.similarity, a - 1e6, b - 1e6, similarity="neg_sq_euclidean")


def test_near_coincident_pairs_are_exact_in_the_positive_term(rng):
    # the positive pair of info_nce is a row-wise similarity: no cancellation there
    from nce_ref.losses.infonce import pair_sim

    a = rng.standard_normal((2, 5)) + 100.0
    b = a + 1e-6 * rng.standard_normal((2, 5))
    s, _ = pair_sim(a, b, kind="neg_euclidean", eps=1e-12, xp=np)
    assert_close(-s, np.linalg.norm(a - b, axis=1), rtol=1e-8, atol=0)


def test_zero_vector_under_cosine_follows_the_documented_eps(rng):
    a = np.vstack([np.zeros((1, 3)), rng.standard_normal((2, 3))])
    b = rng.standard_normal((4, 3))
    s, g = nce_ref.value_and_grad(nce_ref.similarity)(a, b, cotangent=np.ones((3, 4)))
    assert np.all(s[0] == 0)
    bh = b / np.linalg.norm(b, axis=1, keepdims=True)
    assert_close(g["a"][0], bh.sum(axis=0) / 1e-12, rtol=1e-12)  # x / max(‖x‖, eps)
    assert np.all(np.isfinite(g["b"]))


@pytest.mark.parametrize("kind", ["cosine", "dot", "neg_sq_euclidean", "neg_euclidean"])
def test_extreme_magnitudes_stay_finite(kind, rng):
    a = rng.standard_normal((3, 4)) * 1e150
    b = rng.standard_normal((2, 4)) * 1e-9  # above the cosine norm floor eps = 1e-12
    s = nce_ref.similarity(a, b, similarity=kind)
    assert np.all(np.isfinite(s))
    if kind == "cosine":
        ah = a / np.linalg.norm(a, axis=1, keepdims=True)
        bh = b / np.linalg.norm(b, axis=1, keepdims=True)
        assert_close(s, ah @ bh.T, rtol=1e-13, atol=1e-15)
