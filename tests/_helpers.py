"""Assertions shared by the tests: namespace, dtype, shape, device and value at once."""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace, device

from nce_ref.testing import atol_for, dtype_name, rtol_for


def assert_like(res, backend, *, dtype: str, shape: tuple, ref_array=None) -> np.ndarray:
    """Check that ``res`` is an array of the backend's namespace, ``dtype`` and ``shape``
    (a 0-d array, never a Python or NumPy scalar, when ``shape == ()``) on the device
    of ``ref_array``; return it as NumPy."""
    xp = backend.xp
    assert array_namespace(res).__name__ == xp.__name__, (
        f"namespace {array_namespace(res).__name__} != {xp.__name__}")
    if backend.name.startswith("numpy"):
        assert isinstance(res, np.ndarray), f"{type(res)} is not an ndarray (0-d arrays, not scalars)"
    assert dtype_name(res.dtype) == dtype, f"dtype {res.dtype} != {dtype}"
    assert tuple(res.shape) == tuple(shape), f"shape {tuple(res.shape)} != {shape}"
    if ref_array is not None:
        assert device(res) == device(ref_array), f"device {device(res)} != {device(ref_array)}"
    return backend.to_numpy(res)


def assert_close(actual, desired, *, dtype: str = "float64", rtol: float | None = None,
                 atol: float | None = None, scale: float | None = None, temperature=None,
                 tol_scale: float = 1.0, err_msg: str = "") -> None:
    """``np.testing.assert_allclose`` with tolerances from the project's table."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    if rtol is None:
        rtol = rtol_for(dtype, temperature=temperature) * tol_scale
    if atol is None:
        s = scale if scale is not None else float(np.max(np.abs(desired), initial=1.0))
        atol = atol_for(dtype, s) * tol_scale
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol, err_msg=err_msg)
