"""Execution of the engine's row passes: chunks of rows in cache, and two threads.

- :func:`by_halves`: ``part(r0, r1)`` on the two halves of the rows, one of them on the
  engine's thread pool (NumPy's ufuncs and BLAS release the GIL);
- :func:`by_chunks`: ``part`` over chunks of about ``Tuning.chunk_bytes`` each, so that
  all of a chunk's passes run in a core's L2 cache, the halves on two threads;
- :func:`by_row_chunks`: a row-wise function of a dict of arrays, in chunks where the
  namespace's passes are chunked (NumPy, :mod:`._numpy`), at once elsewhere.

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

from ._config import get_tuning

__all__ = ["by_halves", "by_chunks", "by_row_chunks"]

#: the pool's size: the most threads :class:`nce_ref.Tuning` allows
_WORKERS = 2

_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None
_LOCAL = threading.local()


def _mark_worker() -> None:
    _LOCAL.worker = True


def _reset_after_fork() -> None:
    """In a forked child: the parent's pool has no threads here, and its lock may be held."""
    global _POOL, _LOCK
    _POOL = None
    _LOCK = threading.Lock()


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
    h = n // 2
    fut = _pool().submit(contextvars.copy_context().run, part, h, n)
    try:
        first = part(0, h)
    except BaseException:
        wait([fut])  # the other half writes into the caller's buffers: let it finish
        raise
    second = fut.result()
    return tuple(None if u is None else array_namespace(u).concat([u, v])
                 for u, v in zip(first, second))


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
