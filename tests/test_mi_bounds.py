"""The MI bounds of ``nce_ref.mi``: theory checked exactly by enumeration, gradients, backends, errors.

Exact expectations: for a small joint table and a small batch size N, every
N-tuple of joint samples is enumerated with its probability, so expectations over
batches are finite sums (no Monte Carlo).  The values of each bound against the
mpmath oracle and finite differences, on every backend, are in
``tests/test_registry_generic.py`` (driven by ``nce_ref/testing/cases/mi.py``).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import nce_ref
from nce_ref import mi
from nce_ref.testing import check_grad

from ._helpers import assert_close, assert_like

# a 3 x 3 table with zeros (the optimal critic is -inf there) and a dense 2 x 3 one
PMF_ZEROS = np.array([[0.30, 0.10, 0.00],
                      [0.00, 0.25, 0.05],
                      [0.05, 0.05, 0.20]])
PMF_DENSE = np.array([[0.35, 0.10, 0.05],
                      [0.05, 0.15, 0.30]])


def _mi_by_hand(pmf):
    px, py = pmf.sum(1, keepdims=True), pmf.sum(0, keepdims=True)
    nz = pmf > 0
    return float(np.sum(pmf[nz] * np.log(pmf[nz] / (px * py)[nz])))


def _pmi_by_hand(pmf):
    px, py = pmf.sum(1, keepdims=True), pmf.sum(0, keepdims=True)
    with np.errstate(divide="ignore"):
        return np.log(pmf) - np.log(px * py)


def _batches(pmf, n):
    """Every batch of n joint pairs: (probability, x indices, y indices)."""
    cells = [(a, b) for a in range(pmf.shape[0]) for b in range(pmf.shape[1]) if pmf[a, b] > 0]
    for combo in itertools.product(cells, repeat=n):
        prob = math.prod(pmf[a, b] for a, b in combo)
        yield prob, np.array([a for a, _ in combo]), np.array([b for _, b in combo])


def _expect(pmf, n, fn, *, shift=0.0):
    """E over batches of fn(scores) with the optimal critic (plus ``shift``)."""
    table = _pmi_by_hand(pmf)
    total = 0.0
    for prob, x, y in _batches(pmf, n):
        total = total + prob * fn(table[x[:, None], y[None, :]] + shift)
    return total


LOWER = {
    "infonce": lambda s: mi.infonce(s, allow_neg_inf=True),
    "nwj at 1 + f*": lambda s: mi.nwj(s + 1.0, allow_neg_inf=True),
    "tuba, a = 1": lambda s: mi.tuba(s, 0.0, allow_neg_inf=True),
    "js (reported)": lambda s: mi.js(s, allow_neg_inf=True),
    "interpolated alpha 0.5": lambda s: mi.interpolated(s, 0.0, alpha=0.5, allow_neg_inf=True),
    "interpolated alpha 1": lambda s: mi.interpolated(s, 0.0, alpha=1.0, allow_neg_inf=True),
}


class TestExactExpectations:
    """Expectations over every batch of a small table: the theorems, without sampling error."""

    @pytest.mark.parametrize("pmf", [PMF_ZEROS, PMF_DENSE], ids=["zeros", "dense"])
    @pytest.mark.parametrize("name", sorted(LOWER))
    def test_lower_bounds_are_below_mi_in_expectation(self, pmf, name):
        i_true = _mi_by_hand(pmf)
        e = _expect(pmf, 3, lambda s: float(LOWER[name](s)))
        assert e <= i_true + 1e-12, (name, e, i_true)

    @pytest.mark.parametrize("pmf", [PMF_ZEROS, PMF_DENSE], ids=["zeros", "dense"])
    def test_nwj_at_its_optimal_critic_is_unbiased(self, pmf):
        # E[mean f*] = I and E[mean over pairs of e^{f*}] = E_q[r] = 1 exactly
        e = _expect(pmf, 3, lambda s: float(mi.nwj(s + 1.0, allow_neg_inf=True)))
        assert abs(e - _mi_by_hand(pmf)) < 1e-12

    @pytest.mark.parametrize("pmf", [PMF_ZEROS, PMF_DENSE], ids=["zeros", "dense"])
    def test_js_reports_mi_not_mi_minus_one_over_e(self, pmf):
        i_true = _mi_by_hand(pmf)
        e = _expect(pmf, 3, lambda s: float(mi.js(s, allow_neg_inf=True)))
        assert abs(e - i_true) < 1e-12
        # the colab's convention (NWJ at f itself) would report I - 1/e
        e_colab = _expect(pmf, 3, lambda s: float(mi.nwj(s, allow_neg_inf=True)))
        assert abs(e_colab - (i_true - 1.0 / math.e)) < 1e-12

    @pytest.mark.parametrize("pmf", [PMF_ZEROS, PMF_DENSE], ids=["zeros", "dense"])
    def test_dv_sits_above_nwj_on_every_batch_and_is_biased_upward(self, pmf):
        table = _pmi_by_hand(pmf)
        e_dv = 0.0
        for prob, x, y in _batches(pmf, 3):
            s = table[x[:, None], y[None, :]] + 1.0  # NWJ's optimum; DV is shift invariant
            d, w = float(mi.dv(s, allow_neg_inf=True)), float(mi.nwj(s, allow_neg_inf=True))
            assert d >= w - 1e-12  # DV(f) - NWJ(1 + f) = u - 1 - log u >= 0
            e_dv += prob * d
        # Jensen: -log of a sample mean is biased up from -log of its expectation (= I - 1 here + 1)
        assert e_dv > _mi_by_hand(pmf) + 1e-3

    def test_upper_bound_sits_above_mi(self):
        for pmf in (PMF_ZEROS, PMF_DENSE):
            i_true = _mi_by_hand(pmf)
            # the pointwise MI critic, each x contrasting the y's and the other orientation
            for axis in (1, 0):
                e = _expect(pmf, 3, lambda s, axis=axis: float(mi.loo_upper(s, axis=axis, allow_neg_inf=True)))
                assert e >= i_true - 1e-12

    def test_upper_bound_with_a_known_conditional_in_poole_orientation(self):
        # scores[i, j] = log p(y_j | x_i) (no p(y)); each y_j averages over the other x_i: axis=0
        pmf = PMF_DENSE
        cond = np.log(pmf / pmf.sum(1, keepdims=True))
        i_true = _mi_by_hand(pmf)
        e_up = e_lo = 0.0
        for prob, x, y in _batches(pmf, 3):
            s = cond[x[:, None], y[None, :]]
            e_up += prob * float(mi.loo_upper(s, axis=0))
            e_lo += prob * float(mi.infonce(s, axis=0))
        assert e_lo <= i_true <= e_up

    def test_dv_gradient_is_biased_at_the_optimum_and_mine_with_the_exact_average_is_not(self):
        """The gradient with respect to the critic table F[a, b] at F = f*: the population
        DV bound is stationary there, so its gradient is 0.  DV's batch gradient is not
        zero in expectation (the ratio of two batch means); MINE's, with the moving
        average equal to E_q[e^{f*}] = 1, is zero exactly."""
        pmf = PMF_DENSE
        table = _pmi_by_hand(pmf)
        g_dv = np.zeros_like(table)
        g_mine = np.zeros_like(table)
        vg_dv, vg_mine = nce_ref.value_and_grad(mi.dv), nce_ref.value_and_grad(mi.mine)
        for prob, x, y in _batches(pmf, 3):
            s = table[x[:, None], y[None, :]]
            for g, gs in ((g_dv, vg_dv(s)[1]["scores"]), (g_mine, vg_mine(s, 0.0)[1]["scores"])):
                np.add.at(g, (x[:, None], y[None, :]), prob * gs)
        assert np.max(np.abs(g_dv)) > 1e-3
        np.testing.assert_allclose(g_mine, 0.0, atol=1e-14)

    def test_infonce_expectation_matches_theory_module(self):
        # the enumeration and the multinomial sum of nce_ref.mi.theory agree
        for pmf in (PMF_ZEROS, PMF_DENSE):
            e = _expect(pmf, 3, lambda s: float(mi.infonce(s, allow_neg_inf=True)))
            assert abs(e - mi.theory.expected_infonce_bound(pmf, 3)) < 1e-12


class TestDeterministicProperties:
    @pytest.mark.parametrize("n", [1, 2, 5, 32])
    def test_infonce_never_exceeds_log_n_for_any_critic(self, rng, n):
        for scale in (0.1, 3.0, 100.0):
            s = scale * rng.standard_normal((n, n)) + np.diag(np.full(n, scale))
            assert float(mi.infonce(s)) <= math.log(n) + 1e-12
        assert float(mi.infonce(np.diag(np.full(n, 1e4)))) == pytest.approx(math.log(n), abs=1e-12)

    def test_infonce_is_log_n_minus_the_infonce_loss(self, rng):
        s = rng.standard_normal((6, 6))
        assert float(mi.infonce(s)) == math.log(6) - float(nce_ref.info_nce_from_scores(s))
        assert float(mi.infonce(s, axis=0)) == math.log(6) - float(nce_ref.info_nce_from_scores(s.T))

    def test_pooled_bounds_do_not_depend_on_the_orientation(self, rng):
        s = rng.standard_normal((5, 5))
        for f in (mi.nwj, mi.dv, mi.js, lambda z, axis: mi.smile(z, clip=1.0, axis=axis),
                  lambda z, axis: mi.tuba(z, 0.4, axis=axis)):
            assert float(f(s, axis=1)) == pytest.approx(float(f(s.T, axis=1)), rel=1e-14, abs=1e-14)
            assert float(f(s, axis=0)) == pytest.approx(float(f(s, axis=1)), rel=1e-14, abs=1e-14)

    def test_axis_0_reads_the_matrix_transposed(self, rng):
        s, lb = rng.standard_normal((5, 5)), rng.standard_normal(5)
        assert float(mi.interpolated(s, lb, alpha=0.3, axis=0)) == float(mi.interpolated(s.T, lb, alpha=0.3))
        assert float(mi.loo_upper(s, axis=0)) == float(mi.loo_upper(s.T))
        v, g = nce_ref.value_and_grad(mi.tuba)(s, lb, axis=0)
        vt, gt = nce_ref.value_and_grad(mi.tuba)(s.T, lb)
        np.testing.assert_array_equal(g["scores"], gt["scores"].T)
        np.testing.assert_array_equal(g["log_baseline"], gt["log_baseline"])

    @pytest.mark.parametrize("alpha", [0.5, 0.1, 0.01, 1e-3, 1e-6])
    def test_interpolated_never_exceeds_its_ceiling(self, rng, alpha):
        n = 8
        ceiling = 1.0 + math.log((n - 1) / alpha)
        assert ceiling <= 1.0 + math.log(n / alpha)
        for _ in range(20):
            # adversarial critics: a dominant diagonal, random baselines
            s = rng.standard_normal((n, n)) * 3 + np.diag(rng.uniform(0, 60, n))
            lb = rng.standard_normal(n) * 5
            assert float(mi.interpolated(s, lb, alpha=alpha)) <= ceiling + 1e-9

    def test_interpolated_tends_to_tuba_as_alpha_goes_to_zero(self, rng):
        s, lb = rng.standard_normal((6, 6)), rng.standard_normal(6)
        t = float(mi.tuba(s, lb))
        gaps = [abs(float(mi.interpolated(s, lb, alpha=a)) - t) for a in (1e-2, 1e-4, 1e-6)]
        assert gaps[1] < gaps[0] / 50 and gaps[2] < gaps[1] / 50  # O(alpha)
        assert float(mi.interpolated(s, lb, alpha=0.0)) == pytest.approx(t, rel=1e-14)
        vg_i = nce_ref.value_and_grad(mi.interpolated)(s, lb, alpha=0.0)[1]
        vg_t = nce_ref.value_and_grad(mi.tuba)(s, lb)[1]
        for k in ("scores", "log_baseline"):
            np.testing.assert_allclose(vg_i[k], vg_t[k], rtol=1e-12, atol=1e-15)

    def test_interpolated_at_alpha_one_is_infonce_over_n_minus_one(self, rng):
        """At alpha = 1 the marginal term is exactly 1 and each joint term is the InfoNCE of
        x_i against N - 1 candidates (the positive and all the others but one y_k)."""
        n = 5
        s = rng.standard_normal((n, n))
        terms = []
        for i in range(n):
            for k in range(n):
                if k != i:
                    cand = [j for j in range(n) if j != k]
                    terms.append(math.log(n - 1) - (np.log(np.sum(np.exp(s[i, cand]))) - s[i, i]))
        assert float(mi.interpolated(s, 0.0, alpha=1.0)) == pytest.approx(np.mean(terms), rel=1e-13)

    def test_leave_one_out_has_no_cancellation(self):
        # the left-out entry dominates by 800 nats: a subtraction from the full sum would give -inf
        s = np.array([[0.0, 800.0, 1.0], [2.0, 0.0, 1.0], [0.5, 0.25, 0.0]])
        from nce_ref.mi.bounds import loo_log_mean_exp

        loo, _ = loo_log_mean_exp(s, xp=np)
        assert loo[0, 1] == pytest.approx(np.log((1.0 + np.e) / 2.0), rel=1e-15)
        assert loo[0, 0] == pytest.approx(800.0 + np.log1p(np.exp(-799.0)) - np.log(2), rel=1e-15)

    def test_smile_with_infinite_clip_is_dv_and_clips_only_the_partition(self, rng):
        s = 4 * rng.standard_normal((5, 5))
        assert float(mi.smile(s, clip=math.inf)) == pytest.approx(float(mi.dv(s)), rel=1e-15)
        # clipping the diagonal would change the joint term; only the partition is clipped
        big_diag = s + np.diag(np.full(5, 50.0))
        assert float(mi.smile(big_diag, clip=1.0)) - float(mi.smile(s, clip=1.0)) == pytest.approx(50.0)

    def test_mine_update_is_a_moving_average_in_log_space(self, rng):
        s = rng.standard_normal((4, 4))
        off = ~np.eye(4, dtype=bool)
        batch = np.mean(np.exp(s[off]))
        assert float(mi.mine_update(s)) == pytest.approx(np.log(batch), rel=1e-14)
        new = float(mi.mine_update(s, np.log(2.0), decay=0.9))
        assert new == pytest.approx(np.log(0.9 * 2.0 + 0.1 * batch), rel=1e-14)
        assert float(mi.mine_update(s, 5.0, decay=0.0)) == pytest.approx(np.log(batch), rel=1e-14)
        # MINE with the batch's own average is DV, gradient included
        g_m = nce_ref.value_and_grad(mi.mine)(s, mi.mine_update(s))[1]["scores"]
        g_d = nce_ref.value_and_grad(mi.dv)(s)[1]["scores"]
        np.testing.assert_allclose(g_m, g_d, rtol=1e-13)

    def test_minus_inf_scores_are_handled_without_nan_or_warnings(self):
        s = np.array([[1.0, -np.inf, 0.5], [-np.inf, 2.0, -np.inf], [0.0, -np.inf, 1.5]])
        calls = [(mi.infonce, (), {}), (mi.nwj, (), {}), (mi.dv, (), {}), (mi.js, (), {}),
                 (mi.tuba, (np.zeros(3),), {}), (mi.mine, (0.0,), {}), (mi.loo_upper, (), {}),
                 (mi.interpolated, (0.0,), {"alpha": 0.5}), (mi.interpolated, (0.0,), {"alpha": 1.0}),
                 (mi.smile, (), {"clip": 2.0})]
        for f, args, kw in calls:
            v, g = nce_ref.value_and_grad(f)(s, *args, allow_neg_inf=True, **kw)
            assert not np.isnan(v), f.__name__
            assert np.all(np.isfinite(g["scores"])), f.__name__
            assert np.all(g["scores"][np.isinf(s)] == 0), f.__name__
        # row 1 has no finite off-diagonal entry: its leave-one-out mean is 0, the upper bound +inf
        assert float(mi.loo_upper(s, allow_neg_inf=True)) == np.inf
        assert np.isfinite(float(mi.interpolated(s, 0.0, alpha=0.5, allow_neg_inf=True)))

    def test_allow_neg_inf_admits_minus_inf_only_and_check_finite_keeps_its_meaning(self):
        s = np.array([[1.0, -np.inf], [0.0, 2.0]])
        with pytest.raises(ValueError, match="`scores` must be finite"):
            mi.infonce(s)  # check_finite alone refuses -inf
        assert np.isfinite(float(mi.infonce(s, allow_neg_inf=True)))
        for bad in (np.nan, np.inf):
            t = s.copy()
            t[0, 0] = bad
            with pytest.raises(ValueError, match="NaN or \\+inf.*allow_neg_inf"):
                mi.nwj(t, allow_neg_inf=True)
        with pytest.raises(TypeError, match="`allow_neg_inf` must be a bool"):
            mi.dv(s, allow_neg_inf=1)


# -- gradients -----------------------------------------------------------------------------

GRAD_CALLS = [
    ("infonce, axis 0", mi.infonce, (), {"axis": 0}),
    ("tuba, per-sample baseline, axis 0", mi.tuba, ("lb",), {"axis": 0}),
    ("tuba, scalar baseline", mi.tuba, (0.7,), {}),
    ("nwj", mi.nwj, (), {}),
    ("dv", mi.dv, (), {}),
    ("js objective", mi.js, (), {"report": "objective"}),
    ("interpolated alpha 0.5, per-sample baseline", mi.interpolated, ("lb",), {"alpha": 0.5}),
    ("interpolated alpha 1e-3, axis 0", mi.interpolated, ("lb",), {"alpha": 1e-3, "axis": 0}),
    ("interpolated alpha 1", mi.interpolated, (0.2,), {"alpha": 1.0}),
    ("smile clip 1.5", mi.smile, (), {"clip": 1.5}),
    ("loo_upper", mi.loo_upper, (), {}),
]


@pytest.mark.parametrize("label,f,extra,kw", GRAD_CALLS, ids=[c[0] for c in GRAD_CALLS])
def test_gradients_match_finite_differences(rng, label, f, extra, kw):
    s = 2.0 * rng.standard_normal((6, 6))
    s = np.where(np.abs(np.abs(s) - 1.5) < 1e-3, s + 0.01, s)  # away from smile's kink
    lb = rng.standard_normal(6)
    args = tuple(lb if a == "lb" else a for a in extra)
    check_grad(f, s, *args, **kw)


def test_js_gradient_is_the_objectives_whatever_is_reported(rng):
    s = rng.standard_normal((5, 5))
    g_mi = nce_ref.value_and_grad(mi.js)(s)[1]["scores"]
    g_obj = nce_ref.value_and_grad(mi.js)(s, report="objective")[1]["scores"]
    np.testing.assert_array_equal(g_mi, g_obj)
    check_grad(mi.js, s, report="objective")


def _torch_refs(torch):
    F = torch.nn.functional

    def off(n):
        return ~torch.eye(n, dtype=torch.bool)

    def infonce(s):
        return math.log(s.shape[0]) - (torch.logsumexp(s, 1) - s.diagonal()).mean()

    def tuba(s, lb):
        z = s - lb[:, None]
        return 1 + z.diagonal().mean() - torch.exp(z[off(s.shape[0])]).mean()

    def nwj(s):
        return s.diagonal().mean() - torch.exp(s[off(s.shape[0])] - 1).mean()

    def dv(s):
        o = s[off(s.shape[0])]
        return s.diagonal().mean() - (torch.logsumexp(o, 0) - math.log(o.numel()))

    def mine_surrogate(s, log_mu):  # its autograd gradient is MINE's
        return s.diagonal().mean() - torch.exp(s[off(s.shape[0])]).mean() / math.exp(log_mu)

    def js_objective(s):
        return (-F.softplus(-s.diagonal())).mean() - F.softplus(s[off(s.shape[0])]).mean()

    def interpolated(s, lb, alpha):
        n = s.shape[0]
        cols = []
        for k in range(n):
            keep = [j for j in range(n) if j != k]
            cols.append(torch.logsumexp(s[:, keep], 1) - math.log(n - 1))
        loo = torch.stack(cols, 1)  # loo[i, k]
        b = torch.logaddexp(math.log(alpha) + loo, math.log1p(-alpha) + lb[:, None])
        o = off(n)
        joint = (s.diagonal()[:, None] - b)[o].mean()
        marg = torch.exp(s - b.diagonal()[:, None])[o].mean()
        return 1 + joint - marg

    def smile(s, clip):
        o = torch.clamp(s, -clip, clip)[off(s.shape[0])]
        return s.diagonal().mean() - (torch.logsumexp(o, 0) - math.log(o.numel()))

    def loo_upper(s):
        n = s.shape[0]
        lse = torch.logsumexp(s.masked_fill(torch.eye(n, dtype=torch.bool), -math.inf), 1)
        return (s.diagonal() - (lse - math.log(n - 1))).mean()

    return {
        "infonce": (mi.infonce, infonce, (), {}),
        "tuba": (mi.tuba, tuba, ("lb",), {}),
        "nwj": (mi.nwj, nwj, (), {}),
        "dv": (mi.dv, dv, (), {}),
        "mine": (mi.mine, lambda s: mine_surrogate(s, 0.3), (0.3,), {}),
        "js": (mi.js, js_objective, (), {"report": "objective"}),
        "interpolated": (mi.interpolated, lambda s, lb: interpolated(s, lb, 0.3), ("lb",), {"alpha": 0.3}),
        "smile": (mi.smile, lambda s: smile(s, 1.5), (), {"clip": 1.5}),
        "loo_upper": (mi.loo_upper, loo_upper, (), {}),
    }


@pytest.mark.oracle
@pytest.mark.parametrize("name", ["infonce", "tuba", "nwj", "dv", "mine", "js", "interpolated",
                                  "smile", "loo_upper"])
def test_gradients_match_torch_autograd(rng, name):
    torch = pytest.importorskip("torch", reason="torch not installed: autograd oracle skipped")
    f, ref, extra, kw = _torch_refs(torch)[name]
    s = 2.0 * rng.standard_normal((6, 6))
    lb = rng.standard_normal(6)
    args = tuple(lb if a == "lb" else a for a in extra)
    st = torch.tensor(s, requires_grad=True)
    tens = [torch.tensor(lb, requires_grad=True)] if "lb" in extra else []
    out = ref(st, *tens)
    out.backward()
    out = float(out.detach())
    _, g = nce_ref.value_and_grad(f)(s, *args, **kw)
    np.testing.assert_allclose(g["scores"], st.grad.numpy(), rtol=1e-11, atol=1e-14)
    if tens:
        np.testing.assert_allclose(g["log_baseline"], tens[0].grad.numpy(), rtol=1e-11, atol=1e-14)
    if name not in ("mine",):  # MINE's surrogate has the gradient, not the value
        value = float(f(s, *args, **kw))
        assert value == pytest.approx(out, rel=1e-12, abs=1e-13)


@pytest.mark.oracle
def test_gradients_match_jax_grad(rng):
    jax = pytest.importorskip("jax", reason="jax not installed: autograd oracle skipped")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    n = 5
    s = rng.standard_normal((n, n))
    lb = rng.standard_normal(n)
    off = ~np.eye(n, dtype=bool)

    def tuba(s, lb):
        z = s - lb[:, None]
        return 1 + jnp.mean(jnp.diagonal(z)) - jnp.mean(jnp.exp(z[off]))

    def loo_upper(s):
        lse = logsumexp(jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, s), axis=1)
        return jnp.mean(jnp.diagonal(s) - (lse - math.log(n - 1)))

    gs, gl = jax.grad(tuba, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(lb))
    g = nce_ref.value_and_grad(mi.tuba)(s, lb)[1]
    np.testing.assert_allclose(g["scores"], np.asarray(gs), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g["log_baseline"], np.asarray(gl), rtol=1e-12, atol=1e-15)
    g2 = nce_ref.value_and_grad(mi.loo_upper)(s)[1]["scores"]
    np.testing.assert_allclose(g2, np.asarray(jax.grad(loo_upper)(jnp.asarray(s))), rtol=1e-12, atol=1e-15)


def test_runs_under_jax_jit(rng):
    jax = pytest.importorskip("jax", reason="jax not installed")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    s = rng.standard_normal((5, 5))
    for f, kw in ((mi.dv, {}), (mi.interpolated, {"alpha": 0.5}), (mi.infonce, {})):
        got = jax.jit(lambda z, f=f, kw=kw: f(z, **kw))(jnp.asarray(s))
        assert float(got) == pytest.approx(float(f(s, **kw)), rel=1e-12)


# -- backends -------------------------------------------------------------------------------

BACKEND_CALLS = [
    (mi.infonce, (), {}), (mi.nwj, (), {}), (mi.tuba, ("lb",), {"axis": 0}), (mi.dv, (), {}),
    (mi.mine, (0.1,), {}), (mi.js, (), {}), (mi.interpolated, ("lb",), {"alpha": 0.2}),
    (mi.smile, (), {"clip": 1.0}), (mi.loo_upper, (), {}),
]


@pytest.mark.parametrize("f,extra,kw", BACKEND_CALLS, ids=[c[0].__name__ for c in BACKEND_CALLS])
def test_values_and_gradients_on_every_backend(backend, dtype, rng, f, extra, kw):
    s = rng.standard_normal((6, 6))
    lb = rng.standard_normal(6)
    args_np = tuple(lb if a == "lb" else a for a in extra)
    want, g_np = nce_ref.value_and_grad(f)(s, *args_np, **kw)
    x = backend.asarray(s, dtype)
    args = tuple(backend.asarray(lb, dtype) if a == "lb" else a for a in extra)
    value, grads = nce_ref.value_and_grad(f)(x, *args, **kw)
    got = assert_like(value, backend, dtype=dtype, shape=(), ref_array=x)
    assert_close(got, want, dtype=dtype, tol_scale=backend.tol_scale)
    gs = assert_like(grads["scores"], backend, dtype=dtype, shape=(6, 6), ref_array=x)
    assert_close(gs, g_np["scores"], dtype=dtype, tol_scale=backend.tol_scale, scale=1.0)
    if "lb" in extra:
        gl = assert_like(grads["log_baseline"], backend, dtype=dtype, shape=(6,), ref_array=x)
        assert_close(gl, g_np["log_baseline"], dtype=dtype, tol_scale=backend.tol_scale, scale=1.0)


def test_float16_is_computed_in_float32_and_returned_in_float16(rng):
    s = rng.standard_normal((5, 5))
    got = mi.interpolated(s.astype(np.float16), 0.0, alpha=0.5)
    assert got.dtype == np.float16 and got.shape == ()
    want = float(mi.interpolated(s.astype(np.float16).astype(np.float64), 0.0, alpha=0.5))
    assert float(got) == pytest.approx(want, rel=2e-3)


def test_inputs_are_not_mutated(rng):
    s = rng.standard_normal((5, 5))
    lb = rng.standard_normal(5)
    s0, lb0 = s.copy(), lb.copy()
    s.flags.writeable = False
    lb.flags.writeable = False
    for f, args, kw in ((mi.tuba, (lb,), {}), (mi.interpolated, (lb,), {"alpha": 0.5}),
                        (mi.infonce, (), {"axis": 0})):
        nce_ref.value_and_grad(f)(s, *args, **kw)
    np.testing.assert_array_equal(s, s0)
    np.testing.assert_array_equal(lb, lb0)


# -- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("call,match", [
    (lambda: mi.nwj(np.zeros((3, 4))), r"square \(N, N\).*\(3, 4\)"),
    (lambda: mi.infonce(np.zeros((3, 4))), "square"),
    (lambda: mi.dv(np.zeros((1, 1))), "at least 2 x 2"),
    (lambda: mi.nwj(np.zeros(4)), "2-D"),
    (lambda: mi.dv(np.full((3, 3), np.nan)), "finite"),
    (lambda: mi.tuba(np.zeros((3, 3)), np.zeros(4)), r"log_baseline.*\(3,\)"),
    (lambda: mi.tuba(np.zeros((3, 3)), np.zeros((3, 3))), "log_baseline"),
    (lambda: mi.tuba(np.zeros((3, 3)), float("nan")), "log_baseline"),
    (lambda: mi.interpolated(np.zeros((3, 3)), alpha=1.5), "alpha"),
    (lambda: mi.interpolated(np.zeros((3, 3)), alpha=-0.1), "alpha"),
    (lambda: mi.smile(np.zeros((3, 3)), clip=0.0), "clip"),
    (lambda: mi.js(np.zeros((3, 3)), report="nwj"), "report"),
    (lambda: mi.infonce(np.zeros((3, 3)), axis=2), "axis"),
    (lambda: mi.mine_update(np.zeros((3, 3)), 0.0, decay=1.0), "decay"),
])
def test_bad_input_raises_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call,match", [
    (lambda: mi.dv([[1.0, 0.0], [0.0, 1.0]]), "must be an array"),
    (lambda: mi.dv(np.eye(3, dtype=np.int64)), "floating"),
    (lambda: mi.infonce(np.eye(3), axis=1.0), "axis"),
    (lambda: mi.interpolated(np.eye(3), alpha="0.5"), "alpha"),
])
def test_bad_types_raise_a_clear_type_error(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def test_overflow_is_a_clear_error_not_a_silent_inf():
    s = np.full((3, 3), 800.0)
    with pytest.raises(FloatingPointError, match="overflowed"):
        mi.nwj(s)
    assert float(mi.dv(s)) == pytest.approx(0.0, abs=1e-12)  # DV stays finite: log-mean-exp
