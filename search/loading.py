"""Finding and reading the files to index: paths -> SourceFile -> Document."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from search.errors import LoadError, SearchError
from search.schema import Document, Skipped, SourceFile

# suffix -> kind; the chunker dispatches on kind
SUPPORTED_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text"}


def _kind(path: str) -> str | None:
    return SUPPORTED_SUFFIXES.get(os.path.splitext(path)[1].lower())


def _source(path: str, kind: str) -> SourceFile:
    stat = os.stat(path)
    return SourceFile(path=path, size=stat.st_size, mtime=stat.st_mtime, kind=kind)


def _walk(folder: str) -> Iterable[str]:
    """Files under `folder`, skipping hidden folders (.git among them) and hidden files."""
    for root, dirs, files in os.walk(folder):  # does not follow symlinked folders: no loops
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield os.path.join(root, name)


def discover_files(paths: Iterable[str | os.PathLike]) -> tuple[list[SourceFile], list[Skipped]]:
    """The indexable files under `paths` (files or folders), and the files skipped with why."""
    found: dict[str, SourceFile] = {}
    skipped: dict[str, Skipped] = {}
    for given in paths:
        given = os.path.abspath(os.fspath(given))
        if not os.path.exists(given):
            raise SearchError(f"no such file or folder: {given}")
        candidates = _walk(given) if os.path.isdir(given) else [given]
        for path in candidates:
            kind = _kind(path)
            if kind is None:
                suffix = os.path.splitext(path)[1] or "(no suffix)"
                skipped[path] = Skipped(path, f"unsupported file type {suffix}")
                continue
            try:
                found[path] = _source(path, kind)
            except OSError as error:
                skipped[path] = Skipped(path, f"cannot read: {error.strerror or error}")
    return [found[p] for p in sorted(found)], [skipped[p] for p in sorted(skipped)]


def decode(data: bytes, path: str) -> str:
    """UTF-8 text with any BOM removed and line ends normalised to LF."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise LoadError(f"not valid UTF-8 (byte {error.start}): save it as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_document(source: SourceFile) -> Document:
    try:
        data = Path(source.path).read_bytes()
    except OSError as error:
        raise LoadError(f"cannot read: {error.strerror or error}") from None
    return Document(path=source.path, text=decode(data, source.path), kind=source.kind)


def load_documents(paths: Iterable[str | os.PathLike]) -> tuple[list[Document], list[Skipped]]:
    """Every readable document under `paths`; unreadable ones join the skipped list."""
    sources, skipped = discover_files(paths)
    documents = []
    for source in sources:
        try:
            documents.append(read_document(source))
        except LoadError as error:
            skipped.append(Skipped(source.path, str(error)))
    return documents, skipped
