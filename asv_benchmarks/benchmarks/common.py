"""Shared machinery of the asv suites: backends, sizes, synchronization, data.

The benchmark files are read from the working tree, so ``backends/`` (the
repository's backend descriptors, shared with ``tests/``) is put on ``sys.path``.

Profiles (``NCE_REF_BENCH_PROFILE``): ``fast`` (CI smoke: N = 256 only),
``regular`` (default: N in {256, 4096}), ``large`` (adds 32768 and, on GPU
backends, 65536).  Every timed function ends with a device synchronization.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

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


def sizes(gpu_large: bool = False) -> list[int]:
    p = profile()
    if p == "fast":
        return [256]
    if p == "large":
        return [256, 4096, 32768] + ([65536] if gpu_large else [])
    return [256, 4096]


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

    def setup_data(self, backend: str, n: int, dtype: str):
        self.backend = get_backend(backend)
        # float64 on a GPU is not what these benchmarks are about; CPU backends only
        skip_if(self.backend.gpu and dtype == "float64", "float64 is CPU-only here")
        rng = np.random.default_rng(0)
        self.arrays = tuple(self.backend.asarray(a, dtype) for a in self.make(rng, n, dtype))
        self.sync(*self.arrays)

    def sync(self, *arrays):
        self.backend.synchronize(*arrays)
        return arrays

    def make(self, rng, n, dtype):  # pragma: no cover - abstract
        raise NotImplementedError


def torch_available() -> str | None:
    return _backends.get("torch").unavailable()
