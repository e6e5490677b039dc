"""Record files (JSON Lines, JSON, CSV, TSV): every record becomes a Document.

All readers stream: a file is read a record at a time, so a 1 GB JSON Lines file takes the memory
of its largest record. A bad record is skipped with its line and the rest of the file goes on.

Which fields make a record's text, and how nested values (chat turns) read: search.ingest.nested.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

from search.ingest.decoding import BAD_BYTES, open_text
from search.ingest.nested import PROBE_RECORDS, RecordText
from search.errors import LoadError
from search.schema import Document, Skipped, SourceFile

__all__ = ["iter_jsonl", "iter_json", "iter_csv"]

_CHUNK_CHARS = 1 << 20

# A CSV cell may hold a whole article; the csv module's default limit (128 KiB) would skip it.
csv.field_size_limit(max(csv.field_size_limit(), 64 << 20))

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
            except ValueError as error:
                reason = f"invalid JSON: {error.msg} (at character {error.pos + 1})" if isinstance(error, json.JSONDecodeError) else f"invalid JSON: {error}"
                yield from probe.bad(Skipped(f"{source.path}:{number}", reason))
                continue
            yield from probe.ok()
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


class _JsonScanner:
    """Reads the values of a JSON file one at a time with json.raw_decode over a sliding buffer,
    counting lines; the standard library has no streaming parser and ijson gives no positions."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.decoder = json.JSONDecoder()
        self.buffer, self.pos, self.line, self.eof = "", 0, 1, False

    def _fill(self) -> bool:
        """Read more (at least as much as is buffered, so a huge value costs linear time)."""
        if self.eof:
            return False
        chunk = self.stream.read(max(_CHUNK_CHARS, len(self.buffer) - self.pos))
        if not chunk:
            self.eof = True
            return False
        self.buffer, self.pos = self.buffer[self.pos :] + chunk, 0
        return True

    def _advance(self, end: int) -> None:
        self.line += self.buffer.count("\n", self.pos, end)
        self.pos = end

    def peek(self) -> str | None:
        """The next character that is not whitespace, without taking it; None at the end."""
        while True:
            match = re.compile(r"[ \t\r\n]*").match(self.buffer, self.pos)
            self._advance(match.end())
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            if not self._fill():
                return None

    def take(self, char: str) -> None:
        if self.peek() != char:
            found = self.peek()
            raise json.JSONDecodeError(f"Expecting {char!r}, found {found!r}" if found else f"Expecting {char!r}", self.buffer, self.pos)
        self._advance(self.pos + 1)

    def value(self) -> tuple[Any, int, int]:
        """The next value and the lines it spans."""
        self.peek()
        while True:
            if BAD_BYTES in self.buffer[self.pos : self.pos + 1]:
                raise json.JSONDecodeError("bytes that are not valid in the file's text encoding", self.buffer, self.pos)
            try:
                value, end = self.decoder.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as error:
                # an error at the end of the buffer, or an unterminated string, may just need more text
                truncated = error.pos >= len(self.buffer) - 1 or error.msg.startswith("Unterminated string")
                if truncated and self._fill():
                    continue
                raise
            if end == len(self.buffer) and self._fill():  # a number may go on in the next chunk
                continue
            start = self.line
            self._advance(end)
            return value, start, self.line

    def elements(self) -> Iterator[tuple[int, Any, int, int]]:
        """(index, value, first line, last line) of the array that starts here."""
        self.take("[")
        if self.peek() == "]":
            self._advance(self.pos + 1)
            return
        for index in itertools.count():
            value, start, end = self.value()
            yield index, value, start, end
            if self.peek() == ",":
                self._advance(self.pos + 1)
                continue
            self.take("]")
            return


def iter_json(source: SourceFile, text_fields: list[str] | None) -> Iterator[Document | Skipped]:
    """An array of records, or an object holding one (the first of its values that is an array of
    objects); an object without such an array is a single record."""
    records = RecordText(source, text_fields)
    with _text_stream(source) as stream:
        scanner = _JsonScanner(stream)
        index = -1
        try:
            if scanner.peek() == "{":
                elements = _records_in_object(scanner)
            elif scanner.peek() == "[":
                elements = scanner.elements()
            else:
                raise LoadError("not a JSON array or object of records")
            for index, record, start, end in elements:
                document = records.document(record, start, end, {"record": index} if index >= 0 else {})
                if document is not None:
                    yield document
        except json.JSONDecodeError as error:
            reason = f"invalid JSON: {error.msg}"
            if index < 0:  # nothing read: the file is not JSON
                raise LoadError(f"{reason} (line {scanner.line})") from error
            # a JSON text cannot be resynchronised after an error: what came before is kept
            yield Skipped(f"{source.path}:{scanner.line}", f"{reason}; the records after it are not indexed: fix the file")
    records.fail_unmatched()


def _records_in_object(scanner: _JsonScanner) -> Iterator[tuple[int, Any, int, int]]:
    """The records of an object file: its first array of objects, or the object as one record."""
    scanner.take("{")
    whole: dict[str, Any] = {}
    start = scanner.line
    while scanner.peek() != "}":
        key, _, _ = scanner.value()
        scanner.take(":")
        if scanner.peek() == "[" and _array_of_objects(scanner):
            yield from scanner.elements()
            return  # the rest of the object (counts, versions) is not searched
        whole[str(key)], _, _ = scanner.value()
        if scanner.peek() == ",":
            scanner.take(",")
    scanner.take("}")
    yield -1, whole, start, scanner.line


def _array_of_objects(scanner: _JsonScanner) -> bool:
    """Whether the array at the scanner starts with an object (looking past "[" and whitespace)."""
    rest = scanner.buffer[scanner.pos + 1 :].lstrip(" \t\r\n")
    while not rest and scanner._fill():
        rest = scanner.buffer[scanner.pos + 1 :].lstrip(" \t\r\n")
    return rest.startswith("{")
