"""Nearest-neighbour search over L2-normalised passage vectors with FAISS (inner product = cosine)."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np


_ADD_CHUNK = 65_536  # rows copied into FAISS at a time


class DenseIndex:
    """A FAISS index plus the passage id of each of its rows."""

    # How an approximate index (HNSW, IVF) searches a filtered set: up to this many allowed rows,
    # score them directly, since a graph search loses recall under a selective filter; above it, let
    # FAISS skip disallowed rows (IDSelector). A flat index always uses the selector: it is exact
    # and costs in proportion to the allowed rows (benchmarks/filters.py).
    EXACT_FILTER_ROWS = 5_000

    def __init__(self, index: faiss.Index, ids: np.ndarray) -> None:
        if index.ntotal != len(ids):
            raise ValueError(f"FAISS index has {index.ntotal} vectors but {len(ids)} ids")
        self.index = index
        self.ids = np.asarray(ids, dtype=np.int64)

    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray, dim: int) -> "DenseIndex":
        """`vectors` may be a memory-mapped file: it is added in chunks, never copied whole."""
        vectors = vectors.reshape(-1, dim)
        index = faiss.IndexFlatIP(dim)  # exact search; fine up to a few hundred thousand passages
        for start in range(0, len(vectors), _ADD_CHUNK):
            index.add(np.ascontiguousarray(vectors[start : start + _ADD_CHUNK], dtype=np.float32))
        return cls(index, ids)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, query: np.ndarray, k: int, allowed_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Passage ids and cosine scores of the k nearest passages, best first; with `allowed_rows`
        (row numbers, as from `row_of`) only among those rows, so a filter never cuts hits below k."""
        k = min(k, len(self) if allowed_rows is None else len(allowed_rows))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if allowed_rows is None or len(allowed_rows) == len(self):
            scores, rows = self.index.search(query, k)
        elif len(allowed_rows) <= self.EXACT_FILTER_ROWS and not isinstance(self.index, faiss.IndexFlat):
            return self._search_rows(query, k, allowed_rows)
        else:
            mask = np.zeros(len(self), dtype=bool)
            mask[allowed_rows] = True
            selector = faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))
            scores, rows = self.index.search(query, k, params=_search_parameters(self.index, selector))
            if int((rows[0] >= 0).sum()) < k:  # an approximate index can miss allowed rows: be exact
                return self._search_rows(query, k, allowed_rows)
        keep = rows[0] >= 0
        return self.ids[rows[0][keep]], scores[0][keep]

    def _search_rows(self, query: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64)
        scores = self.scores_of(query, rows)
        top = np.argpartition(-scores, k - 1)[:k] if k < len(rows) else np.arange(len(rows))
        top = top[np.lexsort((rows[top], -scores[top]))]  # best first, lower row on ties
        return self.ids[rows[top]], scores[top]

    def scores_of(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Cosine of the query with the vectors at `rows` (for candidates the search did not return)."""
        if len(rows) == 0:
            return np.zeros(0, dtype=np.float32)
        vectors = self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))
        return vectors @ np.asarray(query, dtype=np.float32).reshape(-1)

    def row_of(self, n_passages: int) -> np.ndarray:
        """Row of each passage id in this index, -1 for passages of other spaces."""
        rows = np.full(n_passages, -1, dtype=np.int64)
        rows[self.ids] = np.arange(len(self.ids))
        return rows

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        """The stored float32 vectors at `rows` (an incremental build copies them instead of re-embedding)."""
        if len(rows) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def vectors(self) -> np.ndarray:
        """All stored vectors in row order (reused by incremental builds instead of re-embedding)."""
        if len(self) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.index.reconstruct_n(0, len(self))

    def save(self, prefix: Path) -> None:
        faiss.write_index(self.index, str(prefix.with_suffix(".faiss")))
        np.save(prefix.with_suffix(".ids.npy"), self.ids)

    @classmethod
    def load(cls, prefix: Path, mmap: bool = False) -> "DenseIndex":
        """With `mmap` the vectors stay in the file, paged in on use (a build reading the previous generation)."""
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(prefix.with_suffix(".faiss")), flags)
        ids = np.load(prefix.with_suffix(".ids.npy"))
        return cls(index, ids)


def _search_parameters(index: faiss.Index, selector: faiss.IDSelector) -> faiss.SearchParameters:
    """Search parameters carrying `selector`; IVF indexes need their own kind (with their nprobe),
    the others (flat, HNSW) take the generic one and keep their own settings."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        return faiss.SearchParameters(sel=selector)
    return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe, max_codes=ivf.max_codes)
