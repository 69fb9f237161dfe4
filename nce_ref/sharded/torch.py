"""The :class:`~nce_ref.sharded.Communicator` over ``torch.distributed``.

One code path for gloo (CPU tensors) and NCCL (CUDA tensors): every collective is one of
``all_gather_single``/``all_gather_into_tensor``, ``all_to_all_single``, ``all_reduce``
and ``batch_isend_irecv``, which both backends implement.  torch is imported when a
:class:`TorchCommunicator` is made, not when this module is imported.

Bytes sent per rank (``b`` the bytes of one row, ``n_r`` this rank's rows, ``m`` the
largest shard, ``N`` the global rows, W ranks; ring algorithms):

=================  ===========================  ==========================================
collective         torch call                   bytes sent by one rank
=================  ===========================  ==========================================
``gather_rows``    all-gather of shards padded  ``(W - 1) m b`` (``(W - 1) n b`` when the
                   to ``m`` rows                shards are equal: no padding)
``reduce_rows``    ``all_to_all_single`` with   ``(N - n_r) b``: each rank sends each
                   the shard sizes as splits    other rank exactly its rows, then sums the
                                                W received blocks in rank order
``ring_pass``      one ``isend``/``irecv`` pair ``n_r b``
``all_sum``        ``all_reduce(SUM)``          about ``2 (W - 1) / W`` times the array
=================  ===========================  ==========================================

``reduce_rows`` uses ``all_to_all_single`` rather than a reduce-scatter: gloo's
reduce-scatter is recent (torch 2.13 has one; older releases' gloo had none, which is why
torch's own ``nn.all_gather`` backward takes an all-to-all branch off NCCL), the unequal
shards would need padding, and ``all_to_all_single`` sends the same bytes as a ring
reduce-scatter, exists on gloo and NCCL, and lets the owner sum the W blocks in a fixed
order (rank 0 first), as :class:`~nce_ref.sharded.ThreadGroup` does.  Its cost is a
receive buffer of ``W n_r`` rows.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

from ._comm import check_recv_rows

__all__ = ["TorchCommunicator"]


class TorchCommunicator:
    """The collectives of a sharded function over a ``torch.distributed`` process group.

    Parameters
    ----------
    group : torch.distributed.ProcessGroup, optional
        The ranks of the sharded batch; default the world group (``None``).  gloo for
        CPU tensors, NCCL for CUDA tensors: the same code.
    timeout : float, optional
        Seconds to wait for each collective.  Every collective is started with
        ``async_op=True`` and waited with ``work.wait(timeout=...)``: when a peer does not
        reach it in time, ``TimeoutError`` names the collective and this rank.  The
        collective is then still pending in the process group, which is unusable
        afterwards (the ranks' collectives no longer pair up): abort the job, or destroy
        the group.  ``None`` (default): wait as long as the process group's own timeout
        (``init_process_group(timeout=...)``; 30 min for gloo by default).

    Attributes
    ----------
    size : int
        The number of ranks of ``group``.
    rank : int
        This process's rank in ``group`` (not its global rank).
    broken : str or None
        ``None`` until a collective times out or fails; then what happened (the group
        is unusable from then on, even if the caller caught the exception, and every
        later call raises ``RuntimeError`` at once instead of starting a collective).

    Notes
    -----
    The tensors are data, not autograd nodes: inputs are detached (the sharded functions
    compute their gradients by hand).  Non-contiguous inputs are accepted (copied to
    contiguous ones before sending).  On gloo (CPU) NumPy arrays are accepted too and
    returned as NumPy arrays (moved through ``torch.from_numpy``, no copy when
    contiguous and writable), so the ranks of a gloo job can run nce_ref's NumPy
    kernels.  Under NCCL, ``all_gather_object`` moves its bytes
    through the current CUDA device.

    Examples
    --------
    On every rank of a job started by ``torchrun --nproc-per-node 2``::

        import torch, torch.distributed as dist
        from nce_ref.sharded import TorchCommunicator

        dist.init_process_group("gloo")
        comm = TorchCommunicator(timeout=60)
        x = torch.full((comm.rank + 1, 3), float(comm.rank))   # rank 0: 1 row, rank 1: 2 rows
        X = comm.gather_rows(x, [1, 2])                        # (3, 3): own rows first
    """

    def __init__(self, group: Any = None, *, timeout: float | None = None):
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("TorchCommunicator needs an initialised torch.distributed "
                               "(call torch.distributed.init_process_group first)")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
                raise ValueError(f"`timeout` must be a positive number of seconds or None; got {timeout!r}")
        self._dist = dist
        self.group = group
        self.timeout = None if timeout is None else float(timeout)
        self.broken: str | None = None
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            raise ValueError("`group`: this process is not a member of the process group")
        self.size = dist.get_world_size(group)
        self._next = self._global((self.rank + 1) % self.size)
        self._prev = self._global((self.rank - 1) % self.size)

    def __repr__(self) -> str:
        return f"TorchCommunicator(rank={self.rank}, size={self.size}, timeout={self.timeout})"

    # -- helpers ------------------------------------------------------------------------

    def _global(self, group_rank: int) -> int:
        if self.group is None:
            return group_rank
        return self._dist.get_global_rank(self.group, group_rank)

    def _wait(self, works, name: str) -> None:
        """Wait for every ``work`` within the timeout; gloo's and NCCL's timeouts (a
        ``RuntimeError``) become a ``TimeoutError`` naming ``name`` and this rank."""
        import time
        from datetime import timedelta

        works = works if isinstance(works, list) else [works]
        start = time.monotonic()
        for work in works:
            try:
                if self.timeout is None:
                    work.wait()
                else:
                    left = self.timeout - (time.monotonic() - start)
                    work.wait(timeout=timedelta(seconds=max(left, 1e-3)))
            except RuntimeError as e:
                elapsed = time.monotonic() - start
                timed_out = ("timed out" in str(e).lower() or "timeout" in str(e).lower()
                             or (self.timeout is not None and elapsed >= self.timeout))
                where = f"rank {self.rank} of {self.size}: torch.distributed {name}"
                self.broken = f"{where}: {e}"
                if timed_out:
                    raise TimeoutError(
                        f"{where} did not complete within {elapsed:.3g} s: a peer rank did not "
                        f"reach it (or is too slow). The collective is still pending, so this "
                        f"process group is unusable: abort the job. ({e})") from e
                raise RuntimeError(f"{where} failed: {e}") from e

    def _tensor(self, x, name: str):
        import torch

        if self.broken is not None:
            raise RuntimeError(f"this TorchCommunicator's group is unusable since an earlier "
                               f"collective failed ({self.broken})")

        if not isinstance(x, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor or a NumPy array; got "
                            f"{type(x).__name__}")
        return x.detach().contiguous()

    def _numpy_in_out(self, method, x, *args):
        """``method(x, *args)`` for a NumPy ``x``: through a CPU tensor that shares its
        memory (a copy when it is not contiguous or not writable), the result back as a
        NumPy array."""
        import numpy as np
        import torch

        a = np.asarray(x)
        if not (a.flags.c_contiguous and a.flags.writeable):
            a = np.array(a, order="C", copy=True)
        return method(torch.from_numpy(a), *args).numpy()

    def _check_sizes(self, sizes: Sequence[int], rows: int, total: int | None, name: str) -> list[int]:
        sizes = [int(s) for s in sizes]
        if len(sizes) != self.size or any(s < 0 for s in sizes):
            raise ValueError(f"`sizes` must hold {self.size} non-negative row counts (one per rank); "
                             f"got {sizes!r}")
        expected = sizes[self.rank] if total is None else sum(sizes)
        if rows != expected:
            what = f"sizes[{self.rank}] = {expected}" if total is None else f"sum(sizes) = {expected}"
            raise ValueError(f"`{name}` has {rows} rows on rank {self.rank}; {what} expected")
        return sizes

    # -- the protocol -------------------------------------------------------------------

    def gather_rows(self, x, sizes: Sequence[int]):
        """Every rank's ``x`` in the rolled order (this rank's rows first), for any
        shard sizes, zero included; shards are padded to the largest one for the
        all-gather and the padding is sliced off."""
        if _is_numpy(x):
            return self._numpy_in_out(self.gather_rows, x, sizes)
        import torch

        x = self._tensor(x, "x")
        if x.ndim < 1:
            raise ValueError(f"`x` must have at least one axis (its rows); got shape {tuple(x.shape)}")
        sizes = self._check_sizes(sizes, x.shape[0], None, "x")
        rest = tuple(x.shape[1:])
        m = max(sizes)
        if self.size == 1:
            return x.clone()
        if m == 0 or _prod(rest) == 0:
            return x.new_empty((sum(sizes), *rest))  # no bytes to move (known on every rank)
        if x.dtype == torch.bool:  # moved as bytes
            return self.gather_rows(x.view(torch.uint8), sizes).view(torch.bool)
        if x.shape[0] == m:
            buf = x
        else:
            buf = x.new_zeros((m, *rest))
            buf[: x.shape[0]] = x
        out = x.new_empty((self.size * m, *rest))
        gather = getattr(self._dist, "all_gather_single", None) or self._dist.all_gather_into_tensor
        self._wait(gather(out, buf, group=self.group, async_op=True), "all_gather (gather_rows)")
        out = out.view(self.size, m, *rest)
        order = [(self.rank + s) % self.size for s in range(self.size)]
        if all(s == m for s in sizes):
            return torch.roll(out, -self.rank, dims=0).reshape(self.size * m, *rest)
        return torch.cat([out[r, : sizes[r]] for r in order], dim=0)

    def reduce_rows(self, dx, sizes: Sequence[int]):
        """This rank's rows of the sum over ranks of ``dx`` (rolled order, every rank's
        rows): ``all_to_all_single`` sends each rank its rows, the owner sums the W
        blocks in rank order."""
        if _is_numpy(dx):
            return self._numpy_in_out(self.reduce_rows, dx, sizes)
        x = self._tensor(dx, "dx")
        if x.ndim < 1:
            raise ValueError(f"`dx` must have at least one axis (its rows); got shape {tuple(x.shape)}")
        sizes = self._check_sizes(sizes, x.shape[0], sum(int(s) for s in sizes), "dx")
        rest = tuple(x.shape[1:])
        n = sizes[self.rank]
        if self.size == 1:
            return x.clone()
        if _prod(rest) == 0 or x.shape[0] == 0:
            return x.new_zeros((n, *rest))  # no bytes to move (known on every rank)
        # rolled order (rank, rank+1, ..., rank-1) -> rank order (0, 1, ..., W-1)
        before = sum(sizes[: self.rank])
        x = x.roll(before, dims=0) if before else x
        out = x.new_empty((self.size * n, *rest))
        self._wait(self._dist.all_to_all_single(out, x, output_split_sizes=[n] * self.size,
                                                input_split_sizes=sizes, group=self.group,
                                                async_op=True), "all_to_all (reduce_rows)")
        return out.view(self.size, n, *rest).sum(dim=0)

    def all_sum(self, x):
        """The sum over ranks of ``x`` (``all_reduce(SUM)`` on a copy; ``x`` is not changed)."""
        if _is_numpy(x):
            return self._numpy_in_out(self.all_sum, x)
        x = self._tensor(x, "x").clone()
        if self.size > 1:
            self._wait(self._dist.all_reduce(x, op=self._dist.ReduceOp.SUM, group=self.group,
                                             async_op=True), "all_reduce (all_sum)")
        return x

    def ring_pass(self, x, recv_rows: int):
        """Send ``x`` to rank + 1, return the ``recv_rows`` rows that rank − 1 sent (one
        ``isend``/``irecv`` pair posted together: no deadlock at any W; W = 1 returns a
        copy of ``x``)."""
        if _is_numpy(x):
            return self._numpy_in_out(self.ring_pass, x, recv_rows)
        import torch

        x = self._tensor(x, "x")
        if x.ndim < 1:
            raise ValueError(f"`x` must have at least one axis (its rows); got shape {tuple(x.shape)}")
        check_recv_rows(recv_rows, self.size, x.shape[0])
        if self.size == 1:
            return x.clone()
        if x.dtype == torch.bool:  # moved as bytes
            return self.ring_pass(x.view(torch.uint8), recv_rows).view(torch.bool)
        buf = x.new_empty((recv_rows, *x.shape[1:]))
        ops = []
        # an empty message is skipped on both sides: both know its size is 0
        if buf.numel():
            ops.append(self._dist.P2POp(self._dist.irecv, buf, self._prev, self.group))
        if x.numel():
            ops.append(self._dist.P2POp(self._dist.isend, x, self._next, self.group))
        if ops:
            self._wait(self._dist.batch_isend_irecv(ops), "isend/irecv (ring_pass)")
        return buf

    def all_gather_object(self, obj: Any) -> list:
        """Every rank's picklable ``obj`` in rank order: two all-gathers (lengths, then
        the padded pickles), both under the timeout (``torch.distributed.all_gather_object``
        cannot be waited with one)."""
        import torch

        self._tensor(torch.empty(0), "obj")  # refuses a broken group
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        device = self._object_device()
        if self.size == 1:
            return [pickle.loads(data)]
        mine = torch.tensor([len(data)], dtype=torch.int64, device=device)
        lengths = mine.new_empty(self.size)
        gather = getattr(self._dist, "all_gather_single", None) or self._dist.all_gather_into_tensor
        self._wait(gather(lengths, mine, group=self.group, async_op=True),
                   "all_gather (all_gather_object: lengths)")
        lengths = lengths.tolist()
        m = max(lengths)
        buf = torch.zeros(m, dtype=torch.uint8)
        buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        buf = buf.to(device)
        out = buf.new_empty(self.size * m)
        self._wait(gather(out, buf, group=self.group, async_op=True),
                   "all_gather (all_gather_object: pickles)")
        out = out.cpu().view(self.size, m).numpy()
        return [pickle.loads(out[r, : lengths[r]].tobytes()) for r in range(self.size)]

    def _object_device(self):
        import torch

        backend = str(self._dist.get_backend(self.group)).lower()
        if backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def _is_numpy(x) -> bool:
    return type(x).__module__ == "numpy"


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out
