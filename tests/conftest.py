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
