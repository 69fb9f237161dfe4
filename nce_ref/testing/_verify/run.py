"""Running one planned case in one dtype: the reference's value and gradients, the
implementation's (through its framework's adapter), and their comparison, as a
:class:`~.report.CaseResult` inside an :class:`Outcome`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...autodiff import Entry
from .._tolerances import atol_for, sensitivity, value_tolerances
from .adapters import Adapter, NonArray
from .compare import (
    compare_value,
    first_line,
    grad_hint,
    grad_ratio,
    grad_rtol,
    index_of,
    reference,
    rounded,
    ulps,
    value_at,
    value_deviation,
    value_hint,
)
from .plan import Plan, describe_plan
from .report import CaseResult, fmt, opts_text

__all__ = ["Outcome", "run_case"]


@dataclass
class Outcome:
    """A case's result with what the diagnosis needs: both values and the value tolerance."""

    result: CaseResult
    plan: Plan
    got: np.ndarray | None = None
    want: np.ndarray | None = None
    rtol: float = 0.0
    atol: float = 0.0
    value_ok: bool = True


class _Stop(Exception):
    """The case ends here; its result already says why."""


def _new_result(plan: Plan, dtype: str) -> CaseResult:
    """A passing result for the case, with its description, options and notes."""
    case = plan.case
    opts = {k: (v if not isinstance(v, np.ndarray) else f"array{v.shape}")
            for k, v in plan.ref_kw.items()}
    res = CaseResult(label=case.label, kind=case.kind, dtype=dtype, inputs=describe_plan(plan),
                     options=opts, status="pass", notes=list(plan.notes))
    if case.note:
        res.notes.append(case.note)
    return res


def _expected(entry: Entry, plan: Plan, dtype: str, scale: float, seed: int, res: CaseResult):
    """``(value, grads, cotangent)`` of the reference on the inputs rounded to ``dtype``,
    times the convention's ``scale``; the cotangent of a non-scalar value is seeded by
    ``(seed, case index)``.  A reference that rejects the options makes the case n/a."""
    try:
        v0 = np.asarray(reference(entry, plan, plan.ref_kw, dtype, None, grads=False)[0])
        rng = np.random.default_rng([seed, plan.index])
        ct = None if v0.ndim == 0 else np.asarray(
            rng.standard_normal(v0.shape), dtype=dtype).astype(np.float64)
        want, want_g = reference(entry, plan, plan.ref_kw, dtype, ct, grads=True)
    except Exception as exc:
        res.status = "n/a"
        res.message = f"the reference rejects these options ({first_line(exc)})"
        raise _Stop from None
    return want * scale, {k: g * scale for k, g in want_g.items()}, ct


def aliased_call(fw: Adapter, impl, plan: Plan, diff: tuple, dtype: str):
    """``fw.call`` with the reference's parameter names replaced by the implementation's
    (``plan.aliases``: ``tau`` for ``temperature``, ``logit_scale`` for ``1/temperature``);
    the gradients come back under the reference's names, by the chain rule
    (``dL/dτ = -dL/ds / τ²`` for ``s = 1/τ``)."""
    al = plan.aliases
    if not al:
        return fw.call(impl, plan.pos, plan.impl_kw, set(diff), dtype)
    kw = {}
    for k, v in plan.impl_kw.items():
        a = al.get(k)
        kw[a.name if a else k] = (1.0 / v if a is not None and a.inverse else v)
    names = {(al[n].name if n in al else n): n for n in diff}
    value, grad_fn, mutated = fw.call(impl, plan.pos, kw, set(names), dtype)
    if grad_fn is None:
        return value, None, mutated

    def back(ct):
        g = grad_fn(ct)
        out = {}
        for n, gv in g.items():
            ref = names.get(n, n)
            a = al.get(ref)
            if a is not None and a.inverse and gv is not None:
                gv = -np.asarray(gv) / float(plan.impl_kw[ref]) ** 2
            out[ref] = gv
        return out

    return value, back, mutated


def _call_impl(impl, fw: Adapter, entry: Entry, plan: Plan, diff: tuple, dtype: str,
               res: CaseResult):
    """``(value, grad_fn, mutated, diff)`` of the implementation.

    A scalar such as ``temperature`` is first passed as a tensor; if the
    implementation raises, it is retried as a Python float and dropped from ``diff``.
    """
    try:
        return (*aliased_call(fw, impl, plan, diff, dtype), diff)
    except NonArray:
        raise
    except Exception:
        scal = [n for n in diff if n in entry.scalars]
        if not scal:
            raise
    diff = tuple(n for n in diff if n not in entry.scalars)
    out = aliased_call(fw, impl, plan, diff, dtype)
    res.notes.append(f"`{', '.join(scal)}` passed as a Python float (the implementation "
                     "rejects a tensor): its gradient is not compared")
    return (*out, diff)


def _call_or_stop(impl, fw: Adapter, entry: Entry, plan: Plan, diff: tuple, dtype: str,
                  res: CaseResult):
    """:func:`_call_impl`, recording a non-array, a ``NotImplementedError`` (n/a) or any
    other exception in ``res`` and stopping the case."""
    try:
        return _call_impl(impl, fw, entry, plan, diff, dtype, res)
    except NonArray as exc:
        res.status, res.problem, res.message = "error", "non-array", str(exc)
    except NotImplementedError as exc:  # the implementation declares the case out of its scope
        res.status = "n/a"
        res.message = f"the implementation does not cover it ({first_line(exc)})"
    except Exception as exc:
        res.status, res.problem = "error", "exception"
        res.exception = first_line(exc)
        res.message = f"raised {res.exception}"
    raise _Stop


