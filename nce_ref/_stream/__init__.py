"""The streamed engine: the objectives over row blocks of a bilinear score matrix.

The public functions choose the engine with ``method="streamed"`` (or ``"auto"``); it
computes their dense references' values and gradients without the N x N matrix.

Modules:

- ``_config``: :class:`Tuning`, :func:`tuning`, :func:`get_tuning`, the sizes and
  thresholds, defaults read from the machine (public as ``nce_ref.Tuning`` etc.);
- ``_exec``: execution, the thread pool (created under a lock, reset after a fork),
  ``by_halves``, ``by_chunks``, ``by_row_chunks``;
- ``_policy``: block policy, ``choose_block``, ``on_accelerator``, ``exp_floor``,
  ``clamp_below``;
- ``_logits``: the logits' preparation (temperature folding, the root, the bound on
  ``|z|``, ``shift_free``, ``needs_flush``);
- ``_blocks``: block plumbing, ``logit_blocks``, ``root_logits``, the band mask
  (``set_band``, ``mask_band``), ``exp_block``, the gradient GEMMs;
- ``_rows``: per-row terms from a block's sums (InfoNCE, SupCon);
- ``ce``: :func:`ce_stream`, :func:`ce_stream_symmetric` and the generic InfoNCE block;
- ``supcon``: :func:`supcon_stream`, :func:`supcon_stream_groups` and their blocks;
- ``_numpy``: every NumPy specialisation, behind the generic function it speeds up;
  the only module of the library that knows NumPy.

Kernels and their callers:

- :func:`ce_stream`: ``info_nce`` (one direction, in-batch and unpaired negatives),
  ``nt_xent``, ``mi.bound_from_embeddings(bound="infonce")`` (through ``info_nce``),
  ``dcl`` (``pos=None``: no positive in the denominator);
- :func:`ce_stream_symmetric`: ``info_nce(symmetric=True)`` (CLIP);
- :func:`supcon_stream`: ``supcon`` with a mask, several labels per sample, or a
  reference set (``own=``: each anchor's own column by index);
- :func:`supcon_stream_groups`: ``supcon`` with single labels and no reference set;
- the other MI bounds stream their rows in ``mi.embeddings`` over ``_blocks``,
  ``_exec`` and ``_numpy``; ``siglip`` in ``losses.siglip`` over ``_blocks``,
  ``_numpy.np_sigmoid_block`` and ``_exec.by_blas_halves``; ``multi_similarity`` and
  ``pairwise_contrastive`` in ``losses.pairs`` (blocks of anchor rows, generic code only).
"""

from ._config import Tuning, get_tuning, tuning
from ._exec import by_blas_halves, by_chunks, by_halves, by_row_chunks
from ._policy import choose_block, clamp_below, exp_floor, on_accelerator
from .ce import ce_stream, ce_stream_symmetric
from .supcon import supcon_stream, supcon_stream_groups

__all__ = ["Tuning", "tuning", "get_tuning", "by_blas_halves", "by_chunks", "by_halves", "by_row_chunks",
           "choose_block", "clamp_below", "exp_floor", "on_accelerator",
           "ce_stream", "ce_stream_symmetric", "supcon_stream", "supcon_stream_groups"]
