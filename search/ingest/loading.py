"""Find files under the user's paths and read them into Documents.

Discovery never reads file contents (the index compares size and mtime to decide what to re-read).
Reading dispatches on the file's kind: notes, web pages and Word files are one Document each, PDFs
one per page, notebooks one per cell, record files (JSON Lines, JSON, CSV, TSV, Parquet, Arrow) one
per record, streamed. A folder that `datasets.save_to_disk` wrote is one dataset: its shards are
read, its JSON files and cache files are not (search.ingest.arrow). A file that cannot be used
raises LoadError; a bad record or page is a Skipped and the rest of the file goes on. Text is
decoded by search.decoding, which refuses what it cannot tell instead of indexing mojibake.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Iterable, Iterator

from search.ingest import arrow
from search.ingest.decoding import decode_text
from search.errors import LoadError, SearchError
from search.schema import Document, Skipped, SourceFile

__all__ = [
    "SUPPORTED_SUFFIXES",
    "LoadOptions",
    "discover_files",
    "iter_documents",
    "read_document",
    "load_documents",
    "kind_of",
    "LINELESS_KINDS",
]

# suffix (lower case) -> SourceFile.kind; a new format adds a row here and a branch in iter_documents.
SUPPORTED_SUFFIXES: dict[str, str] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipynb": "notebook",
    ".docx": "docx",
}
RECORD_KINDS = ("jsonl", "json", "csv", "tsv")
COLUMNAR_KINDS = ("parquet", "arrow")
# kinds whose passages' lines are not the file's (extracted text): a hit points to the file alone
LINELESS_KINDS = ("html", "docx")


@dataclass
class LoadOptions:
    """How files are read; recorded in the index, where a change re-reads every file."""

    # record fields (or dotted paths into nested ones) that make a record's text (None: chosen automatically)
    text_fields: list[str] | None = None
    # Single-document formats only (notes, HTML, PDF, notebooks, Word): those are read whole. Record files stream.
    max_file_bytes: int = 50 * 2**20
    notebook_outputs: bool = False  # index the text outputs of notebook cells too


def kind_of(path: str) -> str | None:
    """The kind of file a path names, by its suffix; None when it is not supported."""
    return SUPPORTED_SUFFIXES.get(os.path.splitext(path)[1].lower())


def _unsupported(path: str) -> Skipped:
    suffix = os.path.splitext(path)[1]
    return Skipped(path, f"unsupported file type {suffix}" if suffix else "unsupported file type (no suffix)")


# Folders deeper than this below an indexed folder are not read (one line says so): real note
# trees are a few levels deep, and a hostile tree 1,500 deep must neither recurse nor reach PATH_MAX.
MAX_FOLDER_DEPTH = 100


def _bad_name(path: str) -> bool:
    """Whether a path holds bytes that are not UTF-8 (os gives them as lone surrogates): the index
    stores paths as UTF-8 text, so such a file cannot be recorded."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_BAD_NAME = "file name is not valid UTF-8: rename it"


class _Tree:
    """The folders being indexed: where a walk may go, and what it must leave out."""

    def __init__(self, folders: list[str], exclude: Iterable[str], follow_symlinks: bool) -> None:
        self.roots = [os.path.realpath(folder) for folder in folders]
        self.exclude = {_identity(path) for path in exclude} - {None}
        self.follow_symlinks = follow_symlinks

    def inside(self, path: str) -> bool:
        """Whether `path`, links resolved, lies under one of the indexed folders."""
        real = os.path.realpath(path)
        return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.roots)

    def link_outside(self, path: str, is_link: bool) -> Skipped | None:
        """A file link whose target is outside the indexed folders is not followed unless asked
        (`is_link`: what the folder listing said of the file, so a plain file costs no lstat)."""
        if self.follow_symlinks or not is_link or not os.path.exists(path) or self.inside(path):
            return None
        return Skipped(path, f"link to {os.path.realpath(path)}, outside the indexed folders: not followed "
                             "(pass --follow-symlinks to index it)")


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _is_index_folder(entries: list[os.DirEntry]) -> bool:
    names = {entry.name for entry in entries}
    return "CURRENT" in names and any(name.startswith("gen-") for name in names)


