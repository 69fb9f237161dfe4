"""Diagnosis: name the bug from the pattern of errors across cases.

Wrong shapes point at an ignored option; gradients wrong where values agree point at
the backward pass; for value mismatches the reference is rerun under every other known
convention and variant (``nce_ref.testing.conventions``) and those that reproduce the
implementation's values, the wrong ones and the right ones alike, are named.  What no
candidate explains is described by its :func:`~.compare.value_hint`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...autodiff import Entry
from .. import conventions
from .compare import compare_value, reference, value_hint
from .report import VerifyReport, opts_text
from .run import Outcome

__all__ = ["diagnose_report"]


@dataclass
class _Candidate:
    """One way the implementation may differ from the reference: another convention, a
    variant (possibly of another registered function) or a fixed temperature."""

    description: str
    reference: str
    options: Any          # dict (resolved per dtype through `per_dtype`) or a Variant
    scale: float = 1.0
    convention: Any = None  # a Convention: its options apply where the impl took no keyword

    def kwargs(self, o: Outcome) -> dict:
        """The reference's keywords for the case of ``o`` under this candidate."""
        kw = dict(o.plan.ref_kw)
        if self.convention is not None:
            opts = self.convention.options_for(o.result.dtype)
            kw.update({k: v for k, v in opts.items() if k not in o.plan.impl_kw})
        elif isinstance(self.options, conventions.Variant):
            params = o.plan.entry.signature.parameters
            effective = {k: p.default for k, p in params.items()
                         if p.default is not inspect.Parameter.empty} | o.plan.ref_kw
            kw.update(self.options.resolve(effective))
        else:
            kw.update(self.options)
        return kw


def _candidates(entry: Entry, conv, temperature_taken: bool) -> list[_Candidate]:
    """Every candidate for ``entry`` but the requested convention ``conv``; fixed
    temperatures only when the implementation takes none."""
    out = []
    for c in conventions.for_reference(entry.name):
        if conv is not None and c.name == conv.name:
            continue
        out.append(_Candidate(f"convention {c.describe()}", entry.name, None, c.scale, c))
    for v in conventions.variants_for(entry.name):
        out.append(_Candidate(v.description, v.reference or entry.name, v))
    if not temperature_taken and "temperature" in entry.scalars:
        temps = sorted({float(c.options["temperature"]) for c in conventions.CONVENTIONS
                        if isinstance(c.options.get("temperature"), float)} | {0.05, 0.2, 1.0})
        for t in temps:
            out.append(_Candidate(f"temperature={t:g} (the implementation takes no temperature)",
                                  entry.name, {"temperature": t}))
    return out


def _agrees(entry: Entry, cand: _Candidate, ent: Entry, o: Outcome) -> bool | None:
    """Whether the implementation's value equals the reference under ``cand`` (None: n/a)."""
    try:
        kw = cand.kwargs(o)
    except Exception:
        return None
    if cand.reference == entry.name and kw == o.plan.ref_kw and cand.scale == 1.0:
        return None
    try:
        with np.errstate(all="ignore"):
            alt, _ = reference(entry, o.plan, kw, o.result.dtype, None, grads=False,
                               alternative=ent)
    except Exception:
        return None
    alt = alt * cand.scale
    if alt.shape != o.got.shape:
        return None
    return compare_value(o.got, alt, o.result.dtype, o.rtol, o.atol)[0]


def _structural(outcomes: list[Outcome]) -> list[str]:
    """Diagnoses that need no rerun: wrong shapes, and gradients wrong where values agree."""
    out = []
    shape_fails = [o for o in outcomes if o.result.problem == "shape"]
    grad_only = [o for o in outcomes if o.result.status == "fail" and o.value_ok
                 and any(not g["ok"] for g in o.result.grads.values())]
    if shape_fails:
        opts = sorted({opts_text({k: v for k, v in o.plan.ref_kw.items() if k == "reduction"})
                       for o in shape_fails})
        out.append(f"{len(shape_fails)} case(s) return the wrong shape ({'; '.join(opts)}): is an "
                   "option such as `reduction` ignored by the implementation?")
    factor = _gradient_factor(grad_only)
    if factor:
        out.append(factor)
    if grad_only:
        names = sorted({n for o in grad_only for n, g in o.result.grads.items() if not g["ok"]})
        out.append(
            f"values agree but the gradient of {', '.join(f'`{n}`' for n in names)} differs in "
            f"{len(grad_only)} case(s): the derivative the framework computes is not that of the "
            "reference's formula there (a custom or detached backward, a Python-float "
            "conversion, or a change of formula that moves the gradient more than the value, "
            "such as an eps inside a norm)")
    return out


def _close(a: float, b: float, rtol: float = 1e-3) -> bool:
    return abs(a - b) <= rtol * abs(b)


