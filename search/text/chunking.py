"""Sections of blocks -> passages: line-exact, within the embedding model's token budget.

A section's blocks (from `search.ingest.markdown`) are packed into passages up to `max_tokens`; a
block too big on its own is split: prose at sentence ends with a small overlap, then at commas,
then by characters; lists between items (top-level first, then nested), never inside an item that
fits; tables between rows with the header repeated; code between lines inside repeated fences.

A thought stays whole: a paragraph (or its last sentence) that ends with a colon ("有以下三点：")
goes into the same passage as the list, table, code block or formula it introduces.

Every passage records the 1-based lines of the original file its text came from, and no passage
ever counts more than `max_tokens`: counts of parts are summed to plan a passage and the passage
is then counted once for real (tokenizers are not exactly additive).
"""

from __future__ import annotations

import copy
import re
from bisect import bisect_right
from typing import Callable, NamedTuple

from search.ingest.markdown import FENCE_CLOSE, LIST_ITEM, Block, document_sections, is_table_sep
from search.schema import Document, Passage

__all__ = ["chunk_document"]

Counter = Callable[[str], int]


# A span longer than this many characters per token of budget is split without counting it first:
# counting it would only confirm it is too big (packing re-joins the parts if it was not).
_MAX_CHARS_PER_TOKEN = 12


# ----- splitting and packing ---------------------------------------------------------------------

# A sentence ends after Chinese 。！？；… (any following character), or after . ! ? followed by
# whitespace or the end; closing quotes and brackets stay with the sentence they close.
_CLOSERS = "\"'”’」』）)\\]】》"
_SENTENCE_END = re.compile(rf"(?:[。！？；｡．…]+|[.!?]+(?=[{_CLOSERS}]*(?:\s|$)))[{_CLOSERS}]*")
_CLAUSE_END = re.compile(r"[，,、､﹐\n]")
_LINE_END = re.compile(r"\n")
_PROSE_LEVELS = ("sentence", "clause")
_LINE_LEVELS = ("line", "sentence", "clause")
_LIST_LEVELS = ("item", "subitem", "line", "sentence", "clause")
_INTRODUCED = ("list", "table", "code", "math")  # what a colon-ended line can announce
_COLON_END = re.compile(r"[:：]\s*$")
_BULLET = re.compile(r"^\s*[•·▪●◦‣]\s")  # plain text writes its lists with these too


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

    def __init__(self, chunker: "_Chunker", block: Block) -> None:
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
        self.levels = {"para": _PROSE_LEVELS, "list": _LIST_LEVELS}.get(block.kind, _LINE_LEVELS)
        self.overlap = chunker.overlap if block.kind in ("para", "text") else 0
        self.guess = 0  # the last hard cut's length: the next one is likely alike

    def _frame(self, block: Block) -> tuple[int, int]:
        """How many leading and trailing lines repeat on every piece."""
        lines = [line for _, line in block.lines]
        if block.kind == "table" and len(lines) > 2 and is_table_sep(lines[1]):
            return 2, 0
        if block.kind == "code" and len(lines) > 2:
            return 1, int(FENCE_CLOSE.match(lines[-1]) is not None)
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

    def _item_starts(self, start: int, end: int, top_only: bool) -> list[int]:
        """Offsets in text[start:end] where a list item begins (of the least indented ones only)."""
        items = [(len(line) - len(line.lstrip()), at) for at, line in zip(self.starts, self.text.split("\n"))
                 if start <= at < end and LIST_ITEM.match(line)]
        least = min((indent for indent, _ in items), default=0)
        return [at for indent, at in items if indent == least or not top_only]

    def _split_at(self, start: int, end: int, level: str) -> list[tuple[int, int]]:
        """text[start:end] cut after every boundary of the level ("item", "subitem", "line",
        "sentence", "clause"); an item boundary is the start of an item's first line."""
        if level in ("item", "subitem"):
            cuts = self._item_starts(start, end, level == "item")
        else:
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

    def section_pieces(self, blocks: list[Block]) -> list[_Piece]:
        pieces: list[_Piece] = []
        intro: _Piece | None = None  # a colon-ended piece waiting for the block it announces
        for block in blocks:
            if intro is not None and (block.kind in _INTRODUCED or _BULLET.match(block.lines[0][1]) or LIST_ITEM.match(block.lines[0][1])):
                pieces.extend(self.introduced(intro, block))
                intro = None
                continue
            pieces.extend([intro] if intro else [])
            split, intro = self.split_block(block), None
            if split and block.kind in ("para", "text") and _COLON_END.search(split[-1].text):
                *split, intro = split[:-1] + self.intro_apart(split[-1])
                if intro.tokens * 2 > self.max_tokens:  # too long to ride along: an ordinary piece
                    split, intro = [*split, intro], None
            pieces.extend(split)
        return self.pack_pieces(pieces + ([intro] if intro else []))

    def intro_apart(self, piece: _Piece) -> list[_Piece]:
        """A long colon-ended piece as [what precedes its last sentence, that sentence]."""
        text = piece.text
        ends = [m.end() for m in _SENTENCE_END.finditer(text) if m.end() < len(text.rstrip())]
        if piece.tokens * 2 <= self.max_tokens or not ends:  # short enough to go along whole
            return [piece]
        head, tail = text[: ends[-1]].rstrip(), text[ends[-1] :].lstrip()
        line = piece.start + text.count("\n", 0, len(text) - len(tail))
        return [_Piece(head, piece.start, line, self.count(head)), _Piece(tail, line, piece.end, self.count(tail))]

    def introduced(self, intro: _Piece, block: Block) -> list[_Piece]:
        """The block's pieces with `intro` glued to the first (split again with room left for it if need be)."""
        room = max(1, self.max_tokens - intro.tokens - self.block_join)
        for parts in (self.split_block(block), _Chunker(self.count, room, self.overlap).split_block(block)):
            tokens = self.count(text := f"{intro.text}\n\n{parts[0].text}") if parts else self.max_tokens + 1
            if tokens <= self.max_tokens:
                return [_Piece(text, intro.start, parts[0].end, tokens), *parts[1:]]
        return [intro, *self.split_block(block)]

    def split_block(self, block: Block) -> list[_Piece]:
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
    sections, metadata = document_sections(doc)
    passages: list[Passage] = []
    for index, section in enumerate(sections):
        blocks = section.blocks
        if not blocks and section.heading is not None:
            has_subsections = index + 1 < len(sections) and sections[index + 1].level > section.level
            title, line = section.heading
            # a heading with nothing under it is still worth finding by its title
            blocks = [] if has_subsections else [Block("para", [(line, title)])]
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
