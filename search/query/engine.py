"""`Engine`: an opened index generation answering queries, and the door to building one.

    with Engine.open("indexes/notes") as engine:
        result = engine.search("序列并行", k=5)
        for hit in result.hits:
            print(hit.location, hit.score)
"""

from __future__ import annotations

import os
import threading
from functools import cached_property
from typing import Any, Iterable, Sequence

import numpy as np

from search.embedding.encoder import Encoder
from search.embedding.models import model_plan, reads_every_language
from search.errors import IndexDamaged, QueryError, SearchError
from search.index.backend import BackendSpec, Selection
from search.index.backends import choose_spec, mirror_for, open_backend, record_spec, spec_of
from search.index.build import BuildConfig, Builder
from search.index.facets import Facets, document_numbers, normalise_tag, normalise_type, read_facets
from search.index.folder import Generation, IndexFolder, check_compatible
from search.index.integrity import IndexCheck, check_index, described, problems
from search.index.passage_store import PassageStore
from search.index.report import BuildSummary, Progress
from search.query.filters import Filters
from search.query.fusion import Hybrid, SearchConfig
from search.query.query import Query
from search.query.rerank import CrossLingualReranker, Reread
from search.query.result import Hit, SearchResult
from search.query.candidates import Retrieval
from search.query.centring import space_centres
from search.query.retrieval import Retriever
from search.schema import Document
from search.text.passages import contextual_text

__all__ = ["Engine"]

MAX_K = 1000  # hits one search returns at most
MAX_DEPTH = 4 * MAX_K  # candidates a collapsing search asks the retrievers for at most
COPIES_LOOKAHEAD = 20  # candidates after the k-th distinct text still searched for its copies


