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
matrices are assembled with scipy.sparse, because bm25s's builder takes the whole corpus at once and
computes its statistics from it, so it cannot score one segment with global statistics.

Also handled here: a 0-passage corpus, passages with no tokens, a corpus with no tokens at all; queries
that are empty or only hold unknown tokens (zeros); repeated query tokens count once per occurrence, as in
rank-bm25; ``top_k`` with an optional boolean ``allowed`` mask applied before the cut, deterministic ties
(lower passage id first); save/load memory-mapped. Scores are float64, so they agree with rank-bm25 to
~1e-12.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from search.index.bm25_scoring import NONOCCURRENCE_METHODS, BM25Params, idf, term_frequency_component
from search.index.bm25_terms import VOCAB_FILE, TermStream

__all__ = ["BM25Index", "BM25Params"]

_META_NAME = "bm25_index.json"
_FORMAT = 2
# A segment ends at this many passages or postings (distinct terms of a passage), whichever comes first:
# scoring one holds ~40 bytes per posting, so 8M keep a build's BM25 stage near 300 MB.
SEGMENT_PASSAGES = 200_000
SEGMENT_POSTINGS = 8_000_000
_CHUNK_POSTINGS = 2_000_000  # postings counted per bincount (a bounded read of the memory-mapped ids)
_SCORE_POSTINGS = 1_000_000  # postings scored at a time (8 MB temporaries, below malloc's mmap threshold)


@dataclass
class _Stats:
    """What a first pass over the corpus knows: it makes every segment score like one big index."""

    vocab: dict[str, int]
    df: np.ndarray  # passages holding each term
    n_passages: int
    total_length: int

    @classmethod
    def of_terms(cls, stream: TermStream) -> "_Stats":
        """Document frequencies: a bincount of the postings' term ids, a bounded slice at a time."""
        df = np.zeros(len(stream.vocab), dtype=np.int64)
        for start in range(0, len(stream.terms), _CHUNK_POSTINGS):
            df += np.bincount(stream.terms[start : start + _CHUNK_POSTINGS], minlength=len(df))
        return cls(stream.vocab, df, len(stream.lengths), int(stream.lengths.sum()))

    @property
    def avg_length(self) -> float:
        # == np.mean of the lengths (integer partial sums are exact in float64), as bm25s computes it
        return self.total_length / self.n_passages


