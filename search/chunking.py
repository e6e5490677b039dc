"""Documents -> passages: markdown-aware, line-exact, within the embedding model's token budget.

Markdown is read structurally: YAML front matter becomes metadata, ATX (and setext) headings make
sections whose heading path every passage carries, Liquid tags, HTML comments and HTML tags go
(include captions and image alt texts stay), links and images keep their visible text. A section's
blocks (paragraphs, lists, tables, fenced code, $$ formulas) are packed into passages up to
`max_tokens`; a block too big on its own is split: prose at sentence ends with a small overlap,
then at commas, then by characters; tables between rows with the header repeated; code between
lines inside repeated fences. Plain text is paragraphs and lines, packed and split the same way.

Every passage records the 1-based lines of the original file its text came from, and no passage
ever counts more than `max_tokens`: counts of parts are summed to plan a passage and the passage
is then counted once for real (tokenizers are not exactly additive).
"""

from __future__ import annotations

import copy
import datetime
import html
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import yaml

from search.schema import Document, Passage

__all__ = ["chunk_document", "parse_front_matter"]

Counter = Callable[[str], int]

# A span longer than this many characters per token of budget is split without counting it first:
# counting it would only confirm it is too big (packing re-joins the parts if it was not).
_MAX_CHARS_PER_TOKEN = 12

# ----- front matter ---------------------------------------------------------------------------

_FM_OPEN = re.compile(r"---[ \t]*")
_FM_CLOSE = re.compile(r"(?:---|\.\.\.)[ \t]*")
_LIST_KEYS = ("tags", "categories")


def parse_front_matter(text: str) -> tuple[dict[str, Any], str, int]:
    """(metadata, body, number of lines the front matter block took); no block gives ({}, text, 0).

    Malformed YAML still ends at its closing `---`: the block is dropped with empty metadata, so
    the raw YAML never becomes searchable body text.
    """
    lines = text.split("\n")
    if not _FM_OPEN.fullmatch(lines[0].lstrip("\ufeff")):
        return {}, text, 0
    end = next((i for i in range(1, len(lines)) if _FM_CLOSE.fullmatch(lines[i])), None)
    if end is None:  # a lone `---` opening the file is a horizontal rule, not front matter
        return {}, text, 0
    return _metadata(_load_yaml("\n".join(lines[1:end]))), "\n".join(lines[end + 1 :]), end + 1


def _load_yaml(raw: str) -> dict:
    try:
        data = yaml.safe_load(raw)
    except Exception:  # YAMLError, or ValueError from an impossible date: treat as no metadata
        return {}
    return data if isinstance(data, dict) else {}


def _metadata(data: dict) -> dict[str, Any]:
    """Front matter as JSON-safe metadata: tags/categories as string lists, empty values dropped."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        if key in _LIST_KEYS:
            value = _string_list(value)
        elif key == "title" and value is not None:
            value = str(_json_safe(value)).strip()
        else:
            value = _json_safe(value)
        if not _is_empty(value):
            out[key] = value
    return out


def _string_list(value: Any) -> list[str]:
    items = value if isinstance(value, (list, tuple, set)) else [value]
    return [s for s in (str(_json_safe(v)).strip() for v in items if v is not None) if s]


def _json_safe(value: Any) -> Any:
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date too
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _is_empty(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, (list, dict)) and not value)


# ----- markdown cleanup -------------------------------------------------------------------------

# Multi-line constructs, removed from text runs (never from code or formulas). Inline code spans
# are matched first so that `{{ x }}` written as code survives. Newlines inside a removed span are
# kept so every later line keeps its number.
_SPANS = re.compile(
    r"(?P<code>``[^\n]+?``|`[^`\n]+`)"
    r"|(?P<comment><!--.*?-->)"
    r"|(?P<liquid>\{%(?:(?!%\}|\{%).)*%\})"
    r"|(?P<expr>\{\{(?:(?!\}\}|\{\{).)*\}\})"
    r"|(?P<raw><(?P<rawtag>script|style)\b[^>]*>.*?</(?P=rawtag)\s*>)",
    re.S | re.I,
)
_VISIBLE_ATTR = re.compile(r"""\b(?:caption|alt|title)\s*=\s*(?:"([^"]*)"|'([^']*)')""")

