"""The one tolerance table of the project (STYLE.md B6), keyed by dtype name.

``rtol`` for results against a float64 oracle fed the same-dtype inputs is
``4·sqrt(eps)`` (array-api-extra's default); outputs that can be ~0 add an
``atol = 10·eps·scale``.  Gradients against central finite differences are only
checked in float64, with torch's defaults.
"""

from __future__ import annotations

import math

_EPS = {
    "float16": 2.0 ** -10,
    "bfloat16": 2.0 ** -7,
    "float32": 2.0 ** -23,
    "float64": 2.0 ** -52,
}

#: finite-difference step, relative and absolute tolerances (float64 only)
FD_EPS = 1e-6
FD_RTOL = 1e-5
FD_ATOL = 1e-8


def dtype_name(dtype) -> str:
    """``"float32"`` for any library's float32 dtype object, and so on."""
    s = str(dtype)
    for name in ("bfloat16", "float16", "float32", "float64"):
        if name in s:
            return name
    raise TypeError(f"no tolerance for dtype {dtype}")


def eps_of(dtype) -> float:
    return _EPS[dtype_name(dtype)]


def rtol_for(dtype, *, temperature: float | None = None) -> float:
    """``4·sqrt(eps)``; multiplied by ``1/τ`` for ``τ < 1`` below float64 (error ∝ 1/τ).

    float16 and bfloat16 results are computed in float32 and rounded once to the
    output dtype, so their tolerance is a few ulps of that dtype.
    """
    name = dtype_name(dtype)
    if name in ("float16", "bfloat16"):
        return 4.0 * _EPS[name]
    r = 4.0 * math.sqrt(_EPS[name])
    if temperature is not None and temperature < 1.0 and name != "float64":
        r /= temperature
    return r


def atol_for(dtype, scale: float = 1.0) -> float:
    """``10·eps·scale`` for outputs that can be ~0."""
    return 10.0 * _EPS[dtype_name(dtype)] * max(1.0, scale)
