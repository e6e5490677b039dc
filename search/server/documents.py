"""Reading a window of lines of an indexed file for the page and the MCP `get` tool.

Only files the index holds are read, and only when the file's real location (symlinks resolved)
is inside the indexed tree: a note that is (or became, after indexing) a symlink to ~/.ssh/id_rsa,
or a file reached through a symlinked folder leading elsewhere, is refused. Reads are bounded in lines, characters per line and bytes scanned.
"""

from __future__ import annotations

import codecs
import os
from dataclasses import dataclass
from typing import Iterator

# Kinds whose hits do not point at lines of the file: PDF pages and web pages' extracted text.
NOT_LINES = {".pdf": "a PDF", ".html": "a web page", ".htm": "a web page"}
SAMPLE_BYTES = 64 * 1024
LINE_KEEP_CHARS = 64 * 1024


class DocumentError(Exception):
    """Why a window of a file cannot be shown; `status` is the HTTP status that says so."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Limits:
    max_lines: int = 400  # lines in one window
    max_line_chars: int = 2000  # a longer line (a JSONL record) is cut, and the window says so
    max_scan_bytes: int = 256 * 2**20  # how far into a file a window may start


@dataclass
class Window:
    path: str
    first_line: int
    lines: list[str]
    truncated: bool  # a line was cut, or the window stopped at max_lines
    at_end: bool  # the window reaches the end of the file
    encoding: str

    @property
    def last_line(self) -> int:
        return self.first_line + len(self.lines) - 1

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "first_line": self.first_line,
            "last_line": self.last_line,
            "lines": self.lines,
            "truncated": self.truncated,
            "at_end": self.at_end,
            "encoding": self.encoding,
        }


def tree_roots(files: list[str]) -> list[str]:
    """The top folders of the indexed files (as indexed, not resolved): /notes for /notes/a.md and
    /notes/sub/b.md; two roots for two separate trees."""
    roots: list[str] = []
    for folder in sorted({os.path.dirname(path) for path in files}, key=len):
        if not any(folder == root or folder.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
            roots.append(folder)
    return roots


def held_folders(files: list[str]) -> list[str]:
    """The tree roots with symlinks resolved: where a served file must really be."""
    return sorted({os.path.realpath(root) for root in tree_roots(files)})


def inside_tree(path: str, folders: list[str]) -> bool:
    """True when `path`, symlinks resolved, lies under one of `folders` (resolved roots)."""
    real = os.path.realpath(path)
    return any(real.startswith(folder.rstrip(os.sep) + os.sep) for folder in folders)


def check_readable(path: str, holds: bool, folders: list[str]) -> None:
    """Raise DocumentError(404) unless the index holds exactly `path` and it stays in the tree."""
    if not path or not os.path.isabs(path) or "\x00" in path:
        raise DocumentError(404, f"not a file of this index: {path!r} (give the absolute path a hit names)")
    if not holds:
        raise DocumentError(404, f"not a file of this index: {path!r} (only indexed files can be read; search to find them)")
    if not inside_tree(path, folders):
        raise DocumentError(404, f"not a file of this index: {path!r} now leads outside the indexed folders")
    if not os.path.isfile(path):
        raise DocumentError(404, f"{path} was indexed but is gone now: run `search index` to update the index")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in NOT_LINES:
        raise DocumentError(
            422, f"{path} is {NOT_LINES[suffix]}: its hits are extracted text, not lines of the file; the hit's text is the passage"
        )


def read_window(path: str, start: int, end: int, limits: Limits) -> Window:
    """Lines start..end (1-based, inclusive) of the file, clamped to the file and to the limits."""
    if start < 1 or end < start:
        raise DocumentError(400, f"bad line range {start}-{end}: lines count from 1 and the end is not before the start")
    if end - start + 1 > limits.max_lines:
        raise DocumentError(400, f"lines {start}-{end} are {end - start + 1} lines: ask for at most {limits.max_lines} at a time")
    try:
        return _read_window(path, start, end, limits)
    except OSError as error:  # unreadable now (permissions, a file turned folder): say so, not a 500
        raise DocumentError(404, f"cannot read {path}: {error.strerror or error}") from None


def _read_window(path: str, start: int, end: int, limits: Limits) -> Window:
    encoding = _detect_encoding(path)
    lines: list[str] = []
    truncated = at_end = False
    with open(path, "rb") as raw:
        for number, line in enumerate(_lines(raw, encoding), 1):
            if number > end:
                break
            if number < start:
                if raw.tell() > limits.max_scan_bytes:
                    raise DocumentError(
                        400, f"line {start} is more than {limits.max_scan_bytes // 2**20} MB into {path}: too far to show"
                    )
                continue
            if len(line) > limits.max_line_chars:
                line, truncated = line[: limits.max_line_chars] + " …", True
            lines.append(line)
        else:
            at_end = True
    if not lines:
        raise DocumentError(404, f"{path} has no line {start}: it changed since it was indexed; run `search index`")
    return Window(path, start, lines, truncated, at_end, encoding)


def _lines(raw, encoding: str) -> Iterator[str]:
    """Decoded lines without their ends, split at \\n, \\r\\n and \\r, read 64 KB at a time; of a
    line longer than LINE_KEEP_CHARS only that much is kept, so memory stays bounded on any file."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    pending = ""  # the unfinished line
    head: str | None = None  # the kept start of an overlong unfinished line (its rest is dropped)
    while True:
        chunk = raw.read(1 << 16)
        pending += decoder.decode(chunk, final=not chunk)
        if not chunk:
            parts = _split(pending)
            if head is not None:
                parts[0] = head
            if parts[-1] == "":
                parts.pop()  # the file ends with a line end
            yield from parts
            return
        cut = len(pending) - 1 if pending.endswith("\r") else len(pending)  # maybe half of \r\n
        parts = _split(pending[:cut])
        pending = parts.pop() + pending[cut:]
        if parts and head is not None:
            parts[0], head = head, None
        yield from parts
        if len(pending) > LINE_KEEP_CHARS:
            head = head if head is not None else pending[:LINE_KEEP_CHARS]
            pending = ""


def _split(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _detect_encoding(path: str) -> str:
    with open(path, "rb") as handle:
        sample = handle.read(SAMPLE_BYTES)
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=len(sample) < SAMPLE_BYTES)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(sample).best()
    return best.encoding if best is not None else "utf-8"
