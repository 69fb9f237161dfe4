"""The streamed engine's execution and tuning (``nce_ref._stream``).

- the thread pool survives a ``fork``: a forked worker computes what its parent
  computed after the parent used the pool (it used to hang there);
- several Python threads computing at once get the single-thread results;
- ``nce_ref.tuning`` overrides per context (threads do not see each other's), and
  refuses unknown fields and bad values by name;
- the machine-derived defaults are what ``Tuning`` documents;
- ``by_blas_halves`` runs its two halves at once with the BLAS on one thread, gives the
  BLAS back its thread count (also when a half raises, and when several callers overlap),
  and declines where it does not pay.
"""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import nce_ref
from nce_ref._stream import by_blas_halves, by_halves

# thresholds low enough that a 512 x 512 problem splits its passes over two threads
SMALL = {"thread_min_rows": 4, "thread_min_size": 16, "threads": 2, "chunk_bytes": 1 << 14}


def _problem(n: int = 512, d: int = 32):
    rng = np.random.default_rng(7)
    return rng.standard_normal((n, d)), rng.standard_normal((n, d))


def _value_and_grad(q, k):
    v, g = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, temperature=0.3)
    return float(v), np.asarray(g["query"]), np.asarray(g["key"])


def _in_child(q, k):
    with nce_ref.tuning(**SMALL):
        return _value_and_grad(q, k)


def test_the_pool_runs_in_a_forked_child_after_the_parent_used_it():
    """In a fresh interpreter: this one may hold other libraries' threads (JAX warns that
    a fork with its threads may deadlock), which are not what the test is about."""
    if not hasattr(os, "fork") or "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    root = pathlib.Path(__file__).resolve().parents[1]
    code = "from tests.test_stream_engine import fork_check; fork_check()"
    run = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]


def fork_check():
    """The parent uses the engine's pool, then a forked worker computes the same."""
    q, k = _problem()
    with nce_ref.tuning(**SMALL):
        parent = _value_and_grad(q, k)
    # the engine's pool exists and has run work in this process (its threads are named)
    assert any(t.name.startswith("nce_ref") for t in threading.enumerate()), \
        "the parent's call did not use the thread pool"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        child = pool.apply_async(_in_child, (q, k)).get(timeout=60)
    assert child[0] == parent[0]
    np.testing.assert_array_equal(child[1], parent[1])
    np.testing.assert_array_equal(child[2], parent[2])


def test_threads_computing_at_once_get_the_single_thread_results():
    q, k = _problem()
    with nce_ref.tuning(**(SMALL | {"threads": 1})):
        want = _value_and_grad(q, k)

    def run(_):
        with nce_ref.tuning(**SMALL):
            return _value_and_grad(q, k)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(8)))
    for v, gq, gk in results:
        assert v == pytest.approx(want[0], rel=1e-14)
        np.testing.assert_allclose(gq, want[1], rtol=1e-13, atol=1e-16)
        np.testing.assert_allclose(gk, want[2], rtol=1e-13, atol=1e-16)


def test_an_override_is_seen_by_its_own_thread_only():
    default = nce_ref.get_tuning()
    seen, entered, release = {}, threading.Event(), threading.Event()

    def other():
        entered.wait(10)
        seen["other"] = nce_ref.get_tuning().chunk_bytes
        release.set()

    t = threading.Thread(target=other)
    t.start()
    with nce_ref.tuning(chunk_bytes=4096) as inside:
        entered.set()
        release.wait(10)
        seen["own"] = nce_ref.get_tuning().chunk_bytes
        with nce_ref.tuning(threads=1):  # nested blocks compose
            assert nce_ref.get_tuning().chunk_bytes == 4096
            assert nce_ref.get_tuning().threads == 1
    t.join()
    assert inside.chunk_bytes == 4096
    assert seen == {"own": 4096, "other": default.chunk_bytes}
    assert nce_ref.get_tuning() == default


def test_the_pool_threads_run_with_the_callers_tuning():
    seen = []

    def part(r0, r1):
        seen.append(nce_ref.get_tuning().chunk_bytes)
        return (np.arange(r0, r1),)

    with nce_ref.tuning(chunk_bytes=12345, thread_min_rows=2, thread_min_size=1, threads=2):
        (rows,) = by_halves(part, 10, 10**6)
    np.testing.assert_array_equal(rows, np.arange(10))
    assert seen == [12345, 12345]


@pytest.mark.parametrize("kw,exc,match", [
    ({"chunk": 1}, TypeError, "unknown field 'chunk'"),
    ({"chunk_bytes": 1.5}, TypeError, "`chunk_bytes` must be an integer"),
    ({"threads": True}, TypeError, "`threads` must be an integer"),
    ({"memory_budget": 0}, ValueError, "`memory_budget` must be >= 1; got 0"),
    ({"threads": 3}, ValueError, "`threads` must be 1 or 2; got 3"),
])
def test_bad_tuning_is_refused_by_name(kw, exc, match):
    with pytest.raises(exc, match=match):
        nce_ref.tuning(**kw)


