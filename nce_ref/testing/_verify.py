"""Verify another implementation against the reference: values and gradients, case by case.

:func:`verify` runs a user's implementation (PyTorch, JAX or NumPy) on the cases
that nce_ref registers for a function (``nce_ref.testing.cases``: seeded random
ones and the documented edge cases), compares each value with nce_ref's in
float64 and, where the framework differentiates, each gradient (every floating
input and the temperature) with nce_ref's hand-derived one, and returns a
:class:`VerifyReport`.  When values disagree it reruns the reference under the
other known conventions and variants (``nce_ref.testing.conventions``) and says
which one the implementation follows.  Everything here is generic over the
registry: functions registered later are verifiable without changes.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..autodiff import Entry, lookup, vjp
from . import conventions as _conventions
from ._tolerances import atol_for, rtol_for, sensitivity, value_tolerances
from .cases import Case, cases_for

__all__ = ["verify", "VerifyReport", "CaseResult", "VerifyError", "FRAMEWORKS"]

FRAMEWORKS = ("torch", "jax", "numpy")

#: options that change how nce_ref computes, not what: never passed to an implementation
REFERENCE_ONLY = frozenset({"block_size", "memory_budget", "check_finite", "xp"})

_DTYPES = ("float64", "float32")


class VerifyError(Exception):
    """The implementation could not be verified at all.

    Raised when no case produced a comparable array: the implementation raised on
    every case, returned something that is not an array, or returned the wrong
    shape every time, or no case applied to its signature.  The message is one
    line; ``report`` holds the :class:`VerifyReport` of what ran (or None).
    """

    def __init__(self, message: str, report: VerifyReport | None = None):
        super().__init__(message)
        self.report = report


# ----------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------

@dataclass
class CaseResult:
    """The outcome of one case in one dtype.

    ``status`` is ``"pass"``, ``"fail"`` (a value or gradient outside the
    tolerance, or a wrong shape), ``"error"`` (the implementation raised or
    returned a non-array) or ``"n/a"`` (the case needs an option the
    implementation does not take).  Errors are in float64: ``abs_err`` is the
    largest absolute error, ``rel_err`` the largest error relative to the
    reference's magnitude, ``ulps`` the error in units in the last place of the
    implementation's dtype.  ``grads`` maps each compared input to the same three
    numbers (relative to the gradient's largest entry), its tolerance ``tol``,
    ``err_over_tol`` (at most 1 to pass; the table shows the worst) and ``ok``.
    """

    label: str
    kind: str
    dtype: str
    inputs: str
    options: dict
    status: str
    value_abs_err: float | None = None
    value_rel_err: float | None = None
    value_ulps: float | None = None
    grads: dict = field(default_factory=dict)
    message: str = ""
    exception: str | None = None
    notes: list = field(default_factory=list)
    problem: str | None = None  # structural: "exception", "non-array", "shape"

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "n/a")


def _fmt(x: float | None, spec: str = ".2g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, spec)


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return repr(x)


@dataclass
class VerifyReport:
    """What :func:`verify` compared, case by case.

    ``str(report)`` is a table with one row per case and dtype, followed by one
    line per failure and the diagnosis; :meth:`to_json` gives the same as JSON.
    ``passed`` is True when every applicable case agrees (and at least one ran).
    """

    impl: str
    reference: str
    convention: str | None
    framework: str
    dtypes: tuple
    cases: str
    results: list = field(default_factory=list)
    diagnosis: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    # -- summary ---------------------------------------------------------------
    @property
    def ran(self) -> list[CaseResult]:
        return [r for r in self.results if r.status != "n/a"]

    @property
    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if r.status in ("fail", "error")]

    @property
    def passed(self) -> bool:
        return bool(self.ran) and not self.failures

    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "fail": 0, "error": 0, "n/a": 0}
        for r in self.results:
            out[r.status] += 1
        return out

    def summary(self) -> str:
        c = self.counts()
        verdict = "AGREES with" if self.passed else "DISAGREES with"
        conv = f" under convention '{self.convention}'" if self.convention else ""
        return (f"{self.impl} {verdict} nce_ref.{self.reference}{conv}: {c['pass']} passed, "
                f"{c['fail']} failed, {c['error']} errors, {c['n/a']} not applicable "
                f"({self.framework}; {', '.join(self.dtypes)}; cases={self.cases})")

    # -- rendering -------------------------------------------------------------
    def table(self, *, show_na: bool = False) -> str:
        head = ("case", "dtype", "value rel err", "ulps", "gradients: worst err/tol", "result")
        rows = []
        for r in self.results:
            if r.status == "n/a" and not show_na:
                continue
            if r.grads:
                name, g = max(r.grads.items(), key=lambda kv: _sortkey(kv[1]["err_over_tol"]))
                grad = f"{_fmt(g['err_over_tol'])} ({name})"
            else:
                grad = "-"
            result = {"pass": "pass", "fail": "FAIL", "error": "ERROR", "n/a": "n/a"}[r.status]
            rows.append((r.inputs[:64], r.dtype, _fmt(r.value_rel_err), _fmt(r.value_ulps, ".3g"),
                         grad, result))
        widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(str(h).ljust(w) for h, w in zip(head, widths)),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
        return "\n".join(line.rstrip() for line in lines)

    def __str__(self) -> str:
        parts = [self.summary(), "", self.table()]
        fails = self.failures
        if fails:
            parts.append("")
            for r in fails:
                tag = "ERROR" if r.status == "error" else "FAIL"
                parts.append(f"{tag} {r.label} [{r.dtype}]: {r.message}")
        na = [r for r in self.results if r.status == "n/a"]
        if na:
            reasons: dict[str, int] = {}
            for r in na:
                reasons[r.message] = reasons.get(r.message, 0) + 1
            parts.append("")
            parts += [f"n/a ({k} case(s)): {m}" for m, k in reasons.items()]
        if self.diagnosis:
            parts.append("")
            parts += [f"diagnosis: {d}" for d in self.diagnosis]
        if self.notes:
            parts.append("")
            parts += [f"note: {n}" for n in self.notes]
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"<VerifyReport {self.summary()}>"

    def to_dict(self) -> dict:
        return _jsonable({
            "impl": self.impl, "reference": self.reference, "convention": self.convention,
            "framework": self.framework, "dtypes": list(self.dtypes), "cases": self.cases,
            "passed": self.passed, "counts": self.counts(),
            "results": [asdict(r) for r in self.results],
            "diagnosis": self.diagnosis, "notes": self.notes})

    def to_json(self, **kwargs) -> str:
        """The report as a JSON string (``kwargs`` go to ``json.dumps``; indent 2 by default)."""
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    def assert_passed(self) -> None:
        """Raise ``AssertionError`` with the whole report unless every case agrees."""
        if not self.passed:
            raise AssertionError("\n" + str(self))


def _sortkey(x):
    if x is None:
        return -1.0
    return math.inf if not math.isfinite(x) else x


# ----------------------------------------------------------------------------------
# the implementation's signature
# ----------------------------------------------------------------------------------

@dataclass
class _ImplSig:
    max_positional: float
    keywords: frozenset | None  # None: takes any keyword

    def accepts(self, name: str) -> bool:
        return self.keywords is None or name in self.keywords


def _impl_signature(impl) -> _ImplSig:
    try:
        sig = inspect.signature(impl)
    except (TypeError, ValueError):
        return _ImplSig(math.inf, frozenset())
    kinds = [p.kind for p in sig.parameters.values()]
    if kinds == [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]:
        fwd = getattr(impl, "forward", None)  # torch.nn.Module
        if callable(fwd):
            return _impl_signature(fwd)
    npos, kw, any_kw = 0.0, set(), False
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            npos += 1
        if p.kind == p.VAR_POSITIONAL:
            npos = math.inf
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            kw.add(p.name)
        if p.kind == p.VAR_KEYWORD:
            any_kw = True
    return _ImplSig(npos, None if any_kw else frozenset(kw))


def _impl_name(impl) -> str:
    for obj in (impl, type(impl)):
        mod, qn = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if mod and qn:
            return f"{mod}.{qn}" if obj is impl else f"{mod}.{qn}()"
    return repr(impl)[:60]


# ----------------------------------------------------------------------------------
# frameworks
# ----------------------------------------------------------------------------------

class _NonArray(Exception):
    pass


class _Framework:
    name = "numpy"
    differentiates = False

    def unavailable(self) -> str | None:
        return None

    def call(self, impl, pos, kw, diff, dtype):
        """Run ``impl``; return ``(value as float64 ndarray, grad_fn, mutated names)``."""
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
            raise _NonArray(_describe_out(out, "a NumPy array"))
        mutated = [n for n, (a, orig) in conv.items() if not np.array_equal(a, orig, equal_nan=True)]
        return np.asarray(out, dtype=np.float64), None, mutated


class _Torch(_Framework):
    name = "torch"
    differentiates = True

    def unavailable(self):
        try:
            import torch  # noqa: F401
        except Exception as exc:
            return f"framework 'torch' is not importable ({type(exc).__name__}: {exc})"
        return None

    def call(self, impl, pos, kw, diff, dtype):
        import torch

        tdt = getattr(torch, dtype)
        leaves, conv = {}, {}

        def cv(name, v):
            if isinstance(v, np.ndarray):
                if v.dtype.kind == "f":
                    orig = np.array(v, dtype=dtype)
                    t = torch.from_numpy(orig.copy())
                    if name in diff:
                        t.requires_grad_(True)
                        leaves[name] = t
                    conv[name] = (t, orig)
                    return t
                return torch.from_numpy(v.copy())
            if name in diff:
                t = torch.tensor(float(v), dtype=tdt, requires_grad=True)
                leaves[name] = t
                return t
            return v

        args = [cv(n, v) for n, v in pos]
        kwargs = {n: cv(n, v) for n, v in kw.items()}
        with torch.enable_grad():
            out = impl(*args, **kwargs)
        if not isinstance(out, torch.Tensor) or not (out.is_floating_point() or out.dtype == torch.int64):
            raise _NonArray(_describe_out(out, "a torch.Tensor"))
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


class _Jax(_Framework):
    name = "jax"
    differentiates = True

    def unavailable(self):
        try:
            import jax  # noqa: F401
        except Exception as exc:
            return f"framework 'jax' is not importable ({type(exc).__name__}: {exc})"
        return None

    @staticmethod
    def _x64(dtype):
        import jax

        if dtype == "float64" and not jax.config.jax_enable_x64:
            return jax.enable_x64(True)
        return contextlib.nullcontext()

    def call(self, impl, pos, kw, diff, dtype):
        import jax
        import jax.numpy as jnp

        with self._x64(dtype):
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

            vjp_fn, why = None, None
            if dnames:
                try:
                    out, vjp_fn = jax.vjp(fun, *[vals[n] for n in dnames])
                except Exception as exc:  # not traceable: get the value, report the gradient
                    why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    out = fun(*[vals[n] for n in dnames])
            else:
                out = fun()
            if not isinstance(out, jax.Array):
                raise _NonArray(_describe_out(out, "a jax.Array"))
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


_FRAMEWORKS = {"torch": _Torch(), "jax": _Jax(), "numpy": _Framework()}


def _describe_out(out, wanted: str) -> str:
    if isinstance(out, (tuple, list)):
        return f"returned a {type(out).__name__} of {len(out)} items, not {wanted}"
    shape = getattr(out, "shape", None)
    t = f"{type(out).__module__}.{type(out).__name__}"
    if shape is not None:
        return f"returned a {t} of dtype {getattr(out, 'dtype', '?')}, not {wanted} of floats"
    return f"returned a {t} ({repr(out)[:40]}), not {wanted}"


_FW_MODULES = (("torch", ("torch",)), ("jax", ("jax", "jaxlib", "optax", "flax")))


def _pick(names: set) -> str | None:
    for fw, mods in _FW_MODULES:
        if names.intersection(mods):
            return fw
    return None


def _detect_framework(impl) -> tuple[str, str]:
    """Guess the framework: the names the implementation's code uses (``import torch``
    inside it), else its module's imports (torch before jax), else NumPy."""
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
            for name in code.co_names:  # one level into the functions it calls
                callee = getattr(g.get(name), "__code__", None)
                if callee is not None:
                    code_names.update(callee.co_names)
        for v in g.values():
            if type(v).__name__ == "module":
                module_names.add(str(getattr(v, "__name__", "")).split(".")[0])
            else:
                module_names.add(str(getattr(v, "__module__", "") or "").split(".")[0])
    fw = _pick(code_names)
    if fw is not None:
        return fw, f"framework '{fw}' detected from the names the implementation uses"
    fw = _pick(module_names)
    if fw is not None:
        return fw, f"framework '{fw}' detected from the implementation's module"
    return "numpy", "framework 'numpy' (no torch or jax seen in the implementation or its module)"


