"""Each passage's vector in the embedding space of its language: reused from the previous generation
when the same encoder saw the same text, else embedded in bounded batches, then indexed by FAISS."""

from __future__ import annotations

import hashlib
from array import array
from pathlib import Path
from typing import Any, Callable

import numpy as np

from search.embedding.encoder import Encoder
from search.embedding.models import space_for
from search.index.dense import DenseIndex, load_vectors, passage_rows
from search.index.dense_kinds import index_kind
from search.index.row_files import StoredVectors
from search.index.folder import Generation
from search.index.report import BuildSummary, StageTimer
from search.schema import Passage
from search.text.language import detect_language
from search.text.passages import contextual_text

__all__ = ["EMBED_BATCH", "PreviousVectors", "VectorWriter", "text_key"]

EMBED_BATCH = 1024  # passages embedded at a time per space
_ROWS_AT_A_TIME = 16 * EMBED_BATCH  # vectors read or written at a time where a whole space is walked (bounded memory)


def text_key(model: str, identity: str, text: str) -> int:
    """64-bit key of a (model, encoder identity, text) triple: 8 bytes a passage keep reuse lookups in
    numpy arrays; a collision among 10 million passages has odds of about 3e-6. The identity (backend,
    precision, export recipe) is part of the key, so vectors of two encoders never mix."""
    digest = hashlib.blake2b(f"{model}\0{identity}\0{text}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class PreviousVectors:
    """The previous generation's vectors, memory-mapped, found by text key: reuse copies rows, never
    loading every old vector."""

    def __init__(self, generation: Generation, manifest: dict[str, Any], skip: set[str] = frozenset()) -> None:
        """`skip`: spaces whose files failed their checksums (their vectors are embedded anew)."""
        self.spaces: dict[str, tuple[str, str, DenseIndex | StoredVectors, np.ndarray, np.ndarray]] = {}
        self._keys: dict[str, np.ndarray] = {}  # each row's text key, in row order
        self.prefixes: dict[str, Path] = {}
        self.sums: dict[str, np.ndarray] = {}  # each space's sum of vectors, where the manifest holds its mean
        for space, info in manifest["models"].items():
            if space in skip:
                continue
            if info.get("centre"):
                self.sums[space] = np.asarray(info["centre"]["mean"], dtype=np.float64) * info["centre"]["vectors"]
            self.prefixes[space] = generation.dense_prefix(space)
            index = load_vectors(self.prefixes[space])
            keys = np.load(generation.dense_keys_file(space))
            order = np.argsort(keys, kind="stable")
            self.spaces[space] = (info["name"], info["identity"], index, keys[order], order)
            self._keys[space] = keys
        self._passage_rows: dict[str, np.ndarray] | None = None

    def dim(self, space: str, name: str) -> int | None:
        known = self.spaces.get(space)
        return known[2].dim if known is not None and known[0] == name else None

    def row(self, space: str, name: str, identity: str, key: int) -> int:
        """Row of the vector of this key in the previous index, -1 if there is none."""
        known = self.spaces.get(space)
        if known is None or known[0] != name or known[1] != identity:
            return -1
        keys, order = known[3], known[4]
        at = int(np.searchsorted(keys, key))
        return int(order[at]) if at < len(keys) and keys[at] == key else -1

    def same_encoder(self, space: str, name: str, identity: str) -> bool:
        known = self.spaces.get(space)
        return known is not None and known[0] == name and known[1] == identity

    def passage_rows(self, first: int, count: int) -> dict[str, np.ndarray]:
        """For the previous generation's passages [first, first + count): their row in each space
        (-1 in the spaces that do not hold them)."""
        if self._passage_rows is None:
            n = 1 + max((int(known[2].ids.max()) for known in self.spaces.values() if len(known[2].ids)), default=-1)
            self._passage_rows = {space: passage_rows(known[2].ids, n) for space, known in self.spaces.items()}
        return {space: rows[first : first + count] for space, rows in self._passage_rows.items()}

    def keys_at(self, space: str, rows: np.ndarray) -> np.ndarray:
        return self._keys[space][rows]

    def extended(self, space: str, sources: np.ndarray, ids: np.ndarray, keys: np.ndarray,
                 vectors_at: Callable[[np.ndarray], np.ndarray]) -> tuple[DenseIndex, np.ndarray] | None:
        """The previous index of `space` carried over to the new passages instead of building one: row
        r of the old index now holds the passage whose vector was copied from it (sources[i] == r,
        the first such passage), other old rows are retired, and the remaining passages' vectors are
        added after them. Returns the index and its rows' text keys, or None where a new index is due
        (another kind for this many passages; see DenseIndex.extended for the others)."""
        old = self.spaces[space][2]
        if not isinstance(old, DenseIndex) or old.kind != index_kind(len(ids)):
            return None
        reused = np.flatnonzero(sources >= 0)
        _, first = np.unique(sources[reused], return_index=True)
        kept = reused[first]  # one passage per old row
        row_ids = np.full(len(old), -1, dtype=np.int64)
        row_ids[sources[kept]] = ids[kept]
        added = np.setdiff1d(np.arange(len(ids)), kept)
        index = DenseIndex.extended(self.prefixes[space], np.concatenate([row_ids, ids[added]]), vectors_at(added), opened=old)
        return None if index is None else (index, np.concatenate([self._keys[space], keys[added]]))

    def vectors(self, space: str, rows: list[int]) -> np.ndarray:
        return self.spaces[space][2].vectors_at(np.asarray(rows, dtype=np.int64))

    def sum_of_rows(self, space: str, rows: np.ndarray) -> np.ndarray:
        """The sum of the vectors at `rows` (repeats counted), in float64. With the previous sum known,
        only the rows whose use changed are read (a one-note edit reads a few, not the whole space):
        the previous sum covered each live row once."""
        index = self.spaces[space][2]
        uses = np.bincount(rows, minlength=len(index)).astype(np.int64)
        known = self.sums.get(space)
        if known is None:
            total, weights = np.zeros(index.dim, dtype=np.float64), uses
        else:
            total, weights = known.copy(), uses - (index.ids >= 0)  # retired rows (-1) were not in it
        changed = np.flatnonzero(weights)
        for start in range(0, len(changed), _ROWS_AT_A_TIME):
            chunk = changed[start : start + _ROWS_AT_A_TIME]
            total += weights[chunk].astype(np.float64) @ index.vectors_at(chunk).astype(np.float64)
        return total


class VectorWriter:
    """Routes each passage to the space of its language and collects the spaces' vectors."""

    def __init__(self, generation: Generation, plan: dict[str, str], previous: PreviousVectors | None, summary: BuildSummary,
                 timer: StageTimer, searchable: bool = True) -> None:
        """`searchable`: build FAISS indexes (False: the vectors alone, for a backend that searches elsewhere)."""
        self.plan = plan
        self.previous = previous
        self.spaces = {space: _SpaceVectors(generation, space, name, previous, summary, timer, searchable) for space, name in plan.items()}

    def add(self, pid: int, passage: Passage) -> None:
        text = contextual_text(passage)
        self.spaces[space_for(self.plan, detect_language(text))].add(pid, text)

    def add_block(self, first: int, old_first: int, count: int) -> bool:
        """Passages [first, first + count) are the previous generation's [old_first, old_first + count)
        (an unchanged file's): their vectors are copied by passage, without reading their text. False,
        with nothing added, when some cannot be (another encoder now, or a space that failed its checksums)."""
        previous = self.previous
        if previous is None:
            return False
        rows = previous.passage_rows(old_first, count)
        spaces = self.spaces
        if set(rows) != set(spaces) or sum(int((space_rows >= 0).sum()) for space_rows in rows.values()) != count or \
                not all(previous.same_encoder(space, vectors.name, vectors.encoder.identity) for space, vectors in spaces.items()):
            return False
        for space, space_rows in rows.items():
            at = np.flatnonzero(space_rows >= 0)
            spaces[space].add_rows(first + at, space_rows[at])
        return True

    def finish(self) -> dict[str, dict]:
        """Build every space's FAISS index; returns the manifest's "models" entry."""
        return {space: vectors.finish() for space, vectors in self.spaces.items()}

    def abort(self) -> None:
        """A failed build: close the on-disk arrays (the build removes its generation)."""
        for vectors in self.spaces.values():
            try:
                vectors.raw.close()
            except OSError:
                pass


class _SpaceVectors:
    """One space's vectors: new ones embedded in batches into an on-disk float32 array, reused ones named
    by their row in the previous generation, then indexed by FAISS (the previous graph extended, or a
    new index over all of them in passage order)."""

    def __init__(self, generation: Generation, space: str, name: str, previous: PreviousVectors | None, summary: BuildSummary,
                 timer: StageTimer, searchable: bool) -> None:
        self.generation, self.space, self.name, self.searchable = generation, space, name, searchable
        self.encoder = Encoder(name)  # loaded on first use: a build that only reuses vectors still needs its identity
        self.previous, self.summary, self.timer = previous, summary, timer
        self.raw_path = generation.dense_staging_file(space)
        self.raw = open(self.raw_path, "wb")  # the embedded vectors, in order
        self.ordered_path = generation.dense_staging_file(f"{space}.ordered")  # all of them, when an index is built anew
        self.ids, self.keys = array("q"), array("Q")
        self.sources = array("q")  # per passage: the previous generation's row its vector is, or -1 (embedded)
        self.queue: list[str] = []  # texts waiting to be embedded
        self._dim = previous.dim(space, name) if previous else None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = self.encoder.dim
        return self._dim

    def add(self, pid: int, text: str) -> None:
        key = text_key(self.name, self.encoder.identity, text)
        row = self.previous.row(self.space, self.name, self.encoder.identity, key) if self.previous else -1
        self.ids.append(pid)
        self.keys.append(key)
        self.sources.append(row)
        if row >= 0:
            self.summary.passages_reused += 1
            return
        self.queue.append(text)
        if len(self.queue) >= EMBED_BATCH:
            self._flush()

    def add_rows(self, pids: np.ndarray, rows: np.ndarray) -> None:
        """Passages whose vectors are the previous generation's `rows` of this space."""
        self.ids.extend(pids.tolist())
        self.keys.extend(self.previous.keys_at(self.space, rows).tolist())
        self.sources.extend(rows.tolist())
        self.summary.passages_reused += len(rows)

    def _flush(self) -> None:
        if self.queue:
            with self.timer("embed"):
                self.raw.write(np.ascontiguousarray(self.encoder.encode(self.queue), dtype=np.float32).tobytes())
            self.summary.passages_embedded += len(self.queue)
            self.queue = []

    def finish(self) -> dict[str, Any]:
        """Build and save the FAISS index (or only the vectors, for a backend that searches elsewhere); returns
        the manifest entry."""
        self._flush()
        self.raw.close()
        dim = self.dim
        with self.timer("dense"):
            ids, keys, sources = (np.frombuffer(values, dtype=dtype) for values, dtype in
                                  ((self.ids, np.int64), (self.keys, np.uint64), (self.sources, np.int64)))
            embedded = np.memmap(self.raw_path, dtype=np.float32, mode="r", shape=(int((sources < 0).sum()), dim)) \
                if (sources < 0).any() else np.zeros((0, dim), np.float32)
            vectors = _Vectors(sources, embedded, self.previous, self.space)
            carried = self._carried_over(ids, keys, vectors)
            if carried is not None:
                index, keys = carried
            else:
                matrix = vectors.in_order(self.ordered_path)
                index = DenseIndex.build(matrix, ids, dim) if self.searchable else StoredVectors(ids, matrix)
            index.save(self.generation.dense_prefix(self.space))
            np.save(self.generation.dense_keys_file(self.space), keys)
            total = vectors.total()
            del embedded, vectors, index
            for path in (self.raw_path, self.ordered_path):
                path.unlink(missing_ok=True)
        entry = {"name": self.name, "dim": dim, "backend": self.encoder.backend, "identity": self.encoder.identity}
        if len(ids):  # the space's mean, where its cosines may be measured from (search.query.centring)
            entry["centre"] = {"mean": (total / len(ids)).tolist(), "vectors": len(ids)}
        return entry

    def _carried_over(self, ids: np.ndarray, keys: np.ndarray, vectors: "_Vectors") -> tuple[DenseIndex, np.ndarray] | None:
        """The previous generation's index, extended (an incremental build)."""
        previous = self.previous
        if not self.searchable or previous is None or not previous.same_encoder(self.space, self.name, self.encoder.identity):
            return None
        return previous.extended(self.space, vectors.sources, ids, keys, vectors.at)


class _Vectors:
    """A space's vectors by position (passage order): embedded ones from the staging array, reused ones
    from the previous generation's index."""

    def __init__(self, sources: np.ndarray, embedded: np.ndarray, previous: PreviousVectors | None, space: str) -> None:
        self.sources, self.embedded, self.previous, self.space = sources, embedded, previous, space
        self._embedded_at = np.cumsum(sources < 0) - 1  # position -> row of the staging array

    def at(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty((len(positions), self.embedded.shape[1]), dtype=np.float32)
        rows = self.sources[positions]
        new = rows < 0
        out[new] = self.embedded[self._embedded_at[positions[new]]]
        if (~new).any():
            out[~new] = self.previous.vectors(self.space, rows[~new].tolist())
        return out

    def total(self) -> np.ndarray:
        """The sum of all of them, in float64: the embedded ones read a batch at a time, the reused
        ones from the previous generation's sum where it is known."""
        total = np.zeros(self.embedded.shape[1], dtype=np.float64)
        for start in range(0, len(self.embedded), _ROWS_AT_A_TIME):
            total += self.embedded[start : start + _ROWS_AT_A_TIME].sum(axis=0, dtype=np.float64)
        reused = self.sources[self.sources >= 0]
        if len(reused):
            total += self.previous.sum_of_rows(self.space, reused)
        return total

    def in_order(self, path: Path) -> np.ndarray:
        """All of them in passage order: the staging array itself when every one was embedded, else
        copied to `path` a batch at a time (bounded memory)."""
        if not (self.sources >= 0).any():
            return self.embedded
        with open(path, "wb") as handle:
            for start in range(0, len(self.sources), _ROWS_AT_A_TIME):
                handle.write(self.at(np.arange(start, min(start + _ROWS_AT_A_TIME, len(self.sources)))).tobytes())
        return np.memmap(path, dtype=np.float32, mode="r", shape=(len(self.sources), self.embedded.shape[1])) if len(self.sources) else self.embedded
