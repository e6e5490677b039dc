"""What the HTTP API and the MCP tools both do: validate, bound, run on the leased engine, shape JSON.

Every failure becomes a `ServiceError` with an HTTP status and a one-line message saying what to
do; the HTTP layer turns it into `{"error": ...}`, the MCP layer into a tool error.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from search import MODES, SearchError
from search.server.documents import DocumentError, Limits, check_readable, read_window
from search.server.engines import EngineHolder, IndexUnavailable, Slot

log = logging.getLogger("search.server")


@dataclass
class ServerLimits:
    max_query_chars: int = 500
    max_k: int = 100
    max_filter_values: int = 32  # path, tag and type values together
    max_filter_chars: int = 300  # one filter value
    max_inflight: int = 32  # requests running or queued for the engine; more get 429
    worker_threads: int = 4  # engine calls running at once (the rest wait their turn)
    max_response_bytes: int = 2 * 2**20
    cached_results: int = 256  # recent answers kept per generation (typing, mode switches and reloads repeat queries)
    max_context_lines: int = 100
    default_context_lines: int = 8
    document: Limits = field(default_factory=Limits)


class ServiceError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error_of(error: SearchError) -> ServiceError:
    """A library error as an HTTP status: the query's fault 400, the index's state 503."""
    import search

    if isinstance(error, IndexUnavailable) or isinstance(error, (search.IndexNotFound, search.IncompatibleIndex)):
        return ServiceError(503, str(error))
    return ServiceError(400, str(error))


class SearchService:
    def __init__(self, index_dir: str | os.PathLike, limits: ServerLimits | None = None, holder: EngineHolder | None = None) -> None:
        self.index_dir = os.fspath(index_dir)
        self.limits = limits or ServerLimits()
        self.holder = holder or EngineHolder(index_dir)
        self._count_lock = threading.Lock()
        self._inflight = 0
        self._limiter = None  # an anyio.CapacityLimiter, made inside the event loop
        self._cache: OrderedDict[tuple, dict] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.started = time.time()

    # ----- running on the engine --------------------------------------------------------------

    async def run(self, work: Callable[..., Any], *args: Any, encode: bool = False) -> Any:
        """work(slot, *args) in a worker thread on a leased engine, within the concurrency bounds;
        with `encode`, (its JSON, its generation), serialised in that thread too."""
        import anyio.to_thread

        with self._count_lock:
            if self._inflight >= self.limits.max_inflight:
                raise ServiceError(429, f"server busy: {self._inflight} requests are already running; retry in a moment")
            self._inflight += 1
        try:
            if self._limiter is None:
                self._limiter = anyio.CapacityLimiter(self.limits.worker_threads)
            return await anyio.to_thread.run_sync(self._leased, work, args, encode, limiter=self._limiter)
        finally:
            with self._count_lock:
                self._inflight -= 1

    def _leased(self, work: Callable[..., Any], args: tuple, encode: bool = False) -> Any:
        try:
            with self.holder.lease() as slot:
                data = work(slot, *args)
            return (self.encode(data), str(data.get("generation", ""))) if encode else data
        except ServiceError:
            raise
        except DocumentError as error:
            raise ServiceError(error.status, str(error)) from None
        except SearchError as error:
            raise _error_of(error) from None

    def run_sync(self, work: Callable[..., Any], *args: Any) -> Any:
        """The same without an event loop (tests, scripts)."""
        return self._leased(work, args)

    # ----- validation (in the event loop, before any thread is used) -------------------------

    def check_search(self, text: str | None, k: Any, mode: Any, paths: Sequence[str], tags: Sequence[str], types: Sequence[str]) -> tuple[str, int, str]:
        limits = self.limits
        if text is None or not str(text).strip():
            raise ServiceError(400, "empty query: give some words to search for (?q=...)")
        text = str(text)
        if len(text) > limits.max_query_chars:
            raise ServiceError(400, f"query of {len(text)} characters is too long: keep it under {limits.max_query_chars}")
        k = _int(k, "k", 10)
        if not 1 <= k <= limits.max_k:
            raise ServiceError(400, f"k={k} is out of range: ask for 1 to {limits.max_k} hits")
        mode = "hybrid" if mode in (None, "") else str(mode)
        if mode not in MODES:
            raise ServiceError(400, f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
        values = [*paths, *tags, *types]
        if len(values) > limits.max_filter_values:
            raise ServiceError(400, f"{len(values)} filter values: give at most {limits.max_filter_values}")
        for value in values:
            if not isinstance(value, str) or not value.strip():
                raise ServiceError(400, "an empty filter value: give a path glob, tag or type, or leave the filter out")
            if len(value) > limits.max_filter_chars:
                raise ServiceError(400, f"a filter value of {len(value)} characters: keep each under {limits.max_filter_chars}")
        return text, k, mode

    # ----- the operations (run in worker threads with a leased slot) -------------------------

    def search(self, slot: Slot, text: str, k: int, mode: str, paths: Sequence[str], tags: Sequence[str], types: Sequence[str]) -> dict:
        from search import Filters

        started = time.perf_counter()
        # the generation is part of the key: a new one never answers from an old one's results
        key = (slot.generation, text, k, mode, tuple(paths), tuple(tags), tuple(types))
        with self._cache_lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
        if data is not None:
            return {**data, "cached": True, "took_ms": round((time.perf_counter() - started) * 1000, 2)}
        filters = Filters(paths=list(paths), tags=list(tags), types=list(types)) if (paths or tags or types) else None
        result = slot.engine.search(text, k=k, mode=mode, filters=filters)
        data = result.to_dict()
        data.update(
            requested_mode=mode,
            k=k,
            highlight_terms=list(result.query.highlight_terms),
            generation=slot.generation,
            passages=slot.stats().get("passages"),
            cached=False,
            took_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        if self.limits.cached_results > 0:
            with self._cache_lock:
                self._cache[key] = data
                while len(self._cache) > self.limits.cached_results:
                    self._cache.popitem(last=False)
        return data

    def stats(self, slot: Slot) -> dict:
        return {**slot.stats(), "generation": slot.generation, "server": self.server_info()}

    def facets(self, slot: Slot) -> dict:
        return {**slot.facets(), "generation": slot.generation}

    def health(self, slot: Slot) -> dict:
        return {"status": "ok", "generation": slot.generation, "index": self.index_dir}

    def document(self, slot: Slot, path: str | None, line: Any, end: Any, context: Any) -> dict:
        """The passage at lines line..end of `path` with `context` lines around it."""
        limits = self.limits
        line = _int(line, "line", 1)
        end = _int(end, "end", line)
        context = _int(context, "context", limits.default_context_lines)
        if line < 1 or end < line:
            raise ServiceError(400, f"bad line range {line}-{end}: lines count from 1 and end is not before line")
        if not 0 <= context <= limits.max_context_lines:
            raise ServiceError(400, f"context={context}: give 0 to {limits.max_context_lines} lines")
        if end - line + 1 > limits.document.max_lines:
            raise ServiceError(400, f"lines {line}-{end} are {end - line + 1} lines: ask for at most {limits.document.max_lines} at a time")
        self._check_path(slot, path)
        start, stop = max(1, line - context), end + context
        stop = min(stop, start + limits.document.max_lines - 1)
        window = read_window(path, start, stop, limits.document)
        return {**window.to_dict(), "focus": [line, end], "generation": slot.generation}

    def get(self, slot: Slot, path: str | None, start: Any, end: Any) -> dict:
        """Lines start..end of an indexed file (the whole file, up to the line limit, by default)."""
        max_lines = self.limits.document.max_lines
        start = _int(start, "start_line", 1)
        end = _int(end, "end_line", start + max_lines - 1)
        if start < 1 or end < start:
            raise ServiceError(400, f"bad line range {start}-{end}: lines count from 1 and end_line is not before start_line")
        if end - start + 1 > max_lines:
            raise ServiceError(400, f"lines {start}-{end} are {end - start + 1} lines: ask for at most {max_lines} at a time")
        self._check_path(slot, path)
        window = read_window(path, start, end, self.limits.document)
        data = window.to_dict()
        if not window.at_end and window.last_line == end:
            data["next"] = f"more follows: ask for start_line={end + 1}"
        return data

    def _check_path(self, slot: Slot, path: str | None) -> None:
        if not isinstance(path, str) or not path:
            raise ServiceError(400, "give the path of an indexed file (?path=..., as a hit names it)")
        if len(path) > 4096:
            raise ServiceError(400, "path is too long")
        holds = os.path.isabs(path) and os.path.normpath(path) == path and slot.engine.holds(path)
        check_readable(path, holds, slot.folders())

    def encode(self, data: dict) -> bytes:
        """The JSON of an answer, refused when over the response size limit."""
        body = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        if len(body) > self.limits.max_response_bytes:
            raise ServiceError(
                400, f"the answer would be {len(body) / 2**20:.1f} MB, over the server's {self.limits.max_response_bytes / 2**20:.1f} MB "
                "limit: ask for fewer hits (a smaller k) or fewer lines"
            )
        return body

    def server_info(self) -> dict:
        return {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "generation_swaps": self.holder.swaps,
            "limits": {
                "max_query_chars": self.limits.max_query_chars,
                "max_k": self.limits.max_k,
                "max_inflight": self.limits.max_inflight,
                "max_response_bytes": self.limits.max_response_bytes,
                "max_lines": self.limits.document.max_lines,
            },
        }


def _int(value: Any, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ServiceError(400, f"{name} must be a whole number, not {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ServiceError(400, f"{name} must be a whole number, not {str(value)[:40]!r}") from None
