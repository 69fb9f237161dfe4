"""Autograd bridges: train with nce_ref's functions inside PyTorch or JAX.

``nce_ref.interop.torch.function(f)`` and ``nce_ref.interop.jax.function(f)``
wrap any registered function (``info_nce``, ``nt_xent``, the MI bounds, and every
function registered later) so that the framework's autodiff calls nce_ref's
hand-derived VJP instead of differentiating the kernel.  The submodules import
torch or JAX only when they are themselves imported; importing ``nce_ref`` or this
package imports neither.
"""

__all__ = ["jax", "torch"]


def __getattr__(name):
    if name in ("torch", "jax"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
