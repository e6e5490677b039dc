"""Documents -> passages with their BM25 tokens: the CPU-heavy half of a build, run in pool workers.

Kept apart from the build so a worker imports only the chunker, the tokenizers and jieba (not FAISS
or the index code). Passages are counted with the tokenizer of the model that will embed them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from search.embedding.models import space_for
from search.embedding.spec import token_counter
from search.schema import Document, Passage
from search.text.chunking import chunk_document
from search.text.language import detect_language
from search.text.passages import contextual_text
from search.text.tokenizing import tokenize, tokenize_many

__all__ = ["Prepared", "chunk_counter", "prepare_documents", "warm_worker"]


@dataclass
class Prepared:
    passages: list[list[tuple[Passage, list[str]]]]  # per document, in order
    seconds: dict[str, float]


@lru_cache(maxsize=None)
def chunk_counter(plan: tuple[tuple[str, str], ...]) -> Callable[[str], int]:
    """Counts with the tokenizer of the model that will embed the text, so no passage overflows it."""
    counters = {space: token_counter(name) for space, name in plan}
    if len(counters) == 1:
        return next(iter(counters.values()))
    spaces = dict(plan)
    return lambda text: counters[space_for(spaces, detect_language(text))](text)


def prepare_documents(documents: list[Document], plan: dict[str, str], max_tokens: int, overlap_tokens: int) -> Prepared:
    """Chunk documents into passages and tokenise each passage for BM25 (in a pool worker, or inline)."""
    seconds = {"chunk": 0.0, "tokenize": 0.0}
    count = chunk_counter(tuple(plan.items()))
    out = []
    for document in documents:
        started = time.perf_counter()
        passages = chunk_document(document, count, max_tokens, overlap_tokens)
        middle = time.perf_counter()
        tokens = tokenize_many(contextual_text(passage) for passage in passages)
        seconds["chunk"] += middle - started
        seconds["tokenize"] += time.perf_counter() - middle
        out.append(list(zip(passages, tokens)))
    return Prepared(out, seconds)


def warm_worker(plan: dict[str, str]) -> None:
    tokenize("预热")  # loads jieba's dictionary once per worker, before the first batch
    chunk_counter(tuple(plan.items()))("warm")
