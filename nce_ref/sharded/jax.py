"""The :class:`~nce_ref.sharded.Communicator` inside ``jax.shard_map``.

The ranks are the positions along one mesh axis of a ``shard_map``; the collectives are
``jax.lax``'s, traced into the one SPMD program.  jax is imported when a
:class:`JaxCommunicator` is made.

Bytes sent per device (``b`` the bytes of one row, ``n`` rows per shard, W devices;
XLA picks the algorithm, ring figures shown):

=================  ======================================  ==============================
collective         jax.lax call                            bytes sent by one device
=================  ======================================  ==============================
``gather_rows``    ``all_gather(tiled=True)``, then a      ``(W - 1) n b``
                   roll by the traced ``axis_index``
``reduce_rows``    un-roll, ``psum_scatter(tiled=True)``   ``(W - 1) n b``
``ring_pass``      ``ppermute`` ``i -> i + 1``             ``n b``
``all_sum``        ``psum``                                about ``2 (W - 1) / W`` times
                                                           the array
=================  ======================================  ==============================

Shards must have equal sizes (``shard_map`` splits an axis evenly); unequal ``sizes``
are refused at trace time.  There are no timeouts: every device runs the same program,
so no device can skip a collective that another reaches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["JaxCommunicator"]


class JaxCommunicator:
    """The collectives of a sharded function along one mesh axis of ``jax.shard_map``.

    Make it inside the function that ``shard_map`` maps (the axis must be bound).

    Parameters
    ----------
    axis_name : hashable
        The mesh axis whose positions are the ranks.
    size : int, optional
        The number of positions W along ``axis_name``; default read from the bound axis
        (``jax.lax.axis_size``, static).

    Attributes
    ----------
    size : int
        W, a Python int (static).
    rank : jax.Array
        ``jax.lax.axis_index(axis_name)``: a traced 0-d int, which the sharded
        algorithms never index with (the rolled order makes every index static).

    Notes
    -----
    ``all_gather_object`` returns ``[obj] * size`` without communicating: the devices
    run one program on shapes known at trace time, so their metadata are identical by
    construction (and :func:`~nce_ref.sharded.agree` passes, unless ``error`` is set).

    Examples
    --------
    With 4 devices (on CPU: ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` set
    before JAX starts)::

        import jax, jax.numpy as jnp
        from jax.sharding import PartitionSpec as P
        from nce_ref.sharded import JaxCommunicator

        mesh = jax.make_mesh((4,), ("batch",))

        def per_device(x):                       # x: this device's (2, 3) rows
            comm = JaxCommunicator("batch")
            return comm.gather_rows(x, [2] * comm.size)[None]  # (1, 8, 3), own rows first

        f = jax.shard_map(per_device, mesh=mesh, in_specs=P("batch"), out_specs=P("batch"))
        out = f(jnp.arange(24.0).reshape(8, 3))  # (4, 8, 3)
    """

    def __init__(self, axis_name: Any, *, size: int | None = None):
        import jax

        self._jax = jax
        self.axis_name = axis_name
        if size is None:
            size = _axis_size(jax, axis_name)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"`size` must be a positive int; got {size!r}")
        self.size = size
        try:
            self.rank = jax.lax.axis_index(axis_name)
        except NameError as e:
            raise ValueError(f"`axis_name` {axis_name!r} is not a bound mesh axis: make the "
                             f"JaxCommunicator inside the function that jax.shard_map maps") from e

    def __repr__(self) -> str:
        return f"JaxCommunicator(axis_name={self.axis_name!r}, size={self.size})"

    def _check_sizes(self, sizes: Sequence[int], rows: int, name: str) -> int:
        sizes = [int(s) for s in sizes]
        if len(sizes) != self.size:
            raise ValueError(f"`sizes` must hold {self.size} row counts (one per device); got {sizes!r}")
        if any(s != sizes[0] for s in sizes):
            raise ValueError(f"`sizes`: JaxCommunicator needs equal shards (shard_map splits an axis "
                             f"evenly); got {sizes!r}")
        if rows != sizes[0] * (self.size if name == "dx" else 1):
            want = sizes[0] * (self.size if name == "dx" else 1)
            raise ValueError(f"`{name}` has {rows} rows; {want} expected from `sizes` = {sizes!r}")
        return sizes[0]

    def gather_rows(self, x, sizes: Sequence[int]):
        """``all_gather(x, tiled=True)`` rolled so that this device's rows come first."""
        jnp = self._jax.numpy
        n = self._check_sizes(sizes, x.shape[0], "x")
        if self.size == 1:
            return x
        full = self._jax.lax.all_gather(x, self.axis_name, axis=0, tiled=True)
        return jnp.roll(full, -self.rank * n, axis=0)

    def reduce_rows(self, dx, sizes: Sequence[int]):
        """Un-roll ``dx`` to rank order, then ``psum_scatter(tiled=True)``: this
        device's rows of the sum over devices."""
        jnp = self._jax.numpy
        n = self._check_sizes(sizes, dx.shape[0], "dx")
        if self.size == 1:
            return dx
        ordered = jnp.roll(dx, self.rank * n, axis=0)
        return self._jax.lax.psum_scatter(ordered, self.axis_name, scatter_dimension=0, tiled=True)

    def all_sum(self, x):
        """``jax.lax.psum(x, axis_name)``."""
        return self._jax.lax.psum(x, self.axis_name)

    def ring_pass(self, x, recv_rows: int):
        """``jax.lax.ppermute`` from each device to the next (``i -> (i + 1) % W``);
        ``recv_rows`` must be ``x``'s rows (equal shards)."""
        if isinstance(recv_rows, bool) or not isinstance(recv_rows, int) or recv_rows != x.shape[0]:
            raise ValueError(f"`recv_rows` must equal x's {x.shape[0]} rows (equal shards under "
                             f"shard_map); got {recv_rows!r}")
        if self.size == 1:
            return x
        perm = [(i, (i + 1) % self.size) for i in range(self.size)]
        return self._jax.lax.ppermute(x, self.axis_name, perm)

    def all_gather_object(self, obj: Any) -> list:
        """``[obj] * size``: one program, so every device's metadata are this one's."""
        return [obj] * self.size


def _axis_size(jax, axis_name) -> int:
    """W along a bound mesh axis, as a Python int (static)."""
    try:
        if hasattr(jax.lax, "axis_size"):
            size = jax.lax.axis_size(axis_name)
        else:  # older JAX: psum of a Python constant over a named axis is static
            size = jax.lax.psum(1, axis_name)
        return int(size)
    except (NameError, TypeError, jax.errors.ConcretizationTypeError) as e:
        raise ValueError(f"`axis_name` {axis_name!r}: its size is not known here; make the "
                         f"JaxCommunicator inside the function that jax.shard_map maps, or "
                         f"pass size=") from e
