"""The gradient registry: every differentiable public function and its analytic VJP.

A differentiable function is written once as an *implementation* that returns
``(value, vjp)``, where ``vjp(cotangent)`` returns a dict of gradients keyed by
argument name.  :func:`differentiable` turns it into the public function (which
returns the value only) and registers it, so that :func:`value_and_grad`,
:func:`vjp`, the finite-difference checker, ``nce-ref check``, the verification
harness and the torch/JAX bridges work for every function without knowing it.

An implementation may take a keyword-only ``need_grad: bool``; the registry passes
it explicitly (``False`` from the public function, whose VJP is never asked for,
``True`` from :func:`vjp`), so that a plain call can skip the gradient's work.  It is
not part of the public signature.

This module is the bottom layer: it imports nothing of ``nce_ref`` above it.
No autodiff library is used anywhere: the VJPs are hand-derived (``docs/``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from array_api_compat import array_namespace, device, is_array_api_obj

__all__ = ["differentiable", "value_and_grad", "vjp", "registry", "lookup", "Entry"]


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
        Same signature; returns ``(value, vjp)`` (with the gradient's work done: it
        is the implementation called with ``need_grad=True`` where it takes that).
    wrt : tuple of str
        Arguments that receive gradients when given as floating arrays (or, for
        scalar parameters such as ``temperature``, always).
    scalars : tuple of str
        The subset of ``wrt`` that are scalar parameters (float or 0-d array).
    signature : inspect.Signature
    sharded : bool
        A function of one rank's shard of a batch (it takes a ``comm``); listed by
        ``registry(sharded=True)`` only.
    """

    name: str
    public: Callable
    impl: Callable
    wrt: tuple[str, ...]
    scalars: tuple[str, ...]
    signature: inspect.Signature
    sharded: bool = False


_REGISTRY: dict[str, Entry] = {}

_NEED_GRAD = "need_grad"


def differentiable(name: str, *, wrt: tuple[str, ...], scalars: tuple[str, ...] = (),
                   sharded: bool = False):
    """Register ``impl`` (returning ``(value, vjp)``) and return the public function.

    Registering the same function again (a module reloaded) replaces its entry;
    another function under a registered name raises ``RuntimeError``.
    """

    def deco(impl: Callable) -> Callable:
        sig = inspect.signature(impl)
        takes_flag = _NEED_GRAD in sig.parameters
        if takes_flag:
            sig = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != _NEED_GRAD])
            with_grad = functools.wraps(impl)(functools.partial(impl, need_grad=True))
        else:
            with_grad = impl

        @functools.wraps(impl)
        def public(*args, **kwargs):
            if takes_flag:
                return impl(*args, need_grad=False, **kwargs)[0]
            return impl(*args, **kwargs)[0]

        public.__signature__ = sig
        entry = Entry(name=name, public=public, impl=with_grad, wrt=tuple(wrt),
                      scalars=tuple(scalars), signature=sig, sharded=sharded)
        old = _REGISTRY.get(name)
        if old is not None and _qualified(old.public) != _qualified(public):
            raise RuntimeError(f"{name!r} registered twice: by {_qualified(old.public)} and "
                               f"{_qualified(public)}")
        _REGISTRY[name] = entry
        public.__nce_ref__ = entry
        return public

    return deco


def _qualified(f: Callable) -> str:
    return f"{f.__module__}.{f.__qualname__}"


def registry(*, sharded: bool = False) -> dict[str, Entry]:
    """The registered single-process functions (``sharded=True``: the sharded ones), by
    public name.

    Importing :mod:`nce_ref` (which any import of this module does first) registers
    every function of the library; the sharded ones register when
    :mod:`nce_ref.sharded` is imported.
    """
    return {k: e for k, e in _REGISTRY.items() if e.sharded == sharded}


def lookup(f: Callable | str) -> Entry:
    """The :class:`Entry` of a registered function or public name."""
    if isinstance(f, str):
        reg = dict(_REGISTRY)
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
    value, back = entry.impl(*args, **kwargs)

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
