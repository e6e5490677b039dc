"""Record files (JSON Lines, JSON, CSV, TSV): every record becomes a Document.

All readers stream: a file is read a record at a time, so a 1 GB JSON Lines file takes the memory
of its largest record. A bad record is skipped with its line and the rest of the file goes on.

Which fields make a record's text, and how nested values (chat turns) read: search.ingest.nested.
"""

from __future__ import annotations

import csv
import itertools
import json
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

from search.ingest.decoding import BAD_BYTES, open_text
from search.ingest.nested import PROBE_RECORDS, RecordText
from search.errors import LoadError
from search.schema import Document, Skipped, SourceFile

__all__ = ["MAX_DEPTH", "iter_jsonl", "iter_csv", "too_deep"]

# A record nested deeper than this is skipped: real records are a few levels deep, and walking a
# hostile one ([[[[... 10,000 deep) would exhaust Python's stack in the parser or in the walk.
MAX_DEPTH = 100

# A CSV cell may hold a whole article; the csv module's default limit (128 KiB) would skip it.
csv.field_size_limit(max(csv.field_size_limit(), 64 << 20))


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists and objects nest more than `limit` deep in `value` (without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _deep(path: str, line: int) -> Skipped:
    return Skipped(f"{path}:{line}", f"a record nested more than {MAX_DEPTH} levels deep")


@contextmanager
def _text_stream(source: SourceFile) -> Iterator[TextIO]:
    try:
        handle = open(source.path, "rb")
    except OSError as error:
        raise LoadError(f"cannot read: {error.strerror or error}") from error
    with handle:
        stream = open_text(handle)
        try:
            yield stream
        except OSError as error:  # EIO and the like in the middle of a file
            raise LoadError(f"cannot read: {error.strerror or error}") from error
        finally:
            stream.detach()


def _bad_bytes(path: str, line: int) -> Skipped:
    return Skipped(f"{path}:{line}", "bytes that are not valid in the file's text encoding")


class _Probe:
    """Holds back the skips of a file's first records: if none of the first few parse, the whole
    file is not of its format and one file-level error says so instead of a line per record."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.held: list[Skipped] = []
        self.good = False

    def bad(self, skipped: Skipped) -> Iterator[Skipped]:
        if self.good:
            yield skipped
            return
        self.held.append(skipped)
        if len(self.held) >= PROBE_RECORDS:
            self.fail()

    def ok(self) -> Iterator[Skipped]:
        if not self.good:
            self.good = True
            yield from self.held
            self.held = []

    def fail(self) -> None:
        if self.held and not self.good:
            first = self.held[0]
            raise LoadError(f"not {self.what}: line {first.path.rsplit(':', 1)[1]}: {first.reason}")


def iter_jsonl(source: SourceFile, text_fields: list[str] | None) -> Iterator[Document | Skipped]:
    """One record per line; blank lines are allowed, a line that is not JSON is skipped."""
    records, probe = RecordText(source, text_fields), _Probe("JSON Lines")
    with _text_stream(source) as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            if BAD_BYTES in line:
                yield from probe.bad(_bad_bytes(source.path, number))
                continue
            try:
                record = json.loads(line)
            except RecursionError:
                yield from probe.bad(_deep(source.path, number))
                continue
            except ValueError as error:
                reason = f"invalid JSON: {error.msg} (at character {error.pos + 1})" if isinstance(error, json.JSONDecodeError) else f"invalid JSON: {error}"
                yield from probe.bad(Skipped(f"{source.path}:{number}", reason))
                continue
            yield from probe.ok()
            if too_deep(record):
                yield _deep(source.path, number)
                continue
            document = records.document(record, number, number, {"line": number})
            if document is not None:
                yield document
    probe.fail()
    records.fail_unmatched()


def iter_csv(source: SourceFile, text_fields: list[str] | None, delimiter: str | None) -> Iterator[Document | Skipped]:
    """The first row names the columns; every later row is a record.

    Ragged rows are indexed, not skipped: missing cells are left out and extra cells are kept as
    "column N". TSV is read without quoting (tabs and newlines cannot occur inside its fields, and
    a stray quote must not swallow the lines after it).
    """
    records = RecordText(source, text_fields)
    with _text_stream(source) as stream:
        first = stream.readline()
        if delimiter is None:  # the header's most frequent candidate: exports use , ; or tab
            delimiter = max(",;\t|", key=lambda c: (first.count(c), c == ","))
        quoting = csv.QUOTE_NONE if source.kind == "tsv" else csv.QUOTE_MINIMAL
        reader = csv.reader(itertools.chain([first], stream), delimiter=delimiter, quoting=quoting)
        header = _header(source, reader)
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                yield Skipped(f"{source.path}:{start}", f"bad CSV row: {error}")
                continue
            if not any(cell.strip() for cell in row):
                continue
            if any(BAD_BYTES in cell for cell in row):
                yield _bad_bytes(source.path, start)
                continue
            record = dict(zip(header, row))
            record.update((f"column {i + 1}", cell) for i, cell in enumerate(row) if i >= len(header))
            document = records.document(record, start, reader.line_num, {"line": start})
            if document is not None:
                yield document
    records.fail_unmatched()


def _header(source: SourceFile, reader: Any) -> list[str]:
    try:
        row = next(reader, None)
    except csv.Error as error:
        raise LoadError(f"bad CSV header row: {error}") from error
    if not row or BAD_BYTES in "".join(row) or not any(cell.strip() for cell in row):
        raise LoadError("no header row: the first line must name the columns")
    names: list[str] = []
    for i, cell in enumerate(row):
        name = cell.strip().lstrip("\ufeff") or f"column {i + 1}"
        names.append(name if name not in names else f"{name} ({i + 1})")
    return names
