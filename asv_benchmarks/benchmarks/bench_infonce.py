"""asv: info_nce (one-way and CLIP's symmetric), nt_xent, info_nce_from_scores and
similarity, forward and value_and_grad, against the three-GEMM floor and torch autograd.

Read the ratios from one run, at equal ``(backend, n, d, dtype)``.  The
``track_ratio_to_floor`` and ``track_ratio_to_torch`` benchmarks measure them directly,
each timed on its second call in a row and paired with the reference timed right before
it in one process (``common.paired_ratio``):
the machines here drift by 20-30% between two benchmarks of a run.  Or divide the times:

- ``InfoNCE.time_value_and_grad / GemmFloor.time_three_gemms`` and
  ``InfoNCE.time_value_and_grad / TorchAutogradInfoNCE.time_forward_backward``;
- ``InfoNCESymmetric`` against the same floor and ``TorchAutogradCLIP``;
- ``NTXent`` (2N x 2N scores) against ``GemmFloor`` at ``2N`` and ``TorchAutogradNTXent``.

``track_gpu_peak_bytes`` records the GPU memory high-water mark above the inputs
(``peakmem_`` measures host memory only).
"""

from __future__ import annotations

import math

import nce_ref

from .common import (
    BACKENDS,
    DTYPES,
    XPBenchmark,
    _AgainstFloor,
    _FunctionBenchmark,
    dims,
    get_backend,
    paired_ratio,
    sizes,
    skip_if,
    three_gemms,
)


def _embeddings(rng, n, d):
    return rng.standard_normal((n, d)), rng.standard_normal((n, d))


class _Embeddings(_FunctionBenchmark):
    """Two (N, D) standard normal embeddings; params ``(backend, n, d, dtype)``."""

    param_names = ("backend", "n", "d", "dtype")
    params = (BACKENDS, sizes(gpu_large=True), dims(), DTYPES)

    def make(self, rng, n, dtype):
        return _embeddings(rng, n, self.d)


class _AgainstTorch:
    """``track_ratio_to_torch``: ``value_and_grad`` over torch autograd of the same loss
    (``reference``, a :class:`_TorchAutograd`) on the same device, paired in one process."""

    reference = None

    def track_ratio_to_torch(self, backend, n, d, dtype):
        ref = self.reference()
        try:
            ref.setup("cuda" if self.backend.gpu else "cpu", n, d, dtype)
        except NotImplementedError:  # torch absent, or no CUDA: n/a
            return math.nan
        return paired_ratio(self._value_and_grad, lambda: ref.time_forward_backward(), lambda: None)

    track_ratio_to_torch.unit = "ratio"


class InfoNCE(_AgainstTorch, _AgainstFloor, _Embeddings):
    """``nce_ref.info_nce(q, k, temperature=0.07)`` (cosine, in-batch negatives)."""

    reference = staticmethod(lambda: TorchAutogradInfoNCE())

    def setup(self, backend, n, d, dtype):
        self.prepare(backend, n, dtype, nce_ref.info_nce, d=d, temperature=0.07)


class InfoNCESymmetric(_AgainstTorch, _AgainstFloor, _Embeddings):
    """CLIP's symmetric loss, ``info_nce(..., symmetric=True)``."""

    reference = staticmethod(lambda: TorchAutogradCLIP())

    def setup(self, backend, n, d, dtype):
        self.prepare(backend, n, dtype, nce_ref.info_nce, d=d, temperature=0.07, symmetric=True)


class InfoNCEDot(_AgainstFloor, _Embeddings):
    """``info_nce(..., similarity="dot")``: logits without a known bound (row shifts)."""

    params = (BACKENDS, sizes(), dims(), DTYPES)

    def setup(self, backend, n, d, dtype):
        self.prepare(backend, n, dtype, nce_ref.info_nce, d=d, temperature=0.07, similarity="dot")


class NTXent(_AgainstTorch, _AgainstFloor, _Embeddings):
    """``nce_ref.nt_xent(z1, z2, temperature=0.5)`` (2N x 2N scores)."""

    params = (BACKENDS, sizes(), dims(), DTYPES)
    reference = staticmethod(lambda: TorchAutogradNTXent())

    def floor_operands(self):
        u = self.backend.xp.concat(list(self.arrays), axis=0)  # the 2N views
        return u, u

    def setup(self, backend, n, d, dtype):
        self.prepare(backend, n, dtype, nce_ref.nt_xent, d=d, temperature=0.5)


class Similarity(_Embeddings):
    """``nce_ref.similarity`` (cosine), forward and VJP with a dense N x N cotangent."""

    params = (BACKENDS, sizes(), dims(), DTYPES)

    def setup(self, backend, n, d, dtype):
        import numpy as np

        self.prepare(backend, n, dtype, nce_ref.similarity, d=d, warm=False)
        ct = np.random.default_rng(1).standard_normal((n, n))
        self.vg_kw = {"cotangent": self.backend.asarray(ct, dtype)}
        self._value_and_grad()

    def track_max_rel_err_vs_f64(self, backend, n, d, dtype):
        return math.nan  # a matrix, not a loss: not tracked


