"""Each passage's BM25 tokens as int32 term ids, written beside the BM25 index while a build writes its
passages, so BM25 is scored from arrays in one vectorised pass (tokens.jsonl is not read back), and the
next build copies an unchanged file's run of ids from this generation instead of mapping its tokens again.

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

__all__ = ["LENGTHS_FILE", "TERMS_FILE", "TERM_FILES", "VOCAB_FILE", "TermStream", "TermWriter", "term_ids"]

TERMS_FILE = "terms.i32"  # every passage's term ids, concatenated in passage order
LENGTHS_FILE = "lengths.npy"  # tokens per passage
VOCAB_FILE = "vocab.json"  # tokens in term id order (written by the index, see search.index.bm25)
TERM_FILES = (TERMS_FILE, LENGTHS_FILE, VOCAB_FILE)  # what a later build reuses


def term_ids(vocab: dict[str, int], tokens: Sequence[str], passage: int) -> array:
    """The ids of a passage's tokens, new tokens numbered after the others."""
    if isinstance(tokens, str):
        raise TypeError(f"passage {passage} is a str; pass a list of tokens per passage (see search.text.tokenizing.tokenize)")
    return array("i", [vocab.setdefault(token, len(vocab)) for token in tokens])


class TermStream:
    """A finished stream: term ids, passage lengths and the vocabulary that numbers them."""

    def __init__(self, terms: np.ndarray, lengths: np.ndarray, vocab: dict[str, int]) -> None:
        self.terms, self.lengths, self.vocab = terms, lengths, vocab

    @classmethod
    def open(cls, folder: Path) -> "TermStream | None":
        """The stream saved in a BM25 folder; None when it has none (an index of an older build)."""
        paths = [folder / name for name in TERM_FILES]
        if not all(path.is_file() for path in paths):
            return None
        lengths = np.load(paths[1])
        with open(paths[2], encoding="utf-8") as handle:
            vocab = {token: term for term, token in enumerate(json.load(handle))}
        terms = np.memmap(paths[0], dtype=np.int32, mode="r") if paths[0].stat().st_size else np.zeros(0, dtype=np.int32)
        if len(terms) != int(lengths.sum()):
            return None  # not a stream this code wrote whole: build from tokens instead
        return cls(terms, lengths, vocab)

    def without_unused(self, df: np.ndarray, folder: Path) -> "TermStream":
        """The stream renumbered without the terms no passage holds (df 0), its ids rewritten in `folder`."""
        keep = df > 0
        new_id = (np.cumsum(keep) - 1).astype(np.int32)
        partial = folder / (TERMS_FILE + ".tmp")
        new_id[self.terms].tofile(partial)
        partial.replace(folder / TERMS_FILE)
        vocab = [token for token, kept in zip(self.vocab, keep.tolist()) if kept]
        terms = np.memmap(folder / TERMS_FILE, dtype=np.int32, mode="r") if len(self.terms) else np.zeros(0, dtype=np.int32)
        return TermStream(terms, self.lengths, {token: term for term, token in enumerate(vocab)})


class TermWriter:
    """Appends passages' term ids to `folder`, as new token lists or as runs copied from `previous`."""

    def __init__(self, folder: Path, previous: TermStream | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.previous = folder, previous
        self.vocab: dict[str, int] = dict(previous.vocab) if previous is not None else {}
        self._starts = np.concatenate([[0], np.cumsum(previous.lengths)]) if previous is not None else None
        self._file = open(folder / TERMS_FILE, "wb")
        self._lengths = array("q")

    def add(self, tokens: Sequence[str]) -> None:
        self._file.write(term_ids(self.vocab, tokens, len(self._lengths)).tobytes())
        self._lengths.append(len(tokens))

    def add_block(self, first: int, count: int) -> bool:
        """The previous generation's passages [first, first + count), copied; False without a previous stream."""
        if self.previous is None:
            return False
        self._file.write(self.previous.terms[self._starts[first] : self._starts[first + count]].tobytes())
        self._lengths.extend(self.previous.lengths[first : first + count].tolist())
        return True

    def close(self) -> TermStream:
        self._file.close()
        lengths = np.frombuffer(self._lengths, dtype=np.int64)
        np.save(self.folder / LENGTHS_FILE, lengths)
        path = self.folder / TERMS_FILE
        terms = np.memmap(path, dtype=np.int32, mode="r") if path.stat().st_size else np.zeros(0, dtype=np.int32)
        return TermStream(terms, lengths, self.vocab)

    def abort(self) -> None:
        """A failed build: let go of the file (flushing it may fail again, on a full disk)."""
        try:
            self._file.close()
        except OSError:
            pass
