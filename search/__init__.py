"""Hybrid Chinese/English search: jieba BM25 and sentence embeddings in FAISS, fused."""

from search.errors import SearchError
from search.schema import Hit, Passage

__all__ = ["Engine", "Filters", "Hit", "Passage", "SearchError"]


def __getattr__(name: str):
    # Engine pulls in numpy/faiss; import it lazily so `import search` stays cheap for the CLI.
    if name == "Engine":
        from search.engine import Engine

        return Engine
    if name == "Filters":
        from search.filtering import Filters

        return Filters
    raise AttributeError(name)
