"""Every registered function, on every case it declares, on every backend.

For each function in the registry and each of its cases (``nce_ref/testing/cases``):
- the value equals the 50-digit mpmath oracle (``nce_ref/testing/oracles``);
- the analytic gradient equals central finite differences (float64, NumPy);
- on every backend, float32 and float64 values equal the oracle within the
  dtype's tolerance and the result has the backend's namespace, dtype, shape and
  device; float64 gradients equal NumPy's.
New functions are covered as soon as they declare cases and an oracle.
"""

from __future__ import annotations

import numpy as np
import pytest

import nce_ref
from nce_ref.autodiff import registry
from nce_ref.testing import call_tolerances, check_grad
from nce_ref.testing.cases import all_cases
from nce_ref.testing.oracles import oracles

from ._helpers import assert_close, assert_like

_CASES = all_cases(seed=0)
_ORACLES = oracles()
_PARAMS = [pytest.param(name, i, id=f"{name}-{c.label}")
           for name, cs in sorted(_CASES.items()) for i, c in enumerate(cs)]


def _call(name, i):
    return registry()[name], _CASES[name][i]


def test_every_registered_function_has_cases_and_an_oracle():
    missing = [n for n in registry() if not _CASES.get(n) or n not in _ORACLES]
    assert not missing, f"registered functions without cases or oracle: {missing}"


@pytest.mark.parametrize("name,i", _PARAMS)
def test_value_matches_mpmath_oracle(name, i):
    entry, case = _call(name, i)
    got = entry.public(*case.args, **case.kwargs)
    want = _ORACLES[name](*case.args, **case.kwargs)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    assert got.shape == np.shape(want)
    # float64 against 50 digits: a few ulps times the problem's condition
    assert_close(got, want, rtol=1e-12, atol=1e-12 * max(1.0, float(np.max(np.abs(want), initial=0))),
                 err_msg=case.describe())


@pytest.mark.parametrize("name,i", [p for p in _PARAMS if _CASES[p.values[0]][p.values[1]].fd])
def test_gradient_matches_finite_differences(name, i):
    entry, case = _call(name, i)
    check_grad(entry.public, *case.args, **case.kwargs)


@pytest.mark.cover("backend", "dtype", "name,i")
@pytest.mark.parametrize("name,i", _PARAMS)
def test_backends_match_oracle_and_keep_namespace(backend, dtype, name, i):
    entry, case = _call(name, i)
    args = [backend.asarray(a, dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f"
            else (backend.asarray(a) if isinstance(a, np.ndarray) else a) for a in case.args]
    kwargs = {k: (backend.asarray(v, dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f"
                  else backend.asarray(v) if isinstance(v, np.ndarray) else v)
              for k, v in case.kwargs.items()}
    want = _ORACLES[name](*[np.asarray(a, dtype=dtype).astype(np.float64)
                            if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
                            for a in case.args],
                          **{k: (np.asarray(v, dtype=dtype).astype(np.float64)
                                 if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
                             for k, v in case.kwargs.items()})
    try:
        res = entry.public(*args, **kwargs)
    except FloatingPointError:
        # a clear overflow error is allowed only where the float32 result is not representable
        assert dtype == "float32" and not np.all(np.abs(want) < np.finfo(np.float32).max / 4)
        return
    ref_array = next(a for a in args if hasattr(a, "shape"))
    got = assert_like(res, backend, dtype=dtype, shape=np.shape(want), ref_array=ref_array)
    # the table's rtol; an atol scaled by the value's first-order sensitivity to its
    # inputs (it grows like 1/temperature by itself), the same rule as verify()
    rtol, atol = call_tolerances(entry.public, case.args, case.kwargs, dtype, want)
    assert_close(got, want, rtol=rtol * backend.tol_scale, atol=atol * backend.tol_scale,
                 err_msg=case.describe())


@pytest.mark.cover("backend", "name,i")
@pytest.mark.parametrize("name,i", _PARAMS)
def test_backend_gradients_match_numpy(backend, name, i):
    entry, case = _call(name, i)
    to = lambda v: backend.asarray(v) if isinstance(v, np.ndarray) else v  # noqa: E731
    v_np, back_np = nce_ref.vjp(entry.public, *case.args, **case.kwargs)
    ct = None if np.ndim(v_np) == 0 else np.linspace(-1.0, 1.0, np.size(v_np)).reshape(np.shape(v_np))
    g_np = back_np(ct)
    args = [to(a) for a in case.args]
    kwargs = {k: to(v) for k, v in case.kwargs.items()}
    v, back = nce_ref.vjp(entry.public, *args, **kwargs)
    g = back(None if ct is None else backend.asarray(ct))
    assert set(g) == set(g_np)
    for k in g_np:
        got = backend.to_numpy(g[k])
        ref = np.asarray(g_np[k])
        assert got.shape == ref.shape, k
        np.testing.assert_allclose(got, ref, rtol=1e-10 * backend.tol_scale,
                                   atol=1e-12 * max(1.0, float(np.max(np.abs(ref), initial=0))),
                                   err_msg=f"{name} {case.describe()}: gradient of {k}")
