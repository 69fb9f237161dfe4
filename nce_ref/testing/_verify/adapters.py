"""Framework adapters: call a user's NumPy, PyTorch or JAX function on a case and get
its value (as a float64 NumPy array) and, where the framework differentiates, a
function that returns its gradients for a cotangent.

Also what :func:`~nce_ref.testing.verify` reads from the implementation itself: its
signature (:func:`impl_signature`), its display name (:func:`impl_name`) and its
framework (:func:`detect_framework`).

``nce_ref.interop`` goes the other way (it wraps nce_ref's functions as
``torch.autograd.Function`` / ``jax.custom_vjp``) and has no conversion helper to
share: here the user's function is the one differentiated, by the framework's own
autodiff, from leaves made out of the case's NumPy arrays.  torch and JAX are
imported only inside the adapters' methods.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
from dataclasses import dataclass

import numpy as np

__all__ = ["ADAPTERS", "FRAMEWORKS", "Adapter", "ImplSig", "NonArray", "detect_framework",
           "impl_name", "impl_signature"]

FRAMEWORKS = ("torch", "jax", "numpy")


class NonArray(Exception):
    """The implementation returned something that is not an array of its framework."""


def describe_out(out, wanted: str) -> str:
    """Why ``out`` is not ``wanted`` (``"a torch.Tensor"``...), for :class:`NonArray`."""
    if isinstance(out, (tuple, list)):
        return f"returned a {type(out).__name__} of {len(out)} items, not {wanted}"
    shape = getattr(out, "shape", None)
    t = f"{type(out).__module__}.{type(out).__name__}"
    if shape is not None:
        return f"returned a {t} of dtype {getattr(out, 'dtype', '?')}, not {wanted} of floats"
    return f"returned a {t} ({repr(out)[:40]}), not {wanted}"


def _unimportable(module: str) -> str | None:
    """None when ``module`` imports, else the reason it does not."""
    try:
        __import__(module)
    except Exception as exc:
        return f"framework '{module}' is not importable ({type(exc).__name__}: {exc})"
    return None


class Adapter:
    """NumPy: the implementation receives NumPy arrays; values only, no gradients.

    :meth:`call` returns ``(value as float64 ndarray, grad_fn, mutated names)``:
    ``grad_fn(cotangent)`` maps each differentiated name to its float64 gradient (None
    where the output does not depend on it), or is None when the framework does not
    differentiate; ``mutated`` names the inputs the implementation changed in place.
    """

    name = "numpy"
    differentiates = False

    def unavailable(self) -> str | None:
        """None when the framework can be used, else the reason (NumPy always can)."""
        return None if self.name == "numpy" else _unimportable(self.name)

    def call(self, impl, pos, kw, diff, dtype):
        """Run ``impl`` on copies of the inputs in ``dtype`` (``diff`` is ignored)."""
        conv = {}

        def cv(name, v):
            if isinstance(v, np.ndarray):
                a = np.array(v, dtype=dtype) if v.dtype.kind == "f" else v.copy()
                conv[name] = (a, a.copy())
                return a
            return v

        args = [cv(n, v) for n, v in pos]
        kwargs = {n: cv(n, v) for n, v in kw.items()}
        out = impl(*args, **kwargs)
        if not isinstance(out, (np.ndarray, np.generic)) or out.dtype.kind not in "fiu":
            raise NonArray(describe_out(out, "a NumPy array"))
        mutated = [n for n, (a, orig) in conv.items() if not np.array_equal(a, orig, equal_nan=True)]
        return np.asarray(out, dtype=np.float64), None, mutated


class _Torch(Adapter):
    """PyTorch: CPU tensors from ``torch.from_numpy``; gradients by ``torch.autograd.grad``."""

    name = "torch"
    differentiates = True

    @staticmethod
    def _tensors(pos, kw, diff, dtype):
        """The arguments as tensors: ``(args, kwargs, leaves, originals)``.

        Floating arrays become tensors of ``dtype`` (leaves requiring grad when named in
        ``diff``), other arrays tensors of their own dtype, and a scalar named in
        ``diff`` a 0-d leaf; ``originals`` keeps each floating array's NumPy copy to
        detect in-place changes.
        """
        import torch

        leaves, conv = {}, {}

        def cv(name, v):
            if isinstance(v, np.ndarray):
                if v.dtype.kind != "f":
                    return torch.from_numpy(v.copy())
                orig = np.array(v, dtype=dtype)
                t = torch.from_numpy(orig.copy())
                if name in diff:
                    t.requires_grad_(True)
                    leaves[name] = t
                conv[name] = (t, orig)
                return t
            if name in diff:
                t = torch.tensor(float(v), dtype=getattr(torch, dtype), requires_grad=True)
                leaves[name] = t
                return t
            return v

        args = [cv(n, v) for n, v in pos]
        kwargs = {n: cv(n, v) for n, v in kw.items()}
        return args, kwargs, leaves, conv

    def call(self, impl, pos, kw, diff, dtype):
        """Run ``impl`` under ``torch.enable_grad()``."""
        import torch

        args, kwargs, leaves, conv = self._tensors(pos, kw, diff, dtype)
        with torch.enable_grad():
            out = impl(*args, **kwargs)
        if not isinstance(out, torch.Tensor) or not (out.is_floating_point() or out.dtype == torch.int64):
            raise NonArray(describe_out(out, "a torch.Tensor"))
        value = out.detach().to(device="cpu", dtype=torch.float64).numpy()
        mutated = [n for n, (t, orig) in conv.items()
                   if not np.array_equal(t.detach().numpy(), orig, equal_nan=True)]

        def grad_fn(ct):
            if not leaves:
                return {}
            if not out.requires_grad:
                return {n: None for n in leaves}
            g_out = torch.ones_like(out) if ct is None else torch.from_numpy(
                np.array(ct, dtype=dtype)).to(device=out.device, dtype=out.dtype)
            with torch.enable_grad():
                gs = torch.autograd.grad(out, list(leaves.values()), grad_outputs=g_out,
                                         allow_unused=True)
            return {n: None if g is None else g.detach().to("cpu", torch.float64).numpy()
                    for n, g in zip(leaves, gs)}

        return value, grad_fn, mutated


class _Jax(Adapter):
    """JAX: arrays from ``jnp.asarray`` (float64 under ``jax.enable_x64``); gradients by ``jax.vjp``."""

    name = "jax"
    differentiates = True

    @staticmethod
    def _x64(dtype):
        """A context with x64 enabled for float64 (a no-op when it already is, or for float32)."""
        import jax

        if dtype == "float64" and not jax.config.jax_enable_x64:
            return jax.enable_x64(True)
        return contextlib.nullcontext()

    @staticmethod
    def _closure(impl, pos, kw, diff, dtype):
        """``(fun, primals, names)``: ``impl`` as a function of the differentiated inputs only."""
        import jax.numpy as jnp

        vals = {}

        def cv(name, v):
            if isinstance(v, np.ndarray):
                a = jnp.asarray(np.array(v, dtype=dtype)) if v.dtype.kind == "f" else jnp.asarray(v)
            elif name in diff:
                a = jnp.asarray(float(v), dtype=dtype)
            else:
                return v
            vals[name] = a
            return a

        args = [cv(n, v) for n, v in pos]
        kwargs = {n: cv(n, v) for n, v in kw.items()}
        dnames = [n for n in vals if n in diff]
        pos_names = [n for n, _ in pos]

        def fun(*dv):
            sub = dict(zip(dnames, dv))
            a = [sub.get(n, x) for n, x in zip(pos_names, args)]
            k = {n: sub.get(n, x) for n, x in kwargs.items()}
            return impl(*a, **k)

        return fun, [vals[n] for n in dnames], dnames

    @staticmethod
    def _trace(fun, primals):
        """``(out, vjp_fn, why)``: ``jax.vjp`` of ``fun``, or its plain value and why it failed."""
        import jax

        if not primals:
            return fun(), None, None
        try:
            out, vjp_fn = jax.vjp(fun, *primals)
        except Exception as exc:  # not traceable: get the value, report the gradient
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return fun(*primals), None, why
        return out, vjp_fn, None

    def call(self, impl, pos, kw, diff, dtype):
        """Run ``impl`` under ``jax.vjp`` with respect to the inputs named in ``diff``."""
        import jax
        import jax.numpy as jnp

        with self._x64(dtype):
            fun, primals, dnames = self._closure(impl, pos, kw, diff, dtype)
            out, vjp_fn, why = self._trace(fun, primals)
            if not isinstance(out, jax.Array):
                raise NonArray(describe_out(out, "a jax.Array"))
            value = np.asarray(out, dtype=np.float64)

        def grad_fn(ct):
            if not dnames:
                return {}
            if vjp_fn is None:
                raise RuntimeError(f"JAX cannot differentiate the implementation ({why})")
            with self._x64(dtype):
                g_out = jnp.ones_like(out) if ct is None else jnp.asarray(np.array(ct, dtype=dtype))
                gs = vjp_fn(g_out.astype(out.dtype))
                return {n: np.asarray(g, dtype=np.float64) for n, g in zip(dnames, gs)}

        return value, grad_fn, []


#: the adapter of each framework name
ADAPTERS = {"torch": _Torch(), "jax": _Jax(), "numpy": Adapter()}


# ----------------------------------------------------------------------------------
# what the implementation is
# ----------------------------------------------------------------------------------

@dataclass
class ImplSig:
    """How many positional arguments the implementation takes, and which keywords."""

    max_positional: float
    keywords: frozenset | None  # None: takes any keyword
    min_positional: int = 0     # positional parameters without a default
    constants: tuple = ()       # inputs it treats as constants (``impl.verify_constants``)

    def accepts(self, name: str) -> bool:
        """Whether ``name`` may be passed by keyword."""
        return self.keywords is None or name in self.keywords


def impl_signature(impl) -> ImplSig:
    """The implementation's :class:`ImplSig` (a ``torch.nn.Module``'s ``forward`` is read)."""
    constants = tuple(getattr(impl, "verify_constants", ()) or ())
    try:
        sig = inspect.signature(impl)
    except (TypeError, ValueError):
        return ImplSig(math.inf, frozenset(), 0, constants)
    kinds = [p.kind for p in sig.parameters.values()]
    if kinds == [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]:
        fwd = getattr(impl, "forward", None)  # torch.nn.Module
        if callable(fwd):
            out = impl_signature(fwd)
            return ImplSig(out.max_positional, out.keywords, out.min_positional,
                           constants or out.constants)
    npos, kw, any_kw, required = 0.0, set(), False, 0
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            npos += 1
            required += p.default is inspect.Parameter.empty
        if p.kind == p.VAR_POSITIONAL:
            npos = math.inf
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            kw.add(p.name)
        if p.kind == p.VAR_KEYWORD:
            any_kw = True
    return ImplSig(npos, None if any_kw else frozenset(kw), required, constants)


def impl_name(impl) -> str:
    """``module.qualname`` of the implementation (``module.Class()`` for an instance)."""
    for obj in (impl, type(impl)):
        mod, qn = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if mod and qn:
            return f"{mod}.{qn}" if obj is impl else f"{mod}.{qn}()"
    return repr(impl)[:60]


_FW_MODULES = (("torch", ("torch",)), ("jax", ("jax", "jaxlib", "optax", "flax")))


def _pick(names: set) -> str | None:
    """The first framework (torch before jax) one of whose modules is in ``names``."""
    for fw, mods in _FW_MODULES:
        if names.intersection(mods):
            return fw
    return None


def _names_seen(impl) -> tuple[set[str], set[str]]:
    """``(code names, module names)``: the global names the implementation's code uses (one
    level into the functions it calls), and the top-level modules of it and its globals."""
    objs = [impl]
    for attr in ("func", "forward", "__call__", "__wrapped__"):  # partial, Module, wrapper
        f = getattr(impl, attr, None)
        if f is not None:
            objs.append(f)
    code_names: set[str] = set()
    module_names: set[str] = set()
    for obj in objs:
        fn = getattr(obj, "__func__", obj)
        mod = getattr(obj, "__module__", None) or getattr(type(obj), "__module__", None) or ""
        module_names.add(mod.split(".")[0])
        g = getattr(fn, "__globals__", None)
        if not isinstance(g, dict):
            g = vars(sys.modules[mod]) if mod in sys.modules else {}
        code = getattr(fn, "__code__", None)
        if code is not None:
            code_names.update(code.co_names)
            for name in code.co_names:
                callee = getattr(g.get(name), "__code__", None)
                if callee is not None:
                    code_names.update(callee.co_names)
        for v in g.values():
            if type(v).__name__ == "module":
                module_names.add(str(getattr(v, "__name__", "")).split(".")[0])
            else:
                module_names.add(str(getattr(v, "__module__", "") or "").split(".")[0])
    return code_names, module_names


def detect_framework(impl) -> tuple[str, str]:
    """Guess the framework: the names the implementation's code uses (``import torch``
    inside it), else its module's imports (torch before jax), else NumPy."""
    code_names, module_names = _names_seen(impl)
    fw = _pick(code_names)
    if fw is not None:
        return fw, f"framework '{fw}' detected from the names the implementation uses"
    fw = _pick(module_names)
    if fw is not None:
        return fw, f"framework '{fw}' detected from the implementation's module"
    return "numpy", "framework 'numpy' (no torch or jax seen in the implementation or its module)"
