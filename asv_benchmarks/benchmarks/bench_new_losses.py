"""asv: siglip, dcl, multi_similarity and pairwise_contrastive, forward and value_and_grad.

``SigLIP`` streams an N x N score matrix of the shapes of ``bench_infonce``: its
``track_ratio_to_floor`` is ``value_and_grad`` over the three-GEMM floor of the same
matrix, paired in one process (the issue's target: within 1.3x at N = 4096, D = 256,
float32 on the CPU).  The others are dense references: ``DCL`` on the (2N, 2N) matrix of
two views (its ratio to the floor at 2N rows), the pair losses on (N, D) embeddings with
N/8 classes, timed up to N = 4096.
"""

from __future__ import annotations

import importlib

from .common import (
    BACKENDS,
    DTYPES,
    _AgainstFloor,
    _FunctionBenchmark,
    dims,
    sizes,
    skip_if,
    three_gemms,
)

try:  # the suite must import against commits that predate these losses
    # by module name: `import nce_ref.losses.siglip as m` binds the function of that name
    _siglip = importlib.import_module("nce_ref.losses.siglip")
    _dcl = importlib.import_module("nce_ref.losses.dcl")
    _pairs = importlib.import_module("nce_ref.losses.pairs")
except ImportError:  # pragma: no cover
    _siglip = _dcl = _pairs = None

#: the dense references hold a few N x N (2N x 2N) arrays: timed up to this N
DENSE_MAX_N = 4096


class SigLIP(_AgainstFloor, _FunctionBenchmark):
    """``nce_ref.siglip(x, y)`` (cosine, scale 10, bias -10: SigLIP's initialisation),
    streamed; ``method="dense"`` for the reference's cost."""

    param_names = ("backend", "n", "d", "dtype", "method")
    params = (BACKENDS, sizes(gpu_large=True), dims(), DTYPES, ["auto", "dense"])

    def make(self, rng, n, dtype):
        return rng.standard_normal((n, self.d)), rng.standard_normal((n, self.d))

    def setup(self, backend, n, d, dtype, method):
        skip_if(_siglip is None, "this nce_ref has no siglip")
        skip_if(method == "dense" and n > DENSE_MAX_N, "the dense reference holds N x N arrays")
        self.prepare(backend, n, dtype, _siglip.siglip, d=d, method=method)


class DCL(_AgainstFloor, _FunctionBenchmark):
    """``nce_ref.dcl(z1, z2, temperature=0.1, weight=...)``: the dense reference on the
    (2N, 2N) score matrix; the floor is that of the 2N x 2N matrix."""

    param_names = ("backend", "n", "dtype", "weight")
    params = (BACKENDS, sizes(), DTYPES, ["none", "von_mises"])

    def make(self, rng, n, dtype):
        return rng.standard_normal((n, 256)), rng.standard_normal((n, 256))

    def setup(self, backend, n, dtype, weight):
        skip_if(_dcl is None, "this nce_ref has no dcl")
        skip_if(n > DENSE_MAX_N, "dense reference")
        self.prepare(backend, n, dtype, _dcl.dcl, weight=weight)

    def track_ratio_to_floor(self, *p):
        from .common import paired_ratio

        xp = self.backend.xp
        u = xp.concat(list(self.arrays), axis=0)
        return paired_ratio(self._value_and_grad, lambda: self.sync(*three_gemms(xp, u, u)),
                            lambda: None)

    track_ratio_to_floor.unit = "ratio"


def _labels(n):
    import numpy as np

    return np.random.default_rng(1).integers(0, max(1, n // 8), n)


class MultiSimilarity(_AgainstFloor, _FunctionBenchmark):
    """``nce_ref.multi_similarity(embeddings, labels)`` (PML's defaults), with and without
    the miner's selection."""

    param_names = ("backend", "n", "dtype", "mining_margin")
    params = (BACKENDS, sizes(), DTYPES, [None, 0.1])

    def make(self, rng, n, dtype):
        return (rng.standard_normal((n, 256)),)

    def setup(self, backend, n, dtype, mining_margin):
        skip_if(_pairs is None, "this nce_ref has no multi_similarity")
        skip_if(n > DENSE_MAX_N, "dense reference")
        self.prepare(backend, n, dtype, _pairs.multi_similarity, _labels(n),
                     mining_margin=mining_margin)


class PairwiseContrastive(_AgainstFloor, _FunctionBenchmark):
    """``nce_ref.pairwise_contrastive(embeddings, labels)``: the default, and PML's
    convention (normalised euclidean, ``mean_nonzero`` per side)."""

    param_names = ("backend", "n", "dtype", "convention")
    params = (BACKENDS, sizes(), DTYPES, ["default", "pml"])

    def make(self, rng, n, dtype):
        return (rng.standard_normal((n, 256)),)

    def setup(self, backend, n, dtype, convention):
        skip_if(_pairs is None, "this nce_ref has no pairwise_contrastive")
        skip_if(n > DENSE_MAX_N, "dense reference")
        kw = {} if convention == "default" else dict(normalize=True, reduction="mean_nonzero",
                                                     split_pos_neg=True)
        self.prepare(backend, n, dtype, _pairs.pairwise_contrastive, _labels(n), **kw)
