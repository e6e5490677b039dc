"""What the retrievers see of a passage."""

from __future__ import annotations

from search.schema import Passage

__all__ = ["TEXT_VERSION", "contextual_text"]

# Bump when the rules that turn a document into passages and BM25 tokens change (chunking,
# tokenizing, passage text): an index built under other rules re-chunks and re-tokenises every file
# on its next update (vectors are still reused wherever a passage's text is unchanged).
# 2: English words stemmed (Snowball); a colon-introduced list, table or code block stays whole.
TEXT_VERSION = 2

MAX_CONTEXT_CHARS = 200  # of the title and of each heading, as context of every passage


def contextual_text(passage: Passage) -> str:
    """The text both retrievers see: document title, its aliases (Obsidian's other names for a note)
    and heading path give a passage its topic; each part is cut to MAX_CONTEXT_CHARS."""
    aliases = passage.metadata.get("aliases")
    aliases = [str(a) for a in aliases] if isinstance(aliases, list) else [str(aliases)] if aliases else []
    context = [str(part)[:MAX_CONTEXT_CHARS] for part in (passage.metadata.get("title") or "", *aliases, *passage.heading_path)]
    prefix = " / ".join(dict.fromkeys(part for part in context if part))  # drop repeats, keep order
    return f"{prefix}\n{passage.text}" if prefix else passage.text
