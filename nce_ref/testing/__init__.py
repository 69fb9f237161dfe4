"""Testing helpers: the finite-difference gradient checker, tolerances, oracles and cases,
and :func:`verify`, which checks another implementation against the reference.

This subpackage may use NumPy directly (it is test infrastructure, not a backend path).
"""

from ._gradcheck import GradCheckError, GradReport, check_grad, numeric_grad
from ._tolerances import (
    atol_for,
    call_tolerances,
    dtype_name,
    eps_of,
    rtol_for,
    sensitivity,
    value_tolerances,
)
from ._verify import CaseResult, VerifyError, VerifyReport, verify
from ._verify.sharded import verify_sharded

__all__ = [
    "CaseResult",
    "GradCheckError",
    "GradReport",
    "VerifyError",
    "VerifyReport",
    "atol_for",
    "call_tolerances",
    "check_grad",
    "dtype_name",
    "eps_of",
    "numeric_grad",
    "rtol_for",
    "sensitivity",
    "value_tolerances",
    "verify",
    "verify_sharded",
]