# ----------------------------------------------------------------------------------
# planning: which arguments go to the implementation and to the reference
# ----------------------------------------------------------------------------------

@dataclass
class _Plan:
    case: Case
    index: int
    entry: Entry
    pos: list          # [(reference name, value)] passed positionally to both
    impl_kw: dict      # keywords passed to the implementation
    ref_kw: dict       # keywords of the reference call
    diff: tuple        # names whose gradients are compared
    na: str | None = None
    notes: list = field(default_factory=list)


def _short(v) -> str:
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


def _plan(case: Case, index: int, entry: Entry, conv_opts: dict, sig: _ImplSig,
          unsupported: dict) -> _Plan:
    params = entry.signature.parameters
    names = list(params)
    pos = list(zip(names, case.args))
    plan = _Plan(case, index, entry, pos, {}, {}, ())
    if len(case.args) > sig.max_positional:
        plan.na = (f"the implementation takes {int(sig.max_positional)} positional argument(s); "
                   f"the case passes {len(case.args)} ({', '.join(n for n, _ in pos)})")
        return plan
    ref_kw = {k: v for k, v in conv_opts.items()}
    for k, v in case.kwargs.items():
        if k in REFERENCE_ONLY:
            continue
        if any(_same(v, u) for u in unsupported.get(k, ())):
            plan.na = f"the convention has no {k}={v!r}"
            return plan
        if sig.accepts(k):
            plan.impl_kw[k] = v
            ref_kw[k] = v
        elif k in entry.scalars:
            continue  # compared at the convention's (or the reference's) value
        else:
            default = params[k].default if k in params else inspect.Parameter.empty
            effective = conv_opts.get(k, default)
            if not _same(v, effective):
                plan.na = f"the implementation takes no `{k}` (the case needs {k}={_short(v)})"
                return plan
    for k in entry.scalars:  # a scalar the implementation takes is always passed explicitly
        if k in plan.impl_kw or k in dict(pos) or not sig.accepts(k):
            continue
        v = ref_kw.get(k, params[k].default if k in params else None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            plan.impl_kw[k] = float(v)
            ref_kw[k] = float(v)
    plan.ref_kw = ref_kw
    given = dict(pos) | plan.impl_kw
    plan.diff = tuple(
        n for n in entry.wrt if n in given and (
            (isinstance(given[n], np.ndarray) and given[n].dtype.kind == "f")
            or (n in entry.scalars and isinstance(given[n], (int, float))
                and not isinstance(given[n], bool))))
    return plan


def _dedupe_key(plan: _Plan):
    def k(v):
        return ("arr", id(v)) if isinstance(v, np.ndarray) else ("val", repr(v))

    return (tuple(k(v) for _, v in plan.pos),
            tuple(sorted((n, k(v)) for n, v in plan.ref_kw.items())),
            tuple(sorted((n, k(v)) for n, v in plan.impl_kw.items())))


# ----------------------------------------------------------------------------------
# comparisons
# ----------------------------------------------------------------------------------

def _round(v, dtype: str):
    """What the implementation sees, back in float64 (so that input rounding is not an error)."""
    if isinstance(v, np.ndarray) and v.dtype.kind == "f":
        return np.asarray(v, dtype=dtype).astype(np.float64)
    if isinstance(v, float):
        return float(np.asarray(v, dtype=dtype))
    return v


def _reference(entry: Entry, plan: _Plan, kwargs: dict, dtype: str, ct, *, grads: bool,
               reference: Entry | None = None):
    ent = reference or entry
    args = [_round(v, dtype) for _, v in plan.pos]
    kw = {k: _round(v, dtype) for k, v in kwargs.items()}
    if ent is entry:
        value, back = vjp(ent.public, *args, **kw)
    else:
        value, back = vjp(ent.public, *args, **{k: v for k, v in kw.items()
                                               if k in ent.signature.parameters})
    value = np.asarray(value, dtype=np.float64)
    if not grads:
        return value, {}
    g = back(None if value.ndim == 0 else ct)
    return value, {k: np.asarray(v, dtype=np.float64) for k, v in g.items()}


def _tolerances(dtype: str, kwargs: dict) -> tuple[float, float]:
    """``(rtol for values, rtol for gradients)`` from the project's table.

    Values: the dtype's ``rtol`` alone; their ``atol`` is scaled by the first-order
    sensitivity, which already grows like ``1/temperature``.  Gradients: the table's
    ``rtol_for(dtype, temperature=...)`` (probabilities computed from logits of size
    ``1/temperature`` carry a relative error of that size).
    """
    t = kwargs.get("temperature")
    t = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None
    return rtol_for(dtype), rtol_for(dtype, temperature=t)


def _ulps(err: float, mag: float, dtype: str) -> float:
    """``err`` in units in the last place of ``dtype`` at the magnitude ``mag`` (at the
    smallest normal number when ``mag`` is below it: a reference of 0 makes any error huge)."""
    if not math.isfinite(err):
        return math.inf
    mag = max(abs(mag), float(np.finfo(dtype).tiny))
    sp = float(np.spacing(np.asarray(mag, dtype=dtype)))
    return err / sp


def _compare_value(got: np.ndarray, want: np.ndarray, dtype: str, rtol: float, atol: float):
    diff = np.abs(got - want)
    bad_nonfinite = ~np.isfinite(got) & np.isfinite(want)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(want != 0, diff / np.abs(np.where(want != 0, want, 1.0)), diff)
    idx = int(np.argmax(np.where(np.isfinite(diff), diff, np.inf))) if diff.size else 0
    abs_err = float(np.max(diff, initial=0.0)) if not bad_nonfinite.any() else math.inf
    rel_err = float(np.max(rel, initial=0.0)) if not bad_nonfinite.any() else math.inf
    w = want.reshape(-1)[idx] if want.size else 0.0
    ok = bool(not bad_nonfinite.any() and np.all(diff <= atol + rtol * np.abs(want)))
    return ok, abs_err, rel_err, _ulps(float(diff.reshape(-1)[idx]) if diff.size else 0.0, w, dtype), idx


_CAPS = (("finfo(float32).tiny", float(np.finfo(np.float32).tiny)),
         ("finfo(float64).tiny", float(np.finfo(np.float64).tiny)),
         ("1e-6", 1e-6), ("1e-7", 1e-7), ("1e-8", 1e-8), ("1e-10", 1e-10), ("1e-12", 1e-12),
         ("1e-20", 1e-20), ("eps(float32)", float(np.finfo(np.float32).eps)),
         ("eps(float64)", float(np.finfo(np.float64).eps)))


def _value_hint(got: np.ndarray, want: np.ndarray) -> str:
    bad = ~np.isfinite(got) & np.isfinite(want)
    if (bad & np.isnan(got)).any():
        return ("NaN where the reference is finite: a 0/0 (no positive pair, a zero vector "
                "normalised without a floor), 0 * log(0) or inf - inf (an exp that underflowed "
                "to 0 before a log, e.g. a row max taken over entries the mask excludes)")
    if bad.any():
        return ("inf where the reference is finite: an overflow or underflow (exp without a max "
                "shift, log(0), or a row max taken over entries the mask excludes)")
    bad = got < want
    vals = got[bad] if bad.any() else np.array([])
    for text, c in _CAPS:
        cap = -math.log(c)
        if vals.size and np.any(np.abs(vals - cap) <= 1e-3 * cap):
            return f"capped at -log({text}) = {cap:.6g}: a log(p + {text}) or a clamp of p"
    return ""


def _grad_hint(got: np.ndarray | None, want: np.ndarray) -> str:
    if got is None:
        return "not connected to the output (detached, or converted to a Python number?)"
    if not np.all(np.isfinite(got)):
        return "non-finite gradient"
    ww = float(np.sum(want * want))
    if np.all(got == 0):
        return "the implementation's gradient is 0 (a detach/stop_gradient, or a constant?)"
    if ww > 0:
        ratio = float(np.sum(got * want)) / ww
        if abs(ratio - 1) > 1e-3 and np.allclose(got, ratio * want, rtol=1e-6,
                                                 atol=1e-9 * math.sqrt(ww / max(1, want.size))):
            return f"proportional to the reference, by a factor {ratio:.6g}"
    return ""


def _first_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]


