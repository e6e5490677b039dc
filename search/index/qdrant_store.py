"""What the Qdrant backend shares between building and searching, whichever Qdrant runs it: the
collection's layout, point ids, BM25 sparse vectors, and what an engine (the Qdrant behind qdrant-client,
or Qdrant Edge in process) must do for the mirror and the searches.

Layout of a collection (one per index; `--rebuild` fills a new one and the engine switches queries to it
atomically): a sparse vector "bm25" per passage holding this project's jieba/stemmed BM25 tokens, each
weighted with the full BM25 term weight (idf x length-normalised tf, search.index.bm25_scoring), so a
query whose sparse vector holds each query token's count scores every passage with exactly the default
backend's BM25 (a dot product); the same vector holds the passage's window field (search.index.bm25_window)
under other indices, weighted by the query with the recorded `bm25.window` (an index recorded without one
is searched without it, as the default backend does); one named dense vector per embedding space (dot product over
L2-normalised vectors = cosine); payload path, tags (normalised) and type, each with a keyword index, so
filters apply inside the search, before the top k. Point ids are uuid5 of a passage's key (path, tags,
text, vector key, occurrence), so a rerun or a resumed build writes the same points.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from search.errors import BackendError, IncompatibleIndex
from search.index.backend import BackendSpec
from search.index.bm25_scoring import NONOCCURRENCE_METHODS, BM25Params, idf, term_frequency_component

__all__ = ["BATCH", "LAYOUT_VERSION", "PAYLOAD_FIELDS", "SCROLL", "SPARSE", "Field", "Point", "QdrantEngine", "Sparse", "check_layout",
           "from_sparse", "point_uuid", "query_sparse", "scrolled_ids", "sparse_weights", "target_name", "targets_of", "to_halves"]

SPARSE = "bm25"
LAYOUT_VERSION = 1  # bump when the vectors, weights or payload of a collection change meaning
BATCH = 256  # points per write request
SCROLL = 4096  # point ids per page when listing a collection
PAYLOAD_FIELDS = ("path", "tags", "type")  # each with a keyword index, so filters read an index, not every payload
_NAMESPACE = uuid.UUID("6f1c1b52-7a4e-4c1e-9a53-2f3f0e1d5b15")

Sparse = tuple[list[int], list[float]]  # indices, values
Point = tuple[str, dict[str, Any], dict[str, Any]]  # id, vectors by name, payload


class QdrantEngine(Protocol):
    """The calls the mirror (search.index.qdrant_sync) and the searches (search.index.qdrant_search) make,
    in engine-neutral values. A collection is named: the mirror writes a `target`, queries read a name
    `searched` returns (the alias on a server, the shard folder itself in Qdrant Edge)."""

    spec: BackendSpec

    def live(self, alias: str, root: str) -> tuple[str | None, dict[str, Any] | None]:
        """The collection an incremental build of the index at `root` updates, and its metadata (None: none)."""

    def create(self, target: str, manifest: dict[str, Any], metadata: dict[str, Any]) -> None:
        """A new, empty collection laid out for `manifest`'s spaces."""

    def derive(self, live: str, target: str, metadata: dict[str, Any]) -> str:
        """The collection an incremental build writes (the live one, or a copy of it named `target`)."""

    def existing(self, target: str) -> np.ndarray:
        """The ids of every point, as (n, 2) uint64 halves."""

    def upsert(self, target: str, points: Iterator[Point]) -> None: ...

    def reweigh(self, target: str, batch: list[tuple[str, Sparse]]) -> None:
        """Replace the BM25 sparse vector of known points."""

    def delete(self, target: str, ids: list[str]) -> None: ...

    def finish(self, alias: str, target: str, fresh: bool, live: str | None) -> None:
        """Make what was written durable and what queries will read; drop what no index state needs."""

    def searched(self, record: dict[str, Any]) -> str:
        """The name queries of a generation read, from its manifest's backend record (opened, checked to exist)."""

    def metadata(self, name: str) -> dict[str, Any] | None: ...

    def query(self, name: str, vector: Any, using: str, k: int, conditions: list[tuple[str, list[str]]],
              ids: list[str] | None) -> list[tuple[Any, float]]:
        """(point id, score) of the k best points by `using`, among those whose payload holds one of the
        values of every condition (and, with `ids`, among those points only), best first."""

    def vectors(self, name: str, ids: list[str], using: str) -> dict[str, Any]:
        """The stored `using` vector by point id (as str; absent or None where a point has none)."""

    def close(self) -> None: ...


