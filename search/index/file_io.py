"""How an index's files are written and shared: hard links between generations, byte ranges copied by
the kernel, files mapped for writing with their blocks allocated first, fsyncs, and atomic replacement
(search.index.folder lays the files out; the stages write them through these)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["COPY_CHUNK", "copy_range", "fsync_tree", "link_or_copy", "new_mapped_npy", "write_atomic"]


def _fsync(path: str | os.PathLike) -> None:
    """A file's or a folder's content and entries on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no bytes written), or a copy where the filesystem has none."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def fsync_tree(folder: Path) -> None:
    """Every file under `folder`, and every folder in it, on disk: what must be durable before CURRENT
    (or another pointer) names it."""
    for directory, _, files in os.walk(folder):
        for name in files:
            _fsync(os.path.join(directory, name))
        _fsync(directory)


# Where the kernel cannot copy between two files (another filesystem, an old kernel, a filesystem without
# it), `copy_range` moves the bytes through memory this much at a time.
COPY_CHUNK = 8 << 20
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}


def copy_range(source: int, target: int, start: int, end: int, target_at: int | None = None) -> None:
    """Copy bytes [start, end) of the open file `source` into `target` (descriptors): at `target_at`, or
    where `target`'s position is (which then moves past them). In the kernel where it can
    (copy_file_range: 100k passages' tokens, 75 MB, took 63-199 ms through Python's memory and 22-32 ms
    in the kernel, fresh pages costing more than the copy on a VM), else COPY_CHUNK at a time."""
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while start + done < end:
                at = None if target_at is None else target_at + done
                copied = os.copy_file_range(source, target, end - start - done, start + done, at)
                if not copied:
                    break
                done += copied
        except OSError as error:
            if error.errno not in _NO_KERNEL_COPY:
                raise
    while start + done < end:
        chunk = os.pread(source, min(COPY_CHUNK, end - start - done), start + done)
        if not chunk:
            raise OSError(errno.EIO, f"the file ended {end - start - done} bytes early")
        while chunk:
            written = os.write(target, chunk) if target_at is None else os.pwrite(target, chunk, target_at + done)
            chunk, done = chunk[written:], done + written


def new_mapped_npy(path: Path, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A new .npy file, memory-mapped for writing, with its blocks allocated first. A full disk then
    raises ENOSPC here, as a plain write would; through the map, the first write to a page beyond the
    free space is a SIGBUS that kills the process. Where the system or the filesystem cannot allocate
    ahead (macOS, some network filesystems), the blocks come as the pages are written."""
    mapped = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is not None:
        with open(path, "r+b") as handle:
            try:
                allocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
            except OSError as error:
                if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
    return mapped


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so readers see either the old or the new content, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)
