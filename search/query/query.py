"""`Query`: a query analysed once — its text, BM25 tokens, languages and the mode that will run."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from search.errors import QueryError
from search.text.language import detect_language, languages_in
from search.text.tokenizing import surface_words, tokenize_query

__all__ = ["CROSS_LINGUAL_MODES", "MAX_QUERY_CHARS", "MODES", "Query", "REREAD_MODES"]

MODES = ("hybrid", "bm25", "dense")
# When a query is also translated into the other language (SearchConfig.cross_lingual says which).
CROSS_LINGUAL_MODES = ("auto", "always", "never")
# Which queries a multilingual model re-reads (SearchConfig.reread says which; search.query.rerank).
REREAD_MODES = ("cross-lingual", "always", "never")
# A query is a few words or a question; a page of text pasted as one costs seconds per mode (a 64 KB
# query took 15.5 s in hybrid mode) and finds nothing a shorter one would not.
MAX_QUERY_CHARS = 2000


def _clean(text: object) -> str:
    if not isinstance(text, str):
        raise QueryError(f"the query must be text, not {type(text).__name__}")
    # lone surrogates (from a badly decoded argument) cannot go to a tokenizer: make them U+FFFD
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").strip()
    if not text:
        raise QueryError("empty query: give some words to search for")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"query of {len(text)} characters is too long: keep it under {MAX_QUERY_CHARS}")
    return text


@dataclass(frozen=True)
class Query:
    text: str
    mode: str  # the mode that will run
    requested_mode: str
    languages: frozenset[str]  # every language with some text in the query: the spaces it is embedded in
    language: str  # its main language: that space's list counts most when spaces merge
    notice: str | None = None  # why `mode` differs from `requested_mode`

    @classmethod
    def analyse(cls, text: str, mode: str = "hybrid", keyword_only: bool = False, index_name: str = "") -> "Query":
        """Check and analyse `text`; on a keyword-only index every mode runs as bm25, with a notice."""
        text = _clean(text)
        if mode not in MODES:
            raise QueryError(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
        notice = None
        if keyword_only and mode != "bm25":
            notice = f"note: {index_name} is a keyword-only index (no embeddings): searching in bm25 mode"
        return cls(
            text=text,
            mode="bm25" if keyword_only else mode,
            requested_mode=mode,
            languages=frozenset(languages_in(text)),
            language=detect_language(text),
            notice=notice,
        )

    @cached_property
    def tokens(self) -> tuple[str, ...]:
        """BM25 tokens (search.text.tokenizing.tokenize_query), worked out on first use: a hybrid search
        starts embedding the query first and tokenises it meanwhile (jieba: 0.2-0.8 ms a query)."""
        return tuple(tokenize_query(self.text))

    @property
    def highlight_terms(self) -> list[str]:
        """Terms to mark in a hit, longest first so that a phrase wins over its sub-words; single
        Latin letters and digits are left out (they would light up every word)."""
        words = surface_words(self.text)  # as written: a stem ("studi") is not in the text it matched
        return sorted({t for t in words if len(t) > 1 or not t.isascii()}, key=len, reverse=True)
