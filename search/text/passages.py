"""What the retrievers see of a passage."""

from __future__ import annotations

from search.schema import Passage

__all__ = ["contextual_text"]

MAX_CONTEXT_CHARS = 200  # of the title and of each heading, as context of every passage


def contextual_text(passage: Passage) -> str:
    """The text both retrievers see: document title and heading path give a passage its topic."""
    context = [str(passage.metadata.get("title") or "")[:MAX_CONTEXT_CHARS], *(part[:MAX_CONTEXT_CHARS] for part in passage.heading_path)]
    prefix = " / ".join(dict.fromkeys(part for part in context if part))  # drop repeats, keep order
    return f"{prefix}\n{passage.text}" if prefix else passage.text