def _summ(value: np.ndarray, idx: int) -> str:
    if value.ndim == 0:
        return f"{float(value):.10g}"
    return f"{float(value.reshape(-1)[idx]):.10g} at {_index(idx, value.shape)}"


def _index(idx: int, shape) -> tuple:
    return tuple(int(i) for i in np.unravel_index(idx, shape))


# ----------------------------------------------------------------------------------
# one case
# ----------------------------------------------------------------------------------

@dataclass
class _Outcome:
    result: CaseResult
    plan: _Plan
    got: np.ndarray | None = None
    want: np.ndarray | None = None
    rtol: float = 0.0
    atol: float = 0.0
    value_ok: bool = True


def _run_case(impl, fw: _Framework, entry: Entry, plan: _Plan, dtype: str, *, scale: float,
              grads: bool, seed: int) -> _Outcome:
    case = plan.case
    opts = {k: (v if not isinstance(v, np.ndarray) else f"array{v.shape}")
            for k, v in plan.ref_kw.items()}
    res = CaseResult(label=case.label, kind=case.kind, dtype=dtype, inputs=_describe_plan(plan),
                     options=opts, status="pass", notes=list(plan.notes))
    out = _Outcome(res, plan)
    if case.note:
        res.notes.append(case.note)
    # the reference, on the inputs rounded to the implementation's dtype
    compare_grads = grads and fw.differentiates and bool(plan.diff)
    try:
        v0 = np.asarray(_reference(entry, plan, plan.ref_kw, dtype, None, grads=False)[0])
        rng = np.random.default_rng([seed, plan.index])
        ct = None if v0.ndim == 0 else np.asarray(
            rng.standard_normal(v0.shape), dtype=dtype).astype(np.float64)
        want, want_g = _reference(entry, plan, plan.ref_kw, dtype, ct, grads=True)
    except Exception as exc:
        res.status = "n/a"
        res.message = f"the reference rejects these options ({_first_line(exc)})"
        return out
    want, want_g = want * scale, {k: g * scale for k, g in want_g.items()}
    # the implementation: a scalar such as temperature is first passed as a tensor
    diff = plan.diff if compare_grads else tuple(n for n in plan.diff if n not in entry.scalars)
    try:
        try:
            got, grad_fn, mutated = fw.call(impl, plan.pos, plan.impl_kw, set(diff), dtype)
        except _NonArray:
            raise
        except Exception:
            scal = [n for n in diff if n in entry.scalars]
            if not scal:
                raise
            diff = tuple(n for n in diff if n not in entry.scalars)
            got, grad_fn, mutated = fw.call(impl, plan.pos, plan.impl_kw, set(diff), dtype)
            res.notes.append(f"`{', '.join(scal)}` passed as a Python float (the implementation "
                             "rejects a tensor): its gradient is not compared")
    except _NonArray as exc:
        res.status, res.problem, res.message = "error", "non-array", str(exc)
        return out
    except NotImplementedError as exc:  # the implementation declares the case out of its scope
        res.status = "n/a"
        res.message = f"the implementation does not cover it ({_first_line(exc)})"
        return out
    except Exception as exc:
        res.status, res.problem = "error", "exception"
        res.exception = _first_line(exc)
        res.message = f"raised {res.exception}"
        return out
    out.got, out.want = got, want
    if got.shape != want.shape:
        res.status, res.problem = "fail", "shape"
        res.message = (f"returned shape {got.shape}; the reference's is {want.shape} "
                       f"(options: {_opts_text(plan.ref_kw)})")
        return out
    problems = []
    if mutated:
        problems.append(f"modified its input(s) {', '.join(mutated)} in place")
    # values
    given = dict(plan.pos) | plan.ref_kw
    # first-order sensitivity sum |dL/dx * x|: the rounding error a correct implementation makes
    sens = sensitivity(want_g, {n: _round(given[n], dtype) for n in want_g if n in given})
    scale_v = max(1.0, float(np.max(np.abs(want), initial=0.0)), sens)
    rtol, rtol_g = _tolerances(dtype, plan.ref_kw)
    rtol, atol = value_tolerances(dtype, want, sens)
    out.rtol, out.atol = rtol, atol
    ok, aerr, rerr, ulps, idx = _compare_value(got, want, dtype, rtol, atol)
    res.value_abs_err, res.value_rel_err, res.value_ulps = aerr, rerr, ulps
    if not ok:
        out.value_ok = False
        hint = _value_hint(got, want)
        problems.append(f"value {_summ(got, idx)} vs reference {_summ(want, idx)} "
                        f"(rel err {_fmt(rerr)}, {_fmt(ulps, '.3g')} ulps)" + (f": {hint}" if hint else ""))
    # gradients
    if compare_grads and diff:
        try:
            got_g = grad_fn(ct)
        except Exception as exc:
            problems.append(f"gradients could not be computed: {_first_line(exc)}")
            got_g = {}
        for n in diff:
            if n not in got_g:
                continue
            w = want_g.get(n)
            if w is None:
                continue
            g = got_g[n]
            gval = np.zeros_like(w) if g is None else np.asarray(g, dtype=np.float64)
            if gval.shape != w.shape:
                problems.append(f"gradient of `{n}` has shape {gval.shape}, expected {w.shape}")
                res.grads[n] = {"abs_err": math.inf, "rel_err": math.inf, "ulps": math.inf,
                                "tol": 0.0, "err_over_tol": math.inf, "ok": False}
                continue
            gscale = float(np.max(np.abs(w), initial=0.0))
            err_arr = np.abs(gval - w)
            err = float(np.max(err_arr, initial=0.0)) if np.all(np.isfinite(gval)) else math.inf
            # a gradient that cancels to ~0 keeps rounding noise of its terms' size,
            # about (value scale) / |x|
            x = _round(given[n], dtype) if n in given else 1.0
            xmag = float(np.max(np.abs(x), initial=0.0)) if isinstance(x, np.ndarray) else abs(x)
            tol = rtol_g * gscale + atol_for(dtype, scale_v / max(xmag, 1e-30)) * rtol_g / rtol
            gok = err <= tol
            rel = err / gscale if gscale > 0 else err
            res.grads[n] = {"abs_err": err, "rel_err": rel, "ulps": _ulps(err, gscale, dtype),
                            "tol": tol, "err_over_tol": err / tol if tol > 0 else math.inf,
                            "ok": gok}
            if not gok:
                gi = int(np.argmax(np.where(np.isfinite(err_arr), err_arr, np.inf))) if err_arr.size else 0
                hint = _grad_hint(g, w)
                where = "" if w.ndim == 0 else f" at {_index(gi, w.shape)}"
                problems.append(f"gradient of `{n}`{where}: {float(gval.reshape(-1)[gi]):.6g} vs "
                                f"reference {float(w.reshape(-1)[gi]):.6g} (rel err {_fmt(rel)})"
                                + (f": {hint}" if hint else ""))
    if problems:
        res.status = "fail"
        res.message = "; ".join(problems)
    return out


