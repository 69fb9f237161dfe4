"""nce_ref: the reference for contrastive losses and mutual-information estimators.

Every function is written once against the Python Array API standard and returns
arrays of the caller's namespace, device and dtype; every differentiable function
has a hand-derived gradient available through :func:`value_and_grad`.
"""

from . import mi
from ._stream import Tuning, get_tuning, tuning
from .autodiff import value_and_grad, vjp
from .losses import (
    batch_triplet,
    dcl,
    info_nce,
    info_nce_from_scores,
    multi_similarity,
    nt_xent,
    pairwise_contrastive,
    siglip,
    supcon,
    triplet,
)
from .memory import MemoryQueue, cross_batch_args
from .similarity import similarity

__version__ = "0.1.0"

__all__ = [
    "MemoryQueue",
    "Tuning",
    "batch_triplet",
    "cross_batch_args",
    "dcl",
    "get_tuning",
    "info_nce",
    "info_nce_from_scores",
    "mi",
    "multi_similarity",
    "nt_xent",
    "pairwise_contrastive",
    "siglip",
    "similarity",
    "supcon",
    "triplet",
    "tuning",
    "value_and_grad",
    "vjp",
]
