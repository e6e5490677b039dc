"""BM25 over pre-tokenised passages, on the `bm25s` library (sparse matrix of precomputed term scores).

bm25s computes, at build time, the BM25 contribution of every (term, passage) pair and stores it in a CSC
matrix (one column per term); a query sums the columns of its terms. We keep the scoring in the library and
add what the engine needs around it:

* a 0-passage corpus, passages with no tokens, and a corpus with no tokens at all;
* queries that are empty or only hold unknown tokens (bm25s raises on those: we return zeros);
* repeated query tokens count once per occurrence, as in rank-bm25 (``for q in query: score += ...``);
  bm25s keeps duplicates too, so "gpt gpt" scores twice "gpt";
* ``top_k`` with an optional boolean ``allowed`` mask applied before the cut, deterministic ties
  (lower passage id first);
* save/load of the score matrix (memory-mapped by default), never re-tokenising;
* loading for queries without importing bm25s (and scipy, ~0.2 s of a cold `search query`):
  ``_StoredScores`` reads bm25s's saved arrays and sums columns exactly as bm25s does.

Scores are float64 (bm25s ``dtype="float64"``), so they agree with rank-bm25 / a direct formula to ~1e-12.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["BM25Index"]

_META_NAME = "bm25_index.json"
_FORMAT = 1
_METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
# Methods whose score adds a non-occurrence term for every passage, so a positive score does not mean a match.
_NONOCCURRENCE_METHODS = ("bm25l", "bm25+")


def _import_bm25s():
    import bm25s  # progress bars: every call below passes show_progress=False

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets DEBUG and logs each index() call

    return bm25s


class _StoredScores:
    """The query side of a saved bm25s.BM25, read with numpy alone (same attribute names and the
    same summation as ``bm25s.BM25.get_scores_from_ids``, so scores are bit-identical)."""

    _FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json", "params.index.json")
    _NONOCCURRENCE = "nonoccurrence_array.index.npy"

    def __init__(self, folder: Path, mmap: bool) -> None:
        mode = "r" if mmap else None
        self.folder = folder
        params = json.loads((folder / "params.index.json").read_text(encoding="utf-8"))
        self.dtype = params["dtype"]
        self.int_dtype = params["int_dtype"]
        self.vocab_dict: dict[str, int] = json.loads((folder / "vocab.index.json").read_text(encoding="utf-8"))
        self.scores = {
            "data": np.load(folder / "data.csc.index.npy", mmap_mode=mode),
            "indices": np.load(folder / "indices.csc.index.npy", mmap_mode=mode),
            "indptr": np.load(folder / "indptr.csc.index.npy", mmap_mode=mode),
            "num_docs": int(params["num_docs"]),
        }
        nonoccurrence = folder / self._NONOCCURRENCE
        self.nonoccurrence_array = np.load(nonoccurrence) if nonoccurrence.is_file() else None
        if params["method"] in _NONOCCURRENCE_METHODS and self.nonoccurrence_array is None:
            raise ValueError(f"BM25 index in {folder} lacks {self._NONOCCURRENCE}; rebuild it")

    def get_scores_from_ids(self, query_tokens_ids: list[int]) -> np.ndarray:
        data, indices, indptr = self.scores["data"], self.scores["indices"], self.scores["indptr"]
        scores = np.zeros(self.scores["num_docs"], dtype=np.dtype(self.dtype))
        for t in np.asarray(query_tokens_ids, dtype=np.dtype(self.int_dtype)):
            start, end = indptr[t], indptr[t + 1]
            np.add.at(scores, indices[start:end], data[start:end])  # bm25s's order of additions
        if self.nonoccurrence_array is not None:
            scores += self.nonoccurrence_array[query_tokens_ids].sum()
        return scores

    def save(self, folder: Path, **_: Any) -> None:
        folder = Path(folder)
        names = [*self._FILES, *([self._NONOCCURRENCE] if self.nonoccurrence_array is not None else [])]
        for name in names:
            shutil.copyfile(self.folder / name, folder / name)


class BM25Index:
    """BM25 scores for every passage of a fixed corpus; passage ids are positions in the build list."""

    DEFAULT_PARAMS = {"method": "lucene", "k1": 0.9, "b": 0.4}

    def __init__(self, model: Any, n_passages: int, params: dict[str, Any]) -> None:
        # Use build() or load(); model is a bm25s.BM25, or None when the corpus has no tokens at all.
        self._model = model
        self.n_passages = int(n_passages)
        self.params = dict(params)
        self._vocab: dict[str, int] = model.vocab_dict if model is not None else {}
        self._dtype = np.dtype(model.dtype) if model is not None else np.dtype(np.float64)
        self._needs_match_mask = self.params.get("method") in _NONOCCURRENCE_METHODS

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        corpus_tokens: Sequence[Sequence[str]],
        method: str = "lucene",
        k1: float = 0.9,
        b: float = 0.4,
        delta: float = 0.5,
    ) -> "BM25Index":
        """Index ``corpus_tokens[i]`` (the tokens of passage i). ``delta`` only matters for bm25l / bm25+."""
        if method not in _METHODS:
            raise ValueError(f"unknown BM25 method {method!r}; choose from {', '.join(_METHODS)}")
        docs: list[list[str]] = []
        for i, doc in enumerate(corpus_tokens):
            if isinstance(doc, str):
                raise TypeError(f"passage {i} is a str; pass a list of tokens per passage (see search.tokenizing.tokenize)")
            docs.append(list(doc))
        params = {"method": method, "k1": float(k1), "b": float(b), "delta": float(delta)}
        if not any(docs):  # no passages, or no passage with a token: nothing can ever match
            return cls(None, len(docs), params)

        bm25s = _import_bm25s()
        model = bm25s.BM25(method=method, k1=k1, b=b, delta=delta, dtype="float64", int_dtype="int32")
        # Passages with zero tokens are fine for bm25s as long as the vocabulary is not empty: they get no
        # column entries and count with length 0 in the average length (as in rank-bm25). No empty "" token:
        # the tokenizer never emits one and a query must not reach a column that does not exist.
        model.index(docs, create_empty_token=False, show_progress=False)
        return cls(model, len(docs), params)

    # ------------------------------------------------------------------ query
    def _query_ids(self, query_tokens: Sequence[str]) -> list[int]:
        vocab = self._vocab
        return [vocab[t] for t in query_tokens if t in vocab]  # duplicates kept on purpose (rank-bm25 counting)

    def scores(self, query_tokens: Sequence[str]) -> np.ndarray:
        """BM25 score of every passage for the query (float64); 0 where no query term occurs (lucene,
        robertson, atire: bm25l / bm25+ add their non-occurrence term to every passage, as rank-bm25 does)."""
        if isinstance(query_tokens, str):
            raise TypeError("query_tokens must be a list of tokens, not a str")
        ids = self._query_ids(query_tokens) if self._model is not None else []
        if not ids:
            return np.zeros(self.n_passages, dtype=self._dtype)
        return self._model.get_scores_from_ids(ids)

    def _matched(self, ids: list[int]) -> np.ndarray:
        """Passages holding at least one of the term ids."""
        s = self._model.scores
        indptr, indices = s["indptr"], s["indices"]
        mask = np.zeros(self.n_passages, dtype=bool)
        for t in set(ids):
            mask[indices[indptr[t] : indptr[t + 1]]] = True
        return mask

    def top_k(
        self, query_tokens: Sequence[str], k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best passages as (ids int64, scores), best first; only passages with score > 0 that hold a
        query term, and (when given) ``allowed[id]`` is True. The mask applies before the cut, so a filter
        never returns fewer than ``k`` hits while ``k`` allowed matches exist. Ties: lower id first."""
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=self._dtype))
        if allowed is not None:
            allowed = np.asarray(allowed)
            if allowed.dtype != bool or allowed.shape != (self.n_passages,):
                raise ValueError(
                    f"allowed must be a boolean array of shape ({self.n_passages},), got {allowed.dtype} {allowed.shape}"
                )
        if k <= 0 or self._model is None:
            return empty
        ids = self._query_ids(query_tokens)
        if not ids:
            return empty
        scores = self._model.get_scores_from_ids(ids)
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
    def save(self, folder: str | Path) -> None:
        """Write the index into ``folder`` (created if needed): bm25s's arrays, vocabulary and parameters,
        plus our own small manifest, written last."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self._model is not None:
            self._model.save(folder, corpus=None, show_progress=False)
        meta = {
            "format": _FORMAT,
            "n_passages": self.n_passages,
            "params": self.params,
            "empty": self._model is None,
        }
        tmp = folder / (_META_NAME + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        tmp.replace(folder / _META_NAME)

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> "BM25Index":
        """Read an index written by ``save``; with ``mmap`` the score matrix stays on disk, paged in on use."""
        folder = Path(folder)
        meta_path = folder / _META_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(f"no BM25 index in {folder} (missing {_META_NAME})")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != _FORMAT:
            raise ValueError(f"BM25 index in {folder} has format {meta.get('format')!r}, expected {_FORMAT}; rebuild it")
        n = int(meta["n_passages"])
        if meta["empty"]:
            return cls(None, n, meta["params"])
        model = _StoredScores(folder, mmap=bool(mmap))
        if int(model.scores["num_docs"]) != n:
            raise ValueError(f"BM25 index in {folder} is inconsistent: {model.scores['num_docs']} != {n} passages")
        return cls(model, n, meta["params"])

    # ------------------------------------------------------------------ misc
    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def __len__(self) -> int:
        return self.n_passages

    def __repr__(self) -> str:
        return f"BM25Index(n_passages={self.n_passages}, vocab={self.vocab_size}, params={self.params})"
