"""A sharded CLIP loss inside ``jax.shard_map`` on 4 devices: the gradient of the mean of
the devices' shares equals the single-device gradient of the whole batch.

Run:  XLA_FLAGS=--xla_force_host_platform_device_count=4 python docs/examples/sharded_jax.py
(the flag must be set before JAX starts; on GPUs or TPUs the real devices are used).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import nce_ref  # noqa: E402
from nce_ref.interop.jax import function  # noqa: E402
from nce_ref.sharded import JaxCommunicator  # noqa: E402

jax.config.update("jax_enable_x64", True)
devices = jax.devices()
mesh = Mesh(np.array(devices), ("batch",))
n, d = 4 * len(devices), 5
rng = np.random.default_rng(0)
q, k = jnp.asarray(rng.standard_normal((n, d))), jnp.asarray(rng.standard_normal((n, d)))
clip = function(nce_ref.sharded.info_nce)


def per_device(q, k, t):
    comm = JaxCommunicator("batch")                 # made inside the mapped function
    # a replicated parameter: each device's replica gets its own part of the gradient
    # (the transpose of this cast sums the replicas' parts)
    t = jax.lax.pcast(t, "batch", to="varying")
    share = clip(q, k, comm=comm, temperature=t, symmetric=True)  # this device's share
    return share[None]                               # one value per device


def mean_of_shares(q, k, t):
    shares = jax.shard_map(per_device, mesh=mesh, in_specs=(P("batch"), P("batch"), P()),
                           out_specs=P("batch"))(q, k, t)
    return jnp.mean(shares)                          # the shares average to the loss


t = jnp.asarray(0.3)
value, grads = jax.value_and_grad(mean_of_shares, argnums=(0, 1, 2))(q, k, t)
want, g = nce_ref.value_and_grad(nce_ref.info_nce)(np.asarray(q), np.asarray(k), temperature=0.3,
                                                   symmetric=True)
diffs = [abs(float(value) - float(want))] + [
    float(np.max(np.abs(np.asarray(a) - g[name]))) for a, name in zip(grads, ("query", "key", "temperature"))]
print(f"{len(devices)} devices: value {diffs[0]:.1e}, gradients {max(diffs[1:]):.1e}")
assert max(diffs) < 1e-12, diffs

# SupCon and DV by the ring (each device keeps its own rows; they pass round the devices
# with jax.lax.ppermute): the same check
f, y = jnp.asarray(rng.standard_normal((n, 2, d))), jnp.asarray(rng.integers(0, 3, n))
ring_cases = [(function(nce_ref.sharded.supcon), nce_ref.supcon, (f, y), {"positives": "in"}, "features"),
              (function(nce_ref.sharded.bound_from_embeddings), nce_ref.mi.bound_from_embeddings, (q, k),
               {"bound": "dv"}, "x")]
for fn, ref, args, kw, name in ring_cases:
    def per_device_ring(a, b, t, fn=fn, kw=kw):
        t = jax.lax.pcast(t, "batch", to="varying")
        return fn(a, b, comm=JaxCommunicator("batch"), temperature=t, algorithm="ring", **kw)[None]

    def mean_ring(a, b, t, per_device_ring=per_device_ring):
        return jnp.mean(jax.shard_map(per_device_ring, mesh=mesh, in_specs=(P("batch"), P("batch"), P()),
                                      out_specs=P("batch"))(a, b, t))

    value, grads = jax.value_and_grad(mean_ring, argnums=(0, 2))(*args, t)
    want, g = nce_ref.value_and_grad(ref)(*[np.asarray(a) for a in args], temperature=0.3, **kw)
    diffs = [abs(float(value) - float(want)), float(np.max(np.abs(np.asarray(grads[0]) - g[name]))),
             abs(float(grads[1]) - float(g["temperature"]))]
    print(f"{ref.__name__} by the ring, {len(devices)} devices: value {diffs[0]:.1e}, "
          f"gradients {max(diffs[1:]):.1e}")
    assert max(diffs) < 1e-12, (ref.__name__, diffs)
