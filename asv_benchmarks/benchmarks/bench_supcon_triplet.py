"""asv: supcon, triplet and batch_triplet, forward and value_and_grad.

SupCon runs on (N, 2, D) features (2N anchors and columns) with N/8 classes; the
triplet losses on (N, D) embeddings.  batch_triplet's "all" and "semi_hard" minings
cost O(N³) and are timed at N = 256 only; "hard" is O(N²) and runs at every size.

``SupConStreamed`` is supcon on (N, D) features with 10 classes, an N x N score matrix
of the shapes of ``bench_infonce``: read its ratios from one run,
``SupConStreamed.time_value_and_grad / GemmFloor.time_three_gemms`` against
``InfoNCE.time_value_and_grad / GemmFloor.time_three_gemms``.
"""

from __future__ import annotations

import importlib

from .common import BACKENDS, DIM, DTYPES, _AgainstFloor, _FunctionBenchmark, sizes, skip_if

try:  # the suite must import against commits that predate these losses
    # by module name: `import nce_ref.losses.supcon as m` binds the function of that name,
    # which the package exports
    _supcon = importlib.import_module("nce_ref.losses.supcon")
    _triplet = importlib.import_module("nce_ref.losses.triplet")
except ImportError:  # pragma: no cover
    _supcon = _triplet = None

CUBIC_MAX_N = 256


def _labels(rng, n):
    return rng.integers(0, max(1, n // 8), n)


class SupCon(_FunctionBenchmark):
    """``supcon(features (N, 2, D), labels, temperature=0.07)`` for each ``positives``."""

    param_names = ("backend", "n", "dtype", "positives")
    params = (BACKENDS, sizes(), DTYPES, ["out", "per_pair"])

    def make(self, rng, n, dtype):
        return (rng.standard_normal((n, 2, DIM)),)

    def setup(self, backend, n, dtype, positives):
        skip_if(_supcon is None, "this nce_ref has no supcon")
        import numpy as np

        self.prepare(backend, n, dtype, _supcon.supcon, _labels(np.random.default_rng(1), n),
                     temperature=0.07, positives=positives)


class SupConStreamed(_AgainstFloor, _FunctionBenchmark):
    """``supcon(features (N, D), labels, temperature=0.07)`` streamed over row blocks.

    ``block``: ``"budget"`` (the default 128 MiB memory budget: one block up to N = 4096
    in float32) or ``"256"`` rows per block, whose ``peakmem_`` shows the O(N·block) bound.
    """

    param_names = ("backend", "n", "dtype", "positives", "block")
    params = (BACKENDS, sizes(gpu_large=True), DTYPES, ["out", "in", "per_pair"], ["budget", "256"])

    def make(self, rng, n, dtype):
        return (rng.standard_normal((n, DIM)),)

    def setup(self, backend, n, dtype, positives, block):
        skip_if(_supcon is None, "this nce_ref has no supcon")
        import inspect

        import numpy as np

        streams = "block_size" in inspect.signature(_supcon.supcon).parameters
        skip_if(block != "budget" and not streams, "this nce_ref's supcon does not stream")
        kw = {} if block == "budget" else {"block_size": int(block)}
        self.prepare(backend, n, dtype, _supcon.supcon, np.random.default_rng(1).integers(0, 10, n),
                     temperature=0.07, positives=positives, **kw)


class Triplet(_FunctionBenchmark):
    """``triplet(anchor, positive, negative)`` (euclidean, hinge) on (N, D) rows."""

    param_names = ("backend", "n", "dtype", "distance")
    params = (BACKENDS, sizes(), DTYPES, ["euclidean", "cosine"])

    def make(self, rng, n, dtype):
        return tuple(rng.standard_normal((n, DIM)) for _ in range(3))

    def setup(self, backend, n, dtype, distance):
        skip_if(_triplet is None, "this nce_ref has no triplet")
        self.prepare(backend, n, dtype, _triplet.triplet, distance=distance, swap=True)


class BatchTriplet(_FunctionBenchmark):
    """``batch_triplet(embeddings, labels, mining=...)`` (euclidean, N/8 classes)."""

    param_names = ("backend", "n", "dtype", "mining")
    params = (BACKENDS, sizes(), DTYPES, ["hard", "semi_hard", "all"])

    def make(self, rng, n, dtype):
        return (rng.standard_normal((n, DIM)),)

    def setup(self, backend, n, dtype, mining):
        skip_if(_triplet is None, "this nce_ref has no batch_triplet")
        skip_if(mining != "hard" and n > CUBIC_MAX_N,
                f"mining={mining!r} costs O(N^3): timed at N <= {CUBIC_MAX_N} only")
        import numpy as np

        self.prepare(backend, n, dtype, _triplet.batch_triplet, _labels(np.random.default_rng(1), n),
                     mining=mining, margin=0.5)


def _xbm_step(rng_batch, n, dtype, backend):
    """One cross-batch-memory step (XBM's order): the batch (N, D) as the benchmark's
    input, a memory of 2N rows whose last N slots are the batch's own copies, the labels
    of both (10 classes), and ``ref_self`` pointing at the copies."""
    import numpy as np

    batch = rng_batch.standard_normal((n, DIM))
    rng = np.random.default_rng(1)
    memory = np.concatenate([rng.standard_normal((n, DIM)), batch])
    labels = rng.integers(0, 10, n)
    memory_labels = np.concatenate([rng.integers(0, 10, n), labels])
    kw = {"ref": backend.asarray(memory, dtype), "ref_labels": backend.asarray(memory_labels),
          "ref_self": backend.asarray(np.arange(n, 2 * n))}
    return labels, kw


class SupConReference(_FunctionBenchmark):
    """``supcon(batch (N, D), labels, ref=memory (2N, D), ref_labels, ref_self)``: the
    batch against a cross-batch memory that holds its own copies (one XBM step), dense
    reference and streamed engine; gradients of the batch, the memory and τ."""

    param_names = ("backend", "n", "dtype", "method")
    params = (BACKENDS, sizes(), DTYPES, ["dense", "streamed"])

    def make(self, rng, n, dtype):
        return (rng.standard_normal((n, DIM)),)

    def setup(self, backend, n, dtype, method):
        import inspect

        import numpy as np

        skip_if(_supcon is None or "ref" not in inspect.signature(_supcon.supcon).parameters,
                "this nce_ref's supcon takes no reference set")
        self.setup_data(backend, n, dtype)
        labels, kw = _xbm_step(np.random.default_rng(0), n, dtype, self.backend)
        self.prepare(backend, n, dtype, _supcon.supcon, labels, temperature=0.07,
                     method=method, **kw)


class BatchTripletReference(_FunctionBenchmark):
    """``batch_triplet(batch (N, D), labels, mining="hard", ref=memory (2N, D), ref_labels,
    ref_self)``: batch-hard mining against a cross-batch memory (one XBM step)."""

    param_names = ("backend", "n", "dtype")
    params = (BACKENDS, sizes(), DTYPES)

    def make(self, rng, n, dtype):
        return (rng.standard_normal((n, DIM)),)

    def setup(self, backend, n, dtype):
        import inspect

        import numpy as np

        skip_if(_triplet is None or "ref" not in inspect.signature(_triplet.batch_triplet).parameters,
                "this nce_ref's batch_triplet takes no reference set")
        self.setup_data(backend, n, dtype)
        labels, kw = _xbm_step(np.random.default_rng(0), n, dtype, self.backend)
        self.prepare(backend, n, dtype, _triplet.batch_triplet, labels, mining="hard",
                     margin=0.5, **kw)
