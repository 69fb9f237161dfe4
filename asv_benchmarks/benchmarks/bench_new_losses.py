"""asv: siglip, dcl, multi_similarity and pairwise_contrastive, forward and value_and_grad.

``SigLIP`` streams an N x N score matrix of the shapes of ``bench_infonce``: its
``track_ratio_to_floor`` is ``value_and_grad`` over the three-GEMM floor of the same
matrix (``common.three_gemms``, in the engine's row blocks), and
``track_ratio_to_preallocated_floor`` over the issue's floor, ``S = x yᵀ``, ``dX = S y``,
``dYᵀ = xᵀ S`` into preallocated, touched N x N and N x D buffers (NumPy and torch), each
paired in one process (the issue's target: within 1.3x of the latter at N = 4096,
D = 256, float32 on the CPU); ``track_ratio_to_torch`` is over torch autograd of
OpenCLIP's formula.  ``DCL`` streams the (2N, 2N) matrix of two views (its ratios to the
floor at 2N rows and to torch autograd of lightly's formula; ``method="dense"`` for the
reference's cost).  The pair losses (``MultiSimilarity``, ``PairwiseContrastive``) on
(N, D) embeddings with N/8 classes: streamed over blocks of anchor rows
(``method="auto"``) or the dense reference on the N x N matrix (``method="dense"``, timed
up to N = 4096); their ``track_ratio_to_floor`` is over the three-GEMM floor of the
N x N matrix.
"""

from __future__ import annotations

import importlib
import math

