"""BM25 over pre-tokenised passages, built in bounded memory at any corpus size.

Like bm25s, the index precomputes the BM25 contribution of every (term, passage) pair into a CSC matrix
(one column per term) and a query sums the columns of its terms. Unlike a single bm25s index, the matrix is
cut into *segments* of consecutive passages, so a build only ever holds one segment's postings:

1. a first pass over the passages' postings (distinct term ids and their counts, search.index.bm25_terms:
   on disk for a build, so memory-mapped) counts the GLOBAL statistics: document frequency of every term
   (a bincount), number of passages and total length (hence the average length);
2. a second pass scores each segment's postings with those global statistics and writes it out.

Every stored score is therefore the one a single index over the whole corpus would hold, and a query's
score for a passage (its column entries summed in query-token order) is bit-for-bit the same whatever the
segmentation. The formulas are in `search.index.bm25_scoring` (bm25s's, as small functions); the segment
matrices (search.index.bm25_segments) are assembled with scipy.sparse, because bm25s's builder takes the
whole corpus at once and computes its statistics from it, so it cannot score one segment with global
statistics.

Where the passages' documents are known (where each begins), a passage's score also counts its window,
the passage with its neighbours in the document, weighted by ``BM25Params.window``
(search.index.bm25_window): read from the same columns' term counts at query time, never stored.
``scores`` and ``scores_at`` give every passage's exact score; ``top_k`` ranks the best WINDOW_POOL
passages by their own score and their neighbours by both.

Also handled here: a 0-passage corpus, passages with no tokens, a corpus with no tokens at all; queries
that are empty or only hold unknown tokens (zeros); repeated query tokens count once per occurrence, as in
rank-bm25; ``top_k`` with an optional boolean ``allowed`` mask applied before the cut, deterministic ties
(lower passage id first); save/load memory-mapped. Scores are float64, so they agree with rank-bm25 to
~1e-12.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from search.index.bm25_scoring import NONOCCURRENCE_METHODS, BM25Params
from search.index.bm25_segments import SEGMENT_PASSAGES, SEGMENT_POSTINGS, Segment, SegmentScorer, Stats, find_sorted
from search.index.bm25_terms import LENGTHS_FILE, VOCAB_FILE, TermStream
from search.index.bm25_window import Windows

__all__ = ["BM25Index", "BM25Params", "QueryScores"]

_META_NAME = "bm25_index.json"
# With windows, a query scores the windows of its best passages by their own score (at least this many,
# and k) and of their neighbours: a passage ranks by its window in the neighbourhood of a strong passage.
# On the 100k bench index, the best 100 / 300 / 500 / 1,000 gave the exact top 100 (every window
# scored) for 12 / 170 / 246 / 297 of 300 queries (88% / 98.7% / 99.7% / 99.99% of its passages), at a
# BM25 p50 of 1.8 / 2.1 / 2.4 / 3.0 ms (passages alone 1.4); nDCG@10 moves by 0.001 at most.
WINDOW_POOL = 1000
_FORMAT = 2


class BM25Index:
    """BM25 scores for every passage of a fixed corpus; passage ids are positions in the build order."""

    def __init__(
        self,
        vocab: dict[str, int],
        segments: list[Segment],
        n_passages: int,
        params: BM25Params,
        nonoccurrence: np.ndarray | None = None,
        folder: Path | None = None,
        windows: Windows | None = None,
    ) -> None:
        # Use build(), build_from_terms() or load().
        self._vocab = vocab
        self._segments = segments
        self.n_passages = int(n_passages)
        self.params = params
        self._nonoccurrence = nonoccurrence
        self._folder = folder  # where the arrays live when they are memory-mapped from disk
        self._needs_match_mask = params.method in NONOCCURRENCE_METHODS
        # each passage's window (search.index.bm25_window), scored where the documents are known, the
        # weight is positive, and every segment holds its term counts (one written before has none)
        usable = windows is not None and params.window > 0 and all(segment.counts is not None for segment in segments)
        self.windows = windows if usable else None

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        corpus_tokens: Sequence[Sequence[str]],
        params: BM25Params = BM25Params(),
        segment_passages: int = SEGMENT_PASSAGES,
        segment_postings: int = SEGMENT_POSTINGS,
        document_starts: np.ndarray | None = None,
    ) -> "BM25Index":
        """Index ``corpus_tokens[i]`` (the tokens of passage i) in memory; with ``document_starts``
        (whether passage i begins a document), each passage's window counts too."""
        stream = TermStream.of_tokens(corpus_tokens)
        if not stream.vocab:  # no passages, or no passage with a token: nothing can ever match
            return cls({}, [], len(stream.lengths), params)
        scorer = SegmentScorer(Stats.of_terms(stream), params)
        segments = list(scorer.segments(stream, segment_passages, segment_postings))
        windows = Windows(document_starts, stream.lengths) if document_starts is not None else None
        return cls(stream.vocab, segments, len(stream.lengths), params, scorer.nonoccurrence, windows=windows)

    @classmethod
    def build_from_terms(
        cls,
        stream: TermStream,
        folder: str | Path,
        params: BM25Params = BM25Params(),
        segment_passages: int = SEGMENT_PASSAGES,
        segment_postings: int = SEGMENT_POSTINGS,
        on_passages: Callable[[int], None] | None = None,
    ) -> "BM25Index":
        """Score a term stream (search.index.bm25_terms, written in ``folder`` while a corpus too big for
        memory was read once) into segments written there as they go; the result is memory-mapped."""
        folder = Path(folder)
        if not len(stream.terms):
            index = cls({}, [], len(stream.lengths), params)
            index.save(folder)
            return index
        stats = Stats.of_terms(stream)
        if (stats.df == 0).sum() > 0.5 * len(stats.df):  # mostly terms of passages gone since: number afresh
            stream = stream.without_unused(stats.df, folder)
            stats = Stats(stream.vocab, stats.df[stats.df > 0], stats.n_passages, stats.total_length)
        scorer = SegmentScorer(stats, params)
        sizes = []
        for number, segment in enumerate(scorer.segments(stream, segment_passages, segment_postings, folder)):
            segment.save(folder, number)
            sizes.append(segment.n)
            if on_passages:
                on_passages(segment.n)
            del segment  # only one segment's arrays are ever held
        cls._write_meta(folder, stream.vocab, sizes, len(stream.lengths), params, scorer.nonoccurrence)
        # memory-mapped as load() would, with the vocabulary in hand (reading it back: 0.1 s at 100k passages)
        starts = np.cumsum([0, *sizes])
        segments = [Segment.load(folder, number, int(starts[number]), size, mmap=True) for number, size in enumerate(sizes)]
        return cls(stream.vocab, segments, len(stream.lengths), params, scorer.nonoccurrence, folder=folder)

    # ------------------------------------------------------------------ query
    def _query_ids(self, query_tokens: Sequence[str]) -> list[int]:
        vocab = self._vocab
        return [vocab[t] for t in query_tokens if t in vocab]  # duplicates kept on purpose (rank-bm25 counting)

    def _scores_of_ids(self, ids: list[int]) -> np.ndarray:
        """Every passage's own score (its window's is added by the callers that want it)."""
        out = np.zeros(self.n_passages, dtype=np.float64)
        terms = np.asarray(ids, dtype=np.int64)
        for segment in self._segments:
            segment.add_scores(terms, out[segment.start : segment.start + segment.n])
        if self._nonoccurrence is not None:
            out += self._nonoccurrence[terms].sum()
        return out

    def _window_scores_at(self, ids: list[int], pids: np.ndarray) -> np.ndarray:
        """The weighted window score of the passages `pids`, term by term in query order (a repeated term
        once per occurrence, as its own score counts): the same bits whatever the term ids."""
        terms = []
        for term, times in Counter(ids).items():
            columns = [segment.postings(term) for segment in self._segments]
            if len(columns) == 1:  # the column as it is on disk: passage ids are int32 throughout (under 2**31 passages)
                (passages, counts), = columns
            else:
                passages = np.concatenate([offsets + np.int32(segment.start) for segment, (offsets, _) in zip(self._segments, columns)])
                counts = np.concatenate([counts for _, counts in columns])
            terms.append((term, self.params.window * times, passages, counts))
        return self.windows.scores_at(self.params, terms, pids)

    def scores(self, query_tokens: Sequence[str]) -> np.ndarray:
        """BM25 score of every passage for the query (float64); 0 where no query term occurs (lucene,
        robertson, atire: bm25l / bm25+ add their non-occurrence term to every passage, as rank-bm25 does).
        With windows, each passage's window score too."""
        if isinstance(query_tokens, str):
            raise TypeError("query_tokens must be a list of tokens, not a str")
        ids = self._query_ids(query_tokens)
        if not ids:
            return np.zeros(self.n_passages, dtype=np.float64)
        out = self._scores_of_ids(ids)
        if self.windows is not None:
            out += self._window_scores_at(ids, np.arange(self.n_passages))
        return out

    def scores_at(self, query_tokens: Sequence[str], pids: np.ndarray, known: "QueryScores | None" = None) -> np.ndarray:
        """``scores(query_tokens)[pids]``, bit for bit, at a cost that grows with ``len(pids)`` instead of
        with the query terms' postings (hybrid fusion scores a few hundred candidates of a large index).
        ``known``: what `top_k_and_scores` computed for this query, read instead of computed again."""
        pids = np.asarray(pids, dtype=np.int64)
        ids = self._query_ids(query_tokens)
        if not ids or not len(pids):
            return np.zeros(len(pids), dtype=np.float64)
        out = known.scores[pids] if known is not None else self._own_scores_at(ids, pids)
        if self.windows is not None:
            missing = np.ones(len(pids), dtype=bool) if known is None else ~known.has_window(pids)
            if missing.any():
                out[missing] += self._window_scores_at(ids, pids[missing])
        return out

    def _own_scores_at(self, ids: list[int], pids: np.ndarray) -> np.ndarray:
        out = np.zeros(len(pids), dtype=np.float64)
        terms = np.asarray(ids, dtype=np.int64)
        order = np.argsort(pids, kind="stable")
        ascending = pids[order]
        for segment in self._segments:
            lo, hi = np.searchsorted(ascending, [segment.start, segment.start + segment.n])
            if hi > lo:
                part = np.zeros(hi - lo, dtype=np.float64)
                segment.add_scores_at(terms, ascending[lo:hi] - segment.start, part)
                out[order[lo:hi]] = part
        if self._nonoccurrence is not None:
            out += self._nonoccurrence[terms].sum()
        return out

    def _matched(self, ids: list[int]) -> np.ndarray:
        """Passages holding at least one of the term ids."""
        mask = np.zeros(self.n_passages, dtype=bool)
        for segment in self._segments:
            segment.mark(set(ids), mask[segment.start : segment.start + segment.n])
        return mask

    def top_k(
        self, query_tokens: Sequence[str], k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best passages as (ids int64, scores), best first; only passages with score > 0 that hold a
        query term, and (when given) ``allowed[id]`` is True. The mask applies before the cut, so a filter
        never returns fewer than ``k`` hits while ``k`` allowed matches exist. Ties: lower id first. With
        windows, a passage may score by its window alone; the neighbours considered are those of the best
        allowed passages (a filter allows whole documents, so a window's passages are allowed together)."""
        return self.top_k_and_scores(query_tokens, k, allowed)[0]

    def top_k_and_scores(
        self, query_tokens: Sequence[str], k: int, allowed: np.ndarray | None = None
    ) -> tuple[tuple[np.ndarray, np.ndarray], "QueryScores | None"]:
        """``top_k``, and the scores it computed on the way (None when it computed none), which
        `scores_at` reads for the same query."""
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)), None
        if allowed is not None:
            allowed = np.asarray(allowed)
            if allowed.dtype != bool or allowed.shape != (self.n_passages,):
                raise ValueError(
                    f"allowed must be a boolean array of shape ({self.n_passages},), got {allowed.dtype} {allowed.shape}"
                )
        ids = self._query_ids(query_tokens)
        if k <= 0 or not ids:
            return empty
        scores = self._scores_of_ids(ids)
        keep = scores > 0
        matched = self._matched(ids) if self._needs_match_mask else None
        if matched is not None:
            keep &= matched
        if allowed is not None:
            keep &= allowed
        cand, windowed = np.flatnonzero(keep), None
        cand, cand_scores = _best(cand, scores[cand], k if self.windows is None else max(k, WINDOW_POOL))
        if self.windows is not None:  # the best passages and their neighbours, by their own and their windows' scores
            cand = self.windows.with_neighbours(cand)
            for mask in (matched, allowed):
                if mask is not None:
                    cand = cand[mask[cand]]
            scores[cand] += self._window_scores_at(ids, cand)
            windowed, cand_scores = cand, scores[cand]
            positive = cand_scores > 0
            cand, cand_scores = _best(cand[positive], cand_scores[positive], k)
        order = np.lexsort((cand, -cand_scores))
        return (cand[order].astype(np.int64, copy=False), cand_scores[order]), QueryScores(scores, windowed)

    # ------------------------------------------------------------------ persistence
    @staticmethod
    def _write_meta(folder: Path, vocab: dict[str, int], sizes: list[int], n: int, params: BM25Params,
                    nonoccurrence: np.ndarray | None) -> None:
        if nonoccurrence is not None:
            np.save(folder / "nonoccurrence.npy", nonoccurrence)
        with open(folder / VOCAB_FILE, "w", encoding="utf-8") as handle:
            # dicts keep insertion order = term id order; dumps, not dump: only a one-shot dump runs json's C encoder
            handle.write(json.dumps(list(vocab), ensure_ascii=False))
        meta = {"format": _FORMAT, "n_passages": n, "params": params.to_dict(), "segments": sizes, "empty": not vocab}
        tmp = folder / (_META_NAME + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        tmp.replace(folder / _META_NAME)  # written last: its presence means the index is complete

    def save(self, folder: str | Path) -> None:
        """Write the index into ``folder`` (created if needed); our manifest is written last."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self._folder is not None and self._folder.resolve() == folder.resolve():
            return  # built or loaded there: the arrays are already in place (and memory-mapped from it)
        for number, segment in enumerate(self._segments):
            segment.save(folder, number)
        sizes = [segment.n for segment in self._segments]
        self._write_meta(folder, self._vocab, sizes, self.n_passages, self.params, self._nonoccurrence)

    @staticmethod
    def readable(folder: str | Path) -> bool:
        """Whether `load` would read the index in `folder` (its format is this code's)."""
        try:
            return json.loads((Path(folder) / _META_NAME).read_text(encoding="utf-8")).get("format") == _FORMAT
        except (OSError, ValueError, AttributeError):
            return False

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True, document_starts: np.ndarray | None = None) -> "BM25Index":
        """Read an index written by ``save``; with ``mmap`` the score matrices stay on disk, paged in on use.
        With ``document_starts`` (as for `build`), each passage's window counts too."""
        folder = Path(folder)
        meta_path = folder / _META_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(f"no BM25 index in {folder} (missing {_META_NAME})")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        n = int(meta["n_passages"])
        if meta.get("format") != _FORMAT:
            raise ValueError(f"BM25 index in {folder} has format {meta.get('format')!r}, expected {_FORMAT}; rebuild it")
        params = BM25Params.recorded(meta["params"])
        if meta["empty"]:
            return cls({}, [], n, params, folder=folder)
        with open(folder / VOCAB_FILE, encoding="utf-8") as handle:
            vocab = {token: term for term, token in enumerate(json.load(handle))}
        segments, start = [], 0
        for number, size in enumerate(meta["segments"]):
            segments.append(Segment.load(folder, number, start, size, mmap))
            start += size
        if start != n:
            raise ValueError(f"BM25 index in {folder} is inconsistent: segments hold {start} != {n} passages")
        nonoccurrence = np.load(folder / "nonoccurrence.npy") if (folder / "nonoccurrence.npy").is_file() else None
        lengths = folder / LENGTHS_FILE
        windows = Windows(document_starts, np.load(lengths)) if document_starts is not None and lengths.is_file() else None
        return cls(vocab, segments, n, params, nonoccurrence, folder=folder, windows=windows)

    # ------------------------------------------------------------------ misc
    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def n_segments(self) -> int:
        return len(self._segments)

    def __len__(self) -> int:
        return self.n_passages

    def __repr__(self) -> str:
        return f"BM25Index(n_passages={self.n_passages}, segments={self.n_segments}, vocab={self.vocab_size}, params={self.params})"


@dataclass(frozen=True)
class QueryScores:
    """The BM25 scores `top_k_and_scores` computed for one query: every passage's own score, with its
    window's added at `windowed` (ascending ids; None: no windows)."""

    scores: np.ndarray
    windowed: np.ndarray | None

    def has_window(self, pids: np.ndarray) -> np.ndarray:
        """Whether each of `pids` has its window score in `scores`: a binary search of `windowed`
        (np.isin sorts both: it took 0.6 of the 1.0 ms that re-scoring a hybrid query's dense candidates
        cost at 100k passages)."""
        if self.windowed is None:
            return np.zeros(len(pids), dtype=bool)
        return find_sorted(self.windowed, pids)[1]


def _best(cand: np.ndarray, cand_scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best candidates (unordered): everything above the k-th best score, then the lowest ids
    among those equal to it."""
    if len(cand) <= k:
        return cand, cand_scores
    kth = -np.partition(-cand_scores, k - 1)[k - 1]
    above = cand_scores > kth
    ties = np.flatnonzero(cand_scores == kth)[: k - int(above.sum())]
    sel = np.concatenate([np.flatnonzero(above), ties])
    return cand[sel], cand_scores[sel]
