"""PDF -> one Document per page (pypdf), so a hit says which page it is on."""

from __future__ import annotations

import logging
from typing import Iterator

from search.ingest.decoding import normalize_newlines
from search.errors import LoadError
from search.schema import Document, Skipped, SourceFile

__all__ = ["iter_pdf"]

# pypdf logs a warning for every oddity of a malformed file; the build reports what matters itself.
logging.getLogger("pypdf").setLevel(logging.ERROR)


def _open(path: str):
    from pypdf import PdfReader

    # pypdf raises many kinds of errors on corrupt input (PdfReadError, ValueError, KeyError, ...):
    # any of them means this file cannot be read, never that the build should stop.
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):  # many PDFs are encrypted with an empty password
            raise LoadError("encrypted PDF: save a copy without a password to index it")
        return reader, len(reader.pages)
    except LoadError:
        raise
    except OSError as error:
        raise LoadError(f"cannot read: {error.strerror or error}") from error
    except Exception as error:
        if _is_encryption_error(error):
            raise LoadError("encrypted PDF: save a copy without a password to index it") from error
        raise LoadError(f"not a readable PDF ({_describe(error)})") from error


def _is_encryption_error(error: Exception) -> bool:
    # AES needs the optional cryptography package; without it pypdf raises DependencyError
    return type(error).__name__ in ("DependencyError", "FileNotDecryptedError")


def _describe(error: Exception) -> str:
    message = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _title(reader) -> str:
    try:
        title = reader.metadata.title if reader.metadata else None
    except Exception:  # a broken info dictionary only costs the title
        return ""
    return " ".join(str(title).split()) if title else ""


def iter_pdf(source: SourceFile) -> Iterator[Document | Skipped]:
    """The text of each page with {"page": n} (1-based) and the document title when it has one."""
    reader, count = _open(source.path)
    title = _title(reader)
    found = False
    for number in range(1, count + 1):
        try:
            text = reader.pages[number - 1].extract_text() or ""
        except Exception as error:  # one broken page must not cost the others
            yield Skipped(f"{source.path} p.{number}", f"cannot extract text ({_describe(error)})")
            continue
        text = normalize_newlines(text).strip()
        if not text:
            continue
        found = True
        metadata = {"page": number, **({"title": title} if title else {})}
        yield Document(source.path, text, source.kind, metadata)
    if not found:
        raise LoadError("no text in this PDF (scanned pages need OCR first)")
