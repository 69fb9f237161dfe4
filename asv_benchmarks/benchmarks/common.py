"""Shared machinery of the asv suites: backends, sizes, synchronization, data.

The benchmark files are read from the working tree, so ``backends/`` (the
repository's backend descriptors, shared with ``tests/``) is put on ``sys.path``.

Profiles (``NCE_REF_BENCH_PROFILE``): ``fast`` (CI smoke: N = 256 only),
``regular`` (default: N in {256, 4096}, D = 256), ``large`` (adds N = 32768 and
D in {64, 1024}; the streamed kernels add, on GPU backends only, N = 65536, 262144
and 1048576).  Every timed function ends with a device synchronization.

Precision: CuPy's float32 GEMMs run in plain IEEE float32 unless the environment
sets ``CUPY_TF32=1``; record which one a run used with the machine's results.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np

import nce_ref

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import backends as _backends  # noqa: E402

#: backends a benchmark is parametrized over (unavailable ones are skipped)
BACKENDS = ["numpy", "cupy", "torch"]
DTYPES = ["float32", "float64"]
DIM = 256


def profile() -> str:
    return os.environ.get("NCE_REF_BENCH_PROFILE", "regular")


#: sizes above this run on GPU backends only (a CPU run would take minutes per call)
CPU_MAX_N = 32768


def sizes(gpu_large: bool = False) -> list[int]:
    """N values of the profile; ``gpu_large`` adds the GPU-only streamed sizes."""
    p = profile()
    if p == "fast":
        return [256]
    if p == "large":
        return [256, 4096, 32768] + ([65536, 262144, 1048576] if gpu_large else [])
    return [256, 4096]


def dims() -> list[int]:
    """D values of the profile."""
    return [64, 256, 1024] if profile() == "large" else [DIM]


def get_backend(name: str):
    """The :class:`backends.Backend`, or ``NotImplementedError`` (asv: skipped)."""
    b = _backends.get(name)
    why = b.unavailable()
    if why is not None:
        raise NotImplementedError(why)
    return b


def skip_if(cond: bool, why: str) -> None:
    if cond:
        raise NotImplementedError(why)


class XPBenchmark:
    """Base class: ``setup`` resolves the backend, builds data, syncs, and warms up.

    Subclasses set ``params``/``param_names`` (first param ``backend``), implement
    ``make(rng, n, dtype) -> tuple of NumPy arrays`` and ``call(*arrays)``.  The
    ``time_*`` methods all end with ``self.sync``.
    """

    timeout = 600
    rounds = 2
    repeat = (1, 5, 20.0)

    def setup_data(self, backend: str, n: int, dtype: str, d: int | None = None):
        self.backend = get_backend(backend)
        # float64 on a GPU is not what these benchmarks are about; CPU backends only
        skip_if(self.backend.gpu and dtype == "float64", "float64 is CPU-only here")
        skip_if(not self.backend.gpu and n > CPU_MAX_N, f"N > {CPU_MAX_N} runs on GPU backends only")
        self.d = DIM if d is None else d
        rng = np.random.default_rng(0)
        self.arrays = tuple(self.backend.asarray(a, dtype) for a in self.make(rng, n, dtype))
        self.sync(*self.arrays)

    def sync(self, *arrays):
        self.backend.synchronize(*arrays)
        return arrays

    def make(self, rng, n, dtype):  # pragma: no cover - abstract
        raise NotImplementedError


class _FunctionBenchmark(XPBenchmark):
    """``time_`` and ``peakmem_`` of one public function, forward and ``value_and_grad``.

    ``setup`` calls :meth:`prepare` with the function, the extra positional
    arguments after the data and the keyword arguments; every method takes the
    class's params positionally (``*p``) and ignores them.  ``self.vg_kw`` holds
    what only ``value_and_grad`` takes (a ``cotangent``).  The leading underscore
    keeps asv from collecting the base class itself.
    """

    def prepare(self, backend, n, dtype, function, *extra, d=None, warm=True, **kwargs):
        self.setup_data(backend, n, dtype, d)
        # NumPy arrays among the extra arguments (labels) move to the backend as they are
        extra = tuple(self.backend.asarray(e) if isinstance(e, np.ndarray) else e for e in extra)
        self.fn, self.extra, self.kw, self.vg_kw = function, extra, kwargs, {}
        self.n, self.dtype = n, dtype
        self.vg = nce_ref.value_and_grad(function)
        if warm:
            self._value_and_grad()  # warm-up (pools, handles, thread pools)

    def _value_and_grad(self):
        v, g = self.vg(*self.arrays, *self.extra, **self.kw, **self.vg_kw)
        self.sync(v, *g.values())

    def time_forward(self, *p):
        self.sync(self.fn(*self.arrays, *self.extra, **self.kw))

    def time_value_and_grad(self, *p):
        self._value_and_grad()

    def peakmem_forward(self, *p):
        self.fn(*self.arrays, *self.extra, **self.kw)

    def peakmem_value_and_grad(self, *p):
        self.vg(*self.arrays, *self.extra, **self.kw, **self.vg_kw)

    def track_gpu_peak_bytes(self, *p):
        return self.gpu_peak_bytes()

    track_gpu_peak_bytes.unit = "bytes"

    def track_max_rel_err_vs_f64(self, *p):
        return self.rel_err_vs_f64(self.n, self.dtype)

    track_max_rel_err_vs_f64.unit = "relative error"

    def gpu_peak_bytes(self):
        """GPU memory high-water mark of value_and_grad above what the inputs hold
        (``peakmem_`` sees host RSS only)."""
        if not self.backend.gpu:
            return math.nan  # asv shows n/a (raising here would count as a failure)
        if self.backend.name == "cupy":
            import cupy

            pool = cupy.get_default_memory_pool()
            pool.free_all_blocks()
            base = pool.total_bytes()
            self._value_and_grad()
            return pool.total_bytes() - base
        torch = self.backend.lib
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        self._value_and_grad()
        return torch.cuda.max_memory_allocated() - base

    def rel_err_vs_f64(self, n, dtype):
        """Relative error of the value against the NumPy float64 computation (NaN, which
        asv shows as n/a, above ``CPU_MAX_N``: the reference would take minutes)."""
        if n > CPU_MAX_N:
            return math.nan
        arrays = self.make(np.random.default_rng(0), n, dtype)
        extra = tuple(self.backend.to_numpy(e) if hasattr(e, "shape") else e for e in self.extra)
        ref = float(self.fn(*arrays, *extra, **self.kw))
        got = float(self.backend.to_numpy(self.fn(*self.arrays, *self.extra, **self.kw)))
        return abs(got - ref) / max(abs(ref), 1e-300)


def torch_available() -> str | None:
    return _backends.get("torch").unavailable()
