"""Find note files under the user's paths and decode them into Documents.

Discovery never reads file contents (the index compares size and mtime to decide what to re-read);
decoding is strict UTF-8 so a wrongly encoded file is reported instead of indexed as mojibake.
"""

from __future__ import annotations

import os
import stat
from typing import Iterable, Iterator

from search.errors import LoadError, SearchError
from search.schema import Document, Skipped, SourceFile

__all__ = ["SUPPORTED_SUFFIXES", "discover_files", "read_document", "load_documents"]

# suffix (lower case) -> Document.kind; new formats add a row here and a branch in the chunker.
SUPPORTED_SUFFIXES: dict[str, str] = {".md": "markdown", ".markdown": "markdown", ".txt": "text"}


def _kind_of(path: str) -> str | None:
    return SUPPORTED_SUFFIXES.get(os.path.splitext(path)[1].lower())


def _unsupported(path: str) -> Skipped:
    suffix = os.path.splitext(path)[1]
    return Skipped(path, f"unsupported file type {suffix}" if suffix else "unsupported file type (no suffix)")


def _walk(folder: str) -> Iterator[str]:
    """Files under a folder, hidden folders and files left out, in a stable order."""
    # followlinks=False: a symlinked folder could loop or pull in a whole other tree.
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield os.path.join(root, name)


def _source(path: str) -> SourceFile | Skipped:
    """Stat one candidate file: a SourceFile, or why it cannot be used."""
    kind = _kind_of(path)
    if kind is None:
        return _unsupported(path)
    try:
        info = os.stat(path)
    except OSError as error:
        return Skipped(path, f"cannot read: {error.strerror or error}")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        return Skipped(path, "not a regular file")
    return SourceFile(path=path, size=info.st_size, mtime=info.st_mtime, kind=kind)


def discover_files(paths: Iterable[str | os.PathLike]) -> tuple[list[SourceFile], list[Skipped]]:
    """Supported files under `paths` (files or folders), and the files that were passed over.

    Paths are absolute but not symlink-resolved, so they read the way the user named them.
    """
    candidates: list[str] = []
    for given in paths:
        path = os.path.abspath(os.fspath(given))
        if os.path.isdir(path):
            candidates.extend(_walk(path))
        elif os.path.exists(path):
            candidates.append(path)  # explicit files are taken even when hidden
        else:
            raise SearchError(f"no such file or folder: {os.fspath(given)}")
    sources: dict[str, SourceFile] = {}
    skipped: dict[str, Skipped] = {}
    for path in dict.fromkeys(candidates):  # de-duplicate, keep order
        found = _source(path)
        if isinstance(found, SourceFile):
            sources[path] = found
        else:
            skipped[path] = found
    return sorted(sources.values(), key=lambda s: s.path), sorted(skipped.values(), key=lambda s: s.path)


def read_document(source: SourceFile) -> Document:
    """Decode a file as UTF-8 (BOM optional) with LF line ends; LoadError says why it cannot be."""
    try:
        with open(source.path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise LoadError(f"cannot read: {error.strerror or error}") from error
    try:
        text = data.decode("utf-8-sig")  # utf-8-sig drops a leading BOM and accepts files without one
    except UnicodeDecodeError as error:
        raise LoadError(f"not valid UTF-8 ({error.reason} at byte {error.start})") from error
    # Line numbers in passages count LF-separated lines, whatever the file's line ends were.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return Document(path=source.path, text=text, kind=source.kind)


def load_documents(paths: Iterable[str | os.PathLike]) -> tuple[list[Document], list[Skipped]]:
    """Discover and read in one go; files that cannot be decoded become Skipped entries."""
    sources, skipped = discover_files(paths)
    documents: list[Document] = []
    for source in sources:
        try:
            documents.append(read_document(source))
        except LoadError as error:
            skipped.append(Skipped(source.path, str(error)))
    return documents, sorted(skipped, key=lambda s: s.path)
