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

# Passages whose word pieces (and e5 vector, 384 floats: at most 15 MB) an engine keeps: the passages
# a run of cross-lingual queries re-reads overlap, a cached one costs neither a read nor a count, and a
# passage embedded again in another batch would not give bit-identical int8 vectors, so a query asked
# twice ranks the same.
ENTRIES_KEPT = 10_000


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


@dataclass
class _Seen:
    """A passage a model has been asked about: its word pieces as the budget counts them, and its
    vector once it fell within a budget."""

    tokens: int
    vector: np.ndarray | None = None


class CrossLingualReranker:
    """Re-ranks the head of a fused ranking with `config.rerank_model`; thread-safe.

    `texts_of` gives the text a model embeds for each passage id (the index's contextual text).
    The candidates re-read are the best `rerank_depth` (`candidates` for a query that was not
    translated; of the SearchConfig given), cut where their tokens would pass `rerank_tokens`; the
    budget counts every candidate, cached or not, so which passages are re-read never depends on what
    earlier queries left in the cache. A passage seen before is neither read nor counted again.
    """

    def __init__(self, texts_of: Callable[[Sequence[int]], list[str]]) -> None:
        self._texts_of = texts_of
        self._seen: OrderedDict[tuple[str, int], _Seen] = OrderedDict()  # (model, passage id), least recent first
        self._lock = threading.Lock()
        self._unavailable: dict[str, str] = {}  # model -> why it cannot be loaded

    def forget_vectors(self) -> None:
        """Read and embed every passage again from now on (a benchmark timing the first query over them)."""
        with self._lock:
            self._seen.clear()

    @staticmethod
    def applies(retrieval: Retrieval, mode: str, config: SearchConfig) -> bool:
        """Whether a query is re-read: in a mode that reads meaning, as `config.rereads` says."""
        return mode != "bm25" and config.rereads(retrieval.dense_translated)

    def rerank(self, retrieval: Retrieval, ranked: list[tuple[int, float]], config: SearchConfig) -> Reread:
        """`ranked` with its head re-ordered by the mixed score; the rest follows, below every re-read one.
        A translated query re-reads deeper and trusts the model more: it alone read the query as asked.
        Raises SearchError when the model cannot be loaded (not installed)."""
        encoder = self._encoder(config.rerank_model)
        translated = retrieval.dense_translated
        depth = config.rerank_depth if translated else config.candidates
        weight = config.rerank_weight if translated else config.same_language_rerank_weight
        head = ranked[:depth]
        seen = self._look_up(encoder, [pid for pid, _ in head])
        head = head[:self._within_budget([seen[pid].tokens for pid, _ in head], config.rerank_tokens)]
        if len(head) < 2:
            return Reread(ranked, {}, encoder.name)
        pids = [pid for pid, _ in head]
        self._embed_missing(encoder, {pid: seen[pid] for pid in pids})
        cosines = np.stack([seen[pid].vector for pid in pids]) @ encoder.encode_query([retrieval.query_text])[0]
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

    @staticmethod
    def _within_budget(tokens: list[int], budget: int) -> int:
        """How many of the candidates, best first, fit the budget."""
        spent = np.cumsum(tokens)
        return int(np.searchsorted(spent, budget, side="right"))

    def _look_up(self, encoder: Encoder, pids: list[int]) -> dict[int, _Seen]:
        """Every candidate's entry; those never seen are read and counted now (each up to the model's
        limit, +2 for its [CLS] and [SEP])."""
        with self._lock:
            seen = {pid: self._seen[encoder.name, pid] for pid in pids if (encoder.name, pid) in self._seen}
            for pid in seen:
                self._seen.move_to_end((encoder.name, pid))
        new = [pid for pid in pids if pid not in seen]
        if new:
            count, limit = token_counter(encoder.name), encoder.max_seq_length
            fresh = {pid: _Seen(min(count(text) + 2, limit)) for pid, text in zip(new, self._texts_of(new))}
            seen.update(fresh)
            with self._lock:
                self._seen.update(((encoder.name, pid), entry) for pid, entry in fresh.items())
                while len(self._seen) > ENTRIES_KEPT:
                    self._seen.popitem(last=False)
        return seen

    def _embed_missing(self, encoder: Encoder, entries: dict[int, _Seen]) -> None:
        """Give the entries without a vector one, embedded in one batch."""
        missing = [pid for pid, entry in entries.items() if entry.vector is None]
        if missing:
            for pid, vector in zip(missing, encoder.encode(self._texts_of(missing))):
                entries[pid].vector = vector
