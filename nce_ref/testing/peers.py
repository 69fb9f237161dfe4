"""Import the installed peer libraries (lightly, open_clip) beside a CPU-only torch.

lightly and open_clip import torchvision.  The torchvision wheel of this project's
package index is a CUDA build: its ``_C`` extension does not load beside the CPU
torch, so its operators are never defined, and ``torchvision/_meta_registrations.py``
then fails at import with ``RuntimeError: operator torchvision::nms does not exist``
(it registers a fake kernel for ``nms`` and ``qnms`` unconditionally).  Neither loss
needs a torchvision operator.

:func:`import_peer` imports a module after making torchvision importable without
editing it: when the extension does not load, it *defines* the missing operators'
schemas with ``torch.library`` (their kernels raise ``NotImplementedError`` naming
the reason), so the fake registrations succeed; torchvision's other operators are
registered only when its extension loaded, so nothing else fails.  When the extension
loads (a matching torchvision build), nothing is defined.

>>> from nce_ref.testing.peers import import_peer, peer_unavailable
>>> why = peer_unavailable("lightly.loss")        # None, or why it cannot import
>>> if why is None:
...     NTXentLoss = import_peer("lightly.loss").NTXentLoss
"""

from __future__ import annotations

import importlib
import re
import sys
from types import ModuleType

__all__ = ["import_peer", "peer_unavailable", "torchvision_shim_installed",
           "open_clip_sharded_local_grad", "open_clip_sharded_local", "open_clip_sharded_default",
           "open_clip_sharded_global_grad", "lightly_nt_xent_sharded", "pml_nt_xent_sharded",
           "pml_nt_xent_sharded_efficient", "solo_learn_nt_xent_sharded", "disco_clip_sharded",
           "inf_cl_sharded"]

#: torchvision's operators that its Python code registers whether or not the
#: extension loaded (torchvision 0.28/0.29 ``_meta_registrations.py``), with their schemas
_TORCHVISION_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_MISSING = re.compile(r"operator torchvision::(\w+) does not exist")

_lib = None            # the torch.library.Library holding the definitions: kept alive
_defined: set[str] = set()
_why_extension: str | None = None


def torchvision_shim_installed() -> tuple[str, ...]:
    """The torchvision operators :func:`import_peer` defined (empty when none were needed)."""
    return tuple(sorted(_defined))


def _extension_loads() -> bool:
    """Whether torchvision's compiled extension loads beside this torch (without importing
    torchvision's package, whose ``__init__`` is what fails)."""
    global _why_extension
    import importlib.util
    import os

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # not installed: nothing to patch; the import reports it
    for d in spec.submodule_search_locations:
        for name in os.listdir(d):
            if name.startswith("_C.") and name.endswith((".so", ".pyd")):
                try:
                    torch.ops.load_library(os.path.join(d, name))
                except (OSError, RuntimeError) as exc:
                    _why_extension = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    return False
                return True
    return True


def _define(op: str) -> None:
    """Define ``torchvision::op`` with a kernel that raises ``NotImplementedError``."""
    global _lib
    import torch

    if op in _defined:
        return
    if _lib is None:
        _lib = torch.library.Library("torchvision", "FRAGMENT")
    _lib.define(_TORCHVISION_OPS.get(op, f"{op}(Tensor[] args) -> Tensor"))

    def unavailable(*args, **kwargs):
        raise NotImplementedError(
            f"torchvision::{op} is unavailable: torchvision's compiled extension does not load "
            f"beside this torch ({_why_extension}); nce_ref.testing.peers defined the operator "
            "only so that torchvision imports")

    _lib.impl(op, unavailable, "CompositeExplicitAutograd")
    _defined.add(op)


def _forget(prefixes: tuple[str, ...]) -> None:
    """Drop the partially imported modules under ``prefixes`` from ``sys.modules``."""
    for name in [m for m in sys.modules if m.split(".")[0] in prefixes]:
        del sys.modules[name]


def import_peer(module: str) -> ModuleType:
    """Import ``module`` (``"lightly.loss"``, ``"open_clip"``), making torchvision
    importable first when its extension does not load beside this torch.

    Raises whatever the import raises otherwise (``ModuleNotFoundError`` for a peer
    that is not installed).
    """
    try:
        return importlib.import_module(module)
    except RuntimeError as exc:
        if not _MISSING.search(str(exc)):
            raise
    top = module.split(".")[0]
    if _extension_loads():  # a matching build: the failure is something else
        _forget(("torchvision", top))
        return importlib.import_module(module)
    for op in _TORCHVISION_OPS:
        _define(op)
    for _ in range(16):  # a later torchvision may register fakes for more operators
        _forget(("torchvision", top))
        try:
            return importlib.import_module(module)
        except RuntimeError as exc:
            m = _MISSING.search(str(exc))
            if m is None or m.group(1) in _defined:
                raise
            _define(m.group(1))
    raise ImportError(f"cannot import {module}: torchvision keeps asking for undefined operators")


