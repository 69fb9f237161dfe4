"""The InfoNCE bound at finite N: E[log N − L] <= min(I, log N), exactly, and its sandwich.

``nce_ref.mi.theory.expected_infonce_bound`` sums over the multinomial counts of the
N − 1 negatives.  It is checked against an enumeration of every N-tuple (a
different method), closed forms, the theorem's inequalities, and Monte Carlo
estimates of ``nce_ref.mi.infonce`` with the optimal critic (fixed seeds, 4
standard errors).
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
from scipy import stats

from nce_ref import mi
from nce_ref.mi import critics, exact, sample, theory

TABLES = {
    "dense 2x2": np.array([[0.4, 0.1], [0.15, 0.35]]),
    "zeros 3x3": np.array([[0.30, 0.10, 0.00], [0.00, 0.25, 0.05], [0.05, 0.05, 0.20]]),
    "rectangular 2x4": np.array([[0.20, 0.05, 0.15, 0.10], [0.02, 0.30, 0.08, 0.10]]),
    "noiseless copy on 5": np.eye(5) / 5,
    "near independence": np.outer([0.3, 0.7], [0.6, 0.4]) + np.array([[0.01, -0.01], [-0.01, 0.01]]),
}


def _mi(pmf):
    px, py = pmf.sum(1, keepdims=True), pmf.sum(0, keepdims=True)
    nz = pmf > 0
    return float(np.sum(pmf[nz] * np.log(pmf[nz] / (px * py)[nz])))


def _chi2(pmf):
    px, py = pmf.sum(1, keepdims=True), pmf.sum(0, keepdims=True)
    nz = pmf > 0
    return float(np.sum(pmf[nz] ** 2 / (px * py)[nz]) - 1.0)


def _by_enumeration(pmf, n):
    """E[log N − L_1] over every (x_1, y_1, y_2..y_N): the joint pair and N − 1 negatives ~ p(y)."""
    px, py = pmf.sum(1), pmf.sum(0)
    total = 0.0
    for a, b in itertools.product(range(pmf.shape[0]), range(pmf.shape[1])):
        if pmf[a, b] == 0:
            continue
        r_ab = pmf[a, b] / (px[a] * py[b])
        for negs in itertools.product(range(pmf.shape[1]), repeat=n - 1):
            prob = pmf[a, b] * math.prod(py[c] for c in negs)
            s = sum(pmf[a, c] / (px[a] * py[c]) for c in negs)
            total += prob * (math.log(n) - math.log1p(s / r_ab))
    return total


@pytest.mark.parametrize("name", ["dense 2x2", "zeros 3x3", "rectangular 2x4", "noiseless copy on 5"])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_multinomial_sum_equals_enumeration_of_tuples(name, n):
    pmf = TABLES[name]
    assert theory.expected_infonce_bound(pmf, n) == pytest.approx(_by_enumeration(pmf, n), rel=1e-12, abs=1e-14)


def test_noiseless_channel_closed_form():
    # copy of a uniform variable on k symbols: L_1 = log(1 + #{negatives equal to y_1}), Binomial(N-1, 1/k)
    for k, n in ((5, 3), (50, 10), (100, 400)):
        binom = stats.binom(n - 1, 1.0 / k)
        c = np.arange(n)
        want = math.log(n) - float(np.sum(binom.pmf(c) * np.log1p(c)))
        assert theory.expected_infonce_bound(np.eye(k) / k, n) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_expectation_is_inside_the_sandwich_and_increases_with_n(name):
    pmf = TABLES[name]
    i_true, chi2 = _mi(pmf), _chi2(pmf)
    prev = -1.0
    for n in (1, 2, 3, 5, 10, 30, 100, 300):
        e = theory.expected_infonce_bound(pmf, n)
        lower = max(0.0, i_true - math.log1p(chi2 / n))
        upper = min(i_true, math.log(n))
        assert lower - 1e-12 <= e <= upper + 1e-12, (n, lower, e, upper)
        assert e >= prev - 1e-13, (n, prev, e)  # non-decreasing in N
        prev = e
    # and close to I once log N >> I: the sandwich's width is log(1 + chi2/N)
    assert i_true - e <= math.log1p(chi2 / 300) + 1e-12


def test_saturates_near_log_n_when_mi_is_far_above_it():
    pmf = np.eye(1000) / 1000  # I = log 1000 = 6.9 nats
    for n in (4, 16, 64):
        e = theory.expected_infonce_bound(pmf, n)
        assert math.log(n) - 0.07 < e <= math.log(n)  # a negative collides with prob <= 63/1000


def test_approaches_mi_as_n_grows():
    pmf = TABLES["dense 2x2"]
    i_true = _mi(pmf)
    gaps = [i_true - theory.expected_infonce_bound(pmf, n) for n in (10, 100, 1000)]
    assert gaps[0] > gaps[1] > gaps[2] > 0
    assert gaps[2] < 1e-3


def test_limits_helper_and_chi_square_agree_with_independent_formulas():
    pmf = TABLES["zeros 3x3"]
    assert theory.chi_square(pmf) == pytest.approx(_chi2(pmf), rel=1e-14)
    lo, hi = theory.infonce_limits(pmf, 7)
    assert lo == pytest.approx(max(0.0, _mi(pmf) - math.log1p(_chi2(pmf) / 7)), rel=1e-14)
    assert hi == pytest.approx(min(_mi(pmf), math.log(7)), rel=1e-14)


def test_fast_for_n_in_the_hundreds_on_small_alphabets():
    # a dense 3 x 3 table at N = 300 sums ~45 000 compositions per row; generous limit for CI
    rng = np.random.default_rng(5)
    pmf = rng.dirichlet(np.ones(9)).reshape(3, 3)
    t0 = time.perf_counter()
    e = theory.expected_infonce_bound(pmf, 300)
    assert time.perf_counter() - t0 < 20.0
    assert 0 < e <= exact.discrete(pmf)


def test_zero_rows_and_columns_never_sampled_are_ignored():
    pmf = np.array([[0.5, 0.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    assert theory.expected_infonce_bound(pmf, 4) == pytest.approx(
        theory.expected_infonce_bound(np.array([[0.5, 0.0], [0.0, 0.5]]), 4), rel=1e-15)


@pytest.mark.parametrize("name,n", [("zeros 3x3", 6), ("dense 2x2", 16)])
def test_agrees_with_monte_carlo_of_the_bound(name, n):
    pmf = TABLES[name]
    rng = np.random.default_rng(11)
    batches = 3000
    vals = np.empty(batches)
    for b in range(batches):
        x, y = sample.discrete(pmf, n, rng)
        vals[b] = float(mi.infonce(critics.discrete(pmf, x, y), check_finite=False))
    se = vals.std(ddof=1) / math.sqrt(batches)
    assert abs(vals.mean() - theory.expected_infonce_bound(pmf, n)) < 4 * se


@pytest.mark.parametrize("i_true,n", [(2.0, 16), (6.0, 16), (1.0, 64)])
def test_gaussian_bound_below_min_of_mi_and_log_n_by_monte_carlo(i_true, n):
    """Correlated Gaussians (dim 4): the mean of log N − L is at most min(I, log N) within 4 SE,
    and it saturates near log N when I >> log N."""
    dim, batches = 4, 1500
    rho = exact.rho_for_mi(i_true, dim)
    rng = np.random.default_rng(7)
    x, y = sample.correlated_gaussian(batches * n, rho, dim, rng)
    vals = np.array([float(mi.infonce(critics.gaussian(x[k * n:(k + 1) * n], y[k * n:(k + 1) * n], rho)))
                     for k in range(batches)])
    assert vals.max() <= math.log(n) + 1e-12  # on every batch
    se = vals.std(ddof=1) / math.sqrt(batches)
    assert vals.mean() <= min(i_true, math.log(n)) + 4 * se
    if i_true > math.log(n) + 2:
        assert vals.mean() > math.log(n) - 0.15  # saturated: I = 6 nats, log 16 = 2.77


def test_bad_arguments():
    with pytest.raises(ValueError, match="sum to 1"):
        theory.expected_infonce_bound(np.ones((2, 2)), 3)
    with pytest.raises(ValueError, match="n"):
        theory.expected_infonce_bound(np.eye(2) / 2, 0)
    with pytest.raises(TypeError, match="n"):
        theory.expected_infonce_bound(np.eye(2) / 2, 2.0)
