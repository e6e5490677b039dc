"""Carrying unchanged files over: their passages, tokens, facets, BM25 term ids and vectors go from the previous
generation into the new one as copied runs, never decoded and written again one passage at a time.

Consecutive unchanged files usually sit side by side in the previous generation too, so their runs
join into one unit (`joined`), copied `RUN_PASSAGES` passages at a time (a bounded read however large
the index).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from search.index.bm25_terms import TermWriter
from search.index.facets import FacetWriter, read_facets
from search.index.folder import Generation
from search.index.passage_store import PassageStore, PassageWriter, TokenStore
from search.index.report import StageTimer
from search.index.vectors import VectorWriter

__all__ = ["Carrier", "RUN_PASSAGES", "Run", "joined"]

RUN_PASSAGES = 65_536  # passages copied at a time (their bytes are held while copied)


@dataclass
class Run:
    """Unchanged files side by side in the previous generation: its passages [first, first + count),
    and each file's (path, its entry in the manifest, its passage count), in order."""

    first: int
    count: int
    files: list[tuple[str, dict[str, Any], int]]


def joined(units: Iterable[Any]) -> Iterator[Any]:
    """A build's units with neighbouring runs joined: one unit, not one per file, goes down the build's
    pipeline (20k files: 0.5 s of it)."""
    run = None
    for unit in units:
        if isinstance(unit, Run) and run is not None and run.first + run.count == unit.first:
            run.count += unit.count
            run.files += unit.files
            continue
        if run is not None:
            yield run
        run, unit = (unit, None) if isinstance(unit, Run) else (None, unit)
        if unit is not None:
            yield unit
    if run is not None:
        yield run


class Carrier:
    """Copies the previous generation's passages [first, first + count) runs, in the order given, after
    whatever the writer holds; `pending` of them are not written yet."""

    def __init__(self, previous: Generation, writer: PassageWriter, vectors: VectorWriter | None, terms: TermWriter, facets: FacetWriter,
                 timer: StageTimer) -> None:
        self.writer, self.vectors, self.terms, self.facets, self.timer = writer, vectors, terms, facets, timer
        self.passages, self.tokens, self.previous_facets = PassageStore(previous), TokenStore(previous), read_facets(previous)
        self.first = self.pending = 0

    def add(self, first: int, count: int) -> None:
        if self.pending and self.first + self.pending != first:
            self.flush()
        if not self.pending:
            self.first = first
        self.pending += count

    def flush(self) -> None:
        """Write the pending run (before a new passage, and at the end), RUN_PASSAGES at a time."""
        first, pending = self.first, self.pending
        self.pending = 0
        for start in range(first, first + pending, RUN_PASSAGES):
            self._copy(start, min(RUN_PASSAGES, first + pending - start))

    def _copy(self, first: int, count: int) -> None:
        with self.timer("write"):
            new_first = self.writer.add_block(self.passages.span(first, count), self.tokens.span(first, count),
                                              self.passages.text_keys_of(first, count))
            self.facets.add_run(self.previous_facets, first, count)
            if not self.terms.add_block(first, count):  # a previous generation without term ids
                for pid in range(first, first + count):
                    self.terms.add(self.tokens.get(pid))
        # vectors by passage id; by text when that cannot be (another encoder now, a damaged space)
        if self.vectors is not None and not self.vectors.add_block(new_first, first, count):
            for offset in range(count):
                self.vectors.add(new_first + offset, self.passages.get(first + offset))
