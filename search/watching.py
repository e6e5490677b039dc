"""Keeping an index in step with folders as files change (the rebuild job, run continuously)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Sequence

from search import SUPPORTED_SUFFIXES

# Events that do not change content; our own reads during a build raise them, so they must not
# trigger another build.
IGNORED_EVENTS = {"opened", "closed_no_write"}


def _relevant(path: str, index_dir: Path) -> bool:
    resolved = Path(os.path.abspath(path))
    if index_dir == resolved or index_dir in resolved.parents:
        return False  # the index's own files, when it lives inside a watched folder
    if any(part.startswith(".") for part in resolved.parts[1:]):
        return False
    return resolved.suffix.lower() in SUPPORTED_SUFFIXES


def watch(
    paths: Sequence[str | os.PathLike],
    index_dir: str | os.PathLike,
    model: str | None = None,
    debounce: float = 1.0,
    on_build: Callable[[object], None] | None = None,
    on_error: Callable[[Exception], None] | None = None,
    stop: threading.Event | None = None,
    follow_symlinks: bool = False,
) -> None:
    """Build once, then rebuild incrementally after files under `paths` change and stay quiet
    for `debounce` seconds. Runs until `stop` is set (or forever). A build that fails (a full disk,
    say) goes to `on_error` and the watcher keeps watching; bad files never fail a build."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    from search import BuildConfig, Engine

    index_path = Path(os.path.abspath(index_dir))
    stop = stop or threading.Event()
    changed = threading.Event()

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event) -> None:
            if event.event_type in IGNORED_EVENTS or event.is_directory and event.event_type == "modified":
                return
            candidates = [event.src_path, getattr(event, "dest_path", "") or ""]
            if event.is_directory or any(_relevant(os.fsdecode(p), index_path) for p in candidates if p):
                changed.set()

    def build() -> None:
        try:
            config = BuildConfig(follow_symlinks=follow_symlinks)
            summary = Engine.update(paths, index_dir, model=model, wait=True, build_config=config)
            if on_build:
                on_build(summary)
        except Exception as error:  # noqa: BLE001 - the watcher outlives one failed build
            if on_error is None:
                raise
            on_error(error)

    observer = Observer()
    for path in paths:
        folder = os.fspath(path) if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        observer.schedule(Handler(), folder, recursive=True)
    observer.start()
    try:
        build()
        while not stop.is_set():
            if not changed.wait(timeout=0.2):
                continue
            while changed.is_set() and not stop.is_set():  # debounce: wait for a quiet spell
                changed.clear()
                stop.wait(debounce)
            if not stop.is_set():
                build()
    finally:
        observer.stop()
        observer.join()
