"""Each passage's BM25 postings (its distinct term ids and their counts), written beside the BM25 index
while a build writes its passages, so BM25 is scored from arrays (tokens.jsonl is not read back), and
the next build copies an unchanged file's run of postings from this generation instead of mapping and
counting its tokens again.

A passage's postings are what BM25 needs of it and all it needs: document frequencies are a bincount
of the term ids, and each stored score is a formula of (term, tf, passage length). Counting tokens into
postings is the sort of a build; keeping them means a build after one edit sorts only the new passages.

Term ids only grow within a run of incremental builds: each starts from the previous generation's
vocabulary and appends new tokens, so the ids it copies stay valid. A token no passage holds any more
keeps its id with a document frequency of 0 (it scores nothing) until such terms are half the
vocabulary; then the build numbers the vocabulary afresh (search.index.bm25).
"""

from __future__ import annotations

import json
from array import array
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["TERM_FILES", "VOCAB_FILE", "TermStream", "TermWriter", "postings_of", "term_ids"]

TERMS_FILE = "postings.i32"  # each passage's distinct term ids (ascending), concatenated in passage order
COUNTS_FILE = "postings.tf.i32"  # how often each of those terms occurs in its passage
DISTINCT_FILE = "distinct.npy"  # postings per passage
LENGTHS_FILE = "lengths.npy"  # tokens per passage
VOCAB_FILE = "vocab.json"  # tokens in term id order (written by the index, see search.index.bm25)
TERM_FILES = (TERMS_FILE, COUNTS_FILE, DISTINCT_FILE, LENGTHS_FILE, VOCAB_FILE)  # what a later build reuses
_BUFFER_TOKENS = 1_000_000  # new passages' tokens counted into postings at a time (vectorised)


def term_ids(vocab: dict[str, int], tokens: Sequence[str], passage: int) -> array:
    """The ids of a passage's tokens, new tokens numbered after the others."""
    if isinstance(tokens, str):
        raise TypeError(f"passage {passage} is a str; pass a list of tokens per passage (see search.text.tokenizing.tokenize)")
    return array("i", [vocab.setdefault(token, len(vocab)) for token in tokens])


