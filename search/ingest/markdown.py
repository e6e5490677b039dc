"""Markdown and plain text read structurally: sections of blocks with their source line numbers.

YAML front matter becomes metadata (search.ingest.front_matter); ATX (and setext) headings make
sections whose heading path every passage will carry; Liquid tags, HTML comments and HTML tags go
(include captions and image alt texts stay); links and images keep their visible text; Obsidian's
wikilinks, comments, callouts and inline #tags are read as search.ingest.obsidian says. A section holds blocks (paragraphs, lists, tables,
fenced code, $$ formulas), each a list of (1-based source line, cleaned text). Plain text is
paragraphs between blank lines. `search.text.chunking` packs these blocks into passages.
"""

from __future__ import annotations

import copy
import html
import re
from dataclasses import dataclass, field
from typing import Any

from search.ingest import obsidian
from search.ingest.front_matter import expand_tags, parse_front_matter
from search.schema import Document

__all__ = ["FENCE_CLOSE", "LIST_ITEM", "Block", "Section", "document_sections", "heading_stack", "is_table_sep", "parse_front_matter"]

MAX_HEADING_CHARS = 200  # of a heading, in the heading path of its passages

# ----- markdown cleanup -------------------------------------------------------------------------

# Multi-line constructs, removed from text runs (never from code or formulas). Inline code spans
# are matched first so that `{{ x }}` written as code survives. Newlines inside a removed span are
# kept so every later line keeps its number.
_SPANS = re.compile(
    r"(?P<code>``[^\n]+?``|`[^`\n]+`)"
    r"|(?P<comment><!--.*?-->|" + obsidian.COMMENT + ")"
    r"|(?P<liquid>\{%(?:(?!%\}|\{%).)*%\})"
    r"|(?P<expr>\{\{(?:(?!\}\}|\{\{).)*\}\})"
    r"|(?P<raw><(?P<rawtag>script|style)\b[^>]*>.*?</(?P=rawtag)\s*>)",
    re.S | re.I,
)
_VISIBLE_ATTR = re.compile(r"""\b(?:caption|alt|title)\s*=\s*(?:"([^"]*)"|'([^']*)')""")

_CODE_SPAN = re.compile(r"(``[^\n]+?``|`[^`\n]+`)")
_INLINE_TAGS = "a abbr b big cite code del dfn em font i ins kbd mark q s samp small span strike strong sub sup time tt u var"
_BLOCK_TAGS = (
    "audio blockquote body br button caption center col colgroup dd details div dl dt embed figcaption figure "
    "footer form h1 h2 h3 h4 h5 h6 head header hr html iframe input label li meta nav object ol p param picture "
    "pre section source summary svg table tbody td tfoot th thead tr ul video wbr"
)
# Attributes follow HTML's grammar, so that math such as `x<b 且 y>a` is not taken for a tag.
_ATTRIBUTES = r"""(?:\s+[A-Za-z_:][-\w:.]*(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'<>=`]+))?)*"""
_HTML_TAG = re.compile(
    r"</?(%s)%s\s*/?>" % ("|".join((_INLINE_TAGS + " " + _BLOCK_TAGS).split()), _ATTRIBUTES), re.I | re.A
)
_BLOCK_TAG_NAMES = frozenset(_BLOCK_TAGS.split())
_SPACES = re.compile(r"(?<=\S)[ \t]{2,}")
_QUOTE = re.compile(r"^\s{0,3}(?:>[ \t]?)+")
# `[id]: url "title"` lines define link targets; the destination must look like a URL or path so
# that a Chinese note line such as `[注意]: 说明` is not taken for one.
_REF_DEF = re.compile(r"^\s{0,3}\[(?!\^)[^\]]+\]:\s*(?:<[^>]*>|\S*[/.:#]\S*)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*$")


def _strip_spans(text: str) -> str:
    """Remove comments, Liquid tags and expressions, scripts and styles; keep include captions."""

    def replace(match: re.Match) -> str:
        if match.group("code"):
            return match.group(0)
        kept = ""
        if match.group("liquid"):
            kept = " ".join(a or b for a, b in _VISIBLE_ATTR.findall(match.group(0)))
        return kept + "\n" * match.group(0).count("\n")

    return _SPANS.sub(replace, text)


