"""`Retriever`: each retriever's candidates for a `Query`, complete before fusion: BM25's list, the dense
list merged over embedding spaces, and every candidate's BM25 score and cosine."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache, partial

import numpy as np

from search.embedding.encoder import Encoder
from search.embedding.models import ALL_LANGUAGES, reads_every_language, spaces_reading
from search.index.backend import SearchBackend, Selection
from search.index.dense_kinds import search_one_query_per_thread
from search.query.candidates import EMPTY, Ranking, Retrieval
from search.query.centring import CentredSpace
from search.query.fusion import Hybrid
from search.query.hubness import Hubs
from search.query.query import Query
from search.text.tokenizing import tokenize_query
from search.text.translation import translate

__all__ = ["Retriever"]

# A space of another language than the query's is searched with the query's dictionary translation
# when it holds at least this share of the passages (a Chinese note collection with a few English
# lines should not pay for, nor be steered by, translating every query); under "auto", only when the
# spaces of the query's main language hold less than this share.
TRANSLATE_SHARE = 0.05
# Query vectors kept per engine: a query asked again with another mode, k or filter (the web page's mode
# switch and filter chips, an assistant narrowing a search) skips embedding it again, 3-5 ms of CPU.
QUERY_VECTORS_KEPT = 256


class Retriever:
    """Searches one generation through its backend (search.index.backend): BM25, and dense per space.

    Each space encodes and searches in its own thread (onnxruntime and FAISS release the GIL, so two
    models take the time of one on two cores) while BM25 scores in the calling thread.
    """

    def __init__(self, backend: SearchBackend, encoders: dict[str, Encoder], policy: Hybrid, centres: dict[str, np.ndarray] | None = None,
                 documents: np.ndarray | None = None) -> None:
        """`centres`: the point each centred space's cosines are measured from (search.query.centring);
        `documents`: each passage's document number (search.index.facets.document_numbers)."""
        self.backend, self.encoders, self.policy, self.documents = backend, encoders, policy, documents
        self.centred = {space: CentredSpace(centre, len(backend.members.rows[space]), partial(backend.dense_scores, space))
                        for space, centre in (centres or {}).items()}
        self.members = backend.members
        self.models = {space: encoder.name for space, encoder in encoders.items()}
        self._encoder_of = {encoder.name: encoder for encoder in encoders.values()}  # one per model, whatever its spaces
        self._query_vector = lru_cache(maxsize=QUERY_VECTORS_KEPT)(self._embed_query)
        self._threads = ThreadPoolExecutor(max(1, len(self.members.spaces())), thread_name_prefix="search-space",
                                           initializer=search_one_query_per_thread)  # the hub rule's FAISS products too

    def close(self) -> None:
        self._threads.shutdown(wait=True)

    def forget_query_vectors(self) -> None:
        """Embed every query again from now on (a benchmark timing queries it has run before)."""
        self._query_vector.cache_clear()

    def retrieve(self, query: Query, depth: int, allowed: Selection | None = None) -> Retrieval:
        """Candidates `depth` deep for what `query.mode` needs, among the passages `allowed` lets through."""
        translations = self._translations(query)
        # a multilingual model reads the query as asked: the translation is for BM25 and the other models
        dense_texts = {space: text for space, text in translations.items() if not reads_every_language(self.models[space])}
        if dense_texts and query.mode != "bm25" and self.policy.config.rereads(translated=True):
            depth = max(depth, self.policy.config.rerank_depth)  # the candidates a multilingual model re-reads
        jobs = self._start_dense(query, depth, allowed, dense_texts) if query.mode != "bm25" else []
        tokens: list[str] = []
        bm25 = EMPTY
        if query.mode != "dense":  # tokenised while the dense threads embed
            tokens = list(query.tokens) + [token for space in translations for token in tokenize_query(translate(query.text, space))]
            bm25 = self.backend.bm25_top(tokens, depth, allowed)
        found = {space: result for job in jobs for space, result in job.result().items()}  # space -> (query vector, ranking)
        one_scale = len({(self.models[space], dense_texts.get(space)) for space in found}) == 1  # one model, one text
        dense = self.policy.merge_spaces({space: ranking for space, (_, ranking) in found.items()},
                                         (ALL_LANGUAGES, query.language, *dense_texts), depth, one_scale)
        cosines = {pid: score for _, (ids, scores) in found.values() for pid, score in zip(ids.tolist(), scores.tolist())}
        bm25_scores = dict(zip(bm25[0].tolist(), bm25[1].tolist()))
        if query.mode != "hybrid":
            return Retrieval(bm25, dense, bm25_scores, cosines, dense_translated=bool(dense_texts), query_text=query.text)
        vectors = {space: vector for space, (vector, _) in found.items()}
        return self._complete(query, tokens, bm25, dense, bm25_scores, cosines, vectors, set(dense_texts),
                              bm25_translated=bool(set(translations) - set(dense_texts)))

    def _translations(self, query: Query) -> dict[str, str]:
        """The query for each space of another language than its main one that holds enough
        passages, translated word by word where it is not in that language already: a Chinese
        query finds English passages through its words' English glosses, and the reverse; the BM25
        query gains the translated words. SearchConfig.cross_lingual says when: "always", "never",
        or "auto", only where the spaces reading the query's main language hold under
        TRANSLATE_SHARE of the passages."""
        mode = self.policy.config.cross_lingual
        if mode == "never" or not query.languages:
            return {}
        sizes = {space: self.members.size(space) for space in self.members.spaces()}
        total = sum(sizes.values())
        own = sum(size for space, size in sizes.items() if space in (ALL_LANGUAGES, query.language))
        if mode == "auto" and own >= TRANSLATE_SHARE * total:
            return {}
        spaces = [space for space, size in sizes.items()
                  if space in ("zh", "en") and space != query.language and size >= TRANSLATE_SHARE * total > 0]
        translations = {space: translate(query.text, space, keep=True) for space in spaces}
        return {space: text for space, text in translations.items() if text}

    def _start_dense(self, query: Query, depth: int, allowed: Selection | None, translations: dict[str, str]) -> list[Future]:
        """One job per model and query text, in its own thread: it embeds the text once and searches
        each of its spaces (a multilingual model holds one per language)."""
        groups: dict[tuple[str, str], list[str]] = {}
        for space in sorted(self._spaces_to_search(query, depth, allowed) | set(translations)):
            groups.setdefault((self.models[space], translations.get(space, query.text)), []).append(space)
        return [self._threads.submit(self._search_spaces, model, text, spaces, depth, allowed) for (model, text), spaces in groups.items()]

    def _spaces_to_search(self, query: Query, depth: int, allowed: Selection | None) -> set[str]:
        """The spaces to embed the query in.

        Only the spaces whose model reads a language of the query (all of them when none does): a
        model asked about text in a language it cannot read returns noise (all-MiniLM-L6-v2 scores
        0.089 nDCG@10 on Chinese cmedqq), and skipping it halves the CPU of a one-language query.
        The other spaces join when those hold fewer than `depth` allowed passages, so a filtered
        query still fills its k hits.
        """
        mask = None if allowed is None else allowed.mask
        size = {space: self.members.size(space, mask) for space in self.members.spaces()}
        readers = spaces_reading({space: self.models[space] for space in size if size[space]}, query.languages)
        if sum(size[space] for space in readers) < depth:
            readers = {space for space in size if size[space]}
        return set(readers)

    def _search_spaces(self, model: str, text: str, spaces: list[str], depth: int, allowed: Selection | None) -> dict[str, tuple[np.ndarray, Ranking]]:
        vector = self._query_vector(model, text)
        return {space: (vector, self._centre_ranking(space, vector, self.backend.dense_search(space, vector, depth, allowed))) for space in spaces}

    def _centre_ranking(self, space: str, vector: np.ndarray, ranking: Ranking) -> Ranking:
        """A space's nearest passages by raw cosine, re-scored and re-ordered by centred cosine where
        the space is centred (the measured gains come from re-ordering these, not from a search of
        their own)."""
        centred = self.centred.get(space)
        ids, raw = ranking
        if centred is None or not len(ids):
            return ranking
        scores = centred.cosines(raw, vector, ids)
        order = np.lexsort((ids, -scores))
        return ids[order], scores[order]

    def _cosines(self, space: str, vector: np.ndarray, pids: np.ndarray) -> np.ndarray:
        """Cosines of `pids` (members of `space`) with the query's vector, centred where the space is."""
        raw = self.backend.dense_scores(space, vector, pids)
        centred = self.centred.get(space)
        return raw if centred is None else centred.cosines(raw, vector, pids)

    def _embed_query(self, model: str, text: str) -> np.ndarray:
        """One text alone, so its vector never depends on what else was embedded with it (int8
        activations are quantised per batch); read-only, since it is shared by later queries."""
        vector = self._encoder_of[model].encode_query([text])[0]
        vector.setflags(write=False)
        return vector

    def _complete(self, query: Query, tokens: list[str], bm25: Ranking, dense: Ranking, bm25_scores: dict[int, float], cosines: dict[int, float],
                  vectors: dict[str, np.ndarray], translated: set[str], bm25_translated: bool) -> Retrieval:
        """Give every candidate of either list its BM25 score and its cosine, so fusion never has to
        treat "not retrieved" as a score of zero; mark those of spaces that do not read the query."""
        union = np.union1d(bm25[0], dense[0])
        readers = spaces_reading({space: self.models[space] for space in vectors}, query.languages)
        hub_spaces = (readers - translated) & self.centred.keys() if self.policy.config.hub_penalty > 0 else set()
        # in a query thread (whose FAISS products run without a team of threads that would spin after),
        # while this one scores the candidates
        hubs = self._threads.submit(self._hubs, union, hub_spaces) if hub_spaces else None
        if len(bm25_scores) < len(union):
            bm25_scores = dict(zip(union.tolist(), self.backend.bm25_scores(tokens, union).tolist()))
        missing = np.array([pid for pid in union.tolist() if pid not in cosines], dtype=np.int64)
        cosines = dict(cosines)
        for space, vector in vectors.items():
            inside = missing[self.members.holds(space, missing)]
            if len(inside):
                cosines.update(zip(inside.tolist(), self._cosines(space, vector, inside).tolist()))
        members = {space: frozenset(union[self.members.holds(space, union)].tolist()) for space in vectors}
        foreign = frozenset().union(*(members[space] for space in set(vectors) - readers - translated))
        return Retrieval(bm25, dense, bm25_scores, cosines, foreign, frozenset().union(*(members[space] for space in translated)), bm25_translated,
                         dense_translated=bool(translated), query_text=query.text, bm25_leads=self._document_leads(bm25),
                         hubs=None if hubs is None else hubs.result())

    def _hubs(self, union: np.ndarray, spaces: set[str]) -> Hubs | None:
        """The hubs among the candidates of each space in `spaces`, measured between their stored vectors
        moved by the space's centre (search.query.hubness). Only centred spaces: the narrow cones, where
        a generic text sits near every query; in all-MiniLM-L6-v2's wider space the rule gained nothing
        (SciFact 0.7466 -> 0.7454, and 0.7475 -> 0.7441 under AVX2)."""
        neighbours, found = self.policy.config.hub_neighbours, None
        for space in sorted(spaces):
            pids = union[self.members.holds(space, union)]
            if len(pids) <= neighbours:  # too few for a neighbourhood
                continue
            hubs = Hubs.among(pids, self.centred[space].moved(self.backend.dense_vectors(space, pids)), neighbours)
            found = hubs if found is None else found.merged(hubs)
        return found

    def _document_leads(self, ranking: Ranking) -> np.ndarray | None:
        """The scores of a ranking's first candidate of each document, in its order."""
        if self.documents is None:
            return None
        ids, scores = ranking
        _, first = np.unique(self.documents[ids], return_index=True)
        return scores[np.sort(first)]
