"""Peak resident memory of this process and of child processes, for the benchmarks.

Not `getrusage().ru_maxrss`: Linux carries a process's peak across exec, and Python starts children
with vfork + exec, so a child's ru_maxrss reports the parent's peak whenever the parent was larger (a
benchmark holding 2 GB of vectors made every query process it started "use" 2.9 GB). VmHWM in
/proc/PID/status is the high-water mark of the process's own address space since its exec.
"""

from __future__ import annotations

import os
import subprocess
import threading

SAMPLE_SECONDS = 0.005


def high_water_bytes(pid: int | str = "self") -> int:
    """VmHWM of a running process (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def tree_rss_bytes(pid: int) -> int:
    """Summed current RSS of a process and its descendants (a tokenizer pool, say)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/statm") as handle:
                total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    todo.extend(int(child) for child in handle.read().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


class PeakSampler:
    """Samples a child's VmHWM (its own peak) and its process tree's summed RSS until stopped.

    VmHWM only grows, so the last sample before the child exits is its peak, give or take what it
    allocated in its final few milliseconds.
    """

    def __init__(self, process: subprocess.Popen, tree_every: float = 0.2) -> None:
        self.process = process
        self.peak_bytes = 0
        self.peak_tree_bytes = 0
        self._tree_every = tree_every
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        since_tree = self._tree_every
        while not self._done.is_set():
            self.peak_bytes = max(self.peak_bytes, high_water_bytes(self.process.pid))
            if since_tree >= self._tree_every:
                self.peak_tree_bytes = max(self.peak_tree_bytes, tree_rss_bytes(self.process.pid))
                since_tree = 0.0
            self._done.wait(SAMPLE_SECONDS)
            since_tree += SAMPLE_SECONDS

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
