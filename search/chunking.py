"""Splitting documents into passages: Document -> list[Passage].

Markdown is read structurally: front matter becomes metadata, headings make sections (every
passage carries its heading path and source line range), Liquid tags and HTML comments go, links
and images keep their visible text. Blocks (paragraphs, code, tables, formulas) are packed into
passages up to a token budget counted with the embedding model's own tokenizer; an oversized block
is split at sentence ends (Chinese and English) with a small overlap, tables between rows with the
header repeated, code between lines. No passage ever exceeds the budget.

Hand-written because no library keeps line numbers through markdown cleanup and splits Chinese
sentences against a model's token budget.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from search.schema import Document, Passage

Counter = Callable[[str], int]

FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)^---[ \t]*$\n?", re.S | re.M)
FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
TABLE_ROW = re.compile(r"^\s*\|")
TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
LIQUID = re.compile(r"\{%.*?%\}|\{\{.*?\}\}", re.S)
VISIBLE_ATTRIBUTE = re.compile(r"\b(?:caption|alt|title)\s*=\s*(?:\"([^\"]*)\"|'([^']*)')")
IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)|\[([^\]]+)\]\[[^\]]*\]")
AUTOLINK = re.compile(r"<((?:https?|ftp|mailto):[^>\s]+)>")
HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+\S+.*$")
EMPHASIS = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
# A sentence ends after Chinese 。！？； (with closing quotes), or after . ! ? followed by space/end.
SENTENCE_END = re.compile(r"[。！？；!?;…]+[”’」』）)\"']*|(?<=[^\W\d_])\.(?=\s|$)[”’\"')]*|\.(?=\s)")
CLAUSE_END = re.compile(r"[，,、：:]")


@dataclass
class Unit:
    """A piece of text with its source lines and token count."""

    text: str
    start: int
    end: int
    tokens: int


@dataclass
class Block:
    kind: str  # "prose" | "code" | "table" | "formula"
    lines: list[str]
    start: int  # 1-based line number of lines[0]

    @property
    def text(self) -> str:
        return "\n".join(self.lines).strip("\n")

    @property
    def end(self) -> int:
        return self.start + len(self.lines) - 1


@dataclass
class Section:
    heading_path: list[str]
    level: int
    heading_line: int
    blocks: list[Block]


# ----- front matter ---------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def parse_front_matter(text: str) -> tuple[dict[str, Any], str, int]:
    """(metadata, body, number of lines the front matter took). Bad YAML gives empty metadata."""
    match = FRONT_MATTER.match(text)
    if not match:
        return {}, text, 0
    try:
        data = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError:
        data = {}
    metadata: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            if value is None or value == "" or value == []:
                continue
            if key in ("tags", "categories"):
                value = [value] if isinstance(value, str) else [str(v) for v in value]
            metadata[str(key)] = _json_safe(value)
    return metadata, text[match.end() :], match.group(0).count("\n")


# ----- markdown cleanup (keeps line count so line numbers stay true) --------------------------


def _keep_newlines(replacement: str, original: str) -> str:
    return replacement + "\n" * original.count("\n")


def _liquid_visible_text(match: re.Match) -> str:
    kept = " ".join(a or b for a, b in VISIBLE_ATTRIBUTE.findall(match.group(0)))
    return _keep_newlines(kept, match.group(0))


def _strip_tags(text: str) -> str:
    text = HTML_COMMENT.sub(lambda m: _keep_newlines("", m.group(0)), text)
    return LIQUID.sub(_liquid_visible_text, text)


def clean_inline(line: str) -> str:
    """Markdown inline syntax -> what a reader sees."""
    if REFERENCE_DEFINITION.match(line):
        return ""
    line = IMAGE.sub(r"\1", line)
    line = LINK.sub(lambda m: m.group(1) or m.group(2), line)
    line = AUTOLINK.sub(r"\1", line)
    line = HTML_TAG.sub("", line)
    return EMPHASIS.sub(r"\2", line).rstrip()


def _clean_outside_code(lines: list[str]) -> list[str]:
    """Remove comments and Liquid tags everywhere except inside fenced code."""
    out: list[str] = []
    segment: list[str] = []
    fence: str | None = None

    def flush() -> None:
        if segment:
            out.extend(_strip_tags("\n".join(segment)).split("\n"))
            segment.clear()

    for line in lines:
        marker = FENCE.match(line)
        if fence is None and marker:
            flush()
            fence = marker.group(1)[0] * 3
            out.append(line)
        elif fence is not None:
            out.append(line)
            if line.strip().startswith(fence):
                fence = None
        else:
            segment.append(line)
    flush()
    return out


# ----- markdown structure -----------------------------------------------------------------------


def markdown_sections(lines: list[str], first_line: int) -> list[Section]:
    """Sections (heading path + blocks); line numbers are 1-based in the original file."""
    sections = [Section([], 0, 0, [])]
    stack: list[tuple[int, str]] = []
    paragraph: list[str] = []
    paragraph_start = 0
    i = 0

    def end_paragraph() -> None:
        nonlocal paragraph
        if any(line.strip() for line in paragraph):
            sections[-1].blocks.append(Block("prose", paragraph, paragraph_start))
        paragraph = []

    while i < len(lines):
        line, number = lines[i], first_line + i
        fence = FENCE.match(line)
        heading = HEADING.match(line)
        if fence or line.strip().startswith("$$"):
            end_paragraph()
            closing = fence.group(1)[0] * 3 if fence else "$$"
            j = i + 1
            single_formula = not fence and line.strip() != "$$" and line.strip().endswith("$$")
            while not single_formula and j < len(lines) and closing not in lines[j]:
                j += 1
            j = min(j, len(lines) - 1)
            sections[-1].blocks.append(Block("code" if fence else "formula", lines[i : j + 1], number))
            i = j + 1
            continue
        if heading:
            end_paragraph()
            level, title = len(heading.group(1)), clean_inline(heading.group(2)).strip()
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            sections.append(Section([t for _, t in stack], level, number, []))
        elif TABLE_ROW.match(line):
            end_paragraph()
            j = i
            while j < len(lines) and TABLE_ROW.match(lines[j]):
                j += 1
            rows = [clean_inline(row) for row in lines[i:j]]
            sections[-1].blocks.append(Block("table", rows, number))
            i = j
            continue
        elif not line.strip():
            end_paragraph()
        else:
            if not paragraph:
                paragraph_start = number
            paragraph.append(clean_inline(line))
        i += 1
    end_paragraph()
    return sections


# ----- splitting oversized blocks ---------------------------------------------------------------


def _hard_split(text: str, start: int, count: Counter, budget: int) -> list[Unit]:
    """Cut text by characters into the longest prefixes within budget (binary search)."""
    units = []
    while text:
        low, high = 1, len(text)
        while low < high:
            middle = (low + high + 1) // 2
            if count(text[:middle]) <= budget:
                low = middle
            else:
                high = middle - 1
        piece, text = text[:low], text[low:]
        units.append(Unit(piece, start, start, count(piece)))
    return units


def _sentences(text: str, start: int) -> list[tuple[str, int, int]]:
    """(sentence, first line, last line); lines of a paragraph also end sentences."""
    out = []
    for offset, line in enumerate(text.split("\n")):
        position = 0
        for match in SENTENCE_END.finditer(line):
            piece = line[position : match.end()]
            if piece.strip():
                out.append((piece, start + offset, start + offset))
            position = match.end()
        if line[position:].strip():
            out.append((line[position:], start + offset, start + offset))
    return out


def _fit(text: str, first: int, last: int, count: Counter, budget: int) -> list[Unit]:
    """One sentence as units within budget: whole, else at clause marks, else by characters."""
    tokens = count(text)
    if tokens <= budget:
        return [Unit(text, first, last, tokens)]
    units: list[Unit] = []
    position = 0
    for match in CLAUSE_END.finditer(text):
        units.append(Unit(text[position : match.end()], first, last, 0))
        position = match.end()
    units.append(Unit(text[position:], first, last, 0))
    if len(units) == 1:
        return _hard_split(text, first, count, budget)
    out: list[Unit] = []
    for unit in units:
        unit.tokens = count(unit.text)
        out.extend([unit] if unit.tokens <= budget else _hard_split(unit.text, first, count, budget))
    return _pack(out, count, budget, overlap=0, joiner="")


def _pack(units: list[Unit], count: Counter, budget: int, overlap: int, joiner: str) -> list[Unit]:
    """Greedy packing of consecutive units within budget; each new piece repeats the trailing
    units of the previous one up to `overlap` tokens."""
    pieces: list[Unit] = []
    current: list[Unit] = []

    def emit() -> None:
        text = joiner.join(u.text for u in current).strip()
        if text:
            pieces.append(Unit(text, current[0].start, current[-1].end, count(text)))

    for unit in units:
        if current and sum(u.tokens for u in current) + unit.tokens > budget:
            emit()
            carried: list[Unit] = []
            carried_tokens = 0
            for previous in reversed(current):
                carried_tokens += previous.tokens
                if carried_tokens > overlap or carried_tokens + unit.tokens > budget:
                    break
                carried.insert(0, previous)
            current = carried
        current.append(unit)
    if current:
        emit()
    return pieces


def split_block(block: Block, count: Counter, budget: int, overlap: int) -> list[Unit]:
    """A block as units that each fit the budget."""
    text = block.text
    tokens = count(text)
    if tokens <= budget:
        return [Unit(text, block.start, block.end, tokens)]
    if block.kind == "table":
        return _split_table(block, count, budget)
    if block.kind in ("code", "formula"):
        lines = [u for i, line in enumerate(block.lines) for u in _fit(line, block.start + i, block.start + i, count, budget)]
        return _pack(lines, count, budget, overlap=0, joiner="\n")
    sentences = [u for s, a, b in _sentences(text, block.start) for u in _fit(s, a, b, count, budget)]
    joiner = "" if any("\u4e00" <= ch <= "\u9fff" for ch in text[:200]) else " "
    return _pack([Unit(u.text.strip() if joiner else u.text, u.start, u.end, u.tokens) for u in sentences], count, budget, overlap, joiner)


def _split_table(block: Block, count: Counter, budget: int) -> list[Unit]:
    """Rows packed into pieces, each starting with the header (and separator) rows."""
    has_separator = len(block.lines) > 1 and TABLE_SEPARATOR.match(block.lines[1])
    header = block.lines[:2] if has_separator else block.lines[:1]
    header_tokens = count("\n".join(header))
    if header_tokens * 2 > budget:  # a header too big to repeat: plain row packing
        header, header_tokens = [], 0
    rows = [Unit(line, block.start + i, block.start + i, 0) for i, line in enumerate(block.lines) if i >= len(header)]
    units = []
    for row in rows:
        row.tokens = count(row.text)
        units.extend([row] if row.tokens <= budget - header_tokens else _fit(row.text, row.start, row.end, count, budget - header_tokens))
    packed = _pack(units, count, budget - header_tokens, overlap=0, joiner="\n")
    prefix = "\n".join(header)
    return [Unit(f"{prefix}\n{p.text}" if prefix else p.text, p.start, p.end, p.tokens + header_tokens) for p in packed]


# ----- documents -> passages -----------------------------------------------------------------


def _section_passages(section: Section, path: str, metadata: dict, count: Counter, budget: int, overlap: int) -> list[Passage]:
    units = [u for block in section.blocks for u in split_block(block, count, budget, overlap)]
    passages = []
    for piece in _pack(units, count, budget, overlap=0, joiner="\n\n"):
        # token counts of parts add up for BERT-style tokenizers; other tokenizers may need a cut
        fitted = [piece] if piece.tokens <= budget else _hard_split(piece.text, piece.start, count, budget)
        for unit in fitted:
            passages.append(Passage(path, unit.text, list(section.heading_path), piece.start, piece.end, dict(metadata)))
    return passages


def chunk_document(doc: Document, count_tokens: Counter, max_tokens: int = 200, overlap_tokens: int = 40) -> list[Passage]:
    """Passages of a document, none longer than `max_tokens` by `count_tokens`."""
    if doc.kind == "markdown":
        metadata, body, skipped_lines = parse_front_matter(doc.text)
        metadata = {**doc.metadata, **metadata}
        lines = _clean_outside_code(body.split("\n"))
        sections = markdown_sections(lines, first_line=skipped_lines + 1)
    else:
        metadata = dict(doc.metadata)
        blocks = [Block("prose", [line.rstrip()], i + 1) for i, line in enumerate(doc.text.split("\n")) if line.strip()]
        sections = [Section([], 0, 0, blocks)]
    passages: list[Passage] = []
    for i, section in enumerate(sections):
        has_children = i + 1 < len(sections) and sections[i + 1].level > section.level
        if section.blocks:
            passages.extend(_section_passages(section, doc.path, metadata, count_tokens, max_tokens, overlap_tokens))
        elif section.heading_path and not has_children:
            # a heading with nothing under it is still worth finding by its title
            title = section.heading_path[-1]
            passages.append(Passage(doc.path, title, list(section.heading_path), section.heading_line, section.heading_line, dict(metadata)))
    return passages
