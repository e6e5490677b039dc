"""What the retrievers see of a passage."""

from __future__ import annotations

import unicodedata

import xxhash

from search.schema import Passage

__all__ = ["TEXT_VERSION", "contextual_text", "same_text_key", "text_key_digest"]

# Bump when the rules that turn a document into passages and BM25 tokens change (chunking,
# tokenizing, passage text): an index built under other rules re-chunks and re-tokenises every file
# on its next update (vectors are still reused wherever a passage's text is unchanged).
# 2: English words stemmed (Snowball); a colon-introduced list, table or code block stays whole.
TEXT_VERSION = 2

MAX_CONTEXT_CHARS = 200  # of the title and of each heading, as context of every passage


def same_text_key(text: str) -> str:
    """What duplicates have in common: the text after NFKC, case folding and collapsing white space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_key_digest(text: str) -> bytes:
    """A 16-byte digest (XXH3-128) of `same_text_key(text)`, written per passage at build time, so a
    search finds copies among its candidates without reading them (128 bits: no collision to fear)."""
    return xxhash.xxh3_128_digest(same_text_key(text).encode("utf-8"))


def contextual_text(passage: Passage) -> str:
    """The text both retrievers see: document title, its aliases (Obsidian's other names for a note)
    and heading path give a passage its topic; each part is cut to MAX_CONTEXT_CHARS."""
    aliases = passage.metadata.get("aliases")
    aliases = [str(a) for a in aliases] if isinstance(aliases, list) else [str(aliases)] if aliases else []
    context = [str(part)[:MAX_CONTEXT_CHARS] for part in (passage.metadata.get("title") or "", *aliases, *passage.heading_path)]
    prefix = " / ".join(dict.fromkeys(part for part in context if part))  # drop repeats, keep order
    return f"{prefix}\n{passage.text}" if prefix else passage.text
