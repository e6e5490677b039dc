"""A generation's passages and their BM25 tokens: JSON lines written as a build streams, read back by id."""

from __future__ import annotations

import json
import os
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from search.index.file_io import copy_range
from search.index.folder import Generation
from search.schema import Passage
from search.text.passages import text_key_digest

__all__ = ["KEY_BYTES", "LineBlock", "LineSpan", "PassageStore", "PassageWriter", "TokenStore", "iter_tokens", "read_tokens"]

KEY_BYTES = 16  # a passage's text key (search.text.passages.text_key_digest)


class PassageWriter:
    """Writes a generation's passages and their BM25 tokens as they are produced, so a build never holds
    them all; `close()` saves the offsets that give random access to both files."""

    def __init__(self, generation: Generation) -> None:
        self.generation = generation
        self._passages = open(generation.passages_file, "wb")
        self._tokens = open(generation.tokens_file, "wb")
        # 8 bytes per passage and file, and its 16-byte text key: the only per-passage state a build keeps
        # in memory here
        self._offsets, self._token_offsets = array("q"), array("q")
        self._keys = bytearray()
        self._end = self._token_end = 0

    def add(self, passage: Passage, tokens: list[str]) -> int:
        """Append one passage and its tokens; returns its passage id."""
        passage_line = json.dumps(passage.to_dict(), ensure_ascii=False).encode("utf-8") + b"\n"
        token_line = json.dumps(tokens, ensure_ascii=False).encode("utf-8") + b"\n"
        self._offsets.append(self._end)
        self._token_offsets.append(self._token_end)
        self._keys += text_key_digest(passage.text)
        self._passages.write(passage_line)
        self._tokens.write(token_line)
        self._end += len(passage_line)
        self._token_end += len(token_line)
        return len(self._offsets) - 1

    def add_block(self, passages: "LineSpan", tokens: "LineSpan", keys: bytes) -> int:
        """Append a run of passages with their tokens and text keys, copied as bytes from an earlier
        generation (an unchanged file's); returns the first one's passage id."""
        first = len(self._offsets)
        if len(keys) != KEY_BYTES * len(passages.starts):
            raise ValueError(f"{len(keys)} bytes of text keys for {len(passages.starts)} passages")
        self._offsets.extend((passages.starts + self._end).tolist())
        self._token_offsets.extend((tokens.starts + self._token_end).tolist())
        self._keys += keys
        _append(passages, self._passages)
        _append(tokens, self._tokens)
        self._end += passages.end - passages.start
        self._token_end += tokens.end - tokens.start
        return first

    def __len__(self) -> int:
        return len(self._offsets)

    def close(self) -> None:
        try:
            self._passages.close()
        finally:
            self._tokens.close()  # even when flushing the other failed (a full disk): no handle left open
        np.save(self.generation.passage_offsets_file, np.frombuffer(self._offsets, dtype=np.int64))
        np.save(self.generation.token_offsets_file, np.frombuffer(self._token_offsets, dtype=np.int64))
        np.save(self.generation.text_keys_file, np.frombuffer(self._keys, dtype=np.uint8).reshape(-1, KEY_BYTES))

    def __enter__(self) -> "PassageWriter":
        return self

    def __exit__(self, error_type: Any, *exc: Any) -> None:
        if error_type is None:
            self.close()
            return
        for handle in (self._passages, self._tokens):  # a failed build: just let go of the files
            try:
                handle.close()
            except OSError:
                pass


