"""Comparisons shared by running a case (:mod:`.run`) and the diagnosis (:mod:`.diagnose`):
the reference's value and gradients on a plan, the error measures, and the hints that
name what a single mismatching value or gradient looks like.
"""

from __future__ import annotations

import math

import numpy as np

from ...autodiff import Entry, vjp
from .._tolerances import rtol_for
from .plan import Plan

__all__ = ["DEVIATIONS", "compare_value", "first_line", "grad_hint", "grad_ratio", "grad_rtol",
           "index_of", "reference", "rounded", "ulps", "value_at", "value_deviation", "value_hint"]


def rounded(v, dtype: str):
    """What the implementation sees, back in float64 (so that input rounding is not an error)."""
    if isinstance(v, np.ndarray) and v.dtype.kind == "f":
        return np.asarray(v, dtype=dtype).astype(np.float64)
    if isinstance(v, float):
        return float(np.asarray(v, dtype=dtype))
    return v


def reference(entry: Entry, plan: Plan, kwargs: dict, dtype: str, ct, *, grads: bool,
              alternative: Entry | None = None):
    """``(value, grads)`` of the reference on the plan's inputs rounded to ``dtype``, in float64.

    ``alternative``, a registered function other than ``entry`` (a variant's), is
    called with only the keywords it takes.  ``grads`` is ``{}`` unless asked for;
    ``ct`` is the cotangent of a non-scalar value.
    """
    ent = alternative or entry
    args = [rounded(v, dtype) for _, v in plan.pos]
    kw = {k: rounded(v, dtype) for k, v in kwargs.items()}
    if ent is not entry:
        kw = {k: v for k, v in kw.items() if k in ent.signature.parameters}
    value, back = vjp(ent.public, *args, **kw)
    value = np.asarray(value, dtype=np.float64)
    if not grads:
        return value, {}
    g = back(None if value.ndim == 0 else ct)
    return value, {k: np.asarray(v, dtype=np.float64) for k, v in g.items()}


def grad_rtol(dtype: str, kwargs: dict) -> float:
    """The relative tolerance of gradients: the table's ``rtol_for(dtype, temperature=...)``
    (probabilities computed from logits of size ``1/temperature`` carry a relative error
    of that size).  Values use ``value_tolerances`` instead, without the temperature term."""
    t = kwargs.get("temperature")
    t = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None
    return rtol_for(dtype, temperature=t)


def ulps(err: float, mag: float, dtype: str) -> float:
    """``err`` in units in the last place of ``dtype`` at the magnitude ``mag`` (at the
    smallest normal number when ``mag`` is below it: a reference of 0 makes any error huge)."""
    if not math.isfinite(err):
        return math.inf
    mag = max(abs(mag), float(np.finfo(dtype).tiny))
    sp = float(np.spacing(np.asarray(mag, dtype=dtype)))
    return err / sp


def compare_value(got: np.ndarray, want: np.ndarray, dtype: str, rtol: float, atol: float):
    """``(ok, abs_err, rel_err, ulps, flat index of the largest error)`` of ``got`` against ``want``."""
    diff = np.abs(got - want)
    bad_nonfinite = ~np.isfinite(got) & np.isfinite(want)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(want != 0, diff / np.abs(np.where(want != 0, want, 1.0)), diff)
    idx = int(np.argmax(np.where(np.isfinite(diff), diff, np.inf))) if diff.size else 0
    abs_err = float(np.max(diff, initial=0.0)) if not bad_nonfinite.any() else math.inf
    rel_err = float(np.max(rel, initial=0.0)) if not bad_nonfinite.any() else math.inf
    w = want.reshape(-1)[idx] if want.size else 0.0
    ok = bool(not bad_nonfinite.any() and np.all(diff <= atol + rtol * np.abs(want)))
    return ok, abs_err, rel_err, ulps(float(diff.reshape(-1)[idx]) if diff.size else 0.0, w, dtype), idx


_CAPS = (("finfo(float32).tiny", float(np.finfo(np.float32).tiny)),
         ("finfo(float64).tiny", float(np.finfo(np.float64).tiny)),
         ("1e-6", 1e-6), ("1e-7", 1e-7), ("1e-8", 1e-8), ("1e-10", 1e-10), ("1e-12", 1e-12),
         ("1e-20", 1e-20), ("eps(float32)", float(np.finfo(np.float32).eps)),
         ("eps(float64)", float(np.finfo(np.float64).eps)))


#: the named value deviations that ``verify(accept=...)`` / ``--accept`` can accept
DEVIATIONS = {
    "capped": "the value is capped at -log(c) by a log(p + c) or a clamp of p (PML's +tiny)",
    "nan": "NaN where the reference is finite (no positive pair, a zero vector without a floor...)",
    "inf": "inf where the reference is finite",
    "zero": "0 where the reference is not (a loss that returns 0 without negatives or positives)",
}


def value_deviation(got: np.ndarray, want: np.ndarray) -> str | None:
    """The name in :data:`DEVIATIONS` of what a wrong value shows, or None."""
    bad = ~np.isfinite(got) & np.isfinite(want)
    if (bad & np.isnan(got)).any():
        return "nan"
    if bad.any():
        return "inf"
    if value_hint(got, want).startswith("capped"):
        return "capped"
    if np.all(got == 0) and np.any(want != 0):
        return "zero"
    return None


def value_hint(got: np.ndarray, want: np.ndarray) -> str:
    """What a wrong value looks like: NaN or inf where the reference is finite, or a value
    capped at ``-log(c)`` by a ``log(p + c)``; empty when nothing is recognised."""
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


def grad_hint(got: np.ndarray | None, want: np.ndarray) -> str:
    """What a wrong gradient looks like: missing, non-finite, zero or proportional to the
    reference; empty when nothing is recognised."""
    if got is None:
        return "not connected to the output (detached, or converted to a Python number?)"
    if not np.all(np.isfinite(got)):
        return "non-finite gradient"
    if np.all(got == 0):
        return "the implementation's gradient is 0 (a detach/stop_gradient, or a constant?)"
    ratio = grad_ratio(got, want)
    if ratio is not None:
        return f"proportional to the reference, by a factor {ratio:.6g}"
    return ""


def grad_ratio(got, want: np.ndarray, rtol: float = 1e-6) -> float | None:
    """``c`` when ``got = c * want`` (``c`` not 1 or 0) to ``rtol``, else None."""
    if got is None:
        return None
    got = np.asarray(got, dtype=np.float64)
    if got.shape != want.shape or not np.all(np.isfinite(got)) or np.all(got == 0):
        return None
    ww = float(np.sum(want * want))
    if ww <= 0:
        return None
    ratio = float(np.sum(got * want)) / ww
    if abs(ratio - 1) > 1e-3 and np.allclose(got, ratio * want, rtol=rtol,
                                             atol=1e-9 * math.sqrt(ww / max(1, want.size))):
        return ratio
    return None


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``, at most 300 characters."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]


def index_of(idx: int, shape) -> tuple:
    """The multi-index of flat index ``idx`` in ``shape``."""
    return tuple(int(i) for i in np.unravel_index(idx, shape))


def value_at(value: np.ndarray, idx: int) -> str:
    """The element at flat index ``idx`` and where it is (just the number for a 0-d value)."""
    if value.ndim == 0:
        return f"{float(value):.10g}"
    return f"{float(value.reshape(-1)[idx]):.10g} at {index_of(idx, value.shape)}"
