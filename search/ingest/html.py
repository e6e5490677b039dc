"""HTML -> the text a reader of the page sees (BeautifulSoup), with the page title as metadata."""

from __future__ import annotations

import re

from search.ingest.decoding import HEAD_BYTES, decode_text
from search.schema import Document, SourceFile

__all__ = ["html_document"]

_INVISIBLE = ["script", "style", "noscript", "template", "head", "svg", "canvas", "iframe", "object", "embed"]
# Tags whose content starts on a new paragraph, and tags that start a new line.
_PARAGRAPHS = (
    "address article aside blockquote details dialog div dl fieldset figure footer form h1 h2 h3 h4 h5 h6 "
    "header hr main nav ol p pre section summary table ul"
).split()
_LINES = "br caption dd dt figcaption li tr".split()
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
_SPACE = re.compile(r"\s+")
_PARAGRAPH_MARK, _LINE_MARK = "\0P\0", "\0L\0"  # NUL never occurs in decoded HTML text


def html_document(source: SourceFile, data: bytes) -> Document:
    """The visible text as paragraphs; scripts, styles, comments and hidden elements dropped."""
    from bs4 import BeautifulSoup, NavigableString
    from bs4.dammit import EncodingDetector

    declared = EncodingDetector.find_declared_encoding(data[:HEAD_BYTES], is_html=True)
    soup = BeautifulSoup(decode_text(data, declared).replace("\0", ""), "html.parser")
    title = _SPACE.sub(" ", soup.title.get_text()).strip() if soup.title else ""
    for tag in soup.find_all(_INVISIBLE):
        tag.decompose()
    for tag in soup.find_all(lambda t: t.has_attr("hidden") or _HIDDEN_STYLE.search(t.get("style", ""))):
        tag.decompose()
    for string in soup.find_all(string=True):
        # comments and doctypes are strings too, but not text (and must stay unlike it)
        if type(string) is NavigableString and string.find_parent("pre") is None:  # source line breaks are not the page's line breaks
            string.replace_with(_SPACE.sub(" ", string))
    for tag in soup.find_all(_PARAGRAPHS + _LINES):
        if tag.name in _PARAGRAPHS:
            tag.insert_before(_PARAGRAPH_MARK)
            tag.insert_after(_PARAGRAPH_MARK)
        else:  # a line break before each item only, so consecutive items are lines, not paragraphs
            tag.insert_before(_LINE_MARK)
    text = soup.get_text()  # comments, doctype and CDATA are not text
    text = text.replace(_PARAGRAPH_MARK, "\n\n").replace(_LINE_MARK, "\n")
    lines = [" ".join(line.split()) for line in text.split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
    if not title:
        heading = soup.find("h1")
        title = _SPACE.sub(" ", heading.get_text()).strip() if heading else ""
    return Document(source.path, text, source.kind, {"title": title} if title else {})
