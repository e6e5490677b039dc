"""One tokenizer for passages and queries, Chinese and English alike.

``tokenize(text)`` is the entry point used everywhere (index build and query time must agree):

1. Unicode NFKC (full-width -> half-width: "ＧＰＴ－４" -> "GPT-4"), Unicode hyphens -> "-", lower case.
2. The text is cut into runs, in text order:
   * runs of CJK ideographs go to jieba's search mode (``cut_for_search``), which emits each word
     and its dictionary sub-words (中华人民共和国 -> 中华, 华人, 人民, 共和, 共和国, 中华人民共和国);
   * runs of letters/digits are matched as identifiers (``gpt-4``, ``all-to-all``, ``c++``, ``c#``,
     ``3.5``, ``v1.2.3``, ``snake_case``); the whole identifier is emitted and, when it is a compound
     joined by ``-``, ``_`` or ``.``, each alphanumeric part after it (``all-to-all`` -> ``all-to-all``,
     ``all``, ``to``, ``all``), so "all to all" still matches "all-to-all" and "gpt-4" matches exactly;
   * everything else (whitespace, ASCII and CJK punctuation, symbols) is dropped.

``tokenize_query(text)`` is ``tokenize`` for BM25 queries: a one-character CJK word is not repeated
as a unigram (see ``Tokenizer.tokenize_query``).

No stop-word removal and no stemming by default; ``Tokenizer`` takes options for variants.

``detect_language(text)`` says "zh" or "en" to route text to a Chinese or English embedding model.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import unicodedata
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

__all__ = ["Tokenizer", "tokenize", "tokenize_query", "tokenize_many", "detect_language", "languages_in", "DEFAULT_TOKENIZER"]

# CJK ideographs: Extension A, URO (incl. 9FD6-9FFF), compatibility ideographs, 〇, and the
# supplementary ideographic planes (Extensions B-H, compatibility supplement).
_CJK_CHARS = "\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff"
# A letter or digit of any script except CJK ideographs (Latin, digits, Greek, Cyrillic, kana, hangul...).
_ALNUM = rf"[^\W_{_CJK_CHARS}]"

# Either a CJK run (group "cjk") or an identifier (group "word"). Identifiers: alphanumeric parts
# joined by single "-", "_" or "."; an optional "++" or "#" suffix (c++, c#, f#). A separator must be
# followed by a letter/digit, so "gpt-4." at the end of a sentence gives "gpt-4".
_RUN_RE = re.compile(
    rf"(?P<cjk>[{_CJK_CHARS}]+)|(?P<word>{_ALNUM}+(?:[-_.]{_ALNUM}+)*(?:\+\+|#)?)"
)
_SEP_RE = re.compile(r"[-_.]")
_CJK_RUN_RE = re.compile(rf"[{_CJK_CHARS}]+")
_LATIN_WORD_RE = re.compile(r"[a-zA-Z\u00c0-\u024f]+")

# Unicode hyphens NFKC leaves alone (U+2011 becomes U+2010): ‐ ‑ ‒ – and the minus sign.
_HYPHENS = str.maketrans({c: "-" for c in "\u2010\u2011\u2012\u2013\u2212"})
_HYPHENS_RE = re.compile("[\u2010-\u2013\u2212]")

_CACHE_SIZE = 1 << 16  # distinct CJK runs whose segmentation is remembered, per Tokenizer

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

        self._words = np.load(folder / "words.npy", mmap_mode="r")  # sorted, dtype S<longest word>
        self._freqs = np.load(folder / "freqs.npy", mmap_mode="r")
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
    """Where the compact dictionary of the installed jieba lives (beside jieba's own cache)."""
    import jieba

    source = Path(jieba.__file__).with_name("dict.txt")
    stat = source.stat()
    key = f"{jieba.__version__}-{stat.st_size}-{stat.st_mtime_ns}"
    return Path(tempfile.gettempdir()) / f"search-jieba-{key}"


def _save_compact(folder: Path, freq: dict[str, int], total: int) -> None:
    """Write the compact dictionary atomically (a complete folder renamed into place); best effort."""
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        CompactDictionary.write(tmp, freq, total)
        os.replace(tmp, folder)
    except OSError:  # read-only temp dir, or another process won the race: jieba still works
        shutil.rmtree(tmp, ignore_errors=True)


def _new_jieba(compact: bool) -> Any:
    """A private, quiet jieba.Tokenizer, on the compact dictionary when asked and available."""
    import jieba

    jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict..." chatter
    tok = jieba.Tokenizer()
    cache = _dictionary_cache()
    if compact and (cache / "total.txt").is_file():
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


def _get_jieba() -> Any:
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


def normalize(text: str) -> str:
    """NFKC, Unicode hyphens to "-", lower case: what both tokenizing and matching see."""
    text = unicodedata.normalize("NFKC", text)
    if _HYPHENS_RE.search(text):  # rare; str.translate is slow enough to skip when not needed
        text = text.translate(_HYPHENS)
    return text.lower()


class Tokenizer:
    """A configured tokenizer; ``tokenize`` is ``Tokenizer()`` with the defaults.

    Options (defaults are the engine's behaviour):
      search_mode: jieba ``cut_for_search`` (word + dictionary sub-words) instead of plain ``cut``.
      hmm: let jieba's HMM find words missing from its dictionary.
      split_compounds: after a compound identifier (gpt-4, all-to-all, 3.5) also emit its parts.
      cjk_unigrams: also emit every CJK character of a multi-character run. Single characters match
        what jieba segments differently in query and passage (一型/1型糖尿病, colloquial paraphrases):
        nDCG@10 of BM25 rose 0.347 -> 0.376 on cmedqq and 0.561 -> 0.609 on oppo_xiaobu.
      stopwords: tokens to drop after tokenizing (None: keep everything).
    """

    def __init__(
        self,
        *,
        search_mode: bool = True,
        hmm: bool = True,
        split_compounds: bool = True,
        cjk_unigrams: bool = True,
        stopwords: Iterable[str] | None = None,
    ) -> None:
        self.search_mode = search_mode
        self.cjk_unigrams = cjk_unigrams
        self.hmm = hmm
        self.split_compounds = split_compounds
        self.stopwords = frozenset(stopwords) if stopwords else None
        # Segmentation of a CJK run depends only on the run (jieba sees it alone), so cache it:
        # short runs between English terms ("的", "和", "通信") repeat across passages.
        self._cut_cjk = lru_cache(maxsize=_CACHE_SIZE)(self._cut_cjk_uncached)

    def _cut_cjk_uncached(self, run: str) -> tuple[str, ...]:
        jb = _get_jieba()
        if self.search_mode:
            return tuple(jb.cut_for_search(run, HMM=self.hmm))
        return tuple(jb.cut(run, HMM=self.hmm))

    def __call__(self, text: str) -> list[str]:
        return self.tokenize(text)

    def tokenize(self, text: str) -> list[str]:
        return self._tokenize(text, query=False)

    def tokenize_query(self, text: str) -> list[str]:
        """``tokenize`` for a query: a one-character CJK word counts once, not again as a unigram.

        jieba already emits a one-character word (吗, 我, 是, 的) as itself, so the unigram extras would
        repeat it. In a passage the repeat is harmless (BM25 saturates term frequency), but in a query
        each repeat adds the term's full weight again, doubling the say of the particles and pronouns
        that pad a colloquial question next to its topic words. Hybrid nDCG@10 on cmedqq: 0.445 ->
        0.452; alone it costs oppo_xiaobu 0.004, most of which the tie rule of `search.fusion.tie_weight`
        wins back (README, Relevance).
        """
        return self._tokenize(text, query=True)

    def _tokenize(self, text: str, query: bool) -> list[str]:
        if not text:
            return []
        text = normalize(text)
        out: list[str] = []
        append, extend = out.append, out.extend
        cut_cjk = self._cut_cjk
        split = self.split_compounds
        sep_search, sep_split = _SEP_RE.search, _SEP_RE.split
        for m in _RUN_RE.finditer(text):
            cjk = m.group("cjk")
            if cjk is not None:
                words = cut_cjk(cjk)
                extend(words)
                if self.cjk_unigrams and len(cjk) > 1:
                    extend(_unigrams_beside(cjk, words) if query else cjk)
                continue
            word = m.group("word")
            append(word)
            if split and sep_search(word):
                # Parts of "c++"-suffixed compounds keep the suffix on the last part's whole token only.
                if word[-1] in "+#":
                    word = word.rstrip("+#")
                extend(sep_split(word))
        if self.stopwords:
            sw = self.stopwords
            out = [t for t in out if t not in sw]
        return out

    def __repr__(self) -> str:
        return (
            f"Tokenizer(search_mode={self.search_mode}, hmm={self.hmm}, "
            f"split_compounds={self.split_compounds}, cjk_unigrams={self.cjk_unigrams}, stopwords={None if self.stopwords is None else len(self.stopwords)})"
        )


def _unigrams_beside(run: str, words: tuple[str, ...]) -> list[str]:
    """The characters of `run` in text order, less one occurrence per one-character word of `words`
    (such a word is its own unigram already)."""
    singles = Counter(word for word in words if len(word) == 1)
    out: list[str] = []
    for char in run:
        if singles[char] > 0:
            singles[char] -= 1
        else:
            out.append(char)
    return out


DEFAULT_TOKENIZER = Tokenizer()


def tokenize(text: str) -> list[str]:
    """Tokens of ``text`` for BM25, in text order (same function for passages and queries)."""
    return DEFAULT_TOKENIZER.tokenize(text)


def tokenize_query(text: str) -> list[str]:
    """Tokens of a query for BM25: ``tokenize`` less the repeats of one-character CJK words (see
    ``Tokenizer.tokenize_query``)."""
    return DEFAULT_TOKENIZER.tokenize_query(text)


def tokenize_many(texts: Iterable[str]) -> list[list[str]]:
    """``[tokenize(t) for t in texts]``."""
    tok = DEFAULT_TOKENIZER.tokenize
    return [tok(t) for t in texts]


def languages_in(text: str) -> set[str]:
    """Every language with some text in `text`: "zh" for CJK ideographs, "en" for Latin words."""
    text = unicodedata.normalize("NFKC", text)
    found = {"zh"} if _CJK_RUN_RE.search(text) else set()
    return found | {"en"} if _LATIN_WORD_RE.search(text) else found


def detect_language(text: str) -> str:
    """"zh" when the text has at least as many CJK ideographs as Latin words (and some), else "en"."""
    if not text:
        return "en"
    text = unicodedata.normalize("NFKC", text)
    n_cjk = sum(map(len, _CJK_RUN_RE.findall(text)))
    if n_cjk == 0:
        return "en"
    n_latin = len(_LATIN_WORD_RE.findall(text))
    return "zh" if n_cjk >= n_latin else "en"
