"""Hybrid Chinese/English search: jieba BM25 and sentence embeddings in FAISS, fused.

The pipeline, one package a stage, imports pointing one way:
ingest (files -> documents) -> text (passages, tokens) -> embedding (vectors) -> index (the folder,
BM25, FAISS, the build, the search backends) -> query (Engine, retrieval, fusion). The names below are the public API;
the CLI, the watcher and the evaluation use nothing else.
"""

from search.errors import BackendError, FilterError, IncompatibleIndex, IndexDamaged, IndexNotFound, LoadError, QueryError, SearchError
from search.schema import Document, Passage, Skipped

__all__ = [
    "BackendError", "BackendSpec", "BM25Params", "BuildConfig", "BuildSummary", "CROSS_LINGUAL_MODES", "REREAD_MODES", "Document", "Engine", "Filters", "FilterError", "Hit",
    "IncompatibleIndex", "IndexCheck", "IndexDamaged", "IndexNotFound", "LoadError", "LoadOptions", "MODES", "Passage", "Progress", "Query", "QueryError",
    "SearchConfig", "SearchError", "SearchResult", "Skipped", "SUPPORTED_SUFFIXES",
]

# Where each lazily imported name lives: the Engine pulls in numpy and FAISS, so `import search`
# stays cheap for the CLI until a command needs them.
_LAZY = {
    "Engine": "search.query.engine",
    "Filters": "search.query.filters",
    "Hit": "search.query.result",
    "SearchResult": "search.query.result",
    "Query": "search.query.query",
    "MODES": "search.query.query",
    "SearchConfig": "search.query.fusion",
    "CROSS_LINGUAL_MODES": "search.query.query",
    "REREAD_MODES": "search.query.query",
    "BuildConfig": "search.index.build",
    "BackendSpec": "search.index.backend",
    "BuildSummary": "search.index.report",
    "Progress": "search.index.report",
    "IndexCheck": "search.index.integrity",
    "BM25Params": "search.index.bm25_scoring",
    "LoadOptions": "search.ingest.loading",
    "SUPPORTED_SUFFIXES": "search.ingest.loading",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
