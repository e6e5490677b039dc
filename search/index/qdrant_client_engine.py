"""The Qdrant behind qdrant-client: a server or cluster (--qdrant-url), or qdrant-client's local mode
(--qdrant-path, its pure-Python engine in process), as a search.index.qdrant_store.QdrantEngine.

A collection is updated in place by incremental builds (a server has no cheap copy of a collection);
`--rebuild` fills a new collection ALIAS-<generation> and switches the alias to it in one
`update_collection_aliases` call, so queries, which read the alias, never see half a rebuild.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import threading
import warnings
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from search.errors import BackendError, SearchError
from search.index.backend import BackendSpec
from search.index.qdrant_store import BATCH, PAYLOAD_FIELDS, SCROLL, SPARSE, Point, Sparse, from_sparse, scrolled_ids, targets_of

__all__ = ["ClientEngine", "client_for", "cluster_settings", "guarded", "release"]

log = logging.getLogger(__name__)

MIN_SERVER = (1, 10)  # query_points with named sparse vectors and prefetch
_TIMEOUT = 60  # seconds a server request may take

_clients: dict[str, tuple[Any, int]] = {}  # local folder or URL -> (client, users): one per process
_clients_lock = threading.Lock()


def _key(spec: BackendSpec) -> str:
    return f"url:{spec.url}" if spec.url else f"path:{os.path.abspath(spec.path) if spec.path != ':memory:' else ':memory:'}"


def client_for(spec: BackendSpec) -> Any:
    """The process's client for the backend (shared: local mode lets one client hold a folder, and a
    server gains nothing from several); checks the server's version. Give it back with `release`."""
    from qdrant_client import QdrantClient

    key = _key(spec)
    with _clients_lock:
        if key in _clients:
            client, users = _clients[key]
            _clients[key] = (client, users + 1)
            return client
        with guarded(spec):
            if spec.url:
                with warnings.catch_warnings(record=True) as caught:  # the library logs; the CLI shows it as one line
                    warnings.simplefilter("always")
                    client = QdrantClient(url=spec.url, api_key=spec.api_key, timeout=_TIMEOUT, check_compatibility=False)
                for warning in caught:
                    log.warning("qdrant: %s (%s)", warning.message, spec.url)
                _check_version(spec, client.info().version)
            else:
                if spec.path != ":memory:":
                    os.makedirs(spec.path, exist_ok=True)
                client = QdrantClient(path=spec.path) if spec.path != ":memory:" else QdrantClient(":memory:")
        _clients[key] = (client, 1)
        return client


@atexit.register
def _close_all() -> None:
    """Close the clients an unclosed engine left open while the interpreter can still do it (qdrant-client's
    own __del__ then runs too late and prints an ImportError)."""
    with _clients_lock:
        clients = [client for client, _ in _clients.values()]
        _clients.clear()
    for client in clients:
        with contextlib.suppress(Exception):
            client.close()


def release(spec: BackendSpec) -> None:
    """One user fewer; the last one closes the client (and frees a local folder for other processes)."""
    key = _key(spec)
    with _clients_lock:
        client, users = _clients.get(key, (None, 0))
        if client is None:
            return
        if users > 1:
            _clients[key] = (client, users - 1)
            return
        del _clients[key]
    with contextlib.suppress(Exception):
        client.close()


def _check_version(spec: BackendSpec, version: str) -> None:
    parts = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if parts < MIN_SERVER:
        raise BackendError(f"the Qdrant server at {spec.url} runs version {version}; this backend needs "
                           f"{'.'.join(map(str, MIN_SERVER))} or newer: upgrade the server")