def iter_tokens(generation: Generation) -> Iterator[list[str]]:
    """The BM25 tokens of each passage in order, streamed from disk."""
    with open(generation.tokens_file, encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def read_tokens(generation: Generation) -> list[list[str]]:
    return list(iter_tokens(generation))


@dataclass(frozen=True)
class LineBlock:
    """Consecutive lines of a JSON-lines file as bytes, with where each line starts in them."""

    data: bytes
    starts: np.ndarray


@dataclass(frozen=True)
class LineSpan:
    """Consecutive lines of a JSON-lines file left unread: the open file, their bytes [start, end) in it,
    and where each line starts, counted from `start`."""

    fd: int
    start: int
    end: int
    starts: np.ndarray


def _append(span: LineSpan, target: Any) -> None:
    """Append the span's bytes to `target`, a buffered file written in order, without reading them into
    Python (`copy_range`)."""
    target.flush()
    copy_range(span.fd, target.fileno(), span.start, span.end)
    target.seek(0, os.SEEK_END)  # the descriptor moved under the buffered file


class _Lines:
    """Line i of a JSON-lines file, found through its saved offsets and read with pread (no shared file
    position, so threads read concurrently). The file stays open, so a long-lived reader keeps working
    after a later build deletes its generation."""

    def __init__(self, path: Path, offsets_file: Path) -> None:
        self.path = path
        # plain arrays over the mapped files, here and below: a numpy.memmap pays Python-level bookkeeping
        # on every item read, and a query reads a few dozen (0.1 ms)
        self.offsets = np.asarray(np.load(offsets_file, mmap_mode="r"))
        self._handle = open(path, "rb")
        self._end = os.fstat(self._handle.fileno()).st_size

    def __len__(self) -> int:
        return len(self.offsets)

    def _bounds(self, first: int, count: int) -> tuple[int, int]:
        end = first + count
        return int(self.offsets[first]), int(self.offsets[end]) if end < len(self.offsets) else self._end

    def raw(self, i: int) -> bytes:
        start, end = self._bounds(i, 1)
        return os.pread(self._handle.fileno(), end - start, start)

    def block(self, first: int, count: int) -> "LineBlock":
        """Lines [first, first + count) in one read."""
        span = self.span(first, count)
        return LineBlock(os.pread(span.fd, span.end - span.start, span.start) if count else b"", span.starts)

    def span(self, first: int, count: int) -> LineSpan:
        """Lines [first, first + count), located but not read."""
        if count == 0:
            return LineSpan(self._handle.fileno(), 0, 0, np.zeros(0, dtype=np.int64))
        start, end = self._bounds(first, count)
        return LineSpan(self._handle.fileno(), start, end, np.asarray(self.offsets[first : first + count], dtype=np.int64) - start)

    def close(self) -> None:
        self._handle.close()


class TokenStore:
    """Random access to the BM25 tokens of a generation's passages (an incremental build reuses them)."""

    def __init__(self, generation: Generation) -> None:
        self._lines = _Lines(generation.tokens_file, generation.token_offsets_file)

    def get(self, passage_id: int) -> list[str]:
        return json.loads(self._lines.raw(passage_id))

    def span(self, first: int, count: int) -> LineSpan:
        return self._lines.span(first, count)


class PassageStore:
    """Random access to the passages of a generation without loading them all."""

    def __init__(self, generation: Generation) -> None:
        self.path = generation.passages_file
        self._lines = _Lines(generation.passages_file, generation.passage_offsets_file)
        # each passage's text key as one 16-byte row; None for a generation written before they were
        self.text_keys = np.asarray(np.load(generation.text_keys_file, mmap_mode="r")) if generation.text_keys_file.is_file() else None

    def __len__(self) -> int:
        return len(self._lines)

    def get_raw(self, passage_id: int) -> bytes:
        """The passage's JSONL line, newline included."""
        return self._lines.raw(passage_id)

    def get(self, passage_id: int) -> Passage:
        return Passage(**json.loads(self.get_raw(passage_id)))

    def block(self, first: int, count: int) -> LineBlock:
        return self._lines.block(first, count)

    def span(self, first: int, count: int) -> LineSpan:
        return self._lines.span(first, count)

    def text_key(self, passage_id: int) -> bytes:
        """The passage's text key (search.text.passages.text_key_digest): saved by the build, or worked
        out from its text in a generation written before keys were kept."""
        if self.text_keys is not None:
            return self.text_keys[passage_id].tobytes()
        return text_key_digest(self.get(passage_id).text)

    def text_keys_of(self, first: int, count: int) -> bytes:
        """The text keys of passages [first, first + count) as bytes; worked out from their text in a
        generation written before keys were kept."""
        if self.text_keys is not None:
            return np.ascontiguousarray(self.text_keys[first : first + count]).tobytes()
        block = self.block(first, count)
        ends = [*block.starts.tolist()[1:], len(block.data)]
        return b"".join(text_key_digest(json.loads(block.data[start:end])["text"]) for start, end in zip(block.starts.tolist(), ends))

    def get_many(self, passage_ids: Iterable[int]) -> list[Passage]:
        return [self.get(passage_id) for passage_id in passage_ids]

    def __iter__(self) -> Iterator[Passage]:
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                yield Passage(**json.loads(line))

    def close(self) -> None:
        self._lines.close()
