"""What a search backend is: the stores that answer BM25 and dense candidate searches for a generation.

The build pipeline (files -> passages, tokens, vectors -> a generation in the index folder) is the same
for every backend; a backend is where a generation's passages are *searched*. The default, "embedded",
reads the generation's own bm25s-style score matrices and FAISS indexes; "qdrant" mirrors the generation
into a Qdrant collection (search.index.qdrant_store). The engine speaks only `SearchBackend`, so a
third backend is a new module plus a line in search.index.backends.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from search.errors import SearchError
from search.index.dense import passage_rows

__all__ = ["BACKENDS", "SPEC_KEYS", "BackendSpec", "SearchBackend", "Selection", "SpaceMembers"]

BACKENDS = ("embedded", "qdrant")
LOCATION_KEYS = ("url", "path", "edge")  # where a Qdrant runs: exactly one of them is set
SPEC_KEYS = ("kind", *LOCATION_KEYS, "collection", "idf")  # what backend.json and a manifest record
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")


@dataclass(frozen=True)
class BackendSpec:
    """Which backend an index folder searches with, recorded in its backend.json at the first build so
    that query, stats, watch, serve and Engine.open need no flags. The API key is never recorded:
    it comes from SEARCH_QDRANT_API_KEY."""

    kind: str = "embedded"
    url: str | None = None  # a Qdrant server or cluster (http://host:6333)
    path: str | None = None  # qdrant-client's local mode (pure Python): a folder, or ":memory:"
    edge: str | None = None  # Qdrant Edge (Qdrant's engine in process): a folder of shards
    collection: str | None = None  # the alias queries read (the collection behind it changes on --rebuild)
    # BM25 IDF: "client" weights every posting exactly as the default backend (a corpus change re-weights
    # every point); "server" lets Qdrant apply IDF (Modifier.IDF) and keeps the mean length until a
    # rebuild, so an edit writes only the points that changed
    idf: str = "client"

    def __post_init__(self) -> None:
        if self.kind not in BACKENDS:
            raise SearchError(f"unknown backend {self.kind!r}: choose {' or '.join(BACKENDS)}")
        if self.collection is not None and not _COLLECTION_NAME.fullmatch(self.collection):
            raise SearchError(f"--collection {self.collection!r}: use letters, digits, '-' and '_' only")
        if self.idf not in ("client", "server"):
            raise SearchError(f"--qdrant-idf {self.idf!r}: choose client or server")

    def located(self) -> "BackendSpec":
        """Itself, once it says where the backend is (a build checks this before it starts)."""
        if self.kind != "embedded" and sum(map(bool, (self.url, self.path, self.edge))) != 1:
            raise SearchError("the qdrant backend needs either --qdrant-url URL (a server; env SEARCH_QDRANT_URL), "
                              "--qdrant-edge DIR (Qdrant Edge, in process) or --qdrant-path DIR (qdrant-client's local mode): one of them")
        return self

    @property
    def engine(self) -> str:
        """Which Qdrant runs the collection: "server", "edge" (search.index.qdrant_edge_engine) or "local"."""
        return "server" if self.url else "edge" if self.edge else "local"

    @classmethod
    def from_options(cls, backend: str | None, qdrant_url: str | None, qdrant_path: str | None, collection: str | None,
                     qdrant_idf: str = "client", qdrant_edge: str | None = None) -> "BackendSpec | None":
        """What `search index` / `search eval` options ask for; None (as recorded in the index) when none is given."""
        kind, url, path, edge = backend, qdrant_url, qdrant_path, qdrant_edge
        if kind is None and (path or edge or collection):
            kind = "qdrant"  # --qdrant-path, --qdrant-edge or --collection say which backend (SEARCH_QDRANT_URL alone does not)
        if kind is None or kind == "embedded":
            return None if kind is None else cls()
        # a local folder is recorded absolute: queries may run from another working directory
        return cls("qdrant", url=None if path or edge else url, path=os.path.abspath(path) if path else None,
                   edge=os.path.abspath(edge) if edge else None, collection=collection, idf=qdrant_idf)

    @property
    def api_key(self) -> str | None:
        return os.environ.get("SEARCH_QDRANT_API_KEY") or None

    def location(self) -> dict[str, str]:
        """The one of url, path and edge that is set, by name (what a manifest records of where)."""
        return {key: getattr(self, key) for key in LOCATION_KEYS if getattr(self, key)}

    def where(self) -> str:
        """The server or local folder, for messages."""
        return self.url or (f"Qdrant Edge folder {self.edge}" if self.edge else f"local folder {self.path}")

    def to_json(self) -> str:
        return json.dumps({key: value for key, value in asdict(self).items() if value is not None and (key != "idf" or self.kind != "embedded")}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "BackendSpec":
        return cls.from_record(json.loads(text))

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "BackendSpec":
        """The spec a recorded dict names (backend.json, a manifest's "backend"); other keys are left out."""
        return cls(**{key: record[key] for key in SPEC_KEYS if key in record})


@dataclass(frozen=True)
class Selection:
    """A filter as both backends need it: `mask[passage id]` for a store that reads the generation, and
    the same rule as payload conditions (each given field must hold) for one that filters server-side."""

    mask: np.ndarray
    tags: tuple[str, ...] = field(default=())  # normalised; any of them
    types: tuple[str, ...] = field(default=())  # normalised suffixes; any of them
    # The indexed paths the --path patterns allow, listed only when a backend asks (`paths`): a store
    # that reads the mask never pays for the list (None: any path).
    matching_paths: Callable[[], tuple[str, ...]] | None = None

    @cached_property
    def paths(self) -> tuple[str, ...] | None:
        return None if self.matching_paths is None else self.matching_paths()


Ranking = tuple[np.ndarray, np.ndarray]  # passage ids best first, their scores (search.query.candidates)


class SearchBackend(Protocol):
    """The searches the engine runs on one generation. Passage ids are the generation's."""

    members: "SpaceMembers"

    def bm25_top(self, tokens: Sequence[str], k: int, selection: Selection | None) -> Ranking:
        """The k best BM25 passages (score > 0) allowed by `selection`, best first."""

    def bm25_scores(self, tokens: Sequence[str], pids: np.ndarray) -> np.ndarray:
        """The BM25 score of each of `pids` (0 where no query token occurs)."""

    def dense_search(self, space: str, vector: np.ndarray, k: int, selection: Selection | None) -> Ranking:
        """The k nearest passages of one embedding space by cosine, among those `selection` allows."""

    def dense_scores(self, space: str, vector: np.ndarray, pids: np.ndarray) -> np.ndarray:
        """The cosine of each of `pids` (all members of `space`)."""

    def dense_vectors(self, space: str, pids: np.ndarray) -> np.ndarray:
        """The stored unit vector of each of `pids` (all members of `space`), one row each."""

    def close(self) -> None:
        ...


class SpaceMembers:
    """Which passages each embedding space holds (from the generation's dense ids), for every backend."""

    def __init__(self, ids: dict[str, np.ndarray], n_passages: int) -> None:
        """`ids`: each space's passage id per row of its dense index (-1: a retired row)."""
        self.ids = {space: space_ids[space_ids >= 0] for space, space_ids in ids.items()}  # the members
        self.rows = {space: passage_rows(space_ids, n_passages) for space, space_ids in ids.items()}

    def spaces(self) -> list[str]:
        return list(self.ids)

    def size(self, space: str, mask: np.ndarray | None = None) -> int:
        """Passages of `space` (allowed by `mask`)."""
        return len(self.ids[space]) if mask is None else int(mask[self.ids[space]].sum())

    def holds(self, space: str, pids: np.ndarray) -> np.ndarray:
        return self.rows[space][pids] >= 0