def peer_unavailable(module: str) -> str | None:
    """None when :func:`import_peer` imports ``module``, else the one-line reason (for a
    ``pytest.skip``)."""
    try:
        import_peer(module)
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        return f"{module} does not import: {type(exc).__name__}: {msg[0] if msg else ''}"
    return None


# ----------------------------------------------------------------------------------
# Sharded adapters: called on each rank by ``verify_sharded`` (torch.distributed is
# initialised), with nce_ref's argument layout.  The installed peers are called as they
# are; the packages that cannot run here are transcribed (their gather or gradient code,
# with the loss around it written as in the package's usage).
# ----------------------------------------------------------------------------------

def _rank_world():
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def _open_clip(image, text, temperature, **options):
    import torch.nn.functional as F

    r, w = _rank_world()
    loss = import_peer("open_clip").ClipLoss(rank=r, world_size=w, **options)
    return loss(F.normalize(image, dim=-1), F.normalize(text, dim=-1), 1.0 / temperature)


def open_clip_sharded_local_grad(image, text, *, temperature=0.07):
    """OpenCLIP ``ClipLoss(local_loss=True, gather_with_grad=True)`` on each rank."""
    return _open_clip(image, text, temperature, local_loss=True, gather_with_grad=True)


def open_clip_sharded_local(image, text, *, temperature=0.07):
    """OpenCLIP ``ClipLoss(local_loss=True)`` without ``gather_with_grad``."""
    return _open_clip(image, text, temperature, local_loss=True)


def open_clip_sharded_default(image, text, *, temperature=0.07):
    """OpenCLIP ``ClipLoss()`` with its defaults (``local_loss=False, gather_with_grad=False``)."""
    return _open_clip(image, text, temperature)


def open_clip_sharded_global_grad(image, text, *, temperature=0.07):
    """OpenCLIP ``ClipLoss(gather_with_grad=True)`` (the full N x N loss on every rank)."""
    return _open_clip(image, text, temperature, gather_with_grad=True)


def lightly_nt_xent_sharded(z1, z2, *, temperature=0.5):
    """lightly ``NTXentLoss(temperature, gather_distributed=True)`` on each rank."""
    return import_peer("lightly.loss").NTXentLoss(temperature=temperature,
                                                  gather_distributed=True)(z1, z2)


def _pml_nt_xent(z1, z2, temperature, efficient):
    import torch
    from pytorch_metric_learning.losses import NTXentLoss
    from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

    r, _ = _rank_world()
    n = z1.shape[0]
    labels = torch.arange(n) + r * n  # globally unique pair ids (equal shards)
    loss = DistributedLossWrapper(NTXentLoss(temperature=temperature), efficient=efficient)
    return loss(torch.cat([z1, z2]), torch.cat([labels, labels]))


def pml_nt_xent_sharded(z1, z2, *, temperature=0.07):
    """pytorch-metric-learning ``DistributedLossWrapper(NTXentLoss(), efficient=False)`` on
    ``cat([z1, z2])`` with the pairs' global ids as labels."""
    return _pml_nt_xent(z1, z2, temperature, False)


def pml_nt_xent_sharded_efficient(z1, z2, *, temperature=0.07):
    """The same with ``efficient=True``."""
    return _pml_nt_xent(z1, z2, temperature, True)


def _gather_layer():
    """solo-learn's ``GatherLayer`` (``solo/utils/gather_layer.py``), transcribed: the
    backward returns this rank's slice of the incoming gradients, without a sum over ranks."""
    import torch
    import torch.distributed as dist

    class GatherLayer(torch.autograd.Function):
        @staticmethod
        def forward(ctx, input):
            ctx.save_for_backward(input)
            output = [torch.zeros_like(input) for _ in range(dist.get_world_size())]
            dist.all_gather(output, input)
            return tuple(output)

        @staticmethod
        def backward(ctx, *grads):
            (input,) = ctx.saved_tensors
            grad_out = torch.zeros_like(input)
            grad_out[:] = grads[dist.get_rank()]
            return grad_out

    return GatherLayer


