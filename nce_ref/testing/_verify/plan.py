"""Planning: which cases run, in which dtypes, and for each case which arguments go to
the implementation, which to the reference (with the convention's options), and which
gradients are compared.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ...autodiff import Entry
from ..cases import Case, cases_for
from .adapters import ImplSig

__all__ = ["ALIASES", "DTYPES", "REFERENCE_ONLY", "Alias", "Plan", "dedupe_key", "describe_plan",
           "plan_case", "resolve_aliases", "resolve_cases", "resolve_dtypes"]

#: options that change how nce_ref computes, not what: never passed to an implementation
REFERENCE_ONLY = frozenset({"block_size", "memory_budget", "check_finite", "xp"})

DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class Alias:
    """The implementation's name for a reference parameter; ``inverse``: it takes ``1/value``
    (a logit scale for a temperature)."""

    name: str
    inverse: bool = False

    def describe(self, ref: str) -> str:
        return f"`{self.name}` = 1/{ref}" if self.inverse else f"`{self.name}` = {ref}"


#: names recognised for a reference parameter the implementation does not take under its own
#: name (the first one the implementation's signature has is used)
ALIASES = {"temperature": (Alias("tau"), Alias("t"), Alias("T"), Alias("temp"),
                           Alias("logit_scale", True), Alias("inv_temperature", True),
                           Alias("inverse_temperature", True))}


def _parse_alias(ref: str, spec: str, entry: Entry) -> Alias:
    """``"tau"`` or ``"1/logit_scale"`` for the reference parameter ``ref``."""
    if ref not in entry.signature.parameters:
        raise ValueError(f"`params`: nce_ref.{entry.name} has no parameter {ref!r} "
                         f"(it has: {', '.join(entry.signature.parameters)})")
    spec = spec.strip()
    inverse = spec.startswith("1/")
    name = spec[2:].strip() if inverse else spec
    if not name.isidentifier():
        raise ValueError(f"`params`: {ref}={spec!r} must name a parameter of the implementation "
                         "('tau', or '1/logit_scale' for one that takes the inverse)")
    if inverse and ref not in entry.scalars:
        raise ValueError(f"`params`: only a scalar parameter can be given as an inverse; {ref!r} is not")
    return Alias(name, inverse)


def resolve_aliases(entry: Entry, sig: ImplSig, params: dict | None,
                    notes: list) -> dict[str, Alias]:
    """``{reference parameter: Alias}``: those the user maps (``params``), then the common
    aliases of :data:`ALIASES` for a parameter the implementation does not take under its
    own name but takes under an alias; each one adopted is said in ``notes``."""
    out: dict[str, Alias] = {}
    for ref, spec in (params or {}).items():
        a = _parse_alias(ref, spec, entry)
        if sig.keywords is not None and a.name not in sig.keywords:
            raise ValueError(f"`params`: the implementation takes no parameter {a.name!r} "
                             f"(it takes: {', '.join(sorted(sig.keywords)) or 'none by keyword'})")
        out[ref] = a
        notes.append(f"the implementation's {a.describe(ref)} (mapped by params=)")
    for ref, cands in ALIASES.items():
        if ref in out or ref not in entry.signature.parameters or sig.keywords is None \
                or ref in sig.keywords:
            continue
        for a in cands:
            if a.name in sig.keywords:
                out[ref] = a
                notes.append(f"the implementation's {a.describe(ref)} (a common alias; "
                             f"params={{'{ref}': ...}} or --param {ref}=NAME to choose another)")
                break
    return out


def resolve_dtypes(dtype: str | Sequence[str] | None) -> tuple[str, ...]:
    """The dtypes ``verify(dtype=...)`` asks for (None and ``"all"``: both)."""
    if dtype is None:
        dtypes = DTYPES
    elif isinstance(dtype, str):
        dtypes = DTYPES if dtype == "all" else (dtype,)
    else:
        dtypes = tuple(dtype)
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"`dtype` must be 'float64', 'float32' or both; got {d!r}")
    return dtypes


def resolve_cases(cases: str | Sequence[Case], name: str, seed: int) -> tuple[list[Case], str]:
    """``(cases, their name in the report)``: the registered set named by ``cases`` or the given list."""
    if not isinstance(cases, str):
        return list(cases), "custom"
    if cases not in ("standard", "edge", "all"):
        raise ValueError(f"`cases` must be 'standard', 'edge', 'all' or a list of Case; got {cases!r}")
    case_list = cases_for(name, seed=seed, which=cases)
    if not case_list:
        raise ValueError(f"no {cases!r} cases are registered for nce_ref.{name} "
                         "(nce_ref.testing.cases)")
    return case_list, cases


@dataclass
class Plan:
    """One case, resolved against the implementation's signature and the convention."""

    case: Case
    index: int
    entry: Entry
    pos: list          # [(reference name, value)] passed positionally to both
    impl_kw: dict      # keywords passed to the implementation
    ref_kw: dict       # keywords of the reference call
    diff: tuple        # names whose gradients are compared
    aliases: dict = field(default_factory=dict)  # {reference name: Alias} for the implementation
    na: str | None = None
    notes: list = field(default_factory=list)


