"""The options several `search` commands share, and the settings they make (for search.cli)."""

from __future__ import annotations

from typing import Any

import click

from search import CROSS_LINGUAL_MODES, REREAD_MODES

__all__ = ["DEFAULT_INDEX", "backend_options", "cross_lingual_options", "index_option", "search_config"]

DEFAULT_INDEX = "indexes/default"

index_option = click.option("--index", "index_dir", default=DEFAULT_INDEX, envvar="SEARCH_INDEX", show_default=True, help="Index folder (env SEARCH_INDEX).")


def cross_lingual_options(command: Any) -> Any:  # for `search query` and `search eval`: search_config(cross_lingual, reread)
    command = click.option("--reread", type=click.Choice(REREAD_MODES), default="cross-lingual", show_default=True,
                           help="Which queries multilingual-e5-small re-reads, best candidates first (0.1-1 s a query on 2 cores): cross-lingual "
                                "(those translated into the other language: it reads them as asked), always (every query; a little "
                                "better on Chinese questions), never.")(command)
    return click.option(
        "--cross-lingual", type=click.Choice(CROSS_LINGUAL_MODES), default="auto", show_default=True, is_flag=False, flag_value="always",
        help="Translate the query word by word (CC-CEDICT) to find passages in the other language: auto (only when the index holds "
             "almost nothing in the query's language), always (also on a mixed index; --cross-lingual alone), never.")(command)


def search_config(cross_lingual: str, reread: str) -> Any:
    from search import SearchConfig

    return SearchConfig(cross_lingual=cross_lingual, reread=reread)


def backend_options(command: Any) -> Any:  # for `search index` and `search eval`: BackendSpec.from_options(**these)
    command = click.option("--qdrant-idf", type=click.Choice(["client", "server"]), default="client", show_default=True, help="BM25 IDF: exact from the client (every point re-weighted when the corpus changes) or Qdrant's (an edit writes only changed points).")(command)
    command = click.option("--collection", default=None, metavar="NAME", help="Qdrant alias the index is searched through (default: search-<index folder name>).")(command)
    command = click.option("--qdrant-path", default=None, type=click.Path(file_okay=False), metavar="DIR", help="qdrant-client's local mode (pure Python, one process at a time) in DIR instead of a server.")(command)
    command = click.option("--qdrant-edge", default=None, type=click.Path(file_okay=False), metavar="DIR", help="Qdrant Edge (Qdrant's engine in process) with its shards in DIR instead of a server.")(command)
    command = click.option("--qdrant-url", envvar="SEARCH_QDRANT_URL", default=None, metavar="URL", help="Qdrant server or cluster for --backend qdrant (env SEARCH_QDRANT_URL; API key: env SEARCH_QDRANT_API_KEY).")(command)
    return click.option("--backend", type=click.Choice(["embedded", "qdrant"]), default=None, help="Where the index is searched: embedded (FAISS + BM25 in the index folder, the default) or qdrant; recorded in the index folder.")(command)
