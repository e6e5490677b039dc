"""The backends by name: which one an index folder uses, opening it for queries, and mirroring a new
generation into it. A new backend is a module and a branch here; the engine does not change."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from search.errors import SearchError
from search.index.backend import BackendSpec, SearchBackend
from search.index.file_io import write_atomic
from search.index.folder import Generation, IndexFolder
from search.index.report import Progress

if TYPE_CHECKING:
    from search.index.qdrant_store import QdrantEngine

__all__ = ["Mirror", "choose_spec", "engine_for", "mirror_for", "open_backend", "read_spec", "record_spec", "spec_of"]

log = logging.getLogger(__name__)

# Called by a build with its new generation before it is sealed and published: returns what the
# manifest records about the backend's copy (collection, counts).
Mirror = Callable[[Generation, dict[str, Any], Progress | None], dict[str, Any]]


def read_spec(folder: IndexFolder) -> BackendSpec:
    """The backend recorded in the index folder (embedded when none is)."""
    try:
        return BackendSpec.from_json(folder.backend_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return BackendSpec()
    except (ValueError, TypeError) as error:
        raise SearchError(f"{folder.backend_file} is not readable ({error}): fix or delete it, then run `search index --rebuild`") from None


def choose_spec(folder: IndexFolder, spec: BackendSpec | None) -> BackendSpec:
    """The backend a build uses: `spec` when the options name one, else the one recorded in the folder.
    Naming another backend for an existing index moves it there without re-embedding anything: the
    build reuses the generation's passages and vectors and the mirror fills the new backend."""
    if spec is None:
        return read_spec(folder)
    return spec.located()


def record_spec(folder: IndexFolder, spec: BackendSpec) -> None:
    """Remember the backend for the next builds (after a build published a generation searched by it)."""
    if read_spec(folder) != spec:
        write_atomic(folder.backend_file, spec.to_json().encode("utf-8"))


def spec_of(manifest: dict[str, Any]) -> BackendSpec:
    """The backend a generation was published for: its manifest says, so that switching backends is
    as atomic as switching generations (a generation without the record is searched embedded)."""
    return BackendSpec.from_record(manifest.get("backend") or {})


def open_backend(spec: BackendSpec, generation: Generation, manifest: dict[str, Any], n_passages: int) -> SearchBackend:
    if spec.kind == "qdrant":
        from search.index.qdrant_search import QdrantBackend

        return QdrantBackend(spec, generation, manifest, n_passages, engine_for(spec))
    from search.index.embedded import EmbeddedBackend

    return EmbeddedBackend(generation, manifest, n_passages)


def mirror_for(spec: BackendSpec, rebuild: bool) -> Mirror | None:
    """What a build runs to copy its generation into the backend (None: the generation is the index)."""
    if spec.kind != "qdrant":
        return None
    from search.index.qdrant_sync import QdrantMirror

    return QdrantMirror(spec, rebuild, engine_for)


def engine_for(spec: BackendSpec) -> "QdrantEngine":
    """The Qdrant that runs a qdrant spec's collection: Qdrant Edge in process (--qdrant-edge), or the one
    behind qdrant-client (a server, or its local mode)."""
    if spec.engine == "edge":
        from search.index.qdrant_edge_engine import EdgeEngine

        return EdgeEngine(spec)
    from search.index.qdrant_client_engine import ClientEngine

    return ClientEngine(spec)
