"""Peak memory per rank of a sharded call, gather against ring (docs/sharded.md, "Measured").

Run:  mpiexec -n 2 python docs/examples/sharded_memory.py FN ALGORITHM [N]
with FN one of info_nce, nt_xent, supcon, bound_from_embeddings (DV) and ALGORITHM gather
or ring: global N rows (default 16384; supcon: N/2 samples of 2 views), D = 256, float32
NumPy arrays, each rank half the rows.  After one warm call on 64 rows, the measured call
runs under ``tracemalloc`` ("arrays": the peak of the NumPy arrays it allocates; the inputs
are allocated before) with the peak RSS reset (Linux: /proc/self/clear_refs), so "RSS
extra" is its peak RSS above the RSS just before it.  Rank 0 prints every rank's figures.
"""
import gc
import sys
import time
import tracemalloc

import numpy as np
from mpi4py import MPI

import nce_ref
from nce_ref.sharded import MPICommunicator


def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


fn, algorithm = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 16384
d = 256
rank = MPI.COMM_WORLD.Get_rank()
comm = MPICommunicator(MPI.COMM_WORLD, timeout=600)
rng = np.random.default_rng(rank)
h = n // 2
if fn == "supcon":
    arrays = [rng.standard_normal((h // 2, 2, d)).astype(np.float32), rng.integers(0, 100, h // 2)]
    kw = dict(algorithm=algorithm, temperature=0.1)
else:
    arrays = [rng.standard_normal((h, d)).astype(np.float32) for _ in range(2)]
    kw = dict(algorithm=algorithm, temperature=0.07)
    if fn == "bound_from_embeddings":
        kw = dict(algorithm=algorithm, bound="dv", temperature=1.0)
    if fn == "nt_xent":
        kw = dict(algorithm=algorithm, temperature=0.1)
vg = nce_ref.value_and_grad(getattr(nce_ref.sharded, fn))
out = vg(*[a[:64] for a in arrays], comm=comm, **kw)
del out
gc.collect()
base = _status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
tracemalloc.start()
t0 = time.perf_counter()
out = vg(*arrays, comm=comm, **kw)
dt = time.perf_counter() - t0
_, peak_arrays = tracemalloc.get_traced_memory()
tracemalloc.stop()
peak = _status("VmHWM")
res = MPI.COMM_WORLD.gather((peak_arrays / 2**20, peak - base, peak, dt), root=0)
if rank == 0:
    for r, (pa, extra, pk, s) in enumerate(res):
        print(f"{fn} {algorithm} N={n} rank {r}: arrays {pa:.1f} MiB, RSS extra {extra:.1f}, "
              f"RSS peak {pk:.1f}, {s:.2f} s")
