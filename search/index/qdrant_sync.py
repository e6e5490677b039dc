"""Mirroring a new generation into its Qdrant collection, as the last step of a build (before the
generation is sealed and published).

Incremental: the points of passages already in the collection keep their dense vectors (nothing is sent
again but their BM25 weights, which move with the corpus's statistics); new passages are upserted in
parallel batches with their vectors from the generation (embedded once, by the build); passages gone
are deleted. `--rebuild` (or a collection that does not exist yet) fills a new collection
ALIAS-<generation> and then switches the alias to it in one atomic call, so queries never see half a
rebuild; older collections of the alias are dropped after the switch. Point ids derive from passage
keys, so a build killed at any point leaves the previous collection queryable (an incremental one
partly updated) and the next build converges to what a clean build writes.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from typing import Any, Iterator

import numpy as np

from search.errors import IncompatibleIndex, SearchError
from search.index.backend import BackendSpec
from search.index.bm25_scoring import BM25Params
from search.index.dense import DenseIndex
from search.index.facets import read_facets
from search.index.folder import Generation
from search.index.passage_store import PassageStore, iter_tokens
from search.index.qdrant_store import (SPARSE, check_bm25, check_layout, client_for, from_halves, guarded, idf_table,
                                       layout, point_uuid, release, sparse_weights, to_halves)
from search.index.report import Progress

__all__ = ["QdrantMirror", "default_collection"]

log = logging.getLogger(__name__)

BATCH = 256  # points per request
SCROLL = 4096  # point ids per page when listing a collection


def default_collection(index_root: str) -> str:
    """The alias an index uses when --collection is not given: search-<index folder name>."""
    name = "".join(char if char.isalnum() or char in "-_" else "-" for char in os.path.basename(os.path.abspath(index_root)))
    return f"search-{name or 'index'}"[:120]


class QdrantMirror:
    """Called by the Builder with the new generation; returns the manifest's "backend" record."""

    def __init__(self, spec: BackendSpec, rebuild: bool) -> None:
        self.spec, self.rebuild = spec, rebuild
        client_for(spec)  # an unreachable server or a refused key fails the build now, before any embedding
        release(spec)

    def __call__(self, generation: Generation, manifest: dict[str, Any], progress: Progress | None) -> dict[str, Any]:
        params = BM25Params(**manifest["bm25"])
        check_bm25(params, self.spec.idf)
        alias = self.spec.collection or default_collection(str(generation.path.parent))
        client = client_for(self.spec)
        try:
            with guarded(self.spec):
                return self._sync(client, alias, generation, manifest, params, progress)
        finally:
            release(self.spec)

    def _sync(self, client: Any, alias: str, generation: Generation, manifest: dict[str, Any], params: BM25Params,
              progress: Progress | None) -> dict[str, Any]:
        started = time.perf_counter()
        root = os.path.abspath(generation.path.parent)
        target = _alias_target(client, alias)
        fresh = self.rebuild or target is None
        df, n, total = _statistics(generation)
        avg_length = total / n if n else 1.0
        idf_mode = self.spec.idf
        if not fresh:
            found = client.get_collection(target).config.metadata
            check_layout(self.spec, target, found, manifest)
            if found.get("index") not in (None, root):  # its points would be taken for stale ones and deleted
                raise IncompatibleIndex(f"collection {alias} at {self.spec.where()} belongs to the index at {found['index']}: "
                                        "choose another --collection, or pass --rebuild to make it this index's")
            # server IDF keeps the collection's mean length until a rebuild, so known points keep their weights
            fresh = found.get("idf") != idf_mode or found.get("bm25") != manifest["bm25"]
            if not fresh and idf_mode == "server":
                avg_length = float(found["avg_length"])
        if fresh:
            target = f"{alias}-{generation.name[len('gen-'):]}"
            _create(client, target, manifest, layout(manifest, idf_mode, avg_length, root), server=bool(self.spec.url))
        else:
            client.update_collection(target, metadata=layout(manifest, idf_mode, avg_length, root))
        ids = _point_ids(generation, manifest)
        np.save(generation.point_ids_file, ids)
        existing = np.zeros((0, 2), dtype=np.uint64) if fresh else _existing(client, target)
        known = _member_of(ids, existing)
        weights = _Weights(generation, params, idf_table(df, n, params) if idf_mode == "client" else None, avg_length)
        added, updated = self._write(client, target, generation, manifest, ids, known, weights, progress)
        stale = existing[~_member_of(existing, ids)] if len(existing) else existing
        from qdrant_client import models

        for start in range(0, len(stale), BATCH):
            client.delete(target, points_selector=models.PointIdsList(points=from_halves(stale[start : start + BATCH])), wait=True)
        if fresh:
            _switch_alias(client, alias, target)
        _drop_others(client, alias, target)
        log.debug("qdrant: %d points added, %d re-weighted, %d deleted in %s (%.1fs)", added, updated, len(stale), target,
                 time.perf_counter() - started)
        return {"kind": "qdrant", **{key: value for key, value in (("url", self.spec.url), ("path", self.spec.path)) if value},
                "collection": alias, "target": target, "points": int(len(ids)), "idf": idf_mode,
                "added": added, "reweighted": updated, "deleted": int(len(stale))}

    def _write(self, client: Any, target: str, generation: Generation, manifest: dict[str, Any], ids: np.ndarray,
               known: np.ndarray, weights: "_Weights", progress: Progress | None) -> tuple[int, int]:
        """Upsert new points whole (parallel batches to a server), re-weight the BM25 of known ones."""
        from qdrant_client import models

        vectors = _Vectors(generation, manifest, len(ids))
        updates: list[Any] = []
        added = updated = 0

        def new_points() -> Iterator[Any]:
            nonlocal added, updated
            for pid, (passage, sparse) in enumerate(zip(weights.facets(), weights)):
                vector = {SPARSE: models.SparseVector(indices=sparse[0], values=sparse[1])} if sparse[0] else {}
                if known[pid]:
                    if vector and self.spec.idf == "client":  # exact weights move with every corpus change
                        updates.append(models.PointVectors(id=from_halves(ids[pid : pid + 1])[0], vector=vector))
                    if len(updates) >= BATCH:
                        client.update_vectors(target, points=updates, wait=True)
                        updated += len(updates)
                        updates.clear()
                    continue
                vector.update(vectors.of(pid))
                added += 1
                if progress is not None:
                    progress("qdrant", 1, len(ids))
                yield models.PointStruct(id=from_halves(ids[pid : pid + 1])[0], vector=vector, payload=passage)

        parallel = 1 if self.spec.path else min(4, os.cpu_count() or 1)
        client.upload_points(target, points=new_points(), batch_size=BATCH, parallel=parallel, wait=True)
        if updates:
            client.update_vectors(target, points=updates, wait=True)
            updated += len(updates)
        return added, updated


