"""``nce-ref verify``: check another implementation against the reference from the shell.

    nce-ref verify module.path:function --as info_nce [--convention NAME]
                   [--framework torch|jax|numpy] [--cases standard|edge|all]
                   [--dtype float64|float32|all] [--param temperature=tau]
                   [--accept capped] [--world-size W [--engine torch|jax]] [--json]

The target is imported (the current directory is on the path), called on every
case of the reference (``nce_ref.testing.verify``) and reported as a table, or
as JSON with ``--json``.  A class is instantiated without arguments (a
``torch.nn.Module`` such as ``info_nce:InfoNCE``).

Exit status: 0 when every case agrees (``--accept``-ed deviations included), 1 when
some value or gradient disagrees, 2 when the target cannot be verified at all (it
cannot be imported, is not callable, raises on every case, returns non-arrays or the
wrong shape; or, sharded, a rank raised or hung) or the arguments are wrong, and also
2 when nothing disagrees but some cases could not run (the implementation raised on
them: the table is printed).  A target that cannot be verified at all is reported in
one line, without a traceback (``--traceback`` shows it).
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
    parser.add_argument("--param", action="append", default=[], metavar="REF=NAME",
                        help="the target's name for a parameter of the nce_ref function: "
                             "temperature=tau, or temperature=1/logit_scale for an inverse "
                             "(repeatable; tau, t, T, temp and logit_scale are recognised without it)")
    parser.add_argument("--accept", action="append", default=[], metavar="DEVIATION",
                        help="a known deviation that does not fail: capped, nan, inf, zero, or a "
                             "case label (repeatable); any other failure still exits 1")
    parser.add_argument("--world-size", type=int, default=None, metavar="W",
                        help="verify a sharded implementation on W ranks (each rank calls the "
                             "target on its shard, with its own collectives)")
    parser.add_argument("--engine", choices=("torch", "jax"), default="torch",
                        help="with --world-size: W gloo processes (torch) or W simulated JAX "
                             "devices (jax)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="with --world-size: the longest a case may take on every rank")
    parser.add_argument("--value", choices=("auto", "share", "global"), default="auto",
                        help="with --world-size: what each rank returns (auto: read from the values)")
    parser.add_argument("--equal-shards", action="store_true",
                        help="with --world-size: give every rank the same number of rows "
                             "(for implementations that require it)")
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


def _params(items: list[str]) -> dict[str, str]:
    """``--param REF=NAME`` items as ``{REF: NAME}``."""
    out = {}
    for it in items:
        ref, sep, name = it.partition("=")
        if not sep or not ref.strip() or not name.strip():
            raise ValueError(f"--param {it!r} must look like temperature=tau (or temperature=1/logit_scale)")
        out[ref.strip()] = name.strip()
    return out


def run(args) -> int:
    """Run ``nce-ref verify``: 0 when every case agrees, 1 when some disagree, 2 otherwise."""
    from ..testing import VerifyError, verify
    from ..testing._verify.guide import lookup_reference

    try:
        lookup_reference(args.reference)
    except (TypeError, ValueError) as exc:
        return _fail(args, f"--as: {exc}")
    try:
        params = _params(args.param)
    except ValueError as exc:
        return _fail(args, str(exc))
    try:
        impl = load_target(args.target)
    except _BadTarget as exc:
        return _fail(args, str(exc))
    kwargs = dict(convention=args.convention, framework=args.framework, cases=args.cases,
                  dtype=args.dtype, grads=args.grads, seed=args.seed, params=params or None,
                  accept=args.accept or None)
    try:
        if args.world_size is not None:
            from ..testing import verify_sharded

            report = verify_sharded(impl, args.reference, world_size=args.world_size,
                                    engine=args.engine, timeout=args.timeout, value=args.value,
                                    equal_shards=args.equal_shards, **kwargs)
        else:
            report = verify(impl, args.reference, **kwargs)
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
    return report.exit_code
