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


def three_gemms(xp, a, b, rows: int | None = None):
    """The floor of forward + backward for ``z = a bᵀ``: ``S = A Bᵀ``, ``dA = S B``,
    ``dB = Sᵀ A`` (N x N x D multiply-adds each), done as well as we know how, so that a
    ratio to it counts everything but the GEMMs: row blocks as the streamed kernels take
    them by default (``_stream.choose_block``: on NumPy, buffers that the allocator reuses
    without page faults), and ``dBᵀ = Aᵀ S`` accumulated transposed (S read in its own
    order, 10-20% faster in OpenBLAS than ``Sᵀ A``).  Returns the results (for the caller
    to synchronize)."""
    from nce_ref._stream import choose_block

    n = a.shape[0]
    if rows is None:
        rows = choose_block(n, b.shape[0], a.dtype.itemsize, like=a)
    bt = xp.matrix_transpose(b)
    da, dbt = [], None
    for r0 in range(0, n, rows):
        ab = a[r0:r0 + rows, :]
        s = ab @ bt
        da.append(s @ b)
        t = xp.matrix_transpose(ab) @ s
        if dbt is None:
            dbt = t
        else:
            dbt += t
    return (*da, dbt)


#: pairs of calls per ``track_ratio_to_*`` benchmark
PAIRS = 5


def paired_ratio(f, reference, sync, pairs: int = PAIRS) -> float:
    """The median over ``pairs`` of ``time(f) / time(reference)`` in this process, each
    pair timed right after the other: a ratio that the drift of a shared machine between
    two benchmarks (often 20-30% on the CPU machines here) does not move.

    Each function is timed on the second of two calls in a row (``reference`` twice, then
    ``f`` twice; the first of each two untimed), as in a loop that calls it: neither one
    pays for the other's leftovers.  After a multi-threaded GEMM, OpenBLAS's idle threads
    spin for 2^28 cycles (about 0.1 s; ``OPENBLAS_THREAD_TIMEOUT``) on the cores that the
    next call needs, and torch's OpenMP threads wait likewise; on 2 cores, a call timed
    right after the floor's GEMMs ran up to 1.3x slower than in its own loop."""
    from time import perf_counter

    def timed(g):
        g()  # untimed: the previous function's threads settle while this one runs
        sync()
        t = perf_counter()
        g()
        sync()
        return perf_counter() - t

    ratios = []
    for _ in range(pairs):
        t_ref = timed(reference)
        ratios.append(timed(f) / t_ref)
    return float(np.median(ratios))


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


class _AgainstFloor:
    """``track_ratio_to_floor`` for a :class:`_FunctionBenchmark` on (N, D) embeddings:
    ``value_and_grad`` over the three-GEMM floor of the same score matrix, paired in one
    process (:func:`paired_ratio`)."""

    def floor_operands(self):
        """``(A, B)`` of the score matrix: the first two inputs, or the one against itself."""
        a = self.arrays[0]
        return a, (self.arrays[1] if len(self.arrays) > 1 else a)

    def track_ratio_to_floor(self, *p):
        a, b = self.floor_operands()
        xp = self.backend.xp
        return paired_ratio(self._value_and_grad, lambda: self.sync(*three_gemms(xp, a, b)),
                            lambda: None)

    track_ratio_to_floor.unit = "ratio"


def torch_available() -> str | None:
    return _backends.get("torch").unavailable()