def _describe_plan(plan: _Plan) -> str:
    """The case's label, shapes and the options the implementation receives."""
    shapes = ", ".join("x".join(map(str, v.shape)) if isinstance(v, np.ndarray) else repr(v)
                       for _, v in plan.pos)
    opts = ", ".join(f"{k}={v!r}" for k, v in plan.impl_kw.items() if not isinstance(v, np.ndarray))
    return f"{plan.case.label} ({shapes}{'; ' + opts if opts else ''})"


def _opts_text(kw: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kw.items() if not isinstance(v, np.ndarray)) or "defaults"


# ----------------------------------------------------------------------------------
# diagnosis: which convention does the implementation follow?
# ----------------------------------------------------------------------------------

@dataclass
class _Candidate:
    description: str
    reference: str
    options: Any          # dict (resolved per dtype through `per_dtype`) or a Variant
    scale: float = 1.0
    convention: Any = None  # a Convention: its options apply where the impl took no keyword

    def kwargs(self, o: _Outcome) -> dict:
        kw = dict(o.plan.ref_kw)
        if self.convention is not None:
            opts = self.convention.options_for(o.result.dtype)
            kw.update({k: v for k, v in opts.items() if k not in o.plan.impl_kw})
        elif isinstance(self.options, _conventions.Variant):
            params = o.plan.entry.signature.parameters
            effective = {k: p.default for k, p in params.items()
                         if p.default is not inspect.Parameter.empty} | o.plan.ref_kw
            kw.update(self.options.resolve(effective))
        else:
            kw.update(self.options)
        return kw


