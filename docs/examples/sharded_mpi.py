"""A sharded NT-Xent over MPI ranks equals the single-process loss, value and gradients.

Run:  mpiexec -n 3 python docs/examples/sharded_mpi.py
Each rank holds an unequal share of the batch (NumPy; CuPy arrays work the same way);
rank 0 prints the largest differences from the single-process computation.
"""

import numpy as np
from mpi4py import MPI

import nce_ref
from nce_ref.sharded import MPICommunicator

comm = MPICommunicator(MPI.COMM_WORLD, timeout=60)
rank, world = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
rng = np.random.default_rng(0)
n, d = 17, 6
z1, z2 = rng.standard_normal((n, d)), rng.standard_normal((n, d))
bounds = [0] + [(r + 1) * n // world + (r + 1 < world) for r in range(world - 1)] + [n]
rows = slice(bounds[rank], bounds[rank + 1])

for algorithm in ("gather", "ring"):
    loss, g = nce_ref.value_and_grad(nce_ref.sharded.nt_xent)(
        z1[rows], z2[rows], comm=comm, temperature=0.2, algorithm=algorithm)
    parts = MPI.COMM_WORLD.gather((g["z1"], g["z2"], float(g["temperature"])), root=0)
    if rank == 0:
        want, w = nce_ref.value_and_grad(nce_ref.nt_xent)(z1, z2, temperature=0.2)
        d_value = abs(float(loss) - float(want))
        d_grad = max(np.max(np.abs(np.concatenate([p[i] for p in parts]) - w[k]))
                     for i, k in enumerate(("z1", "z2")))
        d_tau = max(abs(p[2] - float(w["temperature"])) for p in parts)
        print(f"{algorithm}, {world} ranks: value {d_value:.1e}, gradients {d_grad:.1e}, "
              f"temperature {d_tau:.1e}")
        assert max(d_value, d_grad, d_tau) < 1e-12
