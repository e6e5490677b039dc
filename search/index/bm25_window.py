"""A second BM25 field per passage: its window, the passage with its neighbours before and after it in
the same document, scored as if the windows were passages of their own (their own document
frequencies, lengths and mean length), and added to the passage's own score with a weight
(BM25Params.window).

Why: a claim or question is often answered across a passage boundary (SciFact's claims spread over an
abstract cut into 200-token passages), while the answer's own passage should still win (cmrc2018's
answers are local). Measured on ../shared/eval (README, Relevance): scifact 0.7379 -> 0.7466 hybrid,
cmrc2018 0.9903 -> 0.9907; one passage per document cannot change.

The windows are never stored: a window's term count is the sum of its passages' counts, so a query
sums the postings of its own terms into the windows they fall in (each posting counts for its passage
and its two neighbours), which costs a few times the postings BM25 reads anyway, and no build pays
for merging every passage's neighbours (17M postings and 3 s at 100k passages).
"""

from __future__ import annotations

import numpy as np

from search.index.bm25_scoring import NONOCCURRENCE_METHODS, BM25Params, idf, term_frequency_component

__all__ = ["Windows"]

# Above this share of the passages, a term's windows are summed into an array over every passage (a
# bincount); below it, its postings are sorted instead, which costs less than touching every passage.
_DENSE_SHARE = 1 / 16


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
        self.joins_previous = ~starts
        if self.n:
            self.joins_previous[0] = False
        self.joins_next = np.zeros(self.n, dtype=bool)
        self.joins_next[:-1] = self.joins_previous[1:]
        window = lengths.copy()
        window[1:] += np.where(self.joins_previous[1:], lengths[:-1], 0)
        window[:-1] += np.where(self.joins_next[:-1], lengths[1:], 0)
        self.lengths = window.astype(np.float64)
        self.avg_length = float(window.sum()) / self.n if self.n else 0.0

    def term_counts(self, passages: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The windows holding a term, ascending, and how often each holds it, from the passages
        holding it and their counts: each passage's count goes to its own window and its neighbours'."""
        before, after = self.joins_previous[passages], self.joins_next[passages]
        windows = np.concatenate([passages, passages[before] - 1, passages[after] + 1])
        weights = np.concatenate([counts, counts[before], counts[after]]).astype(np.float64)
        if len(windows) > _DENSE_SHARE * self.n:
            summed = np.bincount(windows, weights, minlength=self.n)
            held = np.flatnonzero(summed)
            return held, summed[held]
        held, place = np.unique(windows, return_inverse=True)
        return held, np.bincount(place, weights)

    def scores(self, params: BM25Params, passages: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(windows, their BM25 score for one term) from the term's postings."""
        held, tf = self.term_counts(passages, counts)
        if not len(held):
            return held, tf
        component = term_frequency_component(params, tf, self.lengths[held], self.avg_length)
        if params.method in NONOCCURRENCE_METHODS:  # the same for every window: it cannot move one above another
            component -= term_frequency_component(params, 0.0, self.avg_length, self.avg_length)
        return held, idf(params, len(held), self.n) * component
