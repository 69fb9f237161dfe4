"""Contrastive losses on embeddings: compositions of a similarity and an objective."""

from .infonce import info_nce, info_nce_from_scores, nt_xent
from .supcon import supcon
from .triplet import batch_triplet, triplet

__all__ = ["batch_triplet", "info_nce", "info_nce_from_scores", "nt_xent", "supcon", "triplet"]
