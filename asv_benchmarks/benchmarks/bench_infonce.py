"""asv: info_nce and nt_xent, forward and value_and_grad, against the 3-GEMM floor and torch.

Read the ratios from one run: ``InfoNCE.time_value_and_grad / GemmFloor.time_three_gemms``
and ``InfoNCE.time_value_and_grad / TorchAutogradInfoNCE.time_forward_backward``.
"""

from __future__ import annotations

import nce_ref

from .common import BACKENDS, DIM, DTYPES, XPBenchmark, get_backend, sizes, skip_if


def _embeddings(rng, n):
    return rng.standard_normal((n, DIM)), rng.standard_normal((n, DIM))


class InfoNCE(XPBenchmark):
    """``nce_ref.info_nce(q, k, temperature=0.07)`` (cosine, in-batch negatives)."""

    param_names = ("backend", "n", "dtype")
    params = (BACKENDS, sizes(gpu_large=True), DTYPES)

    def make(self, rng, n, dtype):
        return _embeddings(rng, n)

    def setup(self, backend, n, dtype):
        self.setup_data(backend, n, dtype)
        self.vg = nce_ref.value_and_grad(nce_ref.info_nce)
        self.time_value_and_grad(backend, n, dtype)  # warm-up (pools, handles)

    def time_forward(self, backend, n, dtype):
        self.sync(nce_ref.info_nce(*self.arrays, temperature=0.07))

    def time_value_and_grad(self, backend, n, dtype):
        v, g = self.vg(*self.arrays, temperature=0.07)
        self.sync(v, g["query"], g["key"])

    def peakmem_value_and_grad(self, backend, n, dtype):
        self.vg(*self.arrays, temperature=0.07)

    def track_gpu_peak_bytes(self, backend, n, dtype):
        """GPU memory high-water mark of value_and_grad (``peakmem_`` sees host RSS only)."""
        skip_if(not self.backend.gpu, "GPU backends only")
        if backend == "cupy":
            import cupy

            pool = cupy.get_default_memory_pool()
            pool.free_all_blocks()
            self.time_value_and_grad(backend, n, dtype)
            return pool.total_bytes()
        torch = self.backend.lib
        torch.cuda.reset_peak_memory_stats()
        self.time_value_and_grad(backend, n, dtype)
        return torch.cuda.max_memory_allocated()

    track_gpu_peak_bytes.unit = "bytes"

    def track_max_rel_err_vs_f64(self, backend, n, dtype):
        """Relative error of the loss against the NumPy float64 computation."""
        import numpy as np

        rng = np.random.default_rng(0)
        q, k = _embeddings(rng, n)
        ref = float(nce_ref.info_nce(q, k, temperature=0.07))
        got = float(self.backend.to_numpy(nce_ref.info_nce(*self.arrays, temperature=0.07)))
        return abs(got - ref) / abs(ref)

    track_max_rel_err_vs_f64.unit = "relative error"


class InfoNCEFromScores(XPBenchmark):
    """``nce_ref.info_nce_from_scores`` on an N x N logit matrix."""

    param_names = ("backend", "n", "dtype")
    params = (BACKENDS, sizes(), DTYPES)

    def make(self, rng, n, dtype):
        return (rng.standard_normal((n, n)),)

    def setup(self, backend, n, dtype):
        self.setup_data(backend, n, dtype)
        self.vg = nce_ref.value_and_grad(nce_ref.info_nce_from_scores)
        self.time_value_and_grad(backend, n, dtype)

    def time_forward(self, backend, n, dtype):
        self.sync(nce_ref.info_nce_from_scores(*self.arrays))

    def time_value_and_grad(self, backend, n, dtype):
        v, g = self.vg(*self.arrays)
        self.sync(v, g["scores"])

    def peakmem_value_and_grad(self, backend, n, dtype):
        self.vg(*self.arrays)


