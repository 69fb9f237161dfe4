"""The :class:`~nce_ref.sharded.Communicator` over mpi4py, for NumPy and CuPy arrays.

Arrays travel through mpi4py's buffer-based (uppercase) collectives: NumPy arrays by the
buffer protocol, CuPy arrays by ``__cuda_array_interface__`` (which needs a CUDA-aware
MPI).  Rows are sent as one contiguous MPI datatype of a row's bytes, so any dtype moves
and counts are rows (no 2**31-element limit on a shard).  mpi4py is imported when an
:class:`MPICommunicator` is made.

Bytes sent per rank (``b`` the bytes of one row, ``n_r`` this rank's rows, ``N`` the
global rows, W ranks):

=================  ==============================  =====================================
collective         MPI call                        bytes sent by one rank
=================  ==============================  =====================================
``gather_rows``    ``Iallgatherv`` into the        ``(W - 1) n_r b`` (ring; the MPI
                   rolled order (displacements)    library picks the algorithm)
``reduce_rows``    ``Ialltoallv`` of the rolled    ``(N - n_r) b``: each rank sends each
                   rows, then the W blocks summed  other rank exactly its rows
                   in rank order on the owner
``ring_pass``      ``Isend`` + ``Irecv``           ``n_r b``
``all_sum``        ``Iallreduce(SUM)``             about ``2 (W - 1) / W`` times the array
=================  ==============================  =====================================

``all_gather_object`` uses the pickle-based ``allgather`` (after an ``Ibarrier`` when a
timeout is set).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ._comm import check_recv_rows

__all__ = ["MPICommunicator"]

_TAG_RING = 0x6E63  # "nc"


class MPICommunicator:
    """The collectives of a sharded function over an MPI communicator.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The ranks of the sharded batch; default ``MPI.COMM_WORLD``.
    timeout : float, optional
        Seconds to wait for each collective.  Every collective is the non-blocking form
        (``Iallgatherv``, ``Ialltoallv``, ``Iallreduce``, ``Isend``/``Irecv``,
        ``Ibarrier``), tested in a loop against the deadline; past it, ``TimeoutError``
        names the collective and this rank.  MPI cannot cancel a pending collective: the
        request (and its buffers, kept alive by this object) stays pending and the
        communicator is unusable; the caller should abort the job
        (``comm.Abort(1)``).  ``None`` (default): wait without a limit.

    Attributes
    ----------
    size : int
        The number of ranks of ``comm``.
    rank : int
        This process's rank in ``comm``.

    Notes
    -----
    Arrays are NumPy or CuPy arrays (a CuPy array's stream is synchronised before MPI
    reads it); other axes than the first must agree across ranks (what
    :func:`~nce_ref.sharded.agree` checks).  ``all_sum`` needs a dtype that MPI can add
    (float32, float64, integers; not float16).

    Examples
    --------
    In a script started by ``mpiexec -n 3 python script.py``::

        import numpy as np
        from nce_ref.sharded import MPICommunicator

        comm = MPICommunicator(timeout=60)
        sizes = [2, 0, 3]
        x = np.full((sizes[comm.rank], 4), float(comm.rank))
        X = comm.gather_rows(x, sizes)             # (5, 4): own rows first
        dx = comm.reduce_rows(np.ones_like(X), sizes)   # (sizes[rank], 4), every entry 3.0
    """

    def __init__(self, comm: Any = None, *, timeout: float | None = None):
        from mpi4py import MPI

        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
                raise ValueError(f"`timeout` must be a positive number of seconds or None; got {timeout!r}")
        comm = MPI.COMM_WORLD if comm is None else comm
        if not isinstance(comm, MPI.Comm):
            raise TypeError(f"`comm` must be an mpi4py.MPI.Comm; got {type(comm).__name__}")
        self._MPI = MPI
        self.comm = comm
        self.timeout = None if timeout is None else float(timeout)
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        self._row_types: dict[int, Any] = {}
        self._pending: list = []  # requests that timed out, with their buffers (kept alive)

    def __repr__(self) -> str:
        return f"MPICommunicator(rank={self.rank}, size={self.size}, timeout={self.timeout})"

    # -- helpers ------------------------------------------------------------------------

    def _module(self, x, name: str):
        top = type(x).__module__.split(".")[0]
        if top not in ("numpy", "cupy") or not hasattr(x, "shape"):
            raise TypeError(f"`{name}` must be a NumPy or CuPy array; got {type(x).__module__}."
                            f"{type(x).__name__}")
        import importlib

        mod = importlib.import_module(top)
        if top == "cupy":
            mod.cuda.get_current_stream().synchronize()  # MPI reads the memory directly
        return mod

    def _rows(self, x, name: str):
        mod = self._module(x, name)
        if x.ndim < 1:
            raise ValueError(f"`{name}` must have at least one axis (its rows); got shape {x.shape}")
        return mod, _c_contiguous(mod, x)

    def _row_type(self, row_bytes: int):
        dt = self._row_types.get(row_bytes)
        if dt is None:
            dt = self._MPI.BYTE.Create_contiguous(row_bytes).Commit()
            self._row_types[row_bytes] = dt
        return dt

    def _check_sizes(self, sizes: Sequence[int], rows: int, total: bool, name: str) -> list[int]:
        sizes = [int(s) for s in sizes]
        if len(sizes) != self.size or any(s < 0 for s in sizes):
            raise ValueError(f"`sizes` must hold {self.size} non-negative row counts (one per rank); "
                             f"got {sizes!r}")
        expected = sum(sizes) if total else sizes[self.rank]
        if rows != expected:
            what = f"sum(sizes) = {expected}" if total else f"sizes[{self.rank}] = {expected}"
            raise ValueError(f"`{name}` has {rows} rows on rank {self.rank}; {what} expected")
        return sizes

    def _rolled_offsets(self, sizes: list[int]) -> list[int]:
        """``offsets[q]``: the first row of rank ``q`` in this rank's rolled order."""
        offsets = [0] * self.size
        at = 0
        for s in range(self.size):
            q = (self.rank + s) % self.size
            offsets[q] = at
            at += sizes[q]
        return offsets

    def _wait(self, requests: list, name: str, keep: tuple = ()) -> None:
        MPI = self._MPI
        if self.timeout is None:
            MPI.Request.Waitall(requests)
            return
        start = time.monotonic()
        spins = 0
        while not MPI.Request.Testall(requests):
            elapsed = time.monotonic() - start
            if elapsed > self.timeout:
                self._pending.append((requests, keep))
                raise TimeoutError(
                    f"rank {self.rank} of {self.size}: MPI {name} did not complete within "
                    f"{self.timeout:g} s: a peer rank did not reach it (or is too slow). MPI cannot "
                    f"cancel it, so this communicator is unusable: abort the job (comm.Abort()).")
            spins += 1
            time.sleep(0 if spins < 200 else 2e-4)

    # -- the protocol -------------------------------------------------------------------

    def gather_rows(self, x, sizes: Sequence[int]):
        """Every rank's ``x`` in the rolled order (this rank's rows first), any shard
        sizes, zero included: one ``Iallgatherv`` whose displacements are the rolled
        offsets (no copy after it)."""
        mod, x = self._rows(x, "x")
        sizes = self._check_sizes(sizes, x.shape[0], False, "x")
        rest = tuple(x.shape[1:])
        if self.size == 1:
            return x.copy()
        out = mod.empty((sum(sizes), *rest), dtype=x.dtype)
        row_bytes = x.itemsize * _prod(rest)
        if row_bytes == 0 or not out.shape[0]:
            return out  # nothing to move (every rank knows it: same sizes, same other axes)
        dt = self._row_type(row_bytes)
        req = self.comm.Iallgatherv([x, x.shape[0], dt], [out, (sizes, self._rolled_offsets(sizes)), dt])
        self._wait([req], "Iallgatherv (gather_rows)", (x, out))
        return out

    def reduce_rows(self, dx, sizes: Sequence[int]):
        """This rank's rows of the sum over ranks of ``dx`` (rolled order): one
        ``Ialltoallv`` sends each rank its rows, the owner sums the W blocks in rank order."""
        mod, x = self._rows(dx, "dx")
        sizes = self._check_sizes(sizes, x.shape[0], True, "dx")
        rest = tuple(x.shape[1:])
        n = sizes[self.rank]
        if self.size == 1:
            return x.copy()
        got = mod.zeros((self.size, n, *rest), dtype=x.dtype)
        row_bytes = x.itemsize * _prod(rest)
        if row_bytes == 0 or not x.shape[0]:
            return got.sum(axis=0)  # nothing to move (every rank knows it)
        dt = self._row_type(row_bytes)
        recv = ([n] * self.size, [q * n for q in range(self.size)])
        req = self.comm.Ialltoallv([x, (sizes, self._rolled_offsets(sizes)), dt], [got, recv, dt])
        self._wait([req], "Ialltoallv (reduce_rows)", (x, got))
        return got.sum(axis=0)

    def all_sum(self, x):
        """The sum over ranks of ``x`` (``Iallreduce`` with ``MPI.SUM`` into a new array)."""
        mod = self._module(x, "x")
        x = _c_contiguous(mod, x)
        out = mod.empty_like(x)
        if self.size == 1:
            out[...] = x
            return out
        req = self.comm.Iallreduce(x, out, op=self._MPI.SUM)
        self._wait([req], "Iallreduce (all_sum)", (x, out))
        return out

    def ring_pass(self, x, recv_rows: int):
        """Send ``x`` to rank + 1, return the ``recv_rows`` rows that rank − 1 sent
        (``Irecv`` and ``Isend`` posted together: no deadlock at any W; W = 1 returns a
        copy of ``x``)."""
        mod, x = self._rows(x, "x")
        check_recv_rows(recv_rows, self.size, x.shape[0])
        if self.size == 1:
            return x.copy()
        buf = mod.empty((recv_rows, *x.shape[1:]), dtype=x.dtype)
        row_bytes = x.itemsize * _prod(x.shape[1:])
        if row_bytes == 0:
            return buf
        dt = self._row_type(row_bytes)
        nxt, prv = (self.rank + 1) % self.size, (self.rank - 1) % self.size
        reqs = [self.comm.Irecv([buf, recv_rows, dt], source=prv, tag=_TAG_RING),
                self.comm.Isend([x, x.shape[0], dt], dest=nxt, tag=_TAG_RING)]
        self._wait(reqs, "Isend/Irecv (ring_pass)", (x, buf))
        return buf

    def all_gather_object(self, obj: Any) -> list:
        """Every rank's picklable ``obj`` in rank order (mpi4py's ``allgather``; with a
        timeout, an ``Ibarrier`` first, so that a rank that never comes is a
        ``TimeoutError`` rather than a hang)."""
        if self.timeout is not None and self.size > 1:
            self._wait([self.comm.Ibarrier()], "Ibarrier (all_gather_object)")
        return self.comm.allgather(obj)


def _c_contiguous(mod, x):
    """``x`` as a C-contiguous array of its own shape (0-d included; ``ascontiguousarray``
    would make a 0-d array 1-d)."""
    x = mod.asarray(x)
    return x if x.flags.c_contiguous else x.copy(order="C")


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out