class _Weights:
    """Each passage's BM25 sparse vector and payload, streamed in passage order."""

    def __init__(self, generation: Generation, params: BM25Params, idf_of: dict[str, float] | None, avg_length: float) -> None:
        self.generation, self.params, self.idf_of, self.avg_length = generation, params, idf_of, avg_length

    def __iter__(self) -> Iterator[tuple[list[int], list[float]]]:
        for tokens in iter_tokens(self.generation):
            yield sparse_weights(tokens, self.params, self.idf_of, self.avg_length)

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
            index = DenseIndex.load(generation.dense_prefix(space), mmap=True)
            rows = np.full(n, -1, dtype=np.int64)
            rows[index.ids] = np.arange(len(index.ids))
            self.spaces[space] = (index, rows)

    def of(self, pid: int) -> dict[str, list[float]]:
        for space, (index, rows) in self.spaces.items():
            if rows[pid] >= 0:
                return {space: index.vectors_at(np.array([rows[pid]]))[0].tolist()}
        return {}


def _statistics(generation: Generation) -> tuple[dict[str, int], int, int]:
    """Document frequency of every token, passages, and their total length: the corpus's BM25 statistics."""
    df: Counter[str] = Counter()
    n = total = 0
    for tokens in iter_tokens(generation):
        df.update(set(tokens))
        n += 1
        total += len(tokens)
    return df, n, total


