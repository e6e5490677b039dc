"""Which languages a text is written in: the one rule that routes passages and queries to models.

"zh" for CJK ideographs, "en" for Latin words. `detect_language` names a text's main language (a
passage's embedding space); `languages_in` every language with some text in it (the spaces a query
is embedded in).
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["CJK_CHARS", "detect_language", "languages_in"]

# CJK ideographs: Extension A, URO (incl. 9FD6-9FFF), compatibility ideographs, 〇, and the
# supplementary ideographic planes (Extensions B-H, compatibility supplement).
CJK_CHARS = "\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff"
_CJK_RUN_RE = re.compile(rf"[{CJK_CHARS}]+")
_LATIN_WORD_RE = re.compile(r"[a-zA-Z\u00c0-\u024f]+")


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