def _walk(folder: str, skipped: list[Skipped], tree: _Tree) -> Iterator[tuple[str, bool]]:
    """Files under a folder, and whether each is a symbolic link (from the listing, no lstat), hidden
    folders and files left out, in a stable order; folders that
    cannot be listed, links to folders, folders too deep and names that are not UTF-8 go to
    `skipped`. Iterative (an explicit stack), so no depth of folders can exhaust Python's stack. A
    `datasets.save_to_disk` folder yields its shards alone (search.ingest.arrow)."""
    stack = [(folder, 0)]
    while stack:
        current, depth = stack.pop()
        try:
            with os.scandir(current) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            skipped.append(Skipped(current, f"cannot read folder: {error.strerror or error}"))
            continue
        if depth and _is_index_folder(entries):
            continue  # another index's files are not notes either
        dataset = arrow.dataset_files(current, [entry.name for entry in entries if not entry.is_dir(follow_symlinks=False)])
        if dataset is not None:
            names = {entry.name for entry in entries}
            skipped.extend(Skipped(os.path.join(current, name), "a shard that state.json lists is missing")
                           for name in dataset.shards if name not in names)
        folders = []
        for entry in entries:
            if entry.name.startswith(".") or dataset is not None and entry.name in arrow.DATASET_FILES:
                continue
            if dataset is not None and entry.name in dataset.passed_over:
                skipped.append(Skipped(entry.path, dataset.passed_over[entry.name]))
                continue
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
                same = is_folder and (entry.stat(follow_symlinks=False).st_dev, entry.inode()) in tree.exclude
            except OSError as error:
                skipped.append(Skipped(entry.path, f"cannot read: {error.strerror or error}"))
                continue
            linked_folder = not is_folder and entry.is_symlink() and os.path.isdir(entry.path)  # a loop is a file here
            if linked_folder:
                # a symlinked folder could loop or pull in a whole other tree
                skipped.append(Skipped(entry.path, "link to a folder, not followed: index the folder itself to include it"))
            elif same:
                continue  # the index folder itself: its files must never become notes
            elif is_folder and _bad_name(entry.path):
                skipped.append(Skipped(entry.path, "folder name is not valid UTF-8: rename it"))
            elif is_folder and depth + 1 > MAX_FOLDER_DEPTH:
                skipped.append(Skipped(entry.path, f"folder nested more than {MAX_FOLDER_DEPTH} levels deep: not read"))
            elif is_folder:
                folders.append(entry.path)
            else:
                yield entry.path, entry.is_symlink()
        stack.extend((path, depth + 1) for path in reversed(folders))


def _stat_error(path: str, error: OSError) -> Skipped:
    if error.errno == errno.ELOOP:
        return Skipped(path, "symbolic link loop")
    if error.errno == errno.ENOENT and os.path.islink(path):
        return Skipped(path, f"broken symbolic link (to {os.readlink(path)})")
    return Skipped(path, f"cannot read: {error.strerror or error}")


def _source(path: str, tree: _Tree | None, is_link: bool) -> SourceFile | Skipped:
    """Stat one candidate file: a SourceFile, or why it cannot be used (`tree`: found by a walk, which
    said whether it `is_link`)."""
    kind = kind_of(path)
    if kind is None:
        return _unsupported(path)
    if _bad_name(path):
        return Skipped(path, _BAD_NAME)
    outside = tree.link_outside(path, is_link) if tree is not None else None
    if outside is not None:
        return outside
    try:
        info = os.stat(path)
    except OSError as error:
        return _stat_error(path, error)
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        return Skipped(path, "not a regular file")
    return SourceFile(path=path, size=info.st_size, mtime=info.st_mtime, kind=kind)


def discover_files(
    paths: Iterable[str | os.PathLike], follow_symlinks: bool = False, exclude: Iterable[str | os.PathLike] = ()
) -> tuple[list[SourceFile], list[Skipped]]:
    """Supported files under `paths` (files or folders), and the files that were passed over.

    Paths are absolute but not symlink-resolved, so they read the way the user named them. The
    folders given are the boundary: a link found in them to a file outside them is skipped unless
    `follow_symlinks` (a file named on its own is taken, link or not). Folders in `exclude` (the
    index folder) are never entered.
    """
    paths = list(paths)
    given_paths = [os.path.abspath(os.fspath(given)) for given in paths]
    excluded = [os.fspath(path) for path in exclude]
    for given, path in zip(paths, given_paths):
        if not os.path.lexists(path):  # a broken link is reported, not "no such file"
            raise SearchError(f"no such file or folder: {os.fspath(given)}")
        for folder in excluded:
            real, inner = os.path.realpath(path), os.path.realpath(folder)
            if real == inner or real.startswith(inner.rstrip(os.sep) + os.sep):
                raise SearchError(f"{os.fspath(given)} is inside the index folder {folder}: index your notes into another folder (--index DIR)")
    tree = _Tree([path for path in given_paths if os.path.isdir(path)], excluded, follow_symlinks)
    candidates: list[tuple[str, bool, bool]] = []  # (path, found by a walk, a link as the walk found it)
    walk_skipped: list[Skipped] = []
    for path in given_paths:
        if os.path.isdir(path):
            candidates.extend((found, True, is_link) for found, is_link in _walk(path, walk_skipped, tree))
        else:
            candidates.append((path, False, False))  # explicit files are taken even when hidden or links
    sources: dict[str, SourceFile] = {}
    skipped: dict[str, Skipped] = {s.path: s for s in walk_skipped}
    for path, walked, is_link in dict.fromkeys(candidates):  # de-duplicate, keep order
        if path in sources:
            continue
        found = _source(path, tree if walked else None, is_link)
        if isinstance(found, SourceFile):
            sources[path] = found
            skipped.pop(path, None)
        else:
            skipped[path] = found
    return sorted(sources.values(), key=lambda s: s.path), sorted(skipped.values(), key=lambda s: s.path)


