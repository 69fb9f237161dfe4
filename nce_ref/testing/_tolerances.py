"""The one tolerance table of the project (STYLE.md B6), keyed by dtype name.

``rtol`` for results against a float64 oracle fed the same-dtype inputs is
``4·sqrt(eps)`` (array-api-extra's default); outputs that can be ~0 add an
``atol = 10·eps·scale``.  A loss value is compared with :func:`value_tolerances`:
its ``atol`` is scaled by the first-order sensitivity ``Σ |∂L/∂x · x|`` (over every
input, the temperature included), which is the size of the rounding error that a
correct implementation makes; it grows like ``1/τ`` by itself, so no separate
temperature factor is applied to values.  Gradients against central finite
differences are only checked in float64, with torch's defaults.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

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


#: multiple of ``eps/τ`` added to the relative tolerance of quantities computed from
#: logits of size ``1/τ`` (probabilities, gradients): the logits carry an absolute
#: rounding error of a few ``eps/τ``, which becomes the probabilities' relative error
TEMPERATURE_ULPS = 32.0


def rtol_for(dtype, *, temperature: float | None = None) -> float:
    """``4·sqrt(eps)``, plus ``32·eps/τ`` for ``τ < 1`` (logits of size ``1/τ``).

    The second term is the relative error of a softmax computed from logits of
    size ``1/τ`` (a few ulps of ``1/τ`` each): it matters only for gradients at
    small temperatures (float32 at ``τ = 1e-4``: ``0.04``, against ``1.4e-3``
    without it).  float16 and bfloat16 results are computed in float32 and
    rounded once to the output dtype, so their tolerance is a few ulps of that
    dtype.
    """
    name = dtype_name(dtype)
    if name in ("float16", "bfloat16"):
        return 4.0 * _EPS[name]
    r = 4.0 * math.sqrt(_EPS[name])
    if temperature is not None and 0.0 < temperature < 1.0:
        r += TEMPERATURE_ULPS * _EPS[name] / temperature
    return r


def atol_for(dtype, scale: float = 1.0) -> float:
    """``10·eps·scale`` for outputs that can be ~0."""
    return 10.0 * _EPS[dtype_name(dtype)] * max(1.0, scale)


def sensitivity(grads, inputs) -> float:
    """First-order sensitivity ``Σ_x Σ |∂L/∂x · x|`` of a value to its inputs.

    ``grads`` and ``inputs`` map names to NumPy arrays or floats (the reference's
    float64 gradient and the inputs as rounded to the tested dtype); names absent
    from either are skipped, and so are entries whose product is not finite.
    Relative rounding of every input by ``eps`` moves
    the value by at most ``eps`` times this, to first order.
    """
    total = 0.0
    for name, g in grads.items():
        x = inputs.get(name)
        if x is None or g is None or isinstance(x, bool):
            continue
        if not isinstance(x, (int, float, np.ndarray, np.generic)):
            continue
        g = np.asarray(g, dtype=np.float64)
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            gx = np.abs(g * x)
        # entries where either factor is 0 (an input of -inf the value does not
        # depend on) contribute nothing; a non-finite product is left out
        total += float(np.sum(np.where((g != 0) & (x != 0) & np.isfinite(gx), gx, 0.0)))
    return total


def content_key(obj):
    """A hashable key of ``obj``'s content: arrays by dtype, shape and bytes, floats by
    their exact (hex) value, containers element by element.

    Two calls with equal keys receive bit-identical inputs, so a deterministic
    function of them (an oracle, a sensitivity) can be computed once and reused for
    every backend that is compared with it.  Raises ``TypeError`` for an object it
    cannot key (the caller then does not cache).
    """
    if obj is None or isinstance(obj, (bool, str, bytes)):
        return (type(obj).__name__, obj)
    if isinstance(obj, int):
        return ("int", obj)
    if isinstance(obj, float):
        return ("float", obj.hex())
    if isinstance(obj, (np.ndarray, np.generic)):
        a = np.ascontiguousarray(obj)
        if a.dtype.kind == "O":
            raise TypeError("object arrays have no content key")
        return ("nd", a.dtype.str, a.shape, a.tobytes())
    if isinstance(obj, (tuple, list)):
        return (type(obj).__name__,) + tuple(content_key(v) for v in obj)
    if isinstance(obj, dict):
        return ("dict",) + tuple((k, content_key(v)) for k, v in sorted(obj.items()))
    raise TypeError(f"no content key for {type(obj).__name__}")


class ContentCache:
    """A bounded least-recently-used map from :func:`content_key` keys to results."""

    def __init__(self, maxsize: int = 4096):
        self.maxsize = maxsize
        self._d: OrderedDict = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key):
        if key in self._d:
            self._d.move_to_end(key)
            self.hits += 1
            return True, self._d[key]
        self.misses += 1
        return False, None

    def put(self, key, value) -> None:
        self._d[key] = value
        if len(self._d) > self.maxsize:
            self._d.popitem(last=False)

    def clear(self) -> None:
        self._d.clear()
        self.hits = self.misses = 0


#: the sensitivities of :func:`call_tolerances`, by function, inputs and dtype: they
#: depend on the case and the dtype only, not on the backend under test
_SENSITIVITY_CACHE = ContentCache()


def value_tolerances(dtype, want, sens: float = 0.0) -> tuple[float, float]:
    """``(rtol, atol)`` for a value ``want`` (float64 reference on the same rounded inputs).

    ``rtol = 4·sqrt(eps)``; ``atol = 10·eps·max(1, max|want|, sens)`` with ``sens``
    from :func:`sensitivity`.
    """
    scale = max(1.0, float(np.max(np.abs(np.asarray(want, dtype=np.float64)), initial=0.0)), sens)
    return rtol_for(dtype), atol_for(dtype, scale)


def _rounded(v, dtype):
    if isinstance(v, np.ndarray) and v.dtype.kind == "f":
        return np.asarray(v, dtype=dtype_name(dtype)).astype(np.float64)
    if isinstance(v, float):
        return float(np.asarray(v, dtype=dtype_name(dtype)))
    return v


def call_tolerances(fn, args, kwargs, dtype, want) -> tuple[float, float]:
    """:func:`value_tolerances` for ``fn(*args, **kwargs)`` evaluated in ``dtype``.

    ``fn`` is a registered public function; its float64 NumPy gradient at the
    inputs rounded to ``dtype`` gives the sensitivity; for a non-scalar value, the
    largest over its elements (the first 256).  The sensitivity depends only on
    ``fn``, the inputs and ``dtype``: it is computed once and reused by every backend
    compared on the same case and dtype.
    """
    from nce_ref import vjp

    from ..autodiff import lookup

    try:
        key = (fn, dtype_name(dtype), content_key(tuple(args)), content_key(dict(kwargs)))
        hash(key)
    except TypeError:
        key = None
    if key is not None:
        hit, sens = _SENSITIVITY_CACHE.get(key)
        if hit:
            return value_tolerances(dtype, want, sens)
    r_args = [_rounded(a, dtype) for a in args]
    r_kw = {k: _rounded(v, dtype) for k, v in kwargs.items()}
    entry = lookup(fn)
    bound = entry.signature.bind_partial(*r_args, **r_kw)
    value, back = vjp(fn, *r_args, **r_kw)
    value = np.asarray(value, dtype=np.float64)
    sens = 0.0
    if value.size:
        # the sensitivity of each output separately (a sum of signed cotangents can cancel)
        cts = [None] if value.ndim == 0 else [np.eye(1, value.size, i).reshape(value.shape)
                                              for i in range(min(value.size, 256))]
        for ct in cts:
            sens = max(sens, sensitivity(back(ct), dict(bound.arguments)))
    if key is not None:
        _SENSITIVITY_CACHE.put(key, sens)
    return value_tolerances(dtype, want, sens)
