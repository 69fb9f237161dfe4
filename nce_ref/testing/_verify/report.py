"""The report model of :func:`~nce_ref.testing.verify`: one row per case and dtype, the
verdict, and its rendering as text and JSON.

Nothing here computes: :mod:`.run` fills :class:`CaseResult` rows, :mod:`.diagnose`
appends to :attr:`VerifyReport.diagnosis`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["CaseResult", "VerifyError", "VerifyReport", "fmt", "opts_text"]


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
    deviation: str | None = None  # the value's named deviation (compare.DEVIATIONS), if any
    accepted: str | None = None   # the accept= entry that accepted this failure

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "n/a", "accepted")


def fmt(x: float | None, spec: str = ".2g") -> str:
    """A number for the table and the messages: ``-`` for None, ``inf``/``nan`` as such."""
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, spec)


def opts_text(kw: dict) -> str:
    """``k=v, ...`` for the non-array options of a call, or ``defaults`` when there are none."""
    return ", ".join(f"{k}={v!r}" for k, v in kw.items() if not isinstance(v, np.ndarray)) or "defaults"


def _jsonable(x):
    """``x`` with non-finite floats as strings and NumPy scalars as Python numbers."""
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


def _sortkey(x):
    """Order ``err_over_tol`` values: None first, non-finite last."""
    if x is None:
        return -1.0
    return math.inf if not math.isfinite(x) else x


_RESULT = {"pass": "pass", "fail": "FAIL", "error": "ERROR", "n/a": "n/a", "accepted": "accepted"}

#: width of the table's case column
CASE_WIDTH = 72


def cut(text: str, width: int = CASE_WIDTH) -> str:
    """``text`` within ``width`` characters, cut after a whole option or word (never inside
    a number) and ended by an ellipsis."""
    if len(text) <= width:
        return text
    head = text[:width - 1]
    for sep in ("; ", ", ", " "):
        i = head.rfind(sep)
        if i > width // 3:
            return head[:i].rstrip(" ,;(") + "…"
    return head + "…"


def _table_row(r: CaseResult) -> tuple:
    """The table's cells for one result: the worst gradient is the one shown."""
    if r.grads:
        name, g = max(r.grads.items(), key=lambda kv: _sortkey(kv[1]["err_over_tol"]))
        grad = f"{fmt(g['err_over_tol'])} ({name})"
    else:
        grad = "-"
    return (cut(r.inputs), r.dtype, fmt(r.value_rel_err), fmt(r.value_ulps, ".3g"), grad,
            _RESULT[r.status])


def _columns(head: tuple, rows: list) -> str:
    """``head`` and ``rows`` as left-aligned columns under a rule (trailing blanks stripped)."""
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


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
    def accepted(self) -> list[CaseResult]:
        """The failures accepted by ``verify(accept=...)``: they do not fail the report."""
        return [r for r in self.results if r.status == "accepted"]

    @property
    def passed(self) -> bool:
        return bool(self.ran) and not self.failures

    @property
    def verdict(self) -> str:
        """``"agrees"``; ``"disagrees"`` when some value or gradient differs; ``"could not
        run"`` when none differs but the implementation raised (or returned a non-array)
        on some cases."""
        if self.passed:
            return "agrees"
        if any(r.status == "fail" for r in self.results):
            return "disagrees"
        return "could not run"

    @property
    def exit_code(self) -> int:
        """``nce-ref verify``'s exit status for this report: 0 agrees, 1 disagrees, 2 could not run."""
        return {"agrees": 0, "disagrees": 1, "could not run": 2}[self.verdict]

    def counts(self) -> dict[str, int]:
        """How many results have each status (``accepted`` only when there are some)."""
        out = {"pass": 0, "fail": 0, "error": 0, "n/a": 0}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def summary(self) -> str:
        """The one-line verdict with the counts."""
        c = self.counts()
        verdict = {"agrees": "AGREES with", "disagrees": "DISAGREES with",
                   "could not run": "COULD NOT RUN some cases of"}[self.verdict]
        conv = f" under convention '{self.convention}'" if self.convention else ""
        acc = f", {c['accepted']} accepted" if c.get("accepted") else ""
        return (f"{self.impl} {verdict} nce_ref.{self.reference}{conv}: {c['pass']} passed, "
                f"{c['fail']} failed, {c['error']} errors{acc}, {c['n/a']} not applicable "
                f"({self.framework}; {', '.join(self.dtypes)}; cases={self.cases})")

    # -- rendering -------------------------------------------------------------
    def table(self, *, show_na: bool = False) -> str:
        """One row per case and dtype (the n/a cases only with ``show_na``)."""
        head = ("case", "dtype", "value rel err", "ulps", "gradients: worst err/tol", "result")
        rows = [_table_row(r) for r in self.results if show_na or r.status != "n/a"]
        return _columns(head, rows)

    def _failure_lines(self) -> list[str]:
        """One line per failing, erroring or accepted case."""
        out = [f"{'ERROR' if r.status == 'error' else 'FAIL'} {r.label} [{r.dtype}]: {r.message}"
               for r in self.failures]
        return out + [f"ACCEPTED ({r.accepted}) {r.label} [{r.dtype}]: {r.message}"
                      for r in self.accepted]

    def _na_lines(self) -> list[str]:
        """One line per distinct reason a case did not apply, with how many it covers."""
        reasons: dict[str, int] = {}
        for r in self.results:
            if r.status == "n/a":
                reasons[r.message] = reasons.get(r.message, 0) + 1
        return [f"n/a ({k} case(s)): {m}" for m, k in reasons.items()]

    def __str__(self) -> str:
        """The summary, the table, then the failures, n/a reasons, diagnosis and notes."""
        parts = [self.summary(), "", self.table()]
        sections = (self._failure_lines(), self._na_lines(),
                    [f"diagnosis: {d}" for d in self.diagnosis],
                    [f"note: {n}" for n in self.notes])
        for lines in sections:
            if lines:
                parts += ["", *lines]
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"<VerifyReport {self.summary()}>"

    def to_dict(self) -> dict:
        """The report as JSON-compatible data."""
        return _jsonable({
            "impl": self.impl, "reference": self.reference, "convention": self.convention,
            "framework": self.framework, "dtypes": list(self.dtypes), "cases": self.cases,
            "passed": self.passed, "verdict": self.verdict, "exit_code": self.exit_code,
            "counts": self.counts(),
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