def _candidates(entry: Entry, conv, temperature_taken: bool) -> list[_Candidate]:
    out = []
    for c in _conventions.for_reference(entry.name):
        if conv is not None and c.name == conv.name:
            continue
        out.append(_Candidate(f"convention {c.describe()}", entry.name, None, c.scale, c))
    for v in _conventions.variants_for(entry.name):
        out.append(_Candidate(v.description, v.reference or entry.name, v))
    if not temperature_taken and "temperature" in entry.scalars:
        temps = sorted({float(c.options["temperature"]) for c in _conventions.CONVENTIONS
                        if isinstance(c.options.get("temperature"), float)} | {0.05, 0.2, 1.0})
        for t in temps:
            out.append(_Candidate(f"temperature={t:g} (the implementation takes no temperature)",
                                  entry.name, {"temperature": t}))
    return out


def _agrees(entry: Entry, cand: _Candidate, ent: Entry, o: _Outcome) -> bool | None:
    """Whether the implementation's value equals the reference under ``cand`` (None: n/a)."""
    try:
        kw = cand.kwargs(o)
    except Exception:
        return None
    if cand.reference == entry.name and kw == o.plan.ref_kw and cand.scale == 1.0:
        return None
    try:
        with np.errstate(all="ignore"):
            alt, _ = _reference(entry, o.plan, kw, o.result.dtype, None, grads=False, reference=ent)
    except Exception:
        return None
    alt = alt * cand.scale
    if alt.shape != o.got.shape:
        return None
    return _compare_value(o.got, alt, o.result.dtype, o.rtol, o.atol)[0]


