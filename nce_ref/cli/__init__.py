"""The ``nce-ref`` command.

Subcommands live in their own modules, each defining ``configure(parser)`` and
``run(args) -> int``:

- ``check``  (``nce_ref.cli.check``): self-verification on every installed backend;
- ``bounds`` (``nce_ref.cli.bounds``): the MI-bounds demonstration;
- ``verify`` (``nce_ref.cli.verify``): check another implementation.

The drivers generate data and print tables with NumPy (like ``nce_ref.testing``);
no kernel lives here.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util

SUBCOMMANDS = {
    "check": ("nce_ref.cli.check", "verify every function on every installed backend"),
    "bounds": ("nce_ref.cli.bounds", "the MI-bounds experiment: I(X;Y) >= log N - L and its rivals"),
    "verify": ("nce_ref.cli.verify", "verify another implementation against the reference"),
}


def _present(module: str) -> bool:
    """Whether ``module`` can be found (a subcommand's module may be absent)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def build_parser() -> argparse.ArgumentParser:
    """The ``nce-ref`` parser with one subparser per present subcommand."""
    parser = argparse.ArgumentParser(
        prog="nce-ref",
        description="nce_ref: the reference for contrastive losses and MI estimators.")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"nce-ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        if not _present(module):
            continue
        p = sub.add_parser(name, help=help_, description=help_)
        mod = importlib.import_module(module)
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; the help and 2 without one."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)
