"""BM25 segments: consecutive passages' precomputed scores as a CSC matrix over the global vocabulary
(see search.index.bm25), the statistics that make every segment score like one big index, and the
scorer that turns a term stream into segments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from search.index.bm25_scoring import NONOCCURRENCE_METHODS, BM25Params, idf, length_norm, saturation, term_frequency_component
from search.index.bm25_terms import TermStream
from search.index.file_io import new_mapped_npy

__all__ = ["SEGMENT_PASSAGES", "SEGMENT_POSTINGS", "Segment", "SegmentScorer", "Stats", "find_sorted"]

# A segment ends at this many passages or postings (distinct terms of a passage), whichever comes first:
# scoring one holds ~40 bytes per posting, so 8M keep a build's BM25 stage near 300 MB.
SEGMENT_PASSAGES = 200_000
SEGMENT_POSTINGS = 8_000_000
_CHUNK_POSTINGS = 2_000_000  # postings counted per bincount (a bounded read of the memory-mapped ids)
_ARRAYS = ("data", "indices", "indptr", "counts")
_SCORE_POSTINGS = 1_000_000  # postings scored at a time (8 MB temporaries, below malloc's mmap threshold)


@dataclass
class Stats:
    """What a first pass over the corpus knows: it makes every segment score like one big index."""

    vocab: dict[str, int]
    df: np.ndarray  # passages holding each term
    n_passages: int
    total_length: int

    @classmethod
    def of_terms(cls, stream: TermStream) -> "Stats":
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
class Segment:
    """Consecutive passages [start, start + n) as a CSC matrix over the global vocabulary."""

    start: int
    n: int
    data: np.ndarray  # float64 scores
    indices: np.ndarray  # int32 passage offsets within the segment
    indptr: np.ndarray  # int64, one entry per term + 1
    # int32 term counts beside the scores, which a passage's window (search.index.bm25_window) sums;
    # None in a segment written before windows were (it is scored without them until the next build)
    counts: np.ndarray | None = None

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
                at, found = find_sorted(self.indices[a:b], offsets)
                out[found] += self.data[a:b][at[found]]

    def postings(self, term: int) -> tuple[np.ndarray, np.ndarray]:
        """The passages (offsets within the segment) holding `term`, and how often each holds it."""
        a, b = int(self.indptr[term]), int(self.indptr[term + 1])
        return self.indices[a:b], self.counts[a:b]

    def mark(self, terms: set[int], mask: np.ndarray) -> None:
        for t in terms:
            mask[self.indices[self.indptr[t] : self.indptr[t + 1]]] = True

    @staticmethod
    def path(folder: Path, number: int, name: str) -> Path:
        """The file of one of a segment's arrays (`name` in "data", "indices", "indptr", "counts")."""
        return folder / f"seg-{number:04d}.{name}.npy"

    def save(self, folder: Path, number: int) -> None:
        for name in _ARRAYS:
            array = getattr(self, name)
            path = self.path(folder, number, name)
            # scores written straight into their file as they were computed (SegmentScorer) are there already
            if array is not None and not (isinstance(array, np.memmap) and Path(array.filename).resolve() == path.resolve()):
                np.save(path, array)

    @classmethod
    def load(cls, folder: Path, number: int, start: int, n: int, mmap: bool) -> "Segment":
        paths = [cls.path(folder, number, name) for name in _ARRAYS]
        # plain arrays over the mapped files: a numpy.memmap pays Python-level bookkeeping on every slice,
        # and a query slices each of its terms' columns several times
        arrays = [np.asarray(np.load(path, mmap_mode="r" if mmap else None)) if path.is_file() or name != "counts" else None
                  for name, path in zip(_ARRAYS, paths)]
        return cls(start, n, *arrays)


