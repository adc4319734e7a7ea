"""Where medfusion keeps what later runs over unchanged files reuse (image verification records, ...)."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "MEDFUSION_CACHE"


def cache_root(directory: str | Path | None = None) -> Path:
    """``directory`` when given, else ``$MEDFUSION_CACHE``, else ``$XDG_CACHE_HOME/medfusion`` (default
    ``~/.cache/medfusion``), as the Hugging Face and torch hub caches are found."""
    if directory is not None:
        return Path(directory).expanduser()
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "medfusion"
