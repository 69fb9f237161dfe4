r"""Cross-batch memory: a batch scored against a first-in-first-out memory of earlier
embeddings (XBM, MoCo's queue, pytorch-metric-learning's ``CrossBatchMemory``, lightly's
memory bank).

Two pieces, both explicit:

- :func:`cross_batch_args`, stateless: given the memory's rows, their labels and which
  memory row is each anchor's own copy, the keyword arguments ``ref=``, ``ref_labels=``,
  ``ref_self=`` of any loss that takes a reference set (:func:`nce_ref.supcon`,
  :func:`nce_ref.batch_triplet`, :func:`nce_ref.multi_similarity`,
  :func:`nce_ref.pairwise_contrastive`).  MoCo's unlabelled queue needs no helper: it is
  :func:`nce_ref.info_nce`'s ``negatives``.
- :class:`MemoryQueue`, the state: the ring buffer's slots, their labels, the write
  pointer and how many slots are filled, in an immutable object whose
  :meth:`~MemoryQueue.enqueue` returns a new queue and never writes into an array.

**Why a helper that returns arguments, not a wrapper that computes the loss.**  The
reference-set semantics (which pairs are positives and negatives, what ``ref_self``
excludes) are written once, in each loss; a wrapper ``cross_batch_loss(loss, ...)`` would
restate them and would stand between the loss and :func:`nce_ref.value_and_grad`,
:func:`nce_ref.vjp` and the torch/JAX bridges, which know registered losses only.  The
helper keeps the loss call the user's own, so every loss that takes ``ref`` works with a
memory, with its gradient, unchanged::

    loss, g = nce_ref.value_and_grad(nce_ref.supcon)(x, y, **queue.ref_args(own=len(x)))
    # g["features"]: the batch's gradient; g["ref"]: the memory's, discarded (constant)

**The two orders.**  *XBM* (Wang et al. 2020; PML's ``CrossBatchMemory``): enqueue the
batch (detached) first, then score the batch against the whole memory, the batch's own
new slots excluded through ``ref_self`` (``queue.ref_args(own=len(x))``).  *MoCo* (He et
al. 2020; lightly's memory bank): score the queries against the queue as it was, the
keys of this batch being the positives and the queue the negatives,
``info_nce(q, k, queue.rows())``, then enqueue the keys.

**Self-pairs are excluded by index**, never by object identity or by value: the row of
the memory that holds an anchor's own copy is named by ``ref_self``, and only that pair
is dropped.  A copy of the batch elsewhere in the memory (the same sample seen at an
earlier step), or a reference set that happens to be the same Python object as the
batch, is an ordinary row.

References
----------
Wang et al., "Cross-Batch Memory for Embedding Learning" (CVPR 2020); He et al.,
"Momentum Contrast for Unsupervised Visual Representation Learning" (CVPR 2020).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import array_api_compat
from array_api_compat import is_array_api_obj, is_jax_array, is_torch_array

from ._array import check_int, xp_device

Array = Any

__all__ = ["MemoryQueue", "cross_batch_args"]


def _describe(x: Any) -> str:
    if is_array_api_obj(x):
        return f"an array of dtype {x.dtype} and shape {tuple(x.shape)}"
    return f"{type(x).__name__}"


def _require_array(x: Any, name: str) -> None:
    if not is_array_api_obj(x):
        raise TypeError(f"`{name}` must be an array (NumPy, CuPy, PyTorch, JAX or any Array API "
                        f"array); got {_describe(x)}")


def _constant(x: Array) -> Array:
    """``x`` cut from autograd (torch ``detach``, JAX ``stop_gradient``): the memory holds
    values, never a graph.  Other libraries have no autograd; ``x`` is returned."""
    if is_torch_array(x):
        return x.detach()
    if is_jax_array(x):
        import jax

        return jax.lax.stop_gradient(x)
    return x


def cross_batch_args(memory: Array, memory_labels: Array | None = None, /, *,
                     own: Array | None = None) -> dict[str, Array]:
    r"""The reference-set arguments of a loss scored against a cross-batch memory.

    Returns ``{"ref": memory, "ref_labels": memory_labels, "ref_self": own}`` (the
    entries that are not None) for ``loss(embeddings, labels, **cross_batch_args(...))``:
    each anchor :math:`i` is scored against the M memory rows, except the row
    :math:`\mathrm{own}_i` that holds its own copy (:math:`-1`: none), which is neither
    a positive nor a negative.  Nothing else is excluded: not a row equal to the anchor,
    not a memory that is the batch's own array.

    Parameters
    ----------
    memory : array, shape (M, D)
        The memory's rows (:meth:`MemoryQueue.rows`), treated as a constant: the loss's
        gradient with respect to ``ref`` is the memory's, which a cross-batch memory
        discards.
    memory_labels : array, shape (M,), optional
        Their labels; required by the losses that take labels.
    own : integer array, shape (N,) or (N, V), optional
        ``own[i]``: the index in ``memory`` of anchor ``i``'s own copy, or -1
        (:meth:`MemoryQueue.own` after an XBM enqueue).  None: no anchor is in the
        memory (MoCo's order, a gallery).

    Returns
    -------
    dict
        Keyword arguments ``ref``, ``ref_labels``, ``ref_self`` (those given), the
        arrays passed through unchanged (no copy).

    Raises
    ------
    TypeError
        A non-array argument, a non-floating ``memory``, a non-integer ``own``.
    ValueError
        ``memory`` not 2-D, ``memory_labels`` not of shape (M,).

    See Also
    --------
    MemoryQueue.ref_args
        The same from a queue's state.

    Notes
    -----
    The values of ``own`` (each in :math:`[-1, M)`) are checked by the loss, which
    reads them; here only shapes and dtypes are, so that no device synchronisation
    happens.

    Examples
    --------
    XBM's step: the batch is enqueued first, then scored against the whole memory,
    each anchor's own slot excluded.

    >>> import numpy as np, nce_ref
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.standard_normal((4, 3)), np.array([0, 0, 1, 1])
    >>> memory = np.concatenate([rng.standard_normal((2, 3)), x])    # 2 old rows, then x
    >>> memory_labels = np.array([1, 0, 0, 0, 1, 1])
    >>> args = nce_ref.cross_batch_args(memory, memory_labels, own=np.arange(2, 6))
    >>> sorted(args)
    ['ref', 'ref_labels', 'ref_self']
    >>> loss, g = nce_ref.value_and_grad(nce_ref.supcon)(x, y, **args, temperature=0.1)
    >>> g["features"].shape, g["ref"].shape      # the memory's gradient: discarded
    ((4, 3), (6, 3))

    Without ``own`` each anchor meets its own copy (similarity 1) as a positive: another
    loss (PML #141).

    >>> wrong = nce_ref.supcon(x, y, ref=memory, ref_labels=memory_labels, temperature=0.1)
    >>> round(float(loss), 4), round(float(wrong), 4)
    (5.5273, 7.0364)
    """
    _require_array(memory, "memory")
    xp = array_api_compat.array_namespace(memory)
    if memory.ndim != 2:
        raise ValueError(f"`memory` must be 2-D, shape (M, D); got shape {tuple(memory.shape)}")
    if not xp.isdtype(memory.dtype, "real floating"):
        raise TypeError(f"`memory` must have a real floating dtype; got {memory.dtype}")
    out = {"ref": memory}
    if memory_labels is not None:
        _require_array(memory_labels, "memory_labels")
        if tuple(memory_labels.shape) != (memory.shape[0],):
            raise ValueError(f"`memory_labels` must have shape ({memory.shape[0]},), one label "
                             f"per memory row; got {tuple(memory_labels.shape)}")
        out["ref_labels"] = memory_labels
    if own is not None:
        _require_array(own, "own")
        if not xp.isdtype(own.dtype, "integral"):
            raise TypeError(f"`own` must have an integer dtype (indices into `memory`, -1 for "
                            f"none); got {own.dtype}")
        if own.ndim not in (1, 2):
            raise ValueError(f"`own` must be 1-D (one index per anchor) or 2-D (per sample and "
                             f"view); got shape {tuple(own.shape)}")
        out["ref_self"] = own
    return out


def _same_device(x: Array, dev) -> bool:
    """Whether ``x`` is on ``dev``; a traced array (JAX under ``grad``/``jit``), whose
    device is unknown (None), passes."""
    d = xp_device(x)
    return d is None or dev is None or bool(d == dev)


def _compat(xp):
    """The array-api-compat namespace of the library ``xp`` (``numpy``, ``torch``,
    ``jax.numpy``, a compat namespace, array-api-strict)."""
    try:
        return array_api_compat.array_namespace(xp.zeros((0,)))
    except Exception as exc:
        raise TypeError(f"`xp` must be an array library namespace (numpy, torch, jax.numpy, "
                        f"cupy, array_api_strict); got {xp!r}") from exc


@dataclass(frozen=True, eq=False, repr=False)
class MemoryQueue:
    r"""A first-in-first-out memory of embeddings and their labels: an immutable state.

    ``slots`` is a ring buffer of ``size`` rows.  :meth:`enqueue` writes a batch of n
    rows at slots :math:`(\mathrm{ptr} + k) \bmod \mathrm{size}`, :math:`k < n` (the
    oldest rows are overwritten first), advances ``ptr`` by n modulo ``size`` and
    returns a *new* queue: the arrays of this one are never written.  Until ``size``
    rows have been enqueued only the first ``filled`` slots hold rows.

    :meth:`rows` and :meth:`labels` return the filled part **in slot order** (slot 0
    first; once the ring has wrapped, the oldest row is at slot ``ptr``), which is the
    order of PML's ``CrossBatchMemory``, MoCo's queue and lightly's memory bank.  The
    losses do not depend on the order of the reference rows; the indices of
    :meth:`own` and ``ref_self`` are slot indices.

    Parameters
    ----------
    slots : array, shape (size, D)
        The ring buffer, real floating.
    slot_labels : array, shape (size,), or None
        Their labels (an unlabelled queue, MoCo's, holds None).
    ptr : int
        The next slot written, in ``[0, size)``.
    filled : int
        How many slots hold rows, in ``[0, size]``; while ``filled < size`` the
        filled slots are ``0 .. filled - 1`` and ``ptr == filled``.

    Raises
    ------
    TypeError, ValueError
        On arrays of the wrong kind, dtype or shape, or inconsistent ``ptr``/``filled``,
        naming the argument.

    See Also
    --------
    cross_batch_args
    nce_ref.info_nce
        ``negatives=queue.rows()``: MoCo's loss.

    Notes
    -----
    **XBM / PML ``CrossBatchMemory``** (the batch is in the memory when it is scored)::

        queue = queue.enqueue(x, y)
        loss = nce_ref.supcon(x, y, **queue.ref_args(own=len(x)))

    **MoCo / lightly** (the keys join the queue after the loss)::

        loss = nce_ref.info_nce(q, k, queue.rows())
        queue = queue.enqueue(k)

    Enqueued rows are cut from autograd (torch ``detach``, JAX ``stop_gradient``), as
    in every implementation: the memory is a constant.  A batch larger than ``size`` is
    refused (PML asserts the same).  lightly's bank differs in one respect: when a
    batch runs past the last slot it drops the rows that do not fit and restarts at
    slot 0, where this queue (and PML) wraps them to the front; the two agree whenever
    ``size`` is a multiple of the batch size (MoCo requires it).

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> queue = nce_ref.MemoryQueue.empty(5, 2, xp=np, dtype=np.float64)
    >>> queue = queue.enqueue(np.ones((3, 2)), np.array([0, 1, 2]))
    >>> queue
    MemoryQueue(size=5, dim=2, ptr=3, filled=3, labelled=True)
    >>> later = queue.enqueue(np.zeros((3, 2)), np.array([3, 4, 5]))  # wraps to slot 0
    >>> later.labels(), later.own(3)
    (array([5, 1, 2, 3, 4]), array([3, 4, 0]))
    >>> queue.labels()                                               # unchanged
    array([0, 1, 2])

    XBM's order: the batch enqueued first, then scored against the whole memory, its own
    slots excluded.

    >>> rng = np.random.default_rng(0)
    >>> queue = nce_ref.MemoryQueue.empty(8, 4, xp=np, dtype=np.float64)
    >>> for step in range(3):                      # the third batch wraps the ring
    ...     x, y = rng.standard_normal((3, 4)), rng.integers(0, 2, 3)
    ...     queue = queue.enqueue(x, y)
    ...     loss, g = nce_ref.value_and_grad(nce_ref.supcon)(
    ...         x, y, **queue.ref_args(own=len(x)), temperature=0.1)
    >>> queue, queue.own(3)
    (MemoryQueue(size=8, dim=4, ptr=1, filled=8, labelled=True), array([6, 7, 0]))

    MoCo's order on an unlabelled queue: the loss against the queue as it was, then the
    keys enqueued.

    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    >>> queue = nce_ref.MemoryQueue.empty(4, 4, xp=np, dtype=np.float64, labelled=False)
    >>> queue = queue.enqueue(rng.standard_normal((2, 4)))
    >>> loss = nce_ref.info_nce(q, k, queue.rows(), temperature=0.2)
    >>> queue = queue.enqueue(k)
    >>> loss.shape, queue.filled
    ((), 4)
    """

    slots: Array
    slot_labels: Array | None
    ptr: int
    filled: int

    def __post_init__(self):
        _require_array(self.slots, "slots")
        xp = array_api_compat.array_namespace(self.slots)
        if self.slots.ndim != 2 or self.slots.shape[0] < 1 or self.slots.shape[1] < 1:
            raise ValueError(f"`slots` must have shape (size, D) with size >= 1 and D >= 1; got "
                             f"{tuple(self.slots.shape)}")
        if not xp.isdtype(self.slots.dtype, "real floating"):
            raise TypeError(f"`slots` must have a real floating dtype; got {self.slots.dtype}")
        size = self.slots.shape[0]
        if self.slot_labels is not None:
            _require_array(self.slot_labels, "slot_labels")
            if tuple(self.slot_labels.shape) != (size,):
                raise ValueError(f"`slot_labels` must have shape ({size},); got "
                                 f"{tuple(self.slot_labels.shape)}")
            if array_api_compat.array_namespace(self.slot_labels).__name__ != xp.__name__:
                raise TypeError("`slot_labels` must come from the array library of `slots`")
            if not (xp_device(self.slot_labels) == xp_device(self.slots)):
                raise ValueError(f"`slot_labels` must be on the device of `slots` "
                                 f"({xp_device(self.slots)}); got {xp_device(self.slot_labels)}")
        ptr = check_int(self.ptr, "ptr", minimum=0)
        filled = check_int(self.filled, "filled", minimum=0)
        if ptr >= size:
            raise ValueError(f"`ptr` must be < size = {size}; got {ptr}")
        if filled > size:
            raise ValueError(f"`filled` must be <= size = {size}; got {filled}")
        if filled < size and ptr != filled:
            raise ValueError(f"a queue that is not full fills slots 0 .. filled - 1, so `ptr` "
                             f"must equal `filled` = {filled} while filled < size = {size}; "
                             f"got ptr = {ptr}")
        object.__setattr__(self, "ptr", ptr)
        object.__setattr__(self, "filled", filled)

    # -- construction --------------------------------------------------------------------
    @classmethod
    def empty(cls, size: int, dim: int, *, xp, dtype=None, device=None, label_dtype=None,
              labelled: bool = True) -> MemoryQueue:
        """An empty queue of ``size`` slots of dimension ``dim``.

        Parameters
        ----------
        size, dim : int
            Slots (the memory size M) and the embedding dimension D, both >= 1.
        xp : namespace
            The array library (``numpy``, ``torch``, ``jax.numpy``, ``cupy``,
            array-api-strict or an array-api-compat namespace).
        dtype : dtype, optional
            Of the slots; default: the library's default real floating dtype.  Enqueued
            batches must have it.
        device : optional
            Where the slots live; default: the library's default device.
        label_dtype : dtype, optional
            Of the labels; default: the library's default integer dtype.
        labelled : bool, default True
            Whether the queue holds labels (False: MoCo's queue of negatives).
        """
        size = check_int(size, "size", minimum=1)
        dim = check_int(dim, "dim", minimum=1)
        if not isinstance(labelled, bool):
            raise TypeError(f"`labelled` must be a bool; got {_describe(labelled)}")
        cx = _compat(xp)
        info = cx.__array_namespace_info__()
        defaults = info.default_dtypes(device=device)
        dtype = defaults["real floating"] if dtype is None else dtype
        if not cx.isdtype(dtype, "real floating"):
            raise TypeError(f"`dtype` must be a real floating dtype; got {dtype}")
        slots = cx.zeros((size, dim), dtype=dtype, device=device)
        labels = None
        if labelled:
            label_dtype = defaults["integral"] if label_dtype is None else label_dtype
            if not cx.isdtype(label_dtype, ("integral", "bool", "real floating")):
                raise TypeError(f"`label_dtype` must be an integer, bool or real floating dtype; "
                                f"got {label_dtype}")
            labels = cx.zeros((size,), dtype=label_dtype, device=xp_device(slots))
        elif label_dtype is not None:
            raise ValueError("`label_dtype` is given but `labelled=False`")
        return cls(slots, labels, 0, 0)

    # -- what it holds -------------------------------------------------------------------
    @property
    def size(self) -> int:
        """The number of slots M."""
        return int(self.slots.shape[0])

    @property
    def dim(self) -> int:
        """The embedding dimension D."""
        return int(self.slots.shape[1])

    @property
    def labelled(self) -> bool:
        """Whether the queue holds labels."""
        return self.slot_labels is not None

    def __repr__(self) -> str:
        return (f"MemoryQueue(size={self.size}, dim={self.dim}, ptr={self.ptr}, "
                f"filled={self.filled}, labelled={self.labelled})")

    def rows(self) -> Array:
        """The filled slots' embeddings, shape (filled, D), in slot order (a view: read
        it, never write it)."""
        return self.slots if self.filled == self.size else self.slots[:self.filled, :]

    def labels(self) -> Array:
        """The filled slots' labels, shape (filled,), in slot order."""
        if self.slot_labels is None:
            raise ValueError("this queue holds no labels (it was made with labelled=False)")
        return self.slot_labels if self.filled == self.size else self.slot_labels[:self.filled]

    def own(self, n: int) -> Array:
        """The slots of the last ``n`` rows enqueued, in the order they were enqueued:
        after ``queue = queue.enqueue(x, y)``, ``queue.own(len(x))[i]`` is the index in
        :meth:`rows` of ``x[i]``'s copy (the ``ref_self`` of XBM's order)."""
        n = check_int(n, "n", minimum=1)
        if n > self.filled:
            raise ValueError(f"`n` must be <= filled = {self.filled} (the rows enqueued so far); "
                             f"got {n}")
        xp = array_api_compat.array_namespace(self.slots)
        k = xp.arange(n, device=xp_device(self.slots))
        return (k + (self.ptr - n)) % self.size

    def ref_args(self, *, own: int | None = None) -> dict[str, Array]:
        """:func:`cross_batch_args` of this queue: ``ref`` = :meth:`rows`, ``ref_labels``
        = :meth:`labels` (when labelled), ``ref_self`` = :meth:`own` ``(own)`` when
        ``own`` (the number of anchors, the batch just enqueued) is given, else none."""
        return cross_batch_args(self.rows(), self.labels() if self.labelled else None,
                                own=None if own is None else self.own(own))

    # -- the update ------------------------------------------------------------------------
    def enqueue(self, batch: Array, labels: Array | None = None, /) -> MemoryQueue:
        """A new queue with ``batch`` (and ``labels``) written over the oldest slots.

        Parameters
        ----------
        batch : array, shape (n, D)
            1 <= n <= size rows of the queue's dtype, namespace and device; cut from
            autograd before they are stored.
        labels : array, shape (n,)
            Required by a labelled queue, refused by an unlabelled one; of the queue's
            label dtype.

        Returns
        -------
        MemoryQueue
            Rows at slots ``(ptr + k) % size``, ``ptr`` advanced by n modulo size,
            ``filled = min(filled + n, size)``.  This queue's arrays are not written
            (the new slots are a new array, built with ``take`` and ``where``).
        """
        _require_array(batch, "batch")
        xp = array_api_compat.array_namespace(self.slots)
        if array_api_compat.array_namespace(batch).__name__ != xp.__name__:
            raise TypeError(f"`batch` must come from the queue's array library ({xp.__name__}); "
                            f"got {type(batch).__module__}.{type(batch).__name__}")
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise ValueError(f"`batch` must have shape (n, {self.dim}); got {tuple(batch.shape)}")
        n = batch.shape[0]
        if not 1 <= n <= self.size:
            raise ValueError(f"`batch` must have 1 to size = {self.size} rows (a larger batch "
                             f"would overwrite its own rows); got {n}")
        if batch.dtype != self.slots.dtype:
            raise TypeError(f"`batch` must have the queue's dtype {self.slots.dtype}; got "
                            f"{batch.dtype} (cast it, or make the queue with that dtype)")
        dev = xp_device(self.slots)
        if not _same_device(batch, dev):
            raise ValueError(f"`batch` must be on the queue's device {dev}; got {xp_device(batch)}")
        if self.slot_labels is None:
            if labels is not None:
                raise ValueError("`labels` given to a queue without labels (labelled=False)")
        else:
            if labels is None:
                raise ValueError("`labels` is required: this queue holds labels")
            _require_array(labels, "labels")
            if tuple(labels.shape) != (n,):
                raise ValueError(f"`labels` must have shape ({n},), one per row of `batch`; got "
                                 f"{tuple(labels.shape)}")
            if labels.dtype != self.slot_labels.dtype:
                raise TypeError(f"`labels` must have the queue's label dtype "
                                f"{self.slot_labels.dtype}; got {labels.dtype}")
            if not _same_device(labels, dev):
                raise ValueError(f"`labels` must be on the queue's device {dev}; got "
                                 f"{xp_device(labels)}")
        size, ptr = self.size, self.ptr
        slot = xp.arange(size, device=dev)
        src = (slot - ptr) % size                  # batch row written to each slot, if < n
        new = src < n
        src = xp.where(new, src, xp.zeros_like(src))
        slots = xp.where(xp.expand_dims(new, axis=1), xp.take(_constant(batch), src, axis=0),
                         self.slots)
        slot_labels = None
        if self.slot_labels is not None:
            slot_labels = xp.where(new, xp.take(_constant(labels), src, axis=0), self.slot_labels)
        return MemoryQueue(slots, slot_labels, (ptr + n) % size, min(self.filled + n, size))