def _diagnose(entry: Entry, conv, outcomes: list[_Outcome], report: VerifyReport) -> None:
    value_fails = [o for o in outcomes if o.result.status == "fail" and not o.value_ok
                   and o.got is not None and o.got.shape == o.want.shape]
    shape_fails = [o for o in outcomes if o.result.problem == "shape"]
    grad_only = [o for o in outcomes if o.result.status == "fail" and o.value_ok
                 and any(not g["ok"] for g in o.result.grads.values())]
    if shape_fails:
        opts = sorted({_opts_text({k: v for k, v in o.plan.ref_kw.items() if k == "reduction"})
                       for o in shape_fails})
        report.diagnosis.append(
            f"{len(shape_fails)} case(s) return the wrong shape ({'; '.join(opts)}): is an option "
            "such as `reduction` ignored by the implementation?")
    if grad_only:
        names = sorted({n for o in grad_only for n, g in o.result.grads.items() if not g["ok"]})
        report.diagnosis.append(
            f"values agree but the gradient of {', '.join(f'`{n}`' for n in names)} differs in "
            f"{len(grad_only)} case(s): the derivative the framework computes is not that of the "
            "reference's formula there (a custom or detached backward, a Python-float "
            "conversion, or a change of formula that moves the gradient more than the value, "
            "such as an eps inside a norm)")
    if not value_fails:
        return
    from ..autodiff import registry

    reg = registry()
    agreeing = [o for o in outcomes if o.value_ok and o.got is not None
                and o.result.status in ("pass", "fail")]
    explained: list[tuple[str, int, int, list]] = []
    for cand in _candidates(entry, conv, all("temperature" in o.plan.impl_kw for o in value_fails)):
        ent = reg.get(cand.reference)
        if ent is None:
            continue
        hit = [bool(_agrees(entry, cand, ent, o)) for o in value_fails]
        # the candidate must also reproduce every value the implementation got right
        if any(hit) and all(_agrees(entry, cand, ent, o) is not False for o in agreeing):
            explained.append((cand.description, sum(hit), len(value_fails), hit))
    full = [e for e in explained if e[1] == e[2]]
    wanted = f" (the requested convention is {conv.describe()})" if conv else ""
    if full:
        for desc, _, n, _ in full[:4]:
            report.diagnosis.append(f"the implementation follows {desc}: it matches the {n} "
                                    f"value mismatch(es) and every agreeing value{wanted}")
        return
    unexplained = value_fails
    if explained:
        explained.sort(key=lambda e: -e[1])
        for desc, k, n, _ in explained[:3]:
            report.diagnosis.append(f"{k} of the {n} value mismatches (and every agreeing value) "
                                    f"match nce_ref under: {desc}")
        unexplained = [o for o, h in zip(value_fails, explained[0][3]) if not h]
    hints = [h for h in (_value_hint(o.got, o.want) for o in unexplained) if h]
    distinct = sorted(set(hints), key=lambda h: (-hints.count(h), h))[:3]
    lead = ("the other" if explained else
            f"no known convention or variant of nce_ref.{entry.name} explains the")
    text = "; ".join(f"{hints.count(h)} {h}" for h in distinct)
    report.diagnosis.append(
        f"{lead} {len(unexplained)} value mismatch(es)"
        + (f": {text}" if text else
           (" are unexplained: see the failing cases above" if explained else
            ": see the failing cases above")))