_CODE_SPAN = re.compile(r"(``[^\n]+?``|`[^`\n]+`)")
_IMAGE = re.compile(r"!\[([^\]]*)\]\((?:[^()\n]|\([^()\n]*\))*\)")
_LINK = re.compile(r"\[([^\]]*)\]\((?:[^()\n]|\([^()\n]*\))*\)")
_REF_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_AUTOLINK = re.compile(r"<((?:https?|ftp)://[^\s<>]+|mailto:[^\s<>]+)>", re.I)
_IMG_TAG = re.compile(r"<img\b[^>]*>", re.I)
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
_STRONG = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)")
_EMPHASIS = re.compile(r"(?<![\w*\\])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![\w*])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
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


def _clean_prose(text: str) -> str:
    """Inline markdown and HTML outside code spans -> the text a reader sees."""
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _REF_LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _IMG_TAG.sub(_img_alt, text)
    text = _HTML_TAG.sub(_tag_text, text)
    text = _STRONG.sub(lambda m: m.group(1) or m.group(2), text)
    text = _EMPHASIS.sub(r"\1", text)
    text = _STRIKE.sub(r"\1", text)
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

_FENCE_OPEN = re.compile(r"^\s*(?:(`{3,})[^`]*|(~{3,}).*)$")
_FENCE_CLOSE = re.compile(r"^\s*(`{3,}|~{3,})\s*$")
_LIQUID_OPEN = re.compile(r"^\s*\{%-?\s*highlight\s+([\w+#.-]+)?[^%]*-?%\}\s*$")
_LIQUID_CLOSE = re.compile(r"^\s*\{%-?\s*endhighlight\s*-?%\}\s*$")
_ATX = re.compile(r"^\s{0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^\s{0,3}(=+|-+)[ \t]*$")
_HR = re.compile(r"^\s{0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d{1,9}[.)])(?:[ \t]+|$)")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$")


@dataclass
class _Block:
    kind: str  # "para" | "list" | "table" | "code" | "math" | "text"
    lines: list[tuple[int, str]] = field(default_factory=list)  # (1-based source line, cleaned text)


@dataclass
class _Section:
    path: list[str]
    level: int  # 0 for the text before the first heading
    heading: tuple[str, int] | None = None  # (title, line)
    blocks: list[_Block] = field(default_factory=list)


def _is_table_sep(line: str) -> bool:
    return "|" in line and _TABLE_SEP.match(line) is not None


def _fence_end(lines: list[str], i: int) -> int | None:
    """Index after the fenced code block opening at line i (the document end if never closed)."""
    opening = _FENCE_OPEN.match(lines[i])
    if opening:
        fence = opening.group(1) or opening.group(2)
        for j in range(i + 1, len(lines)):
            closing = _FENCE_CLOSE.match(lines[j])
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


def _verbatim(kind: str, numbered: list[tuple[int, str]]) -> _Block:
    """A code or formula block: lines kept as written, runs of blank lines collapsed to one."""
    block = _Block(kind)
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

    def __init__(self, first_line: int) -> None:
        self.first_line = first_line
        self.sections = [_Section(path=[], level=0)]
        self.stack: list[tuple[int, str]] = []
        self.block: _Block | None = None
        self.gap = False  # a blank line since the open list's last line

    def read(self, lines: list[str]) -> list[_Section]:
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
        if self.gap and block and block.kind == "list" and not (_LIST_ITEM.match(line) or line[:1] in " \t"):
            self._close()
        self.gap = False
        kind = self._kind(line, following)
        self._append(kind, number, self._clean(kind, line))

    def _kind(self, line: str, following: str) -> str:
        open_kind = self.block.kind if self.block else None
        if line.lstrip().startswith("|") or (open_kind == "table" and "|" in line):
            return "table"
        if "|" in line and _is_table_sep(following):  # a table written without outer pipes
            return "table"
        if _LIST_ITEM.match(line) or open_kind == "list":  # items, and their continuation lines
            return "list"
        return "para"

    @staticmethod
    def _clean(kind: str, line: str) -> str:
        if kind == "table":
            row = _clean_inline(line).strip()
            return re.sub(r"-{3,}", "---", row) if _is_table_sep(row) else row
        text = _clean_inline(_QUOTE.sub("", line))
        return text if kind == "list" else text.strip()  # list indentation shows nesting

    def _append(self, kind: str, number: int, text: str) -> None:
        if not text.strip():  # a line that was only markup (a tag, an image with no alt) separates like a blank
            return self._blank()
        if self.block is None or self.block.kind != kind:
            self._close()
            self.block = _Block(kind)
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
        self.stack.append((level, title))
        path = [text for _, text in self.stack if text]
        self.sections.append(_Section(path=path, level=level, heading=(title, number)))

    def _close(self) -> None:
        if self.block and self.block.lines:
            self.sections[-1].blocks.append(self.block)
        self.block = None
        self.gap = False


def _text_sections(lines: list[str]) -> list[_Section]:
    """Plain text: paragraphs between blank lines, no headings."""
    blocks: list[_Block] = []
    current: _Block | None = None
    for i, line in enumerate(lines):
        line = line.rstrip()
        if not line.strip():
            current = None
            continue
        if current is None:
            current = _Block("text")
            blocks.append(current)
        current.lines.append((i + 1, line))
    return [_Section(path=[], level=0, blocks=blocks)]


# ----- splitting and packing ---------------------------------------------------------------------

# A sentence ends after Chinese 。！？；… (any following character), or after . ! ? followed by
# whitespace or the end; closing quotes and brackets stay with the sentence they close.
_CLOSERS = "\"'”’」』）)\\]】》"
_SENTENCE_END = re.compile(rf"(?:[。！？；｡．…]+|[.!?]+(?=[{_CLOSERS}]*(?:\s|$)))[{_CLOSERS}]*")
_CLAUSE_END = re.compile(r"[，,、､﹐\n]")
_LINE_END = re.compile(r"\n")
_PROSE_LEVELS = ("sentence", "clause")
_LINE_LEVELS = ("line", "sentence", "clause")


class _Span(NamedTuple):
    start: int  # offsets into the block's text
    end: int
    tokens: int


class _Piece(NamedTuple):
    text: str
    start: int  # 1-based source lines
    end: int
    tokens: int


class _BlockSplitter:
    """Splits one block that is over budget into pieces that each fit.

    The block's text is its cleaned lines joined by newlines; every unit is a span of that text,
    so each piece maps back to the source lines it came from. Tables, code and formulas have a
    frame (header rows, fences, $$ lines) repeated around every piece.
    """

    def __init__(self, chunker: "_Chunker", block: _Block) -> None:
        self.chunker = chunker
        self.count = chunker.count
        self.numbers = [number for number, _ in block.lines]
        self.text = "\n".join(line for _, line in block.lines)
        self.starts = [0]
        for _, line in block.lines[:-1]:
            self.starts.append(self.starts[-1] + len(line) + 1)
        head, tail = self._frame(block)
        self.head = "\n".join(line for _, line in block.lines[:head])
        self.tail = "\n".join(line for _, line in block.lines[len(block.lines) - tail :]) if tail else ""
        self.body = (self.starts[head], self._line_end(len(block.lines) - tail - 1))
        frame_cost = sum(self.count(part) + chunker.line_join for part in (self.head, self.tail) if part)
        if frame_cost * 2 > chunker.max_tokens:  # a frame that big would crowd out the content
            self.head = self.tail = ""
            self.body, frame_cost = (0, len(self.text)), 0
        self.budget = chunker.max_tokens - frame_cost
        self.levels = _PROSE_LEVELS if block.kind == "para" else _LINE_LEVELS
        self.overlap = chunker.overlap if block.kind in ("para", "text") else 0
        self.guess = 0  # the last hard cut's length: the next one is likely alike

    def _frame(self, block: _Block) -> tuple[int, int]:
        """How many leading and trailing lines repeat on every piece."""
        lines = [line for _, line in block.lines]
        if block.kind == "table" and len(lines) > 2 and _is_table_sep(lines[1]):
            return 2, 0
        if block.kind == "code" and len(lines) > 2:
            return 1, int(_FENCE_CLOSE.match(lines[-1]) is not None)
        if block.kind == "math" and len(lines) > 2 and lines[0].strip() == "$$":
            return 1, int(lines[-1].strip() == "$$")
        return 0, 0

    def _line_end(self, index: int) -> int:
        newline = self.text.find("\n", self.starts[index])
        return len(self.text) if newline < 0 else newline

    def _line_of(self, offset: int) -> int:
        return self.numbers[bisect_right(self.starts, offset) - 1]

    def pieces(self) -> list[_Piece]:
        spans = self._atomize(*self.body, self.levels, self.budget)
        if not spans:
            return []
        self.first, self.last = spans[0].start, spans[-1].end
        return self.chunker.pack_spans(spans, self.budget, self.overlap, self._render, self._hard_cut)

    def _render(self, start: int, end: int, framed: bool = True) -> _Piece:
        """The piece for text[start:end], framed, with the source lines it came from."""
        at_first, at_last = start == self.first, end == self.last
        body_start = 0 if at_first and framed else start  # the first piece keeps the real header lines
        body_end = len(self.text) if at_last and framed else end
        parts = [self.head if framed and not at_first else "", self.text[body_start:body_end]]
        parts.append(self.tail if framed and not at_last else "")
        text = "\n".join(part for part in parts if part).strip()
        first_line = self.numbers[0] if at_first and framed else self._line_of(start)
        last_line = self.numbers[-1] if at_last and framed else self._line_of(end - 1)
        return _Piece(text, first_line, last_line, self.count(text))

    # -- units -------------------------------------------------------------------------------

    def _trim(self, start: int, end: int) -> tuple[int, int]:
        while start < end and self.text[start].isspace():
            start += 1
        while end > start and self.text[end - 1].isspace():
            end -= 1
        return start, end

    def _split_at(self, start: int, end: int, level: str) -> list[tuple[int, int]]:
        """text[start:end] cut after every boundary of the level ("line", "sentence", "clause")."""
        pattern = {"line": _LINE_END, "sentence": _SENTENCE_END, "clause": _CLAUSE_END}[level]
        cuts = [m.end() for m in pattern.finditer(self.text, start, end)]
        bounds = [start] + [c for c in cuts if start < c < end] + [end]
        return list(zip(bounds, bounds[1:]))

    def _atomize(self, start: int, end: int, levels: tuple[str, ...], budget: int) -> list[_Span]:
        """Spans covering text[start:end], each within budget: the coarsest units that fit."""
        start, end = self._trim(start, end)
        if start >= end:
            return []
        if not levels:
            return self._hard_cut(start, end, budget)
        parts = self._split_at(start, end, levels[0])
        if len(parts) == 1:  # no boundary of this kind: try the next finer one
            return self._atomize(start, end, levels[1:], budget)
        spans: list[_Span] = []
        for part_start, part_end in parts:
            part_start, part_end = self._trim(part_start, part_end)
            if part_start >= part_end:
                continue
            tokens = None
            if part_end - part_start <= budget * _MAX_CHARS_PER_TOKEN:
                tokens = self.count(self.text[part_start:part_end])
            if tokens is not None and tokens <= budget:
                spans.append(_Span(part_start, part_end, tokens))
            else:
                spans.extend(self._atomize(part_start, part_end, levels[1:], budget))
        return spans

    def _hard_cut(self, start: int, end: int, budget: int) -> list[_Span]:
        """Consecutive longest prefixes within budget (for text with no usable boundary)."""
        spans: list[_Span] = []
        start, end = self._trim(start, end)
        while start < end:
            size, tokens = self._longest_prefix(start, end, budget)
            cut_start, cut_end = self._trim(start, start + size)
            spans.append(_Span(cut_start, cut_end, tokens))
            start, end = self._trim(start + size, end)
        return spans

    def _longest_prefix(self, start: int, end: int, budget: int) -> tuple[int, int]:
        """(length, tokens) of the longest prefix of text[start:end] within budget.

        The first probes scale the last cut's length by budget/tokens, which lands within a
        character or a word for CJK and Latin text alike; then it bisects (galloping while no upper
        bound is known). Each probe counts about one piece, so cutting huge unpunctuated text stays
        linear.
        """
        count, text, size = self.count, self.text, end - start
        low, low_tokens, high = 0, 0, size + 1  # tokens(low) <= budget < tokens(high)
        guess, probes = min(size, self.guess or budget * 2), 0
        while high - low > 1:
            tokens = count(text[start : start + guess])
            probes += 1
            if tokens <= budget:
                low, low_tokens = guess, tokens
            else:
                high = guess
            if probes <= 3:
                guess = guess * budget // max(tokens, 1) + (tokens <= budget)
            else:
                guess = low * 2 if high > size else (low + high) // 2
            guess = max(low + 1, min(guess, high - 1, size))
        if low == 0:  # a single character over budget: nothing smaller exists
            return 1, count(text[start])
        self.guess = low
        return self._word_boundary(start, low, low_tokens, budget)

    def _word_boundary(self, start: int, size: int, tokens: int, budget: int) -> tuple[int, int]:
        """Move a cut that falls inside a Latin word back to the last space in the cut's second half."""
        text = self.text
        inside_word = start + size < len(text) and (text[start + size - 1] + text[start + size]).isascii()
        if not (inside_word and text[start + size - 1].isalnum() and text[start + size].isalnum()):
            return size, tokens
        space = max(text.rfind(" ", start + size // 2, start + size), text.rfind("\n", start + size // 2, start + size))
        if space <= start:
            return size, tokens
        shorter = self.count(text[start:space])
        return (space - start, shorter) if shorter <= budget else (size, tokens)


class _Chunker:
    """Turns sections into passage pieces within `max_tokens` by `count`."""

    def __init__(self, count: Counter, max_tokens: int, overlap_tokens: int) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if overlap_tokens < 0:
            raise ValueError("overlap_tokens must not be negative")
        self.count = count
        self.max_tokens = max_tokens
        self.overlap = min(overlap_tokens, max_tokens // 2)  # leave every piece room for new text
        # what joining parts adds to the sum of their counts (0 for BERT-style tokenizers)
        self.line_join = count("\n")
        self.block_join = count("\n\n")

    def section_pieces(self, blocks: list[_Block]) -> list[_Piece]:
        pieces = [piece for block in blocks for piece in self.split_block(block)]
        return self.pack_pieces(pieces)

    def split_block(self, block: _Block) -> list[_Piece]:
        text = "\n".join(line for _, line in block.lines).strip()
        if not text:
            return []
        if len(text) <= self.max_tokens * _MAX_CHARS_PER_TOKEN:
            tokens = self.count(text)
            if tokens <= self.max_tokens:  # the common case: the block is one unit, intact
                return [_Piece(text, block.lines[0][0], block.lines[-1][0], tokens)]
        return _BlockSplitter(self, block).pieces()

    def pack_pieces(self, pieces: list[_Piece]) -> list[_Piece]:
        """Greedy: consecutive pieces joined by a blank line while the whole stays within budget."""
        out: list[_Piece] = []
        i = 0
        while i < len(pieces):
            last, planned = i, pieces[i].tokens
            while last + 1 < len(pieces) and planned + self.block_join + pieces[last + 1].tokens <= self.max_tokens:
                last += 1
                planned += self.block_join + pieces[last].tokens
            packed = pieces[i]
            while last > i:  # verify the plan with one real count; drop pieces from the end if over
                text = "\n\n".join(p.text for p in pieces[i : last + 1])
                tokens = self.count(text)
                if tokens <= self.max_tokens:
                    packed = _Piece(text, pieces[i].start, pieces[last].end, tokens)
                    break
                last -= 1
            out.append(packed)
            i = last + 1
        return out

    def pack_spans(
        self,
        spans: list[_Span],
        budget: int,
        overlap: int,
        render: Callable[..., _Piece],
        cut: Callable[[int, int, int], list[_Span]],
    ) -> list[_Piece]:
        """Pack a split block's spans into pieces; each piece after the first starts with trailing
        spans of the previous one totalling at most `overlap` tokens."""
        out: list[_Piece] = []
        i, previous_first = 0, -1
        while i < len(spans):
            first = i
            if out and overlap:
                carried = 0
                while first - 1 > previous_first and carried + spans[first - 1].tokens <= overlap:
                    first -= 1
                    carried += spans[first].tokens
            planned = sum(s.tokens for s in spans[first : i + 1]) + self.line_join * (i - first)
            while planned > budget and first < i:  # the overlap must not crowd out the new span
                planned -= spans[first].tokens + self.line_join
                first += 1
            last = i
            while last + 1 < len(spans) and planned + self.line_join + spans[last + 1].tokens <= budget:
                last += 1
                planned += self.line_join + spans[last].tokens
            piece = render(spans[first].start, spans[last].end)
            while piece.tokens > self.max_tokens and (last > i or first < i):
                if last > i:
                    last -= 1
                else:
                    first += 1
                piece = render(spans[first].start, spans[last].end)
            if piece.tokens > self.max_tokens:  # one span that overflows once framed: cut it smaller
                smaller = cut(spans[i].start, spans[i].end, max(1, spans[i].tokens - (piece.tokens - self.max_tokens)))
                if len(smaller) > 1:
                    spans[i : i + 1] = smaller
                    continue
                piece = render(spans[i].start, spans[i].end, False)  # too small to cut: drop the frame
            out.append(piece)
            previous_first, i = first, last + 1
        return out


# ----- documents -> passages ---------------------------------------------------------------------


def _sections(doc: Document) -> tuple[list[_Section], dict[str, Any]]:
    text = doc.text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    metadata = copy.deepcopy(doc.metadata)
    if doc.kind != "markdown":  # plain text (and any kind without a reader of its own)
        return _text_sections(text.split("\n")), metadata
    front, body, front_lines = parse_front_matter(text)
    metadata.update(front)
    return _MarkdownReader(first_line=front_lines + 1).read(body.split("\n")), metadata


def _file_lines(doc: Document, piece: _Piece) -> tuple[int, int]:
    """A piece's lines in the source file: shifted to where the document starts, clamped to its end."""
    offset = doc.line_start - 1
    start, end = piece.start + offset, piece.end + offset
    if doc.line_end is not None:
        start, end = min(start, doc.line_end), min(end, doc.line_end)
    return start, end


def chunk_document(
    doc: Document, count_tokens: Counter, max_tokens: int = 200, overlap_tokens: int = 40
) -> list[Passage]:
    """The passages of a document, each at most `max_tokens` by `count_tokens`, in document order."""
    chunker = _Chunker(count_tokens, max_tokens, overlap_tokens)
    sections, metadata = _sections(doc)
    passages: list[Passage] = []
    for index, section in enumerate(sections):
        blocks = section.blocks
        if not blocks and section.heading is not None:
            has_subsections = index + 1 < len(sections) and sections[index + 1].level > section.level
            title, line = section.heading
            # a heading with nothing under it is still worth finding by its title
            blocks = [] if has_subsections else [_Block("para", [(line, title)])]
        for piece in chunker.section_pieces(blocks):
            if piece.text.strip():
                start, end = _file_lines(doc, piece)
                passages.append(
                    Passage(
                        path=doc.path,
                        text=piece.text,
                        heading_path=list(section.path),
                        line_start=start,
                        line_end=end,
                        metadata=copy.deepcopy(metadata),
                    )
                )
    return passages
