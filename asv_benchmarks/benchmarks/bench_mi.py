"""asv: the MI bounds of ``nce_ref.mi`` on an N x N critic score matrix, forward and value_and_grad.

Every bound is O(N²) elementwise work on the scores (no GEMM), so the reference
point is one pass over the matrix: ``ScoresPass.time_logsumexp`` (a plain row
logsumexp).  Also timed: the exact expectation of the InfoNCE bound
(``nce_ref.mi.theory``) and the closed-form Gaussian critic.
"""

from __future__ import annotations

from nce_ref import mi

from .common import BACKENDS, DTYPES, XPBenchmark, _FunctionBenchmark, sizes

#: name -> (function, extra positional arguments, keyword arguments)
BOUNDS = {
    "infonce": (mi.infonce, (), {}),
    "nwj": (mi.nwj, (), {}),
    "tuba": (mi.tuba, (0.5,), {}),
    "dv": (mi.dv, (), {}),
    "mine": (mi.mine, (0.0,), {}),
    "js": (mi.js, (), {}),
    "interpolated": (mi.interpolated, (0.0,), {"alpha": 0.01}),
    "smile": (mi.smile, (), {"clip": 5.0}),
    "loo_upper": (mi.loo_upper, (), {}),
}


class MIBound(_FunctionBenchmark):
    """``nce_ref.mi.<bound>(scores)`` on standard normal scores."""

    param_names = ("backend", "bound", "n", "dtype")
    params = (BACKENDS, list(BOUNDS), sizes(), DTYPES)

    def make(self, rng, n, dtype):
        return (rng.standard_normal((n, n)),)

    def setup(self, backend, bound, n, dtype):
        f, extra, kw = BOUNDS[bound]
        self.prepare(backend, n, dtype, f, *extra, **kw)


class ScoresPass(XPBenchmark):
    """The floor of an elementwise objective on N x N scores: one row logsumexp pass."""

    param_names = ("backend", "n", "dtype")
    params = (BACKENDS, sizes(), DTYPES)

    def make(self, rng, n, dtype):
        return (rng.standard_normal((n, n)),)

    def setup(self, backend, n, dtype):
        self.setup_data(backend, n, dtype)
        self.time_logsumexp(backend, n, dtype)

    def time_logsumexp(self, backend, n, dtype):
        xp = self.backend.xp
        (s,) = self.arrays
        m = xp.max(s, axis=1, keepdims=True)
        self.sync(m + xp.log(xp.sum(xp.exp(s - m), axis=1, keepdims=True)))


class ExpectedInfoNCE:
    """``nce_ref.mi.theory.expected_infonce_bound``: the exact multinomial sum (NumPy)."""

    param_names = ("table", "n")
    params = (["dense 3x3", "noiseless 100"], [64, 256])
    timeout = 300

    def setup(self, table, n):
        import numpy as np

        if table == "dense 3x3":
            self.pmf = np.random.default_rng(0).dirichlet(np.ones(9)).reshape(3, 3)
        else:
            self.pmf = np.eye(100) / 100

    def time_expected_bound(self, table, n):
        mi.theory.expected_infonce_bound(self.pmf, n)


class GaussianCritic:
    """``nce_ref.mi.critics.gaussian``: the closed-form optimal critic on an N x N batch (NumPy)."""

    param_names = ("n", "dim")
    params = ([64, 1024], [20, 256])

    def setup(self, n, dim):
        import numpy as np

        self.rho = mi.exact.rho_for_mi(5.0, dim)
        self.x, self.y = mi.sample.correlated_gaussian(n, self.rho, dim, np.random.default_rng(0))

    def time_critic(self, n, dim):
        mi.critics.gaussian(self.x, self.y, self.rho)
