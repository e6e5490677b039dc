"""Nearest-neighbour search over L2-normalised passage vectors with FAISS (inner product = cosine).

Which kind of FAISS index a space gets, and how deep each is searched: search.index.dense_kinds.

An incremental build (`extended`) keeps the previous index: the rows of passages that are gone stay
as *retired* rows (passage id -1) that every search skips, until they would be a fifth of the rows and
the build makes a new index; new vectors go into a *tail*, a small flat index of the rows added since
the index was built, searched exactly beside it (`TAIL_MAX_ROWS`). The index's own files are then the
previous generation's (hard links), so a one-note edit of a 100k-passage index neither reads, writes
nor hashes the ~130 MB graph of its space again (it rewrote it before: 0.4-0.6 s of the edit, and the
graph read into the build's memory). A tail that would outgrow its bound is folded in: a graph is
extended with it (adding a vector to a graph costs milliseconds, building one seconds), a flat or IVF
index built anew.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import faiss
import numpy as np

from search.index.dense_kinds import (GRAPH_MAX_VECTORS, HNSW_BUILD_DEPTH, HNSW_NEIGHBOURS, TRAIN_POINTS_PER_LIST, index_kind, ivf_lists,
                                      ivf_probes, search_parameters, set_search_depth)
from search.index.file_io import link_or_copy
from search.index.row_files import RowFile, StoredVectors

# A graph is built anew once retired rows (passages gone since it was built) would pass this share.
MAX_RETIRED_SHARE = 0.2
# Rows added since the index was built, kept in its flat tail (see the module docstring) up to this
# many: ~400 one-note edits, and a scan of 2,048 x 512 floats adds ~0.1 ms to a query.
TAIL_MAX_ROWS = 2048
# An approximate search re-ranks this many times k candidates (at least RERANK_MIN) exactly.
RERANK_FACTOR = 2
RERANK_MIN = 50


_ADD_CHUNK = 65_536  # rows copied into FAISS at a time


class DenseIndex:
    """A FAISS index plus the passage id of each of its rows (and, for approximate indexes, the
    exact float32 vectors in row order), and the flat tail of rows added since it was built: rows
    [0, index.ntotal) are the index's, the rest the tail's, and `ids` covers them all."""

    # How an approximate index (HNSW, IVF) searches a filtered set: up to this many allowed rows,
    # score them directly, since a graph search loses recall under a selective filter; above it, let
    # FAISS skip disallowed rows (IDSelector). A flat index always uses the selector: it is exact
    # and costs in proportion to the allowed rows (benchmarks/filters.py).
    EXACT_FILTER_ROWS = 5_000

    def __init__(self, index: faiss.Index, ids: np.ndarray, exact_vectors: "np.ndarray | RowFile | None" = None,
                 same_files_as: Path | None = None, tail: np.ndarray | None = None) -> None:
        """`same_files_as`: the prefix of saved files that hold this very index (see `save`); `tail`: the
        vectors of the rows after the index's own."""
        self._same_files_as = same_files_as
        tail_rows = 0 if tail is None else len(tail)
        if index.ntotal + tail_rows != len(ids):
            raise ValueError(f"FAISS index has {index.ntotal} vectors and its tail {tail_rows} but there are {len(ids)} ids")
        if exact_vectors is not None and len(exact_vectors) != index.ntotal:
            raise ValueError(f"{len(exact_vectors)} re-rank vectors for {index.ntotal} rows")
        self.index = index
        self.ids = np.asarray(ids, dtype=np.int64)  # -1: a retired row (see the module docstring)
        self._exact = exact_vectors  # None for an exact index, whose own storage holds the vectors
        self.retired = int((self.ids < 0).sum())
        self._own_ids = self.ids[: index.ntotal]  # the index's own rows' ids
        self._own_retired = int((self._own_ids < 0).sum())
        self._live = None  # bitmap of the index's live rows and its selector, when some are retired
        if self._own_retired:
            bitmap = np.packbits(self._own_ids >= 0, bitorder="little")
            self._live = (bitmap, faiss.IDSelectorBitmap(bitmap))  # the bitmap must outlive the selector
        self._tail = None
        if tail_rows:
            flat = faiss.IndexFlatIP(index.d)
            _add_in_chunks(flat, tail)
            self._tail = DenseIndex(flat, self.ids[index.ntotal :])

    @classmethod
    def build(
        cls, vectors: np.ndarray, ids: np.ndarray, dim: int, exact_max: int | None = None, graph_max: int = GRAPH_MAX_VECTORS
    ) -> "DenseIndex":
        """Index `vectors` (row i is passage `ids[i]`); exact up to `exact_max` vectors (default
        EXACT_MAX_VECTORS), an HNSW graph up to `graph_max`, IVF with exact re-rank above it.
        `vectors` may be a memory-mapped file: it is added in chunks and never copied whole."""
        vectors = vectors.reshape(-1, dim)
        kind = index_kind(len(vectors), exact_max, graph_max)
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
            _add_in_chunks(index, vectors)
            return cls(index, ids)
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_BUILD_DEPTH
            set_search_depth(index)
            _add_in_chunks(index, vectors)
            return cls(index, ids)
        nlist = ivf_lists(len(vectors))
        index = faiss.index_factory(dim, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
        sample = np.random.default_rng(0).choice(len(vectors), min(len(vectors), nlist * TRAIN_POINTS_PER_LIST), replace=False)
        index.train(np.ascontiguousarray(vectors[np.sort(sample)], dtype=np.float32))
        _add_in_chunks(index, vectors)
        index.nprobe = ivf_probes(nlist)
        return cls(index, ids, vectors)

    @classmethod
    def extended(cls, prefix: Path, ids: np.ndarray, vectors: np.ndarray, opened: "DenseIndex | None" = None) -> "DenseIndex | None":
        """The index saved at `prefix` (`opened`: that index, as loaded) with `vectors` added after its
        rows, and `ids` the passage id of every row, old and new (-1 retires an old row); None when the
        caller should build anew (too many retired rows, or a flat or IVF index whose tail is full).
        New rows join the tail while it has room, and the saved index's files are reused as they are
        (`save` links them); a full tail is added to a graph, which is then written anew."""
        old = opened if opened is not None else cls.load(prefix)
        total = len(old) + len(vectors)
        if len(ids) != total or (ids < 0).sum() > MAX_RETIRED_SHARE * total:
            return None
        tail = np.concatenate([old.tail_vectors(), np.asarray(vectors, dtype=np.float32).reshape(-1, old.dim)])
        if len(tail) <= TAIL_MAX_ROWS:
            return cls(old.index, ids, old._exact, same_files_as=prefix, tail=tail)
        if not isinstance(old.index, faiss.IndexHNSW):
            return None
        graph = faiss.read_index(str(prefix.with_suffix(".faiss")))  # in memory: the mapped one cannot grow
        set_search_depth(graph)
        _add_in_chunks(graph, tail)
        return cls(graph, ids)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def exact(self) -> bool:
        """True when `search` is exhaustive (flat index), False for the graph and the IVF index."""
        return isinstance(self.index, faiss.IndexFlat)

    @property
    def kind(self) -> str:
        """"flat", "hnsw" or "ivf-sq8+rerank": which of the module docstring's index types this is."""
        return "flat" if self.exact else "ivf-sq8+rerank" if self.reranks else "hnsw"

    @property
    def reranks(self) -> bool:
        """True for the IVF index, whose 8-bit scores are replaced by exact ones from the float32 rows."""
        return self._exact is not None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def tail_rows(self) -> int:
        """Rows in the tail (added since the index was built)."""
        return len(self.ids) - int(self.index.ntotal)

    def tail_vectors(self) -> np.ndarray:
        return self._tail.vectors() if self._tail is not None else np.zeros((0, self.dim), dtype=np.float32)

    @property
    def live(self) -> int:
        """Rows that hold a passage (all but the retired ones)."""
        return len(self.ids) - self.retired

    def rows_allowed(self, mask: np.ndarray) -> np.ndarray:
        """The live rows whose passage `mask` (a boolean array over passage ids) lets through."""
        return np.flatnonzero(mask[self.ids] & (self.ids >= 0)) if self.retired else np.flatnonzero(mask[self.ids])

    def search(self, query: np.ndarray, k: int, allowed_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Passage ids and cosine scores of the k nearest passages, best first; with `allowed_rows`
        (row numbers, as from `row_of`) only among those rows, so a filter never cuts hits below k."""
        if self._tail is None:
            return self._search_index(query, k, allowed_rows)
        own = int(self.index.ntotal)
        if allowed_rows is None:
            found = [self._search_index(query, k), self._tail.search(query, k)]
        else:
            allowed_rows = np.asarray(allowed_rows, dtype=np.int64)
            found = [self._search_index(query, k, allowed_rows[allowed_rows < own]), self._tail.search(query, k, allowed_rows[allowed_rows >= own] - own)]
        ids, scores = np.concatenate([found[0][0], found[1][0]]), np.concatenate([found[0][1], found[1][1]])
        order = np.argsort(-scores, kind="stable")[:k]  # ties: the index's row before the tail's
        return ids[order], scores[order]

    def _search_index(self, query: np.ndarray, k: int, allowed_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`search` among the index's own rows (not the tail's)."""
        own, ids, retired = int(self.index.ntotal), self._own_ids, self._own_retired
        k = min(k, own - retired if allowed_rows is None else len(allowed_rows))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        params = None
        depth = min(own, max(RERANK_FACTOR * k, RERANK_MIN)) if self.reranks else k
        if allowed_rows is None and self._live is not None:  # every live row: skip the retired ones
            if retired <= k:  # a few: searched past, since a selector slows every step (HNSW 2.8 -> 3.1 ms)
                depth = min(own, depth + retired)
            else:
                params = search_parameters(self.index, self._live[1], (own - retired) / own)
        elif allowed_rows is not None and len(allowed_rows) < own:
            if not self.exact and len(allowed_rows) <= self.EXACT_FILTER_ROWS:
                return self._search_rows(query, k, allowed_rows)
            mask = np.zeros(own, dtype=bool)
            mask[allowed_rows] = True
            params = search_parameters(self.index, faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little")), len(allowed_rows) / own)
        scores, rows = self.index.search(query, depth, params=params)
        keep = rows[0] >= 0
        if retired:
            keep &= ids[np.maximum(rows[0], 0)] >= 0
        if int(keep.sum()) < k:  # an approximate index can miss allowed rows
            return self._search_rows(query, k, np.flatnonzero(ids >= 0) if allowed_rows is None else allowed_rows)
        rows, scores = rows[0][keep], scores[0][keep]
        if self.reranks:
            rows, scores = self._rerank(query[0], rows, k)
        return ids[rows[:k]], scores[:k]

    def _rerank(self, query: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k candidate rows with the highest exact cosine, best first (ties: lower row first)."""
        scores = self.scores_of(query, rows)
        order = np.lexsort((rows, -scores))[:k]
        return rows[order], scores[order]

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
        return self.vectors_at(rows) @ np.asarray(query, dtype=np.float32).reshape(-1)

    def row_of(self, n_passages: int) -> np.ndarray:
        """Row of each passage id in this index, -1 for passages of other spaces."""
        return passage_rows(self.ids, n_passages)

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        """The stored float32 vectors at `rows` (scoring candidates; an incremental build copies them
        instead of re-embedding)."""
        if len(rows) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = np.asarray(rows, dtype=np.int64)
        own = int(self.index.ntotal)
        if self._tail is not None and rows.max() >= own:
            out = np.empty((len(rows), self.dim), dtype=np.float32)
            in_tail = rows >= own
            out[in_tail] = self._tail.vectors_at(rows[in_tail] - own)
            out[~in_tail] = self._index_vectors_at(rows[~in_tail])
            return out
        return self._index_vectors_at(rows)

    def _index_vectors_at(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if isinstance(self._exact, RowFile):
            return self._exact.rows(rows)
        if self.reranks:
            return np.asarray(self._exact[rows])
        return self.index.reconstruct_batch(rows)

    def vectors(self) -> np.ndarray:
        """All stored vectors in row order (reused by incremental builds instead of re-embedding)."""
        own = self._index_vectors()
        return own if self._tail is None else np.concatenate([own, self._tail.vectors()])

    def _index_vectors(self) -> np.ndarray:
        if self.index.ntotal == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if isinstance(self._exact, RowFile):
            return self._exact.all()
        if self.reranks:
            return self._exact
        return self.index.reconstruct_n(0, self.index.ntotal)

    def save(self, prefix: Path) -> None:
        """The index (and an IVF index's re-rank rows), the tail's vectors and every row's passage id, at
        `prefix` plus their suffixes. The files of an index loaded from disk and not changed since are
        linked, not written: a generation is never written after its build, so sharing them is safe."""
        suffixes = (".faiss", ".vectors.npy") if self.reranks else (".faiss",)
        if self._same_files_as is not None:
            for suffix in suffixes:
                link_or_copy(self._same_files_as.with_suffix(suffix), prefix.with_suffix(suffix))
        else:
            _write_index(self.index, prefix.with_suffix(".faiss"))
            if self.reranks:
                np.save(prefix.with_suffix(".vectors.npy"), np.ascontiguousarray(self._index_vectors(), dtype=np.float32))
        np.save(prefix.with_suffix(".ids.npy"), self.ids)
        if self._tail is not None:
            np.save(prefix.with_suffix(".tail.npy"), self._tail.vectors())

    @staticmethod
    def load_ids(prefix: Path) -> np.ndarray:
        """The passage id of each row, without opening the FAISS index (a remote backend searches)."""
        return np.load(prefix.with_suffix(".ids.npy"))

    @classmethod
    def load(cls, prefix: Path, mmap: bool = True) -> "DenseIndex":
        """Open a saved index, memory-mapped by default: pages are read on use, so opening costs no time
        and a query's memory is what it touches (flat codes via IO_FLAG_MMAP_IFC, IVF lists via IO_FLAG_MMAP)."""
        path = str(prefix.with_suffix(".faiss"))
        vectors_path, tail_path = prefix.with_suffix(".vectors.npy"), prefix.with_suffix(".tail.npy")
        ids = np.load(prefix.with_suffix(".ids.npy"))
        tail = np.load(tail_path) if tail_path.is_file() else None  # at most TAIL_MAX_ROWS rows: read in
        if vectors_path.is_file():
            index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0)
            index.nprobe = ivf_probes(faiss.extract_index_ivf(index).nlist)
            return cls(index, ids, RowFile(vectors_path) if mmap else np.load(vectors_path), tail=tail)
        # flat codes, alone or under a graph, via IO_FLAG_MMAP_IFC; an HNSW graph itself is read in
        index = faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0)
        if isinstance(index, faiss.IndexHNSW):
            set_search_depth(index)
        return cls(index, ids, tail=tail)


def passage_rows(ids: np.ndarray, n_passages: int) -> np.ndarray:
    """The row of each passage id, from each row's passage id (`ids`, -1 for a retired row); -1 for
    passages without a row."""
    rows = np.full(n_passages, -1, dtype=np.int64)
    live = np.flatnonzero(ids >= 0)
    rows[ids[live]] = live
    return rows


def load_vectors(prefix: Path) -> "DenseIndex | StoredVectors":
    """A space's stored vectors, whether FAISS indexes them (DenseIndex, memory-mapped) or not
    (StoredVectors): both answer `ids`, `dim`, `vectors_at` and `vectors`."""
    if prefix.with_suffix(".faiss").is_file():
        return DenseIndex.load(prefix, mmap=True)
    return StoredVectors(np.load(prefix.with_suffix(".ids.npy")), RowFile(prefix.with_suffix(".vectors.npy")))


def _add_in_chunks(index: faiss.Index, vectors: np.ndarray) -> None:
    for start in range(0, len(vectors), _ADD_CHUNK):
        index.add(np.ascontiguousarray(vectors[start : start + _ADD_CHUNK], dtype=np.float32))


def _write_index(index: faiss.Index, path: Path) -> None:
    """faiss.write_index, whose failed write (a full disk) is a RuntimeError ending in the system's
    message: raised as the OSError it is, which a build reports in one line with what to do."""
    try:
        faiss.write_index(index, str(path))
    except RuntimeError as error:
        for code in (errno.ENOSPC, errno.EDQUOT):
            if os.strerror(code) in str(error):
                raise OSError(code, os.strerror(code), str(path)) from error
        raise
