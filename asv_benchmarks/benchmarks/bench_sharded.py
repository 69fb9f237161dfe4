"""Sharded InfoNCE over 2 gloo processes (one thread each) against one process on two
threads: the issue's target is value_and_grad within 1.25x the single-process streamed
call at global N = 16384, D = 256, float32; and the ring's peak memory per rank below the
gather's by the keys' share.

``track_ratio_*`` pair each sharded call with the single-process one right before it
(median of three), as ``common.paired_ratio`` does for the other suites; ``track_peak_rss_*``
report each rank's peak resident memory (MiB, a fresh pool per algorithm).  Run with
``asv run --python=same -b Sharded``; the "fast" profile uses N = 2048.
"""

from __future__ import annotations

import resource
import time

import numpy as np

from .common import profile

D = 256


def _n() -> int:
    return 2048 if profile() == "fast" else 16384


def _rank_call(comm, q, k, algorithm):
    """This rank's value_and_grad (torch tensors, one thread); returns the seconds."""
    import torch

    import nce_ref

    torch.set_num_threads(1)
    vg = nce_ref.value_and_grad(nce_ref.sharded.info_nce)
    qt, kt = torch.from_numpy(q), torch.from_numpy(k)
    vg(qt, kt, comm=comm, algorithm=algorithm, temperature=0.07)  # warm
    t0 = time.perf_counter()
    vg(qt, kt, comm=comm, algorithm=algorithm, temperature=0.07)
    return time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    params = (["gather", "ring"], ["numpy", "torch"])
    param_names = ["algorithm", "single_process"]
    timeout = 900

    def setup(self, algorithm, single):
        from nce_ref.testing.sharded import GlooPool

        rng = np.random.default_rng(0)
        n = _n()
        self.q = rng.standard_normal((n, D)).astype(np.float32)
        self.k = rng.standard_normal((n, D)).astype(np.float32)
        self.pool = GlooPool(2, timeout=600)
        h = n // 2
        self.args = [(self.q[:h], self.k[:h], algorithm), (self.q[h:], self.k[h:], algorithm)]

    def teardown(self, algorithm, single):
        self.pool.close()

    def track_ratio_to_single_process(self, algorithm, single):
        ratios = []
        for _ in range(3):
            t_single = _single(self.q, self.k, single)
            out = self.pool.run(_rank_call, self.args)
            ratios.append(max(o[0] for o in out) / t_single)
        return float(np.median(ratios))

    def track_peak_rss_per_rank_mib(self, algorithm, single):
        return float(max(o[1] for o in self.pool.run(_rank_call, self.args)))

    track_ratio_to_single_process.unit = "ratio"
    track_peak_rss_per_rank_mib.unit = "MiB"
