"""Qdrant Edge (qdrant-edge-py: Qdrant's own Rust engine, in process) as a QdrantEngine
(search.index.qdrant_store): the fast local stand-in for a server, `--qdrant-edge DIR`.

Edge has shards, not collections: no aliases and no collection metadata. So the backend does what the
index folder already does for its generations: a shard is never changed once a generation names it.
A build copies the live generation's shard to DIR/ALIAS-<new generation> (or creates it: --rebuild, a
first build), applies the incremental changes to the copy, flushes it, and the new generation's
manifest names it; the index's own CURRENT switch then publishes the generation and its shard in one
atomic step. That is how --rebuild (and every build) stays atomic without an alias: queries never see
a half-written shard, and a build killed at any point leaves an unpublished folder that the next build
deletes. DIR keeps the shards of the live and of the previous generation (a query that read CURRENT
just before the switch may still open the previous one), as the index folder keeps those generations.

Shards are made without Edge's write-ahead log: its lock lets one process at a time open a shard, while
a published shard is only read (durability comes from flush and fsync before the publish). A build
opens each shard once more after closing it, because Edge's first open still rewrites some of its files
(edge_config.json, tracker journals); after that, any number of processes read it at once. What a
server keeps in a collection's metadata (the layout, the index folder that writes it) is search.json in
the shard's folder.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from search.errors import BackendError, SearchError
from search.index.backend import BackendSpec
from search.index.file_io import copy_range, fsync_tree, write_atomic
from search.index.folder import IndexFolder
from search.index.qdrant_store import PAYLOAD_FIELDS, SCROLL, SPARSE, Point, Sparse, from_sparse, scrolled_ids, targets_of

__all__ = ["EdgeEngine"]

METADATA = "search.json"
EDGE_BATCH = 1024  # points per update: in process, a bigger batch only saves calls

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _guarded(method: _Method) -> _Method:
    """What qdrant-edge raises (a plain Exception with the engine's message) as one line (BackendError)."""

    @functools.wraps(method)
    def wrapper(self: "EdgeEngine", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (SearchError, OSError):
            raise
        except Exception as error:  # noqa: BLE001 - the bindings raise Exception itself
            detail = " ".join(str(error).split())[:200] or type(error).__name__
            raise BackendError(f"Qdrant Edge failed in {self.spec.where()} ({detail}): run `search index --rebuild` "
                               "to make the index's shard again") from None

    return wrapper  # type: ignore[return-value]


class EdgeEngine:
    """The shards of one --qdrant-edge folder that this build or this engine has open."""

    def __init__(self, spec: BackendSpec) -> None:
        import qdrant_edge  # noqa: F401 - fails here, before a build embeds anything, if it is not installed

        self.spec = spec
        self.root = Path(spec.edge)
        self._shards: dict[str, Any] = {}
        self._ours: str | None = None  # the live generation's shard (kept for the predecessor's queries)

    def close(self) -> None:
        shards, self._shards = self._shards, {}
        for shard in shards.values():
            with contextlib.suppress(Exception):
                shard.close()

    @_guarded
    def _open(self, name: str) -> Any:
        from qdrant_edge import EdgeShard

        return EdgeShard.load(str(self.root / name))

    def _names(self, alias: str) -> list[str]:
        """The shard folders of `alias`, oldest first (their names end in the generation's stamp)."""
        return sorted(targets_of(alias, os.listdir(self.root))) if self.root.is_dir() else []

    # ----- building -------------------------------------------------------------------------------

    def live(self, alias: str, root: str) -> tuple[str | None, dict[str, Any] | None]:
        names = self._names(alias)
        record = _live_record(root)
        if (record.get("edge"), record.get("collection")) == (self.spec.edge, alias) and record.get("target") in names:
            self._ours = record["target"]
            return self._ours, self.metadata(self._ours)
        for name in reversed(names):  # another index's shard of this collection: the mirror refuses it
            found = self.metadata(name)
            if found and found.get("index") not in (None, root):
                return name, found
        return None, None

    @_guarded
    def create(self, target: str, manifest: dict[str, Any], metadata: dict[str, Any]) -> None:
        from qdrant_edge import (Distance, EdgeConfig, EdgeShard, EdgeSparseVectorParams, EdgeVectorParams, Modifier,
                                 PayloadSchemaType, UpdateOperation)

        path = self.root / target
        shutil.rmtree(path, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        dense = {space: EdgeVectorParams(size=int(info["dim"]), distance=Distance.Dot) for space, info in manifest["models"].items()}
        sparse = EdgeSparseVectorParams(modifier=Modifier.Idf if metadata["idf"] == "server" else None)  # Qdrant's IDF is Lucene's
        shard = EdgeShard.create(str(path), EdgeConfig(vectors=dense, sparse_vectors={SPARSE: sparse}, wal_enabled=False))
        self._shards[target] = shard
        for field in PAYLOAD_FIELDS:
            shard.update(UpdateOperation.create_field_index(field, PayloadSchemaType.Keyword))
        write_atomic(path / METADATA, json.dumps(metadata).encode("utf-8"))

    def derive(self, live: str, target: str, metadata: dict[str, Any]) -> str:
        """A copy of the live shard: published shards are never written (other processes read them)."""
        path = self.root / target
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(self.root / live, path, copy_function=_copy_sparse)
        write_atomic(path / METADATA, json.dumps(metadata).encode("utf-8"))
        self._shards[target] = self._open(target)
        return target

    @_guarded
    def existing(self, target: str) -> np.ndarray:
        from qdrant_edge import ScrollRequest

        return scrolled_ids(lambda offset: self._shards[target].scroll(ScrollRequest(offset=offset, limit=SCROLL, with_payload=False, with_vector=False)))

    @_guarded
    def upsert(self, target: str, points: Iterator[Point]) -> None:
        from qdrant_edge import Point as EdgePoint
        from qdrant_edge import UpdateOperation

        shard, batch = self._shards[target], []
        for point_id, vectors, payload in points:
            batch.append(EdgePoint(id=point_id, vector={name: _to_edge(value) for name, value in vectors.items()}, payload=payload))
            if len(batch) >= EDGE_BATCH:
                shard.update(UpdateOperation.upsert_points(batch))
                batch = []
        if batch:
            shard.update(UpdateOperation.upsert_points(batch))

    @_guarded
    def reweigh(self, target: str, batch: list[tuple[str, Sparse]]) -> None:
        from qdrant_edge import PointVectors, UpdateOperation

        self._shards[target].update(UpdateOperation.update_vectors([PointVectors(id=point_id, vector={SPARSE: _to_edge(sparse)})
                                                                    for point_id, sparse in batch]))

    @_guarded
    def delete(self, target: str, ids: list[str]) -> None:
        from qdrant_edge import UpdateOperation

        self._shards[target].update(UpdateOperation.delete_points(ids))

    @_guarded
    def finish(self, alias: str, target: str, fresh: bool, live: str | None) -> None:
        """Flush and close the new shard, settle it (see the module docstring), fsync it; then drop the
        shards no index state names (killed builds, generations before the live one, and under --rebuild
        another index's, which makes the collection this index's)."""
        shard = self._shards.pop(target)
        shard.flush()
        shard.close()
        self._open(target).close()
        fsync_tree(self.root / target)
        for name in self._names(alias):
            if name not in (target, self._ours):
                shutil.rmtree(self.root / name, ignore_errors=True)

    # ----- searching ------------------------------------------------------------------------------

    def searched(self, record: dict[str, Any]) -> str:
        """The generation's own shard (named by its manifest, so no pointer file is needed)."""
        target = str(record.get("target") or "")
        if not target or not (self.root / target / METADATA).is_file():
            raise BackendError(f"the Qdrant Edge shard {self.root / target} is missing: run `search index --rebuild` to fill it again")
        if target not in self._shards:
            self._shards[target] = self._open(target)
        return target

    def metadata(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / name / METADATA).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    @_guarded
    def query(self, name: str, vector: Any, using: str, k: int, conditions: list[tuple[str, list[str]]],
              ids: list[str] | None) -> list[tuple[Any, float]]:
        from qdrant_edge import FieldCondition, Filter, HasIdCondition, MatchAny, Query, QueryRequest

        must: list[Any] = [FieldCondition(key=key, match=MatchAny(any=values)) for key, values in conditions]
        if ids is not None:
            must.append(HasIdCondition(point_ids=set(ids)))
        request = QueryRequest(limit=k, query=Query.Nearest(_to_edge(vector), using=using), filter=Filter(must=must) if must else None,
                               with_payload=False, with_vector=False)
        return [(point.id, point.score) for point in self._shards[name].query(request)]

    @_guarded
    def vectors(self, name: str, ids: list[str], using: str) -> dict[str, Any]:
        records = self._shards[name].retrieve(ids, with_payload=False, with_vector=[using])
        return {str(record.id): from_sparse((record.vector or {}).get(using)) for record in records}


def _to_edge(value: Any) -> Any:
    """A dense list as it is, a sparse (indices, values) as qdrant-edge's SparseVector."""
    if isinstance(value, tuple):
        from qdrant_edge import SparseVector

        return SparseVector(indices=value[0], values=value[1])
    return value


def _live_record(root: str) -> dict[str, Any]:
    """The backend record of the index's live generation ({} when there is none, or it cannot be read)."""
    try:
        return IndexFolder(root).current().read_manifest().get("backend") or {}
    except SearchError:
        return {}


def _copy_sparse(source: str, destination: str) -> None:
    """Copy a file's data and leave its holes holes: Edge preallocates its storage files (32 MiB
    chunks, mostly unwritten), which a plain copy would fill with zeros, on every build."""
    with open(source, "rb") as src, open(destination, "wb") as dst:
        size, offset = os.fstat(src.fileno()).st_size, 0
        while offset < size:
            try:
                start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError as error:  # ENXIO: only a hole is left
                if error.errno != errno.ENXIO:
                    raise
                break
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            copy_range(src.fileno(), dst.fileno(), start, end, target_at=start)
            offset = end
        dst.truncate(size)
    shutil.copystat(source, destination)
