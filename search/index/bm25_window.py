"""A second BM25 field per passage: its window, the passage with its neighbours before and after it in
the same document, scored as if the windows were passages of their own (their own document
frequencies, lengths and mean length), and added to the passage's own score with a weight
(BM25Params.window).

Why: a claim or question is often answered across a passage boundary (SciFact's claims spread over an
abstract cut into 200-token passages), while the answer's own passage should still win (cmrc2018's
answers are local). Measured on ../shared/eval (README, Relevance).

The windows are never stored: a window's term count is the sum of its passages' counts, read from the
term's column (the passages holding it, ascending), and its document frequency is counted from the
same column once per term and kept. So no build pays for merging every passage's neighbours (17M
postings and 3 s at 100k passages), and a query pays for the windows it scores: search.index.bm25
scores those of its best passages and their neighbours (WINDOW_POOL), since summing a frequent
term's column into every window cost 10 ms a query at 100k passages.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from search.index.bm25_scoring import NONOCCURRENCE_METHODS, BM25Params, idf, term_frequency_component
from search.index.bm25_segments import find_sorted

__all__ = ["Windows", "neighbour_joins"]

# A binary search in a column costs about this many of the in-order reads a pass over it makes: fewer
# passages to count than a query's postings by this factor are searched for, more are read through marks.
_SEARCH_COST = 4
_KEPT_FREQUENCIES = 1 << 16  # terms whose window document frequency is kept (a dict of ints: a few MB)


def neighbour_joins(starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which passages share a window with the one before, and with the one after: those of one document
    (`starts[i]`: passage i begins a document; a document's passages are consecutive)."""
    starts = np.asarray(starts, dtype=bool)
    joins_previous = ~starts
    joins_previous[:1] = False
    joins_next = np.zeros(len(starts), dtype=bool)
    joins_next[:-1] = joins_previous[1:]
    return joins_previous, joins_next


