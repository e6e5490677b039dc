"""Retrieval evaluation on BEIR-style collections (corpus.jsonl, queries.jsonl, qrels.tsv).

The corpus goes through the same chunking, tokenising and embedding as a user's notes; passage
hits roll up to documents (a document ranks where its best passage ranks). Indexes are cached
under a hash of the corpus and the build settings, so a rerun does not re-embed.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from search import BackendSpec, BuildConfig, Document, Engine, IncompatibleIndex, IndexDamaged, IndexNotFound, Progress, SearchConfig, SearchError

METRICS = ("ndcg@10", "recall@100", "mrr@10")
EVAL_CACHE = Path("indexes") / "eval"


@dataclass
class Collection:
    name: str
    folder: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]  # query id -> {document id: graded relevance > 0}

    def documents(self) -> Iterator[Document]:
        with open(self.folder / "corpus.jsonl", encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                metadata = {"title": record["title"]} if record.get("title") else {}
                yield Document(path=str(record["id"]), text=record.get("text") or "", kind="text", metadata=metadata)


def load_collection(folder: str | Path) -> Collection:
    folder = Path(folder)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels.tsv"):
        if not (folder / name).is_file():
            raise SearchError(f"{folder} is not a test collection: {name} is missing (need corpus.jsonl, queries.jsonl, qrels.tsv)")
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels.tsv", encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t"):
            if len(row) < 3 or not row[2].strip().lstrip("-").isdigit():
                continue  # header or malformed line
            if int(row[2]) > 0:
                qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    queries = {}
    with open(folder / "queries.jsonl", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if str(record["id"]) in qrels and record.get("text", "").strip():
                queries[str(record["id"])] = record["text"]
    return Collection(folder.name, folder, queries, qrels)


# ----- metrics (graded relevance, linear gain, log2 discount as in trec_eval) ------------------


def ndcg_at(ranked: Sequence[str], judged: dict[str, int], k: int = 10) -> float:
    dcg = sum(judged.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    ideal = sum(rel / math.log2(rank + 2) for rank, rel in enumerate(sorted(judged.values(), reverse=True)[:k]))
    return dcg / ideal if ideal > 0 else 0.0


def recall_at(ranked: Sequence[str], judged: dict[str, int], k: int = 100) -> float:
    return len(set(ranked[:k]) & set(judged)) / len(judged) if judged else 0.0


def mrr_at(ranked: Sequence[str], judged: dict[str, int], k: int = 10) -> float:
    for rank, doc in enumerate(ranked[:k], 1):
        if judged.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def score_run(ranked: Sequence[str], judged: dict[str, int]) -> dict[str, float]:
    return {"ndcg@10": ndcg_at(ranked, judged), "recall@100": recall_at(ranked, judged), "mrr@10": mrr_at(ranked, judged)}


def roll_up(ranked_passages: Iterable[int], document_of: Sequence[str], limit: int = 100) -> list[str]:
    """Documents in the order of their best passage."""
    documents: dict[str, None] = {}
    for pid in ranked_passages:
        documents.setdefault(document_of[pid], None)
        if len(documents) == limit:
            break
    return list(documents)


# ----- running an evaluation -------------------------------------------------------------------


def open_eval_index(collection: Collection, model: str | None = None, cache: Path = EVAL_CACHE, progress: Progress | None = None,
                    config: SearchConfig | None = None, backend: BackendSpec | None = None) -> Engine:
    """The collection's index, built once per (corpus, encoders, build settings, backend) and cached.
    Another backend's index borrows the default index's vectors (no re-embedding); Qdrant defaults to
    Qdrant Edge with its shards in a folder beside the cached index."""
    digest = hashlib.sha256()
    with open(collection.folder / "corpus.jsonl", "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    # the encoders' identities (backend, precision, ONNX recipe) too, so a new recipe re-embeds
    identities = Engine.encoder_identities(model)
    digest.update(json.dumps([repr(BuildConfig()), identities, BUILD_VERSION]).encode())
    folder = cache / f"{collection.name}-{digest.hexdigest()[:12]}"
    if backend is not None and backend.kind != "embedded":
        unplaced = not (backend.url or backend.path or backend.edge)  # then Qdrant Edge, the fastest local engine
        kind = backend.kind + ("-edge" if unplaced or backend.edge else "") + ("-server-idf" if backend.idf == "server" else "")
        if unplaced:
            backend = replace(backend, edge=str(folder) + f".{kind}")
        folder = folder.with_name(f"{folder.name}-{kind}")
    try:
        return Engine.open(folder, config=config)
    except (IndexNotFound, IncompatibleIndex, IndexDamaged):  # a cache: build it (again)
        pass
    # an index of this collection built by other code (another tokenizer, say) lends its vectors: the
    # newest one embedded by the same encoders (another model's vectors would lend nothing)
    lenders = sorted((path.parent for path in cache.glob(f"{collection.name}-*/CURRENT") if path.parent != folder),
                     key=lambda path: (_embedded_by(path) == identities, (path / "CURRENT").stat().st_mtime), reverse=True)
    lender = lenders[0] if lenders else None
    Engine.build_documents(collection.documents(), folder, model=model, progress=progress, vectors_from=lender, backend=backend)[0].close()
    return Engine.open(folder, config=config)


def _embedded_by(folder: Path) -> dict[str, str] | None:
    """The encoder identity of each space of a cached index, None if it cannot be read."""
    try:
        with Engine.open(folder) as engine:
            return {space: info["identity"] for space, info in engine.stats()["models"].items()}
    except (SearchError, OSError, ValueError, KeyError):
        return None


# Bump when chunking, tokenising or passage text changes, so cached eval indexes are rebuilt.
# 3: hard length caps on passages and BM25 tokens, index format 3; 4: stemming, colon-introduced lists;
# 5: each space's mean vector in the manifest (search.query.centring)
BUILD_VERSION = 5


@dataclass
class EvalResult:
    queries: int
    scores: dict[str, dict[str, float]]  # configuration -> metric -> mean
    per_query: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # config -> qid -> metrics

    def to_json(self) -> dict:
        return {**self.scores, "queries": self.queries}


def evaluate(
    engine: Engine,
    collection: Collection,
    configs: dict[str, tuple[str, SearchConfig | None]],
    depth: int | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Mean metrics per named configuration; each config is (mode, fusion settings or None)."""
    document_of = [passage.path for passage in engine.passages]
    depth = depth or engine.config.candidates
    modes = {mode for mode, _ in configs.values()}
    need = modes.pop() if len(modes) == 1 else "hybrid"  # retrieve only what the configs use
    per_query: dict[str, dict[str, dict[str, float]]] = {name: {} for name in configs}
    for qid, text in collection.queries.items():
        if progress is not None:
            progress(f"eval {collection.name}", 1, len(collection.queries))
        retrieval = engine.retrieve(engine.analyse(text, need), depth)
        for name, (mode, config) in configs.items():
            ranked = roll_up((pid for pid, _ in engine.rank(retrieval, mode, config)), document_of)
            per_query[name][qid] = score_run(ranked, collection.qrels[qid])
    scores = {
        name: {metric: round(float(np.mean([q[metric] for q in runs.values()])), 4) for metric in METRICS}
        for name, runs in per_query.items()
    }
    return EvalResult(len(collection.queries), scores, per_query)


