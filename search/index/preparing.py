"""Documents -> passages with their BM25 tokens: the CPU-heavy half of a build, run in pool workers.

Kept apart from the build so a worker imports only the chunker, the tokenizers and jieba (not FAISS
or the index code). Passages are counted with the tokenizer of the model that will embed them.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator

from search.embedding.models import space_for
from search.embedding.spec import token_counter
from search.errors import SearchError
from search.index.report import StageTimer, skip_reason
from search.schema import Document, Passage
from search.text.chunking import chunk_document
from search.text.language import detect_language
from search.text.passages import contextual_text
from search.text.tokenizing import tokenize, tokenize_many

log = logging.getLogger(__name__)

__all__ = ["POOL_AFTER", "Prepared", "chunk_counter", "pool_result", "prepare_documents", "prepared_units", "preparing_pool", "unit_batches", "warm_worker"]


@dataclass
class Prepared:
    passages: list[list[tuple[Passage, list[str]]]]  # per document, in order
    seconds: dict[str, float]
    failures: list[str | None] = field(default_factory=list)  # per document: why it could not be chunked
    notices: list[str] = field(default_factory=list)  # warnings a pool worker logged (the build logs them)


# A pool worker's warnings (a note's front matter refused, say), handed back with its results so the
# build process logs them where the CLI shows them; None outside pool workers.
_worker_notices: list[str] | None = None


class _Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if _worker_notices is not None:
            _worker_notices.append(record.getMessage())


@lru_cache(maxsize=None)
def chunk_counter(plan: tuple[tuple[str, str], ...]) -> Callable[[str], int]:
    """Counts with the tokenizer of the model that will embed the text, so no passage overflows it."""
    counters = {space: token_counter(name) for space, name in plan}
    if len(counters) == 1:
        return next(iter(counters.values()))
    spaces = dict(plan)
    return lambda text: counters[space_for(spaces, detect_language(text))](text)


def prepare_documents(documents: list[Document], plan: dict[str, str], max_tokens: int, overlap_tokens: int) -> Prepared:
    """Chunk documents into passages and tokenise each passage for BM25 (in a pool worker, or inline)."""
    seconds = {"chunk": 0.0, "tokenize": 0.0}
    count = chunk_counter(tuple(plan.items()))
    out = []
    failures: list[str | None] = []
    for document in documents:
        started = time.perf_counter()
        try:
            passages = chunk_document(document, count, max_tokens, overlap_tokens)
            middle = time.perf_counter()
            tokens = tokenize_many(contextual_text(passage) for passage in passages)
        except Exception as error:  # noqa: BLE001 - one document must not stop the build
            out.append([])
            failures.append(skip_reason(error))
            continue
        seconds["chunk"] += middle - started
        seconds["tokenize"] += time.perf_counter() - middle
        out.append(list(zip(passages, tokens)))
        failures.append(None)
    notices = []
    if _worker_notices:
        notices = _worker_notices[:]
        _worker_notices.clear()
    return Prepared(out, seconds, failures, notices)


def warm_worker(plan: dict[str, str], parent: int | None = None) -> None:
    global _worker_notices
    if parent is not None:
        _exit_with(parent)
    _worker_notices = []
    library = logging.getLogger("search")
    library.addHandler(_Keep(logging.WARNING))
    library.propagate = False
    tokenize("预热")  # loads jieba's dictionary once per worker, before the first batch
    chunk_counter(tuple(plan.items()))("warm")


def _exit_with(parent: int) -> None:
    """End this worker as soon as process `parent` (the build) is gone, however it died: a worker
    is a child of multiprocessing's fork server, not of the build, and would otherwise wait on its
    task queue for ever after a kill -9 of the build."""

    def watch() -> None:
        try:
            handle = os.pidfd_open(parent)  # readable once the process has exited; immune to pid reuse
        except (AttributeError, OSError):
            handle = None
        if handle is not None:
            select.select([handle], [], [])
        else:
            while True:
                try:
                    os.kill(parent, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
                time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-build", daemon=True).start()


UNIT_BATCH = 256  # documents (or reused passages) per task of the preparing pool
BATCH_CHARS = 1 << 20  # ... or fewer, once the batch's new text reaches this many characters
POOL_AFTER = 1 << 20  # characters of new text before a pool pays for its start-up (~1 s per worker)


def unit_batches(units: Iterable[Any]) -> Iterator[list[Any]]:
    """A build's units (new documents and the markers between them) in batches for the pool."""
    batch, chars = [], 0
    for unit in units:
        batch.append(unit)
        if isinstance(unit, Document):
            chars += len(unit.text)
        if len(batch) == UNIT_BATCH or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def preparing_pool(workers: int, plan: dict[str, str]) -> Any:
    """A process pool whose workers run `prepare_documents`."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # forkserver: workers start from a clean process, not a fork of one running torch or tokenizers threads
    context = multiprocessing.get_context("forkserver")
    # the build's pid: a worker exits when that process dies, even by kill -9 (no orphans)
    return ProcessPoolExecutor(workers, mp_context=context, initializer=warm_worker, initargs=(plan, os.getpid()))


def pool_result(work: Any) -> Prepared:
    """A worker's answer; a worker that died becomes one line that says what usually kills one."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        return work.result()
    except BrokenProcessPool:
        raise SearchError("a worker process of the build stopped (killed for memory, or a script that builds "
                          "without `if __name__ == \"__main__\":`, which Python's workers run again); "
                          "the index was not changed, run the build again") from None