def postings_of(ids: np.ndarray, lengths: np.ndarray, n_vocab: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Consecutive passages' token ids (concatenated) as (postings per passage, term ids, counts), each
    passage's terms ascending: one sort of (passage, term) keys for the lot."""
    n_vocab = max(n_vocab, 1)
    passage = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    keys, counts = np.unique(passage * n_vocab + ids, return_counts=True)
    del passage
    rows = keys // n_vocab
    distinct = np.bincount(rows, minlength=len(lengths)).astype(np.int64)
    return distinct, (keys - rows * n_vocab).astype(np.int32), counts.astype(np.int32)


class TermStream:
    """Finished postings: term ids and counts, postings and tokens per passage, the vocabulary."""

    def __init__(self, terms: np.ndarray, counts: np.ndarray, distinct: np.ndarray, lengths: np.ndarray, vocab: dict[str, int]) -> None:
        self.terms, self.counts, self.distinct, self.lengths, self.vocab = terms, counts, distinct, lengths, vocab

    @classmethod
    def of_tokens(cls, corpus_tokens: Sequence[Sequence[str]]) -> "TermStream":
        """The postings of passages' tokens, in memory."""
        vocab: dict[str, int] = {}
        ids, lengths = array("i"), array("q")
        for i, tokens in enumerate(corpus_tokens):
            ids.extend(term_ids(vocab, tokens, i))
            lengths.append(len(tokens))
        length_array = np.frombuffer(lengths, dtype=np.int64)
        distinct, terms, counts = postings_of(np.frombuffer(ids, dtype=np.int32), length_array, len(vocab))
        return cls(terms, counts, distinct, length_array, vocab)

    @classmethod
    def open(cls, folder: Path) -> "TermStream | None":
        """The postings saved in a BM25 folder; None when it has none (an index of an older build)."""
        paths = [folder / name for name in TERM_FILES]
        if not all(path.is_file() for path in paths):
            return None
        distinct, lengths = np.load(paths[2]), np.load(paths[3])
        with open(paths[4], encoding="utf-8") as handle:
            vocab = {token: term for term, token in enumerate(json.load(handle))}
        terms, counts = _mapped(paths[0]), _mapped(paths[1])
        if not len(terms) == len(counts) == int(distinct.sum()) or len(distinct) != len(lengths):
            return None  # not postings this code wrote whole: build from tokens instead
        return cls(terms, counts, distinct, lengths, vocab)

    def without_unused(self, df: np.ndarray, folder: Path) -> "TermStream":
        """The stream renumbered without the terms no passage holds (df 0), its ids rewritten in `folder`
        (the order of a passage's terms is kept: renumbering preserves it)."""
        keep = df > 0
        new_id = (np.cumsum(keep) - 1).astype(np.int32)
        partial = folder / (TERMS_FILE + ".tmp")
        new_id[self.terms].tofile(partial)
        partial.replace(folder / TERMS_FILE)
        vocab = [token for token, kept in zip(self.vocab, keep.tolist()) if kept]
        return TermStream(_mapped(folder / TERMS_FILE), self.counts, self.distinct, self.lengths, {token: term for term, token in enumerate(vocab)})


def _mapped(path: Path) -> np.ndarray:
    return np.memmap(path, dtype=np.int32, mode="r") if path.stat().st_size else np.zeros(0, dtype=np.int32)


class TermWriter:
    """Appends passages' postings to `folder`, counted from new token lists (a buffer at a time) or
    copied as runs from `previous`."""

    def __init__(self, folder: Path, previous: TermStream | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.previous = folder, previous
        self.vocab: dict[str, int] = dict(previous.vocab) if previous is not None else {}
        self._starts = np.concatenate([[0], np.cumsum(previous.distinct)]) if previous is not None else None
        self._terms, self._counts = open(folder / TERMS_FILE, "wb"), open(folder / COUNTS_FILE, "wb")
        self._distinct, self._lengths = array("q"), array("q")
        self._pending_ids, self._pending_lengths = array("i"), array("q")

    def add(self, tokens: Sequence[str]) -> None:
        self._pending_ids.extend(term_ids(self.vocab, tokens, len(self._lengths) + len(self._pending_lengths)))
        self._pending_lengths.append(len(tokens))
        if len(self._pending_ids) >= _BUFFER_TOKENS:
            self._count_pending()

    def add_block(self, first: int, count: int) -> bool:
        """The previous generation's passages [first, first + count), copied; False without a previous stream."""
        if self.previous is None:
            return False
        self._count_pending()
        a, b = self._starts[first], self._starts[first + count]
        self._terms.write(self.previous.terms[a:b].tobytes())
        self._counts.write(self.previous.counts[a:b].tobytes())
        self._distinct.extend(self.previous.distinct[first : first + count].tolist())
        self._lengths.extend(self.previous.lengths[first : first + count].tolist())
        return True

    def _count_pending(self) -> None:
        if not self._pending_lengths:
            return
        lengths = np.frombuffer(self._pending_lengths, dtype=np.int64)
        distinct, terms, counts = postings_of(np.frombuffer(self._pending_ids, dtype=np.int32), lengths, len(self.vocab))
        self._terms.write(terms.tobytes())
        self._counts.write(counts.tobytes())
        self._distinct.extend(distinct.tolist())
        self._lengths.extend(self._pending_lengths)
        self._pending_ids, self._pending_lengths = array("i"), array("q")

    def close(self) -> TermStream:
        self._count_pending()
        self._terms.close(), self._counts.close()
        distinct, lengths = np.frombuffer(self._distinct, dtype=np.int64), np.frombuffer(self._lengths, dtype=np.int64)
        np.save(self.folder / DISTINCT_FILE, distinct)
        np.save(self.folder / LENGTHS_FILE, lengths)
        return TermStream(_mapped(self.folder / TERMS_FILE), _mapped(self.folder / COUNTS_FILE), distinct, lengths, self.vocab)

    def abort(self) -> None:
        """A failed build: let go of the files (flushing them may fail again, on a full disk)."""
        for handle in (self._terms, self._counts):
            try:
                handle.close()
            except OSError:
                pass
