"""What a search returns: ranked `Hit`s, and a `SearchResult` that says what happened."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from search.ingest.loading import LINELESS_KINDS, kind_of
from search.query.query import Query
from search.schema import Passage

__all__ = ["Hit", "SearchResult"]


@dataclass
class Hit:
    """A ranked passage with the evidence each retriever gave for it (None where it did not retrieve it)."""

    path: str
    heading_path: list[str]
    text: str
    line_start: int
    line_end: int
    metadata: dict[str, Any]
    score: float
    bm25_rank: int | None = None
    bm25_score: float | None = None
    dense_rank: int | None = None
    dense_score: float | None = None  # cosine in its space, from the space's centre where it is centred (search.query.centring)
    # the multilingual model's cosine where it re-read the hit (a query that crossed languages)
    reread_score: float | None = None
    # what the hub rule took off its cosine before fusion, where it applied (search.query.hubness)
    hub_penalty: float | None = None
    passage_id: int = -1
    # where the other passages with the same text (after normalisation) are, best first: a search
    # that collapses duplicates returns one hit per text
    duplicates: list[str] = field(default_factory=list)

    @property
    def location(self) -> str:
        return self.location_of(self)

    @staticmethod
    def location_of(passage: "Hit | Passage") -> str:
        """Where a passage is: path:LINE for notes and record lines, path#INDEX for JSON records and
        dataset rows, path p.N for PDF pages, path cell N for notebook cells, the path alone for web
        pages and Word files (lines of extracted text are not the file's)."""
        path, metadata = passage.path, passage.metadata
        if "page" in metadata:
            return f"{path} p.{metadata['page']}"
        if "cell" in metadata:
            return f"{path} cell {metadata['cell']}"
        if "record" in metadata:
            return f"{path}#{metadata['record']}"
        if kind_of(path) in LINELESS_KINDS:
            return path
        return f"{path}:{passage.line_start}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "location": self.location}


@dataclass
class SearchResult:
    query: Query
    hits: list[Hit] = field(default_factory=list)
    filtered_out: str | None = None  # why no passage passed the filters, when none did
    reread_by: str | None = None  # the multilingual model that re-read the top (a query that crossed languages)
    reread_skipped: str | None = None  # why it was not, where it should have been

    @property
    def mode(self) -> str:
        """The mode that ran (bm25 on a keyword-only index, whatever was asked)."""
        return self.query.mode

    @property
    def notice(self) -> str | None:
        """What a person should be told about how the query ran, if anything."""
        return "\n".join(note for note in (self.query.notice, self.reread_skipped) if note) or None

    # a result reads as its hits: `for hit in engine.search(...)`, `engine.search(...)[0]`
    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, index: int) -> Hit:
        return self.hits[index]

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query.text,
            "mode": self.mode,
            "notice": self.notice,
            "filtered_out": self.filtered_out,
            "reread_by": self.reread_by,
            "hits": [hit.to_dict() for hit in self.hits],
        }
