"""What to tell a user whose call does not fit: the argument layout each function expects,
the ready adapters of ``nce_ref.testing.conventions``, the function name they probably
meant, and why some cases raised inside the implementation.
"""

from __future__ import annotations

import difflib

import numpy as np

from ...autodiff import Entry, lookup, registry
from .. import conventions
from .report import CaseResult

__all__ = ["LAYOUTS", "adapters_for", "explain_errors", "layout_hint", "lookup_reference"]

#: the argument layout of each function, as an implementation receives it
LAYOUTS = {
    "info_nce": "query (N, D), key (N, D)[, negatives (M, D), or (N, M, D) with "
                "negative_mode='paired'] positionally, options by keyword",
    "nt_xent": "z1 (N, D), z2 (N, D): the two views as two arrays (not concatenated)",
    "supcon": "features (N, V, D), view-major: features[:, v] is view v of every sample "
              "((N, D) is one view), then labels (N,) per sample or None; labels=None means "
              "each sample's views are its only positives. A library that takes (V*N, D) rows "
              "with tiled labels needs an adapter (see nce_ref.testing.conventions:pml_supcon)",
    "triplet": "anchor (N, D), positive (N, D), negative (N, D)",
    "batch_triplet": "embeddings (N, D), labels (N,)",
    "siglip": "image (N, D), text (N, D)",
    "similarity": "a (N, D), b (M, D)",
    "info_nce_from_scores": "scores (N, M) whose diagonal holds the positives",
    "mi.bound_from_embeddings": "x (N, D), y (N, D)[, log_baseline]",
}


def layout_hint(name: str) -> str:
    """``nce_ref.NAME takes ...`` (MI bounds on scores: the critic's score matrix)."""
    lay = LAYOUTS.get(name)
    if lay is None and name.startswith("mi."):
        lay = "scores (N, N) of the critic, the joint samples on the diagonal"
    return f"nce_ref.{name} takes {lay}" if lay else ""


def adapters_for(name: str) -> list[str]:
    """``module:function (convention)`` of every ready adapter for the function ``name``."""
    return [f"{c.adapter} ({c.name})" for c in conventions.for_reference(name)
            if c.adapter and c.adapter.startswith("nce_ref.")]


def lookup_reference(reference) -> Entry:
    """:func:`nce_ref.autodiff.lookup`, whose error suggests the closest registered names."""
    try:
        return lookup(reference)
    except ValueError as exc:
        if not isinstance(reference, str):
            raise
        names = sorted(registry())
        squash = {n.replace("_", "").replace(".", "").lower(): n for n in names}
        key = reference.replace("_", "").replace("-", "").replace(".", "").lower()
        near = [squash[key]] if key in squash else []
        near += [n for n in difflib.get_close_matches(reference, names, n=3, cutoff=0.6)
                 if n not in near]
        if not near:
            raise
        raise ValueError(f"{exc}; did you mean {' or '.join(repr(n) for n in near)}?") from None


def _arg_kind(v) -> str:
    if v is None:
        return "None"
    if isinstance(v, np.ndarray):
        return f"{v.ndim}-d"
    return type(v).__name__


def _separating_argument(entry: Entry, raised: list[CaseResult], ran_ok: list[CaseResult],
                         cases: dict) -> str:
    """A positional argument whose dimension (or absence) sets the raising cases apart."""
    params = list(entry.signature.parameters)
    for i, name in enumerate(params[:4]):
        def kind(r, i=i):
            args = cases[r.label].args
            return _arg_kind(args[i]) if i < len(args) else "absent"

        bad = {kind(r) for r in raised}
        good = {kind(r) for r in ran_ok}
        if bad and good and not bad & good:
            return (f"it raised exactly on the cases whose `{name}` is "
                    f"{' or '.join(sorted(bad))} (it ran where `{name}` is {' or '.join(sorted(good))})")
    return ""


def explain_errors(entry: Entry, results: list[CaseResult], cases: dict) -> str:
    """The diagnosis line for cases that raised inside the implementation: not a
    disagreement, the layout it probably expects, and the ready adapters."""
    raised = [r for r in results if r.status == "error" and r.problem == "exception"]
    if not raised:
        return ""
    ran_ok = [r for r in results if r.status in ("pass", "fail", "accepted")]
    ran = [r for r in results if r.status != "n/a"]
    first = raised[0]
    sep = _separating_argument(entry, raised, ran_ok, cases)
    msg = (f"the implementation raised on {len(raised)} of {len(ran)} runs (first: "
           f"{first.exception} [case '{first.label}', {first.dtype}]): these could not run, "
           "which is not a disagreement")
    if sep:
        msg += f"; {sep}"
    msg += "; its signature or argument layout probably differs"
    hint = layout_hint(entry.name)
    if hint:
        msg += f" ({hint})"
    ad = adapters_for(entry.name)
    msg += (": wrap it in a function with nce_ref's layout"
            + (f", or verify a ready adapter: {', '.join(ad)}" if ad else "")
            + "; a case the implementation cannot take may raise NotImplementedError (n/a)")
    return msg
