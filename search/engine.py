"""The engine: builds an index folder from files and answers queries over it.

Data flows one way: files -> passages (loading, chunking) -> indexes (BM25, dense) -> ranked hits
(fusion). Builds are incremental: unchanged files keep their passages, and any passage whose text
and model are unchanged keeps its vector.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from search import store
from search.bm25_index import BM25Index
from search.chunking import chunk_document
from search.dense_index import DenseIndex
from search.embedding import ALL_LANGUAGES, LEGACY_BACKEND, Encoder, model_plan, space_for, token_counter
from search.errors import IncompatibleIndex, LoadError, SearchError
from search.fusion import Ranking, fuse
from search.loading import discover_files, read_document
from search.schema import Document, Hit, Passage, Skipped, SourceFile
from search.tokenizing import detect_language, tokenize

MODES = ("hybrid", "bm25", "dense")


@dataclass
class SearchConfig:
    """How queries are ranked; the defaults are what `search query` does with no options."""

    # Measured on ../shared/eval (README, Relevance): z-scored fusion of fully scored candidates with
    # dense 0.6 beat RRF and min-max fusion on every collection.
    fusion: str = "zscore"  # "zscore" | "rrf" | "weighted"
    bm25_weight: float = 0.4
    dense_weight: float = 0.6
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


@dataclass
class BuildConfig:
    max_tokens: int = 200
    overlap_tokens: int = 40
    bm25: dict[str, Any] = field(default_factory=lambda: dict(BM25Index.DEFAULT_PARAMS))


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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [asdict(s) for s in self.skipped]
        return data


def contextual_text(passage: Passage) -> str:
    """The text both retrievers see: document title and heading path give a passage its topic."""
    context = [passage.metadata.get("title") or "", *passage.heading_path]
    prefix = " / ".join(dict.fromkeys(part for part in context if part))  # drop repeats, keep order
    return f"{prefix}\n{passage.text}" if prefix else passage.text


def file_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _text_key(model: str, backend: str, text: str) -> str:
    # the backend (and its precision) is part of the key: int8 and float32 vectors must not mix
    return hashlib.sha1(f"{model}\0{backend}\0{text}".encode("utf-8")).hexdigest()


class Engine:
    """An opened index: `Engine.open(folder).search("序列并行")`."""

    def __init__(self, folder: store.IndexFolder, generation: Path, config: SearchConfig | None = None) -> None:
        self.folder = folder
        self.generation = generation
        self.manifest = store.read_manifest(generation)
        self.config = config or SearchConfig()
        self.passages = store.PassageStore(generation)
        self.bm25 = BM25Index.load(generation / "bm25")
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
            # queries are embedded like the index was, e.g. with the ONNX export and no torch
            backend = self.manifest["models"][space].get("backend", LEGACY_BACKEND)
            self._encoders[space] = Encoder(self.plan[space], backend=backend)
        return self._encoders[space]

    def bm25_ranking(self, query: str, depth: int) -> Ranking:
        return self.bm25.top_k(tokenize(query), depth)

    def dense_ranking(self, query: str, depth: int) -> tuple[Ranking, dict[int, float], dict[str, np.ndarray]]:
        """Dense candidates merged over embedding spaces, and each candidate's cosine score.

        Cosines of different models are not comparable, so spaces merge by weighted RRF, favouring
        the space of the query's language.
        """
        language = detect_language(query)
        rankings, weights, cosines, vectors = [], [], {}, {}
        for space, index in self.dense.items():
            if len(index) == 0:
                continue
            vector = vectors[space] = self.encoder(space).encode([query])[0]
            ids, scores = index.search(vector, depth)
            rankings.append((ids, scores))
            same = space in (ALL_LANGUAGES, language)
            weights.append(1.0 if same else self.config.cross_language_weight)
            cosines.update(zip(ids.tolist(), scores.tolist()))
        if len(rankings) == 1:
            return rankings[0], cosines, vectors
        merged = fuse(rankings, weights, "rrf", self.config.rrf_k)[:depth]
        ids = np.array([pid for pid, _ in merged], dtype=np.int64)
        return (ids, np.array([score for _, score in merged])), cosines, vectors

    def _score_all_candidates(self, query: str, retrieval: Retrieval, vectors: dict[str, np.ndarray]) -> None:
        """Give every candidate of either list its BM25 score and its cosine, so fusion never has
        to treat "not retrieved" as a score of zero."""
        union = np.union1d(retrieval.bm25[0], retrieval.dense[0])
        retrieval.bm25_scores = dict(zip(retrieval.bm25[0].tolist(), retrieval.bm25[1].tolist()))
        if len(retrieval.bm25_scores) < len(union):
            all_scores = self.bm25.scores(tokenize(query))
            retrieval.bm25_scores = dict(zip(union.tolist(), all_scores[union].tolist()))
        missing = np.array([pid for pid in union.tolist() if pid not in retrieval.cosines], dtype=np.int64)
        for space, vector in vectors.items():
            rows = self._rows[space][missing] if len(missing) else missing
            inside = rows >= 0
            scores = self.dense[space].scores_of(vector, rows[inside])
            retrieval.cosines.update(zip(missing[inside].tolist(), scores.tolist()))

    def retrieve(self, query: str, depth: int, mode: str = "hybrid") -> Retrieval:
        """Each retriever's candidates for `query` (only those `mode` needs), `depth` deep."""
        query = query.strip()
        if not query:
            raise SearchError("empty query: give some words to search for")
        if mode not in MODES:
            raise SearchError(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
        empty: Ranking = (np.zeros(0, dtype=np.int64), np.zeros(0))
        bm25 = self.bm25_ranking(query, depth) if mode != "dense" else empty
        dense, cosines, vectors = self.dense_ranking(query, depth) if mode != "bm25" else (empty, {}, {})
        retrieval = Retrieval(bm25, dense, cosines)
        if mode == "hybrid":
            self._score_all_candidates(query, retrieval, vectors)
        return retrieval

    def rank(self, retrieval: Retrieval, mode: str = "hybrid", config: SearchConfig | None = None) -> list[tuple[int, float]]:
        """(passage id, score) best first, for one mode; `config` overrides the engine's fusion settings."""
        if mode == "bm25":
            return list(zip(retrieval.bm25[0].tolist(), retrieval.bm25[1].tolist()))
        if mode == "dense":
            return [(pid, retrieval.cosines[pid]) for pid in retrieval.dense[0].tolist()]
        config = config or self.config
        rankings = [retrieval.bm25, retrieval.dense]
        weights = [config.bm25_weight, config.dense_weight]
        return fuse(rankings, weights, config.fusion, config.rrf_k, [retrieval.bm25_scores, retrieval.cosines])

    def search(self, query: str, k: int = 10, mode: str = "hybrid") -> list[Hit]:
        """The k best passages for `query`; mode is "hybrid", "bm25" or "dense"."""
        retrieval = self.retrieve(query, max(k, self.config.candidates), mode)
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
            "bm25": self.manifest["bm25"],
            "size_bytes": size,
            "built_at": self.manifest["built_at"],
        }


