"""``nce-ref check``: self-verification of every registered function on every backend.

For each registered function, each of its cases (``nce_ref.testing.cases``) and each
installed backend (NumPy, array-api-strict, PyTorch, JAX, CuPy) in float64 and
float32, the value is compared with the 50-digit mpmath oracle
(``nce_ref.testing.oracles``), and the gradients with central finite differences
(NumPy float64) or, on the other backends, with NumPy's analytic gradients.
Prints a table (function x backend) and exits with 1 on any failure.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "cupy")


@dataclass
class Row:
    function: str
    backend: str
    dtype: str
    cases: int = 0
    value_err: float = 0.0  # max error against the oracle, in units of the tolerance
    grad_err: float = 0.0  # max gradient error, in units of the tolerance
    grad_ref: str = ""
    failures: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def configure(parser) -> None:
    """Add ``nce-ref check``'s options to ``parser``."""
    parser.add_argument("--backends", default="all",
                        help="comma-separated subset of: " + ", ".join(BACKENDS))
    parser.add_argument("--functions", default="all", help="comma-separated registered names")
    parser.add_argument("--cases", choices=("standard", "edge", "all"), default="all")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _backend_objects(names):
    """``[(name, backend)]`` for the named backends.

    The repository's ``backends/`` package is test infrastructure that the library never
    imports (a user's own ``backends`` module could stand in its place): the command
    brings its own :class:`_Backend`.
    """
    return [(n, _Backend(n)) for n in names]


class _Backend:
    """One array library as ``nce-ref check`` uses it: availability, NumPy in and out.

    Set up as the test suite sets it up: array-api-strict with its strictest flags (no
    boolean indexing, no data-dependent shapes, no extensions), JAX with x64 and float32
    matmul precision; arrays on the library's default device.
    """

    def __init__(self, name):
        self.name = name
        self.tol_scale = 4.0 if name == "cupy" else 1.0

    def unavailable(self):
        """None when the library imports and works, else the reason."""
        try:
            self._mod()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def _mod(self):
        """The library's module, set up (see the class docstring)."""
        if self.name == "numpy":
            return np
        if self.name == "array_api_strict":
            import array_api_strict

            array_api_strict.set_array_api_strict_flags(
                boolean_indexing=False, data_dependent_shapes=False, enabled_extensions=())
            return array_api_strict
        if self.name == "torch":
            import torch

            return torch
        if self.name == "jax":
            import jax

            jax.config.update("jax_enable_x64", True)
            jax.config.update("jax_default_matmul_precision", "float32")
            import jax.numpy as jnp

            return jnp
        import cupy

        cupy.zeros(1).sum()
        return cupy

    def asarray(self, a, dtype=None):
        """A fresh array of the library holding ``a`` (cast to the dtype named ``dtype``)."""
        mod = self._mod()
        a = np.asarray(a if dtype is None else np.asarray(a, dtype=dtype))
        if self.name == "torch":
            return mod.from_numpy(a.copy())
        if self.name == "numpy":
            return a.copy()
        return mod.asarray(a)

    def to_numpy(self, x):
        """A result copied back to NumPy."""
        if self.name == "torch":
            return x.detach().cpu().numpy()
        if self.name == "cupy":
            return x.get()
        if self.name == "array_api_strict":
            return np.from_dlpack(x).copy()
        return np.asarray(x)


def _convert(backend, v, dtype):
    """A case's argument for ``backend``: arrays converted (floating ones to ``dtype``)."""
    if isinstance(v, np.ndarray):
        return backend.asarray(v, dtype if v.dtype.kind == "f" else None)
    return v


def _cast_np(v, dtype):
    """A floating array rounded to ``dtype`` and back to float64; anything else as is."""
    if isinstance(v, np.ndarray) and v.dtype.kind == "f":
        return np.asarray(v, dtype=dtype).astype(np.float64)
    return v


