"""Where lookalike keeps what it can rebuild (ONNX exports, measured precisions)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$LOOKALIKE_CACHE_DIR``, else ``$XDG_CACHE_HOME/lookalike``, else ``~/.cache/lookalike``."""
    if os.environ.get("LOOKALIKE_CACHE_DIR"):
        return Path(os.environ["LOOKALIKE_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "lookalike"
