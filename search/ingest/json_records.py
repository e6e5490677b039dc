"""JSON files of records: an array of records, or an object holding one, read a value at a time.

Records become Documents as in `search.ingest.records`; a record nested more than MAX_DEPTH deep
is skipped, and a file whose nesting defeats the parser is refused with one line.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, Iterator, TextIO

from search.errors import LoadError
from search.ingest.decoding import BAD_BYTES
from search.ingest.nested import RecordText
from search.ingest.records import MAX_DEPTH, _text_stream, too_deep
from search.schema import Document, Skipped, SourceFile

__all__ = ["iter_json"]

_CHUNK_CHARS = 1 << 20


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
                if too_deep(record):
                    yield Skipped(f"{source.path}:{start}", f"a record nested more than {MAX_DEPTH} levels deep")
                    continue
                document = records.document(record, start, end, {"record": index} if index >= 0 else {})
                if document is not None:
                    yield document
        except (json.JSONDecodeError, RecursionError) as error:
            if isinstance(error, RecursionError):  # the parser's own stack: far deeper than MAX_DEPTH
                reason = f"JSON nested more than {MAX_DEPTH} levels deep"
            else:
                reason = f"invalid JSON: {error.msg}"
            if index < 0:  # nothing read: the file is not JSON
                raise LoadError(f"{reason} (line {scanner.line})") from None
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
