"""asv: ``nce_ref.mi.bound_from_embeddings``, every streamed bound, forward and value_and_grad.

The critic is cosine / 0.07 on (N, 256) embeddings, the shape of ``bench_infonce.InfoNCE``.
Read the ratios from one run: ``MIBoundFromEmbeddings.time_value_and_grad /
bench_infonce.GemmFloor.time_three_gemms`` and against ``bench_infonce.InfoNCE.time_value_and_grad``
(the same three GEMMs; the target is within 1.2x of info_nce's ratio).
"""

from __future__ import annotations

import nce_ref
from nce_ref import mi

from .common import BACKENDS, DIM, DTYPES, XPBenchmark, sizes, skip_if

TEMPERATURE = 0.07

#: name -> (bound, extra positional arguments, keyword arguments)
BOUNDS = {
    "infonce": ("infonce", (), {}),
    "nwj": ("nwj", (), {}),
    "tuba": ("tuba", (0.5,), {}),
    "dv": ("dv", (), {}),
    "mine": ("mine", (), {"log_moving_average": 0.0}),
    "js": ("js", (), {}),
    "js_objective": ("js", (), {"report": "objective"}),
    "interpolated": ("interpolated", (0.0,), {"alpha": 0.5}),
    "smile": ("smile", (), {"clip": 5.0}),
    "loo_upper": ("loo_upper", (), {}),
}


class MIBoundFromEmbeddings(XPBenchmark):
    """``mi.bound_from_embeddings(x, y, bound=..., similarity="cosine", temperature=0.07)``."""

    param_names = ("backend", "bound", "n", "dtype")
    params = (BACKENDS, list(BOUNDS), sizes(gpu_large=True), DTYPES)

    def make(self, rng, n, dtype):
        return rng.standard_normal((n, DIM)), rng.standard_normal((n, DIM))

    def setup(self, backend, bound, n, dtype):
        self.setup_data(backend, n, dtype)
        name, self.extra, kw = BOUNDS[bound]
        self.kw = dict(kw, bound=name, similarity="cosine", temperature=TEMPERATURE)
        self.vg = nce_ref.value_and_grad(mi.bound_from_embeddings)
        self.time_value_and_grad(backend, bound, n, dtype)  # warm-up (pools, handles)

    def time_forward(self, backend, bound, n, dtype):
        self.sync(mi.bound_from_embeddings(*self.arrays, *self.extra, **self.kw))

    def time_value_and_grad(self, backend, bound, n, dtype):
        v, g = self.vg(*self.arrays, *self.extra, **self.kw)
        self.sync(v, g["x"], g["y"])

    def peakmem_forward(self, backend, bound, n, dtype):
        mi.bound_from_embeddings(*self.arrays, *self.extra, **self.kw)

    def peakmem_value_and_grad(self, backend, bound, n, dtype):
        self.vg(*self.arrays, *self.extra, **self.kw)

    def track_max_rel_err_vs_f64(self, backend, bound, n, dtype):
        """Relative error of the estimate against the NumPy float64 computation."""
        import numpy as np

        skip_if(n > 32768, "the float64 NumPy reference is O(N^2 D) on the CPU")
        x, y = self.make(np.random.default_rng(0), n, dtype)
        ref = float(mi.bound_from_embeddings(x, y, *self.extra, **self.kw))
        got = float(self.backend.to_numpy(mi.bound_from_embeddings(*self.arrays, *self.extra, **self.kw)))
        return abs(got - ref) / max(abs(ref), 1e-300)

    track_max_rel_err_vs_f64.unit = "relative error"
