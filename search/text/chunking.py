"""Sections of blocks -> passages: line-exact, within the embedding model's token budget.

A section's blocks (from `search.ingest.markdown`) are packed into passages up to `max_tokens`; a
block too big on its own is split by `search.text.splitting`.

A thought stays whole: a paragraph (or its last sentence) that ends with a colon ("有以下三点：")
goes into the same passage as the list, table, code block or formula it introduces.

Every passage records the 1-based lines of the original file its text came from, and no passage
ever counts more than `max_tokens`: counts of parts are summed to plan a passage and the passage
is then counted once for real (tokenizers are not exactly additive).
"""

from __future__ import annotations

import copy
import re
from typing import Callable

from search.ingest.markdown import LIST_ITEM, Block, document_sections
from search.schema import Document, Passage
from search.text.splitting import MAX_CHARS_PER_TOKEN, SENTENCE_END, BlockSplitter, Piece, Span

__all__ = ["chunk_document"]

Counter = Callable[[str], int]


_INTRODUCED = ("list", "table", "code", "math")  # what a colon-ended line can announce
_COLON_END = re.compile(r"[:：]\s*$")
_BULLET = re.compile(r"^\s*[•·▪●◦‣]\s")  # plain text writes its lists with these too


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

    def section_pieces(self, blocks: list[Block]) -> list[Piece]:
        pieces: list[Piece] = []
        intro: Piece | None = None  # a colon-ended piece waiting for the block it announces
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

    def intro_apart(self, piece: Piece) -> list[Piece]:
        """A long colon-ended piece as [what precedes its last sentence, that sentence]."""
        text = piece.text
        ends = [m.end() for m in SENTENCE_END.finditer(text) if m.end() < len(text.rstrip())]
        if piece.tokens * 2 <= self.max_tokens or not ends:  # short enough to go along whole
            return [piece]
        head, tail = text[: ends[-1]].rstrip(), text[ends[-1] :].lstrip()
        line = piece.start + text.count("\n", 0, len(text) - len(tail))
        return [Piece(head, piece.start, line, self.count(head)), Piece(tail, line, piece.end, self.count(tail))]

    def introduced(self, intro: Piece, block: Block) -> list[Piece]:
        """The block's pieces with `intro` glued to the first (split again with room left for it if need be)."""
        room = max(1, self.max_tokens - intro.tokens - self.block_join)
        for parts in (self.split_block(block), _Chunker(self.count, room, self.overlap).split_block(block)):
            tokens = self.count(text := f"{intro.text}\n\n{parts[0].text}") if parts else self.max_tokens + 1
            if tokens <= self.max_tokens:
                return [Piece(text, intro.start, parts[0].end, tokens), *parts[1:]]
        return [intro, *self.split_block(block)]

    def split_block(self, block: Block) -> list[Piece]:
        text = "\n".join(line for _, line in block.lines).strip()
        if not text:
            return []
        if len(text) <= self.max_tokens * MAX_CHARS_PER_TOKEN:
            tokens = self.count(text)
            if tokens <= self.max_tokens:  # the common case: the block is one unit, intact
                return [Piece(text, block.lines[0][0], block.lines[-1][0], tokens)]
        return BlockSplitter(self, block).pieces()

    def pack_pieces(self, pieces: list[Piece]) -> list[Piece]:
        """Greedy: consecutive pieces joined by a blank line while the whole stays within budget."""
        out: list[Piece] = []
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
                    packed = Piece(text, pieces[i].start, pieces[last].end, tokens)
                    break
                last -= 1
            out.append(packed)
            i = last + 1
        return out

    def pack_spans(
        self,
        spans: list[Span],
        budget: int,
        overlap: int,
        render: Callable[..., Piece],
        cut: Callable[[int, int, int], list[Span]],
    ) -> list[Piece]:
        """Pack a split block's spans into pieces; each piece after the first starts with trailing
        spans of the previous one totalling at most `overlap` tokens."""
        out: list[Piece] = []
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


def _file_lines(doc: Document, piece: Piece) -> tuple[int, int]:
    """A piece's lines in the source file: shifted to where the document starts, clamped to its end."""
    offset = doc.line_start - 1
    start, end = piece.start + offset, piece.end + offset
    if doc.line_end is not None:
        start, end = min(start, doc.line_end), min(end, doc.line_end)
    return start, end


def chunk_document(
    doc: Document, count_tokens: Counter, max_tokens: int = 200, overlap_tokens: int = 40
) -> list[Passage]:
    """The passages of a document, each at most `max_tokens` by `count_tokens`, in document order.

    Every text counts at least one token per MAX_CHARS_PER_TOKEN characters: a tokenizer gives a
    long word without spaces one [UNK] token, and a 5 MB line would otherwise be one passage. So
    no passage is longer than about max_tokens * MAX_CHARS_PER_TOKEN characters, whatever the text.
    """

    def count(text: str) -> int:
        floor = len(text) // MAX_CHARS_PER_TOKEN
        return floor if floor > max_tokens else max(count_tokens(text), floor)  # over budget either way: no need to count

    chunker = _Chunker(count, max_tokens, overlap_tokens)
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
