"""GPU ratios of issue 6 in one process (for the device machine, where asv may be absent).

For each N: the three-GEMM floor (row blocks of 16384, the same GEMM count),
``value_and_grad(info_nce)`` on CuPy (cosine, τ = 0.07, float32, no TF32) and torch
autograd of the dense formulation while it fits; the best of three synchronized runs,
and CuPy's memory-pool high-water mark above the inputs.  The asv suite
(``NCE_REF_BENCH_PROFILE=large asv run -b "InfoNCE|GemmFloor|TorchAutograd"``) times the
same things where asv is installed.
"""

from __future__ import annotations

import time

import cupy
import numpy as np

import nce_ref

D = 256


def best(f, sync, k=3):
    out = []
    for _ in range(k):
        t = time.perf_counter()
        f()
        sync()
        out.append(time.perf_counter() - t)
    return min(out)


def floor_of(q, k, n):
    """The three GEMMs in row blocks of 16384 (the same GEMM count as one block)."""
    db = None
    for r0 in range(0, n, 16384):
        s = q[r0:r0 + 16384] @ k.T
        s @ k
        x = s.T @ q[r0:r0 + 16384]
        db = x if db is None else db + x


def torch_autograd(q, k, n):
    """``cross_entropy(normalize(q) @ normalize(k).T / 0.07)`` differentiated by torch."""
    import torch

    F = torch.nn.functional
    tq = torch.as_tensor(q, device="cuda").requires_grad_()
    tk = torch.as_tensor(k, device="cuda").requires_grad_()
    lab = torch.arange(n, device="cuda")

    def run():
        F.cross_entropy(F.normalize(tq, dim=1) @ F.normalize(tk, dim=1).T / 0.07, lab).backward()
        tq.grad = tk.grad = None

    torch.cuda.reset_peak_memory_stats()
    t = best(run, torch.cuda.synchronize)
    return t, torch.cuda.max_memory_allocated()


def measure(n):
    sync = cupy.cuda.Device().synchronize
    pool = cupy.get_default_memory_pool()
    vg = nce_ref.value_and_grad(nce_ref.info_nce)
    rng = cupy.random.default_rng(0)
    q = rng.standard_normal((n, D), dtype=cupy.float32)
    k = rng.standard_normal((n, D), dtype=cupy.float32)
    reps = 2 if n > 262144 else 3
    t_floor = best(lambda: floor_of(q, k, n), sync, reps)
    pool.free_all_blocks()
    base = pool.total_bytes()
    t_ours = best(lambda: vg(q, k, temperature=0.07), sync, reps)
    peak = pool.total_bytes() - base
    line = (f"N={n}: floor {t_floor:.3f} s, nce_ref {t_ours:.3f} s ({t_ours / t_floor:.2f}x), "
            f"GPU pool above inputs {peak / 2**30:.2f} GiB")
    if n <= 65536:  # torch's dense logits and their gradient: 2 N² floats
        t_torch, mem = torch_autograd(q, k, n)
        line += (f"; torch autograd {t_torch:.3f} s (nce_ref/torch {t_ours / t_torch:.2f}), "
                 f"{mem / 2**30:.1f} GiB")
    return line


def main():
    for n in (65536, 262144, 1048576):
        print(measure(n), flush=True)
        cupy.get_default_memory_pool().free_all_blocks()
    print("numpy", np.__version__, "cupy", cupy.__version__)


if __name__ == "__main__":
    main()
