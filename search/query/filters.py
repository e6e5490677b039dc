"""`Filters`: what a query may return (path globs, front-matter tags, file types), checked once.

Values of one field OR together, fields AND together; `search.index.facets` turns them into a mask
over passage ids before any retriever ranks, so a filtered query still returns k hits whenever k
passages match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from search.errors import FilterError
from search.index.facets import Facets

__all__ = ["Filters"]

_OPTIONS = (("paths", "--path"), ("tags", "--tag"), ("types", "--type"))


def _as_list(value: str | Iterable[str] | None, option: str) -> list[str]:
    if value is None:
        return []
    values = [value] if isinstance(value, str) else list(value)
    for item in values:
        if not isinstance(item, str):
            raise FilterError(f"{option} filter values must be text, not {type(item).__name__}")
        if not item.strip():
            raise FilterError(f"empty {option} filter: give a value, or leave the option out")
    return values


@dataclass
class Filters:
    """What a query may return; an empty field does not restrict. Each field takes a string or a list."""

    paths: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, option in _OPTIONS:
            setattr(self, name, _as_list(getattr(self, name), option))

    def __bool__(self) -> bool:
        return bool(self.paths or self.tags or self.types)

    def mask(self, facets: Facets) -> np.ndarray:
        """allowed[passage id] under these filters."""
        return facets.mask(self.paths, self.tags, self.types)

    def why_empty(self, facets: Facets) -> str:
        return facets.why_empty(self.paths, self.tags, self.types)
