"""W local processes joined in one gloo process group, to run sharded functions in tests.

:class:`GlooPool` starts W persistent worker processes once (``spawn``), joins them in
one ``torch.distributed`` gloo group (and one subgroup of the first ``w`` ranks for every
``w < W``), and then runs any number of calls on them: the parent sends a picklable
function and each rank's arguments, each rank calls ``fn(comm, *args)`` with a
:class:`~nce_ref.sharded.TorchCommunicator` and sends back its result or its exception.
A call never hangs: after ``timeout`` seconds every worker is killed and ``TimeoutError``
names the ranks that did not answer (the next call starts new workers).

Used by the tests of the sharded functions and by the sharded verification harness;
torch is needed (imported when the pool starts).
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import time
import traceback
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait as _wait_any
from typing import Any

__all__ = ["GlooPool", "RemoteTraceback", "CountingCommunicator"]


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as its ``__cause__``."""

    def __init__(self, rank: int, tb: str):
        super().__init__(rank, tb)
        self.rank = rank
        self.tb = tb

    def __str__(self) -> str:
        return f"\n--- on rank {self.rank} ---\n{self.tb}"


class GlooPool:
    """A pool of ``size`` worker processes in one gloo process group.

    Parameters
    ----------
    size : int
        The number of worker processes W (the largest group a call can use).
    timeout : float
        Default seconds a :meth:`run` waits for every rank before killing the workers.
    start_timeout : float
        Seconds to wait for the workers to start and join the group.
    threads : int
        ``torch.set_num_threads`` in each worker (default 1: W workers share the cores).

    Notes
    -----
    The workers start on the first :meth:`run` (or :meth:`start`) and live until
    :meth:`close` (or the parent exits).  The group's rendezvous is a ``TCPStore`` that
    the parent serves on a free localhost port (port 0: no race for a port).

    When a call's communicator timed out or failed on some rank (a collective that some
    rank never reached: :attr:`~nce_ref.sharded.TorchCommunicator.broken`, even where
    ``fn`` caught the exception), the group's ranks no longer agree on their
    collectives; the pool then starts new workers before the next call.  The same
    after a call's own timeout, which kills the workers.

    Examples
    --------
    In a test module (``fn`` must be picklable: defined at a module's top level)::

        import pytest
        from nce_ref.testing.sharded import GlooPool

        def gather(comm, x, sizes):
            return comm.gather_rows(x, sizes)

        @pytest.fixture(scope="module")
        def pool():
            with GlooPool(4, timeout=30) as p:
                yield p

        def test_gather(pool):
            import torch
            shards = [torch.ones(n, 2) * r for r, n in enumerate([1, 0, 2])]
            out = pool.run(gather, [(x, [1, 0, 2]) for x in shards], size=3)
            assert out[1].shape == (3, 2)      # rank 1's rows (none), then rank 2's, rank 0's
    """

    def __init__(self, size: int, *, timeout: float = 60.0, start_timeout: float = 120.0,
                 threads: int = 1):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"`size` must be a positive int; got {size!r}")
        for name, v in (("timeout", timeout), ("start_timeout", start_timeout)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"`{name}` must be a positive number of seconds; got {v!r}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"`threads` must be a positive int; got {threads!r}")
        self.size = size
        self.timeout = float(timeout)
        self.start_timeout = float(start_timeout)
        self.threads = threads
        self._procs: list = []
        self._conns: list = []
        self._store = None
        self._stale = False
        self._finalizer = None
        self.starts = 0  # how many times workers were started (tests, diagnostics)

    # -- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> GlooPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    def start(self) -> None:
        """Start the workers (if they are not running) and wait until they joined the group."""
        if self.running and not self._stale:
            return
        self.close()
        import torch.distributed as dist

        store = dist.TCPStore("127.0.0.1", 0, self.size + 1, is_master=True, wait_for_workers=False)
        ctx = mp.get_context("spawn")
        procs, conns = [], []
        for r in range(self.size):
            parent, child = ctx.Pipe(duplex=True)
            p = ctx.Process(target=_worker_main, name=f"nce_ref-gloo-rank{r}", daemon=True,
                            args=(r, self.size, store.port, child, self.start_timeout, self.threads))
            p.start()
            child.close()
            procs.append(p)
            conns.append(parent)
        self._procs, self._conns, self._store = procs, conns, store
        self._finalizer = weakref.finalize(self, _kill, procs, conns)
        self._stale = False
        self.starts += 1
        answers = self._collect(list(range(self.size)), self.start_timeout, "start")
        errors = [a for a in answers if a[0] != "ready"]
        if errors:
            self.close()
            raise RuntimeError(f"the gloo workers failed to start: {errors[0][1]!r}\n{errors[0][2]}")

    def close(self) -> None:
        """Stop the workers (killing any that does not stop within a few seconds)."""
        for c in self._conns:
            try:
                c.send_bytes(pickle.dumps(("stop", None)))
            except OSError:
                pass
        deadline = time.monotonic() + 3.0
        for p in self._procs:
            p.join(max(deadline - time.monotonic(), 0.01))
        if self._finalizer is not None:
            self._finalizer()  # kills whatever is left, closes the pipes
            self._finalizer = None
        self._procs, self._conns, self._store = [], [], None

    def kill(self) -> None:
        """Kill every worker at once (SIGKILL); the next :meth:`run` starts new ones."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._procs, self._conns, self._store = [], [], None

    # -- calls --------------------------------------------------------------------------

    def run(self, fn: Callable, args_per_rank: Sequence[tuple], *, size: int | None = None,
            timeout: float | None = None, comm_timeout: float | None = None,
            return_exceptions: bool = False) -> list:
        """Call ``fn(comm, *args_per_rank[r])`` on ranks ``r = 0 .. size - 1`` at once.

        Parameters
        ----------
        fn : callable
            Picklable (a module-level function); ``comm`` is a
            :class:`~nce_ref.sharded.TorchCommunicator` of the group of ranks
            ``0 .. size - 1``.
        args_per_rank : sequence of tuples
            One tuple of picklable arguments per rank.
        size : int, optional
            The number of ranks of this call (default: the pool's size); ranks from
            ``size`` on sit this call out.
        timeout : float, optional
            Seconds to wait for every rank's answer (default the pool's ``timeout``);
            then every worker is killed and ``TimeoutError`` names the silent ranks (its
            ``answers`` attribute: a dict of the other ranks' results or exceptions).
        comm_timeout : float, optional
            The communicator's timeout (default half of ``timeout``, so that a rank that
            skips a collective shows up as the others' ``TimeoutError`` first).
        return_exceptions : bool
            If true, a rank's exception is returned in its place; otherwise the first
            rank's exception is raised (one other than ``TimeoutError`` first: the
            cause, not its echo), with the remote traceback as its ``__cause__``.

        Returns
        -------
        list
            Each rank's result, in rank order.
        """
        w = self.size if size is None else size
        if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= self.size:
            raise ValueError(f"`size` must be an int between 1 and {self.size}; got {size!r}")
        if len(args_per_rank) != w:
            raise ValueError(f"`args_per_rank` must have {w} entries (one per rank); "
                             f"got {len(args_per_rank)}")
        timeout = self.timeout if timeout is None else float(timeout)
        if not timeout > 0:
            raise ValueError(f"`timeout` must be positive; got {timeout!r}")
        comm_timeout = timeout / 2 if comm_timeout is None else float(comm_timeout)
        payloads = []
        for r in range(w):
            try:
                payloads.append(pickle.dumps(("call", (fn, tuple(args_per_rank[r]), w, comm_timeout)),
                                             protocol=pickle.HIGHEST_PROTOCOL))
            except Exception as e:
                raise TypeError(f"`fn` and `args_per_rank[{r}]` must be picklable (fn defined at a "
                                f"module's top level): {e}") from e
        self.start()
        for r in range(w):
            self._conns[r].send_bytes(payloads[r])
        answers = self._collect(list(range(w)), timeout, "run")
        out = [_unpack(r, a) for r, a in enumerate(answers)]
        if any(a[3] for a in answers):
            self._stale = True  # a collective is pending on some rank: new workers next time
        if return_exceptions:
            return out
        errors = [e for kind, e in zip((a[0] for a in answers), out) if kind != "ok"]
        if errors:
            first = next((e for e in errors if not isinstance(e, TimeoutError)), errors[0])
            raise first
        return out

    def _collect(self, ranks: list[int], timeout: float, what: str) -> list:
        """One answer ``(kind, value, traceback)`` from each of ``ranks`` within ``timeout``
        seconds; kills the workers and raises when one dies or the time is up."""
        deadline = time.monotonic() + timeout
        answers: dict[int, tuple] = {}
        pending = set(ranks)
        while pending:
            left = deadline - time.monotonic()
            waiting = {self._conns[r]: r for r in pending}
            sentinels = {self._procs[r].sentinel: r for r in pending}
            ready = _wait_any(list(waiting) + list(sentinels), timeout=max(left, 0)) if left > 0 else []
            if not ready:
                silent = sorted(pending)
                self.kill()
                err = TimeoutError(f"GlooPool.{what}: rank(s) {silent} of {len(ranks)} did not answer "
                                   f"within {timeout:g} s; every worker was killed (the next run "
                                   f"starts new ones)")
                err.answers = {r: _unpack(r, a) for r, a in sorted(answers.items())}
                raise err
            for obj in ready:
                if obj in waiting:
                    r = waiting[obj]
                    if r not in pending:
                        continue
                    try:
                        answers[r] = pickle.loads(obj.recv_bytes())
                    except EOFError:
                        continue  # the worker died: its sentinel says so
                    pending.discard(r)
            for obj in ready:
                r = sentinels.get(obj)
                if r is not None and r in pending and not self._conns[r].poll():
                    code = self._procs[r].exitcode
                    self.kill()
                    raise RuntimeError(f"GlooPool.{what}: the worker of rank {r} died (exit code "
                                       f"{code}); every worker was killed (the next run starts new ones)")
        return [answers[r] for r in ranks]


def _unpack(rank: int, answer: tuple):
    """A worker's answer as its result, or its exception with the remote traceback as
    ``__cause__``."""
    kind, value, tb, _ = answer
    if kind in ("ok", "ready"):
        return value
    if tb:
        value.__cause__ = RemoteTraceback(rank, tb)
    return value


def _kill(procs, conns) -> None:
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(5)
    for c in conns:
        c.close()


def _answer(conn, kind: str, value: Any, tb: str, broken: str | None = None) -> None:
    try:
        data = pickle.dumps((kind, value, tb, broken), protocol=pickle.HIGHEST_PROTOCOL)
        if kind == "error":
            pickle.loads(data)  # some exceptions pickle but do not unpickle
    except Exception as e:  # an unpicklable result or exception
        data = pickle.dumps(("error", RuntimeError(f"unpicklable {kind} {value!r}: {e}"), tb, broken))
    conn.send_bytes(data)


def _worker_main(rank: int, world: int, port: int, conn, start_timeout: float, threads: int) -> None:
    import os
    from datetime import timedelta

    try:
        import torch
        import torch.distributed as dist

        from nce_ref.sharded.torch import TorchCommunicator

        torch.set_num_threads(threads)
        store = dist.TCPStore("127.0.0.1", port, world + 1, is_master=False,
                              timeout=timedelta(seconds=start_timeout))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                                timeout=timedelta(seconds=max(start_timeout, 60.0)))
        groups = {world: None}
        for w in range(1, world):  # every rank creates every subgroup, in the same order
            groups[w] = dist.new_group(list(range(w)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        _answer(conn, "error", e, traceback.format_exc())
        os._exit(1)
    _answer(conn, "ready", rank, "")
    while True:
        try:
            kind, payload = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break
        if kind == "stop":
            break
        comm = None
        try:
            fn, args, w, comm_timeout = payload
            comm = TorchCommunicator(groups[w], timeout=comm_timeout)
            result = fn(comm, *args)
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            _answer(conn, "error", e, traceback.format_exc(), getattr(comm, "broken", None))
        else:
            _answer(conn, "ok", result, "", comm.broken)
    conn.close()
    os._exit(0)  # no process-group teardown: a pending collective must not hold the exit


# -- counting what a rank sends and receives ---------------------------------------------

def _nbytes(x) -> int:
    """Bytes of the array ``x`` (any library with ``nbytes``, or ``element_size``)."""
    if hasattr(x, "nbytes"):
        return int(x.nbytes)
    return int(x.numel() * x.element_size())


def _row_bytes(x) -> int:
    return _nbytes(x) // x.shape[0] if x.shape[0] else 0


class CountingCommunicator:
    """A communicator that forwards every collective to ``comm`` and counts the bytes
    this rank sends and receives, per collective, as the direct algorithms move them
    (no adapter's padding, a reduce-scatter as one): ``sent["ring_pass"]`` and so on.

    - ``ring_pass(x, recv_rows)``: sends ``x``, receives ``recv_rows`` rows;
    - ``gather_rows(x, sizes)``: sends ``x`` to each of the W − 1 others, receives their
      ``Σ sizes − sizes[rank]`` rows;
    - ``reduce_rows(dx, sizes)`` (a reduce-scatter): sends the others' rows of ``dx``,
      receives W − 1 partial sums of its own ``sizes[rank]`` rows;
    - ``all_sum(x)``: sends and receives ``x`` once; ``all_gather_object`` is counted in
      ``calls`` only (metadata).

    Used to check the bytes per rank that ``docs/sharded.md`` derives.

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref.sharded import ThreadGroup
    >>> from nce_ref.testing.sharded import CountingCommunicator
    >>> def rank(comm, x):
    ...     c = CountingCommunicator(comm)
    ...     c.ring_pass(x, 2)
    ...     return c.sent["ring_pass"], c.received["ring_pass"]
    >>> ThreadGroup(2).run(rank, [(np.zeros((2, 3)),), (np.zeros((2, 3)),)])
    [(48, 48), (48, 48)]
    """

    def __init__(self, comm):
        self.comm = comm
        self.sent: Counter = Counter()
        self.received: Counter = Counter()
        self.calls: Counter = Counter()

    @property
    def rank(self):
        return self.comm.rank

    @property
    def size(self):
        return self.comm.size

    def _count(self, name: str, sent: int, received: int) -> None:
        self.calls[name] += 1
        self.sent[name] += sent
        self.received[name] += received

    def ring_pass(self, x, recv_rows: int):
        out = self.comm.ring_pass(x, recv_rows)
        if self.size > 1:
            self._count("ring_pass", _nbytes(x), recv_rows * _row_bytes(x))
        return out

    def gather_rows(self, x, sizes):
        rb, others = _row_bytes(x), sum(sizes) - sizes[self.rank]
        self._count("gather_rows", (self.size - 1) * _nbytes(x), others * rb)
        return self.comm.gather_rows(x, sizes)

    def reduce_rows(self, dx, sizes):
        rb, own = _row_bytes(dx), sizes[self.rank]
        self._count("reduce_rows", (sum(sizes) - own) * rb, (self.size - 1) * own * rb)
        return self.comm.reduce_rows(dx, sizes)

    def all_sum(self, x):
        self._count("all_sum", _nbytes(x), _nbytes(x))
        return self.comm.all_sum(x)

    def all_gather_object(self, obj):
        self.calls["all_gather_object"] += 1
        return self.comm.all_gather_object(obj)
