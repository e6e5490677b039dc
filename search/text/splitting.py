"""One block over the token budget -> pieces that each fit: prose at sentence ends with a small
overlap, then at commas, then by characters; lists between items (top-level first, then nested);
tables between rows with the header repeated; code between lines inside repeated fences."""

from __future__ import annotations

import re
from bisect import bisect_right
from typing import Any, Callable, NamedTuple

from search.ingest.markdown import FENCE_CLOSE, LIST_ITEM, Block, is_table_sep

__all__ = ["MAX_CHARS_PER_TOKEN", "SENTENCE_END", "BlockSplitter", "Piece", "Span"]

Counter = Callable[[str], int]


# A span longer than this many characters per token of budget is split without counting it first:
# counting it would only confirm it is too big (packing re-joins the parts if it was not).
MAX_CHARS_PER_TOKEN = 12


# ----- splitting and packing ---------------------------------------------------------------------

# A sentence ends after Chinese 。！？；… (any following character), or after . ! ? followed by
# whitespace or the end; closing quotes and brackets stay with the sentence they close.
_CLOSERS = "\"'”’」』）)\\]】》"
SENTENCE_END = re.compile(rf"(?:[。！？；｡．…]+|[.!?]+(?=[{_CLOSERS}]*(?:\s|$)))[{_CLOSERS}]*")
_CLAUSE_END = re.compile(r"[，,、､﹐\n]")
_LINE_END = re.compile(r"\n")
_PROSE_LEVELS = ("sentence", "clause")
_LINE_LEVELS = ("line", "sentence", "clause")
_LIST_LEVELS = ("item", "subitem", "line", "sentence", "clause")


class Span(NamedTuple):
    start: int  # offsets into the block's text
    end: int
    tokens: int


class Piece(NamedTuple):
    text: str
    start: int  # 1-based source lines
    end: int
    tokens: int


class BlockSplitter:
    """Splits one block that is over budget into pieces that each fit.

    The block's text is its cleaned lines joined by newlines; every unit is a span of that text,
    so each piece maps back to the source lines it came from. Tables, code and formulas have a
    frame (header rows, fences, $$ lines) repeated around every piece.
    """

    def __init__(self, chunker: Any, block: Block) -> None:  # a chunking._Chunker: its count, budget and packing
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

    def pieces(self) -> list[Piece]:
        spans = self._atomize(*self.body, self.levels, self.budget)
        if not spans:
            return []
        self.first, self.last = spans[0].start, spans[-1].end
        return self.chunker.pack_spans(spans, self.budget, self.overlap, self._render, self._hard_cut)

    def _render(self, start: int, end: int, framed: bool = True) -> Piece:
        """The piece for text[start:end], framed, with the source lines it came from."""
        at_first, at_last = start == self.first, end == self.last
        body_start = 0 if at_first and framed else start  # the first piece keeps the real header lines
        body_end = len(self.text) if at_last and framed else end
        parts = [self.head if framed and not at_first else "", self.text[body_start:body_end]]
        parts.append(self.tail if framed and not at_last else "")
        text = "\n".join(part for part in parts if part).strip()
        first_line = self.numbers[0] if at_first and framed else self._line_of(start)
        last_line = self.numbers[-1] if at_last and framed else self._line_of(end - 1)
        return Piece(text, first_line, last_line, self.count(text))

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
            pattern = {"line": _LINE_END, "sentence": SENTENCE_END, "clause": _CLAUSE_END}[level]
            cuts = [m.end() for m in pattern.finditer(self.text, start, end)]
        bounds = [start] + [c for c in cuts if start < c < end] + [end]
        return list(zip(bounds, bounds[1:]))

    def _atomize(self, start: int, end: int, levels: tuple[str, ...], budget: int) -> list[Span]:
        """Spans covering text[start:end], each within budget: the coarsest units that fit."""
        start, end = self._trim(start, end)
        if start >= end:
            return []
        if not levels:
            return self._hard_cut(start, end, budget)
        parts = self._split_at(start, end, levels[0])
        if len(parts) == 1:  # no boundary of this kind: try the next finer one
            return self._atomize(start, end, levels[1:], budget)
        spans: list[Span] = []
        for part_start, part_end in parts:
            part_start, part_end = self._trim(part_start, part_end)
            if part_start >= part_end:
                continue
            tokens = None
            if part_end - part_start <= budget * MAX_CHARS_PER_TOKEN:
                tokens = self.count(self.text[part_start:part_end])
            if tokens is not None and tokens <= budget:
                spans.append(Span(part_start, part_end, tokens))
            else:
                spans.extend(self._atomize(part_start, part_end, levels[1:], budget))
        return spans

    def _hard_cut(self, start: int, end: int, budget: int) -> list[Span]:
        """Consecutive longest prefixes within budget (for text with no usable boundary)."""
        spans: list[Span] = []
        start, end = self._trim(start, end)
        while start < end:
            size, tokens = self._longest_prefix(start, end, budget)
            cut_start, cut_end = self._trim(start, start + size)
            spans.append(Span(cut_start, cut_end, tokens))
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