class InfoNCEFromScores(_FunctionBenchmark):
    """``nce_ref.info_nce_from_scores`` on an N x N logit matrix."""

    param_names = ("backend", "n", "dtype")
    params = (BACKENDS, sizes(), DTYPES)

    def make(self, rng, n, dtype):
        return (rng.standard_normal((n, n)),)

    def setup(self, backend, n, dtype):
        self.prepare(backend, n, dtype, nce_ref.info_nce_from_scores)


class GemmFloor(XPBenchmark):
    """The floor of forward + backward: S = A Bᵀ, dA = G B, dB = Gᵀ A (N x N x D each),
    in the row blocks the streamed kernels take (``common.three_gemms``)."""

    param_names = ("backend", "n", "d", "dtype")
    params = (BACKENDS, sorted(set(sizes(gpu_large=True)) | {2 * n for n in sizes() if n <= 16384}),
              dims(), DTYPES)

    def make(self, rng, n, dtype):
        return _embeddings(rng, n, self.d)

    def setup(self, backend, n, d, dtype):
        self.setup_data(backend, n, dtype, d)
        self.time_three_gemms(backend, n, d, dtype)

    def time_three_gemms(self, backend, n, d, dtype):
        self.sync(*three_gemms(self.backend.xp, *self.arrays))


class _TorchAutograd:
    """A plain torch formulation, differentiated by torch autograd (dense N x N logits)."""

    param_names = ("device", "n", "d", "dtype")
    params = (["cpu", "cuda"], sizes(gpu_large=True), dims(), DTYPES)
    timeout = 600

    def setup(self, device, n, d, dtype):
        import numpy as np

        torch = get_backend("torch").lib
        skip_if(device == "cuda" and not torch.cuda.is_available(), "no CUDA device")
        skip_if(device == "cuda" and dtype == "float64", "float64 is CPU-only here")
        skip_if(device == "cpu" and n > 32768, "N > 32768 runs on GPU only")
        # the dense logits and their gradient alone: 2 (k N)² itemsize bytes
        need = 2 * (self.width * n) ** 2 * (4 if dtype == "float32" else 8)
        skip_if(need > 140 * 2**30, f"the dense logits need {need / 2**30:.0f} GiB")
        self.torch, self.device, self.n = torch, device, n
        rng = np.random.default_rng(0)
        q, k = _embeddings(rng, n, d)
        dt = getattr(torch, dtype)
        self.q = torch.tensor(q, dtype=dt, device=device, requires_grad=True)
        self.k = torch.tensor(k, dtype=dt, device=device, requires_grad=True)
        self.labels = torch.arange(n, device=device)
        self.time_forward_backward(device, n, d, dtype)

    width = 1

    def time_forward_backward(self, *p):
        self.loss().backward()
        self.q.grad = None
        self.k.grad = None
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def peakmem_forward_backward(self, *p):
        self.time_forward_backward()

    def track_gpu_peak_bytes(self, *p):
        if self.device != "cuda":
            return math.nan  # asv shows n/a
        torch = self.torch
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        self.time_forward_backward()
        return torch.cuda.max_memory_allocated() - base

    track_gpu_peak_bytes.unit = "bytes"


class TorchAutogradInfoNCE(_TorchAutograd):
    """``cross_entropy(normalize(q) @ normalize(k).T / 0.07, arange(N))``."""

    def loss(self):
        F = self.torch.nn.functional
        logits = F.normalize(self.q, dim=1) @ F.normalize(self.k, dim=1).T / 0.07
        return F.cross_entropy(logits, self.labels)


class TorchAutogradCLIP(_TorchAutograd):
    """CLIP: the mean of the row and column cross-entropies of the same logits."""

    def loss(self):
        F = self.torch.nn.functional
        logits = F.normalize(self.q, dim=1) @ F.normalize(self.k, dim=1).T / 0.07
        return 0.5 * (F.cross_entropy(logits, self.labels) + F.cross_entropy(logits.T, self.labels))


class TorchAutogradNTXent(_TorchAutograd):
    """SimCLR's NT-Xent: 2N x 2N cosine logits, self-similarity masked, temperature 0.5."""

    params = (["cpu", "cuda"], sizes(), dims(), DTYPES)
    width = 2

    def loss(self):
        torch, F = self.torch, self.torch.nn.functional
        z = F.normalize(torch.cat([self.q, self.k]), dim=1)
        logits = z @ z.T / 0.5
        m = logits.shape[0]
        logits = logits.masked_fill(torch.eye(m, dtype=torch.bool, device=z.device), float("-inf"))
        target = torch.cat([torch.arange(self.n, m), torch.arange(0, self.n)]).to(z.device)
        return F.cross_entropy(logits, target)
