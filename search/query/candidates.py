"""The values retrieval hands to fusion: one retriever's ranked candidates, and all of them for a query."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from search.query.hubness import Hubs

__all__ = ["EMPTY", "Ranking", "Retrieval"]

# One retriever's candidates: passage ids best first, with their scores.
Ranking = tuple[np.ndarray, np.ndarray]
EMPTY: Ranking = (np.zeros(0, dtype=np.int64), np.zeros(0))


@dataclass(frozen=True)
class Retrieval:
    """What each retriever returned for one query."""

    bm25: Ranking
    dense: Ranking
    bm25_scores: dict[int, float]  # BM25 score of every candidate of either list (hybrid), else of BM25's own
    cosines: dict[int, float]  # cosine in the passage's own model's space, likewise
    # candidates whose cosine comes from a model that does not read the query's languages (a space
    # searched only to fill the depth): its cosines do not compare with the readers' ones
    foreign: frozenset[int] = frozenset()
    # candidates of spaces searched with the query's dictionary translation: their cosines answer
    # another text in another model, so fusion standardises them apart from the others'
    translated: frozenset[int] = frozenset()
    # BM25 searched the query's dictionary translation where a multilingual model read the query as
    # asked: a word-by-word translation is the weaker of the two (fusion gives it less weight)
    bm25_translated: bool = False
    # a dense space of a model that cannot read the query searched only its word-by-word translation;
    # `query_text` (the query as asked) is what a multilingual model re-reads its top with (rerank)
    dense_translated: bool = False
    query_text: str = ""
    # BM25's score of each document's best candidate, best first (None: the documents are not known):
    # what the tie rule reads, since passages of one document share words through their windows
    # (search.index.bm25_window) and their near-equal scores are no tie between two answers
    bm25_leads: np.ndarray | None = None
    # how near each candidate of the spaces that read the query is to the other candidates
    # (search.query.hubness; None where not measured: another mode, or the hub rule switched off)
    hubs: Hubs | None = None
