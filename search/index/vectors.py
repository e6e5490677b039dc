"""Each passage's vector in the embedding space of its language: reused from the previous generation
when the same encoder saw the same text, else embedded in bounded batches, then indexed by FAISS."""

from __future__ import annotations

import hashlib
from array import array
from typing import Any

import numpy as np

from search.embedding.encoder import Encoder
from search.embedding.models import space_for
from search.index.dense import DenseIndex
from search.index.folder import Generation
from search.index.report import BuildSummary, StageTimer
from search.schema import Passage
from search.text.language import detect_language
from search.text.passages import contextual_text

__all__ = ["EMBED_BATCH", "PreviousVectors", "VectorWriter", "text_key"]

EMBED_BATCH = 1024  # passages embedded at a time per space


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
        self.spaces: dict[str, tuple[str, str, DenseIndex, np.ndarray, np.ndarray]] = {}
        for space, info in manifest["models"].items():
            if space in skip:
                continue
            index = DenseIndex.load(generation.dense_prefix(space), mmap=True)
            keys = np.load(generation.dense_keys_file(space))
            order = np.argsort(keys, kind="stable")
            self.spaces[space] = (info["name"], info["identity"], index, keys[order], order)

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

    def vectors(self, space: str, rows: list[int]) -> np.ndarray:
        return self.spaces[space][2].vectors_at(np.asarray(rows, dtype=np.int64))


class VectorWriter:
    """Routes each passage to the space of its language and collects the spaces' vectors."""

    def __init__(self, generation: Generation, plan: dict[str, str], previous: PreviousVectors | None, summary: BuildSummary,
                 timer: StageTimer) -> None:
        self.plan = plan
        self.spaces = {space: _SpaceVectors(generation, space, name, previous, summary, timer) for space, name in plan.items()}

    def add(self, pid: int, passage: Passage) -> None:
        text = contextual_text(passage)
        self.spaces[space_for(self.plan, detect_language(text))].add(pid, text)

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
    """One space's vectors, appended in passage order to an on-disk float32 array, then indexed by FAISS."""

    def __init__(self, generation: Generation, space: str, name: str, previous: PreviousVectors | None, summary: BuildSummary,
                 timer: StageTimer) -> None:
        self.generation, self.space, self.name = generation, space, name
        self.encoder = Encoder(name)  # loaded on first use: a build that only reuses vectors still needs its identity
        self.previous, self.summary, self.timer = previous, summary, timer
        self.raw_path = generation.dense_staging_file(space)
        self.raw = open(self.raw_path, "wb")
        self.ids, self.keys = array("q"), array("Q")
        self.queue: list[tuple[str | None, int]] = []  # (text to embed, or None and the previous row to copy)
        self._dim = previous.dim(space, name) if previous else None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = self.encoder.dim
        return self._dim

    def add(self, pid: int, text: str) -> None:
        key = text_key(self.name, self.encoder.identity, text)
        self.ids.append(pid)
        self.keys.append(key)
        row = self.previous.row(self.space, self.name, self.encoder.identity, key) if self.previous else -1
        self.queue.append((None, row) if row >= 0 else (text, -1))
        if len(self.queue) >= EMBED_BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self.queue:
            return
        block = np.empty((len(self.queue), self.dim), dtype=np.float32)
        new = [i for i, (text, _) in enumerate(self.queue) if text is not None]
        reused = [i for i, (text, _) in enumerate(self.queue) if text is None]
        if new:
            with self.timer("embed"):
                block[new] = self.encoder.encode([self.queue[i][0] for i in new])
        if reused:
            block[reused] = self.previous.vectors(self.space, [self.queue[i][1] for i in reused])
        self.raw.write(block.tobytes())
        self.summary.passages_embedded += len(new)
        self.summary.passages_reused += len(reused)
        self.queue = []

    def finish(self) -> dict[str, Any]:
        """Build and save the FAISS index from the on-disk array; returns the manifest entry."""
        self._flush()
        self.raw.close()
        dim = self.dim
        with self.timer("dense"):
            count = len(self.ids)
            matrix = np.memmap(self.raw_path, dtype=np.float32, mode="r", shape=(count, dim)) if count else np.zeros((0, dim), np.float32)
            DenseIndex.build(matrix, np.frombuffer(self.ids, dtype=np.int64), dim).save(self.generation.dense_prefix(self.space))
            np.save(self.generation.dense_keys_file(self.space), np.frombuffer(self.keys, dtype=np.uint64))
            del matrix
            self.raw_path.unlink()
        return {"name": self.name, "dim": dim, "backend": self.encoder.backend, "identity": self.encoder.identity}
