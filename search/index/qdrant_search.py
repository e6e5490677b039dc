"""The Qdrant backend's searches: BM25 as a sparse-vector query, dense per space as a named-vector
query, filters as payload conditions inside the query (before the top k), through a QdrantEngine
(search.index.qdrant_store): the alias on a server, the generation's own shard in Qdrant Edge.

Hits come back as point ids and are mapped to the generation's passage ids through its points.npy, so
everything after retrieval (fusion, passages, hits) is the engine's own, as for the default backend.
A point the generation does not know (a collection a newer build already changed) is skipped.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from search.errors import BackendError
from search.index.backend import BackendSpec, Ranking, Selection, SpaceMembers
from search.index.bm25_scoring import BM25Params
from search.index.dense import DenseIndex
from search.index.folder import Generation
from search.index.qdrant_store import SPARSE, QdrantEngine, check_layout, from_halves, query_sparse, to_halves

__all__ = ["QdrantBackend"]

EMPTY_RANKING: Ranking = (np.zeros(0, dtype=np.int64), np.zeros(0))
TIE_ROOM = 16  # points asked past the k-th, so that ties there are cut as the default backend cuts them
TIE_LIMIT = 8192  # ... doubled while the tie runs past them, up to this many


class QdrantBackend:
    """Searches an index's Qdrant collection (see search.index.qdrant_store for its layout)."""

    def __init__(self, spec: BackendSpec, generation: Generation, manifest: dict[str, Any], n_passages: int, engine: QdrantEngine) -> None:
        self.spec, self.engine = spec, engine
        self.server_idf = manifest["backend"].get("idf") == "server"
        self.window = BM25Params.recorded(manifest["bm25"]).window  # the weight of each passage's window field
        try:
            ids = {space: DenseIndex.load_ids(generation.dense_prefix(space)) for space in manifest["models"]}
            self.members = SpaceMembers(ids, n_passages)
            points = np.load(generation.point_ids_file)
            if len(points) != n_passages:
                raise BackendError(f"{generation.point_ids_file} holds {len(points)} points for {n_passages} passages: run `search index` to rebuild it")
            self._order = np.argsort(points[:, 0], kind="stable")
            self._high = points[self._order, 0]
            self._points = points
            self.name = engine.searched(manifest["backend"])
            check_layout(spec, self.name, engine.metadata(self.name), manifest)
        except BaseException:
            engine.close()
            raise

    def close(self) -> None:
        self.engine.close()

    # ----- the searches -------------------------------------------------------------------------

    def bm25_top(self, tokens: Sequence[str], k: int, selection: Selection | None) -> Ranking:
        indices, values = query_sparse(tokens, self.window)
        if not indices or k <= 0:
            return EMPTY_RANKING
        return self._query((indices, values), SPARSE, k, selection)

    def bm25_scores(self, tokens: Sequence[str], pids: np.ndarray) -> np.ndarray:
        indices, values = query_sparse(tokens, self.window)
        if not indices or len(pids) == 0:
            return np.zeros(len(pids))
        if self.server_idf:  # only the server knows the IDF: ask it, restricted to these points
            found, scores = self._query((indices, values), SPARSE, len(pids), None, ids=from_halves(self._points[pids]))
            by_pid = dict(zip(found.tolist(), scores.tolist()))
            return np.array([by_pid.get(pid, 0.0) for pid in pids.tolist()], dtype=np.float64)
        return _sparse_dots(np.asarray(indices, dtype=np.int64), np.asarray(values, dtype=np.float64), self._vectors(SPARSE, pids))

    def dense_search(self, space: str, vector: np.ndarray, k: int, selection: Selection | None) -> Ranking:
        if k <= 0:
            return EMPTY_RANKING
        return self._query(np.asarray(vector, dtype=np.float32).tolist(), space, k, selection)

    def dense_scores(self, space: str, vector: np.ndarray, pids: np.ndarray) -> np.ndarray:
        found = self._vectors(space, pids)
        scores = np.zeros(len(pids), dtype=np.float64)
        have = [i for i, v in enumerate(found) if v is not None]
        if have:  # one matrix product, not one small one per candidate
            scores[have] = np.array([found[i] for i in have], dtype=np.float32) @ np.asarray(vector, dtype=np.float32)
        return scores

    def dense_vectors(self, space: str, pids: np.ndarray) -> np.ndarray:
        found = self._vectors(space, pids)
        dim = next((len(vector) for vector in found if vector is not None), 0)
        # a point without the vector (none should lack it) is the origin: near nothing, so no hub
        return np.array([np.zeros(dim) if vector is None else vector for vector in found], dtype=np.float32).reshape(len(pids), dim)

    # ----- helpers ------------------------------------------------------------------------------

    def _query(self, vector: Any, using: str, k: int, selection: Selection | None, ids: list[str] | None = None) -> Ranking:
        """The k best, best first, lower passage id on ties (as the default backend). Qdrant returns any
        of the points that tie at the k-th score (BM25 ties often: short passages sharing one term), so
        it is asked for more until the tie ends before its last point."""
        conditions = self._conditions(selection)
        limit = k if ids is not None else k + TIE_ROOM
        while True:
            found = self.engine.query(self.name, vector, using, limit, conditions, ids)
            if ids is not None or len(found) < limit or found[k - 1][1] != found[-1][1] or limit >= TIE_LIMIT:
                break
            limit = min(2 * limit, TIE_LIMIT)
        pids = self._pids([point_id for point_id, _ in found])
        scores = np.array([score for _, score in found], dtype=np.float64)
        keep = pids >= 0
        pids, scores = pids[keep], scores[keep]
        order = np.lexsort((pids, -scores))[:k]
        return pids[order], scores[order]

    def _vectors(self, using: str, pids: np.ndarray) -> list[Any]:
        """The stored `using` vector of each passage (None where it has none): candidates the search did not
        return are scored here, by point id, rather than by a second search over the whole collection."""
        names = from_halves(self._points[pids])
        by_id = self.engine.vectors(self.name, names, using)
        return [by_id.get(name) for name in names]

    def _pids(self, names: list[Any]) -> np.ndarray:
        """Passage ids of point ids (-1 for a point this generation does not hold)."""
        if not names:
            return np.zeros(0, dtype=np.int64)
        halves = to_halves(names)
        at = np.searchsorted(self._high, halves[:, 0])
        at = np.minimum(at, max(len(self._high) - 1, 0))
        pids = self._order[at] if len(self._order) else np.zeros(len(names), dtype=np.int64)
        same = (len(self._order) > 0) & (self._points[pids, 0] == halves[:, 0]) & (self._points[pids, 1] == halves[:, 1])
        return np.where(same, pids, -1).astype(np.int64)

    @staticmethod
    def _conditions(selection: Selection | None) -> list[tuple[str, list[str]]]:
        """The selection as payload conditions (keyword indexes on path, tags, type): each must hold one of its values."""
        if selection is None:
            return []
        fields = (("path", selection.paths), ("tags", selection.tags or None), ("type", selection.types or None))
        return [(key, list(values)) for key, values in fields if values is not None]


def _sparse_dots(indices: np.ndarray, values: np.ndarray, vectors: list[Any]) -> np.ndarray:
    """The dot product of the query's sparse vector (sorted unique `indices`) with each stored one (None: 0),
    in a few array operations: a Python loop over every term of ~100 candidates cost ~12 ms a query."""
    lengths = np.array([len(vector[0]) if vector is not None else 0 for vector in vectors], dtype=np.int64)
    if not lengths.sum():
        return np.zeros(len(vectors))
    stored = [vector for vector in vectors if vector is not None]
    terms = np.fromiter((i for vector in stored for i in vector[0]), dtype=np.int64, count=int(lengths.sum()))
    weights = np.fromiter((w for vector in stored for w in vector[1]), dtype=np.float64, count=int(lengths.sum()))
    at = np.minimum(np.searchsorted(indices, terms), len(indices) - 1)
    match = indices[at] == terms
    rows = np.repeat(np.arange(len(vectors)), lengths)
    return np.bincount(rows[match], weights=weights[match] * values[at[match]], minlength=len(vectors))
