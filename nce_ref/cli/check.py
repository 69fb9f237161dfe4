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
    parser.add_argument("--backends", default="all",
                        help="comma-separated subset of: " + ", ".join(BACKENDS))
    parser.add_argument("--functions", default="all", help="comma-separated registered names")
    parser.add_argument("--cases", choices=("standard", "edge", "all"), default="all")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _backend_objects(names):
    import importlib.util

    if importlib.util.find_spec("backends") is not None:  # running from a checkout
        try:
            import backends as b

            return [(n, b.get(n)) for n in names]
        except Exception:  # pragma: no cover
            pass
    return [(n, _Minimal(n)) for n in names]


class _Minimal:
    """Backend shim for an installed nce_ref without the repository's ``backends/``."""

    def __init__(self, name):
        self.name = name
        self.tol_scale = 4.0 if name == "cupy" else 1.0

    def unavailable(self):
        try:
            self._mod()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def _mod(self):
        if self.name == "numpy":
            return np
        if self.name == "array_api_strict":
            import array_api_strict

            return array_api_strict
        if self.name == "torch":
            import torch

            return torch
        if self.name == "jax":
            import jax

            jax.config.update("jax_enable_x64", True)
            import jax.numpy as jnp

            return jnp
        import cupy

        cupy.zeros(1).sum()
        return cupy

    def asarray(self, a, dtype=None):
        mod = self._mod()
        a = np.asarray(a if dtype is None else np.asarray(a, dtype=dtype))
        if self.name == "torch":
            return mod.from_numpy(a.copy())
        if self.name == "numpy":
            return a.copy()
        return mod.asarray(a)

    def to_numpy(self, x):
        if self.name == "torch":
            return x.detach().cpu().numpy()
        if self.name == "cupy":
            return x.get()
        if self.name == "array_api_strict":
            return np.from_dlpack(x).copy()
        return np.asarray(x)


def _convert(backend, v, dtype):
    if isinstance(v, np.ndarray):
        return backend.asarray(v, dtype if v.dtype.kind == "f" else None)
    return v


def _cast_np(v, dtype):
    if isinstance(v, np.ndarray) and v.dtype.kind == "f":
        return np.asarray(v, dtype=dtype).astype(np.float64)
    return v


def run_check(backend_names=None, functions=None, which="all", progress=None):
    """Run the verification; return the list of :class:`Row`."""
    from nce_ref import vjp
    from nce_ref.autodiff import registry
    from nce_ref.testing import call_tolerances, check_grad
    from nce_ref.testing.cases import cases_for
    from nce_ref.testing.oracles import oracles

    reg = registry()
    orc = oracles()
    names = sorted(n for n in reg if functions is None or n in functions)
    rows: list[Row] = []
    oracle_cache: dict = {}
    grad_cache: dict = {}
    for bname, backend in _backend_objects(backend_names or BACKENDS):
        why = backend.unavailable()
        if why is not None:
            rows.append(Row("*", bname, "-", failures=[f"skipped: {why}"]))
            continue
        for dtype in ("float64", "float32"):
            for name in names:
                entry = reg[name]
                row = Row(name, bname, dtype)
                cases = cases_for(name, which=which)
                if name not in orc or not cases:
                    row.failures.append("no oracle or no cases registered")
                    rows.append(row)
                    continue
                for ci, case in enumerate(cases):
                    if progress:
                        progress(f"{name} / {bname} / {dtype}: {case.label}")
                    row.cases += 1
                    key = (name, ci, dtype)
                    if key not in oracle_cache:
                        oracle_cache[key] = orc[name](
                            *[_cast_np(a, dtype) for a in case.args],
                            **{k: _cast_np(v, dtype) for k, v in case.kwargs.items()})
                    want = np.asarray(oracle_cache[key], dtype=np.float64)
                    # the table's rtol and an atol scaled by the value's first-order
                    # sensitivity to its inputs (the rule of verify() and the test suite)
                    tol_key = ("tol",) + key
                    if tol_key not in oracle_cache:
                        oracle_cache[tol_key] = call_tolerances(entry.public, case.args, case.kwargs,
                                                                dtype, want)
                    rtol, atol = oracle_cache[tol_key]
                    rtol *= getattr(backend, "tol_scale", 1.0)
                    atol *= getattr(backend, "tol_scale", 1.0)
                    try:
                        args = [_convert(backend, a, dtype) for a in case.args]
                        kwargs = {k: _convert(backend, v, dtype) for k, v in case.kwargs.items()}
                        value, back = vjp(entry.public, *args, **kwargs)
                        got = np.asarray(backend.to_numpy(value), dtype=np.float64)
                    except FloatingPointError:
                        if dtype == "float32" and not np.all(np.abs(want) < 1e37):
                            continue  # a clear overflow error where float32 cannot hold it
                        raise
                    except Exception as exc:  # report, never crash the table
                        row.failures.append(f"{case.label}: {type(exc).__name__}: {exc}")
                        continue
                    err = float(np.max(np.abs(got - want) / (rtol * np.abs(want) + atol),
                                       initial=0.0)) if want.size else 0.0
                    row.value_err = max(row.value_err, err)
                    if not np.all(np.isfinite(got)) or err > 1.0:
                        row.failures.append(f"{case.label}: value {got.ravel()[:3]} vs oracle "
                                            f"{want.ravel()[:3]}")
                    if dtype != "float64":
                        continue
                    # gradients
                    ct_np = None if want.ndim == 0 else np.linspace(-1, 1, want.size).reshape(want.shape)
                    if bname == "numpy":
                        row.grad_ref = "finite differences"
                        if case.fd:
                            rep = check_grad(entry.public, *case.args, raise_on_fail=False,
                                             cotangent=ct_np, **case.kwargs)
                            e = rep.worst_rel / 1e-5
                            row.grad_err = max(row.grad_err, e)
                            if e > 1.0:
                                row.failures.append(f"{case.label}: gradient off by rel "
                                                    f"{rep.worst_rel:.3g} against finite differences")
                    else:
                        row.grad_ref = "NumPy analytic"
                        gkey = (name, ci)
                        if gkey not in grad_cache:
                            _, b_np = vjp(entry.public, *case.args, **case.kwargs)
                            grad_cache[gkey] = {k: np.asarray(v) for k, v in b_np(ct_np).items()}
                        try:
                            g = back(None if ct_np is None else backend.asarray(ct_np, "float64"))
                        except Exception as exc:
                            row.failures.append(f"{case.label}: gradient raised {exc!r}")
                            continue
                        for k, ref in grad_cache[gkey].items():
                            gg = np.asarray(backend.to_numpy(g[k]), dtype=np.float64)
                            sc = max(1.0, float(np.max(np.abs(ref), initial=0.0)))
                            e = float(np.max(np.abs(gg - ref), initial=0.0)) / (1e-10 * sc)
                            row.grad_err = max(row.grad_err, e)
                            if e > 1.0:
                                row.failures.append(f"{case.label}: gradient of {k} differs from "
                                                    f"NumPy by {e * 1e-10 * sc:.3g}")
                rows.append(row)
    return rows


def _table(rows) -> str:
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


def run(args) -> int:
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
        print(_table(rows))
        print()
        for r in failed:
            for f in r.failures[:5]:
                print(f"FAIL {r.function} [{r.backend}, {r.dtype}] {f}")
        skipped = [r for r in rows if r.function == "*"]
        print(f"{len(tested) - len(failed)} passed, {len(failed)} failed"
              + (f" ({len(skipped)} backend(s) not installed)" if skipped else "")
              + f" in {time.perf_counter() - t0:.1f}s")
    return 1 if failed or not tested else 0
