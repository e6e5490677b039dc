"""Query filters on path, file type and front-matter tags, applied before the top-k cut.

A filter is evaluated once per query into a boolean mask over passage ids: each retriever only
ranks allowed passages, so a filtered query still returns k hits whenever k passages match.

Matching is decided per *facet row* (a file: path, type, tags), not per passage, and the rows are
stored at build time (`store.write_facets`) so a query never parses passages to filter them.

Semantics (`Filters`):

* values of one field OR together, fields AND together:
  ``Filters(paths=["notes/**", "*.txt"], tags=["机器学习"])`` = (under notes/ or a .txt) and tagged 机器学习;
* paths are globs where ``**`` spans folders. A relative pattern matches at any folder boundary of
  the stored absolute path (gitignore-like: ``notes/**`` matches ``/home/u/kb/notes/a/b.md``), an
  absolute one from the root; ``./x`` and ``~/x`` are made absolute first. A pattern also matches
  every file under a folder it matches (``notes`` = ``notes/**``), as in gitignore;
* tags match front-matter ``tags`` or ``categories`` exactly after NFKC and case folding
  (``ＡＩ`` = ``ai``);
* types are the file suffix without its dot, case-insensitive, with a few aliases (md = markdown).
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from wcmatch import glob

from search.errors import SearchError
from search.schema import Passage

__all__ = ["Filters", "Facets", "FilterError", "facet_rows", "file_type", "normalise_tag", "normalise_type"]

# suffix spellings that name the same type; the key is what users may type, the value what is stored
TYPE_ALIASES = {"markdown": "md", "mdown": "md", "mkd": "md", "text": "txt", "htm": "html", "yml": "yaml"}
TAG_KEYS = ("tags", "categories")
# BRACE: `*.{md,txt}`; DOTGLOB: `*` may match a leading dot like any other character.
_GLOB_FLAGS = glob.GLOBSTAR | glob.BRACE | glob.DOTGLOB


class FilterError(SearchError):
    """A filter value that cannot be used (empty, or a malformed glob)."""


def normalise_tag(tag: str) -> str:
    """The form tags are compared in: NFKC (full-width → ASCII) then case-folded."""
    return unicodedata.normalize("NFKC", str(tag)).casefold().strip()


def normalise_type(value: str) -> str:
    """`.MD`, `md`, `Markdown` → `md`."""
    value = value.strip().lower().lstrip(".")
    return TYPE_ALIASES.get(value, value)


def file_type(path: str) -> str:
    """A file's type: its suffix without the dot (normalised), "" when it has none."""
    return normalise_type(os.path.splitext(path)[1])


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


@dataclass
class Filters:
    """What a query may return; an empty field does not restrict. Each field takes a string or a list."""

    paths: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.paths, self.tags, self.types = _as_list(self.paths), _as_list(self.tags), _as_list(self.types)
        for name, option in (("paths", "--path"), ("tags", "--tag"), ("types", "--type")):
            if any(not str(value).strip() for value in getattr(self, name)):
                raise FilterError(f"empty {option} filter: give a value, or leave the option out")

    def __bool__(self) -> bool:
        return bool(self.paths or self.tags or self.types)


def _path_patterns(patterns: Sequence[str]) -> list[str]:
    """Anchor each pattern as documented above, for wcmatch to match against absolute paths."""
    anchored = []
    for pattern in patterns:
        folder_only = pattern.endswith("/")
        if pattern.startswith(("./", "../", "~")) or pattern in (".", ".."):
            # relative to where the user stands: escape that part so `[` in a folder name is literal
            head, tail = _split_literal_prefix(pattern)
            pattern = glob.escape(os.path.abspath(os.path.expanduser(head))) + tail
        elif not pattern.startswith("/"):
            pattern = "**/" + pattern
        pattern = pattern.rstrip("/") or "/"
        if not pattern.endswith("/**"):
            anchored.append(pattern.rstrip("/") + "/**")  # everything under a matching folder
        if not folder_only:
            anchored.append(pattern)
    return anchored


def _split_literal_prefix(pattern: str) -> tuple[str, str]:
    """(`./a/b`, `/*.md`) for `./a/b/*.md`: the leading folders without glob characters, and the rest."""
    parts = pattern.split("/")
    literal = 0
    while literal < len(parts) and not any(c in parts[literal] for c in "*?[{"):
        literal += 1
    return "/".join(parts[:literal]), ("/" if literal < len(parts) else "") + "/".join(parts[literal:])


