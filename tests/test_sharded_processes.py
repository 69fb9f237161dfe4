"""Sharded losses across real processes and devices, through the documented examples.

Each example in ``docs/examples/`` runs in a subprocess (its own process group, MPI job
or JAX devices) and asserts its own result:

- ``sharded_torch.py``: one DDP training step of a linear encoder over 2 and 3 gloo
  processes (unequal shards, the bridged sharded loss) equals the single-process step
  on the whole batch, parameters to 1e-12 in float64, for CLIP and SupCon;
- ``sharded_mpi.py``: ``mpiexec -n 3``, NT-Xent by gather and by ring, value and
  gradients of every rank against the single-process function;
- ``sharded_mpi_ring.py``: ``mpiexec -n 3``, SupCon (every positives mode) and the MI
  bounds by gather and by ring;
- ``sharded_jax.py``: ``jax.shard_map`` over 4 simulated host devices, the gradient of
  the mean of the devices' shares against the single-device gradient (CLIP by gather;
  SupCon and DV by the ring).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "docs" / "examples"


def _run(cmd, *, env=None, timeout=240):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         env=None if env is None else {**os.environ, **env})
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.mark.parametrize("kind,world", [("clip", 2), ("supcon", 3)])
def test_a_ddp_step_over_gloo_processes_equals_the_single_process_step(kind, world):
    pytest.importorskip("torch", reason="torch is not installed: no torch.distributed")
    out = _run([sys.executable, str(EXAMPLES / "sharded_torch.py"), kind, str(world)])
    assert f"{kind}, {world} ranks: largest parameter difference" in out


def test_mpi_ranks_equal_the_single_process_loss():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed")
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec found (pip install mpich)")
    out = _run([mpiexec, "-n", "3", sys.executable, str(EXAMPLES / "sharded_mpi.py")])
    assert "gather, 3 ranks" in out and "ring, 3 ranks" in out


@pytest.mark.slow
def test_mpi_ranks_by_the_ring_equal_the_single_process_supcon_and_bounds():
    """SupCon (every positives mode, labels across ranks) and the MI bounds that take the
    ring, by gather and by ring over ``mpiexec -n 3``: the example asserts each result."""
    pytest.importorskip("mpi4py", reason="mpi4py is not installed")
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec found (pip install mpich)")
    out = _run([mpiexec, "-n", "3", sys.executable, str(EXAMPLES / "sharded_mpi_ring.py")])
    for what in ("supcon out", "supcon in", "supcon per_pair", "dv", "tuba", "js", "smile"):
        assert f"{what} ring, 3 ranks" in out, what


@pytest.mark.slow  # about 90 s of XLA compilation on 2 cores; CI runs it with -m slow
def test_jax_shard_map_devices_equal_the_single_device_gradient():
    pytest.importorskip("jax", reason="JAX is not installed")
    out = _run([sys.executable, str(EXAMPLES / "sharded_jax.py")],
               env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert "4 devices: value" in out
    assert "supcon by the ring, 4 devices" in out and "bound_from_embeddings by the ring, 4 devices" in out