@dataclass
class _Segment:
    """Consecutive passages [start, start + n) as a CSC matrix over the global vocabulary."""

    start: int
    n: int
    data: np.ndarray  # float64 scores
    indices: np.ndarray  # int32 passage offsets within the segment
    indptr: np.ndarray  # int64, one entry per term + 1

    def add_scores(self, terms: np.ndarray, out: np.ndarray) -> None:
        """Add the segment's column of each term (in order) to `out`, the segment's slice of the scores."""
        for a, b in zip(self.indptr[terms].tolist(), self.indptr[terms + 1].tolist()):
            if b > a:
                # a column holds each passage at most once, so plain fancy-index addition is exact
                out[self.indices[a:b]] += self.data[a:b]

    def add_scores_at(self, terms: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> None:
        """`add_scores` for the passages at `offsets` (ascending, within the segment) alone, into `out`
        (one slot per offset): each column is searched for them instead of being added whole. A column
        lists its passages in ascending order (scipy's CSR-to-CSC pass visits the rows in order)."""
        for a, b in zip(self.indptr[terms].tolist(), self.indptr[terms + 1].tolist()):
            if b > a:
                column = self.indices[a:b]
                at = np.minimum(np.searchsorted(column, offsets), b - a - 1)
                found = column[at] == offsets
                out[found] += self.data[a:b][at[found]]

    def mark(self, terms: set[int], mask: np.ndarray) -> None:
        for t in terms:
            mask[self.indices[self.indptr[t] : self.indptr[t + 1]]] = True

    def save(self, folder: Path, number: int) -> None:
        for name in ("data", "indices", "indptr"):
            np.save(folder / f"seg-{number:04d}.{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, folder: Path, number: int, start: int, n: int, mmap: bool) -> "_Segment":
        arrays = [np.load(folder / f"seg-{number:04d}.{name}.npy", mmap_mode="r" if mmap else None) for name in ("data", "indices", "indptr")]
        return cls(start, n, *arrays)


class _SegmentScorer:
    """Turns consecutive passages' tokens into segments scored with the global statistics."""

    def __init__(self, stats: _Stats, params: BM25Params) -> None:
        self.stats = stats
        self.params = params
        n = stats.n_passages
        # once per distinct document frequency (a few thousand among 100k terms), by the same scalar formula;
        # a term no passage holds any more (search.index.bm25_terms) has no postings: any idf will do
        dfs, term_df = np.unique(stats.df, return_inverse=True)
        self.idf = np.array([idf(params, int(d), n) if d else 0.0 for d in dfs.tolist()], dtype=np.float64)[term_df.reshape(-1)]
        self.nonoccurrence = None
        if params.method in NONOCCURRENCE_METHODS:
            avg = stats.avg_length
            zero = term_frequency_component(params, 0, avg, avg)
            self.nonoccurrence = self.idf * zero  # idf(df) * tfc(0) per term, as bm25s's non-occurrence array

    def segments(self, stream: TermStream, max_passages: int, max_postings: int) -> Iterator[_Segment]:
        """Segments in passage order: a segment ends after max_passages, or after the passage that brings
        it to max_postings postings."""
        ends = np.cumsum(stream.distinct)
        start = 0
        while start < len(stream.lengths):
            base = ends[start] - stream.distinct[start]
            stop = min(start + max_passages, int(np.searchsorted(ends, base + max_postings, side="left")) + 1, len(stream.lengths))
            yield self._segment(start, stop, base, int(ends[stop - 1]), stream)
            start = stop

    def _segment(self, start: int, stop: int, first_posting: int, end_posting: int, stream: TermStream) -> _Segment:
        """Passages [start, stop), whose postings are [first_posting, end_posting) of the stream."""
        import scipy.sparse as sp

        distinct = stream.distinct[start:stop]
        indptr = np.zeros(stop - start + 1, dtype=np.int64)
        np.cumsum(distinct, out=indptr[1:])
        lengths = stream.lengths[start:stop].astype(np.float64)
        terms = np.asarray(stream.terms[first_posting:end_posting])
        scores = np.empty(end_posting - first_posting, dtype=np.float64)
        # scored a bounded run of passages at a time: the formulas' temporaries stay small and are reused
        # (whole-segment temporaries are fresh memory each, and page faults cost more than the arithmetic)
        for a, b in _runs(indptr, _SCORE_POSTINGS):
            col = terms[indptr[a] : indptr[b]]
            tf = np.asarray(stream.counts[first_posting + indptr[a] : first_posting + indptr[b]], dtype=np.float64)
            chunk = self.idf[col] * term_frequency_component(self.params, tf, np.repeat(lengths[a:b], distinct[a:b]), self.stats.avg_length)
            if self.nonoccurrence is not None:
                chunk -= self.nonoccurrence[col]  # added back for every passage at query time, as in bm25s
            scores[indptr[a] : indptr[b]] = chunk
        # the postings are already a CSR matrix (a row per passage, each (passage, term) once); scipy turns it
        # into columns by a linear counting pass, no sort
        matrix = sp.csr_matrix((scores, terms, indptr), shape=(stop - start, len(self.stats.vocab))).tocsc()
        return _Segment(start, stop - start, matrix.data, matrix.indices.astype(np.int32, copy=False), matrix.indptr.astype(np.int64, copy=False))


def _runs(indptr: np.ndarray, size: int) -> Iterator[tuple[int, int]]:
    """(a, b): runs of whole passages holding about `size` postings (at least one passage each)."""
    a, n = 0, len(indptr) - 1
    while a < n:
        b = max(a + 1, int(np.searchsorted(indptr, indptr[a] + size, side="right")) - 1)
        yield a, min(b, n)
        a = min(b, n)


class BM25Index:
    """BM25 scores for every passage of a fixed corpus; passage ids are positions in the build order."""

    def __init__(
        self,
        vocab: dict[str, int],
        segments: list[_Segment],
        n_passages: int,
        params: BM25Params,
        nonoccurrence: np.ndarray | None = None,
        folder: Path | None = None,
    ) -> None:
        # Use build(), build_from_terms() or load().
        self._vocab = vocab
        self._segments = segments
        self.n_passages = int(n_passages)
        self.params = params
        self._nonoccurrence = nonoccurrence
        self._folder = folder  # where the arrays live when they are memory-mapped from disk
        self._needs_match_mask = params.method in NONOCCURRENCE_METHODS

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        corpus_tokens: Sequence[Sequence[str]],
        params: BM25Params = BM25Params(),
        segment_passages: int = SEGMENT_PASSAGES,
        segment_postings: int = SEGMENT_POSTINGS,
    ) -> "BM25Index":
        """Index ``corpus_tokens[i]`` (the tokens of passage i) in memory."""
        stream = TermStream.of_tokens(corpus_tokens)
        if not stream.vocab:  # no passages, or no passage with a token: nothing can ever match
            return cls({}, [], len(stream.lengths), params)
        scorer = _SegmentScorer(_Stats.of_terms(stream), params)
        segments = list(scorer.segments(stream, segment_passages, segment_postings))
        return cls(stream.vocab, segments, len(stream.lengths), params, scorer.nonoccurrence)

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
        stats = _Stats.of_terms(stream)
        if (stats.df == 0).sum() > 0.5 * len(stats.df):  # mostly terms of passages gone since: number afresh
            stream = stream.without_unused(stats.df, folder)
            stats = _Stats(stream.vocab, stats.df[stats.df > 0], stats.n_passages, stats.total_length)
        scorer = _SegmentScorer(stats, params)
        sizes = []
        for number, segment in enumerate(scorer.segments(stream, segment_passages, segment_postings)):
            segment.save(folder, number)
            sizes.append(segment.n)
            if on_passages:
                on_passages(segment.n)
            del segment  # only one segment's arrays are ever held
        cls._write_meta(folder, stream.vocab, sizes, len(stream.lengths), params, scorer.nonoccurrence)
        # memory-mapped as load() would, with the vocabulary in hand (reading it back: 0.1 s at 100k passages)
        starts = np.cumsum([0, *sizes])
        segments = [_Segment.load(folder, number, int(starts[number]), size, mmap=True) for number, size in enumerate(sizes)]
        return cls(stream.vocab, segments, len(stream.lengths), params, scorer.nonoccurrence, folder=folder)

    # ------------------------------------------------------------------ query
    def _query_ids(self, query_tokens: Sequence[str]) -> list[int]:
        vocab = self._vocab
        return [vocab[t] for t in query_tokens if t in vocab]  # duplicates kept on purpose (rank-bm25 counting)

    def _scores_of_ids(self, ids: list[int]) -> np.ndarray:
        out = np.zeros(self.n_passages, dtype=np.float64)
        terms = np.asarray(ids, dtype=np.int64)
        for segment in self._segments:
            segment.add_scores(terms, out[segment.start : segment.start + segment.n])
        if self._nonoccurrence is not None:
            out += self._nonoccurrence[terms].sum()
        return out

    def scores(self, query_tokens: Sequence[str]) -> np.ndarray:
        """BM25 score of every passage for the query (float64); 0 where no query term occurs (lucene,
        robertson, atire: bm25l / bm25+ add their non-occurrence term to every passage, as rank-bm25 does)."""
        if isinstance(query_tokens, str):
            raise TypeError("query_tokens must be a list of tokens, not a str")
        ids = self._query_ids(query_tokens)
        if not ids:
            return np.zeros(self.n_passages, dtype=np.float64)
        return self._scores_of_ids(ids)

    def scores_at(self, query_tokens: Sequence[str], pids: np.ndarray) -> np.ndarray:
        """``scores(query_tokens)[pids]``, bit for bit, at a cost that grows with ``len(pids)`` instead of
        with the query terms' postings (hybrid fusion scores a few hundred candidates of a large index)."""
        pids = np.asarray(pids, dtype=np.int64)
        out = np.zeros(len(pids), dtype=np.float64)
        ids = self._query_ids(query_tokens)
        if not ids or not len(pids):
            return out
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
        never returns fewer than ``k`` hits while ``k`` allowed matches exist. Ties: lower id first."""
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))
        if allowed is not None:
            allowed = np.asarray(allowed)
            if allowed.dtype != bool or allowed.shape != (self.n_passages,):
                raise ValueError(
                    f"allowed must be a boolean array of shape ({self.n_passages},), got {allowed.dtype} {allowed.shape}"
                )
        if k <= 0:
            return empty
        ids = self._query_ids(query_tokens)
        if not ids:
            return empty
        scores = self._scores_of_ids(ids)
        keep = scores > 0
        if self._needs_match_mask:
            keep &= self._matched(ids)
        if allowed is not None:
            keep &= allowed
        cand = np.flatnonzero(keep)
        cand_scores = scores[cand]
        if len(cand) > k:
            # k-th best score; keep everything above it, then the lowest ids among those equal to it.
            kth = -np.partition(-cand_scores, k - 1)[k - 1]
            above = cand_scores > kth
            n_ties = k - int(above.sum())
            ties = np.flatnonzero(cand_scores == kth)[:n_ties]
            sel = np.concatenate([np.flatnonzero(above), ties])
            cand, cand_scores = cand[sel], cand_scores[sel]
        order = np.lexsort((cand, -cand_scores))
        return cand[order].astype(np.int64, copy=False), cand_scores[order]

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
    def load(cls, folder: str | Path, mmap: bool = True) -> "BM25Index":
        """Read an index written by ``save``; with ``mmap`` the score matrices stay on disk, paged in on use."""
        folder = Path(folder)
        meta_path = folder / _META_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(f"no BM25 index in {folder} (missing {_META_NAME})")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        n = int(meta["n_passages"])
        if meta.get("format") != _FORMAT:
            raise ValueError(f"BM25 index in {folder} has format {meta.get('format')!r}, expected {_FORMAT}; rebuild it")
        params = BM25Params(**meta["params"])
        if meta["empty"]:
            return cls({}, [], n, params, folder=folder)
        with open(folder / VOCAB_FILE, encoding="utf-8") as handle:
            vocab = {token: term for term, token in enumerate(json.load(handle))}
        segments, start = [], 0
        for number, size in enumerate(meta["segments"]):
            segments.append(_Segment.load(folder, number, start, size, mmap))
            start += size
        if start != n:
            raise ValueError(f"BM25 index in {folder} is inconsistent: segments hold {start} != {n} passages")
        nonoccurrence = np.load(folder / "nonoccurrence.npy") if (folder / "nonoccurrence.npy").is_file() else None
        return cls(vocab, segments, n, params, nonoccurrence, folder=folder)

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
