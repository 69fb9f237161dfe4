"""asv: the cross-batch memory's state object (``nce_ref.MemoryQueue``).

``enqueue`` of a batch of N rows (D = 256) with their labels into a queue of 4N slots that
has wrapped (every slot filled): a new queue built by ``take``/``where``, nothing written
in place.  Its cost is O(M·D) per step, to set beside the loss's O(N·M·D)
(``bench_supcon_triplet.SupConReference``: one XBM step's loss).
"""

from __future__ import annotations

import numpy as np

from .common import BACKENDS, DIM, DTYPES, XPBenchmark, sizes, skip_if

try:  # the suite must import against commits that predate the memory
    from nce_ref import MemoryQueue
except ImportError:  # pragma: no cover
    MemoryQueue = None


class Enqueue(XPBenchmark):
    """``queue.enqueue(batch (N, D), labels)`` on a full queue of 4N slots."""

    param_names = ("backend", "n", "dtype")
    params = (BACKENDS, sizes(), DTYPES)

    def make(self, rng, n, dtype):
        return (rng.standard_normal((n, DIM)),)

    def setup(self, backend, n, dtype):
        skip_if(MemoryQueue is None, "this nce_ref has no MemoryQueue")
        self.setup_data(backend, n, dtype)
        (batch,) = self.arrays
        labels = self.backend.asarray(np.random.default_rng(1).integers(0, 10, n))
        queue = MemoryQueue.empty(4 * n, DIM, xp=self.backend.xp, dtype=batch.dtype,
                                  label_dtype=labels.dtype)
        for _ in range(5):  # filled, and wrapped once
            queue = queue.enqueue(batch, labels)
        self.queue, self.batch, self.labels = queue, batch, labels

    def time_enqueue(self, *p):
        q = self.queue.enqueue(self.batch, self.labels)
        self.sync(q.slots)
