"""Block policy of the streamed kernels: how many rows per block, and the exp's floor.

- :func:`choose_block`: rows per block from ``block_size``, ``memory_budget`` or the
  :class:`nce_ref.Tuning` in effect (callers: ``info_nce``, ``nt_xent``, ``supcon``,
  ``mi.bound_from_embeddings``, and the asv floor);
- :func:`on_accelerator`: whether an array lives on a GPU (the larger budget);
- :func:`exp_floor`, :func:`clamp_below`: shifted logits are raised to the floor before
  the ``exp`` where subnormal results can occur (every kernel's shifted path).

Whether a kernel may skip the row shift (``shift_free``) and whether it must flush
subnormal probabilities (``needs_flush``) are decided with the logits, in
:mod:`nce_ref._stream._logits`.
"""

from __future__ import annotations

import math
from typing import Any

from .._array import check_int
from ._config import get_tuning
from ._numpy import np_array, np_clamp_below, np_owns

Array = Any

__all__ = ["choose_block", "on_accelerator", "exp_floor", "clamp_below"]


def on_accelerator(x: Array) -> bool:
    """Whether ``x`` lives on a GPU (or another accelerator), not on the host CPU."""
    from array_api_compat import is_cupy_array, is_jax_array, is_torch_array

    if is_cupy_array(x):
        return True
    if is_torch_array(x):
        return x.device.type != "cpu"
    if is_jax_array(x):
        try:
            return any(d.platform != "cpu" for d in x.devices())
        except Exception:  # a tracer: no concrete device
            return False
    return False


def choose_block(n_rows: int, n_cols: int, itemsize: int, *, block_size: Any = None,
                 memory_budget: Any = None, buffers: int = 2, like: Array = None,
                 heap_cap: bool = True) -> int:
    """Rows per block: ``block_size`` if given, else the most that fit the budget.

    The kernel holds ``buffers`` (two; four for the euclidean distance's square
    root) ``rows x n_cols`` buffers per block.  Without a ``memory_budget`` the
    budget is ``Tuning.memory_budget``, or ``Tuning.accelerator_memory_budget`` when
    ``like`` is on an accelerator; for NumPy arrays each buffer is also kept below
    ``Tuning.heap_buffer_bytes`` unless that leaves fewer than ``Tuning.heap_min_rows``
    rows (``heap_cap``; off where one block holding the whole matrix saves a GEMM, as
    for CLIP's symmetric loss).  See :class:`nce_ref.Tuning`.

    Examples
    --------
    >>> choose_block(1000, 1000, 4, memory_budget=2 * 1000 * 4 * 10)
    10
    >>> import nce_ref
    >>> with nce_ref.tuning(memory_budget=2 * 1000 * 8 * 3):
    ...     choose_block(1000, 1000, 8)
    3
    """
    if block_size is not None:
        return min(check_int(block_size, "block_size", minimum=1), max(n_rows, 1))
    per_row = buffers * max(n_cols, 1) * itemsize
    if memory_budget is None:
        t = get_tuning()
        budget = t.accelerator_memory_budget if like is not None and on_accelerator(like) \
            else t.memory_budget
        if heap_cap and like is not None and np_array(like) \
                and buffers * t.heap_buffer_bytes >= t.heap_min_rows * per_row:
            budget = min(budget, buffers * t.heap_buffer_bytes)
    else:
        budget = check_int(memory_budget, "memory_budget", minimum=1)
    if budget < per_row:
        raise ValueError(f"`memory_budget` of {budget} bytes is too small for one row of "
                         f"{max(n_cols, 1)} scores; the smallest that works is {per_row}")
    return max(1, min(n_rows, budget // per_row))


def exp_floor(dtype, xp) -> float:
    """``log(smallest_normal) + 1``: shifted logits are raised to it before the ``exp`` where
    subnormal results can occur (``flush``).  ``e^z`` below ``smallest_normal`` (or of
    ``-inf``) takes x86 libm's slow path (70 ns an entry in float64 here, against 2 ns), and
    such an entry weighs less than ``N·smallest_normal`` against a row sum of at least 1:
    it becomes ``e·smallest_normal``, which the flush before the gradient GEMMs removes
    where it would matter.  Masked entries (``-inf``) keep ``e = 0`` (:func:`clamp_below`)."""
    return math.log(float(xp.finfo(dtype).smallest_normal)) + 1.0


def clamp_below(z: Array, lo: float, xp) -> Array:
    """``max(z, lo)`` except where ``z = -inf`` (a masked entry, whose ``e`` must stay 0);
    in place on a buffer of ours where the library allows it (:func:`.np_clamp_below`)."""
    if np_owns(z, xp):
        return np_clamp_below(z, lo)
    return xp.where(z > -math.inf, xp.maximum(z, xp.full_like(z, lo)), z)
