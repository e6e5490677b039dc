"""One long-lived Engine for the server, swapped for a new one when the index publishes a new
generation (by `search index` or `search watch` in any process).

A request leases the current engine for its duration. When a lease finds the engine stale, that
request opens and warms the new one and swaps it in; requests arriving meanwhile keep using the
old one, and the old one is closed only once the last request using it has finished.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from search import SearchError

log = logging.getLogger("search.server")

WARM_UP_QUERY = "warm up 预热"  # both languages: loads both query encoders before the swap


class IndexUnavailable(SearchError):
    """No index can be opened at the moment (none built yet, or it cannot be read)."""


@dataclass
class Slot:
    engine: Any
    generation: str
    opened_at: float = field(default_factory=time.time)
    users: int = 0
    retired: bool = False
    closed: bool = False
    _stats: dict | None = None
    _files: list[str] | None = None
    _folders: list[str] | None = None
    _facets: dict | None = None

    def stats(self) -> dict:
        if self._stats is None:  # stats() walks the generation's files for its size: once per engine
            self._stats = self.engine.stats()
        return self._stats

    def facets(self) -> dict:
        if self._facets is None:
            self._facets = self.engine.facet_values()
        return self._facets

    def files(self) -> list[str]:
        if self._files is None:
            self._files = list(self.engine.files())
        return self._files

    def folders(self) -> list[str]:
        if self._folders is None:
            from search.server.documents import held_folders

            self._folders = held_folders(self.files())
        return self._folders


class EngineHolder:
    def __init__(
        self,
        index_dir: str | os.PathLike,
        opener: Callable[[str], Any] | None = None,
        retry_seconds: float = 1.0,
        warm_up: bool = True,
    ) -> None:
        self.index_dir = os.fspath(index_dir)
        self._opener = opener
        self.retry_seconds = retry_seconds
        self.warm_up = warm_up
        self._lock = threading.Lock()  # guards _slot and the users counts
        self._open_lock = threading.Lock()  # one open at a time
        self._slot: Slot | None = None
        self._last_failure = 0.0
        self._last_error = ""
        self.swaps = 0

    # ----- leasing ------------------------------------------------------------------------

    @contextmanager
    def lease(self) -> Iterator[Slot]:
        """The current engine's slot, held open until the block ends (blocking: run it in a thread)."""
        slot = self._acquire()
        try:
            yield slot
        finally:
            self._release(slot)

    def _acquire(self) -> Slot:
        slot = self._take()
        if slot is not None and not self._stale(slot):
            return slot
        if slot is not None:
            self._release(slot)
        self._refresh(blocking=slot is None)
        slot = self._take()
        if slot is None:
            raise IndexUnavailable(self._last_error or f"no index at {self.index_dir}: run `search index PATHS --index {self.index_dir}`")
        return slot

    def _take(self) -> Slot | None:
        with self._lock:
            slot = self._slot
            if slot is not None:
                slot.users += 1
            return slot

    def _release(self, slot: Slot) -> None:
        with self._lock:
            slot.users -= 1
            close = slot.retired and slot.users == 0 and not slot.closed
            if close:
                slot.closed = True
        if close:
            self._close(slot)

    @staticmethod
    def _stale(slot: Slot) -> bool:
        try:
            return bool(slot.engine.is_stale())
        except Exception:  # an unreadable CURRENT mid-switch: keep serving the engine we have
            return False

    # ----- opening and swapping -----------------------------------------------------------------

    def _refresh(self, blocking: bool) -> None:
        """Open the index's current generation and swap it in. With an engine already serving, a
        request that finds another request opening returns at once and uses the old engine."""
        if not self._open_lock.acquire(blocking=blocking):
            return
        try:
            with self._lock:
                current = self._slot
            if current is not None and not self._stale(current):
                return  # another request swapped while we waited
            if time.monotonic() - self._last_failure < self.retry_seconds:
                return  # do not retry a failing open on every request
            try:
                engine = self._open()
                slot = Slot(engine, str(engine.stats().get("generation", "")))
                if self.warm_up:
                    self._warm(engine)
            except SearchError as error:
                self._failed(str(error))
                return
            except Exception as error:  # a half-deleted generation, an I/O error: report, keep the old one
                log.exception("could not open the index at %s", self.index_dir)
                self._failed(f"could not open the index at {self.index_dir}: {error}")
                return
            self._last_error, self._last_failure = "", 0.0
            with self._lock:
                old, self._slot = self._slot, slot
                close_old = False
                if old is not None:
                    old.retired = True
                    close_old = old.users == 0 and not old.closed
                    if close_old:
                        old.closed = True
                self.swaps += old is not None
            if close_old:
                self._close(old)
            if old is not None:
                log.info("serving generation %s of %s", slot.generation, self.index_dir)
        finally:
            self._open_lock.release()

    def _open(self) -> Any:
        if self._opener is not None:
            return self._opener(self.index_dir)
        from search import Engine

        return Engine.open(self.index_dir)

    def _warm(self, engine: Any) -> None:
        # the index's files into the page cache while requests are served (0.6 s at 100k passages)
        threading.Thread(target=self._read_ahead, args=(engine.read_ahead,), name="search-read-ahead", daemon=True).start()
        try:
            engine.search(WARM_UP_QUERY, k=1)
        except SearchError:
            pass

    @staticmethod
    def _read_ahead(read_ahead: Callable[[], int]) -> None:
        try:
            log.info("read %d bytes of the index ahead into the page cache", read_ahead())
        except Exception:  # noqa: BLE001 - a cache warmer must never take the server down
            log.exception("reading the index ahead failed")

    def _failed(self, message: str) -> None:
        self._last_failure = time.monotonic()
        self._last_error = message

    @staticmethod
    def _close(slot: Slot) -> None:
        try:
            slot.engine.close()
        except Exception:
            log.exception("closing an old engine failed")

    # ----- lifetime ------------------------------------------------------------------------------

    def start(self) -> None:
        """Open now if an index exists, so the first request does not pay for the models."""
        try:
            self._refresh(blocking=True)
        except Exception:
            pass

    def close(self) -> None:
        with self._lock:
            slot, self._slot = self._slot, None
            close = slot is not None and not slot.closed and slot.users == 0
            if slot is not None:
                slot.retired = True
                slot.closed = slot.closed or close
        if close:
            self._close(slot)

    @property
    def current_generation(self) -> str | None:
        with self._lock:
            return self._slot.generation if self._slot else None
