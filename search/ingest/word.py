"""Word documents (.docx, python-docx) as markdown: headings give the heading path, tables keep their cells.

The body is read in order: a paragraph in a heading style ("Heading 1".."Heading 9", or a style
based on one) becomes a markdown heading of its level, list paragraphs list items, other paragraphs
paragraphs; a table becomes a markdown table (its first row the header, repeated when a passage
splits it; merged cells once). The core properties' title, or else the Title paragraph, is the
document's title. A hit points to the file and its heading path, since the markdown's lines are not
the file's.

A .docx is a zip archive: one that is not a zip, that holds no word/document.xml (a renamed zip of
something else, a spreadsheet) or whose XML unpacks to more than `XML_FACTOR` times the size limit
(a zip bomb) is refused before python-docx parses it.
"""

from __future__ import annotations

import re
import zipfile
from typing import Any

from search.errors import LoadError
from search.schema import Document, SourceFile

__all__ = ["XML_FACTOR", "docx_document"]

XML_FACTOR = 4
_HEADING_STYLE = re.compile(r"(?:heading|标题)\s*([1-9])", re.I)
_MARKDOWN_START = re.compile(r"^\s*(?:`{3,}|~{3,}|\$\$)")  # would open a code block or formula


def _check_archive(path: str, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise LoadError("not a Word document (.docx): not a zip archive (a .doc saved as .docx? save it as .docx in Word)") from error
    names = {entry.filename for entry in entries}
    if "word/document.xml" not in names:
        raise LoadError("not a Word document (.docx): the archive holds no word/document.xml (a renamed zip, or another Office file?)")
    xml = sum(entry.file_size for entry in entries if entry.filename.endswith((".xml", ".rels")))
    if xml > XML_FACTOR * max_bytes:
        raise LoadError(f"its XML unpacks to {xml / 2**20:.0f} MB, over {XML_FACTOR} times the {max_bytes / 2**20:.3g} MB "
                        "limit for one document: split it or pass --max-file-size")


def _heading_level(style: Any) -> int | None:
    """The heading level of a paragraph style, following the styles it is based on."""
    for _ in range(4):
        if style is None:
            return None
        match = _HEADING_STYLE.fullmatch((style.name or "").strip())
        if match:
            return int(match.group(1))
        style = style.base_style
    return None


def _paragraph_line(paragraph: Any) -> tuple[str, str | None]:
    """(markdown line, title text when the paragraph is the document's Title)."""
    text = " ".join(paragraph.text.split())
    if not text:
        return "", None
    style = paragraph.style
    name = (style.name or "") if style is not None else ""
    if name.lower() == "title":
        return "", text
    level = _heading_level(style)
    if level:
        return f"{'#' * min(level, 6)} {text}", None
    text = "\\" + text.lstrip() if _MARKDOWN_START.match(text) else text
    p_pr = paragraph._p.pPr
    if name.lower().startswith("list") or (p_pr is not None and p_pr.numPr is not None):
        return f"- {text}", None
    return text, None


def _table_lines(table: Any) -> list[str]:
    lines: list[str] = []
    for row in table.rows:
        cells, seen = [], set()
        for cell in row.cells:
            if id(cell._tc) in seen:  # a merged cell appears once per grid column it spans
                continue
            seen.add(id(cell._tc))
            cells.append(" ".join(cell.text.split()))
        if not any(cells):
            continue
        lines.append("| " + " | ".join(cells) + " |")
        if len(lines) == 1:
            lines.append("|" + " --- |" * len(cells))
    return lines


def docx_document(source: SourceFile, max_bytes: int) -> Document:
    """A .docx file as one markdown Document; LoadError when it is not a readable Word document."""
    _check_archive(source.path, max_bytes)
    import docx
    from docx.table import Table

    try:
        document = docx.Document(source.path)
        lines: list[str] = []
        title = (document.core_properties.title or "").strip()
        for item in document.iter_inner_content():
            if isinstance(item, Table):
                lines.extend(["", *_table_lines(item)])
                continue
            line, heading_title = _paragraph_line(item)
            title = title or heading_title or ""
            if line and not (line.startswith("- ") and lines and lines[-1].startswith("- ")):
                lines.append("")  # a blank line between blocks; list items follow each other
            if line:
                lines.append(line)
    except LoadError:
        raise
    except Exception as error:  # python-docx raises KeyError, ValueError, lxml errors ... on broken parts
        raise LoadError(f"not a readable Word document (.docx): {' '.join(str(error).split())[:200]}") from error
    text = "\n".join(lines).strip()
    if not text:
        raise LoadError("no text: the Word document holds no paragraphs or tables with text")
    return Document(source.path, text, "markdown", {"title": title} if title else {})
