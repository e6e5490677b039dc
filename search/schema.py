"""The records that flow between stages: files (SourceFile) -> Document -> Passage (a query turns passages into Hits)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SourceFile:
    """A file found by the loader, before it is read (enough to tell whether it changed)."""

    path: str  # absolute, as the index stores it
    size: int
    mtime: float
    kind: str  # a value of loading.SUPPORTED_SUFFIXES: "markdown" | "text" | "jsonl" | "json" | "csv" | "tsv" | "pdf" | "html" | ...


@dataclass
class Document:
    """One document's decoded text, ready for chunking: a whole note, a record of a dataset, a PDF page."""

    path: str
    text: str
    kind: str  # "markdown" is chunked as markdown, every other kind as plain text
    metadata: dict[str, Any] = field(default_factory=dict)
    line_start: int = 1  # 1-based line of the source file where `text` begins
    # Last line of the source file the text came from, where the text's own lines do not map onto
    # the file's (a record's fields joined): passages then report lines clamped into the range.
    line_end: int | None = None
    # (level, title) of the headings the text sits under though they are not in it: a notebook cell
    # under the markdown headings of the cells before it. Passages' heading paths start with them.
    headings: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Passage:
    """A retrievable unit of text with enough context to show and cite it."""

    path: str
    text: str
    heading_path: list[str] = field(default_factory=list)
    line_start: int = 1  # 1-based, inclusive, in the source file
    line_end: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Skipped:
    """A file the loader could not use, and why (shown to the user, never fatal)."""

    path: str
    reason: str
