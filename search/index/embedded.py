"""The default backend: the generation's own BM25 score matrices and FAISS indexes, searched in process."""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np

from search.index.backend import Ranking, Selection, SpaceMembers
from search.index.bm25 import BM25Index
from search.index.dense import DenseIndex
from search.index.facets import read_document_starts
from search.index.folder import Generation

__all__ = ["EmbeddedBackend"]


class EmbeddedBackend:
    """bm25s-style BM25 (search.index.bm25) and one FAISS index per space (search.index.dense)."""

    def __init__(self, generation: Generation, manifest: dict[str, Any], n_passages: int) -> None:
        # a generation written before documents were recorded: BM25 without windows
        self.bm25 = BM25Index.load(generation.bm25_folder, document_starts=read_document_starts(generation))
        # each thread's last BM25 query and the scores it computed (search.index.bm25.QueryScores): hybrid fusion asks
        # for the scores of its candidates next, which are then read instead of computed again
        self._last = threading.local()
        self.dense = {space: DenseIndex.load(generation.dense_prefix(space)) for space in manifest["models"]}
        self.members = SpaceMembers({space: index.ids for space, index in self.dense.items()}, n_passages)

    def bm25_top(self, tokens: Sequence[str], k: int, selection: Selection | None) -> Ranking:
        ranking, known = self.bm25.top_k_and_scores(tokens, k, None if selection is None else selection.mask)
        self._last.query = (list(tokens), known)
        return ranking

    def bm25_scores(self, tokens: Sequence[str], pids: np.ndarray) -> np.ndarray:
        last_tokens, known = getattr(self._last, "query", (None, None))
        return self.bm25.scores_at(tokens, pids, known=known if last_tokens == list(tokens) else None)

    def dense_search(self, space: str, vector: np.ndarray, k: int, selection: Selection | None) -> Ranking:
        index = self.dense[space]
        rows = None if selection is None else index.rows_allowed(selection.mask)
        return index.search(vector, k, allowed_rows=rows)

    def dense_scores(self, space: str, vector: np.ndarray, pids: np.ndarray) -> np.ndarray:
        return self.dense[space].scores_of(vector, self.members.rows[space][pids])

    def dense_vectors(self, space: str, pids: np.ndarray) -> np.ndarray:
        return self.dense[space].vectors_at(self.members.rows[space][pids])

    def close(self) -> None:
        pass
