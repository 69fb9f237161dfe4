"""PyTorch bridge: a registered nce_ref function as a ``torch.autograd.Function``.

:func:`function` wraps any function of the registry (``nce_ref.autodiff``) so that
``loss.backward()`` runs nce_ref's hand-derived VJP instead of autograd's trace of
the kernel.  The forward pass is nce_ref's own computation on the tensors (any
device, any floating dtype); the backward pass calls the VJP that
:func:`nce_ref.vjp` returns for that forward pass, with the incoming gradient as
the cotangent.  Nothing here knows a particular loss: it reads the registry entry
(``wrt``, ``scalars``, ``signature``), so functions registered later work unchanged.

torch is imported when this module is imported, never by ``import nce_ref``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch

from ..autodiff import lookup, vjp

__all__ = ["function"]


class _Bridge(torch.autograd.Function):
    """forward: nce_ref's value; backward: nce_ref's registered VJP."""

    @staticmethod
    def forward(ctx, spec, *tensors):
        entry, bound, names = spec
        args = dict(bound.arguments)
        args.update({n: t.detach() for n, t in zip(names, tensors)})
        ctx.comm = None
        if entry.sharded and args.get("value", "share") == "global":
            # the global loss on every rank: each rank's share, averaged over the ranks
            # (and in backward the ranks' cotangents, so that the gradient is that of
            # the sum of every rank's returned loss)
            args["value"] = "share"
            ctx.comm = args["comm"]
        call = inspect.BoundArguments(entry.signature, args)
        value, back = vjp(entry.public, *call.args, **call.kwargs)
        if ctx.comm is not None and value.ndim == 0:
            value = ctx.comm.all_sum(value) / ctx.comm.size
        else:
            ctx.comm = None
        ctx.back = back
        ctx.names = names
        ctx.scalar_out = value.ndim == 0
        # saved only so that torch detects an in-place change of an input between
        # forward and backward (the VJP closure holds the same tensors)
        ctx.save_for_backward(*tensors)
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        ctx.saved_tensors  # noqa: B018  (raises if an input was modified in place)
        if ctx.comm is not None:
            grad_output = ctx.comm.all_sum(grad_output) / ctx.comm.size
        grads = ctx.back(grad_output)
        out = []
        for name, needed in zip(ctx.names, ctx.needs_input_grad[1:]):
            out.append(grads.get(name) if needed else None)
        return (None, *out)


def function(f: Callable | str) -> Callable:
    """Return ``f`` as a PyTorch differentiable function backed by nce_ref's gradient.

    Parameters
    ----------
    f : registered nce_ref function or its name
        ``nce_ref.info_nce``, ``"nt_xent"``, ``"mi.nwj"``... (any name of
        ``nce_ref.autodiff.registry()``).

    Returns
    -------
    callable
        Same signature as ``f``; takes ``torch.Tensor`` arrays and returns a tensor
        whose ``backward`` runs ``f``'s registered VJP.  Every floating tensor
        argument listed in the function's ``wrt`` receives a gradient, including a
        0-d tensor ``temperature`` (a Python float temperature is a constant).
        Non-floating tensors (labels) receive none.

    Notes
    -----
    **Sharded functions** (:mod:`nce_ref.sharded`): each rank calls the wrapped
    function on its own rows.  By default (``value="share"``) it returns this rank's
    share of the loss (W/N times the sum of its rows' terms for the mean: the ranks'
    mean is the global loss, open_clip's local-loss convention); ``value="global"``
    returns the global loss on every rank.  Either way ``backward`` gives each rank the
    gradient of the sum of every rank's returned loss (each weighted by that rank's
    upstream gradient) with respect to its own inputs, and each replica of a
    replicated temperature its own part, so that DDP's mean of the parameters'
    gradients over the ranks is the single-device gradient of the global batch.

    The backward pass is first-order only (``once_differentiable``): a second
    derivative raises.  Inputs are saved for backward, so modifying one in place
    between forward and backward raises as it would for a native op.  With
    ``reduction="none"`` the incoming gradient is the cotangent of the per-sample
    vector.  The result passes ``torch.autograd.gradcheck`` in float64.

    Examples
    --------
    >>> import torch, nce_ref
    >>> from nce_ref.interop.torch import function
    >>> info_nce = function(nce_ref.info_nce)
    >>> q = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    >>> k = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    >>> t = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    >>> info_nce(q, k, temperature=t).backward()
    >>> q.grad.shape, t.grad.shape
    (torch.Size([8, 4]), torch.Size([]))
    >>> torch.autograd.gradcheck(lambda q, k, t: info_nce(q, k, temperature=t), (q, k, t))
    True
    """
    entry = lookup(f)

    @functools.wraps(entry.public, updated=())
    def wrapped(*args, **kwargs):
        if entry.sharded:
            kwargs.setdefault("value", "share")
        bound = entry.signature.bind(*args, **kwargs)
        names = tuple(n for n, v in bound.arguments.items() if isinstance(v, torch.Tensor))
        tensors = [bound.arguments[n] for n in names]
        return _Bridge.apply((entry, bound, names), *tensors)

    wrapped.__doc__ = (f"nce_ref.{entry.name} as a torch.autograd.Function whose backward is "
                       "nce_ref's registered VJP; see nce_ref.interop.torch.function.")
    wrapped.__nce_ref_bridge__ = ("torch", entry)
    return wrapped
