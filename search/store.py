"""The on-disk index folder: immutable generations switched in atomically, and a build lock.

Layout::

    INDEX_DIR/
      CURRENT              name of the live generation (replaced atomically)
      .lock                flock'ed by the one build allowed at a time
      gen-<stamp>/         one complete, never-modified index state
        manifest.json      format version, models, files, counts
        passages.jsonl     one passage per line; passages.offsets.npy seeks to line i
        tokens.jsonl       BM25 tokens per passage (lets a rebuild skip re-tokenising); tokens.offsets.npy
        bm25/              BM25 score matrices (segments), vocabulary
        dense-<space>.faiss / .ids.npy / .keys.npy   vectors, their passage ids, their text keys
        facets.json        per-file path and tags for filters; passage_file.npy maps passage -> file

A build writes a new generation beside the live one and only then points CURRENT at it, so a
crash at any moment leaves the previous generation live and readable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
from array import array
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from search.errors import IndexNotFound, SearchError
from search.schema import Passage

FORMAT_VERSION = 1
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
GEN_PREFIX = "gen-"
FACETS = "facets.json"
PASSAGE_FILE = "passage_file.npy"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so readers see either the old or the new content, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class IndexFolder:
    """One index folder on disk with its generations."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def current(self) -> Path:
        """The live generation; raises IndexNotFound with what to run when there is none."""
        try:
            name = (self.root / CURRENT).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise IndexNotFound(f"no index at {self.root}: build one with `search index PATHS --index {self.root}`") from None
        generation = self.root / name
        if not (generation / MANIFEST).is_file():
            raise IndexNotFound(f"index at {self.root} is damaged (missing {name}): run `search index --rebuild`")
        return generation

    def exists(self) -> bool:
        return (self.root / CURRENT).is_file()

    def new_generation(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 10**9:09d}-{os.getpid()}"
        generation = self.root / f"{GEN_PREFIX}{stamp}"
        generation.mkdir()
        return generation

    def publish(self, generation: Path) -> None:
        """Make `generation` live, then drop all but it and its predecessor.

        The predecessor stays so a query that read CURRENT just before the switch can finish.
        """
        for path in generation.rglob("*"):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        _fsync_dir(generation)
        live = self.live_name()
        previous = self.root / live if live else None
        write_atomic(self.root / CURRENT, generation.name.encode())
        self.remove_stale(keep={generation, previous})

    def live_name(self) -> str | None:
        try:
            return (self.root / CURRENT).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None

    def remove_stale(self, keep: Iterable[Path | None] = ()) -> None:
        """Delete generations other than the live one and `keep` (leftovers of aborted builds)."""
        keep_names = {path.name for path in keep if path is not None} | {self.live_name()}
        for path in self.root.glob(f"{GEN_PREFIX}*"):
            if path.name not in keep_names:
                shutil.rmtree(path, ignore_errors=True)
        for tmp in self.root.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def build_lock(self, wait: bool = False) -> Iterator[None]:
        """Hold the folder's build lock. flock is released by the kernel when the process dies,
        so a `kill -9` never leaves a stale lock behind."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError as error:
                if error.errno in (errno.EAGAIN, errno.EACCES):
                    raise SearchError(
                        f"another build is running on {self.root}; wait for it to finish (or pass --wait)"
                    ) from None
                raise
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def read_manifest(generation: Path) -> dict[str, Any]:
    return json.loads((generation / MANIFEST).read_text(encoding="utf-8"))


def write_manifest(generation: Path, manifest: dict[str, Any]) -> None:
    (generation / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")


class PassageWriter:
    """Writes a generation's passages and their BM25 tokens as they are produced, so a build never holds
    them all; `close()` saves the offsets that give random access to both files."""

    def __init__(self, generation: Path) -> None:
        self.generation = generation
        self._passages = open(generation / "passages.jsonl", "wb")
        self._tokens = open(generation / "tokens.jsonl", "wb")
        # 8 bytes per passage and file, the only per-passage state a build keeps in memory here
        self._offsets, self._token_offsets = array("q"), array("q")
        self._end = self._token_end = 0

    def add(self, passage: Passage, tokens: list[str]) -> int:
        """Append one passage and its tokens; returns its passage id."""
        return self.add_raw(json.dumps(passage.to_dict(), ensure_ascii=False).encode("utf-8") + b"\n", tokens)

    def add_raw(self, passage_line: bytes, tokens: list[str]) -> int:
        """Append a passage already serialised as a JSONL line (copied from an earlier generation)."""
        token_line = json.dumps(tokens, ensure_ascii=False).encode("utf-8") + b"\n"
        self._offsets.append(self._end)
        self._token_offsets.append(self._token_end)
        self._passages.write(passage_line)
        self._tokens.write(token_line)
        self._end += len(passage_line)
        self._token_end += len(token_line)
        return len(self._offsets) - 1

    def __len__(self) -> int:
        return len(self._offsets)

    def close(self) -> None:
        self._passages.close()
        self._tokens.close()
        np.save(self.generation / "passages.offsets.npy", np.frombuffer(self._offsets, dtype=np.int64))
        np.save(self.generation / "tokens.offsets.npy", np.frombuffer(self._token_offsets, dtype=np.int64))

    def __enter__(self) -> "PassageWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def iter_tokens(generation: Path) -> Iterator[list[str]]:
    """The BM25 tokens of each passage in order, streamed from disk."""
    with open(generation / "tokens.jsonl", encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def read_tokens(generation: Path) -> list[list[str]]:
    return list(iter_tokens(generation))


def _line_offsets(path: Path) -> np.ndarray:
    """Start of every line of a file (for generations written before offsets were saved)."""
    offsets, position = array("q"), 0
    with open(path, "rb") as handle:
        for line in handle:
            offsets.append(position)
            position += len(line)
    return np.frombuffer(offsets, dtype=np.int64)


class TokenStore:
    """Random access to the BM25 tokens of a generation's passages (an incremental build reuses them)."""

    def __init__(self, generation: Path) -> None:
        path = generation / "tokens.offsets.npy"
        self.offsets = np.load(path, mmap_mode="r") if path.is_file() else _line_offsets(generation / "tokens.jsonl")
        self._handle = open(generation / "tokens.jsonl", "rb")
        self._end = os.fstat(self._handle.fileno()).st_size

    def get(self, passage_id: int) -> list[str]:
        start = int(self.offsets[passage_id])
        end = int(self.offsets[passage_id + 1]) if passage_id + 1 < len(self.offsets) else self._end
        return json.loads(os.pread(self._handle.fileno(), end - start, start))