def test_the_defaults_come_from_the_machine():
    t = nce_ref.Tuning()
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    assert t.threads == max(1, min(2, cpus))
    l2 = None
    base = "/sys/devices/system/cpu/cpu0/cache"
    if sys.platform.startswith("linux") and os.path.isdir(base):
        for name in sorted(os.listdir(base)):
            if not name.startswith("index"):
                continue
            level, size = (pathlib.Path(base, name, f).read_text().strip() for f in ("level", "size"))
            if level == "2":
                l2 = int(size[:-1]) * {"K": 1024, "M": 2**20}[size[-1]]
                break
    assert t.chunk_bytes == (l2 or 1 << 20)
    assert t.memory_budget == 128 * 2**20 and t.accelerator_memory_budget == 2**30


# -- by_blas_halves ------------------------------------------------------------------------

threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl is a dependency")


def _blas_threads() -> list[int]:
    """The thread counts of the BLAS libraries the engine found (those loaded when it first
    needed them: NumPy's among them; one imported later, e.g. torch's, is not NumPy's)."""
    from nce_ref._stream._exec import _blas

    return [lib.get_num_threads() for lib in _blas().lib_controllers]


def _openblas_only() -> bool:
    """threadpoolctl lets one thread at a time set OpenBLAS's (process-wide) count."""
    from nce_ref._stream._exec import _blas

    return {lib.internal_api for lib in _blas().lib_controllers} == {"openblas"}


def _two_blas_threads():
    """The BLAS on two threads (whatever the machine's count): by_blas_halves applies."""
    if not _blas_threads():
        pytest.skip("threadpoolctl finds no BLAS library in this process")
    return threadpoolctl.threadpool_limits(limits=2, user_api="blas")


def test_blas_halves_run_at_once_on_one_blas_thread_each():
    barrier = threading.Barrier(2, timeout=10)  # both halves must be running together
    seen = []

    def part(r0, r1):
        barrier.wait()
        a = np.ones((64, 64))
        seen.append((threading.get_ident(), tuple(_blas_threads()), nce_ref.get_tuning().threads,
                     float((a @ a)[0, 0])))
        return r0, r1

    with _two_blas_threads(), nce_ref.tuning(threads=2, thread_min_rows=2):
        out = by_blas_halves(part, 9)
        after = _blas_threads()
    assert out == ((0, 4), (4, 9))
    assert len({ident for ident, *_ in seen}) == 2
    for _, blas, threads, v in seen:
        assert set(blas) == {1} and threads == 1 and v == 64.0
    assert set(after) == {2}


def test_blas_halves_give_the_count_back_when_a_half_raises():
    done = []

    def part(r0, r1):
        if r0 == 0:
            raise ValueError("first half")
        done.append(r0)
        return ()

    with _two_blas_threads(), nce_ref.tuning(threads=2, thread_min_rows=2):
        with pytest.raises(ValueError, match="first half"):
            by_blas_halves(part, 8)
        assert done == [4]  # the other half finished before the error came out
        assert set(_blas_threads()) == {2}


def _in_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(20)
    return out[0]


def test_a_second_caller_sweeps_itself_while_the_halves_of_a_first_run():
    inside, release = threading.Event(), threading.Event()

    def slow(r0, r1):
        inside.set()
        release.wait(10)
        return r0

    def second():
        inside.wait(10)
        with nce_ref.tuning(threads=2, thread_min_rows=2):
            got = by_blas_halves(lambda r0, r1: r0, 8)
        release.set()
        return got

    seen = []
    with _two_blas_threads(), nce_ref.tuning(threads=2, thread_min_rows=2):
        t = threading.Thread(target=lambda: seen.append(second()))
        t.start()
        assert by_blas_halves(slow, 8) == (0, 4)
        t.join(20)
        assert seen == [None]
        assert set(_blas_threads()) == {2}


def test_a_caller_inside_its_own_threadpool_limits_block_runs_its_halves():
    """From a thread other than the main one, inside that thread's own block: the halves
    run on one BLAS thread each, and the block's count is there again after them."""
    def call():
        with nce_ref.tuning(threads=2, thread_min_rows=2), \
                threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
            return by_blas_halves(lambda r0, r1: _blas_threads(), 8), _blas_threads()

    if not _blas_threads():
        pytest.skip("threadpoolctl finds no BLAS library in this process")
    got, after = _in_thread(call)
    assert all(set(h) == {1} for h in got) and set(after) == {2}


def test_a_threadpool_limits_block_of_another_thread_is_left_alone():
    """threadpoolctl gives one thread at a time the right to set OpenBLAS's count; inside
    another thread's ``threadpool_limits`` block the halves decline and change nothing."""
    def call():
        with nce_ref.tuning(threads=2, thread_min_rows=2):
            return by_blas_halves(lambda r0, r1: r0, 8)

    with _two_blas_threads():
        before = _blas_threads()
        got = _in_thread(call)
        assert _blas_threads() == before
    if _openblas_only():
        assert got is None


@pytest.mark.parametrize("case", ["one thread", "few rows", "a larger BLAS"])
def test_blas_halves_decline_where_they_do_not_pay(case):
    called = []

    def part(r0, r1):
        called.append((r0, r1))
        return ()

    limits = 4 if case == "a larger BLAS" else 2
    tune = {"threads": 1 if case == "one thread" else 2, "thread_min_rows": 5}
    if not _blas_threads():
        pytest.skip("threadpoolctl finds no BLAS library in this process")
    with threadpoolctl.threadpool_limits(limits=limits, user_api="blas"), nce_ref.tuning(**tune):
        assert by_blas_halves(part, 9 if case == "few rows" else 10) is None
        assert set(_blas_threads()) == {limits}
    assert called == []
