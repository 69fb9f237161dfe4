"""SupCon and the MI bounds by the ring over MPI ranks equal the single-process results.

Run:  mpiexec -n 3 python docs/examples/sharded_mpi_ring.py
Each rank holds an unequal share of the batch (NumPy) and labels whose positives live on
other ranks; every positives mode of SupCon, and the bounds that take the ring, by both
algorithms.  Rank 0 prints the largest differences from the single-process computation.
"""

import numpy as np
from mpi4py import MPI

import nce_ref
from nce_ref import mi
from nce_ref.sharded import MPICommunicator

comm = MPICommunicator(MPI.COMM_WORLD, timeout=60)
rank, world = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
rng = np.random.default_rng(0)
n, v, d = 17, 2, 6
feats, labels = rng.standard_normal((n, v, d)), rng.integers(0, 4, n)
x, y = 0.5 * rng.standard_normal((n, d)), 0.5 * rng.standard_normal((n, d))
bounds = [0] + [(r + 1) * n // world + (r + 1 < world) for r in range(world - 1)] + [n]
rows = slice(bounds[rank], bounds[rank + 1])


def check(what, got, want, names):
    """Every rank's value and rows of the gradients against ``want``, relative to the
    largest entry; every rank learns the verdict (no rank is left waiting)."""
    loss, g = got
    v0, g0 = want

    def rel(a, b):
        return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(1.0, np.max(np.abs(b))))

    mine = (rel(loss, v0), max(rel(g[k], np.asarray(g0[k])[rows]) for k in names),
            rel(g["temperature"], g0["temperature"]))
    worst = np.max(MPI.COMM_WORLD.allgather(mine), axis=0)
    if rank == 0:
        print(f"{what}, {world} ranks: value {worst[0]:.1e}, gradients {worst[1]:.1e}, "
              f"temperature {worst[2]:.1e} (relative)")
    assert max(worst) < 1e-12, what


for positives in ("out", "in", "per_pair"):
    kw = dict(temperature=0.2, positives=positives)
    want = nce_ref.value_and_grad(nce_ref.supcon)(feats, labels, **kw)
    for algorithm in ("gather", "ring"):
        got = nce_ref.value_and_grad(nce_ref.sharded.supcon)(
            feats[rows], labels[rows], comm=comm, algorithm=algorithm, **kw)
        check(f"supcon {positives} {algorithm}", got, want, ["features"])

for bound, kw in (("dv", {}), ("tuba", {}), ("js", {"report": "objective"}),
                  ("smile", {"clip": 2.0}), ("interpolated", {"alpha": 0.5})):
    kw = dict(kw, bound=bound, temperature=0.5)
    want = nce_ref.value_and_grad(mi.bound_from_embeddings)(x, y, **kw)
    for algorithm in ("gather", "ring"):
        got = nce_ref.value_and_grad(nce_ref.sharded.bound_from_embeddings)(
            x[rows], y[rows], comm=comm, algorithm=algorithm, **kw)
        check(f"{bound} {algorithm}", got, want, ["x", "y"])
