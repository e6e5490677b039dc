"""What the Qdrant backend shares between building and searching: the client, errors a person
understands, the collection's layout, point ids and BM25 sparse vectors.

Layout of a collection (one per index, behind an alias; `--rebuild` fills a new one and switches the
alias): a sparse vector "bm25" per passage holding this project's jieba/stemmed BM25 tokens, each
weighted with the full BM25 term weight (idf x length-normalised tf, search.index.bm25_scoring), so a
query whose sparse vector holds each query token's count scores every passage with exactly the default
backend's BM25 (a dot product); one named dense vector per embedding space (dot product over
L2-normalised vectors = cosine); payload path, tags (normalised) and type, each with a keyword index, so
filters apply inside the search, before the top k. Point ids are uuid5 of a passage's key (path, tags,
text, vector key, occurrence), so a rerun or a resumed build writes the same points.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import threading
import uuid
import warnings
from collections import Counter
from typing import Any, Iterator, Sequence

import numpy as np

from search.errors import BackendError, IncompatibleIndex
from search.index.backend import BackendSpec
from search.index.bm25_scoring import NONOCCURRENCE_METHODS, BM25Params, idf, term_frequency_component

__all__ = ["LAYOUT_VERSION", "SPARSE", "check_layout", "client_for", "guarded", "point_uuid", "query_sparse",
           "release", "sparse_weights", "to_halves"]

log = logging.getLogger(__name__)

SPARSE = "bm25"
LAYOUT_VERSION = 1  # bump when the vectors, weights or payload of a collection change meaning
MIN_SERVER = (1, 10)  # query_points with named sparse vectors and prefetch
_NAMESPACE = uuid.UUID("6f1c1b52-7a4e-4c1e-9a53-2f3f0e1d5b15")
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


# ----- the collection's configuration, and refusing one made for other vectors ---------------------

def layout(manifest: dict[str, Any], idf_mode: str, avg_length: float | None, index: str | None = None) -> dict[str, Any]:
    """What a collection's metadata records: what its vectors mean, and the index folder that writes it."""
    models = {space: {"name": info["name"], "identity": info["identity"], "dim": info["dim"]}
              for space, info in manifest["models"].items()}
    return {"layout": LAYOUT_VERSION, "models": models, "bm25": manifest["bm25"], "idf": idf_mode,
            "avg_length": avg_length, "index": index}


def check_layout(spec: BackendSpec, collection: str, found: dict[str, Any] | None, manifest: dict[str, Any]) -> None:
    """Refuse a collection whose vectors come from other models or dimensions, or another layout."""
    if not found or found.get("layout") != LAYOUT_VERSION:
        raise IncompatibleIndex(f"collection {collection} at {spec.where()} was not made by this version of `search` "
                                "(or by it at all): choose another --collection, or run `search index --rebuild` to replace it")
    wanted = layout(manifest, found.get("idf", "client"), None)["models"]
    if found.get("models") != wanted:
        def named(models: dict[str, Any]) -> str:
            return ", ".join(f"{space}: {info['name']} ({info['dim']}-dim)" for space, info in sorted(models.items())) or "none (keyword-only)"

        raise IncompatibleIndex(f"collection {collection} at {spec.where()} holds vectors of {named(found.get('models') or {})}, "
                                f"this index uses {named(wanted)}: run `search index --rebuild` or choose another --collection")


def check_bm25(params: BM25Params, idf_mode: str) -> None:
    if idf_mode == "server" and params.method != "lucene":
        raise BackendError(f"--qdrant-idf server computes Lucene's IDF, not {params.method}'s: use BM25 method lucene or --qdrant-idf client")
    if params.method in NONOCCURRENCE_METHODS:
        raise BackendError(f"BM25 method {params.method} adds a score to passages without the query's terms, which a "
                           "sparse vector cannot: the qdrant backend takes lucene, robertson or atire")


# ----- point ids --------------------------------------------------------------------------------

def point_uuid(path: str, tags: Sequence[str], text: str, vector_key: int, occurrence: int) -> uuid.UUID:
    """The id of a passage's point: the same passage (and vector) gets the same id in every build."""
    return uuid.uuid5(_NAMESPACE, "\0".join([path, "\x1f".join(sorted(tags)), text, str(vector_key), str(occurrence)]))


def to_halves(ids: Sequence[str | uuid.UUID]) -> np.ndarray:
    """Point ids as (n, 2) uint64 (high, low 64 bits): 16 bytes a passage for lookups in numpy."""
    out = np.zeros((len(ids), 2), dtype=np.uint64)
    for i, value in enumerate(ids):
        number = (value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))).int
        out[i, 0], out[i, 1] = number >> 64, number & 0xFFFFFFFFFFFFFFFF
    return out


def from_halves(halves: np.ndarray) -> list[str]:
    return [str(uuid.UUID(int=(int(high) << 64) | int(low))) for high, low in halves.tolist()]


# ----- BM25 as sparse vectors -------------------------------------------------------------------

_term_ids: dict[str, int] = {}


def term_id(token: str) -> int:
    """A token's sparse index: 32 bits of its hash, the same in every build and process (a collision
    merges two terms' weights; at a million terms about a hundred pairs collide)."""
    found = _term_ids.get(token)
    if found is None:
        found = int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=4).digest(), "little")
        if len(_term_ids) < 2_000_000:
            _term_ids[token] = found
    return found


def _sparse(indices: np.ndarray, values: np.ndarray) -> tuple[list[int], list[float]]:
    """Sorted unique indices with the values of equal indices summed (hash collisions)."""
    unique, where = np.unique(indices, return_inverse=True)
    summed = np.zeros(len(unique), dtype=np.float64)
    np.add.at(summed, where, values)
    keep = summed > 0
    return unique[keep].tolist(), summed[keep].tolist()


def sparse_weights(tokens: Sequence[str], params: BM25Params, idf_of: dict[str, float] | None, avg_length: float) -> tuple[list[int], list[float]]:
    """A passage's BM25 sparse vector: each distinct token's idf x tf component (idf 1 when the
    server applies IDF), the posting score the default backend stores for it."""
    if not tokens:
        return [], []
    counts = Counter(tokens)
    tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    weights = term_frequency_component(params, tf, np.float64(len(tokens)), avg_length)
    if idf_of is not None:
        weights = weights * np.fromiter((idf_of[token] for token in counts), dtype=np.float64, count=len(counts))
    return _sparse(np.fromiter((term_id(token) for token in counts), dtype=np.int64, count=len(counts)), weights)


def idf_table(df: dict[str, int], n: int, params: BM25Params) -> dict[str, float]:
    return {token: idf(params, count, n) for token, count in df.items()}


def query_sparse(tokens: Sequence[str]) -> tuple[list[int], list[float]]:
    """The query's sparse vector: each token's count (repeated query tokens count once per occurrence,
    as the default backend scores them)."""
    counts = Counter(tokens)
    if not counts:
        return [], []
    indices = np.fromiter((term_id(token) for token in counts), dtype=np.int64, count=len(counts))
    return _sparse(indices, np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
