"""Execution of the engine's row passes: chunks of rows in cache, and two threads.

- :func:`by_halves`: ``part(r0, r1)`` on the two halves of the rows, one of them on the
  engine's thread pool (NumPy's ufuncs and BLAS release the GIL);
- :func:`by_chunks`: ``part`` over chunks of about ``Tuning.chunk_bytes`` each, so that
  all of a chunk's passes run in a core's L2 cache, the halves on two threads;
- :func:`by_row_chunks`: a row-wise function of a dict of arrays, in chunks where the
  namespace's passes are chunked (NumPy, :mod:`._numpy`), at once elsewhere;
- :func:`by_blas_halves`: a whole row-block sweep (its GEMMs included) on the two halves
  of the rows, one thread each, with the BLAS on one thread per call: two independent
  pipelines instead of two-threaded GEMMs followed by two-threaded passes.

Why the last one: after each multi-threaded GEMM, OpenBLAS's worker threads spin (busy
wait, about 2^28 cycles) for the next call, on the core that the second thread of
:func:`by_halves` needs; measured here (2 cores), an elementwise pass right after a GEMM
took as long on two threads as on one (9-12 ms per 1366 x 4096 block, against 6 ms
without the GEMM before it).  Two pipelines on single-threaded BLAS have no spinner.

Callers: the NumPy specialisations of :mod:`._numpy` (every kernel's in-place passes),
``losses.infonce`` (the O(N·D) chain of the similarity, :func:`by_row_chunks`) and
``mi.embeddings`` (the MI bounds' row passes).

The pool is created on first use under a lock (threads may race to it) and forgotten
in a forked child (``os.register_at_fork``), whose copy of it has no worker threads:
the child makes its own.  Work submitted to it runs in a copy of the caller's
:mod:`contextvars` context, so the caller's :func:`nce_ref.tuning` holds there too; a
pool thread runs nested passes itself (never waits on the pool it serves).
"""

from __future__ import annotations

import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

from array_api_compat import array_namespace

from ._config import get_tuning, tuning

__all__ = ["by_halves", "by_chunks", "by_row_chunks", "by_blas_halves"]

#: the pool's size: the most threads :class:`nce_ref.Tuning` allows
_WORKERS = 2

_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None
_LOCAL = threading.local()


def _mark_worker() -> None:
    _LOCAL.worker = True


def _reset_after_fork() -> None:
    """In a forked child: the parent's pool has no threads here, and its lock may be held."""
    global _POOL, _LOCK, _BLAS_LOCK, _BLAS_FIND
    _POOL = None
    _LOCK = threading.Lock()
    _BLAS_LOCK = threading.Lock()
    _BLAS_FIND = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_reset_after_fork)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    pool = _POOL
    if pool is None:
        with _LOCK:
            if _POOL is None:
                _POOL = ThreadPoolExecutor(_WORKERS, thread_name_prefix="nce_ref",
                                           initializer=_mark_worker)
            pool = _POOL
    return pool


def by_halves(part, n: int, size: int):
    """``part(r0, r1)`` over the rows ``[0, n)``: on two threads (one per half) when the
    block is large enough for it to pay (``Tuning.thread_min_rows`` rows and
    ``Tuning.thread_min_size`` entries, ``Tuning.threads == 2``), else at once.

    ``part`` returns a tuple of per-row arrays (or ``None``s); the halves' are
    concatenated along the rows.
    """
    t = get_tuning()
    if t.threads < 2 or n < t.thread_min_rows or size < t.thread_min_size \
            or getattr(_LOCAL, "worker", False):
        return part(0, n)
    first, second = _two_halves(part, n)
    return tuple(None if u is None else array_namespace(u).concat([u, v])
                 for u, v in zip(first, second))


def _two_halves(part, n: int):
    """``(part(0, h), part(h, n))``, ``h = n // 2``: the second half on the pool, in a copy
    of the caller's context, the first on the calling thread."""
    h = n // 2
    fut = _pool().submit(contextvars.copy_context().run, part, h, n)
    try:
        first = part(0, h)
    except BaseException:
        wait([fut])  # the other half may write into the caller's buffers: let it finish
        raise
    return first, fut.result()


# -- the BLAS's threads ----------------------------------------------------------------

_BLAS_LOCK = threading.Lock()  # held by the one by_blas_halves call in progress
_BLAS_FIND = threading.Lock()
_BLAS = None  # threadpoolctl's controller of the loaded BLAS libraries