def prepared_units(units: Iterable[Any], plan: dict[str, str], max_tokens: int, overlap_tokens: int, timer: StageTimer,
                   unchunkable: Callable[[str, str], None]) -> Iterator[Any]:
    """A build's `units` with every new document replaced by its passages, their tokens and whether each
    begins it, in order; the other units (the build's markers) pass through. `timer` is
    told the time spent producing the units as "load", and the workers' stages; `unchunkable(path, why)`
    hears of a document that could not be chunked.

    Chunking (which counts model tokens) and jieba cost ~3 CPU-s per MB of text; once there is
    enough new text, a process pool of os.cpu_count() workers does both while the build reads
    files and writes the index.
    """
    workers = os.cpu_count() or 1
    pool, pending, fresh = None, deque(), 0
    try:
        for batch in unit_batches(_timed(units, timer)):
            documents = [unit for unit in batch if isinstance(unit, Document)]
            fresh += sum(len(document.text) for document in documents)
            if pool is None and workers > 1 and fresh > POOL_AFTER:
                pool = preparing_pool(workers, plan)
            if pool is not None:
                work = pool.submit(prepare_documents, documents, plan, max_tokens, overlap_tokens)
            else:
                work = prepare_documents(documents, plan, max_tokens, overlap_tokens)
            pending.append((batch, work))
            while len(pending) > (2 * workers if pool is not None else 0):  # bounded work in flight
                yield from _merged(*pending.popleft(), timer, unchunkable)
        while pending:
            yield from _merged(*pending.popleft(), timer, unchunkable)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _timed(units: Iterable[Any], timer: StageTimer) -> Iterator[Any]:
    """`units`, with the time spent producing them (hashing, reading, decoding, parsing) as "load"."""
    iterator = iter(units)
    while True:
        with timer("load"):
            unit = next(iterator, None)
        if unit is None:
            return
        yield unit


def _merged(batch: list[Any], work: Any, timer: StageTimer, unchunkable: Callable[[str, str], None]) -> Iterator[Any]:
    if not isinstance(work, Prepared):
        with timer("wait_pool"):  # time the build waited for the workers
            work = pool_result(work)
    for stage, seconds in work.seconds.items():  # summed over workers, as for the other stages
        timer.add(stage, seconds)
    for notice in work.notices:
        log.warning("%s", notice)
    prepared = iter(work.passages)
    failures = iter(work.failures)
    for unit in batch:
        if isinstance(unit, Document):
            failure = next(failures)
            if failure is not None:  # the document could not be chunked: its file is skipped
                unchunkable(unit.path, failure)
            yield from ((passage, tokens, number == 0) for number, (passage, tokens) in enumerate(next(prepared)))
        else:
            yield unit
