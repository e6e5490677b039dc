"""One build of an index folder: files -> passages and tokens -> vectors, BM25 and facets -> a new
generation, switched in atomically.

Builds are incremental: unchanged files keep their passages and tokens, and any passage whose text
and encoder are unchanged keeps its vector (search.index.vectors).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from search.embedding.models import model_plan
from search.errors import IndexDamaged, IndexNotFound, SearchError
from search.index.backends import Mirror
from search.index.bm25 import BM25Index, BM25Params
from search.index.facets import write_facets
from search.index.folder import FORMAT_VERSION, PASSAGE_FILES, Generation, IndexFolder, check_compatible
from search.index.integrity import described, problems, seal
from search.index.passage_store import PassageStore, PassageWriter, TokenStore, iter_tokens
from search.index.preparing import Prepared, prepare_documents, warm_worker
from search.index.report import BuildSummary, Progress, StageTimer, skip_reason
from search.index.vectors import PreviousVectors, VectorWriter
from search.ingest.loading import LoadOptions, discover_files, iter_documents
from search.schema import Document, Passage, Skipped, SourceFile
from search.text.passages import TEXT_VERSION

__all__ = ["BuildConfig", "Builder", "file_hash"]

log = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    max_tokens: int = 200
    overlap_tokens: int = 40
    bm25: BM25Params = field(default_factory=BM25Params)
    load: LoadOptions = field(default_factory=LoadOptions)
    # BM25 only, no embeddings (embedding 1 GB of text on a laptop CPU takes about a day).
    # None: as the existing index was built (a new index embeds).
    keyword_only: bool | None = None
    # The folders given are the boundary: links in them to files outside are skipped unless this is set.
    follow_symlinks: bool = False


def file_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Builder:
    """One build of an index folder; call `run(paths)` under the folder's build lock.

    A build streams: passages go to the new generation's files as they are produced (PassageWriter),
    documents are chunked and tokenised by a process pool in order (search.passages), vectors are embedded in bounded batches into an on-disk array
    per space (search.index.vectors), and BM25 is built in segments from tokens.jsonl. What stays in memory per
    passage is a few integers, so a 1 GB file indexes in bounded memory.
    """

    def __init__(self, folder: IndexFolder, model: str | None, rebuild: bool, config: BuildConfig, progress: Progress | None = None,
                 vectors_from: IndexFolder | None = None, mirror: Mirror | None = None) -> None:
        self.folder, self.mirror = folder, mirror  # mirror: search.index.backends
        self.progress = progress
        self.config = config
        self.trust_passages, self.untrusted_spaces = True, set()
        self.previous, old = (None, None) if rebuild else self._previous(model)
        self.failed: set[str] = set()  # paths of files a pool worker could not chunk
        # another index lends its vectors to a new one (a vector is reused only for the same model,
        # encoder and text): an evaluation index rebuilt after a tokenizer change re-embeds nothing
        self.lender = self._lender(vectors_from) if self.previous is None and vectors_from is not None else None
        if old is not None and old["models"]:
            self.plan = {space: info["name"] for space, info in old["models"].items()}
        else:
            self.plan = model_plan(model)
        self.old_manifest = old
        # None keeps what the index was built with; a new index embeds unless told otherwise
        keyword_only = config.keyword_only
        if keyword_only is None and old is None and not rebuild:
            keyword_only = self._left_keyword_only()
        self.keyword_only = bool(old and old.get("keyword_only")) if keyword_only is None else keyword_only
        self.timer = StageTimer()

    def _previous(self, model: str | None) -> tuple[Generation | None, dict | None]:
        """The live generation to update and its manifest, after hashing the files a build reuses
        (passages, tokens, vectors): what does not match is built anew, never reused. (None, None)
        when there is no usable generation (missing, garbage CURRENT, damaged manifest)."""
        try:
            generation = self.folder.current()
            manifest = generation.read_manifest()
        except IndexNotFound:
            return None, None
        except IndexDamaged as error:
            log.warning("index at %s is damaged (%s): building it anew", self.folder.root, error)
            return None, None
        check_compatible(manifest, model, self.folder.root)
        listed = manifest.get("checksums") or {}
        reused = [name for name in listed if name in PASSAGE_FILES or name.startswith("dense-")]
        bad = problems(generation, manifest, full=True, names=reused)
        if "manifest.json" in bad:
            log.warning("index at %s has no checksums: building it anew", self.folder.root)
            return None, None
        if bad:
            self.trust_passages = not any(name in bad for name in PASSAGE_FILES)
            self.untrusted_spaces = {space for space in manifest["models"] if generation.space_files(space, bad)}
            redo = ([] if self.trust_passages else ["re-reading every file"]) + [f"re-embedding {space}" for space in sorted(self.untrusted_spaces)]
            log.warning("index at %s is damaged (%s): %s", self.folder.root, "; ".join(described(bad)), ", ".join(redo))
        return generation, manifest

    @staticmethod
    def _lender(folder: IndexFolder) -> Generation | None:
        """The live generation of another index whose vectors pass their checksums, else None."""
        try:
            generation = folder.current()
            manifest = generation.read_manifest()
        except SearchError:
            return None
        if manifest.get("format_version") != FORMAT_VERSION:
            return None
        dense = [name for name in manifest.get("checksums") or {} if name.startswith("dense-")]
        return None if problems(generation, manifest, full=True, names=dense) else generation

    def _left_keyword_only(self) -> bool | None:
        """Whether what is left of an index that cannot be trusted (damaged manifest, garbage
        CURRENT) was keyword-only: recovering a big keyword-only index must not start embedding it."""
        # a generation that got as far as BM25 (written after the vectors) or its manifest tells
        generations = [generation for generation in self.folder.generations()
                       if generation.manifest_file.exists() or generation.bm25_folder.exists()]
        if not generations:  # none, or only the leftovers of builds killed early
            return None
        try:
            return not any(generation.has_vectors() for generation in generations)
        except OSError:
            return None

    def _report(self, stage: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    def run(self, paths: Sequence[str | os.PathLike]) -> BuildSummary:
        started = time.perf_counter()
        summary = BuildSummary()
        sources, summary.skipped = discover_files(paths, self.config.follow_symlinks, exclude=[self.folder.root])
        return self._write(self._collect_units(sources, summary), summary, started)

    def run_documents(self, documents: Iterable[Document]) -> BuildSummary:
        """Index documents that are not files of their own (records of a collection, say)."""
        started = time.perf_counter()
        summary = BuildSummary()

        def units() -> Iterator[Document]:
            for document in documents:
                summary.files_added += 1
                yield document

        return self._write(units(), summary, started)

    def _write(self, units: Iterable["_Unit"], summary: BuildSummary, started: float) -> BuildSummary:
        """Stream passages into a new generation, build its indexes and switch it in.

        `units` are new documents (chunked and tokenised here), reused passages with their tokens, and
        a _FileDone after each source file's others, which records the file and its passage range.
        """
        self.folder.remove_stale()  # leftovers of aborted builds (the live generation stays)
        self.summary, self.vectors = summary, None
        generation = self.folder.new_generation()
        try:
            return self._write_generation(generation, units, summary, started)
        except BaseException as error:
            # a full disk, say: give the space back now; the live generation is untouched
            if self.vectors is not None:
                self.vectors.abort()
            shutil.rmtree(generation.path, ignore_errors=True)
            if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SearchError(f"no space left for the index at {self.folder.root} ({error.strerror}): it was not "
                                  "updated (queries still see the previous one); free some space and run `search index` again") from error
            raise

    def _write_generation(self, generation: Generation, units: Iterable["_Unit"], summary: BuildSummary, started: float) -> BuildSummary:
        timer = self.timer
        vectors = self.vectors = None if self.keyword_only else VectorWriter(generation, self.plan, self._previous_vectors(), summary, timer)
        files: dict[str, Any] = {}
        with PassageWriter(generation) as writer:
            first = 0
            for item in self._prepared(units):
                if isinstance(item, _FileDone):
                    if item.path in self.failed:  # read again next build
                        item.entry["sha256"] = ""
                    files[item.path] = {**item.entry, "first": first, "count": len(writer) - first}
                    first = len(writer)
                    continue
                passage, tokens = item
                with timer("write"):
                    pid = writer.add(passage, tokens)
                if vectors is not None:
                    vectors.add(pid, passage)
                self._report("indexing", 1, None)
            summary.passages = len(writer)
        with timer("write"):
            write_facets(generation, PassageStore(generation))
        models = vectors.finish() if vectors is not None else {}
        with timer("bm25"):
            BM25Index.build_streaming(lambda: iter_tokens(generation), generation.bm25_folder, self.config.bm25,
                                      on_passages=lambda done: self._report("bm25", done, summary.passages))
        manifest = self._manifest(files, models, summary)
        if self.mirror is not None:  # another backend searches: copy the generation into it first
            with timer("backend"):
                manifest["backend"] = self.mirror(generation, manifest, self.progress)
        with timer("write"):
            summary.seconds = round(time.perf_counter() - started, 3)
            summary.stage_seconds = timer.rounded()
            manifest["checksums"] = seal(generation)  # the manifest is written last, over all the others
            generation.write_manifest(manifest)
            self.folder.publish(generation)
        return summary

    # files -> units: new documents, or the previous generation's passages and tokens for unchanged files
    def _collect_units(self, sources: list[SourceFile], summary: BuildSummary) -> Iterator["_Unit"]:
        old_files = self.old_manifest["files"] if self.old_manifest else {}
        trusted = self.previous is not None and self.trust_passages
        old_passages = PassageStore(self.previous) if trusted else None
        old_tokens = TokenStore(self.previous) if trusted else None
        # options an older index did not record had their defaults then
        if not trusted or self.old_manifest.get("text_version", 1) != TEXT_VERSION or \
                {**asdict(LoadOptions()), **self.old_manifest["loading"]} != asdict(self.config.load):
            # other load options or text rules, or passages that cannot be trusted: every file is read
            # again (as changed); vectors are still reused by text
            old_files = {path: {**info, "size": -1, "sha256": ""} for path, info in old_files.items()}
        recorded = set()
        for source in sources:
            old = old_files.get(source.path)
            try:
                same_stat = old is not None and old["size"] == source.size and old["mtime"] == source.mtime
                digest = old["sha256"] if same_stat else file_hash(source.path)
            except OSError as error:  # hashing an unreadable file
                summary.skipped.append(Skipped(source.path, skip_reason(error)))
                continue
            units = 0
            if old is not None and old["sha256"] and old["sha256"] == digest:  # "": read again
                summary.files_unchanged += 1
                for pid in range(old["first"], old["first"] + old["count"]):
                    yield old_passages.get(pid), old_tokens.get(pid)
                    units += 1
            else:
                try:
                    for document in iter_documents(source, self.config.load):
                        if isinstance(document, Skipped):  # one bad record of a collection file
                            summary.skipped.append(document)
                            continue
                        yield document
                        units += 1
                except Exception as error:  # noqa: BLE001 - whatever one file does, the build goes on
                    summary.skipped.append(Skipped(source.path, skip_reason(error)))
                    if units == 0:
                        continue
                    digest = ""  # failed part-way: keep what was read, and read the file again next build
                if old is None:
                    summary.files_added += 1
                else:
                    summary.files_changed += 1
            recorded.add(source.path)
            yield _FileDone(source.path, {"size": source.size, "mtime": source.mtime, "sha256": digest})
        summary.files_removed = len(set(old_files) - recorded)

    def _prepared(self, units: Iterable["_Unit"]) -> Iterator["tuple[Passage, list[str]] | _FileDone"]:
        """`units` with every new document replaced by its passages and their tokens, in order.

        Chunking (which counts model tokens) and jieba cost ~3 CPU-s per MB of text; once there is
        enough new text, a process pool of os.cpu_count() workers does both while this process reads
        files and writes the index.
        """
        workers = os.cpu_count() or 1
        pool, pending, fresh = None, deque(), 0
        read = self._timed_units(units)
        try:
            for batch in _unit_batches(read):
                documents = [unit for unit in batch if isinstance(unit, Document)]
                fresh += sum(len(document.text) for document in documents)
                if pool is None and workers > 1 and fresh > POOL_AFTER:
                    pool = _preparing_pool(workers, self.plan)
                if pool is not None:
                    work = pool.submit(prepare_documents, documents, self.plan, self.config.max_tokens, self.config.overlap_tokens)
                else:
                    work = prepare_documents(documents, self.plan, self.config.max_tokens, self.config.overlap_tokens)
                pending.append((batch, work))
                while len(pending) > (2 * workers if pool is not None else 0):  # bounded work in flight
                    yield from self._merge_prepared(*pending.popleft())
            while pending:
                yield from self._merge_prepared(*pending.popleft())
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def _timed_units(self, units: Iterable["_Unit"]) -> Iterator["_Unit"]:
        """`units`, with the time spent producing them (hashing, reading, decoding, parsing) as "load"."""
        iterator = iter(units)
        while True:
            with self.timer("load"):
                unit = next(iterator, None)
            if unit is None:
                return
            yield unit

    def _merge_prepared(self, batch: list["_Unit"], work: Any) -> Iterator["tuple[Passage, list[str]] | _FileDone"]:
        if not isinstance(work, Prepared):
            with self.timer("wait_pool"):  # time this process waited for the workers
                work = work.result()
        for stage, seconds in work.seconds.items():  # summed over workers, as for the other stages
            self.timer.add(stage, seconds)
        for notice in work.notices:
            log.warning("%s", notice)
        prepared = iter(work.passages)
        failures = iter(work.failures)
        for unit in batch:
            if isinstance(unit, Document):
                failure = next(failures)
                if failure is not None:  # the document could not be chunked: its file is skipped
                    self.failed.add(unit.path)
                    self.summary.skipped.append(Skipped(unit.path, failure))
                yield from next(prepared)
            else:
                yield unit

    def _previous_vectors(self) -> PreviousVectors | None:
        if self.lender is not None:
            return PreviousVectors(self.lender, self.lender.read_manifest())
        if not self.previous or not self.old_manifest["models"]:
            return None
        return PreviousVectors(self.previous, self.old_manifest, skip=self.untrusted_spaces)

    def _manifest(self, files: dict[str, Any], models: dict[str, dict], summary: BuildSummary) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "models": models,
            "keyword_only": self.keyword_only,
            "bm25": self.config.bm25.to_dict(),
            "text_version": TEXT_VERSION,
            "chunking": {"max_tokens": self.config.max_tokens, "overlap_tokens": self.config.overlap_tokens},
            "loading": asdict(self.config.load),
            "files": files,
            "passages": summary.passages,
        }


UNIT_BATCH = 256  # documents (or reused passages) per task of the preparing pool
BATCH_CHARS = 1 << 20  # ... or fewer, once the batch's new text reaches this many characters
POOL_AFTER = 1 << 20  # characters of new text before a pool pays for its start-up (~1 s per worker)


@dataclass
class _FileDone:
    """Marks the end of a source file's units: the writer records the file with its passage range."""

    path: str
    entry: dict[str, Any]  # size, mtime, sha256


_Unit = Any  # Document (new) | tuple[Passage, list[str]] (reused) | _FileDone


def _unit_batches(units: Iterable[_Unit]) -> Iterator[list[_Unit]]:
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


def _preparing_pool(workers: int, plan: dict[str, str]):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # forkserver: workers start from a clean process, not a fork of one running torch or tokenizers threads
    context = multiprocessing.get_context("forkserver")
    # the build's pid: a worker exits when that process dies, even by kill -9 (no orphans)
    return ProcessPoolExecutor(workers, mp_context=context, initializer=warm_worker, initargs=(plan, os.getpid()))