from .bench_infonce import _AgainstTorch, _TorchAutograd
from .common import (
    BACKENDS,
    DTYPES,
    _AgainstFloor,
    _FunctionBenchmark,
    dims,
    paired_ratio,
    sizes,
    skip_if,
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


def preallocated_floor(backend: str, a, b):
    """The issue's floor of ``z = a bᵀ``: ``S = a bᵀ``, ``dA = S b``, ``dBᵀ = aᵀ S`` into
    buffers allocated and touched once (no page faults, no allocation), as a function;
    None where the library has no ``out=`` matmul."""
    if backend == "numpy":
        import numpy as lib
    elif backend == "torch":
        import torch as lib
    else:
        return None
    n, m, d = a.shape[0], b.shape[0], a.shape[1]
    s = lib.ones((n, m), dtype=a.dtype) if backend == "numpy" else lib.ones(
        (n, m), dtype=a.dtype, device=a.device)
    da, dbt = s[:, :d] * 0 + 1, s[:d, :] * 0 + 1  # touched, their own memory
    bt, at = b.T, a.T

    def floor():
        lib.matmul(a, bt, out=s)
        lib.matmul(s, b, out=da)
        lib.matmul(at, s, out=dbt)
        return da, dbt

    return floor


class SigLIP(_AgainstTorch, _AgainstFloor, _FunctionBenchmark):
    """``nce_ref.siglip(x, y)`` (cosine, scale 10, bias -10: SigLIP's initialisation),
    streamed; ``method="dense"`` for the reference's cost."""

    param_names = ("backend", "n", "d", "dtype", "method")
    params = (BACKENDS, sizes(gpu_large=True), dims(), DTYPES, ["auto", "dense"])
    reference = staticmethod(lambda: TorchAutogradSigLIP())

    def make(self, rng, n, dtype):
        return rng.standard_normal((n, self.d)), rng.standard_normal((n, self.d))

    def setup(self, backend, n, d, dtype, method):
        skip_if(_siglip is None, "this nce_ref has no siglip")
        skip_if(method == "dense" and n > DENSE_MAX_N, "the dense reference holds N x N arrays")
        self.prepare(backend, n, dtype, _siglip.siglip, d=d, method=method)
        self.backend_name = backend

    def track_ratio_to_preallocated_floor(self, *p):
        floor = preallocated_floor(self.backend_name, *self.arrays)
        if floor is None:
            return math.nan
        return paired_ratio(self._value_and_grad, lambda: self.sync(*floor()), lambda: None)

    track_ratio_to_preallocated_floor.unit = "ratio"

    def track_ratio_to_torch(self, backend, n, d, dtype, method):
        return _AgainstTorch.track_ratio_to_torch(self, backend, n, d, dtype)

    track_ratio_to_torch.unit = "ratio"


class TorchAutogradSigLIP(_TorchAutograd):
    """OpenCLIP's ``SigLipLoss`` formula: ``-logsigmoid(labels·(10 q̂ k̂ᵀ − 10)).sum() / N``."""

    def loss(self):
        torch, F = self.torch, self.torch.nn.functional
        logits = 10.0 * F.normalize(self.q, dim=1) @ F.normalize(self.k, dim=1).T - 10.0
        labels = 2.0 * torch.eye(self.n, dtype=logits.dtype, device=logits.device) - 1.0
        return -F.logsigmoid(labels * logits).sum() / self.n


class DCL(_AgainstTorch, _AgainstFloor, _FunctionBenchmark):
    """``nce_ref.dcl(z1, z2, temperature=0.1, weight=...)``: streamed (``method="auto"``)
    or the dense reference on the (2N, 2N) score matrix; the floor is that of the
    2N x 2N matrix."""

    param_names = ("backend", "n", "dtype", "weight", "method")
    params = (BACKENDS, sizes(), DTYPES, ["none", "von_mises"], ["auto", "dense"])
    reference = staticmethod(lambda: TorchAutogradDCL())

    def make(self, rng, n, dtype):
        return rng.standard_normal((n, 256)), rng.standard_normal((n, 256))

    def setup(self, backend, n, dtype, weight, method):
        skip_if(_dcl is None, "this nce_ref has no dcl")
        skip_if(method == "dense" and n > DENSE_MAX_N, "dense reference")
        kw = {} if method == "auto" else {"method": method}  # older dcl: no method option
        self.prepare(backend, n, dtype, _dcl.dcl, weight=weight, **kw)

    def floor_operands(self):
        u = self.backend.xp.concat(list(self.arrays), axis=0)  # the 2N views
        return u, u

    def track_ratio_to_torch(self, backend, n, dtype, weight, method):
        return _AgainstTorch.track_ratio_to_torch(self, backend, n, 256, dtype)

    track_ratio_to_torch.unit = "ratio"


class TorchAutogradDCL(_TorchAutograd):
    """lightly's ``DCLLoss(temperature=0.1)`` formula: 2N x 2N cosine logits, the self and
    partner columns masked out of the log-sum-exp, minus the positive logit."""

    param_names = ("device", "n", "d", "dtype")
    params = (["cpu", "cuda"], sizes(), [256], DTYPES)
    width = 2

    def loss(self):
        torch, F = self.torch, self.torch.nn.functional
        z = F.normalize(torch.cat([self.q, self.k]), dim=1)
        logits = z @ z.T / 0.1
        m = logits.shape[0]
        eye = torch.eye(m, dtype=torch.bool, device=z.device)
        masked = logits.masked_fill(eye | eye.roll(self.n, dims=1), float("-inf"))
        pos = torch.cat([logits.diagonal(self.n), logits.diagonal(-self.n)])
        return (torch.logsumexp(masked, dim=1) - pos).mean()


def _labels(n):
    import numpy as np

    return np.random.default_rng(1).integers(0, max(1, n // 8), n)


class MultiSimilarity(_AgainstFloor, _FunctionBenchmark):
    """``nce_ref.multi_similarity(embeddings, labels)`` (PML's defaults), with and without
    the miner's selection; streamed (``method="auto"``) or dense."""

    param_names = ("backend", "n", "dtype", "mining_margin", "method")
    params = (BACKENDS, sizes(), DTYPES, [None, 0.1], ["auto", "dense"])

    def make(self, rng, n, dtype):
        return (rng.standard_normal((n, 256)),)

    def setup(self, backend, n, dtype, mining_margin, method):
        skip_if(_pairs is None, "this nce_ref has no multi_similarity")
        skip_if(method == "dense" and n > DENSE_MAX_N, "dense reference")
        kw = {} if method == "auto" else {"method": method}  # older versions: no method option
        self.prepare(backend, n, dtype, _pairs.multi_similarity, _labels(n),
                     mining_margin=mining_margin, **kw)


class PairwiseContrastive(_AgainstFloor, _FunctionBenchmark):
    """``nce_ref.pairwise_contrastive(embeddings, labels)``: the default, and PML's
    convention (normalised euclidean, ``mean_nonzero`` per side); streamed
    (``method="auto"``) or dense."""

    param_names = ("backend", "n", "dtype", "convention", "method")
    params = (BACKENDS, sizes(), DTYPES, ["default", "pml"], ["auto", "dense"])

    def make(self, rng, n, dtype):
        return (rng.standard_normal((n, 256)),)

    def setup(self, backend, n, dtype, convention, method):
        skip_if(_pairs is None, "this nce_ref has no pairwise_contrastive")
        skip_if(method == "dense" and n > DENSE_MAX_N, "dense reference")
        kw = {} if convention == "default" else dict(normalize=True, reduction="mean_nonzero",
                                                     split_pos_neg=True)
        if method != "auto":  # older versions: no method option
            kw["method"] = method
        self.prepare(backend, n, dtype, _pairs.pairwise_contrastive, _labels(n), **kw)