# ----------------------------------------------------------------------------------
# verify
# ----------------------------------------------------------------------------------

def verify(impl: Callable, reference: Callable | str, *, convention: str | None = None,
           framework: str | None = None, cases: str | Sequence[Case] = "standard",
           dtype: str | Sequence[str] | None = None, grads: bool = True, seed: int = 0,
           diagnose: bool = True) -> VerifyReport:
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
    ``|impl - ref| <= atol + rtol |ref|`` with ``rtol`` from
    ``nce_ref.testing.rtol_for(dtype, temperature=...)`` and ``atol`` from
    ``atol_for`` scaled by the larger of ``|ref|`` and the first-order sensitivity
    ``sum |grad * x|`` (the rounding error a correct implementation makes).  A
    gradient passes when ``max |g - g_ref| <= rtol max |g_ref| + atol``.

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
    entry = lookup(reference)
    if not callable(impl):
        raise TypeError(f"`impl` must be callable; got {type(impl).__name__}")
    conv = _conventions.get(convention, entry.name) if convention is not None else None
    notes: list[str] = []
    if framework is None:
        if conv is not None and conv.framework is not None:
            framework = conv.framework
            notes.append(f"framework '{framework}' from convention '{conv.name}'")
        else:
            framework, how = _detect_framework(impl)
            notes.append(how + "; pass framework= to choose")
    if framework not in _FRAMEWORKS:
        raise ValueError(f"`framework` must be one of {', '.join(FRAMEWORKS)}; got {framework!r}")
    fw = _FRAMEWORKS[framework]
    why = fw.unavailable()
    if why is not None:
        raise VerifyError(why)
    if dtype is None:
        dtypes = _DTYPES
    elif isinstance(dtype, str):
        dtypes = _DTYPES if dtype == "all" else (dtype,)
    else:
        dtypes = tuple(dtype)
    for d in dtypes:
        if d not in _DTYPES:
            raise ValueError(f"`dtype` must be 'float64', 'float32' or both; got {d!r}")
    if isinstance(cases, str):
        if cases not in ("standard", "edge", "all"):
            raise ValueError(f"`cases` must be 'standard', 'edge', 'all' or a list of Case; got {cases!r}")
        case_list = cases_for(entry.name, seed=seed, which=cases)
        cases_name = cases
        if not case_list:
            raise ValueError(f"no {cases!r} cases are registered for nce_ref.{entry.name} "
                             "(nce_ref.testing.cases)")
    else:
        case_list, cases_name = list(cases), "custom"
    sig = _impl_signature(impl)
    report = VerifyReport(impl=_impl_name(impl), reference=entry.name,
                          convention=conv.name if conv else None, framework=framework,
                          dtypes=tuple(dtypes), cases=cases_name, notes=notes)
    if "temperature" in entry.scalars and not sig.accepts("temperature"):
        t = conv.options.get("temperature") if conv else None
        t = t if t is not None else entry.signature.parameters["temperature"].default
        src = f"convention '{conv.name}'" if conv and "temperature" in conv.options else "nce_ref's default"
        report.notes.append(f"the implementation takes no `temperature`: every case is compared at "
                            f"temperature={t!r} ({src}) and its gradient is not compared")
    if conv is not None and conv.notes:
        report.notes.append(f"convention '{conv.name}': {conv.notes}")
    outcomes: list[_Outcome] = []
    for d in dtypes:
        conv_opts = conv.options_for(d) if conv else {}
        seen = set()
        for i, case in enumerate(case_list):
            plan = _plan(case, i, entry, conv_opts, sig, dict(conv.unsupported) if conv else {})
            if plan.na is not None:
                if d == dtypes[0]:  # once, not per dtype
                    report.results.append(CaseResult(case.label, case.kind, "-", case.describe(),
                                                     {}, "n/a", message=plan.na))
                continue
            key = _dedupe_key(plan)
            if key in seen:
                continue
            seen.add(key)
            with np.errstate(all="ignore"):
                o = _run_case(impl, fw, entry, plan, d, scale=conv.scale if conv else 1.0,
                              grads=grads, seed=seed)
            outcomes.append(o)
            report.results.append(o.result)
    ran = report.ran
    if not ran:
        reasons = sorted({r.message for r in report.results})
        raise VerifyError(f"no case applies to {report.impl}: {reasons[0] if reasons else 'no cases'}",
                          report)
    structural = [r for r in ran if r.problem is not None]
    if len(structural) == len(ran):
        first = structural[0]
        kinds = {r.problem for r in structural}
        if kinds == {"exception"}:
            msg = (f"{report.impl} raised on every case ({len(ran)} of {len(ran)}); first: "
                   f"{first.exception} [case '{first.label}', {first.dtype}]")
        elif kinds == {"non-array"}:
            msg = f"{report.impl} {first.message} [case '{first.label}', {first.dtype}]"
        elif kinds == {"shape"}:
            msg = f"{report.impl} returned the wrong shape on every case; first: {first.message}"
        else:
            msg = (f"{report.impl} produced no comparable array on any case; first "
                   f"[{first.label}, {first.dtype}]: {first.message}")
        raise VerifyError(msg, report)
    if diagnose and report.failures:
        _diagnose(entry, conv, outcomes, report)
    return report