def _tag_text(match: re.Match) -> str:
    # block-level tags separate words (`a<br>b`), inline ones do not (`H<sub>2</sub>O`)
    return " " if match.group(1).lower() in _BLOCK_TAG_NAMES else ""


def _img_alt(match: re.Match) -> str:
    alt = re.search(r"""\balt\s*=\s*(?:"([^"]*)"|'([^']*)')""", match.group(0), re.I)
    return (alt.group(1) or alt.group(2) or "") if alt else ""


# Inline markup -> its visible text, in this order (images before links: `![alt](src)` holds `[alt](src)`).
_INLINE_STEPS = (
    *obsidian.INLINE_STEPS,
    (re.compile(r"!\[([^\]]*)\]\((?:[^()\n]|\([^()\n]*\))*\)"), r"\1"),  # image: its alt text
    (re.compile(r"\[([^\]]*)\]\((?:[^()\n]|\([^()\n]*\))*\)"), r"\1"),  # link: its text
    (re.compile(r"\[([^\]]+)\]\[[^\]]*\]"), r"\1"),  # reference link
    (re.compile(r"<((?:https?|ftp)://[^\s<>]+|mailto:[^\s<>]+)>", re.I), r"\1"),  # autolink
    (re.compile(r"<img\b[^>]*>", re.I), _img_alt),
    (_HTML_TAG, _tag_text),
    (re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)"), lambda m: m.group(1) or m.group(2)),  # strong
    (re.compile(r"(?<![\w*\\])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![\w*])"), r"\1"),  # emphasis
    (re.compile(r"~~(?=\S)(.+?)(?<=\S)~~"), r"\1"),  # strikethrough
)


def _clean_prose(text: str) -> str:
    """Inline markdown and HTML outside code spans -> the text a reader sees."""
    for pattern, replacement in _INLINE_STEPS:
        text = pattern.sub(replacement, text)
    if "&" in text:
        text = html.unescape(text).replace("\xa0", " ")
    return _SPACES.sub(" ", text)


def _code_text(span: str) -> str:
    inner = span.strip("`")
    return inner[1:-1] if len(inner) > 2 and inner[0] == " " and inner[-1] == " " else inner


def _clean_inline(line: str) -> str:
    """One markdown line as plain text: inline code keeps its text, everything else is cleaned."""
    parts = _CODE_SPAN.split(line)
    return "".join(_code_text(p) if i % 2 else _clean_prose(p) for i, p in enumerate(parts)).rstrip()


# ----- markdown structure ----------------------------------------------------------------------

# code: ``` or ~~~ fences, and Liquid's {% highlight %} blocks
_FENCE_OPEN = re.compile(r"^\s*(?:(`{3,})[^`]*|(~{3,}).*)$")
FENCE_CLOSE = re.compile(r"^\s*(`{3,}|~{3,})\s*$")
_LIQUID_OPEN = re.compile(r"^\s*\{%-?\s*highlight\s+([\w+#.-]+)?[^%]*-?%\}\s*$")
_LIQUID_CLOSE = re.compile(r"^\s*\{%-?\s*endhighlight\s*-?%\}\s*$")

# headings (ATX `## x`, setext underlines), rules, list items and table separator rows
_ATX = re.compile(r"^\s{0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^\s{0,3}(=+|-+)[ \t]*$")
_HR = re.compile(r"^\s{0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$")
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d{1,9}[.)])(?:[ \t]+|$)")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$")


@dataclass
class Block:
    kind: str  # "para" | "list" | "table" | "code" | "math" | "text"
    lines: list[tuple[int, str]] = field(default_factory=list)  # (1-based source line, cleaned text)


@dataclass
class Section:
    path: list[str]
    level: int  # 0 for the text before the first heading
    heading: tuple[str, int] | None = None  # (title, line)
    blocks: list[Block] = field(default_factory=list)