class Windows:
    """Which passages share a document with the one before and after, and each window's length."""

    def __init__(self, starts: np.ndarray, lengths: np.ndarray) -> None:
        """`starts[i]`: whether passage i begins a document (a document's passages are consecutive);
        `lengths[i]`: its BM25 tokens."""
        starts = np.asarray(starts, dtype=bool)
        lengths = np.asarray(lengths, dtype=np.int64)
        if len(starts) != len(lengths):
            raise ValueError(f"{len(starts)} document marks for {len(lengths)} passages")
        self.n = len(lengths)
        self.joins_previous, self.joins_next = neighbour_joins(starts)
        window = lengths.copy()
        window[1:] += np.where(self.joins_previous[1:], lengths[:-1], 0)
        window[:-1] += np.where(self.joins_next[:-1], lengths[1:], 0)
        self.lengths = window.astype(np.float64)
        self.avg_length = float(window.sum()) / self.n if self.n else 0.0
        self._frequencies: dict[int, int] = {}
        self._threads = threading.local()

    def with_neighbours(self, pids: np.ndarray) -> np.ndarray:
        """`pids` and their neighbours in their documents, ascending, once each."""
        pids = np.asarray(pids, dtype=np.int64)
        return _sorted_unique(np.concatenate([pids, pids[self.joins_previous[pids]] - 1, pids[self.joins_next[pids]] + 1]))

    def document_frequency(self, term: int, passages: np.ndarray) -> int:
        """How many windows hold a term, from the passages holding it (ascending): each of them, and each
        neighbour that does not hold it, counted once when it neighbours two of them."""
        found = self._frequencies.get(term)
        if found is None:
            found = self._frequencies[term] = _windows_holding(passages, self.joins_previous, self.joins_next)
            if len(self._frequencies) > _KEPT_FREQUENCIES:
                self._frequencies.clear()
        return found

    def term_counts_at(self, columns: Sequence[tuple[np.ndarray, np.ndarray]], at: np.ndarray) -> np.ndarray:
        """How often each window of `at` holds each term, one row a term (float64, as scored), from the
        terms' columns (the passages holding it, ascending, and their counts)."""
        at = np.asarray(at, dtype=np.int64)
        before = np.where(self.joins_previous[at], at - 1, -1)  # -1: no neighbour joins on that side
        after = np.where(self.joins_next[at], at + 1, -1)
        spanned = _sorted_unique(np.concatenate([before[before >= 0], at, after[after >= 0]]))
        postings = sum(len(passages) for passages, _ in columns)
        if _SEARCH_COST * len(columns) * len(spanned) < postings:
            counts = self._searched(columns, spanned)
        else:
            counts = self._read_through_marks(columns, spanned)
        # each window's passages' places among the spanned ones; a missing neighbour reads the last,
        # empty column
        own = np.searchsorted(spanned, at)
        before = np.where(before >= 0, np.searchsorted(spanned, before), len(spanned))
        after = np.where(after >= 0, np.searchsorted(spanned, after), len(spanned))
        return counts[:, own] + counts[:, before] + counts[:, after]

    @staticmethod
    def _searched(columns: Sequence[tuple[np.ndarray, np.ndarray]], spanned: np.ndarray) -> np.ndarray:
        """Each term's count in each passage of `spanned` (and a last, empty column): a binary search of
        its column for each."""
        wanted = spanned.astype(np.int32)  # as the columns: searched without a copy of them
        counts = np.zeros((len(columns), len(spanned) + 1), dtype=np.float64)
        for row, (passages, held) in enumerate(columns):
            if len(passages):
                place, found = find_sorted(passages, wanted)
                counts[row, :-1] = np.where(found, held[place], 0)
        return counts

    def _read_through_marks(self, columns: Sequence[tuple[np.ndarray, np.ndarray]], spanned: np.ndarray) -> np.ndarray:
        """Each term's count in each passage of `spanned` (and a last, empty column): the passages marked
        with their place in this thread's zeros (left as they were found), each column read through the
        marks in one pass."""
        marks = self._scratch(self.n)
        counts = np.zeros((len(columns), len(spanned) + 1), dtype=np.float64)
        try:
            marks[spanned] = np.arange(1, len(spanned) + 1, dtype=np.int32)
            for row, (passages, held) in enumerate(columns):
                place = marks[passages]
                found = place > 0
                counts[row, place[found] - 1] = held[found]
        finally:
            marks[spanned] = 0
        return counts

    def _scratch(self, size: int) -> np.ndarray:
        """This thread's zeros, at least `size` (kept: fresh ones cost page faults on every query)."""
        scratch = getattr(self._threads, "scratch", None)
        if scratch is None or len(scratch) < size:
            scratch = self._threads.scratch = np.zeros(size, dtype=np.int32)
        return scratch

    def scores_at(self, params: BM25Params, terms: Sequence[tuple[int, float, np.ndarray, np.ndarray]], at: np.ndarray) -> np.ndarray:
        """The window field's BM25 score of the windows `at` for the query `terms`: (term id, its weight,
        the passages holding it (ascending), their counts), summed in the order given."""
        out = np.zeros(len(at), dtype=np.float64)
        if not terms or not len(at):
            return out
        tf = self.term_counts_at([(passages, counts) for _, _, passages, counts in terms], at)
        component = term_frequency_component(params, tf, self.lengths[at][None, :], self.avg_length)
        if params.method in NONOCCURRENCE_METHODS:  # the same for every window: it cannot move one above another
            component -= term_frequency_component(params, 0.0, self.avg_length, self.avg_length)
        for row, (term, weight, passages, _) in enumerate(terms):
            out += (weight * idf(params, self.document_frequency(term, passages), self.n)) * component[row]
        return out


def _windows_holding(passages: np.ndarray, joins_previous: np.ndarray, joins_next: np.ndarray) -> int:
    """The windows that hold a term held by `passages` (ascending): a passage's previous neighbour adds
    a window unless it holds the term itself, its next one likewise, and a neighbour between two of
    them (the gap of 2) is one window, not two."""
    if not len(passages):
        return 0
    gap = np.diff(passages)
    before = joins_previous[passages].copy()
    before[1:] &= gap != 1
    after = joins_next[passages].copy()
    after[:-1] &= gap != 1
    shared = before[1:] & after[:-1] & (gap == 2)
    return int(len(passages) + before.sum() + after.sum() - shared.sum())


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """`values` ascending, once each (a sort and a comparison: np.unique's hashing costs more on a few thousand)."""
    values = np.sort(values)
    return values[np.concatenate([[True], values[1:] != values[:-1]])] if len(values) else values