class _Check:
    """One run of the check: the registry, the oracles, and what is computed once and
    reused across backends (oracle values, tolerances, NumPy's gradients)."""

    def __init__(self, functions, which, progress):
        from nce_ref.autodiff import registry
        from nce_ref.testing.oracles import oracles

        self.registry = registry()
        self.oracles = oracles()
        self.names = sorted(n for n in self.registry if functions is None or n in functions)
        self.which = which
        self.progress = progress
        self._oracle: dict = {}
        self._tol: dict = {}
        self._grad: dict = {}

    def oracle(self, name, ci, case, dtype) -> np.ndarray:
        """The mpmath oracle's value on the case's inputs rounded to ``dtype``, in float64."""
        key = (name, ci, dtype)
        if key not in self._oracle:
            self._oracle[key] = self.oracles[name](
                *[_cast_np(a, dtype) for a in case.args],
                **{k: _cast_np(v, dtype) for k, v in case.kwargs.items()})
        return np.asarray(self._oracle[key], dtype=np.float64)

    def tolerances(self, name, ci, case, dtype, want) -> tuple[float, float]:
        """The table's rtol and an atol scaled by the value's first-order sensitivity to
        its inputs (the rule of verify() and the test suite)."""
        from nce_ref.testing import call_tolerances

        key = (name, ci, dtype)
        if key not in self._tol:
            self._tol[key] = call_tolerances(self.registry[name].public, case.args,
                                             case.kwargs, dtype, want)
        return self._tol[key]

    def numpy_grads(self, name, ci, case, ct_np) -> dict:
        """NumPy's float64 analytic gradients of the case for the cotangent ``ct_np``."""
        from nce_ref import vjp

        key = (name, ci)
        if key not in self._grad:
            _, b_np = vjp(self.registry[name].public, *case.args, **case.kwargs)
            self._grad[key] = {k: np.asarray(v) for k, v in b_np(ct_np).items()}
        return self._grad[key]


def run_check(backend_names=None, functions=None, which="all", progress=None):
    """Run the verification; return the list of :class:`Row`."""
    check = _Check(functions, which, progress)
    rows: list[Row] = []
    for bname, backend in _backend_objects(backend_names or BACKENDS):
        why = backend.unavailable()
        if why is not None:
            rows.append(Row("*", bname, "-", failures=[f"skipped: {why}"]))
            continue
        for dtype in ("float64", "float32"):
            rows += [_check_function(check, name, bname, backend, dtype) for name in check.names]
    return rows


def _check_function(check: _Check, name, bname, backend, dtype) -> Row:
    """The :class:`Row` of one function on one backend in one dtype: every case."""
    from nce_ref.testing.cases import cases_for

    row = Row(name, bname, dtype)
    cases = cases_for(name, which=check.which)
    if name not in check.oracles or not cases:
        row.failures.append("no oracle or no cases registered")
        return row
    for ci, case in enumerate(cases):
        if check.progress:
            check.progress(f"{name} / {bname} / {dtype}: {case.label}")
        row.cases += 1
        _check_case(check, row, backend, ci, case)
    return row


def _check_case(check: _Check, row: Row, backend, ci, case) -> None:
    """Check one case's value against the oracle and, in float64, its gradients."""
    from nce_ref import vjp

    name, dtype = row.function, row.dtype
    entry = check.registry[name]
    want = check.oracle(name, ci, case, dtype)
    rtol, atol = check.tolerances(name, ci, case, dtype, want)
    rtol *= getattr(backend, "tol_scale", 1.0)
    atol *= getattr(backend, "tol_scale", 1.0)
    try:
        args = [_convert(backend, a, dtype) for a in case.args]
        kwargs = {k: _convert(backend, v, dtype) for k, v in case.kwargs.items()}
        value, back = vjp(entry.public, *args, **kwargs)
        got = np.asarray(backend.to_numpy(value), dtype=np.float64)
    except FloatingPointError:
        if dtype == "float32" and not np.all(np.abs(want) < 1e37):
            return  # a clear overflow error where float32 cannot hold it
        raise
    except Exception as exc:  # report, never crash the table
        row.failures.append(f"{case.label}: {type(exc).__name__}: {exc}")
        return
    _check_value(row, case, got, want, rtol, atol)
    if dtype != "float64":
        return
    ct_np = None if want.ndim == 0 else np.linspace(-1, 1, want.size).reshape(want.shape)
    if row.backend == "numpy":
        _check_grad_fd(row, entry, case, ct_np)
    else:
        _check_grad_vs_numpy(row, backend, back, check.numpy_grads(name, ci, case, ct_np),
                             case, ct_np)


