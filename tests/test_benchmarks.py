"""The asv suites still run: every benchmark class of asv_benchmarks/benchmarks, at the
``fast`` profile (N = 256), on NumPy, one parameter combination each (each axis' NumPy,
float32 or first value), setup and every ``time_``/``track_`` method called once.

asv imports the suites from the working tree against the installed nce_ref; a renamed
option or a changed signature otherwise shows only when a maintainer runs asv.  The
multi-process sharded suite is left to ``asv run`` (it starts gloo process groups).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_BENCH = Path(__file__).resolve().parents[1] / "asv_benchmarks"
_SKIP_MODULES = {"bench_sharded"}
_PREFERRED = {"numpy", "float32"}


def _classes():
    os.environ["NCE_REF_BENCH_PROFILE"] = "fast"
    if str(_BENCH) not in sys.path:
        sys.path.insert(0, str(_BENCH))
    out = []
    for path in sorted((_BENCH / "benchmarks").glob("bench_*.py")):
        if path.stem in _SKIP_MODULES:
            continue
        module = importlib.import_module(f"benchmarks.{path.stem}")
        for name, cls in vars(module).items():
            if (inspect.isclass(cls) and cls.__module__ == module.__name__
                    and not name.startswith("_")
                    and any(m.startswith(("time_", "track_")) for m in dir(cls))):
                out.append(pytest.param(cls, id=f"{path.stem}.{name}"))
    return out


def _first(values):
    return next((v for v in values if v in _PREFERRED), values[0])


@pytest.mark.parametrize("cls", _classes())
def test_benchmark_runs(cls):
    params = getattr(cls, "params", ())
    if params and not isinstance(params[0], (list, tuple)):
        params = (params,)
    args = tuple(_first(list(axis)) for axis in params)
    bench = cls()
    try:
        if hasattr(bench, "setup"):
            bench.setup(*args)
    except NotImplementedError as why:  # asv's skip
        pytest.skip(f"the benchmark skips itself at {args}: {why}")
    ran = 0
    for name in dir(bench):
        if name.startswith(("time_", "track_")):
            out = getattr(bench, name)(*args)
            if name.startswith("track_"):
                # a number (NaN is asv's "not applicable": the GPU trackers on the CPU)
                assert out is None or isinstance(float(out), float), name
            ran += 1
    assert ran > 0
    if hasattr(bench, "teardown"):
        bench.teardown(*args)
