"""Seeded test cases for every registered function: standard and edge cases.

Each module of this package defines ``CASES = {public name: fn(rng) -> list[Case]}``.
The cases are NumPy float64 inputs plus options; ``nce-ref check``, the tests and
``nce_ref.testing.verify`` share them.  Discovery is automatic.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Case", "cases_for", "all_cases"]


@dataclass
class Case:
    """One call: ``f(*args, **kwargs)``.

    ``kind`` is ``"standard"`` (random, well conditioned) or ``"edge"`` (a documented
    edge case); ``fd`` says whether finite differences are meaningful there (False
    next to a kink or where the values are too extreme for a 1e-6 step).
    """

    label: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    kind: str = "standard"
    fd: bool = True
    note: str = ""

    def describe(self) -> str:
        shapes = ", ".join(
            "x".join(map(str, a.shape)) if isinstance(a, np.ndarray) else repr(a) for a in self.args)
        opts = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.label} ({shapes}{'; ' + opts if opts else ''})"


def _providers() -> dict[str, Callable[[np.random.Generator], list[Case]]]:
    out: dict[str, Any] = {}
    for mod in pkgutil.iter_modules(__path__):
        m = importlib.import_module(f"{__name__}.{mod.name}")
        out.update(getattr(m, "CASES", {}))
    return out


def cases_for(name: str, *, seed: int = 0, which: str = "all") -> list[Case]:
    """The cases of one function (``which`` in ``"standard" | "edge" | "all"``)."""
    prov = _providers().get(name)
    if prov is None:
        return []
    cases = prov(np.random.default_rng(seed))
    return [c for c in cases if which == "all" or c.kind == which]


def all_cases(*, seed: int = 0, which: str = "all") -> dict[str, list[Case]]:
    return {name: cases_for(name, seed=seed, which=which) for name in _providers()}