def _check_value(row: Row, case, got, want, rtol, atol) -> None:
    """Compare a value with the oracle within ``atol + rtol |want|``."""
    err = float(np.max(np.abs(got - want) / (rtol * np.abs(want) + atol),
                       initial=0.0)) if want.size else 0.0
    row.value_err = max(row.value_err, err)
    if not np.all(np.isfinite(got)) or err > 1.0:
        row.failures.append(f"{case.label}: value {got.ravel()[:3]} vs oracle {want.ravel()[:3]}")


def _check_grad_fd(row: Row, entry, case, ct_np) -> None:
    """NumPy float64: the analytic gradients against central finite differences."""
    from nce_ref.testing import check_grad

    row.grad_ref = "finite differences"
    if not case.fd:
        return
    rep = check_grad(entry.public, *case.args, raise_on_fail=False, cotangent=ct_np, **case.kwargs)
    e = rep.worst_rel / 1e-5
    row.grad_err = max(row.grad_err, e)
    if e > 1.0:
        row.failures.append(f"{case.label}: gradient off by rel {rep.worst_rel:.3g} "
                            "against finite differences")


def _check_grad_vs_numpy(row: Row, backend, back, ref_grads: dict, case, ct_np) -> None:
    """Another backend in float64: its gradients against NumPy's analytic ones."""
    row.grad_ref = "NumPy analytic"
    try:
        g = back(None if ct_np is None else backend.asarray(ct_np, "float64"))
    except Exception as exc:
        row.failures.append(f"{case.label}: gradient raised {exc!r}")
        return
    for k, ref in ref_grads.items():
        gg = np.asarray(backend.to_numpy(g[k]), dtype=np.float64)
        sc = max(1.0, float(np.max(np.abs(ref), initial=0.0)))
        e = float(np.max(np.abs(gg - ref), initial=0.0)) / (1e-10 * sc)
        row.grad_err = max(row.grad_err, e)
        if e > 1.0:
            row.failures.append(f"{case.label}: gradient of {k} differs from "
                                f"NumPy by {e * 1e-10 * sc:.3g}")


def _table(rows) -> str:
    """The rows as a text table, one line per function, backend and dtype."""
    head = ("function", "backend", "dtype", "cases", "value err/tol", "grad err/tol",
            "grad reference", "result")
    body = []
    for r in rows:
        if r.function == "*":
            body.append(("(all)", r.backend, "-", "-", "-", "-", "-", r.failures[0][:60]))
            continue
        body.append((r.function, r.backend, r.dtype, str(r.cases), f"{r.value_err:.3g}",
                     f"{r.grad_err:.3g}" if r.grad_ref else "-", r.grad_ref or "-",
                     "pass" if r.ok else "FAIL"))
    widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in body]
    return "\n".join(lines)


def _print_text(rows, tested, failed, seconds: float) -> None:
    """The table, one line per failure (five per row at most) and the totals."""
    print(_table(rows))
    print()
    for r in failed:
        for f in r.failures[:5]:
            print(f"FAIL {r.function} [{r.backend}, {r.dtype}] {f}")
    skipped = [r for r in rows if r.function == "*"]
    print(f"{len(tested) - len(failed)} passed, {len(failed)} failed"
          + (f" ({len(skipped)} backend(s) not installed)" if skipped else "")
          + f" in {seconds:.1f}s")


def run(args) -> int:
    """Run ``nce-ref check``: 0 when every row passes, 1 on a failure, 2 on bad arguments."""
    names = None if args.backends == "all" else [b.strip() for b in args.backends.split(",")]
    if names:
        bad = [n for n in names if n not in BACKENDS]
        if bad:
            print(f"nce-ref check: unknown backend(s) {bad}; choose from {', '.join(BACKENDS)}",
                  file=sys.stderr)
            return 2
    funcs = None if args.functions == "all" else {f.strip() for f in args.functions.split(",")}
    t0 = time.perf_counter()
    tty = sys.stderr.isatty() and not args.json

    def progress(msg):
        if tty:
            sys.stderr.write("\r\x1b[K" + msg[:100])
            sys.stderr.flush()

    rows = run_check(names, funcs, args.cases, progress)
    if tty:
        sys.stderr.write("\r\x1b[K")
    tested = [r for r in rows if r.function != "*"]
    failed = [r for r in tested if not r.ok]
    if args.json:
        print(json.dumps({"rows": [asdict(r) | {"ok": r.ok} for r in rows],
                          "passed": not failed and bool(tested)}, indent=2))
    else:
        _print_text(rows, tested, failed, time.perf_counter() - t0)
    return 1 if failed or not tested else 0
