"""The engine's tuning: one frozen configuration, its defaults read from the machine.

Every size the streamed kernels (:mod:`nce_ref._stream`) choose by themselves comes
from the :class:`Tuning` in effect: the memory budget of the row blocks
(:func:`nce_ref._stream._policy.choose_block`), the chunks of rows that the NumPy
passes keep in a core's L2 cache (:func:`nce_ref._stream._exec.by_chunks`) and when
they use two threads (:func:`nce_ref._stream._exec.by_halves`).  :func:`tuning`
overrides fields for a ``with`` block; the override lives in a
:class:`contextvars.ContextVar`, so other threads (and asyncio tasks) keep theirs.
The values change speed and peak memory only, never a result beyond rounding.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import os
from dataclasses import dataclass, field

__all__ = ["Tuning", "tuning", "get_tuning"]

_CACHE_DIR = "/sys/devices/system/cpu/cpu0/cache"

#: the chunk size where the machine does not say its L2 cache size
_CHUNK_FALLBACK = 1 << 20


def _parse_size(text: str) -> int | None:
    """Bytes of a sysfs cache size (``"1024K"``, ``"2M"``, ``"512"``); None if unreadable."""
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if mult > 1 else text
    return int(digits) * mult if digits.isdigit() and int(digits) > 0 else None


@functools.lru_cache(maxsize=1)
def _l2_cache_bytes() -> int:
    """cpu0's level-2 (data or unified) cache size from sysfs, else 1 MiB."""
    try:
        names = sorted(n for n in os.listdir(_CACHE_DIR) if n.startswith("index"))
    except OSError:
        return _CHUNK_FALLBACK
    for name in names:
        try:
            with open(os.path.join(_CACHE_DIR, name, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(_CACHE_DIR, name, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(_CACHE_DIR, name, "size")) as f:
                size = _parse_size(f.read())
        except OSError:
            continue
        if level == "2" and kind in ("Data", "Unified") and size:
            return size
    return _CHUNK_FALLBACK


@functools.lru_cache(maxsize=1)
def _threads() -> int:
    """The CPUs this process may run on, capped at 2 (the NumPy passes split rows in halves)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(2, n))


@dataclass(frozen=True)
class Tuning:
    """Sizes and thresholds of the streamed engine (speed and memory, never results).

    Parameters
    ----------
    memory_budget : int
        Bytes of a streamed kernel's block buffers on the CPU (default 128 MiB): a block
        has as many rows as fit, unless the caller passes ``block_size`` or
        ``memory_budget``.
    accelerator_memory_budget : int
        The same for arrays on a GPU or another accelerator (default 1 GiB): blocks of
        thousands of rows keep the GEMMs large and the kernel launches few.
    heap_buffer_bytes : int
        NumPy: the most bytes per block buffer (default 30 MiB).  glibc's malloc serves
        allocations below its largest dynamic mmap threshold (32 MiB) from the heap,
        whose pages the next block (and the next call) reuses; a larger buffer is
        mapped afresh each time and page-faulted on first write.
    heap_min_rows : int
        ... unless :attr:`heap_buffer_bytes` leaves fewer rows than this per block
        (default 512): the O(C·K) work per block would then cost more than the faults.
    chunk_bytes : int
        Bytes per chunk of rows of the NumPy passes (default: the L2 cache size of
        cpu0 from ``/sys/devices/system/cpu/cpu0/cache/index*/``, 1 MiB where it cannot
        be read), so that a chunk stays in a core's cache through all of its passes.
    thread_min_rows, thread_min_size : int
        The NumPy passes use two threads from this many rows and entries on (defaults
        256 and 2**18): below, the hand-off costs more than it saves.
    threads : int
        1 or 2: the threads of the NumPy passes (default: the CPUs of
        ``os.sched_getaffinity(0)``, capped at 2).  With 2, and NumPy's BLAS on at most
        two threads, SigLIP's sweep runs as two pipelines, each with its GEMMs on one BLAS
        thread (:func:`nce_ref._stream._exec.by_blas_halves`).

    Raises
    ------
    TypeError
        A field that is not an integer (``bool`` included).
    ValueError
        A field below 1, or ``threads`` other than 1 or 2.

    Examples
    --------
    >>> from nce_ref import Tuning
    >>> Tuning(chunk_bytes=2**16).chunk_bytes
    65536
    >>> Tuning(threads=3)
    Traceback (most recent call last):
    ...
    ValueError: `threads` must be 1 or 2; got 3
    """

    memory_budget: int = 128 * 2**20
    accelerator_memory_budget: int = 2**30
    heap_buffer_bytes: int = 30 * 2**20
    heap_min_rows: int = 512
    chunk_bytes: int = field(default_factory=_l2_cache_bytes)
    thread_min_rows: int = 256
    thread_min_size: int = 1 << 18
    threads: int = field(default_factory=_threads)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"`{f.name}` must be an integer; got {v!r} ({type(v).__name__})")
            if v < 1:
                raise ValueError(f"`{f.name}` must be >= 1; got {v}")
        if self.threads > 2:
            raise ValueError(f"`threads` must be 1 or 2; got {self.threads}")


_FIELDS = tuple(f.name for f in dataclasses.fields(Tuning))
_DEFAULT = Tuning()
_CURRENT: contextvars.ContextVar[Tuning] = contextvars.ContextVar("nce_ref_tuning")


def get_tuning() -> Tuning:
    """The :class:`Tuning` in effect in this thread (or task).

    Examples
    --------
    >>> import nce_ref
    >>> nce_ref.get_tuning() == nce_ref.Tuning()  # the machine's defaults
    True
    """
    return _CURRENT.get(_DEFAULT)


class _Override:
    """The context manager that :func:`tuning` returns (re-entrant, one token per entry)."""

    def __init__(self, value: Tuning):
        self._value = value
        self._tokens: list[contextvars.Token] = []

    def __enter__(self) -> Tuning:
        self._tokens.append(_CURRENT.set(self._value))
        return self._value

    def __exit__(self, *exc) -> None:
        _CURRENT.reset(self._tokens.pop())


def tuning(**overrides: int) -> _Override:
    """Override fields of the :class:`Tuning` in effect, for a ``with`` block.

    The fields not named keep their values in effect (nested blocks compose).  The
    override is a :class:`contextvars.ContextVar`: other threads do not see it, and the
    engine's own worker threads run with the caller's.

    Parameters
    ----------
    **overrides : int
        Fields of :class:`Tuning` and their values, checked here.

    Returns
    -------
    context manager
        Entering it yields the :class:`Tuning` in effect inside the block.

    Raises
    ------
    TypeError
        An unknown field name, or a value that is not an integer.
    ValueError
        A value out of its field's range.

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> q = np.random.default_rng(0).standard_normal((300, 8))
    >>> with nce_ref.tuning(threads=1, chunk_bytes=4096) as t:
    ...     one_thread = nce_ref.info_nce(q, q[::-1])
    >>> t.threads, nce_ref.get_tuning() == nce_ref.Tuning()
    (1, True)
    >>> bool(np.isclose(one_thread, nce_ref.info_nce(q, q[::-1]), rtol=1e-14))
    True
    >>> nce_ref.tuning(chunk=1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: tuning() got an unknown field 'chunk'; the fields are memory_budget, ...
    """
    unknown = [k for k in overrides if k not in _FIELDS]
    if unknown:
        raise TypeError(f"tuning() got an unknown field {unknown[0]!r}; the fields are "
                        + ", ".join(_FIELDS))
    return _Override(dataclasses.replace(get_tuning(), **overrides))
