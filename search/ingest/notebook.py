"""Jupyter notebooks (nbformat): one Document per markdown or code cell, in order, located by cell.

A markdown cell reads as markdown; a code cell as a fenced block in the kernel's language; with
`outputs`, a code cell's text outputs (streams, plain-text results, error names and values, ANSI
colours removed) follow it as a fenced block. Images, HTML and other rich outputs are never read,
and a text output over `OUTPUT_MAX_CHARS` is left out with a Skipped saying so. Every cell carries
the headings of the markdown cells before it, so a code cell under "## Cleaning" has that heading
path. Cells are numbered from 1 in the notebook's order (raw cells count but are not indexed): a hit
says `analysis.ipynb cell 7`.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from search.errors import LoadError
from search.ingest.decoding import decode_text
from search.ingest.markdown import heading_stack
from search.schema import Document, Skipped, SourceFile

__all__ = ["OUTPUT_MAX_CHARS", "iter_notebook"]

OUTPUT_MAX_CHARS = 1 << 20
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _text(value: Any) -> str:
    """nbformat keeps multi-line strings as lists of lines on disk; either way, one string."""
    if isinstance(value, list):
        return "".join(str(part) for part in value)
    return value if isinstance(value, str) else ""


def _fenced(text: str, info: str = "") -> str:
    """`text` in a code fence longer than any run of backticks inside it."""
    runs = re.findall(r"`{3,}", text)
    fence = "`" * max([3, *(len(run) + 1 for run in runs)])
    return f"{fence}{info}\n{text.rstrip()}\n{fence}"


def _parse(data: bytes) -> Any:
    import nbformat
    from nbformat import reader

    text = decode_text(data)
    try:
        notebook = reader.parse_json(text)
    except reader.NotJSONError as error:
        raise LoadError("not a Jupyter notebook: not JSON") from error
    if not isinstance(notebook, dict) or not (isinstance(notebook.get("cells"), list) or "worksheets" in notebook):
        raise LoadError("not a Jupyter notebook: it has no cells")
    if isinstance(notebook.get("nbformat"), int) and notebook["nbformat"] >= 4:
        return notebook  # read as it is: validating would log, and reading needs none
    try:
        return nbformat.convert(reader.reads(text), 4)  # nbformat 3 and older
    except Exception as error:  # ValidationError, NBFormatError, and whatever a bad old file raises
        raise LoadError(f"not a Jupyter notebook: {' '.join(str(error).split())[:200]}") from error


def _language(notebook: Any) -> str:
    metadata = notebook.get("metadata") or {}
    for key, field in (("kernelspec", "language"), ("language_info", "name")):
        value = (metadata.get(key) or {}).get(field) if isinstance(metadata.get(key), dict) else None
        if isinstance(value, str) and re.fullmatch(r"[\w+#.-]+", value):
            return value
    return ""


def _output_text(output: Any) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        text = _text(output.get("text"))
    elif kind in ("execute_result", "display_data"):
        text = _text((output.get("data") or {}).get("text/plain"))
    elif kind == "error":
        text = f"{output.get('ename', '')}: {output.get('evalue', '')}".strip(": ")
    else:
        text = ""
    return _ANSI.sub("", text).strip()


def iter_notebook(source: SourceFile, data: bytes, outputs: bool) -> Iterator[Document | Skipped]:
    """The cells of a notebook file's bytes as Documents; an oversized output is a Skipped."""
    notebook = _parse(data)
    language = _language(notebook)
    headings: list[tuple[int, str]] = []
    for number, cell in enumerate(notebook["cells"], 1):
        if not isinstance(cell, dict):
            continue
        kind, text = cell.get("cell_type"), _text(cell.get("source")).strip()
        parts = []
        if kind == "markdown" and text:
            parts.append(text)
        elif kind == "code":
            parts.append(_fenced(text, language) if text else "")
            for output in (cell.get("outputs") or []) if outputs else []:
                shown = _output_text(output) if isinstance(output, dict) else ""
                if len(shown) > OUTPUT_MAX_CHARS:
                    yield Skipped(f"{source.path} cell {number}", f"an output of {len(shown) / 2**20:.3g} M characters "
                                  f"left out: over the {OUTPUT_MAX_CHARS // 2**20} M limit for notebook outputs")
                elif shown:
                    parts.append(_fenced(shown, "output"))
        body = "\n\n".join(part for part in parts if part)
        if body:
            yield Document(source.path, body, "markdown", {"cell": number}, headings=list(headings))
        if kind == "markdown" and text:
            headings = heading_stack(text, headings)
