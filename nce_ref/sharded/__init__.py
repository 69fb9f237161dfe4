"""Sharded batches: the losses of a batch whose rows are split over ranks.

See :mod:`nce_ref.sharded.losses` for the contract and the algorithms, and
:mod:`nce_ref.sharded._comm` for the communicator protocol.  The adapters
(``TorchCommunicator``, ``MPICommunicator``, ``JaxCommunicator``) import their
framework only when first used.
"""

from ._comm import Communicator, ShardingError, ThreadGroup, agree
from .embeddings import bound_from_embeddings
from .losses import ALGORITHMS, info_nce, nt_xent, supcon

__all__ = ["Communicator", "ShardingError", "ThreadGroup", "agree", "info_nce", "nt_xent", "supcon",
           "ALGORITHMS", "bound_from_embeddings", "TorchCommunicator", "MPICommunicator", "JaxCommunicator"]

_ADAPTERS = {"TorchCommunicator": "torch", "MPICommunicator": "mpi", "JaxCommunicator": "jax"}


def __getattr__(name):
    if name in _ADAPTERS:
        import importlib

        return getattr(importlib.import_module(f".{_ADAPTERS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
