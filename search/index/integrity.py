"""Checksums of a generation's files, so that a damaged index is refused instead of read.

A build records, in the manifest it writes last, the size, modification time and XXH3-128 digest of
every other file of the generation (SHA-256 in generations written before it: still checked as such);
CURRENT records the manifest's own SHA-256. XXH3 is not a cryptographic hash, and needs not be: it
guards against damage (a bad disk, a stray write, a half-copied folder), not an attacker who can write
the index folder, and hashes at memory speed, ~4x SHA-256 here, where every build hashes the files it
reuses and writes. Three checks use them:

* opening an index (every query) checks the manifest's digest and each file's size and
  modification time, hashing only a file that was written since the build: a few stat calls;
* a build hashes, in full, the files it would reuse (passages, tokens, vectors) and builds anew
  what does not match;
* `search check` (`Engine.check`) hashes everything, for a daily run (files side by side on the cores).
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import xxhash

from search.errors import IndexDamaged
from search.index.folder import Generation, IndexFolder

__all__ = ["IndexCheck", "check_index", "described", "file_digest", "problems", "seal"]


INDEX_DIGEST = "xxh3"  # the key of a checksum entry, and the hash it names (_HASHES)
_HASHES = {"xxh3": xxhash.xxh3_128, "sha256": hashlib.sha256}


def file_digest(path: os.PathLike | str, kind: str = "sha256") -> str:
    """A file's hex digest: SHA-256 by default (a source file's identity, as the manifest records it)."""
    digest = _HASHES[kind]()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(paths: list[Path], kinds: list[str] | None = None) -> dict[Path, str | OSError]:
    """Each file's digest (of its kind, INDEX_DIGEST by default), or why it could not be read, hashed side
    by side on the cores (both hashes let go of the GIL)."""
    kinds = kinds or [INDEX_DIGEST] * len(paths)
    if len(paths) < 2:  # opening an index usually hashes nothing: no threads for it
        return {path: _digest_or_error(path, kind) for path, kind in zip(paths, kinds)}
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        return dict(zip(paths, pool.map(_digest_or_error, paths, kinds)))


def _digest_or_error(path: Path, kind: str) -> str | OSError:
    try:
        return file_digest(path, kind)
    except OSError as error:
        return error


def _unreadable(error: OSError) -> str:
    return "is missing" if isinstance(error, FileNotFoundError) else f"cannot be read ({error.strerror or error})"


def seal(generation: Generation, previous: Generation | None = None, previous_checksums: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The manifest's "checksums": every file of the generation but the manifest, by relative name. A
    file that is the previous generation's own (a hard link: a graph no edit touched) keeps the digest
    recorded there, which this build verified before reusing it, instead of being read again."""
    sealed, to_hash = {}, []
    for path in generation.files():
        if path == generation.manifest_file:
            continue
        name = generation.relative(path)
        shared = _shared_entry(path, previous.path / name, (previous_checksums or {}).get(name)) if previous is not None else None
        if shared is not None:
            sealed[name] = shared
        else:
            to_hash.append(path)
    for path, digest in file_digests(to_hash).items():
        if isinstance(digest, OSError):  # the build's own file: nothing to say but that
            raise digest
        info = path.stat()
        sealed[generation.relative(path)] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns, INDEX_DIGEST: digest}
    return dict(sorted(sealed.items()))


def _shared_entry(path: Path, previous_file: Path, entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """The previous generation's checksum entry when `path` is that very file (the same inode, as recorded)."""
    if not isinstance(entry, dict):
        return None
    try:
        mine, theirs = path.stat(), previous_file.stat()
    except OSError:
        return None
    same = (mine.st_ino, mine.st_dev, mine.st_size, mine.st_mtime_ns) == (theirs.st_ino, theirs.st_dev, entry.get("size"), entry.get("mtime_ns"))
    return dict(entry) if same else None


def problems(generation: Generation, manifest: dict[str, Any], full: bool, names: Iterable[str] | None = None) -> dict[str, str]:
    """What is wrong with the generation's files (all, or those of `names`), by file name: missing,
    another size, or content that does not match the checksum. `full` hashes every file; otherwise
    only a file whose modification time changed since the build (a generation is never written after it)."""
    listed = manifest.get("checksums")
    if not isinstance(listed, dict):
        return {"manifest.json": "lists no checksums"}
    wanted = None if names is None else set(names)
    found, to_hash = {}, {}
    for name, expected in sorted(listed.items()):
        if wanted is not None and name not in wanted:
            continue
        path = generation.path / name
        try:
            info = os.stat(path)
            if info.st_size != expected["size"]:
                found[name] = f"has {info.st_size} bytes, not {expected['size']}"
            elif full or info.st_mtime_ns != expected["mtime_ns"]:
                kind = next(kind for kind in _HASHES if kind in expected)  # StopIteration: no checksum at all
                to_hash[path] = (name, kind, str(expected[kind]))
        except OSError as error:
            found[name] = _unreadable(error)
        except (KeyError, TypeError, StopIteration):
            found[name] = "has no readable checksum"
    for path, digest in file_digests(list(to_hash), [kind for _, kind, _ in to_hash.values()]).items():
        name, _, expected_digest = to_hash[path]
        if isinstance(digest, OSError):
            found[name] = _unreadable(digest)
        elif digest != expected_digest:
            found[name] = "does not match its checksum"
    return dict(sorted(found.items()))


def described(found: dict[str, str]) -> list[str]:
    return [f"{name} {what}" for name, what in found.items()]


@dataclass
class IndexCheck:
    """What `Engine.check` found: `ok` when every file of the live generation matches its checksum."""

    index: str
    generation: str | None
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "generation": self.generation, "ok": self.ok, "files": self.files,
                "bytes": self.bytes, "seconds": self.seconds, "problems": self.problems}


def check_index(folder: IndexFolder) -> IndexCheck:
    """Hash every file of the live generation against the manifest (IndexNotFound when there is none)."""
    started = time.perf_counter()
    try:
        generation = folder.current()
    except IndexDamaged as error:
        return IndexCheck(str(folder.root), folder.live_name(), problems=[str(error)])
    report = IndexCheck(str(folder.root), generation.name)
    try:
        manifest = generation.read_manifest()
    except IndexDamaged as error:
        report.problems.append(str(error))
        return report
    listed = manifest.get("checksums") if isinstance(manifest.get("checksums"), dict) else {}
    report.files = len(listed) + 1
    report.bytes = sum(int(info.get("size", 0)) for info in listed.values()) + generation.manifest_file.stat().st_size
    report.problems = described(problems(generation, manifest, full=True))
    report.seconds = round(time.perf_counter() - started, 3)
    return report
