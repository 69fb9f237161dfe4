"""One descriptor per array backend, shared by ``tests/`` and ``asv_benchmarks/``.

The library never imports this package.  A :class:`Backend` knows how to tell
whether it is available (and why not), how to make arrays from NumPy data in a
given dtype, how to bring results back to NumPy, how to synchronize a device, and
how much looser than NumPy its tolerances need to be.

Select backends with ``NCE_REF_TEST_BACKENDS`` (a comma-separated list of names,
or ``all``, the default); set ``NCE_REF_DEVICE=cuda`` for the GPU variants.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Backend", "BACKENDS", "get", "selected"]


@dataclass(frozen=True)
class Backend:
    """How tests and benchmarks use one array library.

    Attributes
    ----------
    name : str
    module : str
        What must import for the backend to exist.
    tol_scale : float
        Multiplies the dtype's tolerance (reduction order differs on GPUs).
    """

    name: str
    module: str
    _setup: Callable[[], Any]
    _asarray: Callable[[Any, np.ndarray, str], Any]
    _to_numpy: Callable[[Any], np.ndarray]
    _sync: Callable[[Any], None]
    tol_scale: float = 1.0
    gpu: bool = False

    def unavailable(self) -> str | None:
        """None when usable, else the reason it is not (printed as the skip reason)."""
        try:
            importlib.import_module(self.module)
        except Exception as exc:  # ImportError, or a broken CUDA install
            return f"{self.name}: `{self.module}` is not importable ({type(exc).__name__}: {exc})"[:300]
        try:
            self._setup()
        except Exception as exc:
            return f"{self.name}: no usable device ({type(exc).__name__}: {exc})"[:300]
        return None

    @property
    def lib(self):
        """The library module (numpy, torch, jax.numpy, cupy...)."""
        return self._setup()

    @property
    def xp(self):
        """The array-api-compat namespace of this backend's arrays."""
        import array_api_compat

        return array_api_compat.array_namespace(self.asarray(np.zeros(1), "float64"))

    def asarray(self, a: np.ndarray, dtype: str | None = None):
        """A fresh array of this backend holding ``a`` (cast to ``dtype`` by name)."""
        a = np.asarray(a)
        if dtype is None:
            dtype = str(a.dtype)
        return self._asarray(self._setup(), a, dtype)

    def to_numpy(self, x) -> np.ndarray:
        """Copy a result back to NumPy (float64 for low-precision floats)."""
        return self._to_numpy(x)

    def synchronize(self, *arrays) -> None:
        """Wait until the device has finished the work that produced ``arrays``."""
        self._sync(arrays)

    def dtype(self, name: str):
        return getattr(self.xp, name)


# -- numpy -----------------------------------------------------------------

def _np_asarray(lib, a, dtype):
    if dtype == "bfloat16":
        raise TypeError("NumPy has no bfloat16")
    return np.array(a, dtype=dtype, copy=True)


def _np_readonly_asarray(lib, a, dtype):
    x = _np_asarray(lib, a, dtype)
    x.flags.writeable = False
    return x


def _np_to_numpy(x):
    x = np.asarray(x)
    return x.astype(np.float64) if x.dtype == np.float16 else x


def _no_sync(arrays):
    return None


# -- array-api-strict ---------------------------------------------------------

def _strict_setup():
    import array_api_strict as xps

    # the strictest flags: no boolean indexing, no data-dependent shapes, no extensions
    # (linalg, fft): the library must use the main namespace only
    xps.set_array_api_strict_flags(boolean_indexing=False, data_dependent_shapes=False,
                                   enabled_extensions=())
    return xps


def _strict_asarray(lib, a, dtype):
    if dtype in ("bfloat16", "float16"):
        raise TypeError(f"array-api-strict has no {dtype}")
    return lib.asarray(np.array(a, dtype=dtype), dtype=getattr(lib, dtype))


def _strict_to_numpy(x):
    return np.from_dlpack(x).copy()


# -- torch ------------------------------------------------------------------------

def _torch_device():
    return os.environ.get("NCE_REF_DEVICE", "cpu")


def _torch_setup():
    import torch

    dev = _torch_device()
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return torch


def _torch_asarray(lib, a, dtype):
    t = lib.from_numpy(np.array(a, dtype=np.float64 if dtype == "bfloat16" else dtype, copy=True))
    return t.to(device=_torch_device(), dtype=getattr(lib, dtype))


def _torch_to_numpy(x):
    import torch

    x = x.detach().cpu()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.to(torch.float64)
    return x.numpy()


def _torch_sync(arrays):
    import torch

    if _torch_device().startswith("cuda"):
        torch.cuda.synchronize()


# -- jax ----------------------------------------------------------------------------

def _jax_setup():
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_default_matmul_precision", "float32")
    import jax.numpy as jnp

    return jnp


def _jax_asarray(lib, a, dtype):
    return lib.asarray(np.array(a, dtype=np.float64 if dtype == "bfloat16" else dtype),
                       dtype=getattr(lib, dtype))


def _jax_to_numpy(x):
    a = np.asarray(x)
    return a.astype(np.float64) if a.dtype.itemsize < 4 else a


def _jax_sync(arrays):
    import jax

    for a in arrays:
        jax.block_until_ready(a)


# -- cupy ---------------------------------------------------------------------------

def _cupy_setup():
    import cupy

    cupy.cuda.runtime.getDeviceCount()
    cupy.zeros(1).sum()  # raises without a working GPU
    return cupy


def _cupy_asarray(lib, a, dtype):
    if dtype == "bfloat16":
        raise TypeError("CuPy has no bfloat16")
    return lib.asarray(np.array(a, dtype=dtype))


def _cupy_to_numpy(x):
    a = x.get()
    return a.astype(np.float64) if a.dtype == np.float16 else a


def _cupy_sync(arrays):
    import cupy

    cupy.cuda.get_current_stream().synchronize()


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in [
        Backend("numpy", "numpy", lambda: np, _np_asarray, _np_to_numpy, _no_sync),
        Backend("numpy_readonly", "numpy", lambda: np, _np_readonly_asarray, _np_to_numpy, _no_sync),
        Backend("array_api_strict", "array_api_strict", _strict_setup, _strict_asarray,
                _strict_to_numpy, _no_sync),
        Backend("torch", "torch", _torch_setup, _torch_asarray, _torch_to_numpy, _torch_sync,
                gpu=_torch_device().startswith("cuda")),
        Backend("jax", "jax", _jax_setup, _jax_asarray, _jax_to_numpy, _jax_sync),
        Backend("cupy", "cupy", _cupy_setup, _cupy_asarray, _cupy_to_numpy, _cupy_sync,
                tol_scale=4.0, gpu=True),
    ]
}


def get(name: str) -> Backend:
    return BACKENDS[name]


def selected() -> list[Backend]:
    """The backends named by ``NCE_REF_TEST_BACKENDS`` (default: all of them)."""
    env = os.environ.get("NCE_REF_TEST_BACKENDS", "all").strip()
    if env in ("", "all"):
        return list(BACKENDS.values())
    return [BACKENDS[n.strip()] for n in env.split(",") if n.strip()]
