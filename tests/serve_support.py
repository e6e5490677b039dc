"""Helpers for the tests of `search serve` / `search mcp`: small indexes of the repo's corpus/ and a
real uvicorn server on a free loopback port in a background thread."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "corpus"
SEQUENCE_NOTE = "分布式训练笔记.md"  # holds the sequence-parallelism passage (序列并行), tagged 机器学习
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))}


def copy_corpus(folder: Path) -> Path:
    """The repo's sample notes (five small files, Chinese and English), copied so tests may edit them."""
    folder.mkdir(parents=True, exist_ok=True)
    for note in CORPUS.iterdir():
        if note.is_file():
            shutil.copy2(note, folder / note.name)
    return folder


def build_index(notes: Path, index_dir: Path) -> dict:
    """Index `notes` with the real models; returns the index's stats."""
    from search import Engine

    engine, _summary = Engine.build([str(notes)], str(index_dir))
    with engine:
        return engine.stats()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RunningServer:
    """`with RunningServer(config) as server: server.url` — the app on uvicorn in a thread."""

    def __init__(self, config, service=None) -> None:
        import uvicorn

        from search.server import create_app

        self.config = config
        self.app = create_app(config, service)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=config.host, port=config.port, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="test-server", daemon=True)
        self.url = f"http://{config.host}:{config.port}"

    def __enter__(self) -> "RunningServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def wait_until(predicate, timeout: float, interval: float = 0.2):
    """predicate() until truthy (returned) or `timeout` seconds passed (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def search_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "search.cli", *args]
