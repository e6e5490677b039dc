"""What a build did (`BuildSummary`), where its time went (`StageTimer`), and how it reports progress."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

from search.errors import LoadError
from search.schema import Skipped

__all__ = ["BuildSummary", "Progress", "StageTimer", "skip_reason"]

# progress(stage, done, total): `done` more units of `stage` finished (total None when unknown).
# The library reports; the CLI decides how to show it (a tqdm bar per stage).
Progress = Callable[[str, int, "int | None"], None]


@dataclass
class BuildSummary:
    files_added: int = 0
    files_changed: int = 0
    files_removed: int = 0
    files_unchanged: int = 0
    passages_embedded: int = 0
    passages_reused: int = 0
    passages: int = 0
    seconds: float = 0.0
    skipped: list[Skipped] = field(default_factory=list)
    # stages interleave in a streaming build: each sums the time spent in it
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [asdict(s) for s in self.skipped]
        return data


class StageTimer:
    """Seconds spent per build stage, summed over the interleaved streaming steps."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - started)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def rounded(self) -> dict[str, float]:
        return {stage: round(seconds, 3) for stage, seconds in self.seconds.items()}


def skip_reason(error: BaseException) -> str:
    """Why a file was skipped, as one short line, whatever the reader raised."""
    if isinstance(error, LoadError):
        reason = str(error)
    elif isinstance(error, OSError):
        reason = f"cannot read: {error.strerror or error}"
    elif isinstance(error, RecursionError):
        reason = "nested too deeply to read"
    elif isinstance(error, MemoryError):
        reason = "too big to read in the memory there is"
    else:
        reason = f"cannot read ({type(error).__name__}: {error})"
    reason = " ".join(reason.split())  # one line, however the error was worded
    return reason if len(reason) <= 300 else reason[:299] + "…"
