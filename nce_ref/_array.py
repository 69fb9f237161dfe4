"""Namespace, dtype, device and input validation: the only place that looks at types.

Every public function starts by calling :func:`resolve` on its array arguments.
It returns a :class:`Ctx` holding the Array API namespace of the inputs, their
device, the dtype in which the computation runs (``float16``/``bfloat16`` are
computed in ``float32``) and the dtype of the result.  Everything downstream uses
only functions of the Python Array API standard through ``ctx.xp``.

Errors are raised here, before any computation, with a message that names the
argument, what was expected and what was given.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import array_api_compat
from array_api_compat import device as xp_device
from array_api_compat import is_array_api_obj, is_lazy_array

__all__ = [
    "Ctx",
    "resolve",
    "check_option",
    "check_method",
    "check_rows",
    "check_dim",
    "check_pair",
    "check_labels",
    "require_binary",
    "concrete_float",
    "plus",
    "METHODS",
    "check_int",
    "check_real",
    "xp_device",
]

Array = Any


@dataclass(frozen=True)
class Ctx:
    """What the kernels need to know about the caller's arrays.

    Attributes
    ----------
    xp : namespace
        The array-api-compat namespace of the inputs.
    device : object
        The device of the inputs.
    dtype : dtype
        The dtype the computation runs in (at least float32).
    out_dtype : dtype
        The dtype of the results (the promoted input float dtype).
    check_finite : bool
        Whether values are checked (False for lazy arrays).
    """

    xp: Any
    device: Any
    dtype: Any
    out_dtype: Any
    check_finite: bool

    # -- conversions -------------------------------------------------------
    def to_compute(self, x: Array) -> Array:
        """Cast ``x`` to the computation dtype (no copy when it already is)."""
        if x.dtype == self.dtype:
            return x
        return self.xp.astype(x, self.dtype)

    def to_out(self, x: Array) -> Array:
        """Cast a result to the output dtype, as an array (a 0-d array, never a scalar)."""
        if x.dtype != self.out_dtype:
            x = self.xp.astype(x, self.out_dtype)
        return self.xp.asarray(x)

    def like(self, x: Array, ref: Array) -> Array:
        """Cast a gradient ``x`` to the dtype of the input ``ref`` it belongs to."""
        if x.dtype == ref.dtype:
            return x
        return self.xp.astype(x, ref.dtype)

    def eye(self, n: int, m: int | None = None, *, k: int = 0, dtype: Any = None) -> Array:
        return self.xp.eye(n, m, k=k, dtype=self.dtype if dtype is None else dtype,
                           device=self.device)

    def asarray(self, value: Any, dtype: Any = None) -> Array:
        return self.xp.asarray(value, dtype=self.dtype if dtype is None else dtype,
                               device=self.device)

    def finfo(self):
        return self.xp.finfo(self.dtype)

    # -- value checks ------------------------------------------------------
    def require_finite(self, x: Array, name: str) -> None:
        """Raise ``ValueError`` when ``x`` holds NaN or inf (skipped for lazy arrays)."""
        if not self.check_finite or is_lazy_array(x):
            return
        xp = self.xp
        # one read-only pass first: a finite sum proves every entry finite (a NaN or an
        # infinity makes any sum NaN or infinite); only an overflowing sum needs the full check
        if xp.isdtype(x.dtype, "real floating") and x.ndim and bool(xp.isfinite(xp.sum(x))):
            return
        if not bool(xp.all(xp.isfinite(x))):
            n_nan = int(xp.sum(xp.astype(xp.isnan(x), xp.int32)))
            n_inf = int(xp.sum(xp.astype(xp.isinf(x), xp.int32)))
            raise ValueError(
                f"`{name}` must be finite; got {n_nan} NaN and {n_inf} infinite "
                f"value(s) (pass check_finite=False to skip this check)"
            )

    def result_finite(self, value: Array, what: str) -> Array:
        """Raise a clear error instead of returning a silent non-finite result."""
        if self.check_finite and not is_lazy_array(value):
            xp = self.xp
            if not bool(xp.all(xp.isfinite(value))):
                raise FloatingPointError(
                    f"{what} overflowed in {self.dtype}: the inputs are too large for "
                    "this dtype; rescale them or compute in float64"
                )
        return value


def _is_float_dtype(xp, dtype) -> bool:
    return xp.isdtype(dtype, "real floating")


def _describe(x: Any) -> str:
    if is_array_api_obj(x):
        return f"an array of dtype {x.dtype} and shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r}"[:120]


def resolve(
    arrays: dict[str, Array | None],
    *,
    ndims: dict[str, tuple[int, ...] | int] | None = None,
    floating: tuple[str, ...] | None = None,
    xp: Any = None,
    check_finite: bool = True,
) -> Ctx:
    """Validate the array arguments of a public function and return its :class:`Ctx`.

    Parameters
    ----------
    arrays : dict
        ``{argument name: array or None}``; ``None`` entries are ignored.
    ndims : dict, optional
        Allowed ``ndim`` per argument name.
    floating : tuple of str, optional
        Names of the arguments that must have a real floating dtype (default: all).
        The others only join the namespace and device checks.
    xp : namespace, optional
        The namespace of the inputs, when the caller already knows it.
    check_finite : bool
        Check that floating inputs hold no NaN or inf.
    """
    given = {k: v for k, v in arrays.items() if v is not None}
    for name, x in given.items():
        if not is_array_api_obj(x):
            raise TypeError(
                f"`{name}` must be an array (NumPy, CuPy, PyTorch, JAX or any Array API "
                f"array); got {_describe(x)}. Convert lists with your library's asarray."
            )
    if not given:
        raise TypeError("no array argument was given")
    try:
        ns = array_api_compat.array_namespace(*given.values())
    except TypeError as exc:
        kinds = ", ".join(f"`{k}`: {type(v).__module__}.{type(v).__name__}" for k, v in given.items())
        raise TypeError(f"all arrays must come from one array library; got {kinds}") from exc
    if xp is None:
        xp = ns
    names = list(given)
    first = names[0]
    dev = xp_device(given[first])
    for name in names[1:]:
        d = xp_device(given[name])
        if not (d == dev):
            raise ValueError(
                f"all arrays must be on one device; `{first}` is on {dev} but `{name}` is on {d}"
            )
    floating = tuple(names) if floating is None else tuple(n for n in floating if n in given)
    for name, allowed in (ndims or {}).items():
        if name not in given:
            continue
        allowed = (allowed,) if isinstance(allowed, int) else tuple(allowed)
        nd = given[name].ndim
        if nd not in allowed:
            exp = " or ".join(f"{a}-D" for a in allowed)
            raise ValueError(
                f"`{name}` must be {exp}; got {nd}-D with shape {tuple(given[name].shape)}"
            )
    fdts = []
    for name in floating:
        x = given[name]
        if not _is_float_dtype(xp, x.dtype):
            raise TypeError(
                f"`{name}` must have a real floating dtype (float16, bfloat16, float32, "
                f"float64); got {x.dtype}"
            )
        fdts.append(x.dtype)
    if fdts:
        out_dtype = xp.result_type(*fdts)
    else:
        out_dtype = _default_float(xp, dev)
    dtype = out_dtype
    if xp.finfo(out_dtype).bits < 32:
        dtype = xp.float32
    lazy = any(is_lazy_array(given[n]) for n in names)
    ctx = Ctx(xp=xp, device=dev, dtype=dtype, out_dtype=out_dtype,
              check_finite=bool(check_finite) and not lazy)
    for name in floating:
        ctx.require_finite(given[name], name)
    return ctx


def _default_float(xp, dev):
    try:
        return xp.__array_namespace_info__().default_dtypes(device=dev)["real floating"]
    except Exception:  # pragma: no cover - very old namespaces
        return xp.float64


def check_option(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise a ``ValueError``."""
    if not isinstance(value, str) or value not in allowed:
        opts = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"`{name}` must be one of {opts}; got {value!r}")
    return value


