"""What the retrievers see of a passage."""

from __future__ import annotations

from search.schema import Passage

__all__ = ["TEXT_VERSION", "contextual_text"]

# Bump when the rules that turn a document into passages and BM25 tokens change (chunking,
# tokenizing, passage text): an index built under other rules re-chunks and re-tokenises every file
# on its next update (vectors are still reused wherever a passage's text is unchanged).
# 2: English words stemmed (Snowball); a colon-introduced list, table or code block stays whole.
TEXT_VERSION = 2


def contextual_text(passage: Passage) -> str:
    """The text both retrievers see: document title and heading path give a passage its topic."""
    context = [passage.metadata.get("title") or "", *passage.heading_path]
    prefix = " / ".join(dict.fromkeys(part for part in context if part))  # drop repeats, keep order
    return f"{prefix}\n{passage.text}" if prefix else passage.text
