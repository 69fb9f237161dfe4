"""The communicator protocol of the sharded functions, and an in-process one for tests.

A sharded function runs on every rank of a group with that rank's rows.  All it needs
from the framework that connects the ranks (torch.distributed, MPI, JAX's
``shard_map``) is the five collectives of :class:`Communicator`; the adapters in
:mod:`nce_ref.sharded.torch`, :mod:`nce_ref.sharded.mpi` and :mod:`nce_ref.sharded.jax`
implement them, each importing its framework only when used.

The **rolled order**: :meth:`Communicator.gather_rows` returns every rank's rows with
this rank's own shard first, then rank + 1, rank + 2, ... (mod W).  Each rank's own
rows are then ``X[:n]`` and the diagonal of its positives is the band at offset 0,
whatever its rank: every index the kernels use is a Python int known before any
collective (which JAX's traced ``axis_index`` would not give), and
:meth:`Communicator.reduce_rows` undoes the roll when it sums the ranks' gradients.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

Array = Any

__all__ = ["Communicator", "ShardingError", "ThreadGroup", "agree", "validated"]


class ShardingError(ValueError):
    """Raised on every rank, with the same message, when the ranks' inputs disagree or
    one rank's input is bad (a ``ValueError``: bad input)."""


@runtime_checkable
class Communicator(Protocol):
    """What a sharded function needs from the group of ranks.

    Attributes
    ----------
    size : int
        The number of ranks W.
    rank : int or array
        This rank's index (a traced 0-d array under JAX's ``shard_map``); the
        algorithms never index with it.
    """

    size: int
    rank: Any

    def gather_rows(self, x: Array, sizes: Sequence[int]) -> Array:
        """Every rank's ``x`` (first axis: its rows) concatenated in the rolled order:
        this rank's first, then rank + 1, ... (mod W).  ``sizes[r]`` is the number of
        rows of rank ``r`` (from :func:`agree`).  Other axes must agree."""

    def reduce_rows(self, dx: Array, sizes: Sequence[int]) -> Array:
        """``dx`` has the rows of :meth:`gather_rows` (rolled order) on every rank;
        return this rank's own rows of the sum over ranks (a reduce-scatter)."""

    def all_sum(self, x: Array) -> Array:
        """The sum over ranks of ``x`` (a small array: a scalar, a vector)."""

    def ring_pass(self, x: Array, recv_rows: int) -> Array:
        """Send ``x`` to rank + 1 and return what rank − 1 sent (``recv_rows`` rows; the
        other axes as ``x``'s)."""

    def all_gather_object(self, obj: Any) -> list:
        """Every rank's small picklable ``obj``, in rank order (metadata only)."""


def agree(comm: Communicator, meta: dict, error: BaseException | None = None) -> list[dict]:
    """Exchange every rank's ``meta`` (and its local validation ``error``) in one
    collective, before any other; raise the same :class:`ShardingError` on every rank
    when a rank failed validation or the ranks' ``meta`` differ on a key other than
    ``"rows"`` and ``"<name>_rows"``.  Returns every rank's ``meta`` in rank order (their
    ``"rows"`` give the shard sizes).

    Every rank reaches this call whatever its input, so no rank waits forever on a
    collective that another rank skipped after raising.
    """
    msg = None if error is None else f"{type(error).__name__}: {error}"
    everyone = comm.all_gather_object({"meta": meta, "error": msg})
    failed = [(r, e["error"]) for r, e in enumerate(everyone) if e["error"] is not None]
    if failed:
        r, m = failed[0]
        more = f" (and {len(failed) - 1} other rank(s))" if len(failed) > 1 else ""
        raise ShardingError(f"rank {r} of {comm.size}: {m}{more}")
    metas = [e["meta"] for e in everyone]
    for key in dict.fromkeys(k for m in metas for k in m):  # every rank's keys, not rank 0's only
        if key == "rows" or key.endswith("_rows"):
            continue
        values = [m.get(key) for m in metas]
        if any(v != values[0] for v in values):
            shown = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
            raise ShardingError(f"the ranks disagree on {key}: {shown}")
    return metas


def check_recv_rows(recv_rows, size: int, sent: int) -> None:
    """``ring_pass``'s ``recv_rows``: a non-negative int, equal to the rows sent when the
    rank is its own neighbour (W = 1).  Shared by the adapters."""
    if isinstance(recv_rows, bool) or not isinstance(recv_rows, int) or recv_rows < 0:
        raise ValueError(f"`recv_rows` must be a non-negative int; got {recv_rows!r}")
    if size == 1 and recv_rows != sent:
        raise ValueError(f"`recv_rows` = {recv_rows}, but this rank (its own neighbour, "
                         f"W = 1) sends {sent} rows")


