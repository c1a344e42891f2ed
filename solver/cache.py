"""Where tme keeps what it builds once and reuses: compiled reaction kernels, pint's parsed unit
definitions. ``$TME_CACHE_DIR``, else ``$XDG_CACHE_HOME/tme``, else ``~/.cache/tme``."""

from __future__ import annotations

import os
from pathlib import Path


def directory() -> Path:
    """The cache directory (not created here)."""
    if os.environ.get("TME_CACHE_DIR"):
        return Path(os.environ["TME_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tme"
