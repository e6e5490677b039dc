"""The engine: builds an index folder from files and answers queries over it.

Data flows one way: files -> passages (loading, chunking) -> indexes (BM25, dense) -> ranked hits
(fusion). Builds are incremental: unchanged files keep their passages, and any passage whose text
and model are unchanged keeps its vector.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from collections import deque
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from search import store
from search.bm25_index import BM25Index
from search.dense_index import DenseIndex
from search.embedding import ALL_LANGUAGES, LEGACY_BACKEND, Encoder, model_plan, space_for
from search.errors import IncompatibleIndex, LoadError, SearchError
from search.filtering import Facets, Filters
from search.fusion import Ranking, fuse, tie_weight
from search.loading import LoadOptions, discover_files, iter_documents
from search.passages import Prepared, contextual_text, prepare_documents, warm_worker
from search.schema import Document, Hit, Passage, Skipped, SourceFile
from search.tokenizing import detect_language, languages_in, tokenize_query

MODES = ("hybrid", "bm25", "dense")


@dataclass
class SearchConfig:
    """How queries are ranked; the defaults are what `search query` does with no options."""

    # Measured on ../shared/eval (README, Relevance): z-scored fusion of fully scored candidates with
    # dense 0.6 beat RRF and min-max fusion on every collection.
    fusion: str = "zscore"  # "zscore" | "rrf" | "weighted"
    bm25_weight: float = 0.4
    dense_weight: float = 0.6
    # zscore: BM25 keeps its whole weight when its best score leads the second by 5% or more, down
    # to half of it on a tie (fusion.tie_weight); nDCG@10 +0.002 on cmedqq, oppo_xiaobu and scifact.
    bm25_tie_gap: float = 0.05
    bm25_tie_floor: float = 0.5
    rrf_k: float = 60.0
    candidates: int = 100  # depth each retriever contributes to fusion
    # how much a dense space of another language than the query counts when spaces are merged
    cross_language_weight: float = 0.25


@dataclass
class Retrieval:
    """What each retriever returned for one query, before fusion."""

    bm25: Ranking
    dense: Ranking
    cosines: dict[int, float]  # cosine similarity in the passage's own model's space
    bm25_scores: dict[int, float] = field(default_factory=dict)  # BM25 score of every candidate
    # candidates whose cosine comes from a model that does not read the query's languages (a space
    # searched only to fill the depth): its cosines do not compare with the readers' ones
    foreign: set[int] = field(default_factory=set)


@dataclass
class BuildConfig:
    max_tokens: int = 200
    overlap_tokens: int = 40
    bm25: dict[str, Any] = field(default_factory=lambda: dict(BM25Index.DEFAULT_PARAMS))
    load: LoadOptions = field(default_factory=LoadOptions)
    # BM25 only, no embeddings (embedding 1 GB of text on a laptop CPU takes about a day).
    # None: as the existing index was built (a new index embeds).
    keyword_only: bool | None = None


@dataclass
class BuildSummary:
    files_added: int = 0
    files_changed: int = 0
    files_removed: int = 0
    files_unchanged: int = 0
    passages_embedded: int = 0
    passages_reused: int = 0
    passages: int = 0
    seconds: float = 0.0
    skipped: list[Skipped] = field(default_factory=list)
    # stages interleave in a streaming build: each sums the time spent in it
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [asdict(s) for s in self.skipped]
        return data


def file_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _text_key(model: str, backend: str, text: str) -> int:
    """64-bit key of a (model, backend, text) triple: 8 bytes a passage keeps reuse lookups in numpy
    arrays; a collision among 10 million passages has odds of about 3e-6. The backend (and its
    precision) is part of the key so int8 and float32 vectors never mix; the legacy backend keeps the
    keys of indexes written before backends were recorded."""
    model = model if backend == LEGACY_BACKEND else f"{model}\0{backend}"
    digest = hashlib.blake2b(f"{model}\0{text}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class Engine:
    """An opened index: `Engine.open(folder).search("序列并行")`."""

    def __init__(self, folder: store.IndexFolder, generation: Path, config: SearchConfig | None = None) -> None:
        self.folder = folder
        self.generation = generation
        self.manifest = store.read_manifest(generation)
        self.config = config or SearchConfig()
        self.passages = store.PassageStore(generation)
        self.bm25 = BM25Index.load(generation / "bm25")
        self.keyword_only = bool(self.manifest.get("keyword_only"))  # built without embeddings
        self.plan: dict[str, str] = {space: info["name"] for space, info in self.manifest["models"].items()}
        self.dense = {space: DenseIndex.load(generation / f"dense-{space}") for space in self.plan}
        self._rows = {space: index.row_of(len(self.passages)) for space, index in self.dense.items()}
        self._encoders: dict[str, Encoder] = {}

    # ----- opening and building -------------------------------------------------------------

    @classmethod
    def open(cls, index_dir: str | os.PathLike, model: str | None = None, config: SearchConfig | None = None) -> "Engine":
        folder = store.IndexFolder(index_dir)
        for attempt in range(3):
            generation = folder.current()
            try:
                check_compatible(store.read_manifest(generation), model, folder.root)
                return cls(folder, generation, config)
            except FileNotFoundError:
                # a concurrent build switched generations and removed this one while we opened it
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def build(
        cls,
        paths: Sequence[str | os.PathLike],
        index_dir: str | os.PathLike,
        model: str | None = None,
        rebuild: bool = False,
        progress: bool = False,
        build_config: BuildConfig | None = None,
        wait: bool = False,
    ) -> "Engine":
        """Index `paths` into `index_dir` (incrementally unless `rebuild`) and open the result.

        The returned engine's `build_summary` says what changed.
        """
        missing = [str(p) for p in paths if not os.path.exists(p)]
        if missing:  # checked before the index folder is created or locked
            raise SearchError(f"no such file or folder: {missing[0]}")
        folder = store.IndexFolder(index_dir)
        with folder.build_lock(wait=wait):
            summary = Builder(folder, model, rebuild, progress, build_config or BuildConfig()).run(paths)
        engine = cls.open(index_dir)
        engine.build_summary = summary
        return engine

    # ----- querying -------------------------------------------------------------------------

    def encoder(self, space: str) -> Encoder:
        if space not in self._encoders:
            # queries are embedded like the index was, e.g. with the ONNX export and no torch; one
            # thread per model, since a short query gains little from more and the models run side by side
            backend = self.manifest["models"][space].get("backend", LEGACY_BACKEND)
            self._encoders[space] = Encoder(self.plan[space], backend=backend, threads=1)
        return self._encoders[space]

    @cached_property
    def facets(self) -> Facets:
        """Path, type and tags per file; an index built before filters derives them from its passages."""
        stored = store.read_facets(self.generation)
        return Facets(*stored) if stored is not None else Facets.from_passages(self.passages)

    def allowed(self, filters: Filters | None) -> np.ndarray | None:
        """allowed[passage id] for `filters`, or None when they do not restrict."""
        return self.facets.mask(filters) if filters else None

    def dense_ranking(
        self, query: str, depth: int, allowed: np.ndarray | None = None
    ) -> tuple[Ranking, dict[int, float], dict[str, np.ndarray]]:
        """Dense candidates merged over embedding spaces, and each candidate's cosine score."""
        return self._start_dense(query, depth, allowed)()

    def _start_dense(self, query: str, depth: int, allowed: np.ndarray | None) -> Callable[[], tuple[Ranking, dict[int, float], dict[str, np.ndarray]]]:
        """Start encoding and searching every embedding space, each in its own thread (onnxruntime and
        FAISS release the GIL, so two models take the time of one on two cores); the returned function
        waits for them and merges their results.

        Cosines of different models are not comparable, so spaces merge by weighted RRF, favouring
        the space of the query's language.
        """
        language = detect_language(query)
        jobs = {}
        for space, rows in self._spaces_to_search(query, depth, allowed).items():
            jobs[space] = self._space_threads.submit(self._search_space, space, query, depth, rows)

        def merge() -> tuple[Ranking, dict[int, float], dict[str, np.ndarray]]:
            rankings, weights, cosines, vectors = [], [], {}, {}
            for space, job in jobs.items():
                vectors[space], (ids, scores) = job.result()
                rankings.append((ids, scores))
                weights.append(1.0 if space in (ALL_LANGUAGES, language) else self.config.cross_language_weight)
                cosines.update(zip(ids.tolist(), scores.tolist()))
            if len(rankings) == 1:
                return rankings[0], cosines, vectors
            if not rankings:
                return (np.zeros(0, dtype=np.int64), np.zeros(0)), cosines, vectors
            merged = fuse(rankings, weights, "rrf", self.config.rrf_k)[:depth]
            ids = np.array([pid for pid, _ in merged], dtype=np.int64)
            return (ids, np.array([score for _, score in merged])), cosines, vectors

        return merge

    def _spaces_to_search(self, query: str, depth: int, allowed: np.ndarray | None) -> dict[str, np.ndarray | None]:
        """The spaces to embed the query in, each with its allowed rows (None: all).

        Only the spaces whose model reads a language of the query (all of them when none does): a
        model asked about text in a language it cannot read returns noise (all-MiniLM-L6-v2 scores
        0.089 nDCG@10 on Chinese cmedqq), and skipping it halves the CPU of a one-language query.
        The other spaces join when those hold fewer than `depth` allowed passages, so a filtered
        query still fills its k hits.
        """
        rows = {}
        for space, index in self.dense.items():
            rows[space] = None if allowed is None else np.flatnonzero(allowed[index.ids])
        size = {space: len(self.dense[space]) if r is None else len(r) for space, r in rows.items()}
        readers = _reading([space for space in rows if size[space]], query)
        if sum(size[space] for space in readers) < depth:
            readers = {space for space in rows if size[space]}
        return {space: rows[space] for space in rows if space in readers}

    def _search_space(self, space: str, query: str, depth: int, rows: np.ndarray | None) -> tuple[np.ndarray, Ranking]:
        vector = self.encoder(space).encode([query])[0]
        return vector, self.dense[space].search(vector, depth, allowed_rows=rows)

    @cached_property
    def _space_threads(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max(1, len(self.dense)), thread_name_prefix="search-space")

    def _score_all_candidates(self, query: str, query_tokens: list[str], retrieval: Retrieval, vectors: dict[str, np.ndarray]) -> None:
        """Give every candidate of either list its BM25 score and its cosine, so fusion never has
        to treat "not retrieved" as a score of zero; mark those of spaces that do not read the query."""
        union = np.union1d(retrieval.bm25[0], retrieval.dense[0])
        retrieval.bm25_scores = dict(zip(retrieval.bm25[0].tolist(), retrieval.bm25[1].tolist()))
        if len(retrieval.bm25_scores) < len(union):
            all_scores = self.bm25.scores(query_tokens)
            retrieval.bm25_scores = dict(zip(union.tolist(), all_scores[union].tolist()))
        missing = np.array([pid for pid in union.tolist() if pid not in retrieval.cosines], dtype=np.int64)
        for space, vector in vectors.items():
            rows = self._rows[space][missing] if len(missing) else missing
            inside = rows >= 0
            scores = self.dense[space].scores_of(vector, rows[inside])
            retrieval.cosines.update(zip(missing[inside].tolist(), scores.tolist()))
        readers = _reading(list(vectors), query)
        for space in set(vectors) - readers:  # M3E-small's cosines for an English query run higher than MiniLM's
            retrieval.foreign.update(union[self._rows[space][union] >= 0].tolist())

    def fallback_notice(self, mode: str) -> str | None:
        """What to tell the user when `mode` cannot run on this index (a keyword-only one) and bm25 does."""
        if self.keyword_only and mode != "bm25":
            return f"note: {self.folder.root} is a keyword-only index (no embeddings): searching in bm25 mode"
        return None

    def _mode(self, mode: str) -> str:
        if mode not in MODES:
            raise SearchError(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
        return "bm25" if self.keyword_only else mode

    def retrieve(self, query: str, depth: int, mode: str = "hybrid", allowed: np.ndarray | None = None) -> Retrieval:
        """Each retriever's candidates for `query` (only those `mode` needs), `depth` deep, only
        among passages where `allowed` (a boolean mask over passage ids) is True when given.
        A keyword-only index answers every mode with bm25 (see `fallback_notice`)."""
        query = query.strip()
        if not query:
            raise SearchError("empty query: give some words to search for")
        mode = self._mode(mode)
        empty: Ranking = (np.zeros(0, dtype=np.int64), np.zeros(0))
        dense_done = self._start_dense(query, depth, allowed) if mode != "bm25" else (lambda: (empty, {}, {}))
        # BM25 runs here while the spaces encode and search in their threads
        tokens = tokenize_query(query) if mode != "dense" else []  # once: BM25 candidates and their full scores
        bm25 = self.bm25.top_k(tokens, depth, allowed) if mode != "dense" else empty
        dense, cosines, vectors = dense_done()
        retrieval = Retrieval(bm25, dense, cosines)
        if mode == "hybrid":
            self._score_all_candidates(query, tokens, retrieval, vectors)
        return retrieval

    def rank(self, retrieval: Retrieval, mode: str = "hybrid", config: SearchConfig | None = None) -> list[tuple[int, float]]:
        """(passage id, score) best first, for one mode; `config` overrides the engine's fusion settings."""
        mode = self._mode(mode)
        if mode == "bm25":
            return list(zip(retrieval.bm25[0].tolist(), retrieval.bm25[1].tolist()))
        if mode == "dense":
            return [(pid, retrieval.cosines[pid]) for pid in retrieval.dense[0].tolist()]
        config = config or self.config
        rankings = [retrieval.bm25, retrieval.dense]
        weights = [config.bm25_weight, config.dense_weight]
        if config.fusion == "zscore":  # the tie rule answers z-scoring's stretch (and was measured with it)
            weights[0] *= tie_weight(retrieval.bm25[1], config.bm25_tie_gap, config.bm25_tie_floor)
        return fuse(rankings, weights, config.fusion, config.rrf_k, [retrieval.bm25_scores, _dense_column(retrieval)])

    def search(self, query: str, k: int = 10, mode: str = "hybrid", filters: Filters | None = None) -> list[Hit]:
        """The k best passages for `query`; mode is "hybrid", "bm25" or "dense".

        `filters` (search.filtering.Filters: paths, tags, types) restrict the passages before the
        top-k cut, so k hits come back whenever k allowed passages match.
        """
        retrieval = self.retrieve(query, max(k, self.config.candidates), mode, self.allowed(filters))
        if k <= 0 or len(self.passages) == 0:
            return []
        return self._hits(self.rank(retrieval, mode)[:k], retrieval)

    def _hits(self, ranked: list[tuple[int, float]], retrieval: Retrieval) -> list[Hit]:
        bm25_at = {pid: rank for rank, pid in enumerate(retrieval.bm25[0].tolist(), 1)}
        dense_at = {pid: rank for rank, pid in enumerate(retrieval.dense[0].tolist(), 1)}
        bm25_scores = retrieval.bm25_scores or dict(zip(retrieval.bm25[0].tolist(), retrieval.bm25[1].tolist()))
        hits = []
        for (pid, score), passage in zip(ranked, self.passages.get_many(pid for pid, _ in ranked)):
            hits.append(
                Hit(
                    path=passage.path,
                    heading_path=passage.heading_path,
                    text=passage.text,
                    line_start=passage.line_start,
                    line_end=passage.line_end,
                    metadata=passage.metadata,
                    score=float(score),
                    bm25_rank=bm25_at.get(pid),
                    bm25_score=bm25_scores.get(pid),
                    dense_rank=dense_at.get(pid),
                    dense_score=retrieval.cosines.get(pid),
                    passage_id=pid,
                )
            )
        return hits

    def stats(self) -> dict[str, Any]:
        size = sum(p.stat().st_size for p in self.generation.rglob("*") if p.is_file())
        return {
            "index": str(self.folder.root),
            "generation": self.generation.name,
            "format_version": self.manifest["format_version"],
            "files": len(self.manifest["files"]),
            "passages": len(self.passages),
            "models": {space: {**info, "passages": len(self.dense[space])} for space, info in self.manifest["models"].items()},
            "keyword_only": self.keyword_only,
            "bm25": self.manifest["bm25"],
            "size_bytes": size,
            "built_at": self.manifest["built_at"],
        }


def _dense_column(retrieval: Retrieval) -> dict[int, float]:
    """Every candidate's cosine for fusion. A passage of a space whose model does not read the query's
    language (skipped, or searched only to fill the depth) gets the lowest cosine of the readers'
    passages: no evidence of meaning, and another model's cosines are on another scale."""
    candidates = set(retrieval.bm25[0].tolist()) | set(retrieval.dense[0].tolist())
    foreign = retrieval.foreign if len(retrieval.foreign) < len(candidates) else set()  # only foreigners: compare them
    if not foreign and candidates <= retrieval.cosines.keys():
        return retrieval.cosines
    comparable = {pid: cosine for pid, cosine in retrieval.cosines.items() if pid not in foreign}
    floor = min(comparable.values(), default=0.0)
    return {pid: comparable.get(pid, floor) for pid in candidates}


def _reading(spaces: Sequence[str], query: str) -> set[str]:
    """The spaces whose model reads a language of the query; all of them when none does."""
    languages = languages_in(query)
    return {space for space in spaces if space == ALL_LANGUAGES or space in languages} or set(spaces)


def check_compatible(manifest: dict[str, Any], model: str | None, root: Path) -> None:
    if manifest.get("format_version") != store.FORMAT_VERSION:
        raise IncompatibleIndex(
            f"index at {root} has format version {manifest.get('format_version')}, this version reads "
            f"{store.FORMAT_VERSION}: run `search index --rebuild --index {root}`"
        )
    if model is None or manifest.get("keyword_only"):
        return  # a keyword-only index has no vectors a model would have to match
    built = sorted({info["name"] for info in manifest["models"].values()})
    wanted = sorted(set(model_plan(model).values()))
    if built != wanted:
        raise IncompatibleIndex(
            f"index at {root} was built with model {', '.join(built)}, not {', '.join(wanted)}: "
            f"use the same --model, or run `search index --rebuild --model {model}`"
        )


class Builder:
    """One build of an index folder; call `run(paths)` under the folder's build lock.

    A build streams: passages go to the new generation's files as they are produced (store.PassageWriter),
    documents are chunked and tokenised by a process pool in order (search.passages), vectors are embedded in bounded batches into an on-disk array
    per space (_SpaceVectors), and BM25 is built in segments from tokens.jsonl. What stays in memory per
    passage is a few integers, so a 1 GB file indexes in bounded memory.
    """

    def __init__(self, folder: store.IndexFolder, model: str | None, rebuild: bool, progress: bool, config: BuildConfig) -> None:
        self.folder = folder
        self.progress = progress
        self.config = config
        self.previous = None if rebuild or not folder.exists() else folder.current()
        old = store.read_manifest(self.previous) if self.previous else None
        if old is not None:
            check_compatible(old, model, folder.root)
        if old is not None and old["models"]:
            self.plan = {space: info["name"] for space, info in old["models"].items()}
        else:
            self.plan = model_plan(model)
        self.old_manifest = old
        # None keeps what the index was built with; a new index embeds unless told otherwise
        keyword_only = config.keyword_only
        self.keyword_only = bool(old and old.get("keyword_only")) if keyword_only is None else keyword_only
        self.timer = _StageTimer()

    def run(self, paths: Sequence[str | os.PathLike]) -> BuildSummary:
        started = time.perf_counter()
        summary = BuildSummary()
        sources, summary.skipped = discover_files(paths)
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
        generation = self.folder.new_generation()
        timer = self.timer
        vectors = None if self.keyword_only else _VectorWriter(generation, self.plan, self._previous_vectors(), summary, timer)
        files: dict[str, Any] = {}
        with store.PassageWriter(generation) as writer, _progress_bar("indexing", None, self.progress) as bar:
            first = 0
            for item in self._prepared(units):
                if isinstance(item, _FileDone):
                    files[item.path] = {**item.entry, "first": first, "count": len(writer) - first}
                    first = len(writer)
                    continue
                passage, tokens = item
                with timer("write"):
                    pid = writer.add(passage, tokens)
                if vectors is not None:
                    vectors.add(pid, passage)
                bar.update()
            summary.passages = len(writer)
        with timer("write"):
            store.write_facets(generation, store.PassageStore(generation))
        models = vectors.finish() if vectors is not None else {}
        with timer("bm25"), _progress_bar("bm25", summary.passages, self.progress) as bar:
            BM25Index.build_streaming(lambda: store.iter_tokens(generation), generation / "bm25", **self.config.bm25,
                                      on_passages=bar.update)
        with timer("write"):
            summary.seconds = round(time.perf_counter() - started, 3)
            summary.stage_seconds = timer.rounded()
            store.write_manifest(generation, self._manifest(files, models, summary))
            self.folder.publish(generation)
        return summary

    # files -> units: new documents, or the previous generation's passages and tokens for unchanged files
    def _collect_units(self, sources: list[SourceFile], summary: BuildSummary) -> Iterator["_Unit"]:
        old_files = self.old_manifest["files"] if self.old_manifest else {}
        old_passages = store.PassageStore(self.previous) if self.previous else None
        old_tokens = store.TokenStore(self.previous) if self.previous else None
        if self.old_manifest and self.old_manifest.get("loading", asdict(LoadOptions())) != asdict(self.config.load):
            # other load options: every file is re-read (as changed); vectors are still reused by text
            old_files = {path: {**info, "size": -1, "sha256": ""} for path, info in old_files.items()}
        recorded = set()
        for source in sources:
            old = old_files.get(source.path)
            units = 0
            try:
                same_stat = old is not None and old["size"] == source.size and old["mtime"] == source.mtime
                digest = old["sha256"] if same_stat else file_hash(source.path)
                if old is not None and old["sha256"] == digest:
                    summary.files_unchanged += 1
                    for pid in range(old["first"], old["first"] + old["count"]):
                        yield old_passages.get(pid), old_tokens.get(pid)
                        units += 1
                else:
                    for document in iter_documents(source, self.config.load):
                        if isinstance(document, Skipped):  # one bad record of a collection file
                            summary.skipped.append(document)
                            continue
                        yield document
                        units += 1
                    if old is None:
                        summary.files_added += 1
                    else:
                        summary.files_changed += 1
            except (LoadError, OSError) as error:  # OSError: hashing an unreadable file
                reason = str(error) if isinstance(error, LoadError) else f"cannot read: {error.strerror or error}"
                summary.skipped.append(Skipped(source.path, reason))
                if units == 0:
                    continue
                digest = ""  # failed part-way: keep what was read, and read the file again next build
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
        prepared = iter(work.passages)
        for unit in batch:
            if isinstance(unit, Document):
                yield from next(prepared)
            else:
                yield unit

    def _previous_vectors(self) -> "_PreviousVectors | None":
        if not self.previous or not self.old_manifest["models"]:
            return None
        return _PreviousVectors(self.previous, self.old_manifest)

    def _manifest(self, files: dict[str, Any], models: dict[str, dict], summary: BuildSummary) -> dict[str, Any]:
        return {
            "format_version": store.FORMAT_VERSION,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "models": models,
            "keyword_only": self.keyword_only,
            "bm25": self.config.bm25,
            "chunking": {"max_tokens": self.config.max_tokens, "overlap_tokens": self.config.overlap_tokens},
            "loading": asdict(self.config.load),
            "files": files,
            "passages": summary.passages,
        }


UNIT_BATCH = 256  # documents (or reused passages) per task of the preparing pool
BATCH_CHARS = 1 << 20  # ... or fewer, once the batch's new text reaches this many characters
POOL_AFTER = 1 << 20  # characters of new text before a pool pays for its start-up (~1 s per worker)
EMBED_BATCH = 1024  # passages embedded at a time per space


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
    return ProcessPoolExecutor(workers, mp_context=context, initializer=warm_worker, initargs=(plan,))


class _StageTimer:
    """Seconds spent per build stage, summed over the interleaved streaming steps."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def rounded(self) -> dict[str, float]:
        return {stage: round(seconds, 3) for stage, seconds in self.seconds.items()}


class _PreviousVectors:
    """The previous generation's vectors, memory-mapped, found by text key: reuse copies rows, never
    loading every old vector."""

    def __init__(self, generation: Path, manifest: dict[str, Any]) -> None:
        self.spaces: dict[str, tuple[str, DenseIndex, np.ndarray, np.ndarray]] = {}
        self.backends: dict[str, str] = {}
        for space, info in manifest["models"].items():
            self.backends[space] = info.get("backend", LEGACY_BACKEND)
            prefix = generation / f"dense-{space}"
            index = DenseIndex.load(prefix, mmap=True)
            keys_path = prefix.with_suffix(".keys.npy")
            keys = np.load(keys_path) if keys_path.is_file() else _keys_of(generation, index, info["name"], self.backends[space])
            order = np.argsort(keys, kind="stable")
            self.spaces[space] = (info["name"], index, keys[order], order)

    def row(self, space: str, name: str, backend: str, key: int) -> int:
        """Row of the vector of this (model, backend, text) key in the previous index, -1 if there is none."""
        if space not in self.spaces or self.spaces[space][0] != name or self.backends[space] != backend:
            return -1
        _, _, keys, order = self.spaces[space]
        at = int(np.searchsorted(keys, key))
        return int(order[at]) if at < len(keys) and keys[at] == key else -1

    def vectors(self, space: str, rows: list[int]) -> np.ndarray:
        return self.spaces[space][1].vectors_at(np.asarray(rows, dtype=np.int64))


def _keys_of(generation: Path, index: DenseIndex, name: str, backend: str) -> np.ndarray:
    """Text keys of an index's rows, for generations written before keys were saved."""
    passages = store.PassageStore(generation)
    rows = index.row_of(len(passages))
    keys = np.zeros(len(index), dtype=np.uint64)
    for pid, passage in enumerate(passages):
        if rows[pid] >= 0:
            keys[rows[pid]] = _text_key(name, backend, contextual_text(passage))
    return keys


class _VectorWriter:
    """Each passage's vector, in the space of its language: reused from the previous generation for an
    identical (model, text), else embedded in bounded batches."""

    def __init__(self, generation: Path, plan: dict[str, str], previous: _PreviousVectors | None, summary: BuildSummary,
                 timer: _StageTimer) -> None:
        self.plan = plan
        self.spaces = {space: _SpaceVectors(generation, space, name, previous, summary, timer) for space, name in plan.items()}

    def add(self, pid: int, passage: Passage) -> None:
        text = contextual_text(passage)
        self.spaces[space_for(self.plan, detect_language(text))].add(pid, text)

    def finish(self) -> dict[str, dict]:
        return {space: vectors.finish() for space, vectors in self.spaces.items()}


class _SpaceVectors:
    """One space's vectors, appended in passage order to an on-disk float32 array, then indexed by FAISS."""

    def __init__(self, generation: Path, space: str, name: str, previous: _PreviousVectors | None, summary: BuildSummary,
                 timer: _StageTimer) -> None:
        self.prefix = generation / f"dense-{space}"
        self.space, self.name = space, name
        self.previous, self.summary, self.timer = previous, summary, timer
        self.raw_path = self.prefix.with_suffix(".vectors.tmp")
        self.raw = open(self.raw_path, "wb")
        self.ids, self.keys = array("q"), array("Q")
        self.queue: list[tuple[str | None, int]] = []  # (text to embed, or None and the previous row to copy)
        self._dim: int | None = None
        self._backend: str | None = None

    @property
    def backend(self) -> str:
        """What embeds new text here, e.g. "onnx-int8" (part of every text key)."""
        if self._backend is None:
            self._backend = Encoder(self.name).backend
        return self._backend

    @property
    def dim(self) -> int:
        if self._dim is None:
            known = self.previous.spaces.get(self.space) if self.previous else None
            if known is not None and known[0] == self.name:
                self._dim = known[1].dim
            else:
                self._dim = Encoder(self.name).dim
        return self._dim

    def add(self, pid: int, text: str) -> None:
        key = _text_key(self.name, self.backend, text)
        self.ids.append(pid)
        self.keys.append(key)
        row = self.previous.row(self.space, self.name, self.backend, key) if self.previous else -1
        self.queue.append((None, row) if row >= 0 else (text, -1))
        if len(self.queue) >= EMBED_BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self.queue:
            return
        block = np.empty((len(self.queue), self.dim), dtype=np.float32)
        new = [i for i, (text, _) in enumerate(self.queue) if text is not None]
        reused = [i for i, (text, _) in enumerate(self.queue) if text is None]
        if new:
            with self.timer("embed"):
                block[new] = Encoder(self.name).encode([self.queue[i][0] for i in new])
        if reused:
            block[reused] = self.previous.vectors(self.space, [self.queue[i][1] for i in reused])
        self.raw.write(block.tobytes())
        self.summary.passages_embedded += len(new)
        self.summary.passages_reused += len(reused)
        self.queue = []

    def finish(self) -> dict[str, Any]:
        """Build and save the FAISS index from the on-disk array (in chunks); returns the manifest entry."""
        self._flush()
        self.raw.close()
        dim = self.dim
        with self.timer("dense"):
            count = len(self.ids)
            matrix = np.memmap(self.raw_path, dtype=np.float32, mode="r", shape=(count, dim)) if count else np.zeros((0, dim), np.float32)
            DenseIndex.build(matrix, np.frombuffer(self.ids, dtype=np.int64), dim).save(self.prefix)
            np.save(self.prefix.with_suffix(".keys.npy"), np.frombuffer(self.keys, dtype=np.uint64))
            del matrix
            self.raw_path.unlink()
        return {"name": self.name, "dim": dim, "backend": self.backend}


def _progress_bar(desc: str, total: int | None, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="passage", disable=not enabled or total == 0, leave=False)
