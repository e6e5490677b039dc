"""What the retrievers see of a passage."""

from __future__ import annotations

from search.schema import Passage

__all__ = ["contextual_text"]

MAX_CONTEXT_CHARS = 200  # of the title and of each heading, as context of every passage


def contextual_text(passage: Passage) -> str:
    """The text both retrievers see: document title, its aliases (Obsidian's other names for a note)
    and heading path give a passage its topic; each part is cut to MAX_CONTEXT_CHARS."""
    aliases = passage.metadata.get("aliases")
    aliases = [str(a) for a in aliases] if isinstance(aliases, list) else [str(aliases)] if aliases else []
    context = [str(part)[:MAX_CONTEXT_CHARS] for part in (passage.metadata.get("title") or "", *aliases, *passage.heading_path)]
    prefix = " / ".join(dict.fromkeys(part for part in context if part))  # drop repeats, keep order
    return f"{prefix}\n{passage.text}" if prefix else passage.text
