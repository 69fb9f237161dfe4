"""Temporary shim: the streamed engine now lives in :mod:`nce_ref._stream`.

``nce_ref.losses.infonce`` and ``nce_ref.losses.supcon`` still import these names
from here; once they import them from :mod:`nce_ref._stream`, this module goes.
Nothing new should import it.
"""

from ._stream import (
    by_row_chunks,
    ce_stream,
    ce_stream_symmetric,
    choose_block,
    supcon_stream,
    supcon_stream_groups,
)

__all__ = ["by_row_chunks", "ce_stream", "ce_stream_symmetric", "choose_block", "supcon_stream",
           "supcon_stream_groups"]
