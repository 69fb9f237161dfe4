"""One DDP training step with a sharded CLIP or SupCon loss equals the single-device step.

Run:  python docs/examples/sharded_torch.py [clip|supcon] [world_size]
(or under torchrun: each rank then runs ``step``).  Two gloo processes on the CPU; with
GPUs, "nccl" and one device per rank.  Prints the largest parameter difference after one
SGD step between DDP over the shards and one process on the whole batch (float64).
"""

import os
import socket
import sys

import torch
import torch.distributed as dist

import nce_ref
from nce_ref.interop.torch import function
from nce_ref.sharded import TorchCommunicator

N, D, E = 12, 8, 4


def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, N, D, dtype=torch.float64, generator=g)  # two views of N samples
    labels = torch.randint(0, 3, (N,), generator=g)
    return x, labels


def model():
    torch.manual_seed(0)
    return torch.nn.Linear(D, E, dtype=torch.float64)


def loss_of(kind, f, net, x, labels, **kw):
    za, zb = net(x[0]), net(x[1])
    if kind == "clip":
        return function(f)(za, zb, temperature=0.1, symmetric=True, **kw)
    return function(f)(torch.stack([za, zb], 1), labels, temperature=0.1, **kw)


def single_step(kind):
    x, labels = batch()
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    loss_of(kind, SINGLE[kind], net, x, labels).backward()
    opt.step()
    return [p.detach() for p in net.parameters()]


def step(rank, world, kind, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, labels = batch()
        bounds = [round(r * N / world) + (r > 0) for r in range(world)] + [N]  # unequal shards
        rows = slice(bounds[rank], bounds[rank + 1])
        net = torch.nn.parallel.DistributedDataParallel(model())
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        comm = TorchCommunicator(timeout=60)
        # each rank's share of the loss (the default): DDP's gradient mean is exact
        loss = loss_of(kind, SHARDED[kind], net, x[:, rows], labels[rows], comm=comm)
        loss.backward()
        opt.step()
        if rank == 0:
            torch.save([p.detach() for p in net.module.parameters()], out)
        # no rank tears the group down while another still talks to it (a gloo pair
        # closed under a peer's pending operation aborts that process)
        dist.barrier()
    finally:
        dist.destroy_process_group()


SINGLE = {"clip": nce_ref.info_nce, "supcon": nce_ref.supcon}
SHARDED = {"clip": nce_ref.sharded.info_nce, "supcon": nce_ref.sharded.supcon}


def main():
    kind = sys.argv[1] if len(sys.argv) > 1 else "clip"
    world = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = f"/tmp/nce_ref_sharded_{os.getpid()}.pt"
    torch.multiprocessing.spawn(step, args=(world, kind, port, out), nprocs=world)
    got, want = torch.load(out), single_step(kind)
    os.remove(out)
    diff = max(float((a - b).abs().max()) for a, b in zip(got, want))
    print(f"{kind}, {world} ranks: largest parameter difference after one step {diff:.1e}")
    assert diff < 1e-12, diff


if __name__ == "__main__":
    main()
