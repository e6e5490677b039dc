"""HTML -> the text a reader of the page sees, with the page title as metadata.

libxml2 (through lxml) parses the page in linear time, and the text is gathered by one iterative
walk over the tree, so no nesting makes it recurse or go quadratic (BeautifulSoup took 10.6 s for
10,000 nested tags). A page nested deeper than libxml2 allows (2,048 elements) is refused with one
line rather than indexed in part.
"""

from __future__ import annotations

import re

from search.errors import LoadError
from search.ingest.decoding import HEAD_BYTES, decode_text
from search.schema import Document, SourceFile

__all__ = ["html_document"]

_INVISIBLE = frozenset(["script", "style", "noscript", "template", "head", "svg", "canvas", "iframe", "object", "embed"])
# Tags whose content starts on a new paragraph, and tags that start a new line.
_PARAGRAPHS = frozenset((
    "address article aside blockquote details dialog div dl fieldset figure footer form h1 h2 h3 h4 h5 h6 "
    "header hr main nav ol p pre section summary table ul"
).split())
_LINES = frozenset("br caption dd dt figcaption li tr".split())
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
_SPACE = re.compile(r"\s+")
_PARAGRAPH_MARK, _LINE_MARK = "\0P\0", "\0L\0"  # NUL never occurs in the decoded text (removed first)
# <meta charset="gbk"> or <meta http-equiv="Content-Type" content="text/html; charset=gbk">
_META_CHARSET = re.compile(rb"<\s*meta[^>]+charset\s*=\s*[\"']?([-\w.:]+)", re.I)


def _declared_encoding(head: bytes) -> str | None:
    match = _META_CHARSET.search(head)
    return match.group(1).decode("ascii") if match else None


def _hidden(element) -> bool:
    return element.get("hidden") is not None or bool(_HIDDEN_STYLE.search(element.get("style") or ""))


def html_document(source: SourceFile, data: bytes) -> Document:
    """The visible text as paragraphs; scripts, styles, comments and hidden elements dropped."""
    from lxml import etree

    text = decode_text(data, _declared_encoding(data[:HEAD_BYTES])).replace("\0", "")
    parser = etree.HTMLParser(encoding="utf-8", recover=True, remove_comments=True, remove_pis=True,
                              huge_tree=True, no_network=True)
    try:
        root = etree.fromstring(text.encode("utf-8"), parser)
    except etree.LxmlError as error:
        raise LoadError(f"not readable as HTML: {error}") from None
    if any("depth" in entry.message.lower() for entry in parser.error_log):
        raise LoadError("elements nested more than 2,048 deep: not read")
    title_element = next(root.iter("title"), None) if root is not None else None
    title = _SPACE.sub(" ", "".join(title_element.itertext())).strip() if title_element is not None else ""
    page, heading = _visible_text(root) if root is not None else ("", "")
    return Document(source.path, page, source.kind, {"title": title or heading} if title or heading else {})


def _visible_text(root) -> tuple[str, str]:
    """(the page's visible text, the text of its first visible h1), by one walk over the tree."""
    from lxml import etree

    parts: list[str] = []
    hidden = pre = 0  # how deep the walk is inside hidden elements, and inside <pre>
    h1_start, heading = None, None

    def add(text: str | None) -> None:
        if text:
            parts.append(text if pre else _SPACE.sub(" ", text))  # source line breaks are not the page's

    for event, element in etree.iterwalk(root, events=("start", "end")):
        tag = element.tag if isinstance(element.tag, str) else ""
        if event == "start":
            if hidden or tag in _INVISIBLE or _hidden(element):
                hidden += 1
                continue
            if tag in _PARAGRAPHS:
                parts.append(_PARAGRAPH_MARK)
            elif tag in _LINES:  # a line break before each item only: consecutive items are lines
                parts.append(_LINE_MARK)
            pre += tag == "pre"
            if tag == "h1" and heading is None and h1_start is None:
                h1_start = len(parts)
            add(element.text)
            continue
        if hidden:
            hidden -= 1
            if hidden:  # the tail of an element inside a hidden one is hidden too
                continue
        else:
            pre -= tag == "pre"
            if tag == "h1" and h1_start is not None and heading is None:
                words = "".join(part for part in parts[h1_start:] if part not in (_PARAGRAPH_MARK, _LINE_MARK))
                heading = _SPACE.sub(" ", words).strip()
            if tag in _PARAGRAPHS:
                parts.append(_PARAGRAPH_MARK)
        add(element.tail)
    text = "".join(parts).replace(_PARAGRAPH_MARK, "\n\n").replace(_LINE_MARK, "\n")
    lines = [" ".join(line.split()) for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n", heading or ""