def _short(v) -> str:
    """An option's value for a message (an array by its dtype and shape)."""
    if isinstance(v, np.ndarray):
        return f"<{v.dtype} array of shape {v.shape}>"
    return repr(v)


def _same(a, b) -> bool:
    """Option equality: same value (numbers compared as floats), never for arrays."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return False
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


def _is_number(v) -> bool:
    """A Python int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _split_options(plan: Plan, conv_opts: dict, sig: ImplSig, unsupported: dict) -> dict | None:
    """Give each of the case's options to the implementation (when it takes it) and the
    reference; return the reference's keywords, or None with ``plan.na`` set when the
    case needs an option the implementation or the convention lacks."""
    params = plan.entry.signature.parameters
    ref_kw = dict(conv_opts)
    for k, v in plan.case.kwargs.items():
        if k in REFERENCE_ONLY:
            continue
        if any(_same(v, u) for u in unsupported.get(k, ())):
            plan.na = f"the convention has no {k}={v!r}"
            return None
        if sig.accepts(k) or k in plan.aliases:
            plan.impl_kw[k] = v
            ref_kw[k] = v
        elif k in plan.entry.scalars:
            continue  # compared at the convention's (or the reference's) value
        else:
            default = params[k].default if k in params else inspect.Parameter.empty
            if not _same(v, conv_opts.get(k, default)):
                plan.na = f"the implementation takes no `{k}` (the case needs {k}={_short(v)})"
                return None
    return ref_kw


def _pass_scalars(plan: Plan, ref_kw: dict, sig: ImplSig) -> None:
    """Pass every scalar parameter the implementation takes explicitly, as a float."""
    params = plan.entry.signature.parameters
    for k in plan.entry.scalars:
        if k in plan.impl_kw or k in dict(plan.pos) or not (sig.accepts(k) or k in plan.aliases):
            continue
        v = ref_kw.get(k, params[k].default if k in params else None)
        if _is_number(v):
            plan.impl_kw[k] = float(v)
            ref_kw[k] = float(v)


def _differentiated(plan: Plan) -> tuple:
    """The names of ``wrt`` given to the implementation as floating arrays or numbers."""
    entry = plan.entry
    given = dict(plan.pos) | plan.impl_kw
    return tuple(
        n for n in entry.wrt if n in given and (
            (isinstance(given[n], np.ndarray) and given[n].dtype.kind == "f")
            or (n in entry.scalars and _is_number(given[n]))))


def plan_case(case: Case, index: int, entry: Entry, conv_opts: dict, sig: ImplSig,
              unsupported: dict, aliases: dict | None = None) -> Plan:
    """The :class:`Plan` of ``case``; ``plan.na`` says why it does not apply, if it does not."""
    pos = list(zip(entry.signature.parameters, case.args))
    plan = Plan(case, index, entry, pos, {}, {}, (), dict(aliases or {}))
    if len(case.args) > sig.max_positional:
        plan.na = (f"the implementation takes {int(sig.max_positional)} positional argument(s); "
                   f"the case passes {len(case.args)} ({', '.join(n for n, _ in pos)})")
        return plan
    if len(case.args) < sig.min_positional:
        plan.na = (f"the implementation requires {sig.min_positional} positional argument(s); "
                   f"the case passes {len(case.args)} ({', '.join(n for n, _ in pos)})")
        return plan
    ref_kw = _split_options(plan, conv_opts, sig, unsupported)
    if ref_kw is None:
        return plan
    _pass_scalars(plan, ref_kw, sig)
    plan.ref_kw = ref_kw
    plan.diff = tuple(n for n in _differentiated(plan) if n not in sig.constants)
    return plan


def dedupe_key(plan: Plan):
    """Plans with equal keys make the same calls (arrays compared by identity)."""
    def k(v):
        return ("arr", id(v)) if isinstance(v, np.ndarray) else ("val", repr(v))

    return (tuple(k(v) for _, v in plan.pos),
            tuple(sorted((n, k(v)) for n, v in plan.ref_kw.items())),
            tuple(sorted((n, k(v)) for n, v in plan.impl_kw.items())))


def describe_plan(plan: Plan) -> str:
    """The case's label, shapes and the options the implementation receives."""
    shapes = ", ".join("x".join(map(str, v.shape)) if isinstance(v, np.ndarray) else repr(v)
                       for _, v in plan.pos)
    opts = ", ".join(f"{k}={v!r}" for k, v in plan.impl_kw.items() if not isinstance(v, np.ndarray))
    return f"{plan.case.label} ({shapes}{'; ' + opts if opts else ''})"
