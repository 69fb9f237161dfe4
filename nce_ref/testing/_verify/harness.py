"""The harness: :func:`verify`, from its arguments to the report.

Each step is a function of its own module: choosing the framework's adapter
(:mod:`.adapters`), the cases and the conventions' options (:mod:`.plan`), running a
case (:mod:`.run`) and naming the bug (:mod:`.diagnose`); the report is :mod:`.report`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ...autodiff import Entry
from .. import conventions
from ..cases import Case
from .adapters import ADAPTERS, FRAMEWORKS, Adapter, ImplSig, detect_framework, impl_name, impl_signature
from .compare import DEVIATIONS
from .diagnose import diagnose_report
from .guide import adapters_for, explain_errors, layout_hint, lookup_reference
from .plan import REFERENCE_ONLY, dedupe_key, plan_case, resolve_aliases, resolve_cases, resolve_dtypes
from .report import CaseResult, VerifyError, VerifyReport
from .run import Outcome, run_case

__all__ = ["verify"]


def verify(impl: Callable, reference: Callable | str, *, convention: str | None = None,
           framework: str | None = None, cases: str | Sequence[Case] = "standard",
           dtype: str | Sequence[str] | None = None, grads: bool = True, seed: int = 0,
           diagnose: bool = True, params: dict[str, str] | None = None,
           accept: Sequence[str] | str | None = None) -> VerifyReport:
    """Verify an implementation's values and gradients against nce_ref's.

    Parameters
    ----------
    impl : callable
        The implementation.  It is called like ``reference`` (arrays positional,
        in the reference's order; options by keyword, for those it takes) with
        arrays of its framework, and must return an array of that framework.  A
        ``torch.nn.Module`` works (its ``forward`` signature is read).
    reference : nce_ref function or its registered name
        ``nce_ref.info_nce``, ``"nt_xent"``, ``"mi.nwj"``...
    convention : str, optional
        A library whose defaults ``impl`` follows (``"info_nce_pytorch"``,
        ``"lightly"``, ``"pytorch_metric_learning"``, ``"optax"``, ``"open_clip"``,
        ``"supcontrast"``...; see ``nce_ref.testing.conventions``): the reference is
        called with the options that reproduce it.
    framework : {"torch", "jax", "numpy"}, optional
        Default: the convention's, else detected from ``impl``'s module.
    cases : {"standard", "edge", "all"} or list of Case, default "standard"
        The registered cases of ``reference`` (``nce_ref.testing.cases``), or your own.
    dtype : str or sequence of str, optional
        ``"float64"``, ``"float32"`` or both (default both).
    grads : bool, default True
        Compare gradients where the framework differentiates (torch autograd,
        ``jax.vjp``): every floating array input and every scalar parameter the
        implementation takes as a tensor (``temperature``).  Non-scalar outputs
        are contracted with a seeded random cotangent.
    seed : int, default 0
        Seeds the cases and the cotangents.
    diagnose : bool, default True
        On value mismatches, rerun the reference under the other conventions and
        variants and report those that match.
    params : dict, optional
        The implementation's names for the reference's parameters:
        ``{"temperature": "tau"}``, or ``{"temperature": "1/logit_scale"}`` for one that
        takes the inverse.  Without it, a temperature the implementation does not take
        under that name is looked for under ``tau``, ``t``, ``T``, ``temp`` and, as
        ``1/temperature``, ``logit_scale``, ``inv_temperature`` (the report says which).
    accept : str or sequence of str, optional
        Known deviations that do not fail the report: a named value deviation
        (``"capped"``, ``"nan"``, ``"inf"``, ``"zero"``: ``compare.DEVIATIONS``) or a case
        label.  A failing case that matches is reported as ``accepted``; anything else
        still fails.

    Returns
    -------
    VerifyReport

    Raises
    ------
    VerifyError
        When nothing could be compared: ``impl`` raised on every case, returned
        non-arrays or the wrong shape every time, or no case fits its signature.
    TypeError, ValueError
        For a non-callable ``impl``, an unknown ``reference``, ``convention``,
        ``framework``, ``cases`` or ``dtype``.

    Notes
    -----
    Each case's inputs are rounded to the tested dtype and the reference is
    computed from the rounded inputs in NumPy float64, so input rounding is never
    counted as an error.  A value passes when every element satisfies
    ``|impl - ref| <= atol + rtol |ref|`` with ``rtol = nce_ref.testing.rtol_for(dtype)``
    and ``atol`` from ``atol_for`` scaled by the larger of ``|ref|`` and the first-order
    sensitivity ``sum |grad * x|`` (the rounding error a correct implementation makes;
    it grows like ``1/temperature`` by itself): ``nce_ref.testing.value_tolerances``.  A
    gradient passes when ``max |g - g_ref| <= rtol_g max |g_ref| + atol`` with
    ``rtol_g = rtol_for(dtype, temperature=...)``.

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> from nce_ref.testing import verify
    >>> def my_info_nce(q, k, *, temperature=0.1):   # NumPy, cosine, N - 1 negatives
    ...     q = q / np.linalg.norm(q, axis=1, keepdims=True)
    ...     k = k / np.linalg.norm(k, axis=1, keepdims=True)
    ...     z = q @ k.T / temperature
    ...     m = z.max(axis=1, keepdims=True)
    ...     lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    ...     return np.mean(lse - np.diag(z))
    >>> report = verify(my_info_nce, "info_nce", framework="numpy")
    >>> report.passed
    True
    >>> c = report.counts()
    >>> c["pass"] > 0 and c["fail"] == c["error"] == 0
    True
    >>> [r.message for r in report.results if r.status == "n/a"][0]
    "the implementation takes no `similarity` (the case needs similarity='dot')"
    """
    entry = lookup_reference(reference)
    if not callable(impl):
        raise TypeError(f"`impl` must be callable; got {type(impl).__name__}")
    conv = conventions.get(convention, entry.name) if convention is not None else None
    accepted = resolve_accept(accept)
    notes: list[str] = []
    framework, fw = pick_adapter(impl, framework, conv, notes)
    dtypes = resolve_dtypes(dtype)
    case_list, cases_name = resolve_cases(cases, entry.name, seed)
    sig = impl_signature(impl)
    aliases = resolve_aliases(entry, sig, params, notes)
    report = VerifyReport(impl=impl_name(impl), reference=entry.name,
                          convention=conv.name if conv else None, framework=framework,
                          dtypes=tuple(dtypes), cases=cases_name, notes=notes)
    report.notes += convention_notes(entry, conv, sig, aliases)
    outcomes = _run_all(impl, fw, entry, conv, sig, aliases, case_list, dtypes, report,
                        grads=grads, seed=seed)
    report.notes += _untested_scalars(entry, report)
    _raise_if_nothing_compared(report, entry, case_list)
    apply_accept(report, accepted)
    if diagnose and report.failures:
        diagnose_report(entry, conv, outcomes, report)
        why = explain_errors(entry, report.results, {c.label: c for c in case_list})
        if why:
            report.diagnosis.append(why)
    return report


def resolve_accept(accept) -> tuple[str, ...]:
    """``accept`` as a tuple of names (a string is one name)."""
    if accept is None:
        return ()
    items = (accept,) if isinstance(accept, str) else tuple(accept)
    for a in items:
        if not isinstance(a, str) or not a:
            raise TypeError(f"`accept` must hold deviation names ({', '.join(DEVIATIONS)}) or "
                            f"case labels; got {a!r}")
    return items


def apply_accept(report: VerifyReport, accepted: tuple) -> None:
    """Mark the failures that an ``accept`` entry names (by deviation or case label) as
    accepted; say in the notes which entries matched nothing."""
    if not accepted:
        return
    used = set()
    for r in report.results:
        if r.status != "fail":
            continue
        hit = next((a for a in accepted if a == r.deviation or a == r.label), None)
        if hit is not None:
            r.status, r.accepted = "accepted", hit
            used.add(hit)
    unused = [a for a in accepted if a not in used]
    if unused:
        report.notes.append(f"accept: {', '.join(repr(a) for a in unused)} matched no failing "
                            f"case (deviations: {', '.join(DEVIATIONS)}; or a case label)")


def pick_adapter(impl, framework: str | None, conv, notes: list) -> tuple[str, Adapter]:
    """``(framework, its adapter)``: the one asked for, else the convention's, else the one
    detected from ``impl`` (saying which in ``notes``); raise if it is unknown or missing."""
    if framework is not None and framework in ADAPTERS:
        seen, how = detect_framework(impl)
        if seen != framework and seen != "numpy" and "names the implementation uses" in how:
            notes.append(f"framework '{framework}' was asked for, but the implementation looks "
                         f"like {seen} code ({how})")
    if framework is None:
        if conv is not None and conv.framework is not None:
            framework = conv.framework
            notes.append(f"framework '{framework}' from convention '{conv.name}'")
        else:
            framework, how = detect_framework(impl)
            notes.append(how + "; pass framework= to choose")
    if framework not in ADAPTERS:
        raise ValueError(f"`framework` must be one of {', '.join(FRAMEWORKS)}; got {framework!r}")
    fw = ADAPTERS[framework]
    why = fw.unavailable()
    if why is not None:
        raise VerifyError(why)
    return framework, fw


def convention_notes(entry: Entry, conv, sig: ImplSig, aliases: dict) -> list[str]:
    """The report's notes on the temperature used when the implementation takes none, and
    the convention's own notes."""
    notes = []
    if "temperature" in entry.scalars and not sig.accepts("temperature") \
            and "temperature" not in aliases:
        t = conv.options.get("temperature") if conv else None
        t = t if t is not None else entry.signature.parameters["temperature"].default
        src = f"convention '{conv.name}'" if conv and "temperature" in conv.options else "nce_ref's default"
        notes.append(f"the implementation takes no `temperature`: every case is compared at "
                     f"temperature={t!r} ({src}) and its gradient is not compared; if it takes "
                     "the temperature under another name, map it: params={'temperature': 'NAME'} "
                     "(--param temperature=NAME; '1/NAME' for a logit scale)")
    if sig.constants:
        notes.append(f"the implementation declares {', '.join(f'`{n}`' for n in sig.constants)} "
                     "constant (verify_constants): their gradients are not compared")
    if conv is not None:
        notes.append(f"convention {conv.describe()} stands for {conv.library}"
                     + (f"; {conv.notes}" if conv.notes else ""))
    return notes


def _untested_scalars(entry: Entry, report: VerifyReport) -> list[str]:
    """A note naming the cases not run because the implementation could not receive their
    temperature (or other scalar): each became the same call as another case."""
    skipped = [r.label for r in report.results if r.status == "n/a" and r.problem == "same-call"]
    moved = {r.label: n[len(_RAN_AT):].split(" instead")[0] for r in report.results
             if r.status != "n/a" for n in r.notes if n.startswith(_RAN_AT)}
    if not skipped and not moved:
        return []
    parts = [f"{lab} (ran at {at})" for lab, at in moved.items()]
    parts += [f"{lab} (not run: the same call as another case)" for lab in dict.fromkeys(skipped)]
    return [f"not tested at their own {_scalar_names(entry)}, which the implementation does not "
            f"take: {'; '.join(parts)}"]


_RAN_AT = "ran at "


def _scalar_names(entry: Entry) -> str:
    return " or ".join(f"`{n}`" for n in entry.scalars) or "scalar"


def _replaced_scalars(plan, entry: Entry) -> dict:
    """The case's scalar options (``temperature``) that the implementation does not receive."""
    return {k: v for k, v in plan.case.kwargs.items()
            if k in entry.scalars and k not in REFERENCE_ONLY and k not in plan.impl_kw
            and plan.ref_kw.get(k) != v}


def _run_all(impl, fw: Adapter, entry: Entry, conv, sig: ImplSig, aliases: dict, case_list: list,
             dtypes: tuple, report: VerifyReport, *, grads: bool, seed: int) -> list[Outcome]:
    """Plan and run every case in every dtype, appending each result to ``report``; a case
    that does not apply is reported once, and identical calls run once per dtype (a case
    that became another's call because its temperature could not be passed is listed as
    not applicable, with the reason)."""
    outcomes: list[Outcome] = []
    unsupported = dict(conv.unsupported) if conv else {}
    for d in dtypes:
        conv_opts = conv.options_for(d) if conv else {}
        seen: dict = {}
        for i, case in enumerate(case_list):
            plan = plan_case(case, i, entry, conv_opts, sig, unsupported, aliases)
            if plan.na is not None:
                if d == dtypes[0]:  # once, not per dtype
                    report.results.append(CaseResult(case.label, case.kind, "-", case.describe(),
                                                     {}, "n/a", message=plan.na))
                continue
            replaced = _replaced_scalars(plan, entry)
            key = dedupe_key(plan)
            if key in seen:
                if replaced and d == dtypes[0]:
                    what = ", ".join(f"{k}={v!r}" for k, v in replaced.items())
                    now = ", ".join(f"{k}={plan.ref_kw.get(k)!r}" for k in replaced)
                    report.results.append(CaseResult(
                        case.label, case.kind, "-", case.describe(), {}, "n/a",
                        problem="same-call",
                        message=(f"not tested: the implementation takes no "
                                 f"{', '.join(f'`{k}`' for k in replaced)}, so the case's {what} "
                                 f"became {now}, the same call as case '{seen[key]}'")))
                continue
            seen[key] = case.label
            if replaced:
                plan.notes.append(_RAN_AT + ", ".join(f"{k}={plan.ref_kw.get(k)!r}" for k in replaced)
                                  + " instead of the case's " + ", ".join(
                                      f"{k}={v!r}" for k, v in replaced.items()))
            with np.errstate(all="ignore"):
                o = run_case(impl, fw, entry, plan, d, scale=conv.scale if conv else 1.0,
                             grads=grads, seed=seed)
            outcomes.append(o)
            report.results.append(o.result)
    return outcomes


def _layout_advice(entry: Entry) -> str:
    """``: its signature or layout probably differs (...); adapters: ...`` for a VerifyError."""
    hint = layout_hint(entry.name)
    ad = adapters_for(entry.name)
    return ("; its signature or argument layout probably differs from nce_ref's"
            + (f" ({hint})" if hint else "")
            + (f"; ready adapters in nce_ref.testing.conventions: {', '.join(ad)}" if ad else
               "; wrap it in a function with nce_ref's layout"))


def _raise_if_nothing_compared(report: VerifyReport, entry: Entry, case_list: list) -> None:
    """Raise :class:`VerifyError` when no case ran, or none produced a comparable array."""
    ran = report.ran
    if not ran:
        reasons = sorted({r.message for r in report.results})
        raise VerifyError(f"no case applies to {report.impl}: {reasons[0] if reasons else 'no cases'}",
                          report)
    structural = [r for r in ran if r.problem is not None]
    if len(structural) != len(ran):
        return
    first = structural[0]
    kinds = {r.problem for r in structural}
    if kinds == {"exception"}:
        fw_note = next((n for n in report.notes if "was asked for, but" in n), None)
        msg = (f"{report.impl} raised on every case ({len(ran)} of {len(ran)}); first: "
               f"{first.exception} [case '{first.label}', {first.dtype}]")
        msg += (f"; the framework is probably wrong: {fw_note}" if fw_note
                else _layout_advice(entry))
    elif kinds == {"non-array"}:
        msg = f"{report.impl} {first.message} [case '{first.label}', {first.dtype}]"
    elif kinds == {"shape"}:
        msg = f"{report.impl} returned the wrong shape on every case; first: {first.message}"
    else:
        msg = (f"{report.impl} produced no comparable array on any case; first "
               f"[{first.label}, {first.dtype}]: {first.message}")
    raise VerifyError(msg, report)