def target_name(alias: str, generation_name: str) -> str:
    """The collection (or shard folder) a generation's build fills: ALIAS-<its stamp>."""
    return f"{alias}-{generation_name[len('gen-'):]}"


def targets_of(alias: str, names: Sequence[str]) -> list[str]:
    """Those of `names` that are collections target_name made for `alias` (not those of an alias that
    merely starts with it: search-notes-2 is not a collection of search-notes)."""
    pattern = re.compile(re.escape(alias) + r"-\d{8}-\d{6}-\d{9}-\d+")
    return [name for name in names if pattern.fullmatch(name)]


# ----- the collection's configuration, and refusing one made for other vectors ---------------------

def layout(manifest: dict[str, Any], idf_mode: str, avg_length: float | None, index: str | None = None,
           avg_window_length: float | None = None) -> dict[str, Any]:
    """What a collection's metadata records: what its vectors mean, and the index folder that writes it."""
    models = {space: {"name": info["name"], "identity": info["identity"], "dim": info["dim"]}
              for space, info in manifest["models"].items()}
    return {"layout": LAYOUT_VERSION, "models": models, "bm25": manifest["bm25"], "idf": idf_mode,
            "avg_length": avg_length, "avg_window_length": avg_window_length, "index": index}


def check_layout(spec: BackendSpec, collection: str, found: dict[str, Any] | None, manifest: dict[str, Any]) -> None:
    """Refuse a collection whose vectors come from other models or dimensions, or another layout."""
    if not found or found.get("layout") != LAYOUT_VERSION:
        raise IncompatibleIndex(f"collection {collection} at {spec.where()} was not made by this version of `search` "
                                "(or by it at all): choose another --collection, or run `search index --rebuild` to replace it")
    wanted = layout(manifest, found.get("idf", "client"), None)["models"]
    if found.get("models") != wanted:
        def named(models: dict[str, Any]) -> str:
            return ", ".join(f"{space}: {info['name']} ({info['dim']}-dim)" for space, info in sorted(models.items())) or "none (keyword-only)"

        raise IncompatibleIndex(f"collection {collection} at {spec.where()} holds vectors of {named(found.get('models') or {})}, "
                                f"this index uses {named(wanted)}: run `search index --rebuild` or choose another --collection")


def check_bm25(params: BM25Params, idf_mode: str) -> None:
    if idf_mode == "server" and params.method != "lucene":
        raise BackendError(f"--qdrant-idf server computes Lucene's IDF, not {params.method}'s: use BM25 method lucene or --qdrant-idf client")
    if params.method in NONOCCURRENCE_METHODS:
        raise BackendError(f"BM25 method {params.method} adds a score to passages without the query's terms, which a "
                           "sparse vector cannot: the qdrant backend takes lucene, robertson or atire")


# ----- point ids --------------------------------------------------------------------------------

def point_uuid(path: str, tags: Sequence[str], text: str, vector_key: int, occurrence: int) -> uuid.UUID:
    """The id of a passage's point: the same passage (and vector) gets the same id in every build."""
    return uuid.uuid5(_NAMESPACE, "\0".join([path, "\x1f".join(sorted(tags)), text, str(vector_key), str(occurrence)]))


def scrolled_ids(page: Callable[[Any], tuple[Sequence[Any], Any]]) -> np.ndarray:
    """Every point id of a collection as (n, 2) halves, from `page(offset) -> (points, next offset)`
    (an engine's scroll, SCROLL ids at a time; the next offset is None after the last page)."""
    found, offset = [np.zeros((0, 2), dtype=np.uint64)], None
    while True:
        points, offset = page(offset)
        found.append(to_halves([point.id for point in points]))
        if offset is None:
            return np.concatenate(found)


def from_sparse(value: Any) -> Any:
    """A vector as an engine returns it: a sparse one as (indices, values), a dense list as it is."""
    return (list(value.indices), list(value.values)) if hasattr(value, "indices") else value


