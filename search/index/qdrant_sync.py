"""Mirroring a new generation into its Qdrant collection, as the last step of a build (before the
generation is sealed and published), through a QdrantEngine (search.index.qdrant_store): a server or
qdrant-client's local mode (search.index.qdrant_client_engine) or Qdrant Edge (search.index.qdrant_edge_engine).

Incremental: the points of passages already in the collection keep their dense vectors (nothing is sent
again but their BM25 weights, which move with the corpus's statistics); new passages are upserted in
batches with their vectors from the generation (embedded once, by the build); passages gone are deleted.
`--rebuild` (or a collection that does not exist yet) fills a new collection ALIAS-<generation>, which
the engine then makes the one queries read in one atomic step (an alias switch on a server; the
generation's own CURRENT switch for Qdrant Edge). Point ids derive from passage keys, so a build killed
at any point leaves a queryable collection and the next build converges to what a clean build writes.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from search.errors import IncompatibleIndex
from search.index.backend import BackendSpec
from search.index.bm25_scoring import BM25Params
from search.index.bm25_window import neighbour_joins
from search.index.dense import DenseIndex, load_vectors, passage_rows
from search.index.facets import read_document_starts, read_facets
from search.index.folder import Generation
from search.index.passage_store import PassageStore, iter_tokens
from search.index.qdrant_store import (BATCH, SPARSE, Field, Point, QdrantEngine, check_bm25, check_layout, from_halves, idf_table, layout,
                                       point_uuid, sparse_weights, target_name, to_halves)
from search.index.report import Progress

__all__ = ["QdrantMirror", "default_collection"]

log = logging.getLogger(__name__)


def default_collection(index_root: str) -> str:
    """The alias an index uses when --collection is not given: search-<index folder name>."""
    name = "".join(char if char.isalnum() or char in "-_" else "-" for char in os.path.basename(os.path.abspath(index_root)))
    return f"search-{name or 'index'}"[:120]


class QdrantMirror:
    """Called by the Builder with the new generation; returns the manifest's "backend" record."""

    def __init__(self, spec: BackendSpec, rebuild: bool, open_engine: Callable[[BackendSpec], QdrantEngine]) -> None:
        self.spec, self.rebuild, self.open_engine = spec, rebuild, open_engine
        open_engine(spec).close()  # an unreachable server or a refused key fails the build now, before any embedding

    def __call__(self, generation: Generation, manifest: dict[str, Any], progress: Progress | None) -> dict[str, Any]:
        params = BM25Params(**manifest["bm25"])
        check_bm25(params, self.spec.idf)
        alias = self.spec.collection or default_collection(str(generation.path.parent))
        engine = self.open_engine(self.spec)
        try:
            return self._sync(engine, alias, generation, manifest, params, progress)
        finally:
            engine.close()

    def _sync(self, engine: QdrantEngine, alias: str, generation: Generation, manifest: dict[str, Any], params: BM25Params,
              progress: Progress | None) -> dict[str, Any]:
        started = time.perf_counter()
        root = os.path.abspath(generation.path.parent)
        live, found = engine.live(alias, root)
        fresh = self.rebuild or live is None
        own, window = _statistics(generation)
        n = own.n
        avg_length = own.total / n if n else 1.0
        avg_window_length = window.total / n if n else 1.0
        idf_mode = self.spec.idf
        if not fresh:
            check_layout(self.spec, live, found, manifest)
            if found.get("index") not in (None, root):  # its points would be taken for stale ones and deleted
                raise IncompatibleIndex(f"collection {alias} at {self.spec.where()} belongs to the index at {found['index']}: "
                                        "choose another --collection, or pass --rebuild to make it this index's")
            # server IDF keeps the collection's mean length until a rebuild, so known points keep their weights
            fresh = found.get("idf") != idf_mode or found.get("bm25") != manifest["bm25"]
            if not fresh and idf_mode == "server":
                avg_length, avg_window_length = float(found["avg_length"]), float(found["avg_window_length"])
        metadata = layout(manifest, idf_mode, avg_length, root, avg_window_length)
        target = target_name(alias, generation.name)
        if fresh:
            engine.create(target, manifest, metadata)
        else:
            target = engine.derive(live, target, metadata)
        ids = _point_ids(generation, manifest)
        np.save(generation.point_ids_file, ids)
        existing = np.zeros((0, 2), dtype=np.uint64) if fresh else engine.existing(target)
        known = _member_of(ids, existing)
        client = idf_mode == "client"
        weights = _Weights(generation, params, Field(idf_table(own.df, n, params) if client else None, avg_length),
                           Field(idf_table(window.df, n, params) if client else None, avg_window_length))
        added, updated = self._write(engine, target, generation, manifest, ids, known, weights, progress)
        stale = existing[~_member_of(existing, ids)] if len(existing) else existing
        for start in range(0, len(stale), BATCH):
            engine.delete(target, from_halves(stale[start : start + BATCH]))
        engine.finish(alias, target, fresh, live)
        log.debug("qdrant: %d points added, %d re-weighted, %d deleted in %s (%.1fs)", added, updated, len(stale), target,
                  time.perf_counter() - started)
        return {"kind": "qdrant", **self.spec.location(), "collection": alias, "target": target, "points": int(len(ids)), "idf": idf_mode,
                "added": added, "reweighted": updated, "deleted": int(len(stale))}

    def _write(self, engine: QdrantEngine, target: str, generation: Generation, manifest: dict[str, Any], ids: np.ndarray,
               known: np.ndarray, weights: "_Weights", progress: Progress | None) -> tuple[int, int]:
        """Upsert new points whole, re-weight the BM25 of known ones."""
        vectors = _Vectors(generation, manifest, len(ids))
        updates: list[tuple[str, Any]] = []
        added = updated = 0

        def new_points() -> Iterator[Point]:
            nonlocal added, updated, updates
            for pid, (passage, sparse) in enumerate(zip(weights.facets(), weights)):
                vector: dict[str, Any] = {SPARSE: sparse} if sparse[0] else {}
                if known[pid]:
                    if vector and self.spec.idf == "client":  # exact weights move with every corpus change
                        updates.append((from_halves(ids[pid : pid + 1])[0], sparse))
                    if len(updates) >= BATCH:
                        engine.reweigh(target, updates)
                        updated += len(updates)
                        updates = []
                    continue
                vector.update(vectors.of(pid))
                added += 1
                if progress is not None:
                    progress("qdrant", 1, len(ids))
                yield from_halves(ids[pid : pid + 1])[0], vector, passage

        engine.upsert(target, new_points())
        if updates:
            engine.reweigh(target, updates)
            updated += len(updates)
        return added, updated


