"""The on-disk index folder: immutable generations switched in atomically, and a build lock.

Layout (every name is spelled by `IndexFolder` and `Generation` alone)::

    INDEX_DIR/
      CURRENT              name of the live generation and the SHA-256 of its manifest (replaced atomically)
      backend.json         which backend searches the index and where (search.index.backend; absent: embedded)
      .lock                flock'ed by the one build allowed at a time
      gen-<stamp>/         one complete, never-modified index state
        manifest.json      format version, models, files, counts, and the checksum of every other
                           file of the generation (written last: search.index.integrity)
        passages.jsonl     one passage per line; passages.offsets.npy seeks to line i; passages.keys.npy
                           holds each passage's 16-byte digest of its normalised text (finding copies)
        tokens.jsonl       BM25 tokens per passage (lets a rebuild skip re-tokenising); tokens.offsets.npy
        bm25/              BM25 score matrices (segments), vocabulary
        dense-<space>.faiss / .ids.npy / .keys.npy   vectors, their passage ids, their text keys;
                           .tail.npy: the rows added since the .faiss index was built (search.index.dense)
        facets.json        per-file path and tags for filters; passage_file.npy maps passage -> file
        points.npy         (qdrant backend) each passage's point id in the collection, as 16 bytes;
                           Qdrant searches, so there is no bm25/ and no .faiss: dense-<space>.vectors.npy
                           keeps the vectors (incremental builds reuse them, the mirror sends them)

A build writes a new generation beside the live one and only then points CURRENT at it, so a
crash at any moment leaves the previous generation live and readable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator


from search.embedding.models import model_plan
from search.errors import IncompatibleIndex, IndexDamaged, IndexNotFound, SearchError
from search.index.file_io import fsync_tree, link_or_copy, write_atomic

__all__ = ["FORMAT_VERSION", "Generation", "IndexFolder", "check_compatible"]

# 2: every model records its backend and identity, facets and text keys are always written
# 3: the manifest holds a checksum of every file, CURRENT the manifest's
FORMAT_VERSION = 3
CURRENT = "CURRENT"
LOCK = ".lock"
GEN_PREFIX = "gen-"
_GEN_NAME = re.compile(r"gen-[0-9A-Za-z-]{1,80}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
# the files an incremental build carries unchanged files' passages, tokens and facets over from
PASSAGE_FILES = ("passages.jsonl", "passages.offsets.npy", "passages.keys.npy", "tokens.jsonl", "tokens.offsets.npy", "facets.json", "passage_file.npy",
                 "document_starts.npy")


class Generation:
    """One immutable index state: a folder, and the names of the files in it."""

    def __init__(self, path: Path, manifest_digest: str | None = None) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.manifest_digest = manifest_digest  # from CURRENT: what manifest.json must hash to
        self.manifest_file = self.path / "manifest.json"
        self.passages_file = self.path / "passages.jsonl"
        self.passage_offsets_file = self.path / "passages.offsets.npy"
        self.text_keys_file = self.path / "passages.keys.npy"  # absent in generations written before it
        self.tokens_file = self.path / "tokens.jsonl"
        self.token_offsets_file = self.path / "tokens.offsets.npy"
        self.bm25_folder = self.path / "bm25"
        self.facets_file = self.path / "facets.json"
        self.passage_file_map = self.path / "passage_file.npy"
        self.document_starts_file = self.path / "document_starts.npy"  # whether each passage begins a document
        self.point_ids_file = self.path / "points.npy"

    def dense_prefix(self, space: str) -> Path:
        """Where a space's FAISS index lives (`search.index.dense.DenseIndex` adds its suffixes)."""
        return self.path / f"dense-{space}"

    def dense_keys_file(self, space: str) -> Path:
        return self.path / f"dense-{space}.keys.npy"

    def dense_staging_file(self, space: str) -> Path:
        """The raw float32 vectors of a space while a build appends them (deleted once indexed)."""
        return self.path / f"dense-{space}.vectors.tmp"

    def space_files(self, space: str, names: Any) -> list[str]:
        """Those of `names` (relative to the generation) that hold the vectors of `space`."""
        return [name for name in names if name.startswith(f"dense-{space}.")]

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, checked against the digest CURRENT recorded; IndexDamaged when it does not match."""
        try:
            data = self.manifest_file.read_bytes()
        except FileNotFoundError:
            raise IndexDamaged(f"{self.name}/manifest.json is missing") from None
        if self.manifest_digest is not None and hashlib.sha256(data).hexdigest() != self.manifest_digest:
            raise IndexDamaged(f"{self.name}/manifest.json does not match its checksum")
        try:
            manifest = json.loads(data.decode("utf-8"))
        except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise IndexDamaged(f"{self.name}/manifest.json is not readable ({error})") from None
        if not isinstance(manifest, dict):
            raise IndexDamaged(f"{self.name}/manifest.json is not readable (not an object)")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> str:
        """Write the manifest (last of the generation's files); returns its SHA-256 for CURRENT."""
        # compact: json's C encoder (an indented dump runs in Python: 0.5 s for a 14k-file manifest)
        data = json.dumps(manifest, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.manifest_file.write_bytes(data)
        self.manifest_digest = hashlib.sha256(data).hexdigest()
        return self.manifest_digest

    def files(self) -> list[Path]:
        return sorted(path for path in self.path.rglob("*") if path.is_file())

    def relative(self, path: Path) -> str:
        return path.relative_to(self.path).as_posix()

    def link_files_of(self, other: "Generation") -> None:
        """Every file of `other` but its manifest, hard-linked into this generation under the same name: a
        generation is never written after its build, so two can share its files."""
        for path in other.files():
            if path != other.manifest_file:
                target = self.path / other.relative(path)
                target.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(path, target)

    def has_vectors(self) -> bool:
        """Whether the folder holds vector files (judged by name alone: for a generation whose
        manifest cannot be trusted)."""
        return any(path.name.startswith("dense-") for path in self.path.iterdir())

    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files())

    def read_ahead(self, stop: threading.Event | None = None) -> int:
        """Read every file once, so that the OS holds the generation in its page cache and the first
        queries of a long-lived engine do not wait on the disk for the pages of the memory-mapped FAISS
        graph, vectors and BM25 columns they touch (100k-passage bench index after a cold start, first
        300 queries: mean 11.3 ms against 8.0 ms with the files cached). Returns the bytes read; stops
        early when `stop` is set, and skips a file a newer build has removed meanwhile.

        Read through rather than posix_fadvise(WILLNEED), which brought 150 MB of that index's 513 MB
        into the cache on Linux: the kernel caps what it reads ahead."""
        stop, buffer, done = stop or threading.Event(), bytearray(1 << 20), 0
        for path in self.files():
            try:
                with open(path, "rb", buffering=0) as handle:
                    while not stop.is_set() and (read := handle.readinto(buffer)):
                        done += read
            except OSError:  # removed by a build that retired this generation: nothing left to warm
                continue
        return done


class IndexFolder:
    """One index folder on disk with its generations."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.backend_file = self.root / "backend.json"

    def current(self) -> Generation:
        """The live generation; raises IndexNotFound with what to run when there is none, and
        IndexDamaged when CURRENT names a generation that is gone."""
        if self.root.exists() and not self.root.is_dir():
            raise IndexNotFound(f"{self.root} is a file, not an index folder: pass the folder `search index` built (--index DIR)")
        live = self._read_current()
        if live is None:
            raise IndexNotFound(f"no index at {self.root}: build one with `search index PATHS --index {self.root}`")
        generation = Generation(self.root / live[0], live[1])
        if not generation.path.is_dir():
            raise IndexDamaged(f"{live[0]} is missing")
        return generation

    def damaged(self, problems: list[str]) -> IndexDamaged:
        """The one-line refusal of a damaged generation, saying how to recover."""
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        return IndexDamaged(f"index at {self.root} is damaged ({shown}): run `search index` on your notes to rebuild it")

    def exists(self) -> bool:
        return self.live_name() is not None

    def generations(self) -> list[Generation]:
        """Every generation folder present, live or not (newest name last)."""
        return [Generation(path) for path in sorted(self.root.glob(f"{GEN_PREFIX}*")) if path.is_dir()]

    def left_keyword_only(self) -> bool | None:
        """Whether what is left of an index that cannot be trusted (damaged manifest, garbage CURRENT)
        was keyword-only, so that recovering a big keyword-only index does not start embedding it; None
        when nothing tells (no generation, or only the leftovers of builds killed early)."""
        generations = [generation for generation in self.generations() if generation.manifest_file.exists() or generation.bm25_folder.exists()]
        if not generations:
            return None
        try:
            return not any(generation.has_vectors() for generation in generations)
        except OSError:
            return None

    def new_generation(self) -> Generation:
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 10**9:09d}-{os.getpid()}"
        generation = Generation(self.root / f"{GEN_PREFIX}{stamp}")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            generation.path.mkdir()
        except OSError as error:
            if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise self._unwritable(error) from None
            raise
        return generation

    def _unwritable(self, error: OSError) -> SearchError:
        return SearchError(f"cannot write to the index folder {self.root} ({error.strerror}): "
                           "fix its permissions or choose another --index")

    def publish(self, generation: Generation) -> None:
        """Make `generation` live, then drop all but it and its predecessor.

        The predecessor stays so a query that read CURRENT just before the switch can finish.
        """
        fsync_tree(generation.path)
        previous = self.live_name()
        write_atomic(self.root / CURRENT, f"{generation.name}\n{generation.manifest_digest}\n".encode())
        self.remove_stale(keep={generation.name, previous})

    def live_name(self) -> str | None:
        """The name CURRENT gives, or None when there is none (or it names no generation of ours)."""
        live = self._read_current()
        return live[0] if live else None

    def _read_current(self) -> tuple[str, str | None] | None:
        """(generation name, manifest digest) from CURRENT; None when it is missing or is not
        what a build writes (garbage, another encoding): such a CURRENT counts as no index."""
        try:
            with open(self.root / CURRENT, "rb") as handle:
                data = handle.read(4096)
            lines = data.decode("utf-8").split()
        except (OSError, UnicodeDecodeError):
            return None
        if not lines or not _GEN_NAME.fullmatch(lines[0]) or len(lines) > 2:
            return None
        if len(lines) == 2 and not _DIGEST.fullmatch(lines[1]):
            return None
        return lines[0], lines[1] if len(lines) == 2 else None

    def remove_stale(self, keep: Iterable[str | None] = ()) -> None:
        """Delete generations other than the live one and `keep` (leftovers of aborted builds)."""
        keep_names = set(keep) | {self.live_name()}
        for path in self.root.glob(f"{GEN_PREFIX}*"):
            if path.name not in keep_names:
                shutil.rmtree(path, ignore_errors=True)
        for tmp in self.root.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def build_lock(self, wait: bool = False) -> Iterator[None]:
        """Hold the folder's build lock. flock is released by the kernel when the process dies,
        so a `kill -9` never leaves a stale lock behind."""
        if _rerunning_main_in_a_worker():
            # the build's own pool worker, re-running a script that builds without a main guard: waiting
            # for the lock its parent holds would hang both forever; failing breaks the pool, which the
            # parent reports in one line (search.index.preparing.pool_result)
            raise SearchError('a process-pool worker ran the calling script again and reached a build: '
                              'put the build under `if __name__ == "__main__":`')
        if self.root.exists() and not self.root.is_dir():
            raise SearchError(f"--index {self.root} is a file, not a folder: choose a folder for the index")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a planted symlink must not make us create or lock a file elsewhere
            fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise SearchError(f"{self.root / LOCK} is a symbolic link: remove it, then build again") from None
            if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise self._unwritable(error) from None
            if error.errno in (errno.ENOTDIR, errno.EEXIST):
                raise SearchError(f"--index {self.root} is not a folder (a part of it is a file): choose a folder for the index") from None
            raise
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError as error:
                if error.errno in (errno.EAGAIN, errno.EACCES):
                    raise SearchError(
                        f"another build is running on {self.root}; wait for it to finish (or pass --wait)"
                    ) from None
                raise
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _rerunning_main_in_a_worker() -> bool:
    """Whether this process is a multiprocessing child still importing the parent's main script
    (spawn/forkserver do so before their first task); the flag is the one Python's own
    `multiprocessing.spawn` check reads, as no public API tells this phase apart."""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def check_compatible(manifest: dict[str, Any], model: str | None, root: Path) -> None:
    """Refuse an index of another format version, or one built with other models than `model`."""
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IncompatibleIndex(
            f"index at {root} has format version {manifest.get('format_version')}, this version reads "
            f"{FORMAT_VERSION}: run `search index --rebuild --index {root}`"
        )
    if model is None or manifest.get("keyword_only"):
        return  # a keyword-only index has no vectors a model would have to match
    built = sorted({info["name"] for info in manifest["models"].values()})
    wanted = sorted(set(model_plan(model).values()))
    if built != wanted:
        raise IncompatibleIndex(
            f"index at {root} was built with model {', '.join(built)}, not {', '.join(wanted)}: "
            f"use the same --model, or run `search index --rebuild --model {model}`"
        )