class SegmentScorer:
    """Turns consecutive passages' tokens into segments scored with the global statistics."""

    def __init__(self, stats: Stats, params: BM25Params) -> None:
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

    def segments(self, stream: TermStream, max_passages: int, max_postings: int, folder: Path | None = None) -> Iterator[Segment]:
        """Segments in passage order: a segment ends after max_passages, or after the passage that brings
        it to max_postings postings. With `folder`, each segment's scores are written into their file
        there as they are computed (`Segment.save` then writes the rest)."""
        ends = np.cumsum(stream.distinct)
        start, number = 0, 0
        while start < len(stream.lengths):
            base = ends[start] - stream.distinct[start]
            stop = min(start + max_passages, int(np.searchsorted(ends, base + max_postings, side="left")) + 1, len(stream.lengths))
            data_file = None if folder is None else Segment.path(folder, number, "data")
            yield self._segment(start, stop, base, int(ends[stop - 1]), stream, data_file)
            start, number = stop, number + 1

    def _segment(self, start: int, stop: int, first_posting: int, end_posting: int, stream: TermStream, data_file: Path | None) -> Segment:
        """Passages [start, stop), whose postings are [first_posting, end_posting) of the stream; scores
        into `data_file` (None: in memory)."""
        import scipy.sparse as sp

        rows = np.zeros(stop - start + 1, dtype=np.int64)
        np.cumsum(stream.distinct[start:stop], out=rows[1:])
        terms = np.asarray(stream.terms[first_posting:end_posting])
        row_counts = np.asarray(stream.counts[first_posting:end_posting], dtype=np.int32)
        # the postings are already a CSR matrix of term counts (a row per passage, each (passage, term)
        # once); scipy turns it into columns by a linear counting pass, no sort, carrying the counts along
        matrix = sp.csr_matrix((row_counts, terms, rows), shape=(stop - start, len(self.stats.vocab))).tocsc()
        passages = matrix.indices.astype(np.int32, copy=False)
        columns = matrix.indptr.astype(np.int64, copy=False)
        counts = matrix.data
        # into the file's pages directly: scores computed in memory and then written out cost page faults
        # for 8 bytes a posting and a copy of them (0.1 s of a one-note edit at 100k passages)
        if data_file is None:
            scores = np.empty(len(passages), dtype=np.float64)
        else:
            scores = new_mapped_npy(data_file, np.float64, (len(passages),))
        self._column_scores(columns, passages, counts, stream.lengths[start:stop], scores)
        return Segment(start, stop - start, scores, passages, columns, counts)

    def _column_scores(self, columns: np.ndarray, passages: np.ndarray, counts: np.ndarray, lengths: np.ndarray, scores: np.ndarray) -> None:
        """Each posting's score, column (term) by column: the scores a pass in passage order gives, bit for
        bit (the same formula on the same numbers), without gathering 8-byte scores into column order
        afterwards (a random read of the whole array: 0.1-0.2 s at 100k passages). Each passage's
        length is normalised once, not once per posting."""
        norms = length_norm(self.params, np.asarray(lengths, dtype=np.float64), self.stats.avg_length)
        held = np.diff(columns)
        # scored a bounded run of columns at a time: the formulas' temporaries stay small and are reused
        # (whole-segment temporaries are fresh memory each, and page faults cost more than the arithmetic)
        for a, b in _runs(columns, _SCORE_POSTINGS):
            lo, hi = columns[a], columns[b]
            tf = counts[lo:hi].astype(np.float64)
            chunk = np.repeat(self.idf[a:b], held[a:b]) * saturation(self.params, tf, norms[passages[lo:hi]])
            if self.nonoccurrence is not None:
                chunk -= np.repeat(self.nonoccurrence[a:b], held[a:b])  # added back for every passage at query time, as in bm25s
            scores[lo:hi] = chunk


def find_sorted(values: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of `wanted` would sit in `values` (ascending; clamped to the last place), and whether
    it is there: a column's passages looked up without a pass over the column."""
    if not len(values):
        return np.zeros(len(wanted), dtype=np.intp), np.zeros(len(wanted), dtype=bool)
    place = np.minimum(np.searchsorted(values, wanted), len(values) - 1)
    return place, values[place] == wanted


def _runs(indptr: np.ndarray, size: int) -> Iterator[tuple[int, int]]:
    """(a, b): runs of whole rows (passages, or columns) holding about `size` postings (at least one row each)."""
    a, n = 0, len(indptr) - 1
    while a < n:
        b = max(a + 1, int(np.searchsorted(indptr, indptr[a] + size, side="right")) - 1)
        yield a, min(b, n)
        a = min(b, n)