def _gradient_factor(grad_only: list[Outcome]) -> str:
    """Name the gradients that are the reference's times a factor in every failing case:
    the case's temperature (a missing 1/τ in the backward), 1/τ (an extra one), or a
    constant.  Gradients of other shapes (not connected, not proportional) are left to
    the other diagnoses."""
    per_name: dict[str, list] = {}
    for o in grad_only:
        t = o.plan.ref_kw.get("temperature")
        t = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None
        for n, g in o.result.grads.items():
            if not g["ok"]:
                per_name.setdefault(n, []).append((g.get("ratio"), t))
    found: dict[str, list] = {}
    for n, rows in per_name.items():
        if any(r is None for r, _ in rows):
            continue
        temps = {t for _, t in rows}
        varied = len(temps) > 1 or temps != {1.0}
        if varied and all(t is not None and _close(r, t) for r, t in rows):
            kind = "tau"
        elif varied and all(t is not None and _close(r, 1 / t) for r, t in rows):
            kind = "inv"
        elif all(_close(r, rows[0][0]) for r, _ in rows):
            kind = f"const {rows[0][0]:.6g}"
        else:
            continue
        found.setdefault(kind, []).append(n)
    out = []
    for kind, names in found.items():
        which = ", ".join(f"`{n}`" for n in sorted(names))
        k = len(per_name[names[0]])
        if kind == "tau":
            temps = sorted({f"{t:g}" for _, t in per_name[names[0]]}, key=float)
            out.append(f"the gradient of {which} is the reference's times the case's temperature "
                       f"in all {k} case(s) where it fails (factors {', '.join(temps)}): a missing "
                       "1/τ in the backward pass (a custom backward that does not divide the "
                       "logits' gradient by the temperature)")
        elif kind == "inv":
            out.append(f"the gradient of {which} is the reference's divided by the case's "
                       f"temperature in all {k} case(s) where it fails: an extra 1/τ in the "
                       "backward pass")
        else:
            out.append(f"the gradient of {which} is the reference's times {kind[6:]} in all {k} "
                       "case(s) where it fails: a constant factor in the backward pass (a "
                       "reduction's scale, a factor 2, a missing 1/N)")
    return "; ".join(out)


def _explaining(entry: Entry, conv, outcomes: list[Outcome], value_fails: list[Outcome]) -> list:
    """``[(description, mismatches matched, mismatches, hit per mismatch)]`` for each
    candidate that matches some mismatch and every value the implementation got right."""
    from ...autodiff import registry

    reg = registry()
    agreeing = [o for o in outcomes if o.value_ok and o.got is not None
                and o.result.status in ("pass", "fail")]
    explained = []
    for cand in _candidates(entry, conv, all("temperature" in o.plan.impl_kw for o in value_fails)):
        ent = reg.get(cand.reference)
        if ent is None:
            continue
        hit = [bool(_agrees(entry, cand, ent, o)) for o in value_fails]
        if any(hit) and all(_agrees(entry, cand, ent, o) is not False for o in agreeing):
            explained.append((cand.description, sum(hit), len(value_fails), hit))
    return explained


def _unexplained(entry: Entry, explained: list, value_fails: list[Outcome]) -> str:
    """The line for the mismatches no candidate explains: their commonest hints."""
    unexplained = value_fails
    if explained:
        unexplained = [o for o, h in zip(value_fails, explained[0][3]) if not h]
    hints = [h for h in (value_hint(o.got, o.want) for o in unexplained) if h]
    distinct = sorted(set(hints), key=lambda h: (-hints.count(h), h))[:3]
    lead = ("the other" if explained else
            f"no known convention or variant of nce_ref.{entry.name} explains the")
    text = "; ".join(f"{hints.count(h)} {h}" for h in distinct)
    return (f"{lead} {len(unexplained)} value mismatch(es)"
            + (f": {text}" if text else
               (" are unexplained: see the failing cases above" if explained else
                ": see the failing cases above")))


def _by_convention(entry: Entry, conv, outcomes: list[Outcome],
                   value_fails: list[Outcome]) -> list[str]:
    """Diagnoses of the value mismatches: the candidates that explain all of them, else
    those that explain some, then what is left unexplained."""
    explained = _explaining(entry, conv, outcomes, value_fails)
    full = [e for e in explained if e[1] == e[2]]
    wanted = f" (the requested convention is {conv.describe()})" if conv else ""
    if full:
        return [f"the implementation follows {desc}: it matches the {n} value mismatch(es) "
                f"and every agreeing value{wanted}" for desc, _, n, _ in full[:4]]
    explained.sort(key=lambda e: -e[1])
    out = [f"{k} of the {n} value mismatches (and every agreeing value) match nce_ref under: {desc}"
           for desc, k, n, _ in explained[:3]]
    return out + [_unexplained(entry, explained, value_fails)]


def diagnose_report(entry: Entry, conv, outcomes: list[Outcome], report: VerifyReport) -> None:
    """Append to ``report.diagnosis`` what the pattern of failures says about the bug."""
    report.diagnosis += _structural(outcomes)
    value_fails = [o for o in outcomes if o.result.status == "fail" and not o.value_ok
                   and o.got is not None and o.got.shape == o.want.shape]
    if value_fails:
        report.diagnosis += _by_convention(entry, conv, outcomes, value_fails)