class Engine:
    """An opened index: `Engine.open(folder).search("序列并行")`. Safe to share between threads;
    `close()` (or a `with` block) ends its threads."""

    def __init__(self, folder: IndexFolder, generation: Generation, config: SearchConfig | None = None,
                 manifest: dict[str, Any] | None = None) -> None:
        # Use Engine.open(), which checks the index first.
        self.folder = folder
        self.generation = generation
        self._closing = threading.Event()  # stops a read_ahead still running
        self.manifest = manifest if manifest is not None else generation.read_manifest()
        self.config = config or SearchConfig()
        self.passages = PassageStore(generation)
        self.keyword_only = bool(self.manifest["keyword_only"])  # built without embeddings
        self.plan: dict[str, str] = {space: info["name"] for space, info in self.manifest["models"].items()}
        self.backend_spec = spec_of(self.manifest)
        self.backend = open_backend(self.backend_spec, generation, self.manifest, len(self.passages))
        # queries are embedded like the index was (e.g. int8 ONNX, no torch); one thread per model,
        # since a short query gains little from more and the models run side by side
        encoders = {space: Encoder(info["name"], backend=info["backend"], threads=1) for space, info in self.manifest["models"].items()}
        self.policy = Hybrid(self.config)
        self.retriever = Retriever(self.backend, encoders, self.policy, space_centres(self.manifest["models"], self.config.centring),
                                   document_numbers(generation))
        self.reranker = CrossLingualReranker(lambda pids: [contextual_text(p) for p in self.passages.get_many(pids)])

    # ----- opening and building -------------------------------------------------------------

    @classmethod
    def open(cls, index_dir: str | os.PathLike, model: str | None = None, config: SearchConfig | None = None) -> "Engine":
        """The live generation of `index_dir`; refuses an index of another format or other models,
        and one whose files are missing or changed since they were built (IndexDamaged)."""
        folder = IndexFolder(index_dir)
        for attempt in range(3):
            live = folder.live_name()
            try:
                generation = folder.current()
                manifest = generation.read_manifest()
                check_compatible(manifest, model, folder.root)
                damage = described(problems(generation, manifest, full=False))  # sizes and times: a few stat calls
                if not damage:
                    return cls(folder, generation, config, manifest)
            except IndexDamaged as error:
                damage = [str(error)]
            except SearchError:
                raise
            except Exception as error:  # noqa: BLE001 - whatever a damaged file makes a reader raise
                damage = [" ".join(f"{type(error).__name__}: {error}".split())[:200]]
            if folder.live_name() == live or attempt == 2:
                raise folder.damaged(damage)
            # a concurrent build switched generations and removed this one while we opened it: again
        raise AssertionError("unreachable")

    @staticmethod
    def check(index_dir: str | os.PathLike) -> IndexCheck:
        """Hash every file of the live generation against the checksums its build recorded (what
        `search check` runs): `.ok`, `.problems`, `.files`, `.bytes`."""
        return check_index(IndexFolder(index_dir))

    @classmethod
    def build(cls, paths: Sequence[str | os.PathLike], index_dir: str | os.PathLike, **options: Any) -> tuple["Engine", BuildSummary]:
        """`update` (the same options), then the opened result with what changed."""
        summary = cls.update(paths, index_dir, **options)
        return cls.open(index_dir), summary

    @staticmethod
    def update(
        paths: Sequence[str | os.PathLike],
        index_dir: str | os.PathLike,
        model: str | None = None,
        rebuild: bool = False,
        progress: Progress | None = None,
        build_config: BuildConfig | None = None,
        wait: bool = False,
        backend: BackendSpec | None = None,
    ) -> BuildSummary:
        """Index `paths` into `index_dir` (incrementally unless `rebuild`) and say what changed; the rebuild
        job (`search index`, `search watch`) runs it. `backend`: where the index is searched (BackendSpec;
        default: as recorded in the folder, else embedded). `Engine.build` also opens the result."""
        missing = [str(p) for p in paths if not os.path.exists(p)]
        if missing:  # checked before the index folder is created or locked
            raise SearchError(f"no such file or folder: {missing[0]}")
        folder = IndexFolder(index_dir)
        with folder.build_lock(wait=wait):
            spec = choose_spec(folder, backend)
            summary = Builder(folder, model, rebuild, build_config or BuildConfig(), progress, mirror=mirror_for(spec, rebuild)).run(paths)
            record_spec(folder, spec)
        return summary

    @classmethod
    def build_documents(
        cls,
        documents: Iterable[Document],
        index_dir: str | os.PathLike,
        model: str | None = None,
        progress: Progress | None = None,
        build_config: BuildConfig | None = None,
        vectors_from: str | os.PathLike | None = None,
        backend: BackendSpec | None = None,
    ) -> tuple["Engine", BuildSummary]:
        """A new index of documents that are not files of their own (records of a test collection, say).
        `vectors_from`: another index of the same models whose vectors are reused for unchanged text."""
        folder = IndexFolder(index_dir)
        lender = IndexFolder(vectors_from) if vectors_from is not None else None
        with folder.build_lock(wait=True):
            spec = choose_spec(folder, backend)
            summary = Builder(folder, model, True, build_config or BuildConfig(), progress, lender, mirror_for(spec, True)).run_documents(documents)
            record_spec(folder, spec)
        return cls.open(index_dir), summary

    @staticmethod
    def encoder_identities(model: str | None = None) -> dict[str, str]:
        """What would embed each space of a new index with `model` (None: the default pair), e.g.
        {"zh": "onnx-int8:m3e-small-<hash>"}: loads the encoders."""
        return {space: Encoder(name).identity for space, name in model_plan(model).items()}

    @classmethod
    def prepare_models(cls, model: str | None = None, config: SearchConfig | None = None) -> dict[str, str]:
        """Load (and export, once) every model an index of `model` uses: `encoder_identities`, and the
        model re-reading its cross-lingual queries as "rerank" (`search prepare`, `make install`)."""
        identities = cls.encoder_identities(model)
        rerank_model = (config or SearchConfig()).rerank_model
        if rerank_model and not all(reads_every_language(name) for name in model_plan(model).values()):
            try:
                identities["rerank"] = Encoder(rerank_model).identity
            except SearchError as error:  # queries then keep the fused ranking, with a notice
                identities["rerank"] = f"not available: {error}"
        return identities

    def read_ahead(self) -> int:
        """Bring the index's files into the OS page cache (Generation.read_ahead), for a long-lived
        process such as `search serve`, whose first queries then do not wait on the disk; stops when
        the engine closes. Returns the bytes read. A one-off query has no use for it."""
        return self.generation.read_ahead(self._closing)

    def close(self) -> None:
        self._closing.set()
        self.retriever.close()
        self.backend.close()
        self.passages.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def is_stale(self) -> bool:
        """Whether a newer generation has been published since this engine opened (reopen to see it)."""
        return self.folder.live_name() != self.generation.name

    # ----- querying -------------------------------------------------------------------------

    def analyse(self, text: str, mode: str = "hybrid") -> Query:
        return Query.analyse(text, mode, self.keyword_only, str(self.folder.root))

    @cached_property
    def facets(self) -> Facets:
        """Path, type and tags per file (for filters)."""
        return read_facets(self.generation)

    def retrieve(self, query: Query, depth: int | None = None, filters: Filters | None = None) -> Retrieval:
        """Each retriever's candidates for `query`, `depth` deep (the configured candidates by default)."""
        allowed = self._allowed(filters)
        return self.retriever.retrieve(query, depth or self.config.candidates, allowed)

    def rank(self, retrieval: Retrieval, mode: str = "hybrid", config: SearchConfig | None = None) -> list[tuple[int, float]]:
        """(passage id, score) best first, for one mode; `config` overrides the engine's fusion settings."""
        return self._ranked(retrieval, mode, config)[0]

    def _ranked(self, retrieval: Retrieval, mode: str, config: SearchConfig | None = None) -> tuple[list[tuple[int, float]], Reread | None, str | None]:
        """The ranking, what re-read it (a query that crossed languages), and why it was not re-read
        where it should have been (the multilingual model is not installed)."""
        config = config or self.config
        mode = "bm25" if self.keyword_only else mode
        ranked = (self.policy if config is self.config else Hybrid(config)).rank(retrieval, mode)
        if not CrossLingualReranker.applies(retrieval, mode, config):
            return ranked, None, None
        try:
            reread = self.reranker.rerank(retrieval, ranked, config)
        except SearchError as error:
            return ranked, None, f"note: results not re-read across languages ({error})"
        return reread.ranked, reread, None

    def search(self, query: str | Query, k: int = 10, mode: str = "hybrid", filters: Filters | None = None,
               collapse: bool = True) -> SearchResult:
        """The k best passages for `query`; mode is "hybrid", "bm25" or "dense".

        `filters` (paths, tags, types) restrict the passages before the top-k cut, so k hits come
        back whenever k allowed passages match. With `collapse`, passages whose text is the same
        after normalisation (a dataset's repeated answers, a note copied twice) come back as one hit,
        the best ranked, whose `duplicates` say where the others are; the k hits are k distinct texts
        (the retrievers are asked deeper when copies crowd the candidates).
        """
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise QueryError(f"k must be a whole number from 1 to {MAX_K}, not {k!r}")
        if filters is not None and not isinstance(filters, Filters):
            raise QueryError(f"filters must be search.Filters(paths=..., tags=..., types=...), not {type(filters).__name__}")
        query = query if isinstance(query, Query) else self.analyse(query, mode)
        allowed = self._allowed(filters)
        if allowed is not None and not allowed.mask.any():
            return SearchResult(query, [], filtered_out=f"no passages match the filters ({filters.why_empty(self.facets)})")
        depth = max(k, self.config.candidates)
        while True:
            retrieval = self.retriever.retrieve(query, depth, allowed)
            if len(self.passages) == 0:
                return SearchResult(query)
            ranked, reread, skipped = self._ranked(retrieval, query.mode)
            told = {"reread_by": reread.model if reread and reread.cosines else None, "reread_skipped": skipped}
            reread_cosines = reread.cosines if reread else {}
            if not collapse:
                return SearchResult(query, self._hits(ranked[:k], retrieval, reread_cosines), **told)
            hits = self._distinct(ranked, retrieval, k, reread_cosines)
            if len(hits) >= k or len(ranked) < depth or depth >= min(len(self.passages), MAX_DEPTH):
                return SearchResult(query, hits, **told)
            depth = min(depth * 4, MAX_DEPTH)

    def _distinct(self, ranked: list[tuple[int, float]], retrieval: Retrieval, k: int, reread: dict[int, float]) -> list[Hit]:
        """Up to k hits of distinct texts, best first, each with the locations of its copies among the
        candidates up to COPIES_LOOKAHEAD past the k-th. Copies are told apart by the text keys the
        build saved, so only the hits and their copies are read."""
        chosen: list[tuple[int, float]] = []
        copies: list[list[int]] = []  # the passage ids of each chosen hit's copies, in rank order
        slot_of: dict[bytes, int] = {}
        end = len(ranked)
        for position, (pid, score) in enumerate(ranked):
            if position >= end:
                break
            slot = slot_of.setdefault(self.passages.text_key(pid), len(chosen))
            if slot < len(chosen):
                copies[slot].append(pid)
            elif len(chosen) < k:
                chosen.append((pid, score))
                copies.append([])
                if len(chosen) == k:
                    end = min(end, position + 1 + COPIES_LOOKAHEAD)
        hits = self._hits(chosen, retrieval, reread)
        for hit, pids in zip(hits, copies):
            hit.duplicates.extend(Hit.location_of(passage) for passage in self.passages.get_many(pids))
        return hits

    def _allowed(self, filters: Filters | None) -> Selection | None:
        """What `filters` let through, as a passage mask and as payload conditions; None when they do not restrict."""
        if not filters:
            return None
        facets = self.facets

        def matching_paths() -> tuple[str, ...]:
            matched = facets.row_masks(paths=filters.paths)["path"]
            return tuple(sorted({path for path, ok in zip(facets.paths, matched.tolist()) if ok}))

        return Selection(filters.mask(facets), tuple(sorted({normalise_tag(tag) for tag in filters.tags})),
                         tuple(sorted({normalise_type(kind) for kind in filters.types})),
                         matching_paths if filters.paths else None)

    def _hits(self, ranked: list[tuple[int, float]], retrieval: Retrieval, reread: dict[int, float]) -> list[Hit]:
        bm25_at = {pid: rank for rank, pid in enumerate(retrieval.bm25[0].tolist(), 1)}
        dense_at = {pid: rank for rank, pid in enumerate(retrieval.dense[0].tolist(), 1)}
        penalties = self.policy.hub_penalties(retrieval)
        return [
            Hit(
                path=passage.path, heading_path=passage.heading_path, text=passage.text,
                line_start=passage.line_start, line_end=passage.line_end, metadata=passage.metadata,
                score=float(score), bm25_rank=bm25_at.get(pid), bm25_score=retrieval.bm25_scores.get(pid),
                dense_rank=dense_at.get(pid), dense_score=retrieval.cosines.get(pid), reread_score=reread.get(pid),
                hub_penalty=penalties.get(pid), passage_id=pid,
            )
            for (pid, score), passage in zip(ranked, self.passages.get_many(pid for pid, _ in ranked))
        ]

    # ----- what the index holds ---------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "index": str(self.folder.root),
            "generation": self.generation.name,
            "format_version": self.manifest["format_version"],
            "files": len(self.manifest["files"]),
            "passages": len(self.passages),
            "models": {space: {**{key: value for key, value in info.items() if key != "centre"}, "passages": self.backend.members.size(space),
                               "centred": space in self.retriever.centred} for space, info in self.manifest["models"].items()},
            "backend": self.manifest.get("backend") or {"kind": "embedded"},
            "keyword_only": self.keyword_only,
            "bm25": self.manifest["bm25"],
            # documents whose passages share BM25 windows; None for an index built before they were recorded
            "documents": None if self.retriever.documents is None else int(self.retriever.documents.max(initial=-1)) + 1,
            "size_bytes": self.generation.size_bytes(),
            "built_at": self.manifest["built_at"],
        }

    def files(self) -> list[str]:
        """The paths of the files the index holds, as indexed (absolute)."""
        return sorted(self.manifest["files"])

    def holds(self, path: str | os.PathLike) -> bool:
        return os.fspath(path) in self.manifest["files"]

    def facet_values(self) -> dict[str, list[str]]:
        """The tags, types and folders a filter can ask for."""
        return self.facets.values()
