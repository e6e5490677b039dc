"""The user's private cache folder: int8 model exports, jieba's compact dictionary."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root", "trusted"]


def cache_root() -> Path:
    """SEARCH_CACHE, else XDG_CACHE_HOME/search, else ~/.cache/search."""
    base = os.environ.get("SEARCH_CACHE")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "search"


def trusted(folder: Path) -> bool:
    """Whether this user owns `folder` and nobody else can write to it: a cache anyone could plant
    would change what every user of the machine indexes."""
    try:
        info = folder.stat()
    except OSError:
        return False
    return info.st_uid == os.getuid() and not info.st_mode & 0o022
