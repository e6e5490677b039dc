"""Obsidian's markdown extensions, read as a reader of the vault sees them.

`[[target]]` and `[[target|alias]]` keep their visible text (`[[note#Part]]` reads "note > Part",
block references `#^id` and embedded images disappear); `==highlights==` keep their text; block ids
(` ^id` at a line's end) and callout markers (`> [!note]`, the title after them stays) are not body
text; `%%comments%%` are removed with HTML comments (`COMMENT`, one alternative of the markdown
reader's span pattern). Inline `#tags` (`#标签`, nested `#a/b`; at least one letter, after a space
or at a line's start, never in code) are collected by `inline_tags` and join the front matter's.
"""

from __future__ import annotations

import os
import re

__all__ = ["COMMENT", "INLINE_STEPS", "drop_callout", "inline_tags"]

COMMENT = r"%%.*?%%"

_NOTE_SUFFIXES = ("", ".md", ".markdown")
_WIKILINK = re.compile(r"(!?)\[\[([^\[\]\n|]*)(?:\|([^\[\]\n]*))?\]\]")
_SIZE = re.compile(r"\d+(?:x\d+)?")  # ![[image.png|300]] gives a size, not a caption


def _wikilink(match: re.Match) -> str:
    embed, target, alias = match.group(1), match.group(2).strip(), (match.group(3) or "").strip()
    page, _, anchor = target.partition("#")
    page = page.strip()
    suffix = os.path.splitext(page)[1].lower()
    if embed and suffix not in _NOTE_SUFFIXES:  # an embedded image, PDF or sound: a caption at most
        return "" if not alias or _SIZE.fullmatch(alias) else alias
    if alias:
        return alias
    if suffix in (".md", ".markdown"):
        page = page[: -len(suffix)]
    anchors = [] if anchor.startswith("^") else [part.strip() for part in anchor.split("#")]
    return " > ".join(part for part in (page, *anchors) if part)


# (pattern, replacement) steps run before the markdown reader's own inline steps
INLINE_STEPS = (
    (_WIKILINK, _wikilink),
    (re.compile(r"(?<!=)==(?=[^\s=])(.+?)(?<=[^\s=])==(?!=)"), r"\1"),  # ==highlight==
    (re.compile(r"(?<=\s)\^[A-Za-z0-9-]+[ \t]*$"), ""),  # block id at the end of a line
)

_CALLOUT = re.compile(r"^[ \t]*\[![\w-]+\][+-]?[ \t]*")
_TAG = re.compile(r"(?<!\S)#([\w/-]+)")
_CODE = re.compile(r"``[^\n]+?``|`[^`\n]+`")


def drop_callout(line: str) -> str:
    """A quote line without its callout marker: `[!note]- Title` -> `Title`."""
    return _CALLOUT.sub("", line, count=1)


def inline_tags(line: str) -> list[str]:
    """The `#tags` of one line of markdown text (code spans left out), without their `#`."""
    if "#" not in line:
        return []
    tags = (match.group(1).strip("/-") for match in _TAG.finditer(_CODE.sub(" ", line)))
    return [tag for tag in tags if any(c.isalpha() for c in tag)]
