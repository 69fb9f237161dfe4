"""JAX bridge: a registered nce_ref function as a ``jax.custom_vjp`` function.

:func:`function` wraps any function of the registry (``nce_ref.autodiff``) so that
``jax.grad``, ``jax.vjp`` and ``jax.jit`` of it use nce_ref's hand-derived VJP
rather than differentiating the kernel.  The forward pass is nce_ref's own
computation on the JAX arrays (the Array API namespace of ``jax.numpy``); the
backward pass is the VJP that :func:`nce_ref.vjp` returns.  It reads only the
registry entry (``wrt``, ``scalars``, ``signature``), so functions registered
later work unchanged.

JAX is imported when this module is imported, never by ``import nce_ref``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
from array_api_compat import is_array_api_obj

from ..autodiff import lookup, vjp

__all__ = ["function"]


def _is_jax_value(v) -> bool:
    return isinstance(v, jax.Array) or isinstance(v, jax.core.Tracer)


def function(f: Callable | str) -> Callable:
    """Return ``f`` as a ``jax.custom_vjp`` function backed by nce_ref's gradient.

    Parameters
    ----------
    f : registered nce_ref function or its name
        ``nce_ref.info_nce``, ``"nt_xent"``, ``"mi.nwj"``... (any name of
        ``nce_ref.autodiff.registry()``).

    Returns
    -------
    callable
        Same signature as ``f``.  Array arguments (JAX arrays, or other arrays,
        which are converted with ``jnp.asarray``) are the primal inputs of a
        ``jax.custom_vjp``; every floating one listed in the function's ``wrt``
        gets nce_ref's gradient, including ``temperature`` when it is a JAX value
        (a traced Python float under ``jax.grad``).  Non-floating arrays (labels)
        get a zero cotangent; options are closed over.

    Notes
    -----
    Sharded functions (:mod:`nce_ref.sharded`, inside ``jax.shard_map`` with a
    :class:`nce_ref.sharded.JaxCommunicator`): as in :func:`nce_ref.interop.torch.function`,
    each device returns its share of the loss (``value="share"``, the default) or the
    global loss (``value="global"``), and the backward rule gives each device the
    gradient of the sum of every device's returned loss; the backward rule then
    evaluates the VJP with the incoming cotangent (another device's cotangent weighs
    the columns' gradients before they leave it).

    Reverse mode only: ``jax.custom_vjp`` functions support ``grad``/``vjp`` and
    ``jit``, not ``jvp``/``jacfwd``; check with
    ``jax.test_util.check_grads(..., modes=("rev",), order=1)``.  The forward rule
    evaluates nce_ref's VJP once.  When the output is 0-d it keeps the gradients
    for a unit cotangent as residuals (the streamed kernels compute them in the
    same sweep as the value) and the backward rule scales them.  Otherwise it keeps
    the inputs and the backward rule evaluates the VJP with the incoming cotangent.
    float64 needs ``jax_enable_x64``, as everywhere in JAX.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, nce_ref
    >>> from nce_ref.interop.jax import function
    >>> info_nce = function(nce_ref.info_nce)
    >>> q = jax.random.normal(jax.random.key(0), (8, 4))
    >>> k = jax.random.normal(jax.random.key(1), (8, 4))
    >>> gq, gt = jax.grad(lambda q, t: info_nce(q, k, temperature=t), argnums=(0, 1))(q, 0.2)
    >>> gq.shape, gt.shape
    ((8, 4), ())
    >>> from jax.test_util import check_grads
    >>> check_grads(lambda q, k: info_nce(q, k, temperature=0.5), (q, k), order=1,
    ...             modes=("rev",), atol=1e-2, rtol=1e-2)
    """
    entry = lookup(f)
    params = entry.signature.parameters

    def call(static: dict, names: tuple, prims: tuple):
        args = dict(static)
        args.update(zip(names, prims))
        ordered = {n: args[n] for n in params if n in args}
        b = inspect.BoundArguments(entry.signature, ordered)
        return b.args, b.kwargs

    @functools.wraps(entry.public, updated=())
    def wrapped(*args, **kwargs):
        if entry.sharded:
            kwargs.setdefault("value", "share")
        bound = entry.signature.bind(*args, **kwargs)
        names = tuple(n for n, v in bound.arguments.items()
                      if _is_jax_value(v) or is_array_api_obj(v))
        prims = tuple(v if _is_jax_value(v) else jnp.asarray(v)
                      for v in (bound.arguments[n] for n in names))
        static = {n: v for n, v in bound.arguments.items() if n not in names}
        # a sharded function's global value: every rank's share, averaged over the ranks;
        # the ranks' cotangents likewise in the backward rule (see function's Notes)
        comm = static.get("comm") if entry.sharded and static.get("value") == "global" else None
        if comm is not None:
            static["value"] = "share"

        def averaged(v):
            return v if comm is None or v.ndim else comm.all_sum(v) / comm.size

        def grads_out(grads, primals):
            out = []
            for n, p in zip(names, primals):
                g = grads.get(n)
                if g is None or not jnp.issubdtype(p.dtype, jnp.floating):
                    out.append(None)
                else:
                    out.append(jnp.asarray(g, dtype=p.dtype))
            return tuple(out)

        @jax.custom_vjp
        def core(*prims):
            a, k = call(static, names, prims)
            return averaged(entry.public(*a, **k))

        def fwd(*prims):
            a, k = call(static, names, prims)
            value, back = vjp(entry.public, *a, **k)
            if value.ndim == 0 and not entry.sharded:
                return value, (True, grads_out(back(None), prims), prims)
            return averaged(value), (False, None, prims)

        def bwd(res, g):
            scalar, unit, prims = res
            g = jnp.asarray(g)
            if scalar:
                return tuple(None if u is None else u * g.astype(u.dtype) for u in unit)
            a, k = call(static, names, prims)
            value, back = vjp(entry.public, *a, **k)
            return grads_out(back(g if comm is None or value.ndim else averaged(g)), prims)

        core.defvjp(fwd, bwd)
        return core(*prims)

    wrapped.__doc__ = (f"nce_ref.{entry.name} as a jax.custom_vjp function whose backward is "
                       "nce_ref's registered VJP; see nce_ref.interop.jax.function.")
    wrapped.__nce_ref_bridge__ = ("jax", entry)
    return wrapped
