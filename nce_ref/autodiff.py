"""The gradient registry: every differentiable public function and its analytic VJP.

A differentiable function is written once as an *implementation* that returns
``(value, vjp)``, where ``vjp(cotangent)`` returns a dict of gradients keyed by
argument name.  :func:`differentiable` turns it into the public function (which
returns the value only) and registers it, so that :func:`value_and_grad`,
:func:`vjp`, the finite-difference checker, ``nce-ref check``, the verification
harness and the torch/JAX bridges work for every function without knowing it.

No autodiff library is used anywhere: the VJPs are hand-derived (``docs/``).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from array_api_compat import array_namespace, device, is_array_api_obj

__all__ = ["differentiable", "value_and_grad", "vjp", "registry", "lookup", "Entry", "forward_only"]


@dataclass(frozen=True)
class Entry:
    """A registered function.

    Attributes
    ----------
    name : str
        Public name (``"info_nce"``, ``"mi.nwj"``...).
    public : callable
        The function users call.
    impl : callable
        Same signature; returns ``(value, vjp)``.
    wrt : tuple of str
        Arguments that receive gradients when given as floating arrays (or, for
        scalar parameters such as ``temperature``, always).
    scalars : tuple of str
        The subset of ``wrt`` that are scalar parameters (float or 0-d array).
    signature : inspect.Signature
    """

    name: str
    public: Callable
    impl: Callable
    wrt: tuple[str, ...]
    scalars: tuple[str, ...]
    signature: inspect.Signature


_REGISTRY: dict[str, Entry] = {}

_FORWARD_ONLY = contextvars.ContextVar("nce_ref_forward_only", default=False)


def forward_only() -> bool:
    """True inside a plain public call, whose VJP will never be asked for.

    Implementations may then skip work that only the gradient needs (keeping
    residuals, the fused gradient GEMMs of the streamed kernels).
    """
    return _FORWARD_ONLY.get()


def differentiable(name: str, *, wrt: tuple[str, ...], scalars: tuple[str, ...] = ()):
    """Register ``impl`` (returning ``(value, vjp)``) and return the public function."""

    def deco(impl: Callable) -> Callable:
        @functools.wraps(impl)
        def public(*args, **kwargs):
            token = _FORWARD_ONLY.set(True)
            try:
                return impl(*args, **kwargs)[0]
            finally:
                _FORWARD_ONLY.reset(token)

        entry = Entry(name=name, public=public, impl=impl, wrt=tuple(wrt),
                      scalars=tuple(scalars), signature=inspect.signature(impl))
        if name in _REGISTRY:
            raise RuntimeError(f"{name!r} registered twice")
        _REGISTRY[name] = entry
        public.__nce_ref__ = entry
        return public

    return deco


def registry() -> dict[str, Entry]:
    """All registered functions, by public name (importing every module first)."""
    import nce_ref  # noqa: F401  (registers the losses)
    import nce_ref.mi  # noqa: F401  (registers the bounds)

    return dict(_REGISTRY)


def lookup(f: Callable | str) -> Entry:
    """The :class:`Entry` of a registered function or public name."""
    if isinstance(f, str):
        reg = registry()
        key = f[len("nce_ref."):] if f.startswith("nce_ref.") else f
        if key not in reg:
            raise ValueError(f"unknown function {f!r}; registered: {', '.join(sorted(reg))}")
        return reg[key]
    entry = getattr(f, "__nce_ref__", None)
    if entry is None:
        raise TypeError(
            f"{getattr(f, '__name__', f)!r} is not a differentiable nce_ref function; "
            "value_and_grad takes nce_ref's registered functions (see nce_ref.autodiff.registry())"
        )
    return entry


def _check_cotangent(value, cotangent, name):
    if value.ndim == 0:
        if cotangent is None:
            return None
        if is_array_api_obj(cotangent):
            if cotangent.ndim != 0:
                raise ValueError(
                    f"`cotangent` must be a scalar for {name}'s 0-d output; got shape "
                    f"{tuple(cotangent.shape)}")
            return cotangent
        if isinstance(cotangent, (int, float)) and not isinstance(cotangent, bool):
            return float(cotangent)
        raise TypeError(f"`cotangent` must be a float or a 0-d array; got {type(cotangent).__name__}")
    if cotangent is None:
        raise ValueError(
            f"{name} returned an array of shape {tuple(value.shape)} (e.g. reduction='none'); "
            "pass `cotangent=` with that shape to get gradients of <cotangent, value>")
    if not is_array_api_obj(cotangent):
        raise TypeError(f"`cotangent` must be an array of shape {tuple(value.shape)}; "
                        f"got {type(cotangent).__name__}")
    if tuple(cotangent.shape) != tuple(value.shape):
        raise ValueError(f"`cotangent` must have shape {tuple(value.shape)}; got "
                         f"{tuple(cotangent.shape)}")
    xp = array_namespace(value)
    if array_namespace(cotangent).__name__ != xp.__name__:
        raise TypeError("`cotangent` must come from the same array library as the inputs")
    return cotangent


def _as_cotangent(value, cotangent):
    """Cotangent as an array of the value's namespace, dtype and device."""
    xp = array_namespace(value)
    if cotangent is None:
        return xp.ones_like(value)
    if is_array_api_obj(cotangent):
        return xp.astype(cotangent, value.dtype)
    return xp.full_like(value, cotangent)


