"""Sharded InfoNCE over 2 gloo processes (one thread each) against one process on two
threads: the issue's target is value_and_grad within 1.25x the single-process streamed
call at global N = 16384, D = 256, float32; and the ring's peak memory per rank below the
gather's by the keys' share.

``track_ratio_*`` pair each sharded call with the single-process one right before it
(median of three; each right after one single-process call, the protocol that
``common.paired_ratio`` had before it timed second calls); ``track_peak_rss_*``
report each rank's peak resident memory (MiB, a fresh pool per algorithm): the process's
lifetime peak, and the call's own peak above the RSS before it.
``docs/examples/sharded_memory.py`` measures the NumPy arrays' peak (``tracemalloc``, MPI).  Run with
``asv run --python=same -b Sharded``; the "fast" profile uses N = 2048.

``ShardedNTXent``, ``ShardedSupCon`` and ``ShardedBound`` (DV) time both algorithms at
N = 4096 (fast: 1024), D = 256, float32, seconds per benchmark: the ratio to the
single-process call, and the bytes each rank sent (counted by
:class:`nce_ref.testing.sharded.CountingCommunicator`) over what ``docs/sharded.md``
derives (1.0 when they agree; ``tests/test_sharded_bytes.py`` checks the same exactly).
"""

from __future__ import annotations

import resource
import time

import numpy as np

from .common import profile

D = 256


def _n() -> int:
    return 2048 if profile() == "fast" else 16384


def _rank_call(comm, q, k, algorithm, ranks="torch"):
    """This rank's value_and_grad, one thread: on torch tensors, or (``ranks="numpy"``)
    on the NumPy arrays themselves (gloo moves them through ``torch.from_numpy``; the
    rank runs the NumPy kernels); returns the seconds and the peak RSS."""
    import torch

    import nce_ref

    torch.set_num_threads(1)
    vg = nce_ref.value_and_grad(nce_ref.sharded.info_nce)
    qt, kt = (q, k) if ranks == "numpy" else (torch.from_numpy(q), torch.from_numpy(k))
    with nce_ref.tuning(threads=1):
        vg(qt, kt, comm=comm, algorithm=algorithm, temperature=0.07)  # warm
        t0 = time.perf_counter()
        vg(qt, kt, comm=comm, algorithm=algorithm, temperature=0.07)
        t = time.perf_counter() - t0
    return t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _rank_memory(comm, q, k, algorithm):
    """This rank's peak RSS during one value_and_grad above the RSS just before it (MiB):
    torch imported, the inputs made, one warm call on 64 rows, then the peak reset
    (Linux: ``/proc/self/clear_refs``).  Returns (extra, peak)."""
    import gc

    import torch

    import nce_ref

    torch.set_num_threads(1)
    vg = nce_ref.value_and_grad(nce_ref.sharded.info_nce)
    qt, kt = torch.from_numpy(q), torch.from_numpy(k)
    vg(qt[:64], kt[:64], comm=comm, algorithm=algorithm, temperature=0.07)  # imports, buffers
    gc.collect()
    base = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    out = vg(qt, kt, comm=comm, algorithm=algorithm, temperature=0.07)
    peak = _status_mib("VmHWM")
    del out
    return peak - base, peak


def _single(q, k, library):
    import nce_ref

    if library == "torch":
        import torch

        torch.set_num_threads(2)
        q, k = torch.from_numpy(q), torch.from_numpy(k)
    vg = nce_ref.value_and_grad(nce_ref.info_nce)
    vg(q, k, temperature=0.07)
    t0 = time.perf_counter()
    vg(q, k, temperature=0.07)
    return time.perf_counter() - t0


class ShardedInfoNCE:
    """``ranks``: the arrays each rank computes on (torch tensors, or NumPy arrays through
    the same gloo group); ``single_process``: the library of the one-process call."""

    params = (["gather", "ring"], ["numpy", "torch"], ["torch", "numpy"])
    param_names = ["algorithm", "single_process", "ranks"]
    timeout = 900

    def setup(self, algorithm, single, ranks="torch"):
        from nce_ref.testing.sharded import GlooPool

        rng = np.random.default_rng(0)
        n = _n()
        self.q = rng.standard_normal((n, D)).astype(np.float32)
        self.k = rng.standard_normal((n, D)).astype(np.float32)
        self.pool = GlooPool(2, timeout=600)
        h = n // 2
        self.args = [(self.q[:h], self.k[:h], algorithm, ranks),
                     (self.q[h:], self.k[h:], algorithm, ranks)]

    def teardown(self, algorithm, single, ranks="torch"):
        self.pool.close()

    def track_ratio_to_single_process(self, algorithm, single, ranks="torch"):
        ratios = []
        for _ in range(3):
            t_single = _single(self.q, self.k, single)
            out = self.pool.run(_rank_call, self.args)
            ratios.append(max(o[0] for o in out) / t_single)
        return float(np.median(ratios))

    def track_peak_rss_per_rank_mib(self, algorithm, single, ranks="torch"):
        return float(max(o[1] for o in self.pool.run(_rank_call, self.args)))

    def track_peak_rss_above_baseline_per_rank_mib(self, algorithm, single, ranks="torch"):
        """The call's own peak (``_rank_memory``), the larger rank's: docs/sharded.md."""
        return float(max(o[0] for o in self.pool.run(_rank_memory, [a[:3] for a in self.args])))

    track_ratio_to_single_process.unit = "ratio"
    track_peak_rss_per_rank_mib.unit = "MiB"
    track_peak_rss_above_baseline_per_rank_mib.unit = "MiB"


