"""jieba, loaded fast: its word table memory-mapped for short jobs, its own in-memory table for long ones."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from search.cache import cache_root, trusted

__all__ = ["CompactDictionary", "get_jieba"]

_jieba_lock = threading.Lock()
_jieba_tokenizer: Any = None
_jieba_cuts = 0  # uncached CJK runs cut in this process
# A process that cuts more runs than this (a build, an eval) switches to jieba's in-memory dictionary:
# its ~1 s load then costs less than the memory-mapped lookups (~5 us each, ~5 per character).
FULL_DICTIONARY_AFTER = 500


class CompactDictionary:
    """jieba's word -> frequency table (``Tokenizer.FREQ``) as two memory-mapped arrays on disk.

    Loading jieba's own table unmarshals ~500k strings (0.7-1.3 s on two cores), most of a cold
    `search query`. jieba only asks FREQ for ``in``, ``[]`` and ``get``, so a binary search over the
    sorted UTF-8 words (numpy.searchsorted on a fixed-width bytes array) answers the same questions
    for the few hundred lookups of a query without loading anything: same table, same segmentation
    (tests/test_tokenizing.py compares the tokens of real corpora).
    """

    def __init__(self, folder: Path) -> None:
        import numpy as np

        # plain arrays over the mapped files: a numpy.memmap pays Python-level bookkeeping on every lookup
        self._words = np.asarray(np.load(folder / "words.npy", mmap_mode="r"))  # sorted, dtype S<longest word>
        self._freqs = np.asarray(np.load(folder / "freqs.npy", mmap_mode="r"))
        self.total = int((folder / "total.txt").read_text())
        self._width = self._words.dtype.itemsize
        self._searchsorted = np.searchsorted

    @classmethod
    def write(cls, folder: Path, freq: dict[str, int], total: int) -> None:
        import numpy as np

        words = np.array([w.encode("utf-8") for w in freq], dtype=bytes)  # UTF-8 has no NUL: padding sorts first
        order = np.argsort(words, kind="stable")
        np.save(folder / "words.npy", words[order])
        np.save(folder / "freqs.npy", np.array(list(freq.values()), dtype=np.int64)[order])
        (folder / "total.txt").write_text(str(total))

    def get(self, word: str, default: Any = None) -> Any:
        key = word.encode("utf-8")
        if len(key) > self._width:
            return default
        i = int(self._searchsorted(self._words, key))
        if i < len(self._words) and self._words[i] == key:
            return int(self._freqs[i])
        return default

    def __contains__(self, word: str) -> bool:
        return self.get(word) is not None

    def __getitem__(self, word: str) -> int:
        value = self.get(word)
        if value is None:
            raise KeyError(word)
        return value


def _dictionary_cache() -> Path:
    """Where the compact dictionary of the installed jieba lives: in the user's own cache folder,
    never a shared temp folder, where another user could plant a table that changes tokenisation."""
    import jieba

    source = Path(jieba.__file__).with_name("dict.txt")
    stat = source.stat()
    key = f"{jieba.__version__}-{stat.st_size}-{stat.st_mtime_ns}"
    return cache_root() / f"jieba-{key}"


def _save_compact(folder: Path, freq: dict[str, int], total: int) -> None:
    """Write the compact dictionary atomically (a complete folder renamed into place); best effort."""
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(mode=0o700)
        CompactDictionary.write(tmp, freq, total)
        os.replace(tmp, folder)
    except OSError:  # read-only cache folder, or another process won the race: jieba still works
        shutil.rmtree(tmp, ignore_errors=True)


def _new_jieba(compact: bool) -> Any:
    """A private, quiet jieba.Tokenizer, on the compact dictionary when asked and available."""
    import jieba

    jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict..." chatter
    tok = jieba.Tokenizer()
    cache = _dictionary_cache()
    if compact and (cache / "total.txt").is_file() and trusted(cache):
        try:
            tok.FREQ = CompactDictionary(cache)
            tok.total = tok.FREQ.total
            tok.initialized = True
            return tok
        except (OSError, ValueError):  # damaged cache: fall back to jieba's own loading
            pass
    tok.initialize()
    if not (cache / "total.txt").is_file():
        _save_compact(cache, tok.FREQ, tok.total)
    return tok


def get_jieba() -> Any:
    """The module's jieba.Tokenizer, created on first use: on the memory-mapped dictionary, then on
    jieba's in-memory one once this process has cut FULL_DICTIONARY_AFTER runs."""
    global _jieba_tokenizer, _jieba_cuts
    _jieba_cuts += 1
    tok = _jieba_tokenizer
    if tok is None or (_jieba_cuts > FULL_DICTIONARY_AFTER and isinstance(tok.FREQ, CompactDictionary)):
        with _jieba_lock:
            if _jieba_tokenizer is None:
                _jieba_tokenizer = _new_jieba(compact=_jieba_cuts <= FULL_DICTIONARY_AFTER)
            elif isinstance(_jieba_tokenizer.FREQ, CompactDictionary):
                _jieba_tokenizer = _new_jieba(compact=False)
            tok = _jieba_tokenizer
    return tok