def to_halves(ids: Sequence[str | uuid.UUID]) -> np.ndarray:
    """Point ids as (n, 2) uint64 (high, low 64 bits): 16 bytes a passage for lookups in numpy."""
    out = np.zeros((len(ids), 2), dtype=np.uint64)
    for i, value in enumerate(ids):
        number = (value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))).int
        out[i, 0], out[i, 1] = number >> 64, number & 0xFFFFFFFFFFFFFFFF
    return out


def from_halves(halves: np.ndarray) -> list[str]:
    return [str(uuid.UUID(int=(int(high) << 64) | int(low))) for high, low in halves.tolist()]


# ----- BM25 as sparse vectors -------------------------------------------------------------------

_term_ids: dict[str, int] = {}
_WINDOW_MARK = "\x00window\x00"  # before a token, it hashes the window field's index apart from the token's own


def term_id(token: str) -> int:
    """A token's sparse index: 32 bits of its hash, the same in every build and process (a collision
    merges two terms' weights; at a million terms about a hundred pairs collide)."""
    found = _term_ids.get(token)
    if found is None:
        found = int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=4).digest(), "little")
        if len(_term_ids) < 2_000_000:
            _term_ids[token] = found
    return found


def window_term_id(token: str) -> int:
    """A token's sparse index in a passage's window field: another hash than its own field's, so the
    two fields never share an index (nor, with server IDF, a document frequency)."""
    return term_id(_WINDOW_MARK + token)


def _sparse(indices: np.ndarray, values: np.ndarray) -> tuple[list[int], list[float]]:
    """Sorted unique indices with the values of equal indices summed (hash collisions)."""
    unique, where = np.unique(indices, return_inverse=True)
    summed = np.zeros(len(unique), dtype=np.float64)
    np.add.at(summed, where, values)
    keep = summed > 0
    return unique[keep].tolist(), summed[keep].tolist()


@dataclass(frozen=True)
class Field:
    """What scores the postings of one BM25 field (a passage's own tokens, or its window's): each
    token's idf (None when the server applies IDF) and the field's mean length."""

    idf_of: dict[str, float] | None
    avg_length: float


def sparse_weights(tokens: Sequence[str], params: BM25Params, own: Field, window: Sequence[str] = (), window_field: Field | None = None) -> Sparse:
    """A passage's BM25 sparse vector: each distinct token's idf x tf component, the posting score the
    default backend stores for it, and its window's (search.index.bm25_window) under the token's
    window index (`window_term_id`), so that the server's IDF counts each field's own document
    frequencies. `query_sparse` weighs the window's indices with `params.window`."""
    indices, weights = _postings(tokens, params, own, term_id)
    if params.window and window_field is not None and window:
        more, more_weights = _postings(window, params, window_field, window_term_id)
        indices, weights = np.concatenate([indices, more]), np.concatenate([weights, more_weights])
    return _sparse(indices, weights)


def _postings(tokens: Sequence[str], params: BM25Params, field: Field, index_of: Callable[[str], int]) -> tuple[np.ndarray, np.ndarray]:
    """(sparse indices, posting scores) of one field's tokens."""
    counts = Counter(tokens)
    tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    weights = term_frequency_component(params, tf, np.float64(len(tokens)), field.avg_length)
    if field.idf_of is not None:
        weights = weights * np.fromiter((field.idf_of[token] for token in counts), dtype=np.float64, count=len(counts))
    return np.fromiter((index_of(token) for token in counts), dtype=np.int64, count=len(counts)), weights


def idf_table(df: dict[str, int], n: int, params: BM25Params) -> dict[str, float]:
    return {token: idf(params, count, n) for token, count in df.items()}


def query_sparse(tokens: Sequence[str], window: float = 0.0) -> tuple[list[int], list[float]]:
    """The query's sparse vector: each token's count (repeated query tokens count once per occurrence,
    as the default backend scores them), and `window` times it at the token's window index."""
    counts = Counter(tokens)
    if not counts:
        return [], []
    indices = np.fromiter((term_id(token) for token in counts), dtype=np.int64, count=len(counts))
    values = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    if window:
        indices = np.concatenate([indices, np.fromiter((window_term_id(token) for token in counts), dtype=np.int64, count=len(counts))])
        values = np.concatenate([values, window * values])
    return _sparse(indices, values)
