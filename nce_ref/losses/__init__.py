"""Contrastive losses on embeddings: compositions of a similarity and an objective."""

from .dcl import dcl
from .infonce import info_nce, info_nce_from_scores, nt_xent
from .pairs import multi_similarity, pairwise_contrastive
from .siglip import siglip
from .supcon import supcon
from .triplet import batch_triplet, triplet

__all__ = ["batch_triplet", "dcl", "info_nce", "info_nce_from_scores", "multi_similarity", "nt_xent",
           "pairwise_contrastive", "siglip", "supcon", "triplet"]