def _blas():
    """threadpoolctl's controller of the BLAS libraries loaded in this process (found
    once, on first use: about 0.1 s); its ``lib_controllers`` is empty where it finds
    none."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        with _BLAS_FIND:
            if _BLAS is None:
                _BLAS = ThreadpoolController().select(user_api="blas")
    return _BLAS


def blas_halves_apply(n: int) -> bool:
    """Whether :func:`by_blas_halves` may run two pipelines for ``n`` rows:
    ``Tuning.threads == 2``, at least ``2·Tuning.thread_min_rows`` rows, not on a pool
    thread, and every BLAS library found runs on at most two threads (on a larger
    machine the GEMMs' own threads are worth more than the passes')."""
    t = get_tuning()
    if t.threads < 2 or n < 2 * t.thread_min_rows or getattr(_LOCAL, "worker", False):
        return False
    libs = _blas().lib_controllers
    return bool(libs) and all(lib.get_num_threads() <= t.threads for lib in libs)


def by_blas_halves(part, n: int):
    """``(part(0, h), part(h, n))`` (``h = n // 2``) on two threads, each running its
    BLAS calls on one thread; or None, and the caller sweeps the rows itself.

    It runs where :func:`blas_halves_apply` says so, no other such call is in progress
    in the process, and every BLAS library accepts one thread (threadpoolctl lets only
    one thread at a time set OpenBLAS's count: where another one holds that right, e.g.
    inside a ``threadpool_limits`` block of another thread, the count does not change
    and the halves do not run).  ``part`` is a whole sweep over its rows (GEMMs and
    passes); inside it the engine's passes run on the calling thread
    (``Tuning.threads = 1``).  The BLAS gets its thread counts back before this returns,
    also when ``part`` raises; meanwhile the process's other BLAS calls run on one
    thread.  Results: the same blocks' arithmetic as a sweep of each half; the caller
    adds the halves' partial sums.
    """
    if not blas_halves_apply(n) or not _BLAS_LOCK.acquire(blocking=False):
        return None
    try:
        blas = _blas()
        with blas.limit(limits=1, user_api="blas"):  # the counts come back on exit
            if any(lib.get_num_threads() != 1 for lib in blas.lib_controllers):
                return None  # another thread holds the right to set the count
            return _two_halves(_on_one_thread(part), n)
    finally:
        _BLAS_LOCK.release()


def _on_one_thread(part):
    """``part`` with the engine's own passes on the calling thread (``Tuning.threads = 1``)
    and the BLAS on one thread in this thread too: an OpenMP build of OpenBLAS keeps one
    count per thread (for the pthreads build the caller's setting is the process's, and
    threadpoolctl ignores this one)."""
    def run(r0, r1):
        with tuning(threads=1), _blas().limit(limits=1, user_api="blas"):
            return part(r0, r1)

    return run


def by_chunks(part, n: int, row_bytes: int):
    """``part(r0, r1)`` over chunks of about ``Tuning.chunk_bytes`` bytes of the rows
    ``[0, n)`` (``row_bytes`` each, for all the arrays a chunk touches), the two halves
    of the rows on two threads (:func:`by_halves`).

    ``part`` returns a tuple of per-row arrays (or ``None``s); the first chunk's give
    the outputs' shapes, and every chunk writes its rows into them (writable arrays).
    Returns the tuple of ``(n, ...)`` outputs.
    """
    step = max(1, get_tuning().chunk_bytes // max(1, row_bytes))
    first = part(0, min(n, step))
    if n <= step:
        return first
    outs = tuple(None if v is None else
                 array_namespace(v).empty((n,) + tuple(v.shape[1:]), dtype=v.dtype)
                 for v in first)
    for o, v in zip(outs, first):
        if o is not None:
            o[:step] = v

    def half(h0, h1):
        for c in range(step + h0, step + h1, step):
            c1 = min(step + h1, c + step)
            for o, v in zip(outs, part(c, c1)):
                if o is not None:
                    o[c:c1] = v
        return ()

    by_halves(half, n - step, (n - step) * row_bytes // 4)
    return outs


def by_row_chunks(fn, n: int, row_bytes: int, xp):
    """``fn(rows)``, a dict of arrays whose first axis is the rows ``rows`` (a slice of
    ``[0, n)``), over all the rows: one dict of ``(n, ...)`` arrays.

    ``fn`` must be row-wise.  Where the namespace's passes run in chunks
    (:func:`._numpy.np_namespace`) it runs in chunks in cache (:func:`by_chunks`);
    elsewhere ``fn(None)`` is called once, over all the rows.
    """
    from ._numpy import np_namespace  # here: that module runs its passes with this one's drivers

    if not n or not np_namespace(xp):
        return fn(None)
    keys = []

    def part(r0, r1):
        out = fn(slice(r0, r1))
        if not keys:
            keys.extend(out)
        return tuple(out[k] for k in keys)

    return dict(zip(keys, by_chunks(part, n, row_bytes)))