class Facets:
    """Per-file facets of a generation and which file each passage belongs to.

    `rows` holds one dict per distinct (path, tags) pair with "path" and "tags" (raw strings, as in
    front matter); `passage_row[i]` is passage i's row. Type is derived from the path when loaded,
    so a new suffix needs no rebuild.
    """

    def __init__(self, rows: list[dict[str, Any]], passage_row: np.ndarray) -> None:
        self.rows = rows
        self.passage_row = np.asarray(passage_row, dtype=np.int32)
        self.paths = [row["path"] for row in rows]
        self.types = [file_type(path) for path in self.paths]
        self.tags = [{normalise_tag(tag) for tag in row["tags"]} for row in rows]
        self._path_masks: dict[tuple[str, ...], np.ndarray] = {}

    @classmethod
    def from_passages(cls, passages: Iterable[Passage]) -> "Facets":
        return cls(*facet_rows(passages))

    def __len__(self) -> int:
        return len(self.passage_row)

    def row_masks(self, filters: Filters) -> dict[str, np.ndarray]:
        """For each field that is set, which facet rows it allows."""
        masks = {}
        if filters.paths:
            masks["path"] = self._path_mask(tuple(filters.paths))
        if filters.tags:
            wanted = {normalise_tag(tag) for tag in filters.tags}
            masks["tag"] = np.array([not wanted.isdisjoint(tags) for tags in self.tags], dtype=bool)
        if filters.types:
            wanted = {normalise_type(value) for value in filters.types}
            masks["type"] = np.array([kind in wanted for kind in self.types], dtype=bool)
        return {name: mask.reshape(len(self.rows)) for name, mask in masks.items()}

    def _path_mask(self, patterns: tuple[str, ...]) -> np.ndarray:
        """Which rows a set of path patterns allows, cached: globbing costs ~6 µs a file, the
        rest of a filter well under 1 µs (benchmarks/filters.py), and callers repeat filters."""
        if patterns not in self._path_masks:
            try:
                matcher = glob.compile(_path_patterns(patterns), flags=_GLOB_FLAGS)
            except Exception as error:  # wcmatch raises ValueError & co. on malformed patterns
                raise FilterError(f"bad --path pattern {' '.join(patterns)}: {error}") from None
            if len(self._path_masks) >= 64:
                self._path_masks.clear()
            self._path_masks[patterns] = np.array([matcher.match(path) for path in self.paths], dtype=bool)
        return self._path_masks[patterns]

    def mask(self, filters: Filters) -> np.ndarray:
        """allowed[passage id]: whether the passage passes every filter field."""
        allowed_rows = np.ones(len(self.rows), dtype=bool)
        for mask in self.row_masks(filters).values():
            allowed_rows &= mask
        return allowed_rows[self.passage_row] if len(self.passage_row) else np.zeros(0, dtype=bool)

    def why_empty(self, filters: Filters) -> str:
        """Which filter fields match no file on their own (for the "no passages match" message)."""
        options = {"path": ("--path", filters.paths), "tag": ("--tag", filters.tags), "type": ("--type", filters.types)}
        empty = [f"{options[name][0]} {' / '.join(options[name][1])}" for name, mask in self.row_masks(filters).items() if not mask.any()]
        return f"no file matches {', '.join(empty)}" if empty else "no file matches all of them together"


def facet_rows(passages: Iterable[Passage]) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Facet rows and each passage's row, reading `passages` once in order (so a streaming build can
    pass a generator). Rows are keyed by (path, tags), which is per file for files: front matter is
    the same for every passage of a file; documents sharing a path keep their own tags."""
    index: dict[tuple[str, tuple[str, ...]], int] = {}
    rows: list[dict[str, Any]] = []
    passage_row: list[int] = []
    for passage in passages:
        values = [passage.metadata.get(key) for key in TAG_KEYS]
        tags = tuple(dict.fromkeys(str(tag) for value in values for tag in (value if isinstance(value, list) else [value]) if tag is not None))
        key = (passage.path, tags)
        if key not in index:
            index[key] = len(rows)
            rows.append({"path": passage.path, "tags": list(tags)})
        passage_row.append(index[key])
    return rows, np.asarray(passage_row, dtype=np.int32)