def validated(comm, validate):
    """Run ``validate()`` (this rank's local checks, returning ``(state, meta)``), then
    :func:`agree` with the other ranks: a failure on any rank, or ranks that disagree,
    raise the same :class:`ShardingError` on every rank.  Returns ``(state, metas)``."""
    if not isinstance(comm, Communicator):
        raise TypeError(f"`comm` must be a nce_ref.sharded.Communicator (TorchCommunicator, "
                        f"MPICommunicator, JaxCommunicator, ThreadGroup's); got {type(comm).__name__}")
    state, meta, error = None, {}, None
    try:
        state, meta = validate()
    except (ValueError, TypeError) as e:
        error = e
    return state, agree(comm, meta, error)


# -- an in-process group of threads (tests, examples) ---------------------------------

@dataclass
class _Slots:
    values: list
    barrier: threading.Barrier


class ThreadGroup:
    """W ranks as W threads of one process, for tests and examples.

    ``ThreadGroup(W).run(fn, args_per_rank)`` calls ``fn(comm, *args)`` on W threads at
    once, ``comm`` a :class:`Communicator` of that rank, and returns their results in
    rank order (re-raising the first rank's exception, after every thread has ended).
    A collective that not every rank reaches raises ``TimeoutError`` after ``timeout``
    seconds on the ranks that did.

    Examples
    --------
    >>> from nce_ref.sharded import ThreadGroup
    >>> ThreadGroup(3).run(lambda comm, x: comm.all_gather_object(x), [("a",), ("b",), ("c",)])
    [['a', 'b', 'c'], ['a', 'b', 'c'], ['a', 'b', 'c']]
    """

    def __init__(self, size: int, *, timeout: float = 60.0):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"`size` must be a positive int; got {size!r}")
        self.size = size
        self.timeout = timeout
        self._slots = _Slots([None] * size, threading.Barrier(size, timeout=timeout))

    def run(self, fn, args_per_rank: Sequence[tuple]) -> list:
        if len(args_per_rank) != self.size:
            raise ValueError(f"`args_per_rank` must have {self.size} entries; got {len(args_per_rank)}")
        results: list = [None] * self.size
        errors: list = [None] * self.size

        def target(r):
            try:
                results[r] = fn(_ThreadComm(self, r), *args_per_rank[r])
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors[r] = e
                self._slots.barrier.abort()  # the others stop waiting for this rank

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._slots.barrier.reset()
        first = next((e for e in errors if e is not None and not isinstance(e, TimeoutError)),
                     next((e for e in errors if e is not None), None))
        if first is not None:
            raise first
        return results


class _ThreadComm:
    def __init__(self, group: ThreadGroup, rank: int):
        self._group = group
        self.size = group.size
        self.rank = rank

    def _exchange(self, value) -> list:
        slots = self._group._slots
        try:
            slots.barrier.wait()  # everyone is here: the slots are free
            slots.values[self.rank] = value
            slots.barrier.wait()  # everyone has written
            out = list(slots.values)
            slots.barrier.wait()  # everyone has read
        except threading.BrokenBarrierError:
            raise TimeoutError(f"rank {self.rank}: a collective was not reached by every rank "
                               f"within {self._group.timeout} s (or another rank failed)") from None
        return out

    def all_gather_object(self, obj):
        return self._exchange(obj)

    def gather_rows(self, x, sizes):
        from array_api_compat import array_namespace

        parts = self._exchange(x)
        order = [(self.rank + s) % self.size for s in range(self.size)]
        return array_namespace(x).concat([parts[r] for r in order], axis=0)

    def reduce_rows(self, dx, sizes):
        from array_api_compat import array_namespace

        parts = self._exchange(dx)
        total = None
        for r, part in enumerate(parts):  # rank r's rows in rank r's rolled order
            offset = sum(sizes[(r + s) % self.size] for s in range((self.rank - r) % self.size))
            mine = part[offset:offset + sizes[self.rank], ...]
            total = mine if total is None else total + mine
        return array_namespace(dx).asarray(total)

    def all_sum(self, x):
        parts = self._exchange(x)
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        return total

    def ring_pass(self, x, recv_rows):
        parts = self._exchange(x)
        got = parts[(self.rank - 1) % self.size]
        if got.shape[0] != recv_rows:
            raise RuntimeError(f"rank {self.rank}: expected {recv_rows} rows from rank "
                               f"{(self.rank - 1) % self.size}, got {got.shape[0]}")
        return got
