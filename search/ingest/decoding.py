"""Bytes -> text for files of unknown encoding: a BOM first, strict UTF-8 next, then a guess.

The guess (charset-normalizer, on the file's head) is taken only where it is trustworthy: the
Chinese and other CJK legacy encodings and UTF-16/32 that notes and datasets really come in, and
Windows-1252 for Western text that reads as mostly ASCII. Anything else is refused as an unknown
encoding, so a corrupt file is reported instead of indexed as mojibake. Files are never decoded
leniently as a whole; streams mark undecodable bytes so a record reader can skip just that record.
"""

from __future__ import annotations

import codecs
import io
import re
from typing import BinaryIO, TextIO

from search.errors import LoadError

__all__ = ["HEAD_BYTES", "BAD_BYTES", "detect_encoding", "decode_text", "open_text", "normalize_newlines"]

HEAD_BYTES = 64 * 1024  # what detection looks at; enough for charset-normalizer, cheap on huge files
_BINARY_PROBE = 8 * 1024

_BOMS = (  # UTF-32 first: its LE BOM starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

# Encodings a guess may name, mapped to the codec that decodes them (GB18030 is a superset of
# GBK and GB2312, so it also reads files saved as those with a few extra characters).
_TRUSTED = {
    "gb18030": "gb18030", "gbk": "gb18030", "gb2312": "gb18030", "cp936": "gb18030", "hz": "hz",
    "big5": "big5hkscs", "big5hkscs": "big5hkscs", "cp950": "cp950",
    "shift_jis": "cp932", "cp932": "cp932", "shift_jis_2004": "shift_jis_2004", "euc_jp": "euc_jp",
    "euc_jis_2004": "euc_jis_2004", "iso2022_jp": "iso2022_jp",
    "euc_kr": "cp949", "cp949": "cp949",
    "utf_16_le": "utf-16-le", "utf_16_be": "utf-16-be", "utf_32_le": "utf-32-le", "utf_32_be": "utf-32-be",
}
_CHINESE = ("gb18030", "big5hkscs", "cp950")
_LATIN_GUESSES = re.compile(r"cp125\d|iso8859_\d+|latin_1|mac_\w+|cp437|cp775|cp850|cp1006")
_MAX_CHAOS = 0.2  # charset-normalizer's mess ratio; above it the guess reads as noise

# Undecodable bytes in a stream become this lone surrogate, which valid text never contains.
BAD_BYTES = "\udcff"
codecs.register_error("search.mark", lambda error: (BAD_BYTES, error.end))


def normalize_newlines(text: str) -> str:
    # Line numbers count LF-separated lines, whatever the file's line ends were.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _utf16_without_bom(head: bytes) -> str | None:
    """UTF-16 LE/BE by where NUL bytes fall: ASCII in UTF-16 puts them on every other byte."""
    even, odd = head[0::2].count(0), head[1::2].count(0)
    if max(even, odd) < 4 or min(even, odd) * 3 > max(even, odd):  # CJK such as 一 (U+4E00) has NULs too
        return None
    return "utf-16-le" if odd > even else "utf-16-be"


def _damaged_utf8(head: bytes) -> bool:
    """UTF-8 with a few bad bytes: many valid multi-byte characters and few invalid ones. It stays
    UTF-8, so a stream skips just the records with bad bytes and a whole document says where they are."""
    text = head.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    wide = sum(1 for c in text if ord(c) > 127) - bad
    return wide >= 20 * bad


def _plausible(text: str | None) -> bool:
    """Decoded text with few control characters (binary data read as UTF-16 is full of them)."""
    if not text:
        return False
    controls = sum(1 for c in text if ord(c) < 32 and c not in "\t\n\r\f")
    return controls * 50 <= len(text)


def _common_chinese_share(text: str, codec: str) -> float:
    """Share of the non-ASCII characters that are common Chinese characters or punctuation in this
    reading: in GB2312 for a GB reading, in Big5's level-1 block for a Big5 one. A misreading of
    one as the other yields rare characters, so the right reading scores clearly higher."""
    wide = [c for c in text if ord(c) > 127]
    if not wide:
        return 0.0
    return sum(_is_common(c, codec) for c in wide) / len(wide)


def _hiragana_share(text: str) -> float:
    wide = [c for c in text if ord(c) > 127]
    return sum("\u3040" <= c <= "\u309f" for c in wide) / len(wide) if wide else 0.0


def _is_common(char: str, codec: str) -> bool:
    if "\u3040" <= char <= "\u30ff":  # kana are in GB2312 too, but they make a text Japanese
        return False
    try:
        if codec == "gb18030":
            return len(char.encode("gb2312")) == 2
        return 0xA140 <= int.from_bytes(char.encode("big5"), "big") <= 0xC67E  # symbols and level-1 characters
    except UnicodeEncodeError:
        return False


def _decodes(data: bytes, encoding: str, complete: bool) -> str | None:
    try:
        return codecs.getincrementaldecoder(encoding)().decode(data, final=complete)
    except UnicodeDecodeError:
        return None


def _chinese_reading(head: bytes, complete: bool, matches: list) -> str | None:
    """The Chinese codec whose reading is made of common characters, if one is.

    Short Chinese text is often ranked Korean, Japanese or as the other Chinese encoding first,
    as every reading decodes without errors; the common characters tell the right one.
    """
    shares: dict[str, float] = {}
    for match in matches:
        codec = _TRUSTED.get(match.encoding)
        if codec in _CHINESE and codec not in shares and match.chaos <= matches[0].chaos + 0.1:
            text = _decodes(head, codec, complete)
            shares[codec] = _common_chinese_share(text, codec) if text is not None else 0.0
    if shares and max(shares.values()) >= 0.9:
        return max(shares, key=shares.__getitem__)  # max keeps the first (better ranked) of equals
    return None


def _guess(head: bytes, complete: bool) -> str | None:
    """charset-normalizer's guess when it is one we trust, else None."""
    from charset_normalizer import from_bytes

    matches = [m for m in from_bytes(head) if m.chaos <= _MAX_CHAOS]
    if not matches:
        return None
    # Japanese prose is full of hiragana, a misreading of Chinese bytes is not.
    if _hiragana_share(str(matches[0])) < 0.1:
        chinese = _chinese_reading(head, complete, matches)
        if chinese:
            return chinese
    best = matches[0].encoding
    if best in _TRUSTED:
        return _TRUSTED[best]
    if _LATIN_GUESSES.fullmatch(best):  # Western text: only as Windows-1252, and only mostly ASCII
        text = _decodes(head, "cp1252", complete)
        if text is not None and sum(ord(c) > 127 for c in text) * 5 < len(text):
            return "cp1252"
    return None


def detect_encoding(head: bytes, complete: bool, declared: str | None = None) -> tuple[str, int]:
    """(codec, BOM length) for a file that starts with `head`; `complete` says head is all of it.

    `declared` is an encoding the file names itself (an HTML meta charset), tried after UTF-8.
    LoadError says why there is none: empty, binary, or an encoding that cannot be told.
    """
    if not head:
        raise LoadError("empty file")
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding, len(bom)
    probe = head[:_BINARY_PROBE]
    if b"\0" in probe:
        encoding = _utf16_without_bom(probe)
        if encoding is None:  # Chinese in UTF-16 has few NULs (一 is U+4E00): ask the detector
            guess = _guess(head, complete)
            encoding = guess if guess and guess.startswith("utf-") else None
        if encoding is None or not _plausible(_decodes(head, encoding, complete)):
            raise LoadError("binary file (NUL bytes): not text")
        return encoding, 0
    if _decodes(head, "utf-8", complete) is not None or _damaged_utf8(head):
        return "utf-8", 0
    if declared:
        try:
            codec = codecs.lookup(declared).name
        except LookupError:
            codec = None
        if codec and _decodes(head, codec, complete) is not None:
            return codec, 0
    guess = _guess(head, complete)
    if guess is None:
        raise LoadError("unknown text encoding (not UTF-8, and no other encoding fits): convert it to UTF-8")
    return guess, 0


def decode_text(data: bytes, declared: str | None = None) -> str:
    """A whole file's text with LF line ends; LoadError if no encoding decodes all of it."""
    encoding, bom = detect_encoding(data[:HEAD_BYTES], len(data) <= HEAD_BYTES, declared)
    try:
        text = data[bom:].decode(encoding)
    except UnicodeDecodeError as error:
        name = "UTF-8" if encoding == "utf-8" else encoding
        raise LoadError(f"not valid {name} ({error.reason} at byte {error.start + bom}): convert it to UTF-8") from error
    return normalize_newlines(text)


def open_text(handle: BinaryIO) -> TextIO:
    """A text stream over a binary file, its encoding detected from the head.

    Lines keep their original line ends (newline=""), as the csv module needs; undecodable bytes
    read as BAD_BYTES so the caller can skip the one record that holds them.
    """
    head = handle.read(HEAD_BYTES)
    encoding, bom = detect_encoding(head, len(head) < HEAD_BYTES)
    handle.seek(bom)
    return io.TextIOWrapper(handle, encoding=encoding, errors="search.mark", newline="")
