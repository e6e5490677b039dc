"""Facets: each passage's file, type and front-matter tags, stored at build time so that a query
filter becomes a boolean mask over passage ids without parsing a passage.

Matching is decided per *facet row* (a file: path, type, tags), not per passage. Semantics (see
`search.query.filters.Filters`):

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

import json
import os
import unicodedata
from array import array
from functools import cached_property
from typing import Any, Iterable, Sequence

import numpy as np
from wcmatch import glob

from search.errors import FilterError
from search.index.folder import Generation
from search.schema import Passage

__all__ = ["FacetWriter", "Facets", "document_numbers", "facet_rows", "file_type", "normalise_tag", "normalise_type", "read_document_starts",
           "read_facets"]

# suffix spellings that name the same type; the key is what users may type, the value what is stored
TYPE_ALIASES = {"markdown": "md", "mdown": "md", "mkd": "md", "text": "txt", "htm": "html", "yml": "yaml"}
TAG_KEYS = ("tags", "categories")
# BRACE: `*.{md,txt}`; DOTGLOB: `*` may match a leading dot like any other character.
_GLOB_FLAGS = glob.GLOBSTAR | glob.BRACE | glob.DOTGLOB


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

    def __init__(self, rows: list[dict[str, Any]], passage_row: np.ndarray, document_starts: np.ndarray | None = None) -> None:
        self.rows = rows
        self.passage_row = np.asarray(passage_row, dtype=np.int32)
        # whether each passage begins a document (a file may hold many: records, pages, cells); None
        # in a generation written before it was recorded
        self.document_starts = document_starts
        self.paths = [row["path"] for row in rows]
        self._path_masks: dict[tuple[str, ...], np.ndarray] = {}

    # types and tags are worked out when a filter first asks: a build that carries a generation's facets
    # over reads them only to copy runs (20k files: 0.03 s of a one-note re-index)
    @cached_property
    def types(self) -> list[str]:
        return [file_type(path) for path in self.paths]

    @cached_property
    def tags(self) -> list[set[str]]:
        return [{normalise_tag(tag) for tag in row["tags"]} for row in self.rows]

    def __len__(self) -> int:
        return len(self.passage_row)

    def row_masks(self, paths: Sequence[str] = (), tags: Sequence[str] = (), types: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """For each field that is given, which facet rows it allows."""
        masks = {}
        if paths:
            masks["path"] = self._path_mask(tuple(paths))
        if tags:
            wanted = {normalise_tag(tag) for tag in tags}
            masks["tag"] = np.array([not wanted.isdisjoint(row_tags) for row_tags in self.tags], dtype=bool)
        if types:
            wanted = {normalise_type(value) for value in types}
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

    def mask(self, paths: Sequence[str] = (), tags: Sequence[str] = (), types: Sequence[str] = ()) -> np.ndarray:
        """allowed[passage id]: whether the passage passes every given field."""
        allowed_rows = np.ones(len(self.rows), dtype=bool)
        for mask in self.row_masks(paths, tags, types).values():
            allowed_rows &= mask
        return allowed_rows[self.passage_row] if len(self.passage_row) else np.zeros(0, dtype=bool)

    def why_empty(self, paths: Sequence[str] = (), tags: Sequence[str] = (), types: Sequence[str] = ()) -> str:
        """Which fields match no file on their own (for the "no passages match" message)."""
        options = {"path": ("--path", paths), "tag": ("--tag", tags), "type": ("--type", types)}
        masks = self.row_masks(paths, tags, types)
        empty = [f"{options[name][0]} {' / '.join(options[name][1])}" for name, mask in masks.items() if not mask.any()]
        return f"no file matches {', '.join(empty)}" if empty else "no file matches all of them together"

    def values(self) -> dict[str, list[str]]:
        """The tags, types and folders present, sorted (what a filter can usefully ask for)."""
        tags = sorted({tag for row in self.rows for tag in row["tags"]}, key=normalise_tag)
        folders = sorted({os.path.dirname(path) for path in self.paths})
        return {"tags": list(dict.fromkeys(tags)), "types": sorted(set(self.types) - {""}), "folders": folders}


class FacetWriter:
    """A generation's facets, made as its passages are written: a new passage's from its path and front
    matter, an unchanged file's run from the previous generation's facets (no passage decoded).

    Rows are keyed by (path, tags), which is per file for files: front matter is the same for every
    passage of a file; documents sharing a path keep their own tags."""

    def __init__(self) -> None:
        self._row_of: dict[tuple[str, tuple[str, ...]], int] = {}
        self.rows: list[dict[str, Any]] = []
        self._passage_row = array("i")
        self._starts = array("b")

    def _row(self, path: str, tags: tuple[str, ...]) -> int:
        row = self._row_of.get((path, tags))
        if row is None:
            row = self._row_of[(path, tags)] = len(self.rows)
            self.rows.append({"path": path, "tags": list(tags)})
        return row

    def add(self, passage: Passage, starts_document: bool = True) -> None:
        self._starts.append(starts_document)
        values = [passage.metadata.get(key) for key in TAG_KEYS]
        tags = tuple(dict.fromkeys(str(tag) for value in values for tag in (value if isinstance(value, list) else [value]) if tag is not None))
        self._passage_row.append(self._row(passage.path, tags))

    def add_run(self, previous: "Facets", first: int, count: int) -> None:
        """The previous generation's passages [first, first + count)."""
        old = previous.passage_row[first : first + count]
        if not len(old):
            return
        if previous.document_starts is None:
            raise ValueError("the previous generation does not record where its documents start: read its files again")
        self._starts.extend(previous.document_starts[first : first + count].tolist())
        distinct, seen_at = np.unique(old, return_index=True)
        lookup = np.zeros(int(distinct[-1]) + 1, dtype=np.int32)
        for row in distinct[np.argsort(seen_at)].tolist():  # rows in order of first sight, as `add` numbers them
            lookup[row] = self._row(previous.rows[row]["path"], tuple(previous.rows[row]["tags"]))
        self._passage_row.extend(lookup[old].tolist())

    @property
    def passage_row(self) -> np.ndarray:
        return np.frombuffer(self._passage_row, dtype=np.int32)

    def save(self, generation: Generation) -> None:
        generation.facets_file.write_text(json.dumps({"files": self.rows}, ensure_ascii=False), encoding="utf-8")
        np.save(generation.passage_file_map, self.passage_row)
        np.save(generation.document_starts_file, np.frombuffer(self._starts, dtype=bool))


def facet_rows(passages: Iterable[Passage]) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Facet rows and each passage's row, reading `passages` once in order."""
    writer = FacetWriter()
    for passage in passages:
        writer.add(passage)
    return writer.rows, writer.passage_row


def read_document_starts(generation: Generation) -> np.ndarray | None:
    """Whether each passage begins a document (a file may hold many documents: records, pages, cells);
    None for a generation written before documents were recorded."""
    path = generation.document_starts_file
    return np.load(path) if path.is_file() else None


def document_numbers(generation: Generation) -> np.ndarray | None:
    """Each passage's document, numbered in passage order; None as for `read_document_starts`."""
    starts = read_document_starts(generation)
    return None if starts is None else np.cumsum(starts) - 1


def read_facets(generation: Generation) -> Facets:
    rows = json.loads(generation.facets_file.read_text(encoding="utf-8"))["files"]
    return Facets(rows, np.load(generation.passage_file_map), read_document_starts(generation))