#: the public functions' choice of code path: the engine where it applies, the dense
#: reference (the formula as the docs write it), or the engine, refusing what it lacks
METHODS = ("auto", "dense", "streamed")


def check_method(method: Any, *, streamable: bool, why_not: str = "") -> str:
    """The path a public function runs, ``"dense"`` or ``"streamed"``, for ``method``.

    ``"auto"`` streams whenever the engine covers the options (``streamable``) and
    runs the dense reference otherwise; ``"streamed"`` refuses options the engine
    does not cover (``why_not`` says which), so that a caller who asked for the
    engine never silently gets the N x N matrix.
    """
    check_option(method, "method", METHODS)
    if method == "dense":
        return "dense"
    if method == "streamed" and not streamable:
        raise ValueError(f"`method='streamed'` does not cover {why_not}; use method='dense' "
                         "(or 'auto', which runs the dense reference there)")
    return "streamed" if streamable else "dense"


def check_rows(n: int, name: str) -> None:
    """Raise unless an array argument has at least one row."""
    if n < 1:
        raise ValueError(f"`{name}` must have at least one row (N >= 1); got N = 0")


def check_dim(d: int, name: str) -> None:
    """Raise unless an array argument has at least one column."""
    if d < 1:
        raise ValueError(f"`{name}` must have at least one column (D >= 1); got D = 0")


def check_pair(a: Array, b: Array, name_a: str, name_b: str) -> tuple[int, int]:
    """Two (N, D) arrays of one shape, N >= 1 and D >= 1; returns ``(N, D)``."""
    n, d = a.shape
    check_rows(n, name_a)
    check_dim(d, name_a)
    if tuple(b.shape) != (n, d):
        raise ValueError(f"`{name_b}` must have the shape of `{name_a}` {(n, d)}; got {tuple(b.shape)}")
    return n, d


