"""One build of an index folder: files -> passages and tokens -> vectors, BM25 and facets -> a new
generation, switched in atomically.

Builds are incremental: unchanged files keep their passages and tokens, and any passage whose text
and encoder are unchanged keeps its vector (search.index.vectors).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from itertools import chain
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from search.embedding.encoder import Encoder
from search.embedding.models import model_plan
from search.errors import IndexDamaged, IndexNotFound, SearchError
from search.index.backends import Mirror
from search.index.bm25 import BM25Index, BM25Params
from search.index.bm25_terms import TERM_FILES, TermStream, TermWriter
from search.index.carry import Carrier, Run, joined
from search.index.facets import FacetWriter
from search.index.folder import FORMAT_VERSION, PASSAGE_FILES, Generation, IndexFolder, check_compatible
from search.index.integrity import described, file_digest, problems, seal
from search.index.passage_store import PassageWriter
from search.index.preparing import prepared_units
from search.index.report import BuildSummary, Progress, StageTimer, skip_reason
from search.index.vectors import PreviousVectors, VectorWriter
from search.ingest.loading import LoadOptions, discover_files, iter_documents
from search.schema import Document, Passage, Skipped, SourceFile
from search.text.passages import TEXT_VERSION

__all__ = ["BuildConfig", "Builder"]

log = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    max_tokens: int = 200
    overlap_tokens: int = 40
    bm25: BM25Params = field(default_factory=BM25Params)
    load: LoadOptions = field(default_factory=LoadOptions)
    # BM25 only, no embeddings (embedding 1 GB of text on a laptop CPU takes about a day); None: as the index was (a new one embeds)
    keyword_only: bool | None = None
    # The folders given are the boundary: links in them to files outside are skipped unless this is set.
    follow_symlinks: bool = False


class Builder:
    """One build of an index folder; call `run(paths)` under the folder's build lock.

    A build streams: passages go to the new generation's files as they are produced (PassageWriter),
    documents are chunked and tokenised by a process pool in order (search.index.preparing), vectors are
    embedded in bounded batches into an on-disk array per space (search.index.vectors), and BM25 is built
    in segments from the term ids written meanwhile (search.index.bm25_terms); unchanged files are carried
    over (search.index.carry). What stays in memory per passage is a few integers.
    """

    def __init__(self, folder: IndexFolder, model: str | None, rebuild: bool, config: BuildConfig, progress: Progress | None = None,
                 vectors_from: IndexFolder | None = None, mirror: Mirror | None = None) -> None:
        self.folder, self.mirror = folder, mirror  # mirror: search.index.backends
        self.progress = progress
        self.config = config
        self.trust_passages, self.untrusted_spaces, self.trust_terms = True, set(), True
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
            keyword_only = self.folder.left_keyword_only()
        self.keyword_only = bool(old and old.get("keyword_only")) if keyword_only is None else keyword_only
        self.timer = StageTimer()

    def _previous(self, model: str | None) -> tuple[Generation | None, dict | None]:
        """The live generation to update and its manifest, after hashing the files a build reuses (passages, tokens,
        vectors): what does not match is built anew, never reused. (None, None) when there is none usable."""
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
        term_files = [generation.relative(generation.bm25_folder / name) for name in TERM_FILES]
        self.verified = reused = [name for name in listed if name in PASSAGE_FILES or name.startswith("dense-") or name in term_files]
        bad = problems(generation, manifest, full=True, names=reused)
        if "manifest.json" in bad:
            log.warning("index at %s has no checksums: building it anew", self.folder.root)
            return None, None
        self.trust_terms = not any(name in bad for name in term_files)  # else BM25's term ids come from the tokens
        if bad:
            self.trust_passages = not any(name in bad for name in PASSAGE_FILES)
            self.untrusted_spaces = {space for space in manifest["models"] if generation.space_files(space, bad)}
            redo = ([] if self.trust_passages else ["re-reading every file"]) + [f"re-embedding {space}" for space in sorted(self.untrusted_spaces)]
            log.warning("index at %s is damaged (%s): %s", self.folder.root, "; ".join(described(bad)), ", ".join(redo))
        if self.trust_passages and not generation.document_starts_file.is_file():  # written before BM25's window field
            log.info("index at %s was built before documents were recorded: reading every file once more (no re-embedding)", self.folder.root)
            self.trust_passages = False
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

    def _report(self, stage: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    def run(self, paths: Sequence[str | os.PathLike]) -> BuildSummary:
        started = time.perf_counter()
        summary = BuildSummary()
        sources, summary.skipped = discover_files(paths, self.config.follow_symlinks, exclude=[self.folder.root])
        if self._files_as_recorded(sources) and self._live_as_built():  # no new generation: a build from cron costs a stat per file
            summary.files_unchanged, summary.passages = len(sources), self.old_manifest["passages"]
            summary.passages_reused = 0 if self.keyword_only else summary.passages  # every vector kept
            summary.seconds = round(time.perf_counter() - started, 3)
            return summary
        with self.timer("load"):
            carried, rest = _leading_runs(joined(self._collect_units(sources, summary)))
        if rest is None and self._whole(carried, summary) and self._live_as_built():
            return self._relinked(carried[0], summary, started)
        return self._write(chain(carried, rest or ()), summary, started)

    def _files_as_recorded(self, sources: list[SourceFile]) -> bool:
        """Whether every file is as the live generation recorded it (path, size, mtime)."""
        if self.old_manifest is None:
            return False
        files = self.old_manifest["files"]
        return len(files) == len(sources) and all(
            (info := files.get(source.path)) is not None and info["sha256"] and (info["size"], info["mtime"]) == (source.size, source.mtime)
            for source in sources)

    def _live_as_built(self) -> bool:
        """Whether the live generation is what this build would make of the same files: all of it trusted,
        built with these settings and encoders, no backend to update."""
        old = self.old_manifest
        if old is None or self.mirror is not None or "backend" in old or not (self.trust_passages and self.trust_terms) or self.untrusted_spaces:
            return False  # ("backend": published for another backend than the embedded one wanted now)
        if _recorded_settings(old) != self._settings():
            return False
        # the same export recipes, and every file whole (hashed: `search index` still repairs any damage)
        return all(Encoder(info["name"]).identity == info["identity"] for info in old["models"].values()) and \
            not problems(self.previous, old, full=True, names=[name for name in old["checksums"] if name not in self.verified]) and \
            BM25Index.readable(self.previous.bm25_folder)  # (the files a build reuses were hashed as it began: not twice)

    def _whole(self, carried: list[Run], summary: BuildSummary) -> bool:
        """Whether `carried` is the live generation's every file and passage, in its order: files touched
        (a checkout, a sync, an editor's save) but with the content the generation holds."""
        old = self.old_manifest
        return old is not None and len(carried) == 1 and (carried[0].first, carried[0].count) == (0, old["passages"]) and \
            len(carried[0].files) == len(old["files"]) and not (summary.files_added or summary.files_changed or summary.files_removed)

    def _relinked(self, run: Run, summary: BuildSummary, started: float) -> BuildSummary:
        """A new generation that is the live one with its files' new times: every file hard-linked (nothing
        copied, scored or sealed again), only the manifest written. Before, a touched file cost a whole
        build (2.6 s at 100k passages, where an unchanged folder takes 0.7 s)."""

        def relink(generation: Generation) -> BuildSummary:
            generation.link_files_of(self.previous)
            files, first = {}, 0
            for path, entry, count in run.files:
                files[path], first = {**entry, "first": first, "count": count}, first + count
            summary.passages = self.old_manifest["passages"]
            summary.passages_reused = 0 if self.keyword_only else summary.passages
            return self._publish(generation, self._manifest(files, self.old_manifest["models"], summary), summary, started)

        return self._in_new_generation(relink, summary)

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
        """Stream passages into a new generation, build its indexes and switch it in. `units` are new documents
        (chunked and tokenised here), reused passages with their tokens, and a _FileDone after each source
        file's others, which records the file and its passage range."""
        return self._in_new_generation(lambda generation: self._write_generation(generation, units, summary, started), summary)

    def _in_new_generation(self, fill: Callable[[Generation], BuildSummary], summary: BuildSummary) -> BuildSummary:
        """What `fill` writes into a new generation and publishes; on any failure the generation is removed
        (the live one stays) and a full disk is one line that says what to do."""
        self.folder.remove_stale()  # leftovers of aborted builds (the live generation stays)
        self.summary, self.vectors, self.terms = summary, None, None
        generation = self.folder.new_generation()
        try:
            return fill(generation)
        except BaseException as error:
            # a full disk, say: give the space back now; the live generation is untouched
            if self.vectors is not None:
                self.vectors.abort()
            if self.terms is not None:
                self.terms.abort()
            shutil.rmtree(generation.path, ignore_errors=True)
            if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SearchError(f"no space left for the index at {self.folder.root} ({error.strerror}): it was not "
                                  "updated (queries still see the previous one); free some space and run `search index` again") from error
            raise

    def _write_generation(self, generation: Generation, units: Iterable["_Unit"], summary: BuildSummary, started: float) -> BuildSummary:
        timer = self.timer
        # a backend that searches elsewhere (Qdrant) needs no FAISS or BM25 files: only the vectors, which
        # incremental builds reuse and the mirror sends, and the passages and tokens hits are read from
        searchable = self.mirror is None
        vectors = self.vectors = None if self.keyword_only else VectorWriter(generation, self.plan, self._previous_vectors(), summary, timer,
                                                                              searchable)
        previous_terms = TermStream.open(self.previous.bm25_folder) if self.previous is not None and self.trust_terms else None
        terms = self.terms = TermWriter(generation.bm25_folder, previous_terms)
        files: dict[str, Any] = {}
        with PassageWriter(generation) as writer:
            facets = FacetWriter()
            carrier = Carrier(self.previous, writer, vectors, terms, facets, timer) if self.previous is not None and self.trust_passages else None
            first = 0
            for item in prepared_units(units, self.plan, self.config.max_tokens, self.config.overlap_tokens, self.timer, self._unchunkable):
                if isinstance(item, Run):
                    carrier.add(item.first, item.count)
                    for path, entry, count in item.files:
                        files[path], first = {**entry, "first": first, "count": count}, first + count
                    self._report("indexing", item.count, None)
                    continue
                if isinstance(item, _FileDone):
                    if item.path in self.failed:  # read again next build
                        item.entry["sha256"] = ""
                    end = len(writer) + (carrier.pending if carrier else 0)
                    files[item.path] = {**item.entry, "first": first, "count": end - first}
                    first = end
                    continue
                if carrier is not None:
                    carrier.flush()  # the unchanged files before this passage
                passage, tokens, starts_document = item
                with timer("write"):
                    pid = writer.add(passage, tokens)
                    terms.add(tokens)
                    facets.add(passage, starts_document)
                if vectors is not None:
                    vectors.add(pid, passage)
                self._report("indexing", 1, None)
            if carrier is not None:
                carrier.flush()
            summary.passages = len(writer)
        with timer("write"):
            facets.save(generation)
        models = vectors.finish() if vectors is not None else {}
        if searchable:
            with timer("bm25"):
                BM25Index.build_from_terms(terms.close(), generation.bm25_folder, self.config.bm25,
                                           on_passages=lambda done: self._report("bm25", done, summary.passages))
        else:
            terms.abort()
            shutil.rmtree(generation.bm25_folder)
        manifest = self._manifest(files, models, summary)
        if self.mirror is not None:  # another backend searches: copy the generation into it first
            with timer("backend"):
                manifest["backend"] = self.mirror(generation, manifest, self.progress)
        return self._publish(generation, manifest, summary, started)

    def _publish(self, generation: Generation, manifest: dict[str, Any], summary: BuildSummary, started: float) -> BuildSummary:
        """Seal the generation (its manifest, written last, holds every other file's checksum) and switch it in."""
        with self.timer("write"):
            summary.seconds = round(time.perf_counter() - started, 3)
            summary.stage_seconds = self.timer.rounded()
            manifest["checksums"] = seal(generation, self.previous, (self.old_manifest or {}).get("checksums"))
            generation.write_manifest(manifest)
            self.folder.publish(generation)
        return summary

    # files -> units: new documents, or the previous generation's passages and tokens for unchanged files
    def _collect_units(self, sources: list[SourceFile], summary: BuildSummary) -> Iterator["_Unit"]:
        old_files = self.old_manifest["files"] if self.old_manifest else {}
        trusted = self.previous is not None and self.trust_passages
        built = _recorded_settings(self.old_manifest) if trusted else {}
        if not trusted or any(built[name] != self._settings()[name] for name in TEXT_SETTINGS):
            # other load options or text rules, or passages that cannot be trusted: every file is read
            # again (as changed); vectors are still reused by text
            old_files = {path: {**info, "size": -1, "sha256": ""} for path, info in old_files.items()}
        recorded = set()
        for source in sources:
            old = old_files.get(source.path)
            try:
                same_stat = old is not None and old["size"] == source.size and old["mtime"] == source.mtime
                digest = old["sha256"] if same_stat else file_digest(source.path)
            except OSError as error:  # hashing an unreadable file
                summary.skipped.append(Skipped(source.path, skip_reason(error)))
                continue
            units = 0
            if old is not None and old["sha256"] and old["sha256"] == digest:  # "": read again
                summary.files_unchanged += 1
                recorded.add(source.path)
                yield Run(old["first"], old["count"], [(source.path, {"size": source.size, "mtime": source.mtime, "sha256": digest}, old["count"])])
                continue
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

    def _unchunkable(self, path: str, failure: str) -> None:
        """A document of the file at `path` could not be chunked: the file is skipped (and read again next build)."""
        self.failed.add(path)
        self.summary.skipped.append(Skipped(path, failure))

    def _previous_vectors(self) -> PreviousVectors | None:
        if self.lender is not None:
            return PreviousVectors(self.lender, self.lender.read_manifest())
        if not self.previous or not self.old_manifest["models"]:
            return None
        return PreviousVectors(self.previous, self.old_manifest, skip=self.untrusted_spaces)

    def _settings(self) -> dict[str, Any]:
        """How this build makes a generation, as its manifest records it."""
        return {"keyword_only": self.keyword_only, "bm25": self.config.bm25.to_dict(), "text_version": TEXT_VERSION,
                "chunking": {"max_tokens": self.config.max_tokens, "overlap_tokens": self.config.overlap_tokens},
                "loading": asdict(self.config.load)}

    def _manifest(self, files: dict[str, Any], models: dict[str, dict], summary: BuildSummary) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "models": models,
            **self._settings(),
            "files": files,
            "passages": summary.passages,
        }


@dataclass
class _FileDone:
    """Marks the end of a source file's units: the writer records the file with its passage range."""

    path: str
    entry: dict[str, Any]  # size, mtime, sha256


_Unit = Any  # Document (new) | Run (unchanged files) | _FileDone


def _leading_runs(units: Iterator[_Unit]) -> tuple[list[Run], Iterator[_Unit] | None]:
    """The runs that `units` begin with, and the rest of them from the first other unit on (None when
    there is none: the runs were all of it)."""
    runs: list[Run] = []
    for unit in units:
        if not isinstance(unit, Run):
            return runs, chain([unit], units)
        runs.append(unit)
    return runs, None
TEXT_SETTINGS = ("text_version", "loading")  # settings that make a file's passages: when they differ, all is read again


def _recorded_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest's `Builder._settings`, with the defaults of those an older index did not record."""
    return {"keyword_only": bool(manifest.get("keyword_only")), "bm25": manifest.get("bm25"), "text_version": manifest.get("text_version", 1),
            "chunking": manifest.get("chunking"), "loading": {**asdict(LoadOptions()), **manifest["loading"]}}
