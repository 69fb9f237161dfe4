"""Contrastive losses on embeddings: compositions of a similarity and an objective."""

from .infonce import info_nce, info_nce_from_scores, nt_xent

__all__ = ["info_nce", "info_nce_from_scores", "nt_xent"]