class _Weights:
    """Each passage's BM25 sparse vector and payload, streamed in passage order."""

    def __init__(self, generation: Generation, params: BM25Params, own: Field, window: Field) -> None:
        self.generation, self.params, self.own, self.window = generation, params, own, window

    def __iter__(self) -> Iterator[tuple[list[int], list[float]]]:
        for tokens, window in _tokens_and_windows(self.generation):
            yield sparse_weights(tokens, self.params, self.own, window, self.window)

    def facets(self) -> Iterator[dict[str, Any]]:
        facets = read_facets(self.generation)
        rows = [{"path": path, "tags": sorted(tags), "type": kind} for path, tags, kind in zip(facets.paths, facets.tags, facets.types)]
        for row in facets.passage_row.tolist():
            yield rows[row]


class _Vectors:
    """A passage's dense vector in its space, read from the generation (embedded by the build)."""

    def __init__(self, generation: Generation, manifest: dict[str, Any], n: int) -> None:
        self.spaces = {}
        for space in manifest["models"]:
            index = load_vectors(generation.dense_prefix(space))
            self.spaces[space] = (index, passage_rows(index.ids, n))

    def of(self, pid: int) -> dict[str, list[float]]:
        for space, (index, rows) in self.spaces.items():
            if rows[pid] >= 0:
                return {space: index.vectors_at(np.array([rows[pid]]))[0].tolist()}
        return {}


@dataclass
class _Statistics:
    """One BM25 field's corpus statistics: document frequency of every token, units, total length."""

    df: Counter[str] = field(default_factory=Counter)
    n: int = 0
    total: int = 0

    def add(self, tokens: list[str]) -> None:
        self.df.update(set(tokens))
        self.n += 1
        self.total += len(tokens)


def _statistics(generation: Generation) -> tuple[_Statistics, _Statistics]:
    """The corpus's BM25 statistics over passages, and over their windows."""
    own, window = _Statistics(), _Statistics()
    for tokens, tokens_of_window in _tokens_and_windows(generation):
        own.add(tokens)
        window.add(tokens_of_window)
    return own, window


def _tokens_and_windows(generation: Generation) -> Iterator[tuple[list[str], list[str]]]:
    """Each passage's tokens, and its window's (search.index.bm25_window): its own with those of its
    neighbours in the same document, read in one pass with one passage of lookahead."""
    joins_previous, joins_next = neighbour_joins(read_document_starts(generation))
    tokens = iter_tokens(generation)
    before: list[str] = []
    current = next(tokens, None)
    for pid in range(len(joins_previous)):
        after = next(tokens, None)
        yield current, (before if joins_previous[pid] else []) + current + (after if joins_next[pid] else [])
        before, current = current, after


def _point_ids(generation: Generation, manifest: dict[str, Any]) -> np.ndarray:
    """Every passage's point id, in passage order, as (n, 2) uint64 halves."""
    facets = read_facets(generation)
    keys = {}
    for space in manifest["models"]:
        ids = DenseIndex.load_ids(generation.dense_prefix(space))
        for pid, key in zip(ids.tolist(), np.load(generation.dense_keys_file(space)).tolist()):
            if pid >= 0:  # not a retired row
                keys[pid] = key
    seen: Counter[tuple[int, str]] = Counter()  # texts repeated within a file (row) get an occurrence number
    points = np.zeros((len(facets), 2), dtype=np.uint64)  # 16 bytes a passage, never a list of uuids
    store = PassageStore(generation)
    path = None
    for pid, passage in enumerate(store):
        if passage.path != path:  # a file's passages are consecutive: only its own texts need counting
            seen.clear()
            path = passage.path
        row = int(facets.passage_row[pid])
        occurrence = seen[(row, passage.text)]
        seen[(row, passage.text)] += 1
        points[pid] = to_halves([point_uuid(passage.path, sorted(facets.tags[row]), passage.text, keys.get(pid, 0), occurrence)])[0]
    store.close()
    return points


def _member_of(ids: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Which rows of `ids` are rows of `among` (both (n, 2) uint64)."""
    if len(among) == 0 or len(ids) == 0:
        return np.zeros(len(ids), dtype=bool)
    view = np.dtype([("high", np.uint64), ("low", np.uint64)])
    return np.isin(np.ascontiguousarray(ids).view(view).ravel(), np.ascontiguousarray(among).view(view).ravel())
