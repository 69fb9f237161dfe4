"""Central finite-difference check of the registered analytic gradients (float64)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..autodiff import lookup, vjp
from ._tolerances import FD_ATOL, FD_EPS, FD_RTOL

__all__ = ["check_grad", "GradCheckError", "GradReport", "numeric_grad"]


class GradCheckError(AssertionError):
    """An analytic gradient disagrees with finite differences."""


@dataclass
class GradReport:
    """What :func:`check_grad` compared: the worst error per argument."""

    function: str
    max_abs_err: dict[str, float] = field(default_factory=dict)
    max_rel_err: dict[str, float] = field(default_factory=dict)

    @property
    def worst_abs(self) -> float:
        return max(self.max_abs_err.values(), default=0.0)

    @property
    def worst_rel(self) -> float:
        return max(self.max_rel_err.values(), default=0.0)


def _scalar_fn(entry, bound: inspect.BoundArguments, name: str, v: np.ndarray | None):
    """x -> <v, f(..., name=x, ...)> as a Python float."""

    def fn(x):
        args = dict(bound.arguments)
        args[name] = x
        b = entry.signature.bind_partial()
        b.arguments.update(args)
        out = np.asarray(entry.public(*b.args, **b.kwargs), dtype=np.float64)
        return float(np.sum(out * v)) if v is not None else float(out)

    return fn


def numeric_grad(fn: Callable[[Any], float], x: Any, *, eps: float = FD_EPS):
    """Central differences of a scalar function of an array or float, element by element."""
    if isinstance(x, float):
        h = eps * max(1.0, abs(x))
        return (fn(x + h) - fn(x - h)) / (2 * h)
    x = np.array(x, dtype=np.float64, copy=True)
    h = eps * max(1.0, float(np.max(np.abs(x))) if x.size else 1.0)
    g = np.zeros_like(x)
    flat = x.reshape(-1)
    gf = g.reshape(-1)
    for idx in range(flat.size):
        old = flat[idx]
        flat[idx] = old + h
        fp = fn(x.copy())
        flat[idx] = old - h
        fm = fn(x.copy())
        flat[idx] = old
        gf[idx] = (fp - fm) / (2 * h)
    return g


def check_grad(f: Callable | str, /, *args, wrt: tuple[str, ...] | None = None,
               cotangent: np.ndarray | None = None, eps: float = FD_EPS,
               rtol: float = FD_RTOL, atol: float = FD_ATOL, n_directions: int = 3,
               full_jacobian_max_size: int = 64, seed: int = 0, raise_on_fail: bool = True,
               **kwargs) -> GradReport:
    r"""Check ``f``'s registered analytic gradient against central finite differences.

    Runs in NumPy float64 (inputs of another dtype are refused).  For an argument
    with at most ``full_jacobian_max_size`` entries every element is perturbed
    (step :math:`h = \text{eps}\cdot\max(1, \lVert x\rVert_\infty)`) and compared
    element by element; for larger ones ``n_directions`` random unit directions
    :math:`u` compare :math:`\langle u, \nabla\rangle` with
    :math:`(F(x+hu) - F(x-hu))/2h`.  :math:`F = \langle v, f\rangle` for a random
    cotangent :math:`v` when the output is not a scalar.  An entry passes when
    :math:`|a - n| \le \text{atol} + \text{rtol}\max(|a|, |n|)`.

    Parameters
    ----------
    f : registered nce_ref function or its name
    *args, **kwargs
        The call to check (NumPy float64 arrays).
    wrt : tuple of str, optional
        Arguments to check (default: all that receive gradients).
    cotangent : ndarray, optional
        For non-scalar outputs (default: seeded random normal).

    Returns
    -------
    GradReport

    Raises
    ------
    GradCheckError
        Naming the function, the argument, the element or direction, the analytic
        and numeric values and the relative error.

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> from nce_ref.testing import check_grad
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    >>> report = check_grad(nce_ref.info_nce, q, k, temperature=0.3)
    >>> report.worst_rel < 1e-5
    True
    """
    entry = lookup(f)
    bound = entry.signature.bind(*args, **kwargs)
    for name, val in bound.arguments.items():
        if isinstance(val, np.ndarray) and np.issubdtype(val.dtype, np.floating) and val.dtype != np.float64:
            raise TypeError(f"check_grad runs in float64; `{name}` is {val.dtype}")
    rng = np.random.default_rng(seed)
    value, back = vjp(entry.public, *bound.args, **bound.kwargs)
    value = np.asarray(value)
    if value.ndim == 0:
        v = None
        grads = back(None)
    else:
        v = rng.standard_normal(value.shape) if cotangent is None else np.asarray(cotangent)
        grads = back(v)
    names = [n for n in (wrt or entry.wrt) if n in grads]
    report = GradReport(function=entry.name)
    failures = []
    for name in names:
        x = bound.arguments.get(name, entry.signature.parameters[name].default)
        if not isinstance(x, np.ndarray):
            x = float(x)
        analytic = np.asarray(grads[name], dtype=np.float64)
        fn = _scalar_fn(entry, bound, name, v)
        if isinstance(x, float) or x.size <= full_jacobian_max_size:
            numeric = np.asarray(numeric_grad(fn, x, eps=eps))
            an, nu = analytic.reshape(-1), numeric.reshape(-1)
            labels = [f"element {np.unravel_index(i, analytic.shape) if analytic.ndim else ()}"
                      for i in range(an.size)]
        else:
            h = eps * max(1.0, float(np.max(np.abs(x))))
            an, nu, labels = [], [], []
            for k in range(n_directions):
                u = rng.standard_normal(x.shape)
                u /= np.linalg.norm(u)
                an.append(float(np.sum(analytic * u)))
                nu.append((fn(x + h * u) - fn(x - h * u)) / (2 * h))
                labels.append(f"random direction {k}")
            an, nu = np.asarray(an), np.asarray(nu)
        err = np.abs(an - nu)
        scale = np.maximum(np.abs(an), np.abs(nu))
        rel = np.where(scale > 0, err / np.where(scale > 0, scale, 1.0), 0.0)
        report.max_abs_err[name] = float(np.max(err)) if err.size else 0.0
        report.max_rel_err[name] = float(np.max(np.where(err > atol, rel, 0.0))) if err.size else 0.0
        bad = err > atol + rtol * scale
        if np.any(bad):
            i = int(np.argmax(np.where(bad, err - rtol * scale, -math.inf)))
            failures.append(
                f"{entry.name}: gradient of `{name}` at {labels[i]}: analytic {an[i]:.12g}, "
                f"numeric {nu[i]:.12g}, abs err {err[i]:.3g}, rel err {rel[i]:.3g} "
                f"(rtol {rtol:g}, atol {atol:g}; {int(np.sum(bad))} of {bad.size} entries off)")
    if failures and raise_on_fail:
        raise GradCheckError("\n".join(failures))
    return report
