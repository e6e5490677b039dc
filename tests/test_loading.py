import os

import pytest

from search.errors import LoadError, SearchError
from search.loading import discover_files, load_documents, read_document


def test_discovers_supported_files_and_reports_the_rest(tmp_path):
    (tmp_path / "a.md").write_text("# A\n", encoding="utf-8")
    (tmp_path / "b.markdown").write_text("B\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.TXT").write_text("C\n", encoding="utf-8")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD.md").write_text("x", encoding="utf-8")
    (tmp_path / ".obsidian").mkdir()
    (tmp_path / ".obsidian" / "x.md").write_text("x", encoding="utf-8")
    (tmp_path / ".hidden.md").write_text("x", encoding="utf-8")
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)

    files, skipped = discover_files([tmp_path])
    names = [os.path.relpath(f.path, tmp_path) for f in files]
    assert names == ["a.md", "b.markdown", os.path.join("sub", "c.TXT")]
    assert [f.kind for f in files] == ["markdown", "markdown", "text"]
    assert files[0].size == 4 and files[0].mtime == os.stat(tmp_path / "a.md").st_mtime
    assert [(os.path.basename(s.path), s.reason) for s in skipped] == [("photo.png", "unsupported file type .png")]


def test_explicit_file_and_duplicates(tmp_path):
    note = tmp_path / "n.md"
    note.write_text("x", encoding="utf-8")
    files, _ = discover_files([note, tmp_path, str(note)])
    assert [f.path for f in files] == [str(note)]


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(SearchError, match="no such file or folder"):
        discover_files([tmp_path / "nope"])


def test_bom_and_crlf_are_normalised(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeff第一行\r\nsecond\rthird\r\n".encode("utf-8"))
    files, _ = discover_files([path])
    assert read_document(files[0]).text == "第一行\nsecond\nthird\n"


def test_invalid_utf8_is_skipped_with_reason(tmp_path):
    (tmp_path / "good.md").write_text("好", encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"abc \xff\xfe\xfa")
    files, _ = discover_files([tmp_path])
    with pytest.raises(LoadError, match="not valid UTF-8"):
        read_document(next(f for f in files if f.path.endswith("bad.txt")))
    documents, skipped = load_documents([tmp_path])
    assert [os.path.basename(d.path) for d in documents] == ["good.md"]
    assert os.path.basename(skipped[0].path) == "bad.txt" and "UTF-8" in skipped[0].reason
