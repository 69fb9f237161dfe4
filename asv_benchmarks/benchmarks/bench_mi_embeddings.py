"""asv: ``nce_ref.mi.bound_from_embeddings``, every streamed bound, forward and value_and_grad.

The critic is cosine / 0.07 on (N, 256) embeddings, the shape of ``bench_infonce.InfoNCE``.
Read the ratios from one run: ``MIBoundFromEmbeddings.time_value_and_grad /
bench_infonce.GemmFloor.time_three_gemms`` and against ``bench_infonce.InfoNCE.time_value_and_grad``
(the same three GEMMs; the target is within 1.2x of info_nce's ratio).
"""

from __future__ import annotations

from nce_ref import mi

from .common import BACKENDS, DIM, DTYPES, _AgainstFloor, _FunctionBenchmark, sizes

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


class MIBoundFromEmbeddings(_AgainstFloor, _FunctionBenchmark):
    """``mi.bound_from_embeddings(x, y, bound=..., similarity="cosine", temperature=0.07)``."""

    param_names = ("backend", "bound", "n", "dtype")
    params = (BACKENDS, list(BOUNDS), sizes(gpu_large=True), DTYPES)

    def make(self, rng, n, dtype):
        return rng.standard_normal((n, DIM)), rng.standard_normal((n, DIM))

    def setup(self, backend, bound, n, dtype):
        name, extra, kw = BOUNDS[bound]
        self.prepare(backend, n, dtype, mi.bound_from_embeddings, *extra, bound=name,
                     similarity="cosine", temperature=TEMPERATURE, **kw)