def _check_size(size: int, options: LoadOptions) -> None:
    if size > options.max_file_bytes:
        raise LoadError(
            f"{_megabytes(size)} MB is over the {_megabytes(options.max_file_bytes)} MB "
            "limit for one document: split it or pass --max-file-size"
        )


def _read_whole(source: SourceFile, options: LoadOptions) -> bytes:
    """A single-document file's bytes, refused before reading when it is over the size limit."""
    try:
        with open(source.path, "rb") as handle:
            _check_size(os.fstat(handle.fileno()).st_size, options)
            return handle.read()
    except OSError as error:
        raise LoadError(f"cannot read: {error.strerror or error}") from error


def _megabytes(size: int) -> str:
    megabytes = size / 2**20
    return f"{megabytes:.0f}" if megabytes >= 100 else f"{megabytes:.3g}"


def read_document(source: SourceFile, options: LoadOptions | None = None) -> Document:
    """A note (markdown or text), web page or Word file as one Document with LF line ends; LoadError says why not."""
    options = options or LoadOptions()
    if source.kind == "docx":
        from search.ingest.word import docx_document

        _check_size(_size(source), options)
        return docx_document(source, options.max_file_bytes)
    data = _read_whole(source, options)
    if source.kind == "html":
        from search.ingest.html import html_document

        return html_document(source, data)
    return Document(path=source.path, text=decode_text(data), kind=source.kind)


def _size(source: SourceFile) -> int:
    try:
        return os.stat(source.path).st_size
    except OSError as error:
        raise LoadError(f"cannot read: {error.strerror or error}") from error


def iter_documents(source: SourceFile, options: LoadOptions | None = None) -> Iterator[Document | Skipped]:
    """The documents of one file, lazily: records of a record file or dataset, pages of a PDF, cells
    of a notebook, else the file.

    A bad record, page or output yields a Skipped (path:line, path#row, path p.N, path cell N) and the
    rest of the file goes on;
    a file that cannot be used at all raises LoadError (when iterated).
    """
    options = options or LoadOptions()
    if source.kind in RECORD_KINDS:
        from search.ingest import records

        if source.kind == "jsonl":
            yield from records.iter_jsonl(source, options.text_fields)
        elif source.kind == "json":
            from search.ingest.json_records import iter_json

            yield from iter_json(source, options.text_fields)
        else:
            yield from records.iter_csv(source, options.text_fields, "\t" if source.kind == "tsv" else None)
    elif source.kind == "parquet":
        yield from arrow.iter_parquet(source, options.text_fields)
    elif source.kind == "arrow":
        yield from arrow.iter_arrow(source, options.text_fields)
    elif source.kind == "notebook":
        from search.ingest.notebook import iter_notebook

        yield from iter_notebook(source, _read_whole(source, options), options.notebook_outputs)
    elif source.kind == "pdf":
        from search.ingest.pdf import iter_pdf

        _check_size(_size(source), options)
        yield from iter_pdf(source)
    else:
        yield read_document(source, options)


def load_documents(
    paths: Iterable[str | os.PathLike], options: LoadOptions | None = None
) -> tuple[list[Document], list[Skipped]]:
    """Discover and read in one go; files and records that cannot be used become Skipped entries."""
    sources, skipped = discover_files(paths)
    documents: list[Document] = []
    for source in sources:
        own: list[Document] = []
        own_skipped: list[Skipped] = []
        try:
            for item in iter_documents(source, options):
                (own if isinstance(item, Document) else own_skipped).append(item)
        except Exception as error:  # noqa: BLE001 - one bad file never stops the others
            reason = str(error) if isinstance(error, LoadError) else f"cannot read ({type(error).__name__}: {error})"
            skipped.append(Skipped(source.path, " ".join(reason.split())))
            continue
        documents.extend(own)
        skipped.extend(own_skipped)
    return documents, sorted(skipped, key=lambda s: s.path)