def require_binary(ctx: Ctx, x: Array, name: str, what: str) -> None:
    """Raise unless every entry of ``x`` is 0 or 1 (bool passes; skipped when lazy or
    ``check_finite=False``)."""
    xp = ctx.xp
    if xp.isdtype(x.dtype, "bool") or not ctx.check_finite or is_lazy_array(x):
        return
    if not bool(xp.all((x == 0) | (x == 1))):
        raise ValueError(f"`{name}` must hold only 0 and 1 ({what}); got other values")


def check_labels(ctx: Ctx, labels: Array, n: int, *, multi: bool = False, name: str = "labels") -> None:
    """``labels`` of shape (N,) (or (N, C) of 0/1 when ``multi``), of a bool, integer
    or real floating dtype, finite."""
    xp = ctx.xp
    shapes = f"({n},)" + (f" or ({n}, C)" if multi else "")
    if labels.ndim not in ((1, 2) if multi else (1,)) or labels.shape[0] != n:
        raise ValueError(f"`{name}` must have shape {shapes}, one row per sample; got "
                         f"{tuple(labels.shape)}")
    if not xp.isdtype(labels.dtype, ("bool", "integral", "real floating")):
        raise TypeError(f"`{name}` must have a bool, integer or real floating dtype; got "
                        f"{labels.dtype}")
    if xp.isdtype(labels.dtype, "real floating"):
        ctx.require_finite(labels, name)
    if labels.ndim == 2:
        require_binary(ctx, labels, name, "multi-label rows")


def concrete_float(value: Any) -> float | None:
    """A scalar parameter's value as a Python float, or None for a lazy array (JAX
    under ``jit``), whose value cannot be read.  Lets the engine use what the value
    tells (cosine logits bounded by ``1/τ``) whatever the parameter's type."""
    if is_array_api_obj(value):
        return None if is_lazy_array(value) else float(value)
    return float(value)


def plus(x: Array, y: Array | None) -> Array:
    """``x + y``, where None is zero (a term that does not apply)."""
    return x if y is None else x + y


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """Return ``value`` as an ``int``; reject bools, floats and values below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer; got {_describe(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {value}")
    return value


def check_real(value: Any, name: str, *, positive: bool = False, nonnegative: bool = False,
               finite: bool = True) -> float:
    """Return a Python real scalar as ``float`` after range checks."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number; got {_describe(value)}")
    v = float(value)
    if math.isnan(v) or (finite and math.isinf(v)):
        raise ValueError(f"`{name}` must be finite; got {v}")
    if positive and not v > 0:
        raise ValueError(f"`{name}` must be > 0; got {v}")
    if nonnegative and not v >= 0:
        raise ValueError(f"`{name}` must be >= 0; got {v}")
    return v


def scalar_param(ctx: Ctx, value: Any, name: str, *, positive: bool = False,
                 nonnegative: bool = False):
    """A differentiable scalar parameter (``temperature``, ``log_baseline``...).

    Accepts a Python real or a 0-d floating array of the inputs' namespace.
    Returns ``(as_compute_array, original)``; range checks are applied to concrete
    values (skipped for lazy arrays).
    """
    xp = ctx.xp
    if is_array_api_obj(value):
        try:
            ns = array_api_compat.array_namespace(value)
        except TypeError:  # pragma: no cover
            ns = None
        if ns is not None and ns.__name__ != xp.__name__:
            raise TypeError(
                f"`{name}` as an array must come from the same library as the other "
                f"inputs ({xp.__name__}); got {type(value).__module__}.{type(value).__name__}"
            )
        if value.ndim != 0:
            raise ValueError(f"`{name}` must be a scalar or a 0-d array; got shape {tuple(value.shape)}")
        if not _is_float_dtype(xp, value.dtype):
            raise TypeError(f"`{name}` must have a real floating dtype; got {value.dtype}")
        if not is_lazy_array(value):
            check_real(float(value), name, positive=positive, nonnegative=nonnegative)
        arr = value
        if xp_device(arr) != ctx.device:
            arr = array_api_compat.to_device(arr, ctx.device)
        return xp.astype(arr, ctx.dtype), value
    v = check_real(value, name, positive=positive, nonnegative=nonnegative)
    return xp.asarray(v, dtype=ctx.dtype, device=ctx.device), v


def scalar_grad(ctx: Ctx, grad: Array, original: Any) -> Array:
    """Return the gradient of a scalar parameter in the parameter's own dtype.

    A Python-float parameter gets a 0-d array of the output dtype.
    """
    if is_array_api_obj(original):
        g = ctx.xp.asarray(ctx.xp.astype(grad, original.dtype))
        if xp_device(original) != ctx.device:
            g = array_api_compat.to_device(g, xp_device(original))
        return g
    return ctx.to_out(grad)
