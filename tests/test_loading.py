import os

import pytest

from search.errors import LoadError, SearchError
from search.ingest.loading import SUPPORTED_SUFFIXES, discover_files, load_documents, read_document
from search.schema import SourceFile


def write(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_walks_folders_skipping_hidden_and_reporting_unsupported(tmp_path):
    write(tmp_path / "a.md", "# A\n")
    write(tmp_path / "b.markdown")
    write(tmp_path / "sub" / "c.TXT")
    write(tmp_path / "sub" / "deeper" / "d.txt")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    write(tmp_path / "README")
    write(tmp_path / ".git" / "HEAD.md")
    write(tmp_path / ".obsidian" / "workspace.md")
    write(tmp_path / "sub" / ".cache" / "x.md")
    write(tmp_path / ".hidden.md")
    write(tmp_path / ".DS_Store")
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)

    files, skipped = discover_files([tmp_path])

    assert [os.path.relpath(f.path, tmp_path) for f in files] == [
        "a.md",
        "b.markdown",
        os.path.join("sub", "c.TXT"),
        os.path.join("sub", "deeper", "d.txt"),
    ]
    assert [f.kind for f in files] == ["markdown", "markdown", "text", "text"]
    assert all(os.path.isabs(f.path) for f in files)
    stat = os.stat(tmp_path / "a.md")
    assert (files[0].size, files[0].mtime) == (4, stat.st_mtime)
    # hidden files and everything under hidden folders is left out silently; a folder link is not followed
    assert [(os.path.basename(s.path), s.reason) for s in skipped] == [
        ("README", "unsupported file type (no suffix)"),
        ("loop", "link to a folder, not followed: index the folder itself to include it"),
        ("photo.png", "unsupported file type .png"),
    ]


def test_explicit_files_are_deduplicated_and_unsupported_ones_reported(tmp_path, monkeypatch):
    note = write(tmp_path / "notes" / "n.md")
    data = write(tmp_path / "notes" / "data.xyz")
    monkeypatch.chdir(tmp_path)
    files, skipped = discover_files([note, "notes", os.path.join("notes", "n.md"), str(data)])
    assert [f.path for f in files] == [str(note)]  # relative paths become absolute
    assert [(s.path, s.reason) for s in skipped] == [(str(data), "unsupported file type .xyz")]


def test_explicit_hidden_file_is_taken_and_symlinks_are_not_resolved(tmp_path):
    hidden = write(tmp_path / ".private.md")
    target = write(tmp_path / "real" / "t.md")
    (tmp_path / "link.md").symlink_to(target)
    files, _ = discover_files([hidden, tmp_path / "link.md"])
    assert [f.path for f in files] == [str(hidden), str(tmp_path / "link.md")]


def test_missing_path_is_a_search_error_naming_it(tmp_path):
    write(tmp_path / "ok.md")
    missing = tmp_path / "nope"
    with pytest.raises(SearchError, match=f"no such file or folder: {missing}"):
        discover_files([tmp_path / "ok.md", missing])


def test_suffix_table_is_the_dispatch():
    assert SUPPORTED_SUFFIXES == {
        ".md": "markdown", ".markdown": "markdown", ".txt": "text", ".jsonl": "jsonl", ".ndjson": "jsonl",
        ".json": "json", ".csv": "csv", ".tsv": "tsv", ".pdf": "pdf", ".html": "html", ".htm": "html",
        ".parquet": "parquet", ".arrow": "arrow", ".feather": "arrow", ".ipynb": "notebook", ".docx": "docx",
    }


def test_read_strips_bom_and_normalises_line_ends(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeff第一行\r\nsecond\rthird\r\n\r\n".encode("utf-8"))
    [source], _ = discover_files([path])
    document = read_document(source)
    assert document.text == "第一行\nsecond\nthird\n\n"
    assert (document.path, document.kind, document.metadata) == (str(path), "text", {})


def test_read_without_bom_keeps_text_as_is(tmp_path):
    path = write(tmp_path / "n.md", "---\ntitle: x\n---\n正文\n")
    [source], _ = discover_files([path])
    assert read_document(source).text == "---\ntitle: x\n---\n正文\n"


def test_undecodable_bytes_are_a_load_error_and_skipped_by_load_documents(tmp_path):
    write(tmp_path / "good.md", "好")
    (tmp_path / "bad.txt").write_bytes(b"abc \xff\xfe\xfa")
    (tmp_path / "gbk.md").write_bytes("中文笔记".encode("gbk"))
    (tmp_path / "late.txt").write_bytes(("正文" * 40000).encode("utf-8") + b"\xff")  # valid head, bad byte at the end
    files, _ = discover_files([tmp_path])
    with pytest.raises(LoadError, match=r"^unknown text encoding .*: convert it to UTF-8$"):
        read_document(next(f for f in files if f.path.endswith("bad.txt")))
    documents, skipped = load_documents([tmp_path])
    assert [(os.path.basename(d.path), d.text[:4]) for d in documents] == [("gbk.md", "中文笔记"), ("good.md", "好")]
    assert [(os.path.basename(s.path), s.reason.split(" (")[0]) for s in skipped] == [
        ("bad.txt", "unknown text encoding"),
        ("late.txt", "not valid UTF-8"),
    ]
    assert "at byte 240000" in skipped[1].reason


def test_unreadable_file_is_a_load_error_with_the_reason(tmp_path):
    gone = SourceFile(path=str(tmp_path / "deleted.md"), size=1, mtime=0.0, kind="markdown")
    with pytest.raises(LoadError, match="cannot read: No such file or directory"):
        read_document(gone)


def test_load_documents_returns_unsupported_and_undecodable_together(tmp_path):
    write(tmp_path / "a.md", "# 标题\n")
    (tmp_path / "b.txt").write_bytes(b"\x80")
    (tmp_path / "c.pdf").write_bytes(b"%PDF")
    documents, skipped = load_documents([tmp_path])
    assert [d.text for d in documents] == ["# 标题\n"]
    assert [(os.path.basename(s.path), s.reason.split(" (")[0]) for s in skipped] == [
        ("b.txt", "unknown text encoding"),
        ("c.pdf", "not a readable PDF"),
    ]