def sweep_configs(base: SearchConfig) -> dict[str, tuple[str, SearchConfig]]:
    """A grid over fusion method, retriever weights and the RRF constant, and the default without its hub rule."""
    grid: dict[str, tuple[str, SearchConfig]] = {}
    for k, dense_weight in itertools.product((10, 30, 60), (0.5, 1.0, 1.5, 2.0, 3.0)):
        config = SearchConfig(**{**asdict(base), "fusion": "rrf", "rrf_k": k, "dense_weight": dense_weight, "bm25_weight": 1.0})
        grid[f"rrf k={k} dense={dense_weight}"] = ("hybrid", config)
    for fusion, alpha in itertools.product(("weighted", "zscore"), (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)):
        config = SearchConfig(**{**asdict(base), "fusion": fusion, "dense_weight": alpha, "bm25_weight": round(1 - alpha, 2)})
        grid[f"{fusion} dense={alpha}"] = ("hybrid", config)
    grid["zscore without the hub rule"] = ("hybrid", SearchConfig(**{**asdict(base), "hub_penalty": 0.0}))
    return grid


def write_per_query(path: str | Path, result: EvalResult) -> None:
    """One row per (configuration, query): paired comparison of two runs is a join on query_id."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["config", "query_id", *METRICS])
        for name, runs in result.per_query.items():
            for qid, metrics in runs.items():
                writer.writerow([name, qid, *(f"{metrics[m]:.4f}" for m in METRICS)])
