"""Fixtures shared by every test module: backends, dtypes, hypothesis profiles.

``backend`` is parametrized over every backend in ``backends/`` (NumPy, read-only
NumPy, array-api-strict, torch, JAX, CuPy); an unavailable one is skipped with the
reason printed (``-ra``).  ``NCE_REF_TEST_BACKENDS=numpy,torch`` narrows the list.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import backends

settings.register_profile(
    "deterministic", derandomize=True, database=None, deadline=None, print_blob=True,
    max_examples=60, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "nondeterministic", deadline=None, print_blob=True, max_examples=300,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("NCE_REF_HYPOTHESIS_PROFILE", "deterministic"))

_BACKEND_PARAMS = [pytest.param(b, id=b.name) for b in backends.selected()]


# -- the default run and the slow run ------------------------------------------------------
#
# A test marked ``@pytest.mark.cover`` is a full cross product of its parametrizations
# (the ``backend`` and ``dtype`` fixtures included).  The default run
# (``pytest -m "not slow"``) keeps a covering subset of it: every value of every axis
# at least once (every available backend once, every dtype, every similarity, every
# variant, every block layout), not every combination; the other combinations are
# marked ``slow`` and run with ``pytest -m slow``.  The union of the two runs is the
# full product, on every machine.  ``cover(*axes)`` names the axes (default: every
# parametrized argument of the test).

def _available(b) -> bool:
    return b.unavailable() is None


def _axis_key(v):
    return getattr(v, "name", None) if isinstance(v, backends.Backend) else repr(v)


def _value(it, axis: str):
    """The item's value on ``axis``: one parametrized argument, or several joined by
    commas (``"bound,opts"``: the arguments of one ``parametrize``, one axis)."""
    if "," in axis:
        return tuple(_axis_key(it.callspec.params[p]) for p in axis.split(","))
    return _axis_key(it.callspec.params[axis])


def _covering(items, axes, name):
    """The items of one test function kept in the default run: for r in range(R),
    R = the largest number of values of an axis, the combination that takes each
    axis's value number (r + offset) mod its length (offsets from the test's name, so
    that different tests pair the axes differently); an unavailable backend is never
    the only carrier of another axis's value (it gets one item of its own)."""
    import zlib

    values: dict = {a: [] for a in axes}
    for it in items:
        for a in axes:
            k = _value(it, a)
            if a == "backend" and not _available(it.callspec.params[a]):
                continue
            if k not in values[a]:
                values[a].append(k)
    keep: set = set()
    rows = max((len(v) for v in values.values()), default=0)
    wanted = set()
    for r in range(rows):
        wanted.add(tuple(vs[(r + zlib.crc32(f"{name}/{a}".encode())) % len(vs)] if vs else None
                         for a, vs in values.items()))
    seen_unavailable: set = set()
    for it in items:
        combo = tuple(_value(it, a) for a in axes)
        if "backend" in axes:
            b = it.callspec.params["backend"]
            if not _available(b):  # skipped wherever it runs: one item shows the reason
                if _axis_key(b) not in seen_unavailable:
                    seen_unavailable.add(_axis_key(b))
                    keep.add(it.nodeid)
                continue
        if combo in wanted:
            keep.add(it.nodeid)
            wanted.discard(combo)
    # a combination missing from the product (filtered parametrizations): greedily
    # add items until every value of every axis is carried by a kept item
    carried: dict = {a: set() for a in axes}
    for it in items:
        if it.nodeid in keep:
            for a in axes:
                carried[a].add(_value(it, a))
    for it in items:
        if it.nodeid in keep or ("backend" in axes and not _available(it.callspec.params["backend"])):
            continue
        if any(_value(it, a) not in carried[a] for a in axes):
            keep.add(it.nodeid)
            for a in axes:
                carried[a].add(_value(it, a))
    return keep


def pytest_collection_modifyitems(config, items):
    groups: dict = {}
    for it in items:
        m = it.get_closest_marker("cover")
        if m is None or not hasattr(it, "callspec"):
            continue
        groups.setdefault((it.path, it.originalname or it.name), (m, []))[1].append(it)
    for (_path, name), (m, group) in groups.items():
        axes = list(m.args) or list(group[0].callspec.params)
        keep = _covering(group, axes, name)
        for it in group:
            if it.nodeid not in keep:
                it.add_marker(pytest.mark.slow)


@pytest.fixture(params=_BACKEND_PARAMS)
def backend(request) -> backends.Backend:
    """Each available backend; skipped with a reason where the library or device is missing."""
    b = request.param
    why = b.unavailable()
    if why is not None:
        pytest.skip(why)
    return b


@pytest.fixture
def xp(backend):
    return backend.xp


@pytest.fixture(params=["float32", "float64"])
def dtype(request) -> str:
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261124)
