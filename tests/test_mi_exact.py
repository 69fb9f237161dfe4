"""Exact MI, samplers and optimal critics against independent computations.

Independent means: SciPy entropies (``scipy.stats``), numerical integration
(``scipy.integrate``), closed forms worked out by hand, or known values; never the
function under test.  Monte Carlo checks use fixed seeds and a stated bound of
4 standard errors (a false alarm about once in 16 000 runs, were the seed free).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from nce_ref.mi import critics, exact, sample

from ._helpers import assert_like

# -- discrete ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_a_perfect_copy_of_a_uniform_variable_on_k_symbols_gives_log_k(k):
    assert exact.discrete(np.eye(k) / k) == pytest.approx(math.log(k), rel=1e-15, abs=0)
    perm = np.eye(k)[np.random.default_rng(k).permutation(k)] / k
    assert exact.discrete(perm) == pytest.approx(math.log(k), rel=1e-15, abs=0)


def test_independent_variables_give_zero(rng):
    for _ in range(5):
        px, py = rng.dirichlet(np.ones(4)), rng.dirichlet(np.ones(6))
        assert exact.discrete(np.outer(px, py)) == pytest.approx(0.0, abs=1e-15)
    assert exact.discrete(np.outer([1.0, 0.0], [0.25, 0.75])) == 0.0  # zeros included


def test_binary_symmetric_channel_closed_form():
    # X uniform on {0, 1}, Y = X flipped with probability e: I = log 2 - H_b(e)
    for e in (0.0, 0.01, 0.2, 0.5):
        pmf = 0.5 * np.array([[1 - e, e], [e, 1 - e]])
        hb = 0.0 if e in (0.0, 1.0) else -(e * math.log(e) + (1 - e) * math.log(1 - e))
        assert exact.discrete(pmf) == pytest.approx(math.log(2) - hb, abs=1e-15)


def test_discrete_equals_scipy_entropies(rng):
    pmf = rng.dirichlet(np.ones(20)).reshape(4, 5)
    pmf[0, 0] = pmf[2, 3] = 0.0
    pmf /= pmf.sum()
    h = stats.entropy
    want = h(pmf.sum(1)) + h(pmf.sum(0)) - h(pmf.ravel())
    assert exact.discrete(pmf) == pytest.approx(want, rel=1e-13)


@pytest.mark.parametrize("bad,match", [
    (np.array([[0.5, 0.6], [-0.1, 0.0]]), "non-negative"),
    (np.array([[0.5, 0.2], [0.1, 0.1]]), "sum to 1"),
    (np.array([[0.5, np.nan], [0.25, 0.25]]), "finite"),
    (np.array([0.5, 0.5]), "2-D"),
    (np.zeros((0, 3)), "empty"),
])
def test_bad_pmf_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        exact.discrete(bad)


# -- Gaussian -------------------------------------------------------------------------------------


def test_gaussian_matches_numerical_integration_in_two_dimensions():
    cov = np.array([[2.0, 0.9], [0.9, 0.7]])
    joint = stats.multivariate_normal(np.zeros(2), cov)
    mx, my = stats.norm(0, math.sqrt(cov[0, 0])), stats.norm(0, math.sqrt(cov[1, 1]))

    def integrand(y, x):
        lp = joint.logpdf([x, y])
        return math.exp(lp) * (lp - mx.logpdf(x) - my.logpdf(y))

    # the box holds 7 standard deviations of each coordinate: the tails weigh below 1e-11
    val, err = integrate.dblquad(integrand, -10, 10, -6, 6, epsabs=1e-10, epsrel=1e-9)
    assert exact.gaussian(cov, 1) == pytest.approx(val, rel=1e-7)


def test_gaussian_matches_scipy_entropies_in_six_dimensions(rng):
    a = rng.standard_normal((6, 6))
    cov = a @ a.T + 0.5 * np.eye(6)
    h = lambda c: stats.multivariate_normal(np.zeros(c.shape[0]), c).entropy()  # noqa: E731
    want = h(cov[:2, :2]) + h(cov[2:, 2:]) - h(cov)
    assert exact.gaussian(cov, 2) == pytest.approx(want, rel=1e-12)
    # invariant to rescaling either block
    d = np.diag([3.0, 0.1, 1.0, 1.0, 7.0, 0.2])
    assert exact.gaussian(d @ cov @ d, 2) == pytest.approx(want, rel=1e-12)


def test_gaussian_uses_log_determinants_in_high_dimension():
    # 400 + 400 coordinates of variance 1e-3: det underflows to 0, slogdet does not
    d, rho, v = 400, 0.6, 1e-3
    cov = v * np.block([[np.eye(d), rho * np.eye(d)], [rho * np.eye(d), np.eye(d)]])
    assert np.linalg.det(cov) == 0.0
    assert exact.gaussian(cov, d) == pytest.approx(-0.5 * d * math.log(1 - rho ** 2), rel=1e-12)


def test_correlated_gaussian_and_its_inverse():
    for dim in (1, 3, 20):
        for m in (0.0, 0.5, 2.0, 10.0, 40.0):
            if m / dim > 15:  # rho = sqrt(1 - e^{-2m/d}) rounds to 1 in float64 beyond ~18 nats per pair
                continue
            rho = exact.rho_for_mi(m, dim)
            assert 0 <= rho < 1
            # rho itself carries a rounding of eps/2: dI = d rho^2/(1 - rho^2) (d rho / rho)
            cond = dim * rho ** 2 * math.exp(2 * m / dim)
            assert exact.correlated_gaussian(rho, dim) == pytest.approx(m, rel=1e-13, abs=2.2e-16 * cond)
    rho = 0.7
    cov = np.block([[np.eye(3), rho * np.eye(3)], [rho * np.eye(3), np.eye(3)]])
    assert exact.correlated_gaussian(rho, 3) == pytest.approx(exact.gaussian(cov, 3), rel=1e-13)
    assert exact.correlated_gaussian(-rho, 3) == exact.correlated_gaussian(rho, 3)
    np.testing.assert_allclose(exact.correlated_gaussian(np.array([0.0, 0.5]), 2),
                               [0.0, -math.log(0.75)], rtol=1e-15)


@pytest.mark.parametrize("rho", [1.0, -1.0, 1.5, float("nan")])
def test_rho_outside_the_open_interval_raises(rho):
    with pytest.raises(ValueError, match=r"\(-1, 1\)"):
        exact.correlated_gaussian(rho, 2)
    with pytest.raises(ValueError, match=r"\(-1, 1\)"):
        sample.correlated_gaussian(4, rho, 2, np.random.default_rng(0))


@pytest.mark.parametrize("cov,match", [
    (np.array([[1.0, 0.5], [0.4, 1.0]]), "symmetric"),
    (np.array([[1.0, 2.0], [2.0, 1.0]]), "positive definite"),
    (np.zeros((2, 3)), "square"),
])
def test_bad_covariance_raises(cov, match):
    with pytest.raises(ValueError, match=match):
        exact.gaussian(cov, 1)


def test_bad_dim_x_raises():
    with pytest.raises(ValueError, match="dim_x"):
        exact.gaussian(np.eye(3), 3)
    with pytest.raises(TypeError, match="dim_x"):
        exact.gaussian(np.eye(3), 1.5)


# -- Student-t ------------------------------------------------------------------------------------


@pytest.mark.parametrize("df", [1.0, 2.5, 7.0, 30.0])
def test_student_t_matches_scipy_entropies(rng, df):
    a = rng.standard_normal((3, 3))
    shape = a @ a.T + np.eye(3)
    h = lambda s: stats.multivariate_t(np.zeros(s.shape[0]), s, df=df).entropy()  # noqa: E731
    want = h(shape[:1, :1]) + h(shape[1:, 1:]) - h(shape)
    assert exact.student_t(shape, 1, df) == pytest.approx(want, rel=1e-10)


def test_student_t_correction_matches_univariate_integration():
    # 1 x 1, identity dispersion: I = 2 h(t_df) - h(bivariate t), h(t_df) by quadrature
    df = 3.0
    t = stats.t(df)
    h1, _ = integrate.quad(lambda x: -t.pdf(x) * t.logpdf(x), -np.inf, np.inf, epsabs=1e-13)
    h2 = stats.multivariate_t(np.zeros(2), np.eye(2), df=df).entropy()
    assert exact.student_t(np.eye(2), 1, df) == pytest.approx(2 * h1 - h2, rel=1e-9)


def test_student_t_tends_to_gaussian_as_df_grows():
    cov = np.array([[1.0, 0.6], [0.6, 1.0]])
    assert exact.student_t(cov, 1, 1e7) == pytest.approx(exact.gaussian(cov, 1), abs=1e-6)
    assert exact.student_t(cov, 1, 1.0) > exact.gaussian(cov, 1)  # heavier tails: more dependence


# -- additive uniform noise ---------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.3, 0.5, 0.75, 2.0])
def test_additive_uniform_matches_numerical_integration(eps):
    # density of Y = X + U(-eps, eps): |[y - eps, y + eps] ∩ [0, 1]| / (2 eps)
    def f(y):
        return max(0.0, min(1.0, y + eps) - max(0.0, y - eps)) / (2 * eps)

    pts = sorted({-eps, eps, 1 - eps, 1 + eps})
    h = 0.0
    for lo, hi in zip(pts[:-1], pts[1:]):
        val, _ = integrate.quad(lambda y: -f(y) * math.log(f(y)) if f(y) > 0 else 0.0, lo, hi,
                                epsabs=1e-14, epsrel=1e-13)
        h += val
    assert exact.additive_uniform(eps) == pytest.approx(h - math.log(2 * eps), rel=1e-10, abs=1e-12)


# -- the benchmark of Czyż et al. (2023) ---------------------------------------------------------


def test_reproduces_ground_truth_of_czyz_et_al_tasks():
    """Tasks of "Beyond Normal" (NeurIPS 2023) with their ground-truth MI to the paper's
    two decimals: 1v1-normal-0.75, 1v1-additive-0.1 and -0.75, student-identity-1-1-1."""
    assert exact.gaussian(np.array([[1.0, 0.75], [0.75, 1.0]]), 1) == pytest.approx(0.41, abs=0.005)
    assert exact.correlated_gaussian(0.75, 1) == pytest.approx(-0.5 * math.log(1 - 0.5625), rel=1e-15)
    assert exact.additive_uniform(0.1) == pytest.approx(1.71, abs=0.005)
    assert exact.additive_uniform(0.75) == pytest.approx(0.33, abs=0.005)
    assert exact.student_t(np.eye(2), 1, 1) == pytest.approx(0.22, abs=0.005)


# -- samplers -----------------------------------------------------------------------------------


def test_correlated_gaussian_sampler_has_the_stated_correlation_and_independence():
    n, rho, dim = 200_000, 0.8, 3
    x, y = sample.correlated_gaussian(n, rho, dim, np.random.default_rng(1))
    assert x.shape == y.shape == (n, dim) and x.dtype == np.float64
    # sample correlation: standard error (1 - rho^2)/sqrt(n) for a pair, 1/sqrt(n) at 0
    c = np.corrcoef(np.hstack([x, y]).T)
    for k in range(dim):
        assert abs(c[k, dim + k] - rho) < 4 * (1 - rho ** 2) / math.sqrt(n)
        for j in range(dim):
            if j != k:
                assert abs(c[k, dim + j]) < 4 / math.sqrt(n)
                assert abs(c[k, j]) < 4 / math.sqrt(n)
    x2, y2 = sample.correlated_gaussian(n, rho, dim, np.random.default_rng(1))
    np.testing.assert_array_equal(x, x2)  # seeded
    np.testing.assert_array_equal(y, y2)


def test_samplers_return_the_requested_namespace(backend):
    xp = backend.xp
    x, y = sample.correlated_gaussian(5, 0.3, 2, np.random.default_rng(0), xp=xp, dtype="float32")
    assert_like(x, backend, dtype="float32", shape=(5, 2))
    assert_like(y, backend, dtype="float32", shape=(5, 2))
    xn, yn = sample.correlated_gaussian(5, 0.3, 2, np.random.default_rng(0))
    np.testing.assert_allclose(backend.to_numpy(y), yn.astype(np.float32))
    a, b = sample.discrete(np.eye(2) / 2, 4, np.random.default_rng(0), xp=xp)
    assert tuple(a.shape) == (4,) and np.array_equal(backend.to_numpy(a), backend.to_numpy(b))
    s = critics.gaussian(xn, yn, 0.3, xp=xp, dtype="float64")
    assert_like(s, backend, dtype="float64", shape=(5, 5))


def test_discrete_sampler_frequencies_and_zero_cells():
    pmf = np.array([[0.3, 0.0, 0.1], [0.05, 0.25, 0.0], [0.1, 0.0, 0.2]])
    n = 100_000
    x, y = sample.discrete(pmf, n, np.random.default_rng(2))
    counts = np.zeros_like(pmf)
    np.add.at(counts, (x, y), 1)
    assert np.all(counts[pmf == 0] == 0)
    nz = pmf > 0
    chi2 = np.sum((counts[nz] - n * pmf[nz]) ** 2 / (n * pmf[nz]))
    # 6 cells, 5 degrees of freedom: P(chi2 > 20.5) = 0.001
    assert chi2 < stats.chi2(nz.sum() - 1).ppf(0.999)


def test_cubic_is_a_bijection_that_keeps_the_ranks(rng):
    y = rng.standard_normal(1000)
    y3 = sample.cubic(y)
    np.testing.assert_allclose(np.cbrt(y3), y, rtol=1e-15, atol=1e-300)
    np.testing.assert_array_equal(np.argsort(y3), np.argsort(y))
    # the optimal critic of (x, y^3) evaluated at cbrt is the original one, exactly
    x, yy = sample.correlated_gaussian(6, 0.5, 2, rng)
    np.testing.assert_allclose(critics.gaussian(x, np.cbrt(sample.cubic(yy)), 0.5),
                               critics.gaussian(x, yy, 0.5), rtol=1e-13, atol=1e-13)


def test_bad_sampler_arguments():
    with pytest.raises(TypeError, match="Generator"):
        sample.correlated_gaussian(3, 0.5, 2, 0)
    with pytest.raises(ValueError, match="n"):
        sample.correlated_gaussian(0, 0.5, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="sum to 1"):
        sample.discrete(np.ones((2, 2)), 3, np.random.default_rng(0))


# -- optimal critics ------------------------------------------------------------------------------


def test_gaussian_critic_equals_the_log_density_ratio(rng):
    rho, d = 0.9, 3
    x, y = sample.correlated_gaussian(7, rho, d, rng)
    s = critics.gaussian(x, y, rho)
    cond = stats.multivariate_normal(np.zeros(d), (1 - rho ** 2) * np.eye(d))
    marg = stats.multivariate_normal(np.zeros(d), np.eye(d))
    want = np.array([[cond.logpdf(y[j] - rho * x[i]) - marg.logpdf(y[j]) for j in range(7)]
                     for i in range(7)])
    np.testing.assert_allclose(s, want, rtol=1e-12, atol=1e-12)


def test_gaussian_critic_diagonal_keeps_its_accuracy_near_rho_one(rng):
    rho = 1 - 1e-9
    x, y = sample.correlated_gaussian(5, rho, 4, rng)
    s = np.diag(critics.gaussian(x, y, rho))
    one_m = (1 - rho) * (1 + rho)
    want = -2 * math.log(one_m) - np.sum((y - rho * x) ** 2, 1) / (2 * one_m) + 0.5 * np.sum(y * y, 1)
    np.testing.assert_allclose(s, want, rtol=1e-13)


def test_gaussian_critic_has_the_mi_as_its_joint_mean_and_one_as_its_marginal_mean():
    rho, d, n = 0.6, 2, 40_000
    x, y = sample.correlated_gaussian(n, rho, d, np.random.default_rng(3))
    i_true = exact.correlated_gaussian(rho, d)
    # E_p[f*] = I: the diagonal of pairs, computed one block at a time
    diag = np.concatenate([np.diag(critics.gaussian(x[k:k + 1000], y[k:k + 1000], rho))
                           for k in range(0, n, 1000)])
    assert abs(diag.mean() - i_true) < 4 * diag.std() / math.sqrt(n)
    # E_{p(x)p(y)}[e^{f*}] = 1: pairs (x_i, y_{i+1})
    r = np.exp(np.array([critics.gaussian(x[i:i + 1], y[i + 1:i + 2], rho)[0, 0] for i in range(0, 4000)]))
    assert abs(r.mean() - 1.0) < 4 * r.std() / math.sqrt(r.size)


def test_discrete_critic_is_the_pointwise_mi_with_minus_inf_off_the_support():
    pmf = np.array([[0.4, 0.1, 0.0], [0.0, 0.3, 0.2]])
    x, y = np.array([0, 1, 0, 1]), np.array([0, 2, 1, 1])
    s = critics.discrete(pmf, x, y)
    px, py = pmf.sum(1), pmf.sum(0)
    for i in range(4):
        for j in range(4):
            p = pmf[x[i], y[j]]
            want = -np.inf if p == 0 else math.log(p / (px[x[i]] * py[y[j]]))
            assert s[i, j] == want or math.isclose(s[i, j], want, rel_tol=1e-15)
    with pytest.raises(ValueError, match="outside"):
        critics.discrete(pmf, np.array([0, 2]), np.array([0, 1]))