def vjp(f: Callable | str, /, *args, **kwargs):
    """Evaluate ``f(*args, **kwargs)`` and return ``(value, vjp_fn)``.

    ``vjp_fn(cotangent=None)`` returns a dict ``{argument name: gradient of
    <cotangent, value>}`` for every floating array argument and scalar parameter.
    ``cotangent`` defaults to 1 for a 0-d value and is required otherwise.

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]]); k = np.array([[1.0, 0.2], [0.1, 1.0]])
    >>> value, back = nce_ref.vjp(nce_ref.info_nce, q, k, reduction="none")
    >>> sorted(back(np.ones(2)))
    ['key', 'query', 'temperature']
    """
    entry = lookup(f)
    token = _FORWARD_ONLY.set(False)
    try:
        value, back = entry.impl(*args, **kwargs)
    finally:
        _FORWARD_ONLY.reset(token)

    def vjp_fn(cotangent=None):
        ct = _check_cotangent(value, cotangent, entry.name)
        return back(_as_cotangent(value, ct))

    return value, vjp_fn


def value_and_grad(f: Callable | str) -> Callable:
    """Return a function computing ``f``'s value and its analytic gradients.

    The returned function has ``f``'s signature plus an optional keyword
    ``cotangent=``; it returns ``(value, grads)`` where ``grads`` is a dict keyed by
    argument name holding the gradient of ``<cotangent, value>`` with respect to
    every floating array argument (same shape, dtype and device) and every scalar
    parameter such as ``temperature`` (a 0-d array: of the parameter's dtype when it
    was given as an array, of the output dtype when it was a Python float).
    ``cotangent`` defaults to 1 when the value is 0-d and is required otherwise
    (``reduction="none"``).

    The gradients are the hand-derived ones registered with ``f`` (derivations in
    ``docs/derivations.md``); no autodiff library is involved.

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.standard_normal((8, 4)), rng.standard_normal((8, 4))
    >>> loss, g = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, temperature=0.5)
    >>> g["query"].shape, g["key"].shape, g["temperature"].shape
    ((8, 4), (8, 4), ())
    """
    entry = lookup(f)

    @functools.wraps(entry.public)
    def wrapped(*args, cotangent=None, **kwargs):
        value, back = vjp(entry.public, *args, **kwargs)
        return value, back(cotangent)

    wrapped.__doc__ = (f"Value and analytic gradients of nce_ref.{entry.name}; "
                       "see nce_ref.value_and_grad.")
    return wrapped


def same_device(x, ref):
    """True when ``x`` lives on ``ref``'s device (used by tests and bridges)."""
    return device(x) == device(ref)