def check_compatible(manifest: dict[str, Any], model: str | None, root: Path) -> None:
    if manifest.get("format_version") != store.FORMAT_VERSION:
        raise IncompatibleIndex(
            f"index at {root} has format version {manifest.get('format_version')}, this version reads "
            f"{store.FORMAT_VERSION}: run `search index --rebuild --index {root}`"
        )
    if model is None:
        return
    built = sorted({info["name"] for info in manifest["models"].values()})
    wanted = sorted(set(model_plan(model).values()))
    if built != wanted:
        raise IncompatibleIndex(
            f"index at {root} was built with model {', '.join(built)}, not {', '.join(wanted)}: "
            f"use the same --model, or run `search index --rebuild --model {model}`"
        )


class Builder:
    """One build of an index folder; call `run(paths)` under the folder's build lock."""

    def __init__(self, folder: store.IndexFolder, model: str | None, rebuild: bool, progress: bool, config: BuildConfig) -> None:
        self.folder = folder
        self.progress = progress
        self.config = config
        self.previous = None if rebuild or not folder.exists() else folder.current()
        old = store.read_manifest(self.previous) if self.previous else None
        if old is not None:
            check_compatible(old, model, folder.root)
            self.plan = {space: info["name"] for space, info in old["models"].items()}
        else:
            self.plan = model_plan(model)
        self.old_manifest = old

    def run(self, paths: Sequence[str | os.PathLike]) -> BuildSummary:
        started = time.perf_counter()
        summary = BuildSummary()
        sources, summary.skipped = discover_files(paths)
        passages, tokens, files = self._collect_passages(sources, summary)
        return self._write(passages, tokens, files, summary, started)

    def run_documents(self, documents: Iterable[Document]) -> BuildSummary:
        """Index documents that are not files of their own (records of a collection, say)."""
        started = time.perf_counter()
        summary = BuildSummary()
        counter = self._token_counter()
        passages: list[Passage] = []
        for document in documents:
            passages.extend(chunk_document(document, counter, self.config.max_tokens, self.config.overlap_tokens))
            summary.files_added += 1
        return self._write(passages, [None] * len(passages), {}, summary, started)

    def _write(
        self, passages: list[Passage], tokens: list[list[str] | None], files: dict[str, Any], summary: BuildSummary, started: float
    ) -> BuildSummary:
        """Write a complete new generation and switch it in; `tokens` holds None where a passage is new."""
        self.folder.remove_stale()  # leftovers of aborted builds (the live generation stays)
        tokens = [known if known is not None else tokenize(contextual_text(p)) for p, known in zip(passages, tokens)]
        vectors, models = self._embed(passages, summary)
        generation = self.folder.new_generation()
        store.write_passages(generation, passages, tokens)
        BM25Index.build(tokens, **self.config.bm25).save(generation / "bm25")
        for space, (ids, matrix) in vectors.items():
            DenseIndex.build(matrix, ids, models[space]["dim"]).save(generation / f"dense-{space}")
        summary.passages = len(passages)
        summary.seconds = round(time.perf_counter() - started, 3)
        store.write_manifest(generation, self._manifest(files, models, summary))
        self.folder.publish(generation)
        return summary

    # files -> passages, reusing the previous generation's passages for unchanged files
    def _collect_passages(
        self, sources: list[SourceFile], summary: BuildSummary
    ) -> tuple[list[Passage], list[list[str] | None], dict[str, Any]]:
        old_files = self.old_manifest["files"] if self.old_manifest else {}
        old_passages = store.PassageStore(self.previous) if self.previous else None
        old_tokens = store.read_tokens(self.previous) if self.previous else []
        counter = self._token_counter()
        passages: list[Passage] = []
        tokens: list[list[str] | None] = []
        files: dict[str, Any] = {}
        for source in sources:
            old = old_files.get(source.path)
            try:
                same_stat = old is not None and old["size"] == source.size and old["mtime"] == source.mtime
                digest = old["sha256"] if same_stat else file_hash(source.path)
                if old is not None and old["sha256"] == digest:
                    summary.files_unchanged += 1
                    span = range(old["first"], old["first"] + old["count"])
                    own = old_passages.get_many(span)
                    own_tokens = [old_tokens[i] for i in span]
                else:
                    own = chunk_document(read_document(source), counter, self.config.max_tokens, self.config.overlap_tokens)
                    own_tokens = [None] * len(own)
                    if old is None:
                        summary.files_added += 1
                    else:
                        summary.files_changed += 1
            except (LoadError, OSError) as error:
                summary.skipped.append(Skipped(source.path, str(error)))
                continue
            files[source.path] = {"size": source.size, "mtime": source.mtime, "sha256": digest, "first": len(passages), "count": len(own)}
            passages.extend(own)
            tokens.extend(own_tokens)
        summary.files_removed = len(set(old_files) - set(files))
        return passages, tokens, files

    def _token_counter(self):
        """Count with the tokenizer of the model that will embed the text, so no passage overflows it."""
        counters = {space: token_counter(name) for space, name in self.plan.items()}
        if len(counters) == 1:
            return next(iter(counters.values()))
        return lambda text: counters[space_for(self.plan, detect_language(text))](text)

    def _embed(self, passages: list[Passage], summary: BuildSummary) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, dict]]:
        """Vectors per space, reusing the previous generation's vector for identical (model, text)."""
        reusable = self._previous_vectors()
        texts = [contextual_text(p) for p in passages]
        by_space: dict[str, list[int]] = {space: [] for space in self.plan}
        for pid, text in enumerate(texts):
            by_space[space_for(self.plan, detect_language(text))].append(pid)

        todo = sum(len(ids) for ids in by_space.values())
        vectors, models = {}, {}
        bar = _progress_bar(todo, self.progress)
        for space, ids in by_space.items():
            name = self.plan[space]
            encoder = Encoder(name)
            keys = [_text_key(name, encoder.backend, texts[pid]) for pid in ids]
            missing = [i for i, key in enumerate(keys) if key not in reusable]
            dim = encoder.dim if missing else self._known_dim(space)
            matrix = np.zeros((len(ids), dim), dtype=np.float32)
            for i, key in enumerate(keys):
                if key in reusable:
                    matrix[i] = reusable[key]
            if missing:
                bar.set_description(f"embedding ({name})")
                matrix[missing] = encoder.encode([texts[ids[i]] for i in missing], progress=bar)
            bar.update(len(ids) - len(missing))
            summary.passages_embedded += len(missing)
            summary.passages_reused += len(ids) - len(missing)
            vectors[space] = (np.asarray(ids, dtype=np.int64), matrix)
            models[space] = {"name": name, "dim": dim, "backend": encoder.backend}
        bar.close()
        return vectors, models

    def _known_dim(self, space: str) -> int:
        if self.old_manifest and space in self.old_manifest["models"]:
            return int(self.old_manifest["models"][space]["dim"])
        return Encoder(self.plan[space]).dim

    def _previous_vectors(self) -> dict[str, np.ndarray]:
        if not self.previous:
            return {}
        reusable = {}
        old_texts = [contextual_text(p) for p in store.PassageStore(self.previous)]
        for space, info in self.old_manifest["models"].items():
            index = DenseIndex.load(self.previous / f"dense-{space}")
            for pid, vector in zip(index.ids.tolist(), index.vectors()):
                reusable[_text_key(info["name"], info.get("backend", LEGACY_BACKEND), old_texts[pid])] = vector
        return reusable

    def _manifest(self, files: dict[str, Any], models: dict[str, dict], summary: BuildSummary) -> dict[str, Any]:
        return {
            "format_version": store.FORMAT_VERSION,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "models": models,
            "bm25": self.config.bm25,
            "chunking": {"max_tokens": self.config.max_tokens, "overlap_tokens": self.config.overlap_tokens},
            "files": files,
            "passages": summary.passages,
        }


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="embedding", unit="passage", disable=not enabled or total == 0, leave=False)