# -- nt_xent, supcon and the MI bounds: gather and ring, seconds per benchmark -----------

def _small_n() -> int:
    return 1024 if profile() == "fast" else 4096


def _rank_counted(comm, name, arrays, kw):
    """This rank's value_and_grad of ``nce_ref.sharded.<name>`` (torch, one thread) through
    a counting communicator; returns (seconds, bytes this rank sent)."""
    import torch

    import nce_ref
    from nce_ref.testing.sharded import CountingCommunicator

    torch.set_num_threads(1)
    vg = nce_ref.value_and_grad(getattr(nce_ref.sharded, name))
    ts = [torch.from_numpy(a) for a in arrays]
    vg(*ts, comm=comm, **kw)  # warm
    counted = CountingCommunicator(comm)
    t0 = time.perf_counter()
    vg(*ts, comm=counted, **kw)
    dt = time.perf_counter() - t0
    sent = sum(counted.sent[k] for k in ("ring_pass", "gather_rows", "reduce_rows"))
    return dt, sent


def _single_numpy(name, arrays, kw):
    import nce_ref

    fn = {"nt_xent": nce_ref.nt_xent, "supcon": nce_ref.supcon,
          "bound_from_embeddings": nce_ref.mi.bound_from_embeddings}[name]
    vg = nce_ref.value_and_grad(fn)
    vg(*arrays, **kw)
    t0 = time.perf_counter()
    vg(*arrays, **kw)
    return time.perf_counter() - t0


def _derived_bytes(name, algorithm, rows, kw, label_bytes=0):
    """What rank 0 sends, by ``docs/sharded.md`` (2 ranks of ``rows`` travelling or
    gathered rows each, D features of 4 bytes): the ring sends its shard once per round
    (2 rounds; supcon's per_pair 3) with the labels, and the accumulator twice; gather
    sends its rows to the other rank and the other rank's rows of the gradient."""
    row = D * 4
    # DV's and SMILE's log-sum-exp over every row: each rank's maximum, one float32
    extra = 4 if name == "bound_from_embeddings" and kw.get("bound") in ("dv", "smile") else 0
    if algorithm == "ring":
        rounds = 3 if kw.get("positives") == "per_pair" else 2
        return rounds * rows * (row + label_bytes) + 2 * rows * row + extra
    return rows * (row + label_bytes) + rows * row + extra


class _ShardedSuite:
    """2 gloo ranks against one process (NumPy, 2 threads); ``name`` and ``_data`` per suite."""

    params = (["gather", "ring"],)
    param_names = ["algorithm"]
    timeout = 600
    name = ""
    label_bytes = 0

    def setup(self, algorithm):
        from nce_ref.testing.sharded import GlooPool

        self.single, self.shards, self.kw = self._data(np.random.default_rng(0), _small_n())
        self.pool = GlooPool(2, timeout=300)
        self.args = [(self.name, a, dict(self.kw, algorithm=algorithm)) for a in self.shards]

    def teardown(self, algorithm):
        self.pool.close()

    def track_ratio_to_single_process(self, algorithm):
        ratios = []
        for _ in range(3):
            t_single = _single_numpy(self.name, self.single, self.kw)
            out = self.pool.run(_rank_counted, self.args)
            ratios.append(max(o[0] for o in out) / t_single)
        return float(np.median(ratios))

    def track_bytes_sent_over_derived(self, algorithm):
        out = self.pool.run(_rank_counted, self.args)
        rows = self.shards[0][0].shape[0] * (self.shards[0][0].shape[1] if self.shards[0][0].ndim == 3 else 1)
        if self.name == "nt_xent":
            rows *= 2  # both views
        derived = _derived_bytes(self.name, algorithm, rows, self.kw, self.label_bytes)
        return float(out[0][1] / derived)

    track_ratio_to_single_process.unit = "ratio"
    track_bytes_sent_over_derived.unit = "ratio"


def _halves(arrays):
    h = arrays[0].shape[0] // 2
    return [[a[:h] for a in arrays], [a[h:] for a in arrays]]


class ShardedNTXent(_ShardedSuite):
    name = "nt_xent"

    def _data(self, rng, n):
        z = [rng.standard_normal((n, D)).astype(np.float32) for _ in range(2)]
        return z, _halves(z), {"temperature": 0.1}


class ShardedSupCon(_ShardedSuite):
    name = "supcon"
    label_bytes = 8  # int64 labels travel with the ring's views; gather gathers them

    def _data(self, rng, n):
        f = rng.standard_normal((n // 2, 2, D)).astype(np.float32)  # N = n views
        y = rng.integers(0, 64, n // 2)
        return [f, y], _halves([f, y]), {"temperature": 0.1}


class ShardedBound(_ShardedSuite):
    name = "bound_from_embeddings"

    def _data(self, rng, n):
        x, y = (0.1 * rng.standard_normal((n, D)).astype(np.float32) for _ in range(2))
        return [x, y], _halves([x, y]), {"bound": "dv"}
