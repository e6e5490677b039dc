"""The Qdrant backend's searches: BM25 as a sparse-vector query, dense per space as a named-vector
query, filters as payload conditions inside the query (before the top k), all through the alias.

Hits come back as point ids and are mapped to the generation's passage ids through its points.npy, so
everything after retrieval (fusion, passages, hits) is the engine's own, as for the default backend.
A point the generation does not know (a collection a newer build already changed) is skipped.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from search.errors import BackendError
from search.index.backend import BackendSpec, Ranking, Selection, SpaceMembers
from search.index.dense import DenseIndex
from search.index.folder import Generation
from search.index.qdrant_store import SPARSE, check_layout, client_for, from_halves, guarded, query_sparse, release, to_halves

__all__ = ["QdrantBackend"]

EMPTY_RANKING: Ranking = (np.zeros(0, dtype=np.int64), np.zeros(0))


class QdrantBackend:
    """Searches an index's Qdrant collection (see search.index.qdrant_store for its layout)."""

    def __init__(self, spec: BackendSpec, generation: Generation, manifest: dict[str, Any], n_passages: int) -> None:
        self.spec = spec
        self.alias = manifest["backend"]["collection"]
        self.server_idf = manifest["backend"].get("idf") == "server"
        ids = {space: DenseIndex.load_ids(generation.dense_prefix(space)) for space in manifest["models"]}
        self.members = SpaceMembers(ids, n_passages)
        points = np.load(generation.point_ids_file)
        if len(points) != n_passages:
            raise BackendError(f"{generation.point_ids_file} holds {len(points)} points for {n_passages} passages: run `search index` to rebuild it")
        self._order = np.argsort(points[:, 0], kind="stable")
        self._high = points[self._order, 0]
        self._points = points
        self.client = client_for(spec)
        try:
            with guarded(spec):
                if not self.client.collection_exists(self.alias):
                    raise BackendError(f"the Qdrant collection {self.alias} is missing at {spec.where()}: "
                                       "run `search index --rebuild` to fill it again")
                check_layout(spec, self.alias, self.client.get_collection(self.alias).config.metadata, manifest)
        except BaseException:
            release(spec)
            raise

    def prepare_search_thread(self) -> None:
        pass  # the searches run on the server (or in qdrant-client's numpy): nothing per thread

    def close(self) -> None:
        if self.client is not None:
            self.client = None
            release(self.spec)

    # ----- the searches -------------------------------------------------------------------------

    def bm25_top(self, tokens: Sequence[str], k: int, selection: Selection | None) -> Ranking:
        indices, values = query_sparse(tokens)
        if not indices or k <= 0:
            return EMPTY_RANKING
        from qdrant_client import models

        return self._query(models.SparseVector(indices=indices, values=values), SPARSE, k, self._filter(selection))

    def bm25_scores(self, tokens: Sequence[str], pids: np.ndarray) -> np.ndarray:
        indices, values = query_sparse(tokens)
        if not indices or len(pids) == 0:
            return np.zeros(len(pids))
        from qdrant_client import models

        if self.server_idf:  # only the server knows the IDF: ask it, restricted to these points
            where = models.Filter(must=[models.HasIdCondition(has_id=from_halves(self._points[pids]))])
            found, scores = self._query(models.SparseVector(indices=indices, values=values), SPARSE, len(pids), where)
            by_pid = dict(zip(found.tolist(), scores.tolist()))
            return np.array([by_pid.get(pid, 0.0) for pid in pids.tolist()], dtype=np.float64)
        weights = dict(zip(indices, values))
        vectors = self._vectors(SPARSE, pids)
        return np.array([sum(weights.get(i, 0.0) * v for i, v in zip(vector.indices, vector.values)) if vector is not None else 0.0
                         for vector in vectors], dtype=np.float64)

    def dense_search(self, space: str, vector: np.ndarray, k: int, selection: Selection | None) -> Ranking:
        if k <= 0:
            return EMPTY_RANKING
        return self._query(np.asarray(vector, dtype=np.float32).tolist(), space, k, self._filter(selection))

    def dense_scores(self, space: str, vector: np.ndarray, pids: np.ndarray) -> np.ndarray:
        found = self._vectors(space, pids)
        query = np.asarray(vector, dtype=np.float32)
        return np.array([float(np.asarray(v, dtype=np.float32) @ query) if v is not None else 0.0 for v in found], dtype=np.float64)

    # ----- helpers ------------------------------------------------------------------------------

    def _query(self, query: Any, using: str, k: int, where: Any) -> Ranking:
        with guarded(self.spec):
            found = self.client.query_points(self.alias, query=query, using=using, query_filter=where, limit=k,
                                             with_payload=False, with_vectors=False).points
        pids = self._pids([point.id for point in found])
        scores = np.array([point.score for point in found], dtype=np.float64)
        keep = pids >= 0
        pids, scores = pids[keep], scores[keep]
        order = np.lexsort((pids, -scores))  # best first, lower passage id on ties (as the default backend)
        return pids[order], scores[order]

    def _vectors(self, using: str, pids: np.ndarray) -> list[Any]:
        """The stored `using` vector of each passage (None where it has none): candidates the search did not
        return are scored here, by point id, rather than by a second search over the whole collection."""
        names = from_halves(self._points[pids])
        with guarded(self.spec):
            found = self.client.retrieve(self.alias, ids=names, with_payload=False, with_vectors=[using])
        by_id = {str(point.id): (point.vector or {}).get(using) for point in found}
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
    def _filter(selection: Selection | None) -> Any:
        """The selection as payload conditions (keyword indexes on path, tags, type)."""
        if selection is None:
            return None
        from qdrant_client import models

        must = []
        for key, values in (("path", selection.paths), ("tags", selection.tags or None), ("type", selection.types or None)):
            if values is not None:
                must.append(models.FieldCondition(key=key, match=models.MatchAny(any=list(values))))
        return models.Filter(must=must) if must else None
