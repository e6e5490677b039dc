"""Reading an index ahead into the OS page cache, for long-lived engines (the server)."""

import ctypes
import mmap
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from search import Engine
from search.index.folder import IndexFolder
from search.server.engines import EngineHolder

from conftest import ROOT, write_notes

pytestmark = pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="page-cache advice is Linux's")


def cached_pages(path: Path) -> tuple[int, int]:
    """(pages of the file in the OS page cache, pages of the file), from mincore on a private mapping."""
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    if not size:
        return 0, 0
    flags = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY) as mapping:
        start = ctypes.c_char.from_buffer(mapping)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.mincore(ctypes.c_void_p(ctypes.addressof(start)), ctypes.c_size_t(size), flags) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del start  # the mapping cannot close while ctypes holds a view of it
    return sum(flag & 1 for flag in flags), pages


def share_cached(folder: Path) -> float:
    counts = [cached_pages(path) for path in IndexFolder(folder).current().files()]
    return sum(cached for cached, _ in counts) / max(1, sum(pages for _, pages in counts))


def evict(folder: Path) -> None:
    """Drop the generation's clean pages from the page cache (files that no process maps)."""
    for path in IndexFolder(folder).current().files():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


@pytest.fixture(scope="module")
def index() -> Iterator[Path]:
    # beside the checkout, not in the temporary folder: that may be a tmpfs, which keeps every file in
    # memory whatever the advice, and there would be nothing to read ahead
    (ROOT / "indexes").mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="read-ahead-test-", dir=ROOT / "indexes"))
    try:
        engine, _ = Engine.build([write_notes(root / "notes")], root / "index")
        engine.close()
        yield root / "index"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def evicted(index: Path) -> Path:
    evict(index)
    if share_cached(index) > 0.2:
        pytest.skip("the checkout's filesystem keeps files in memory whatever the advice (tmpfs?)")
    return index


def test_read_ahead_brings_every_file_of_the_index_into_the_page_cache(index):
    evicted(index)
    with Engine.open(index) as engine:
        assert engine.read_ahead() == IndexFolder(index).current().size_bytes()
        assert share_cached(index) == 1.0


def test_a_closed_engine_reads_nothing_ahead(index):
    engine = Engine.open(index)
    engine.close()
    assert engine.read_ahead() == 0


def test_the_server_reads_the_index_ahead_when_it_opens_it(index):
    evicted(index)
    holder = EngineHolder(index)
    try:
        with holder.lease() as slot:
            deadline = time.monotonic() + 10
            while share_cached(index) < 1.0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert share_cached(index) == 1.0
            assert slot.engine.search("序列并行", k=1).hits
    finally:
        holder.close()