def solo_learn_nt_xent_sharded(z1, z2, *, temperature=0.1):
    """solo-learn's ``simclr_loss_func`` (``solo/losses/simclr.py``) with its ``gather``,
    transcribed: the local anchors (both views) against every rank's views, positives by
    sample index, the mean over the local anchors."""
    import torch
    import torch.nn.functional as F

    r, _ = _rank_world()
    gather = _gather_layer()
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    indexes = torch.cat([torch.arange(n) + r * n] * 2)
    gathered_z = torch.cat(gather.apply(z), dim=0)
    gathered_indexes = torch.cat(gather.apply(indexes.float()), dim=0).long()
    sim = torch.exp(torch.einsum("if, jf -> ij", z, gathered_z) / temperature)
    pos_mask = indexes.unsqueeze(0).t() == gathered_indexes.unsqueeze(0)
    own = torch.zeros_like(pos_mask)
    own[torch.arange(2 * n), torch.arange(2 * n) + 2 * n * r] = True  # the anchor itself
    pos_mask = pos_mask & ~own
    neg_mask = ~(indexes.unsqueeze(0).t() == gathered_indexes.unsqueeze(0))
    pos = torch.sum(sim * pos_mask, 1)
    neg = torch.sum(sim * neg_mask, 1)
    return -torch.mean(torch.log(pos / (pos + neg)))


def _disco_gather():
    """DisCo-CLIP's ``disco/gather.py``, transcribed: the backward all-reduces the N x D
    gradient with ``ReduceOp.AVG`` (here SUM / W: gloo has no AVG) and returns this rank's slice."""
    import torch
    import torch.distributed as dist

    class DisCoGather(torch.autograd.Function):
        @staticmethod
        def forward(ctx, tensor):
            ctx.bs, ctx.rank = tensor.shape[0], dist.get_rank()
            gathered = [torch.zeros_like(tensor) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, tensor)
            return torch.cat(gathered, dim=0)

        @staticmethod
        def backward(ctx, grad_output):
            grad_output = grad_output.contiguous()
            dist.all_reduce(grad_output)
            grad_output = grad_output / dist.get_world_size()
            return grad_output[ctx.bs * ctx.rank: ctx.bs * (ctx.rank + 1)]

    return DisCoGather


def disco_clip_sharded(image, text, *, temperature=0.07):
    """DisCo-CLIP's README usage with its gather: this rank's rows against every rank's
    features, labels offset by ``rank * bs``; the two cross-entropies averaged (the README
    sums them: a convention, not the gradient question)."""
    import torch
    import torch.nn.functional as F

    r, _ = _rank_world()
    gather = _disco_gather()
    bs = image.shape[0]
    img, txt = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    all_img, all_txt = gather.apply(img), gather.apply(txt)
    scale = 1.0 / temperature
    logits_per_image = scale * all_img[bs * r: bs * (r + 1)] @ all_txt.t()
    logits_per_text = scale * all_txt[bs * r: bs * (r + 1)] @ all_img.t()
    label = torch.arange(bs) + r * bs
    return (F.cross_entropy(logits_per_image, label) + F.cross_entropy(logits_per_text, label)) / 2


def gradient_gather():
    """Inf-CL's ``GradientGather`` (``inf_cl/ring.py``), transcribed: the identity forward,
    an ``all_reduce(SUM)`` of the gradient in backward; Inf-CL applies it to the logit scale."""
    import torch
    import torch.distributed as dist

    class GradientGather(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, dx):
            dx = dx.clone()
            dist.all_reduce(dx)
            return dx

    return GradientGather


class _RingGather:
    """Inf-CL's ring: every rank's keys visit every rank; the gradient of each visiting
    block returns to its owner.  Its gradient is that of an all-gather whose backward sums
    the ranks' contributions (what the ring computes, W - 1 steps at a time, with an online
    log-sum-exp): transcribed as that gather, without the Triton tiles."""

    @staticmethod
    def apply(x):
        import torch
        import torch.distributed as dist

        class Ring(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.n = x.shape[0]
                out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
                dist.all_gather(out, x)
                return torch.cat(out)

            @staticmethod
            def backward(ctx, g):
                g = g.contiguous()
                dist.all_reduce(g)
                r = dist.get_rank()
                return g[r * ctx.n:(r + 1) * ctx.n]

        return Ring.apply(x)


def inf_cl_sharded(image, text, *, logit_scale=1 / 0.07):
    """Inf-CL's ``cal_inf_loss`` used as in its README for CLIP: both directions, the mean
    of the two, with the logit scale passed through ``GradientGather``; the ring's encoder
    gradients are those of :class:`_RingGather`."""
    import torch
    import torch.nn.functional as F

    r, _ = _rank_world()
    s = gradient_gather().apply(logit_scale) if isinstance(logit_scale, torch.Tensor) else logit_scale
    img, txt = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    n = img.shape[0]
    all_img, all_txt = _RingGather.apply(img), _RingGather.apply(txt)
    label = torch.arange(n) + r * n
    li = F.cross_entropy(s * img @ all_txt.t(), label)
    lt = F.cross_entropy(s * txt @ all_img.t(), label)
    return (li + lt) / 2
