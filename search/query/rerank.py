"""`CrossLingualReranker`: a multilingual model re-reads the top of a query that crossed languages.

A Chinese query reaches English passages only through its word-by-word dictionary translation, in
BM25 and in MiniLM's space alike, and a translation loses word sense and order (xling_zh2en 0.675
nDCG@10 hybrid). multilingual-e5-small reads both languages in one space: it scores the fused top
against the query as asked, and the two scores mix as z-scores over the re-read candidates.
Embedding every passage with e5 as well would cost 2.3x the indexing time (12 layers against
MiniLM's 6); re-reading only the top of the queries that need it leaves indexing and one-language
queries as they were, at a bounded cost per cross-lingual query (`rerank_tokens`).
`SearchConfig(reread="always")` has it re-read every query too, as a peer of the fused score.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from search.embedding.encoder import Encoder
from search.embedding.spec import token_counter
from search.errors import SearchError
from search.query.candidates import Retrieval
from search.query.fusion import SearchConfig, z_normalise

__all__ = ["CrossLingualReranker", "Reread", "mix_scores"]

# e5 vectors of passages kept per engine (384 floats each: 15 MB): the passages a run of
# cross-lingual queries re-reads overlap, and a passage read again in another batch would not give
# bit-identical int8 vectors, so a query asked twice ranks the same.
VECTORS_KEPT = 10_000


def mix_scores(reread: np.ndarray, fused: np.ndarray, weight: float) -> np.ndarray:
    """weight * z(re-read cosine) + (1 - weight) * z(fused score): z-scores over the re-read
    candidates, as fusion mixes BM25 and dense, so the weight means the same whatever the scales."""
    return weight * z_normalise(reread) + (1.0 - weight) * z_normalise(fused)


@dataclass(frozen=True)
class Reread:
    """What the reranker did for one query: the new ranking and each re-read passage's cosine."""

    ranked: list[tuple[int, float]]
    cosines: dict[int, float]
    model: str


class CrossLingualReranker:
    """Re-ranks the head of a fused ranking with `config.rerank_model`; thread-safe.

    `texts_of` gives the text a model embeds for each passage id (the index's contextual text).
    The candidates re-read are the best `rerank_depth` (`candidates` for a query that was not
    translated; of the SearchConfig given), cut where their tokens would pass `rerank_tokens`; the
    budget counts every candidate, cached or not, so which passages are re-read never depends on what
    earlier queries left in the cache.
    """

    def __init__(self, texts_of: Callable[[Sequence[int]], list[str]]) -> None:
        self._texts_of = texts_of
        self._vectors: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()  # (model, passage id) -> vector
        self._lock = threading.Lock()
        self._unavailable: dict[str, str] = {}  # model -> why it cannot be loaded

    def forget_vectors(self) -> None:
        """Embed every passage again from now on (a benchmark timing the first query over them)."""
        with self._lock:
            self._vectors.clear()

    @staticmethod
    def applies(retrieval: Retrieval, mode: str, config: SearchConfig) -> bool:
        """Whether a query is re-read, in a mode that reads meaning: under "cross-lingual", where a dense
        space searched only its translation; under "always", every query."""
        wanted = config.reread == "always" or (config.reread == "cross-lingual" and retrieval.dense_translated)
        return bool(config.rerank_model) and wanted and mode != "bm25"

    def rerank(self, retrieval: Retrieval, ranked: list[tuple[int, float]], config: SearchConfig) -> Reread:
        """`ranked` with its head re-ordered by the mixed score; the rest follows, below every re-read one.
        A translated query re-reads deeper and trusts the model more: it alone read the query as asked.
        Raises SearchError when the model cannot be loaded (not installed)."""
        encoder = self._encoder(config.rerank_model)
        translated = retrieval.dense_translated
        depth = config.rerank_depth if translated else config.candidates
        weight = config.rerank_weight if translated else config.same_language_rerank_weight
        head, texts = self._head(ranked[:depth], encoder, config)
        if len(head) < 2:
            return Reread(ranked, {}, encoder.name)
        pids = [pid for pid, _ in head]
        cosines = self._passage_vectors(pids, texts, encoder) @ encoder.encode_query([retrieval.query_text])[0]
        mixed = mix_scores(cosines, np.array([score for _, score in head]), weight)
        order = np.lexsort((np.array(pids), -mixed))  # ties by passage id
        reordered = [(pids[i], float(mixed[i])) for i in order]
        floor = float(mixed.min())
        rest = [(pid, floor - 1.0 - position) for position, (pid, _) in enumerate(ranked[len(head):])]
        return Reread(reordered + rest, dict(zip(pids, cosines.tolist())), encoder.name)

    def _encoder(self, model: str) -> Encoder:
        if model in self._unavailable:
            raise SearchError(self._unavailable[model])
        try:
            encoder = Encoder(model)  # every core: the query waits for this batch
            encoder.impl  # noqa: B018 - loads now, so a missing model is reported here
        except SearchError as error:
            self._unavailable[model] = str(error)
            raise
        return encoder

    def _head(self, ranked: list[tuple[int, float]], encoder: Encoder, config: SearchConfig) -> tuple[list[tuple[int, float]], list[str]]:
        """The best candidates whose word pieces fit the budget (each counted up to the model's
        limit), and their texts."""
        head = ranked
        texts = self._texts_of([pid for pid, _ in head])
        count, limit = token_counter(encoder.name), encoder.max_seq_length
        spent = 0
        for position, text in enumerate(texts):
            spent += min(count(text) + 2, limit)  # +2: the model's [CLS] and [SEP]
            if spent > config.rerank_tokens:
                return head[:position], texts[:position]
        return head, texts

    def _passage_vectors(self, pids: list[int], texts: list[str], encoder: Encoder) -> np.ndarray:
        """The model's vectors of these passages: cached ones as they were, the rest embedded in one batch."""
        keys = [(encoder.name, pid) for pid in pids]
        with self._lock:
            known = {key: self._vectors[key] for key in keys if key in self._vectors}
            for key in known:
                self._vectors.move_to_end(key)
        missing = [i for i, key in enumerate(keys) if key not in known]
        if missing:
            fresh = dict(zip((keys[i] for i in missing), encoder.encode([texts[i] for i in missing])))
            known.update(fresh)
            with self._lock:
                self._vectors.update(fresh)
                while len(self._vectors) > VECTORS_KEPT:
                    self._vectors.popitem(last=False)
        return np.stack([known[key] for key in keys])