def _check_value(out: Outcome, dtype: str, sens: float, problems: list) -> None:
    """Compare the values with the project's value rule (``value_tolerances``: the dtype's
    rtol, and an atol scaled by the first-order sensitivity ``sens``)."""
    got, want, res = out.got, out.want, out.result
    out.rtol, out.atol = value_tolerances(dtype, want, sens)
    ok, aerr, rerr, u, idx = compare_value(got, want, dtype, out.rtol, out.atol)
    res.value_abs_err, res.value_rel_err, res.value_ulps = aerr, rerr, u
    if not ok:
        out.value_ok = False
        res.deviation = value_deviation(got, want)
        hint = value_hint(got, want)
        problems.append(f"value {value_at(got, idx)} vs reference {value_at(want, idx)} "
                        f"(rel err {fmt(rerr)}, {fmt(u, '.3g')} ulps)" + (f": {hint}" if hint else ""))


def _grad_tolerance(w: np.ndarray, x, dtype: str, scale_v: float, rtol: float,
                    rtol_g: float) -> float:
    """``rtol_g max|w|`` plus an atol for a gradient that cancels to ~0: it keeps rounding
    noise of its terms' size, about (value scale) / ``|x|``."""
    xmag = float(np.max(np.abs(x), initial=0.0)) if isinstance(x, np.ndarray) else abs(x)
    gscale = float(np.max(np.abs(w), initial=0.0))
    return rtol_g * gscale + atol_for(dtype, scale_v / max(xmag, 1e-30)) * rtol_g / rtol


def _check_one_grad(out: Outcome, n: str, g, w: np.ndarray, tol: float, dtype: str,
                    problems: list) -> None:
    """Compare the gradient ``g`` of input ``n`` with the reference's ``w`` within ``tol``."""
    res = out.result
    gval = np.zeros_like(w) if g is None else np.asarray(g, dtype=np.float64)
    if gval.shape != w.shape:
        problems.append(f"gradient of `{n}` has shape {gval.shape}, expected {w.shape}")
        res.grads[n] = {"abs_err": math.inf, "rel_err": math.inf, "ulps": math.inf,
                        "tol": 0.0, "err_over_tol": math.inf, "ok": False}
        return
    gscale = float(np.max(np.abs(w), initial=0.0))
    err_arr = np.abs(gval - w)
    err = float(np.max(err_arr, initial=0.0)) if np.all(np.isfinite(gval)) else math.inf
    gok = err <= tol
    rel = err / gscale if gscale > 0 else err
    res.grads[n] = {"abs_err": err, "rel_err": rel, "ulps": ulps(err, gscale, dtype),
                    "tol": tol, "err_over_tol": err / tol if tol > 0 else math.inf, "ok": gok}
    if gok:
        return
    ratio = grad_ratio(g, w)
    if ratio is not None:
        res.grads[n]["ratio"] = ratio
    gi = int(np.argmax(np.where(np.isfinite(err_arr), err_arr, np.inf))) if err_arr.size else 0
    hint = grad_hint(g, w)
    where = "" if w.ndim == 0 else f" at {index_of(gi, w.shape)}"
    problems.append(f"gradient of `{n}`{where}: {float(gval.reshape(-1)[gi]):.6g} vs "
                    f"reference {float(w.reshape(-1)[gi]):.6g} (rel err {fmt(rel)})"
                    + (f": {hint}" if hint else ""))


def _check_grads(out: Outcome, grad_fn, ct, diff: tuple, want_g: dict, given: dict,
                 dtype: str, scale_v: float, problems: list) -> None:
    """Compare the gradient of every input in ``diff`` that both sides have."""
    try:
        got_g = grad_fn(ct)
    except Exception as exc:
        problems.append(f"gradients could not be computed: {first_line(exc)}")
        got_g = {}
    rtol_g = grad_rtol(dtype, out.plan.ref_kw)
    for n in diff:
        if n not in got_g or want_g.get(n) is None:
            continue
        x = rounded(given[n], dtype) if n in given else 1.0
        tol = _grad_tolerance(want_g[n], x, dtype, scale_v, out.rtol, rtol_g)
        _check_one_grad(out, n, got_g[n], want_g[n], tol, dtype, problems)


def run_case(impl, fw: Adapter, entry: Entry, plan: Plan, dtype: str, *, scale: float,
             grads: bool, seed: int) -> Outcome:
    """Run one case in ``dtype`` and compare the implementation with the reference."""
    res = _new_result(plan, dtype)
    out = Outcome(res, plan)
    compare_grads = grads and fw.differentiates and bool(plan.diff)
    diff = plan.diff if compare_grads else tuple(n for n in plan.diff if n not in entry.scalars)
    try:
        want, want_g, ct = _expected(entry, plan, dtype, scale, seed, res)
        got, grad_fn, mutated, diff = _call_or_stop(impl, fw, entry, plan, diff, dtype, res)
    except _Stop:
        return out
    out.got, out.want = got, want
    if got.shape != want.shape:
        res.status, res.problem = "fail", "shape"
        res.message = (f"returned shape {got.shape}; the reference's is {want.shape} "
                       f"(options: {opts_text(plan.ref_kw)})")
        return out
    problems = [f"modified its input(s) {', '.join(mutated)} in place"] if mutated else []
    given = dict(plan.pos) | plan.ref_kw
    # first-order sensitivity sum |dL/dx * x|: the rounding error a correct implementation makes
    sens = sensitivity(want_g, {n: rounded(given[n], dtype) for n in want_g if n in given})
    scale_v = max(1.0, float(np.max(np.abs(want), initial=0.0)), sens)
    _check_value(out, dtype, sens, problems)
    if compare_grads and diff:
        _check_grads(out, grad_fn, ct, diff, want_g, given, dtype, scale_v, problems)
    if problems:
        res.status = "fail"
        res.message = "; ".join(problems)
    return out