def write_facets(generation: Path, passages: Iterable[Passage]) -> None:
    """The filter facets of `passages` (read once, in passage-id order)."""
    from search.filtering import facet_rows

    rows, passage_file = facet_rows(passages)
    (generation / FACETS).write_text(json.dumps({"files": rows}, ensure_ascii=False), encoding="utf-8")
    np.save(generation / PASSAGE_FILE, passage_file)


def read_facets(generation: Path) -> tuple[list[dict[str, Any]], np.ndarray] | None:
    """(facet rows, passage -> row) as written by `write_facets`; None for a generation built before filters."""
    try:
        rows = json.loads((generation / FACETS).read_text(encoding="utf-8"))["files"]
        return rows, np.load(generation / PASSAGE_FILE)
    except FileNotFoundError:
        return None


class PassageStore:
    """Random access to the passages of a generation without loading them all (seek by offset)."""

    def __init__(self, generation: Path) -> None:
        self.path = generation / "passages.jsonl"
        self.offsets = np.load(generation / "passages.offsets.npy", mmap_mode="r")
        # Held open so a long-lived reader keeps working after a later build deletes this generation.
        self._handle = open(self.path, "rb")
        self._end = os.fstat(self._handle.fileno()).st_size

    def __len__(self) -> int:
        return len(self.offsets)

    def get_raw(self, passage_id: int) -> bytes:
        """The passage's JSONL line, newline included."""
        start = int(self.offsets[passage_id])
        end = int(self.offsets[passage_id + 1]) if passage_id + 1 < len(self.offsets) else self._end
        # pread: no shared file position, so threads can read concurrently
        return os.pread(self._handle.fileno(), end - start, start)

    def get(self, passage_id: int) -> Passage:
        return Passage(**json.loads(self.get_raw(passage_id)))

    def get_many(self, passage_ids: Iterable[int]) -> list[Passage]:
        return [self.get(passage_id) for passage_id in passage_ids]

    def __iter__(self) -> Iterator[Passage]:
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                yield Passage(**json.loads(line))
