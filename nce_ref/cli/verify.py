"""``nce-ref verify``: check another implementation against the reference from the shell.

    nce-ref verify module.path:function --as info_nce [--convention NAME]
                   [--framework torch|jax|numpy] [--cases standard|edge|all]
                   [--dtype float64|float32|all] [--json]

The target is imported (the current directory is on the path), called on every
case of the reference (``nce_ref.testing.verify``) and reported as a table, or
as JSON with ``--json``.  A class is instantiated without arguments (a
``torch.nn.Module`` such as ``info_nce:InfoNCE``).

Exit status: 0 when every case agrees, 1 when some disagree, 2 when the target
cannot be verified at all (it cannot be imported, is not callable, raises on every
case, returns non-arrays or the wrong shape) or the arguments are wrong.  Those
are reported in one line, without a traceback (``--traceback`` shows it).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback

PROG = "nce-ref verify"


class _BadTarget(Exception):
    pass


def configure(parser) -> None:
    """Add ``nce-ref verify``'s arguments to ``parser``."""
    parser.add_argument("target", metavar="module.path:function",
                        help="the implementation to verify (a function, a callable object or a "
                             "class instantiated without arguments)")
    parser.add_argument("--as", dest="reference", required=True, metavar="FUNCTION",
                        help="the nce_ref function it implements (info_nce, nt_xent, mi.nwj...)")
    parser.add_argument("--convention", default=None, metavar="NAME",
                        help="the library whose defaults it follows (info_nce_pytorch, lightly, "
                             "pytorch_metric_learning, optax, open_clip, supcontrast...)")
    parser.add_argument("--framework", choices=("torch", "jax", "numpy"), default=None,
                        help="default: the convention's, else detected from the target's module")
    parser.add_argument("--cases", choices=("standard", "edge", "all"), default="standard")
    parser.add_argument("--dtype", choices=("float64", "float32", "all"), default="all")
    parser.add_argument("--no-grads", dest="grads", action="store_false",
                        help="compare values only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show-na", action="store_true",
                        help="list the cases that do not apply to the target in the table")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--traceback", action="store_true",
                        help="print the traceback of an unexpected error")


def load_target(spec: str):
    """Import ``module.path:attr.path`` (or ``module.path.attr``) and return the callable."""
    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
    else:
        mod_name, _, attr = spec.rpartition(".")
    if not mod_name or not attr:
        raise _BadTarget(f"target {spec!r} must look like module.path:function")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(mod_name)
    except Exception as exc:  # ImportError, SyntaxError, an error at import time
        msg = str(exc).strip().splitlines()
        raise _BadTarget(f"cannot import module {mod_name!r}: {type(exc).__name__}: "
                         f"{msg[0] if msg else ''}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise _BadTarget(f"{getattr(obj, '__name__', mod_name)!r} has no attribute {part!r} "
                             f"(target {spec!r})")
        obj = getattr(obj, part)
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise _BadTarget(f"{spec} is a class and could not be instantiated without "
                             f"arguments: {type(exc).__name__}: {exc}") from None
    if not callable(obj):
        raise _BadTarget(f"{spec} is not callable (it is a {type(obj).__name__})")
    return obj


def _fail(args, message: str) -> int:
    """Report ``message`` in one line (and as JSON with ``--json``); return exit status 2."""
    line = f"{PROG}: error: {message}"
    if args.json:
        print(json.dumps({"error": message, "exit_code": 2}))
    print(line, file=sys.stderr)
    return 2


def run(args) -> int:
    """Run ``nce-ref verify``: 0 when every case agrees, 1 when some disagree, 2 otherwise."""
    from ..autodiff import lookup
    from ..testing import VerifyError, verify

    try:
        lookup(args.reference)
    except (TypeError, ValueError) as exc:
        return _fail(args, f"--as: {exc}")
    try:
        impl = load_target(args.target)
    except _BadTarget as exc:
        return _fail(args, str(exc))
    try:
        report = verify(impl, args.reference, convention=args.convention, framework=args.framework,
                        cases=args.cases, dtype=args.dtype, grads=args.grads, seed=args.seed)
    except VerifyError as exc:
        return _fail(args, str(exc))
    except (TypeError, ValueError) as exc:  # an unknown convention, framework...
        return _fail(args, str(exc))
    except Exception as exc:  # a bug: still one line unless asked for the traceback
        if args.traceback:
            traceback.print_exc()
        return _fail(args, f"unexpected {type(exc).__name__}: {exc} (rerun with --traceback)")
    if args.json:
        print(report.to_json())
    else:
        text = str(report)
        if args.show_na:
            text = text.replace(report.table(), report.table(show_na=True))
        print(text)
    return 0 if report.passed else 1
