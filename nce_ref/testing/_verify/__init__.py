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

One module per concern; the names they share are public within this package:

- :mod:`.report`: the report model (:class:`CaseResult`, :class:`VerifyReport`,
  :class:`VerifyError`) and its rendering;
- :mod:`.adapters`: calling the user's NumPy/PyTorch/JAX function for its value and
  gradients, and reading its signature, name and framework;
- :mod:`.plan`: which cases and dtypes, and which options go to the implementation and
  to the reference under a convention;
- :mod:`.compare`: the reference on a plan, error measures and per-mismatch hints
  (shared by :mod:`.run` and :mod:`.diagnose`);
- :mod:`.run`: one case in one dtype;
- :mod:`.diagnose`: naming the bug from the pattern of errors;
- :mod:`.guide`: what to tell a user whose call does not fit (layouts, adapters, names);
- :mod:`.harness`: :func:`verify` itself;
- :mod:`.sharded`: :func:`~.sharded.verify_sharded`, W ranks each running the user's
  per-rank function (gloo processes or simulated JAX devices).
"""

from .adapters import FRAMEWORKS
from .harness import verify
from .plan import REFERENCE_ONLY
from .report import CaseResult, VerifyError, VerifyReport

__all__ = ["verify", "VerifyReport", "CaseResult", "VerifyError", "FRAMEWORKS", "REFERENCE_ONLY"]