def is_table_sep(line: str) -> bool:
    return "|" in line and _TABLE_SEP.match(line) is not None


def _fence_end(lines: list[str], i: int) -> int | None:
    """Index after the fenced code block opening at line i (the document end if never closed)."""
    opening = _FENCE_OPEN.match(lines[i])
    if opening:
        fence = opening.group(1) or opening.group(2)
        for j in range(i + 1, len(lines)):
            closing = FENCE_CLOSE.match(lines[j])
            if closing and closing.group(1)[0] == fence[0] and len(closing.group(1)) >= len(fence):
                return j + 1
        return len(lines)
    if _LIQUID_OPEN.match(lines[i]):
        return next((j + 1 for j in range(i + 1, len(lines)) if _LIQUID_CLOSE.match(lines[j])), None)
    return None


def _math_end(lines: list[str], i: int) -> int | None:
    """Index after the $$ formula opening at line i; None when the line opens none."""
    stripped = lines[i].strip()
    if not stripped.startswith("$$"):
        return None
    if len(stripped) >= 4 and stripped.endswith("$$"):
        return i + 1
    return next((j + 1 for j in range(i + 1, len(lines)) if "$$" in lines[j]), None)


def _regions(lines: list[str]) -> list[tuple[str, int, int]]:
    """The body as ("text" | "code" | "math", start, end) runs of line indexes, end exclusive."""
    out: list[tuple[str, int, int]] = []
    i = text_start = 0
    while i < len(lines):
        kind, end = "code", _fence_end(lines, i)
        if end is None:
            kind, end = "math", _math_end(lines, i)
        if end is None:
            i += 1
            continue
        if text_start < i:
            out.append(("text", text_start, i))
        out.append((kind, i, end))
        i = text_start = end
    if text_start < len(lines):
        out.append(("text", text_start, len(lines)))
    return out


def _verbatim(kind: str, numbered: list[tuple[int, str]]) -> Block:
    """A code or formula block: lines kept as written, runs of blank lines collapsed to one."""
    block = Block(kind)
    for number, line in numbered:
        line = line.rstrip()
        if not line and block.lines and not block.lines[-1][1]:
            continue
        block.lines.append((number, line))
    if kind == "code" and _LIQUID_OPEN.match(block.lines[0][1]):  # {% highlight py %} -> ```py
        language = _LIQUID_OPEN.match(block.lines[0][1]).group(1) or ""
        block.lines[0] = (block.lines[0][0], "```" + language)
        block.lines[-1] = (block.lines[-1][0], "```")
    return block


