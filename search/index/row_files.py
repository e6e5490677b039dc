"""A space's vectors as rows of a float32 .npy file, read without a FAISS index: the rows an IVF index
re-ranks with (search.index.dense), and what a generation searched elsewhere keeps (StoredVectors).

Rows are read with positional reads (RowFile), not through a memory map: each page fault on a mapped
file maps its cached neighbours too (the kernel's fault-around, 64 KiB), so 30k scattered 2 KiB rows
mapped 1.9 GB of a 1M-vector file into the process, where reads keep them in the shared page cache and
out of the query process's RSS.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from search.index.file_io import new_mapped_npy

__all__ = ["RowFile", "StoredVectors"]

_COPY_ROWS = 65_536  # rows copied at a time when saving (a build's staging file may hold millions)


class RowFile:
    """Rows of a 2-D float32 .npy file, read on demand with positional reads (see the module docstring
    for why not a memory map). `all()` maps the whole file, for the callers that scan every row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        header = np.load(path, mmap_mode="r")  # numpy parses the header; no page is read here
        shape, dtype, fortran, self.offset = header.shape, header.dtype, np.isfortran(header), header.offset
        del header
        if len(shape) != 2 or fortran or dtype != np.float32:
            raise ValueError(f"{path}: expected a C-ordered 2-D float32 array, found {dtype} {shape}")
        self.shape = shape
        self.row_bytes = shape[1] * 4
        self._fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The vectors at `rows` (any order, repeats allowed); runs of consecutive rows are one read."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros((0, self.shape[1]), dtype=np.float32)
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"row out of range for {len(self)} vectors")
        unique, where = np.unique(rows, return_inverse=True)
        out = np.empty((len(unique), self.shape[1]), dtype=np.float32)
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        for start, end in zip(np.r_[0, breaks].tolist(), np.r_[breaks, len(unique)].tolist()):
            size = (end - start) * self.row_bytes
            data = os.pread(self._fd, size, self.offset + int(unique[start]) * self.row_bytes)
            out[start:end] = np.frombuffer(data, dtype=np.float32).reshape(end - start, -1)
        return out[where.reshape(-1)]

    def all(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")


class StoredVectors:
    """A space's float32 vectors in row order and the passage id of each row, without a FAISS index: what
    a generation searched elsewhere (the Qdrant backend) keeps, for incremental builds to reuse and for
    its mirror to send (`.vectors.npy` and `.ids.npy`, read as DenseIndex reads an IVF index's rows)."""

    kind = "vectors"  # no index (see DenseIndex.kind)

    def __init__(self, ids: np.ndarray, rows: "RowFile | np.ndarray") -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self._rows = rows

    @property
    def dim(self) -> int:
        return int(self._rows.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        return self._rows.rows(rows) if isinstance(self._rows, RowFile) else np.asarray(self._rows[rows])

    def vectors(self) -> np.ndarray:
        return self._rows.all() if isinstance(self._rows, RowFile) else self._rows

    def save(self, prefix: Path) -> None:
        """Copied a chunk at a time (the rows may be a build's memory-mapped staging file of millions)."""
        np.save(prefix.with_suffix(".ids.npy"), self.ids)
        path, rows = prefix.with_suffix(".vectors.npy"), self.vectors()
        if len(rows) == 0:  # an empty file cannot be memory-mapped
            np.save(path, np.zeros((0, self.dim), dtype=np.float32))
            return
        out = new_mapped_npy(path, np.float32, (len(rows), self.dim))
        for start in range(0, len(rows), _COPY_ROWS):
            out[start : start + _COPY_ROWS] = rows[start : start + _COPY_ROWS]
        out.flush()
        del out
