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
     a plain word of Latin letters becomes its Snowball English stem (``trials`` -> ``trial``,
     ``treated`` -> ``treat``), and so do the letter-only parts of a compound, while the compound's
     whole token stays as written (``all-to-all``, ``gpt-4``, ``fine-tuned`` -> ``fine-tuned``,
     ``fine``, ``tune``);
   * everything else (whitespace, ASCII and CJK punctuation, symbols) is dropped.

``tokenize_query(text)`` is ``tokenize`` for BM25 queries: a one-character CJK word is not repeated
as a unigram (see ``Tokenizer.tokenize_query``).

No stop-word removal by default; ``Tokenizer`` takes options for variants.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Iterable

import Stemmer

from search.text.jieba_dictionary import get_jieba
from search.text.language import CJK_CHARS as _CJK_CHARS

__all__ = ["Tokenizer", "tokenize", "tokenize_query", "tokenize_many", "normalize", "surface_words", "stem", "DEFAULT_TOKENIZER"]

# A letter or digit of any script except CJK ideographs (Latin, digits, Greek, Cyrillic, kana, hangul...).
_ALNUM = rf"[^\W_{_CJK_CHARS}]"

# Either a CJK run (group "cjk") or an identifier (group "word"). Identifiers: alphanumeric parts
# joined by single "-", "_" or "."; an optional "++" or "#" suffix (c++, c#, f#). A separator must be
# followed by a letter/digit, so "gpt-4." at the end of a sentence gives "gpt-4".
_RUN_RE = re.compile(
    rf"(?P<cjk>[{_CJK_CHARS}]+)|(?P<word>{_ALNUM}+(?:[-_.]{_ALNUM}+)*(?:\+\+|#)?)"
)
_SEP_RE = re.compile(r"[-_.]")
# A word the English stemmer may change: Latin letters only (not "gpt4", "3.5" or Greek).
_STEMMABLE_RE = re.compile(r"[a-z\u00df-\u00ff]+")

# Unicode hyphens NFKC leaves alone (U+2011 becomes U+2010): ‐ ‑ ‒ – and the minus sign.
_HYPHENS = str.maketrans({c: "-" for c in "\u2010\u2011\u2012\u2013\u2212"})
_HYPHENS_RE = re.compile("[\u2010-\u2013\u2212]")

_CACHE_SIZE = 1 << 16  # distinct CJK runs whose segmentation is remembered, per Tokenizer
# Longer tokens are cut to this many characters (documents and queries alike, so they still match):
# an identifier of megabytes must not become one BM25 term of megabytes.
MAX_TOKEN_CHARS = 100

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
      stem: replace each word of Latin letters (and each letter-only part of a compound) by its
        Snowball English stem, so "trials" matches "trial" and "treated" "treat"; the whole token of
        a compound identifier stays as written. BM25 nDCG@10 on scifact 0.646 -> see README.
    """

    def __init__(
        self,
        *,
        search_mode: bool = True,
        hmm: bool = True,
        split_compounds: bool = True,
        cjk_unigrams: bool = True,
        stopwords: Iterable[str] | None = None,
        stem: bool = True,
    ) -> None:
        self.search_mode = search_mode
        self.cjk_unigrams = cjk_unigrams
        self.hmm = hmm
        self.split_compounds = split_compounds
        self.stopwords = frozenset(stopwords) if stopwords else None
        self.stem = stem
        # PyStemmer keeps its own cache of recent words; one stemmer per tokenizer (not thread-safe
        # across threads sharing it, but a word list call holds the GIL for its whole run)
        self._stemmer = Stemmer.Stemmer("english") if stem else None
        # Segmentation of a CJK run depends only on the run (jieba sees it alone), so cache it:
        # short runs between English terms ("的", "和", "通信") repeat across passages.
        self._cut_cjk = lru_cache(maxsize=_CACHE_SIZE)(self._cut_cjk_uncached)

    def _cut_cjk_uncached(self, run: str) -> tuple[str, ...]:
        jb = get_jieba()
        words = jb.cut_for_search(run, HMM=self.hmm) if self.search_mode else jb.cut(run, HMM=self.hmm)
        return tuple(word[:MAX_TOKEN_CHARS] for word in words)

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
            if len(word) > MAX_TOKEN_CHARS:
                word = word[:MAX_TOKEN_CHARS]
            if split and sep_search(word):
                append(word)
                # Parts of "c++"-suffixed compounds keep the suffix on the last part's whole token only.
                if word[-1] in "+#":
                    word = word.rstrip("+#")
                extend(map(self._stem, sep_split(word)))
            else:
                append(self._stem(word))
        if self.stopwords:
            sw = self.stopwords
            out = [t for t in out if t not in sw]
        return out

    def _stem(self, word: str) -> str:
        if self._stemmer is None or not _STEMMABLE_RE.fullmatch(word):
            return word
        return self._stemmer.stemWord(word)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(search_mode={self.search_mode}, hmm={self.hmm}, "
            f"split_compounds={self.split_compounds}, cjk_unigrams={self.cjk_unigrams}, stem={self.stem}, stopwords={None if self.stopwords is None else len(self.stopwords)})"
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


_SURFACE_TOKENIZER = Tokenizer(stem=False)


def stem(word: str) -> str:
    """A lower-case word as the tokenizer stems it ("trials" -> "trial"; "gpt4" unchanged)."""
    return DEFAULT_TOKENIZER._stem(word)


def surface_words(text: str) -> list[str]:
    """The query's tokens as written (not stemmed): what a snippet highlights."""
    return _SURFACE_TOKENIZER.tokenize_query(text)


def tokenize_many(texts: Iterable[str]) -> list[list[str]]:
    """``[tokenize(t) for t in texts]``."""
    tok = DEFAULT_TOKENIZER.tokenize
    return [tok(t) for t in texts]