@contextlib.contextmanager
def guarded(spec: BackendSpec) -> Iterator[None]:
    """Turn what qdrant-client raises into one line that says what to do (BackendError)."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    try:
        yield
    except BackendError:
        raise
    except UnexpectedResponse as error:
        if error.status_code in (401, 403):
            raise BackendError(f"the Qdrant server at {spec.url} refused the API key (HTTP {error.status_code}): "
                               "set SEARCH_QDRANT_API_KEY to a key of that server") from None
        raise BackendError(f"the Qdrant server at {spec.where()} answered HTTP {error.status_code} "
                           f"({_short(error.content)}): check the server's log") from None
    except (ResponseHandlingException, ConnectionError, TimeoutError) as error:
        raise BackendError(f"cannot reach the Qdrant server at {spec.url} ({_short(error)}): start it, or check "
                           "--qdrant-url / SEARCH_QDRANT_URL; the local index is untouched") from None
    except RuntimeError as error:
        if "already accessed" in str(error):
            raise BackendError(f"the Qdrant local folder {spec.path} is open in another process (a build or a "
                               "server): local mode allows one process at a time; use a Qdrant server to share it") from None
        raise


def _short(value: Any) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(getattr(value, "source", value))
    return " ".join(text.split())[:160] or "no detail"


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _guarded_method(method: _Method) -> _Method:
    @functools.wraps(method)
    def wrapper(self: "ClientEngine", *args: Any, **kwargs: Any) -> Any:
        with guarded(self.spec):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class ClientEngine:
    """One user of the process's client for `spec` (see client_for): an unreachable server or a refused
    key fails here, before a build embeds anything."""

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.client = client_for(spec)

    def close(self) -> None:
        if self.client is not None:
            self.client = None
            release(self.spec)

    # ----- building -------------------------------------------------------------------------------

    @_guarded_method
    def live(self, alias: str, root: str) -> tuple[str | None, dict[str, Any] | None]:
        for item in self.client.get_aliases().aliases:
            if item.alias_name == alias and self.client.collection_exists(item.collection_name):
                return item.collection_name, self.client.get_collection(item.collection_name).config.metadata
        return None, None

    @_guarded_method
    def create(self, target: str, manifest: dict[str, Any], metadata: dict[str, Any]) -> None:
        """Named dense vectors per space, the BM25 sparse vector, payload indexes (on a server)."""
        from qdrant_client import models

        if self.client.collection_exists(target):  # a rebuild of this same generation killed earlier
            self.client.delete_collection(target)
        server = bool(self.spec.url)
        cluster = cluster_settings() if server else {}
        on_disk = cluster.pop("on_disk", None)
        dense = {space: models.VectorParams(size=int(info["dim"]), distance=models.Distance.DOT, on_disk=on_disk)
                 for space, info in manifest["models"].items()}
        modifier = models.Modifier.IDF if metadata["idf"] == "server" else None  # Qdrant's IDF is Lucene's formula
        sparse = models.SparseVectorParams(modifier=modifier, index=models.SparseIndexParams(on_disk=on_disk) if on_disk else None)
        self.client.create_collection(target, vectors_config=dense, sparse_vectors_config={SPARSE: sparse}, metadata=metadata,
                                      on_disk_payload=on_disk, **cluster)
        if server:  # local mode scans payloads (and warns that indexes have no effect there)
            for field in PAYLOAD_FIELDS:
                self.client.create_payload_index(target, field, models.PayloadSchemaType.KEYWORD, wait=True)

    @_guarded_method
    def derive(self, live: str, target: str, metadata: dict[str, Any]) -> str:
        self.client.update_collection(live, metadata=metadata)
        return live  # updated in place: the alias keeps naming it

    @_guarded_method
    def existing(self, target: str) -> np.ndarray:
        return scrolled_ids(lambda offset: self.client.scroll(target, limit=SCROLL, offset=offset, with_payload=False, with_vectors=False))

    @_guarded_method
    def upsert(self, target: str, points: Iterator[Point]) -> None:
        from qdrant_client import models

        structs = (models.PointStruct(id=point_id, vector={name: _to_model(value) for name, value in vectors.items()}, payload=payload)
                   for point_id, vectors, payload in points)
        parallel = 1 if self.spec.path else min(4, os.cpu_count() or 1)  # parallel batches to a server
        self.client.upload_points(target, points=structs, batch_size=BATCH, parallel=parallel, wait=True)

    @_guarded_method
    def reweigh(self, target: str, batch: list[tuple[str, Sparse]]) -> None:
        from qdrant_client import models

        self.client.update_vectors(target, points=[models.PointVectors(id=point_id, vector={SPARSE: _to_model(sparse)})
                                                   for point_id, sparse in batch], wait=True)

    @_guarded_method
    def delete(self, target: str, ids: list[str]) -> None:
        from qdrant_client import models

        self.client.delete(target, points_selector=models.PointIdsList(points=ids), wait=True)

    @_guarded_method
    def finish(self, alias: str, target: str, fresh: bool, live: str | None) -> None:
        if fresh:
            _switch_alias(self.client, alias, target)
        for name in targets_of(alias, [item.name for item in self.client.get_collections().collections]):
            if name != target:  # collections of earlier (or killed) rebuilds of this alias
                self.client.delete_collection(name)

    # ----- searching ------------------------------------------------------------------------------

    @_guarded_method
    def searched(self, record: dict[str, Any]) -> str:
        alias = record["collection"]
        if not self.client.collection_exists(alias):
            raise BackendError(f"the Qdrant collection {alias} is missing at {self.spec.where()}: "
                               "run `search index --rebuild` to fill it again")
        return alias

    @_guarded_method
    def metadata(self, name: str) -> dict[str, Any] | None:
        return self.client.get_collection(name).config.metadata

    @_guarded_method
    def query(self, name: str, vector: Any, using: str, k: int, conditions: list[tuple[str, list[str]]],
              ids: list[str] | None) -> list[tuple[Any, float]]:
        from qdrant_client import models

        must: list[Any] = [models.FieldCondition(key=key, match=models.MatchAny(any=values)) for key, values in conditions]
        if ids is not None:
            must.append(models.HasIdCondition(has_id=ids))
        found = self.client.query_points(name, query=_to_model(vector), using=using, query_filter=models.Filter(must=must) if must else None,
                                         limit=k, with_payload=False, with_vectors=False).points
        return [(point.id, point.score) for point in found]

    @_guarded_method
    def vectors(self, name: str, ids: list[str], using: str) -> dict[str, Any]:
        found = self.client.retrieve(name, ids=ids, with_payload=False, with_vectors=[using])
        return {str(point.id): from_sparse((point.vector or {}).get(using)) for point in found}


def _to_model(value: Any) -> Any:
    """A dense list as it is, a sparse (indices, values) as qdrant-client's SparseVector."""
    if isinstance(value, tuple):
        from qdrant_client import models

        return models.SparseVector(indices=value[0], values=value[1])
    return value


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