def _point_ids(generation: Generation, manifest: dict[str, Any]) -> np.ndarray:
    """Every passage's point id, in passage order, as (n, 2) uint64 halves."""
    facets = read_facets(generation)
    keys = {}
    for space in manifest["models"]:
        ids = DenseIndex.load_ids(generation.dense_prefix(space))
        for pid, key in zip(ids.tolist(), np.load(generation.dense_keys_file(space)).tolist()):
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


def _existing(client: Any, collection: str) -> np.ndarray:
    """The ids of every point in the collection."""
    found, offset = [], None
    while True:
        points, offset = client.scroll(collection, limit=SCROLL, offset=offset, with_payload=False, with_vectors=False)
        found.append(to_halves([point.id for point in points]))
        if offset is None:
            return np.concatenate(found)


def _alias_target(client: Any, alias: str) -> str | None:
    for item in client.get_aliases().aliases:
        if item.alias_name == alias and client.collection_exists(item.collection_name):
            return item.collection_name
    return None


def _create(client: Any, name: str, manifest: dict[str, Any], metadata: dict[str, Any], server: bool) -> None:
    """A new collection: a named dense vector per space, the BM25 sparse vector, payload indexes."""
    from qdrant_client import models

    if client.collection_exists(name):  # a rebuild of this same generation killed earlier
        client.delete_collection(name)
    cluster = cluster_settings() if server else {}
    on_disk = cluster.pop("on_disk", None)
    dense = {space: models.VectorParams(size=int(info["dim"]), distance=models.Distance.DOT, on_disk=on_disk)
             for space, info in manifest["models"].items()}
    modifier = models.Modifier.IDF if metadata["idf"] == "server" else None  # Qdrant's IDF is Lucene's formula
    sparse = models.SparseVectorParams(modifier=modifier, index=models.SparseIndexParams(on_disk=on_disk) if on_disk else None)
    client.create_collection(name, vectors_config=dense, sparse_vectors_config={SPARSE: sparse}, metadata=metadata,
                             on_disk_payload=on_disk, **cluster)
    if server:  # local mode scans payloads (and warns that indexes have no effect there)
        for field in ("path", "tags", "type"):
            client.create_payload_index(name, field, models.PayloadSchemaType.KEYWORD, wait=True)


def cluster_settings() -> dict[str, Any]:
    """A new collection's layout on a cluster, from the environment (read when a collection is created):
    SEARCH_QDRANT_SHARDS (shard_number), SEARCH_QDRANT_REPLICATION_FACTOR (replication_factor, copies of
    each shard on different nodes), SEARCH_QDRANT_ON_DISK=1 (vectors, sparse index and payload on disk)."""
    settings: dict[str, Any] = {}
    for variable, key in (("SEARCH_QDRANT_SHARDS", "shard_number"), ("SEARCH_QDRANT_REPLICATION_FACTOR", "replication_factor")):
        value = os.environ.get(variable)
        if value:
            if not value.isdigit() or int(value) < 1:
                raise SearchError(f"{variable}={value!r}: give a whole number of at least 1")
            settings[key] = int(value)
    if os.environ.get("SEARCH_QDRANT_ON_DISK", "") not in ("", "0"):
        settings["on_disk"] = True
    return settings


def _switch_alias(client: Any, alias: str, target: str) -> None:
    """Point the alias at `target` in one request (delete and create are applied together)."""
    from qdrant_client import models

    operations = [models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=target, alias_name=alias))]
    if any(item.alias_name == alias for item in client.get_aliases().aliases):
        operations.insert(0, models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
    client.update_collection_aliases(change_aliases_operations=operations)


def _drop_others(client: Any, alias: str, keep: str) -> None:
    """Collections of earlier (or killed) rebuilds of this alias."""
    prefix = f"{alias}-"
    for item in client.get_collections().collections:
        if item.name.startswith(prefix) and item.name != keep and item.name[len(prefix):][:1].isdigit():
            client.delete_collection(item.name)
