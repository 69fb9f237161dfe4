"""Import the installed peer libraries (lightly, open_clip) beside a CPU-only torch.

lightly and open_clip import torchvision.  The torchvision wheel of this project's
package index is a CUDA build: its ``_C`` extension does not load beside the CPU
torch, so its operators are never defined, and ``torchvision/_meta_registrations.py``
then fails at import with ``RuntimeError: operator torchvision::nms does not exist``
(it registers a fake kernel for ``nms`` and ``qnms`` unconditionally).  Neither loss
needs a torchvision operator.

:func:`import_peer` imports a module after making torchvision importable without
editing it: when the extension does not load, it *defines* the missing operators'
schemas with ``torch.library`` (their kernels raise ``NotImplementedError`` naming
the reason), so the fake registrations succeed; torchvision's other operators are
registered only when its extension loaded, so nothing else fails.  When the extension
loads (a matching torchvision build), nothing is defined.

>>> from nce_ref.testing.peers import import_peer, peer_unavailable
>>> why = peer_unavailable("lightly.loss")        # None, or why it cannot import
>>> if why is None:
...     NTXentLoss = import_peer("lightly.loss").NTXentLoss
"""

from __future__ import annotations

import importlib
import re
import sys
from types import ModuleType

__all__ = ["import_peer", "peer_unavailable", "torchvision_shim_installed"]

#: torchvision's operators that its Python code registers whether or not the
#: extension loaded (torchvision 0.28/0.29 ``_meta_registrations.py``), with their schemas
_TORCHVISION_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_MISSING = re.compile(r"operator torchvision::(\w+) does not exist")

_lib = None            # the torch.library.Library holding the definitions: kept alive
_defined: set[str] = set()
_why_extension: str | None = None


def torchvision_shim_installed() -> tuple[str, ...]:
    """The torchvision operators :func:`import_peer` defined (empty when none were needed)."""
    return tuple(sorted(_defined))


def _extension_loads() -> bool:
    """Whether torchvision's compiled extension loads beside this torch (without importing
    torchvision's package, whose ``__init__`` is what fails)."""
    global _why_extension
    import importlib.util
    import os

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # not installed: nothing to patch; the import reports it
    for d in spec.submodule_search_locations:
        for name in os.listdir(d):
            if name.startswith("_C.") and name.endswith((".so", ".pyd")):
                try:
                    torch.ops.load_library(os.path.join(d, name))
                except (OSError, RuntimeError) as exc:
                    _why_extension = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    return False
                return True
    return True


def _define(op: str) -> None:
    """Define ``torchvision::op`` with a kernel that raises ``NotImplementedError``."""
    global _lib
    import torch

    if op in _defined:
        return
    if _lib is None:
        _lib = torch.library.Library("torchvision", "FRAGMENT")
    _lib.define(_TORCHVISION_OPS.get(op, f"{op}(Tensor[] args) -> Tensor"))

    def unavailable(*args, **kwargs):
        raise NotImplementedError(
            f"torchvision::{op} is unavailable: torchvision's compiled extension does not load "
            f"beside this torch ({_why_extension}); nce_ref.testing.peers defined the operator "
            "only so that torchvision imports")

    _lib.impl(op, unavailable, "CompositeExplicitAutograd")
    _defined.add(op)


def _forget(prefixes: tuple[str, ...]) -> None:
    """Drop the partially imported modules under ``prefixes`` from ``sys.modules``."""
    for name in [m for m in sys.modules if m.split(".")[0] in prefixes]:
        del sys.modules[name]


def import_peer(module: str) -> ModuleType:
    """Import ``module`` (``"lightly.loss"``, ``"open_clip"``), making torchvision
    importable first when its extension does not load beside this torch.

    Raises whatever the import raises otherwise (``ModuleNotFoundError`` for a peer
    that is not installed).
    """
    try:
        return importlib.import_module(module)
    except RuntimeError as exc:
        if not _MISSING.search(str(exc)):
            raise
    top = module.split(".")[0]
    if _extension_loads():  # a matching build: the failure is something else
        _forget(("torchvision", top))
        return importlib.import_module(module)
    for op in _TORCHVISION_OPS:
        _define(op)
    for _ in range(16):  # a later torchvision may register fakes for more operators
        _forget(("torchvision", top))
        try:
            return importlib.import_module(module)
        except RuntimeError as exc:
            m = _MISSING.search(str(exc))
            if m is None or m.group(1) in _defined:
                raise
            _define(m.group(1))
    raise ImportError(f"cannot import {module}: torchvision keeps asking for undefined operators")


def peer_unavailable(module: str) -> str | None:
    """None when :func:`import_peer` imports ``module``, else the one-line reason (for a
    ``pytest.skip``)."""
    try:
        import_peer(module)
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        return f"{module} does not import: {type(exc).__name__}: {msg[0] if msg else ''}"
    return None
