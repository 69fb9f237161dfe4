"""Independent high-precision oracles (mpmath, 50 digits) for the registered functions.

Each module of this package defines ``ORACLES = {public name: fn}``, where ``fn``
takes the public function's arguments as NumPy float64 arrays (and the same
options) and returns the value as a float64 NumPy array, computed by a naive,
loop-based formulation written independently of the library's kernels.
Discovery is automatic: adding a module adds its oracles.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

__all__ = ["oracles", "oracle_for"]


def oracles() -> dict[str, Callable]:
    out: dict[str, Callable] = {}
    for mod in pkgutil.iter_modules(__path__):
        m = importlib.import_module(f"{__name__}.{mod.name}")
        out.update(getattr(m, "ORACLES", {}))
    return out


def oracle_for(name: str) -> Callable | None:
    return oracles().get(name)
