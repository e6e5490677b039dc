"""Record files (JSON Lines, JSON, CSV, TSV): every record becomes a Document.

All readers stream: a file is read a record at a time, so a 1 GB JSON Lines file takes the memory
of its largest record. A bad record is skipped with its line and the rest of the file goes on.

Record text. With `text_fields`, exactly those fields in that order. Otherwise every field whose
value holds text, in the record's order, with nested lists and objects walked (chat datasets keep
turns in a list); a field is left out of the text when its name marks an identifier or address
(id, uuid, url, path, hash, ... and camelCase such as userId) or its value is a single token that
is a URL or e-mail address, has no letters (numbers, dates) or mixes letters and digits (codes such
as A12 or hex hashes). The chosen values are joined by blank lines, so Alpaca and BELLE records
read instruction, input, output. Other fields go to metadata["fields"] when small enough.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

from search.ingest.decoding import BAD_BYTES, normalize_newlines, open_text
from search.errors import LoadError
from search.schema import Document, Skipped, SourceFile

__all__ = ["MAX_DEPTH", "iter_jsonl", "iter_csv", "too_deep"]

_ID_NAME = re.compile(
    r"(?:^|[_\-\s.])(?:id|ids|uuid|guid|url|urls|uri|href|link|links|path|file|filename|hash|md5|sha\d*|checksum)$",
    re.I,
)
_CAMEL_ID = re.compile(r"[a-z0-9](?:Id|ID|Ids|IDs|Url|URL|Uri|URI|Path|Hash)$")
_ADDRESS = re.compile(r"(?:[a-z][a-z0-9+.-]*://|www\.|mailto:)\S*|[^@\s]+@[^@\s]+\.\w+", re.I)
_MAX_FIELD_JSON = 1000  # metadata is copied into every passage of a record: big values stay out
_PROBE_RECORDS = 20  # how many leading records decide that a file is not what its suffix says
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


def _is_id_name(name: str) -> bool:
    return bool(_ID_NAME.search(name) or _CAMEL_ID.search(name))


def _is_text(value: str) -> bool:
    value = value.strip()
    if not value:
        return False
    if any(c.isspace() for c in value):
        return True
    if _ADDRESS.fullmatch(value) or not any(c.isalpha() for c in value):
        return False
    return not (value.isascii() and any(c.isdigit() for c in value))


def _strings(value: Any) -> Iterator[str]:
    """The text-like strings inside a value, nested lists and objects included."""
    if isinstance(value, str):
        if _is_text(value):
            yield value.strip()
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not _is_id_name(str(key)):
                yield from _strings(item)


def _all_strings(value: Any) -> Iterator[str]:
    """Every scalar inside a value as text (for fields the user chose)."""
    if isinstance(value, (list, dict)):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _all_strings(item)
    elif value is not None and str(value).strip():
        yield str(value).strip()


def _small(value: Any) -> bool:
    return len(json.dumps(value, ensure_ascii=False, default=str)) <= _MAX_FIELD_JSON


class _Records:
    """Turns parsed records of one file into Documents, checking --text-fields against them."""

    def __init__(self, source: SourceFile, text_fields: list[str] | None) -> None:
        self.source = source
        self.text_fields = text_fields
        self.seen = 0
        self.matched = False

    def document(self, record: Any, line_start: int, line_end: int, position: dict[str, Any]) -> Document | Skipped | None:
        """The record's Document, a Skipped for a record of the wrong shape, None for one without text."""
        if isinstance(record, str):
            record = {"text": record}
        if not isinstance(record, dict):
            return Skipped(f"{self.source.path}:{line_start}", f"a record must be an object or a string, not {type(record).__name__}")
        texts, fields = self._split(record)
        if not texts:
            return None
        metadata: dict[str, Any] = dict(position)
        if fields:
            metadata["fields"] = fields
        text = normalize_newlines("\n\n".join(texts))
        return Document(self.source.path, text, self.source.kind, metadata, line_start=line_start, line_end=line_end)

    def _split(self, record: dict) -> tuple[list[str], dict[str, Any]]:
        """(text parts, other fields) of one record."""
        texts: list[str] = []
        chosen: set[str] = set()
        if self.text_fields is not None:
            self._check_fields(record)
            for name in self.text_fields:
                if name in record:
                    chosen.add(name)
                    texts.extend(_all_strings(record[name]))
        else:
            for key, value in record.items():
                found = [] if _is_id_name(str(key)) else list(_strings(value))
                if found:
                    chosen.add(key)
                    texts.extend(found)
        fields = {str(k): v for k, v in record.items() if k not in chosen and v not in (None, "", [], {}) and _small(v)}
        return texts, fields

    def _check_fields(self, record: dict) -> None:
        """A --text-fields that names no field of the first records is a mistake to report, not an empty file."""
        self.seen += 1
        self.matched = self.matched or any(name in record for name in self.text_fields)
        if not self.matched and self.seen >= _PROBE_RECORDS:
            self.fail_unmatched(record)

    def fail_unmatched(self, record: dict | None = None) -> None:
        if self.text_fields is not None and self.seen and not self.matched:
            names = ", ".join(str(k) for k in (record or {})) or "none"
            raise LoadError(
                f"no record has the --text-fields {', '.join(self.text_fields)} (fields found: {names}): "
                "name fields that the records have"
            )


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
        if len(self.held) >= _PROBE_RECORDS:
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
    records, probe = _Records(source, text_fields), _Probe("JSON Lines")
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
    records = _Records(source, text_fields)
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
