"""``python -m nce_ref.cli``: the ``nce-ref`` command."""

import sys

from . import main

sys.exit(main())