class Similarity(XPBenchmark):
    """``nce_ref.similarity`` (cosine), forward and VJP."""

    param_names = ("backend", "n", "dtype")
    params = (BACKENDS, sizes(), DTYPES)

    def make(self, rng, n, dtype):
        return _embeddings(rng, n)

    def setup(self, backend, n, dtype):
        self.setup_data(backend, n, dtype)
        self.ct = self.backend.asarray(rng_ct(n), dtype)
        self.vg = nce_ref.value_and_grad(nce_ref.similarity)
        self.time_value_and_grad(backend, n, dtype)

    def time_forward(self, backend, n, dtype):
        self.sync(nce_ref.similarity(*self.arrays))

    def time_value_and_grad(self, backend, n, dtype):
        v, g = self.vg(*self.arrays, cotangent=self.ct)
        self.sync(v, g["a"], g["b"])

    def peakmem_value_and_grad(self, backend, n, dtype):
        self.vg(*self.arrays, cotangent=self.ct)


def rng_ct(n):
    import numpy as np

    return np.random.default_rng(1).standard_normal((n, n))


class InfoNCESymmetric(InfoNCE):
    """CLIP's symmetric loss."""

    def time_forward(self, backend, n, dtype):
        self.sync(nce_ref.info_nce(*self.arrays, temperature=0.07, symmetric=True))

    def time_value_and_grad(self, backend, n, dtype):
        v, g = self.vg(*self.arrays, temperature=0.07, symmetric=True)
        self.sync(v, g["query"], g["key"])

    def peakmem_value_and_grad(self, backend, n, dtype):
        self.vg(*self.arrays, temperature=0.07, symmetric=True)


class NTXent(XPBenchmark):
    """``nce_ref.nt_xent(z1, z2, temperature=0.5)`` (2N x 2N scores)."""

    param_names = ("backend", "n", "dtype")
    params = (BACKENDS, sizes(), DTYPES)

    def make(self, rng, n, dtype):
        return _embeddings(rng, n)

    def setup(self, backend, n, dtype):
        self.setup_data(backend, n, dtype)
        self.vg = nce_ref.value_and_grad(nce_ref.nt_xent)
        self.time_value_and_grad(backend, n, dtype)

    def time_forward(self, backend, n, dtype):
        self.sync(nce_ref.nt_xent(*self.arrays))

    def time_value_and_grad(self, backend, n, dtype):
        v, g = self.vg(*self.arrays)
        self.sync(v, g["z1"], g["z2"])

    def peakmem_value_and_grad(self, backend, n, dtype):
        self.vg(*self.arrays)


class GemmFloor(XPBenchmark):
    """The floor of forward + backward: S = A Bᵀ, dA = G B, dB = Gᵀ A (N x N x D each)."""

    param_names = ("backend", "n", "dtype")
    params = (BACKENDS, sizes(gpu_large=True), DTYPES)

    def make(self, rng, n, dtype):
        return _embeddings(rng, n)

    def setup(self, backend, n, dtype):
        self.setup_data(backend, n, dtype)
        self.time_three_gemms(backend, n, dtype)

    def time_three_gemms(self, backend, n, dtype):
        xp = self.backend.xp
        a, b = self.arrays
        s = a @ xp.matrix_transpose(b)
        self.sync(s @ b, xp.matrix_transpose(s) @ a)


class TorchAutogradInfoNCE:
    """A plain torch formulation of the same loss, differentiated by torch autograd."""

    param_names = ("device", "n", "dtype")
    params = (["cpu", "cuda"], sizes(gpu_large=True), DTYPES)
    timeout = 600

    def setup(self, device, n, dtype):
        import numpy as np

        torch = get_backend("torch").lib
        skip_if(device == "cuda" and not torch.cuda.is_available(), "no CUDA device")
        skip_if(device == "cuda" and dtype == "float64", "float64 is CPU-only here")
        self.torch = torch
        self.device = device
        rng = np.random.default_rng(0)
        q, k = _embeddings(rng, n)
        dt = getattr(torch, dtype)
        self.q = torch.tensor(q, dtype=dt, device=device, requires_grad=True)
        self.k = torch.tensor(k, dtype=dt, device=device, requires_grad=True)
        self.labels = torch.arange(n, device=device)
        self.time_forward_backward(device, n, dtype)

    def _sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def time_forward_backward(self, device, n, dtype):
        F = self.torch.nn.functional
        logits = F.normalize(self.q, dim=1) @ F.normalize(self.k, dim=1).T / 0.07
        loss = F.cross_entropy(logits, self.labels)
        loss.backward()
        self.q.grad = None
        self.k.grad = None
        self._sync()

    def peakmem_forward_backward(self, device, n, dtype):
        self.time_forward_backward(device, n, dtype)
