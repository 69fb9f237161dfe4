"""The logits of a streamed kernel, prepared once for every caller.

``info_nce``, ``nt_xent``, ``supcon`` and ``mi.bound_from_embeddings`` stream a score
matrix ``z = s(a, b)/τ`` whose similarity is a product of per-row features
(:func:`nce_ref.similarity.bilinear_features`), or the square root of one
(``neg_euclidean``).  Before any GEMM they need the same four things, decided here
from the inputs and options only:

- the temperature folded into the row features, ``a = fa/τ`` (``fa/τ²`` under the
  root, ``z = −sqrt(−(fa/τ²)·fb)``), and the root's noise floors
  (:func:`nce_ref.similarity.euclidean_noise`);
- a bound on ``|z|`` known before any GEMM: ``1/τ`` for cosine scores (in [−1, 1]),
  otherwise, where the caller asks for it, Cauchy–Schwarz on the features
  (``max‖a_i‖·max‖fb_j‖``, one O(N·D) pass and a host read), tightened by a clip;
- whether the kernels may sum ``e^z`` without a row shift (:meth:`StreamLogits.shift_free`);
- whether softmax entries can fall below the dtype's smallest normal number (``flush``).

The temperature's *value* is used where it can be read (:func:`nce_ref._array.concrete_float`):
a Python float and a concrete 0-d array give the same path; a lazy array (JAX under
``jit``) gives no bound and the shifted path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from array_api_compat import is_lazy_array

from ..similarity import KINDS, euclidean_noise, row_norm

Array = Any

__all__ = ["STREAMED_KINDS", "StreamLogits", "prepare_logits", "feature_kind", "buffers"]

#: similarities whose score matrix the engine streams: the bilinear ones, and the
#: euclidean distance as the root of the squared one's bilinear form
STREAMED_KINDS = KINDS


def feature_kind(kind: str) -> str:
    """The bilinear features a streamed similarity is computed from."""
    return "neg_sq_euclidean" if kind == "neg_euclidean" else kind


def buffers(kind: str) -> int:
    """Block buffers of the streamed kernel: two, four with the root's chain factor."""
    return 4 if kind == "neg_euclidean" else 2


@dataclass(frozen=True)
class StreamLogits:
    """``z = a fbᵀ`` (or ``−sqrt(−a fbᵀ)`` with ``root``), ready for a kernel.

    Attributes
    ----------
    a : array (R, K)
        The row features with the temperature folded in: ``fa / fold``.
    fb : array (C, K)
        The column features.
    fold : array (0-d)
        ``τ``, or ``τ²`` under the root: the row features' gradient is ``da / fold``.
    root : tuple of arrays or None
        The root's noise floors ``(u/τ², v)`` (see :func:`nce_ref.similarity.euclidean_noise`).
    bound : float or None
        ``max |z_ij|`` is at most this, known before any GEMM; None: unknown.
    flush : bool
        Softmax entries can fall below the dtype's smallest normal number.
    """

    a: Array
    fb: Array
    fold: Array
    root: tuple[Array, Array] | None
    bound: float | None
    flush: bool

    def shift_free(self, n_cols: int, dtype, xp) -> bool:
        """Whether ``e^z`` can be summed unshifted: ``2·bound + log(cols)`` below log(max)."""
        return shift_free(self.bound, n_cols, dtype, xp)


def shift_free(bound: float | None, n_cols: int, dtype, xp) -> bool:
    """Whether ``e^z`` with ``|z| <= bound`` can be summed unshifted over ``n_cols``."""
    return bound is not None and (
        2.0 * bound + math.log(max(n_cols, 1)) + 1.0 < math.log(xp.finfo(dtype).max))


def needs_flush(dtype, log_range: float | None, n_entries: int, xp) -> bool:
    """Whether softmax entries can fall below ``smallest_normal``.

    ``log_range`` bounds ``max z − min z`` within a row (``None``: unbounded).
    """
    if log_range is None:
        return True
    tiny = xp.finfo(dtype).smallest_normal
    return log_range + 2.0 * math.log(max(n_entries, 2)) > -math.log(tiny) - 8.0


def norm_bound(a: Array, fb: Array, xp) -> float | None:
    """``max_i ‖a_i‖ · max_j ‖fb_j‖ >= max |z_ij|`` (Cauchy–Schwarz), O(N·D), before any GEMM.

    ``None`` for lazy arrays (their values are not inspected).  The factor ``1 + 2⁻²⁰``
    covers the rounding of the norms and of the GEMM's dot products.
    """
    if is_lazy_array(a) or is_lazy_array(fb):
        return None
    bound = float(xp.max(row_norm(a, xp=xp))) * float(xp.max(row_norm(fb, xp=xp)))
    return bound * (1.0 + 2.0 ** -20) if math.isfinite(bound) else None


def prepare_logits(fa: Array, fb: Array, tau: Array, tau_value: float | None, *, kind: str,
                   n_entries: int, dtype, xp, bound_by_norms: bool = False,
                   clip: float | None = None) -> StreamLogits:
    """Fold the temperature, set up the root, bound the logits and decide the flush.

    Parameters
    ----------
    fa, fb : arrays (R, K), (C, K)
        Features of :func:`nce_ref.similarity.bilinear_features` of ``feature_kind(kind)``.
    tau : 0-d array
        The temperature in the computation dtype.
    tau_value : float or None
        Its value where it can be read (:func:`nce_ref._array.concrete_float`).
    kind : str
        The similarity.
    n_entries : int
        The number of logits in a softmax's reach (for the flush decision).
    bound_by_norms : bool
        Bound non-cosine logits by Cauchy–Schwarz on the features (a host read).
    clip : float, optional
        The logits are clipped to ``[−clip, clip]`` before use (SMILE).
    """
    if kind == "neg_euclidean":
        fold = tau * tau
        root = tuple(x / f for x, f in zip(euclidean_noise(fa, fb, xp), (fold, 1.0)))
    else:
        fold, root = tau, None
    a = fa / fold
    if kind == "cosine" and tau_value is not None:
        bound = 1.0 / tau_value
    elif bound_by_norms and root is None:
        bound = norm_bound(a, fb, xp)
    else:
        bound = None
    if clip is not None and math.isfinite(clip):
        bound = clip if bound is None else min(bound, clip)
    flush = needs_flush(dtype, None if bound is None else 2.0 * bound, n_entries, xp)
    return StreamLogits(a=a, fb=fb, fold=fold, root=root, bound=bound, flush=flush)