class _MarkdownReader:
    """One pass over the body lines, building sections of blocks with their source line numbers."""

    def __init__(self, first_line: int, stack: list[tuple[int, str]] = ()) -> None:
        self.first_line = first_line
        self.stack: list[tuple[int, str]] = list(stack)  # headings open before the text (a notebook's earlier cells)
        self.sections = [Section(path=[text for _, text in self.stack if text], level=0)]
        self.block: Block | None = None
        self.gap = False  # a blank line since the open list's last line
        self.tags: list[str] = []  # inline #tags

    def read(self, lines: list[str]) -> list[Section]:
        for kind, start, end in _regions(lines):
            numbered = [(self.first_line + i, lines[i]) for i in range(start, end)]
            if kind != "text":
                self._close()
                block = _verbatim(kind, numbered)
                if kind != "code" or any(line.strip() for _, line in block.lines[1:-1]):
                    self.sections[-1].blocks.append(block)
                continue
            cleaned = _strip_spans("\n".join(line for _, line in numbered)).split("\n")
            for k, line in enumerate(cleaned):
                following = cleaned[k + 1] if k + 1 < len(cleaned) else ""
                self.tags.extend(obsidian.inline_tags(line))
                self._line(numbered[k][0], line, following)
        self._close()
        return self.sections

    def _line(self, number: int, line: str, following: str) -> None:
        if not line.strip() or _REF_DEF.match(line):
            return self._blank()
        heading = _ATX.match(line)
        if heading:
            return self._heading(len(heading.group(1)), _clean_inline(heading.group(2) or ""), number)
        block = self.block
        if _SETEXT.match(line) and block and block.kind == "para" and len(block.lines) == 1:
            self.block = None  # the paragraph line was the heading's text
            title_line, title = block.lines[0]
            return self._heading(1 if "=" in line else 2, title, title_line)
        if _HR.match(line):
            return self._close()
        if self.gap and block and block.kind == "list" and not (LIST_ITEM.match(line) or line[:1] in " \t"):
            self._close()
        self.gap = False
        kind = self._kind(line, following)
        self._append(kind, number, self._clean(kind, line))

    def _kind(self, line: str, following: str) -> str:
        open_kind = self.block.kind if self.block else None
        if line.lstrip().startswith("|") or (open_kind == "table" and "|" in line):
            return "table"
        if "|" in line and is_table_sep(following):  # a table written without outer pipes
            return "table"
        if LIST_ITEM.match(line) or open_kind == "list":  # items, and their continuation lines
            return "list"
        return "para"

    @staticmethod
    def _clean(kind: str, line: str) -> str:
        if kind == "table":
            row = _clean_inline(line).strip()
            return re.sub(r"-{3,}", "---", row) if is_table_sep(row) else row
        text = _clean_inline(obsidian.drop_callout(_QUOTE.sub("", line)))
        return text if kind == "list" else text.strip()  # list indentation shows nesting

    def _append(self, kind: str, number: int, text: str) -> None:
        if not text.strip():  # a line that was only markup (a tag, an image with no alt) separates like a blank
            return self._blank()
        if self.block is None or self.block.kind != kind:
            self._close()
            self.block = Block(kind)
        self.block.lines.append((number, text))

    def _blank(self) -> None:
        if self.block and self.block.kind == "list":
            self.gap = True  # a list may go on after a blank line
        else:
            self._close()

    def _heading(self, level: int, title: str, number: int) -> None:
        self._close()
        title = title.strip()
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        # the path goes into every passage of the section: a heading line of megabytes must not
        self.stack.append((level, title if len(title) <= MAX_HEADING_CHARS else title[: MAX_HEADING_CHARS - 1] + "…"))
        path = [text for _, text in self.stack if text]
        self.sections.append(Section(path=path, level=level, heading=(title, number)))

    def _close(self) -> None:
        if self.block and self.block.lines:
            self.sections[-1].blocks.append(self.block)
        self.block = None
        self.gap = False


def _text_sections(lines: list[str], path: list[str]) -> list[Section]:
    """Plain text: paragraphs between blank lines, no headings."""
    blocks: list[Block] = []
    current: Block | None = None
    for i, line in enumerate(lines):
        line = line.rstrip()
        if not line.strip():
            current = None
            continue
        if current is None:
            current = Block("text")
            blocks.append(current)
        current.lines.append((i + 1, line))
    return [Section(path=path, level=0, blocks=blocks)]


def heading_stack(text: str, stack: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The (level, title) headings open after markdown `text` read under `stack` (cells read in turn)."""
    reader = _MarkdownReader(1, stack)
    reader.read(text.split("\n"))
    return reader.stack


def document_sections(doc: Document) -> tuple[list[Section], dict[str, Any]]:
    """A document's sections and its metadata (the document's own, plus front matter and inline #tags)."""
    text = doc.text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    metadata = copy.deepcopy(doc.metadata)
    if doc.kind != "markdown":  # plain text (and any kind without a reader of its own)
        return _text_sections(text.split("\n"), [title for _, title in doc.headings]), metadata
    front, body, front_lines = parse_front_matter(text, doc.path)
    metadata.update(front)
    reader = _MarkdownReader(front_lines + 1, doc.headings)
    sections = reader.read(body.split("\n"))
    if reader.tags or metadata.get("tags"):
        tags = metadata.get("tags")
        metadata["tags"] = expand_tags([*(tags if isinstance(tags, list) else [tags] if tags else []), *reader.tags])
    return sections, metadata
