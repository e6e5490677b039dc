"""Readers for records (JSONL, JSON, CSV, TSV), PDF and HTML, text encodings, and hostile input."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import pytest

from search.text.chunking import chunk_document
from search.ingest.decoding import decode_text
from search.errors import LoadError
from search.ingest import json_records, nested, records
from search.ingest.loading import LoadOptions, discover_files, iter_documents
from search.schema import Document, Skipped

REPO = Path(__file__).resolve().parents[1]


def source_of(path):
    [source], skipped = discover_files([path])
    assert not skipped
    return source


def read(path, **options):
    return list(iter_documents(source_of(path), LoadOptions(**options)))


def alpaca(i, **extra):
    return {"instruction": f"Explain topic {i}", "input": "", "output": f"Answer number {i}.", **extra}


# ----- JSON Lines ---------------------------------------------------------------------------------


def test_jsonl_records_become_documents_with_their_line_and_other_fields(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    lines = [json.dumps(alpaca(0, id="a-17", score=0.5)), "", json.dumps(alpaca(1, url="https://x.org/1", lang="en")),
             '{"instruction": "broken", "output": ', json.dumps("a bare string record"), "[1, 2]",
             json.dumps({"instruction": "如何泡绿茶", "output": "八十度的水冲泡两分钟。", "tags": ["茶"], "sha": "9f8e7d6c5b4a"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    items = read(path)
    docs = [i for i in items if isinstance(i, Document)]
    skipped = [i for i in items if isinstance(i, Skipped)]
    assert [(d.text, d.line_start, d.line_end, d.metadata) for d in docs] == [
        ("Explain topic 0\n\nAnswer number 0.", 1, 1, {"line": 1, "fields": {"id": "a-17", "score": 0.5}}),
        ("Explain topic 1\n\nAnswer number 1.\n\nen", 3, 3, {"line": 3, "fields": {"url": "https://x.org/1"}}),
        ("a bare string record", 5, 5, {"line": 5}),
        ("如何泡绿茶\n\n八十度的水冲泡两分钟。\n\n茶", 7, 7, {"line": 7, "fields": {"sha": "9f8e7d6c5b4a"}}),
    ]
    assert all(d.kind == "jsonl" and d.path == str(path) for d in docs)
    assert [(s.path, s.reason.split(":")[0]) for s in skipped] == [
        (f"{path}:4", "invalid JSON"),
        (f"{path}:6", "a record must be an object or a string, not list"),
    ]


def test_text_fields_choose_the_text_and_keep_the_rest_as_metadata(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"q": "question?", "a": "answer.", "note": "kept aside", "n": 3}) + "\n", encoding="utf-8")
    [doc] = read(path, text_fields=["a", "q"])
    assert doc.text == "answer.\n\nquestion?"
    assert doc.metadata["fields"] == {"note": "kept aside", "n": 3}


def test_text_fields_that_no_record_has_are_a_load_error_naming_the_fields(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(alpaca(i)) + "\n" for i in range(30)), encoding="utf-8")
    with pytest.raises(LoadError, match=r"no record has the --text-fields question \(fields found: instruction, input, output\)"):
        read(path, text_fields=["question"])


def test_a_file_that_is_not_json_lines_is_one_load_error_not_a_skip_per_line(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text("just prose\n" * 50, encoding="utf-8")
    with pytest.raises(LoadError, match=r"^not JSON Lines: line 1: invalid JSON"):
        read(path)


def test_jsonl_line_with_undecodable_bytes_is_skipped_alone(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes('{"t": "第一条记录：序列并行沿序列维度切分输入"}\n'.encode() + b'{"t": "bad \xff byte"}\n' + '{"t": "third 第三条"}\n'.encode())
    items = read(path)
    assert [getattr(i, "text", None) for i in items] == ["第一条记录：序列并行沿序列维度切分输入", None, "third 第三条"]
    assert items[1] == Skipped(f"{path}:2", "bytes that are not valid in the file's text encoding")


def test_jsonl_streams_with_bounded_memory(tmp_path):
    path = tmp_path / "big.jsonl"
    record = json.dumps(alpaca(0, output="x " * 500)) + "\n"
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(20_000):  # about 20 MB
            handle.write(record)
    tracemalloc.start()
    count = sum(1 for _ in iter_documents(source_of(path)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 20_000
    assert peak < 5 * 2**20, f"peak {peak / 2**20:.1f} MB for a {path.stat().st_size / 2**20:.0f} MB file"


def test_record_passages_report_the_file_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("\n" * 17 + json.dumps({"instruction": "第一段。", "output": "第二段。\n第三行。"}) + "\n", encoding="utf-8")
    [doc] = read(path)
    passages = chunk_document(doc, len, max_tokens=6, overlap_tokens=0)
    assert len(passages) > 1
    assert {(p.line_start, p.line_end) for p in passages} == {(18, 18)}


# ----- JSON ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_json_array_records_with_index_and_lines(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(json_records, "_CHUNK_CHARS", chunk)  # tiny reads cross every token boundary
    path = tmp_path / "qa.json"
    data = [{"q": "What is a lighthouse?", "a": "A tower with a lamp.", "n": 12345678901234567890}, "plain string",
            {"q": "为什么天空是蓝色的？", "a": "瑞利散射。", "price": 1.5}]
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    docs = read(path)
    assert [(d.text, d.metadata) for d in docs] == [
        ("What is a lighthouse?\n\nA tower with a lamp.", {"record": 0, "fields": {"n": 12345678901234567890}}),
        ("plain string", {"record": 1}),
        ("为什么天空是蓝色的？\n\n瑞利散射。", {"record": 2, "fields": {"price": 1.5}}),
    ]
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[docs[0].line_start - 1].strip() == "{" and lines[docs[0].line_end - 1].strip() == "},"
    assert lines[docs[1].line_start - 1].strip() == '"plain string",'
    assert lines[docs[2].line_end - 1].strip() == "}"


def test_json_object_holding_an_array_and_a_single_object(tmp_path):
    holder = tmp_path / "holder.json"
    holder.write_text(json.dumps({"version": 2, "tags": ["x"], "data": [{"text": "first one"}, {"text": "second one"}]}), encoding="utf-8")
    assert [(d.text, d.metadata) for d in read(holder)] == [("first one", {"record": 0}), ("second one", {"record": 1})]
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"title": "A note", "body": "Some words here", "id": 7}), encoding="utf-8")
    assert [(d.text, d.metadata) for d in read(single)] == [("A note\n\nSome words here", {"fields": {"id": 7}})]


def test_json_error_mid_array_keeps_what_came_before(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n{"t": "kept record"},\n{"t": "broken" "x"},\n{"t": "after"}\n]', encoding="utf-8")
    items = read(path)
    assert items[0].text == "kept record"
    assert items[1].path == f"{path}:3" and "the records after it are not indexed" in items[1].reason
    assert len(items) == 2
    (tmp_path / "bad.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(LoadError, match="invalid JSON"):
        read(tmp_path / "bad.json")


# ----- CSV and TSV --------------------------------------------------------------------------------


def test_csv_rows_with_lines_quoted_newlines_and_ragged_rows(tmp_path):
    path = tmp_path / "people.csv"
    path.write_text('id,name,notes,age\n1,Alice,"likes croissants,\nand long walks",34\n2,Bob\n\n3,Carol,enjoys gelato,51,extra words\n',
                    encoding="utf-8")
    docs = read(path)
    assert [(d.text, d.line_start, d.line_end, d.metadata) for d in docs] == [
        ("Alice\n\nlikes croissants,\nand long walks", 2, 3, {"line": 2, "fields": {"id": "1", "age": "34"}}),
        ("Bob", 4, 4, {"line": 4, "fields": {"id": "2"}}),
        ("Carol\n\nenjoys gelato\n\nextra words", 6, 6, {"line": 6, "fields": {"id": "3", "age": "51"}}),
    ]


def test_csv_delimiter_and_encoding_are_detected(tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes("名称;说明\n绿茶;用八十度的水冲泡两分钟。\n".encode("gbk"))
    [doc] = read(path)
    assert (doc.text, doc.metadata) == ("绿茶\n\n用八十度的水冲泡两分钟。", {"line": 2})


def test_tsv_has_no_quoting_so_a_stray_quote_swallows_nothing(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text('word\tmeaning\n"quoted\tstarts a quote\nnext\trow here\n', encoding="utf-8")
    assert [(d.text, d.line_start) for d in read(path)] == [('"quoted\n\nstarts a quote', 2), ("next\n\nrow here", 3)]


@pytest.mark.parametrize(
    "value, is_text",
    [("Positive", True), ("北京", True), ("a sentence with 3 words", True), ("42", False), ("2024-01-05", False),
     ("https://example.org/x", False), ("me@example.org", False), ("A12", False), ("9f8e7d6c5b4a", False), ("  ", False)],
)
def test_automatic_text_rule(value, is_text):
    assert nested.is_text(value) is is_text


# ----- encodings ----------------------------------------------------------------------------------

SENTENCE = "量子纠缠是一种奇特的物理现象，爱因斯坦称之为鬼魅般的超距作用。"


@pytest.mark.parametrize(
    "encoded",
    [
        SENTENCE.encode("gbk"),
        (SENTENCE + "𠀀").encode("gb18030"),
        "這是繁體中文的句子，用來測試編碼。".encode("big5"),
        "中文笔记".encode("gbk"),
        "繁體中文".encode("big5"),
        SENTENCE.encode("utf-16"),  # with BOM
        SENTENCE.encode("utf-16-le"),
        SENTENCE.encode("utf-16-be"),
        ("ASCII then " + SENTENCE).encode("utf-16-le"),
        SENTENCE.encode("utf-8-sig"),
        "Café naïve résumé — notes in Windows-1252.".encode("cp1252"),
    ],
)
def test_encodings_are_detected_and_decoded(encoded):
    text = decode_text(encoded)
    for candidate in ("gbk", "gb18030", "big5", "utf-16", "utf-16-le", "utf-16-be", "utf-8-sig", "cp1252"):
        try:
            if encoded.decode(candidate) == text:
                return
        except UnicodeDecodeError:
            continue
    pytest.fail(f"decoded as {text!r}")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10, "binary file (NUL bytes): not text"),
        (bytes(range(256)) * 4, "binary file (NUL bytes): not text"),
        (bytes(range(128, 256)) * 4, "unknown text encoding"),
        (b"abc \xff\xfe\xfa", "unknown text encoding"),
    ],
)
def test_undecodable_files_are_refused_with_the_reason(data, reason):
    with pytest.raises(LoadError, match="^" + reason.replace("(", r"\(").replace(")", r"\)")):
        decode_text(data)


# ----- HTML and PDF -------------------------------------------------------------------------------


def test_html_keeps_visible_text_and_title(tmp_path):
    path = tmp_path / "page.html"
    path.write_bytes(
        '<!DOCTYPE html><html><head><meta charset="gbk"><title>量子 笔记</title><style>p{color:red}</style></head><body>'
        "<script>var secret = 1;</script><nav>Home</nav><h1>标题</h1><p>第一段 <b>粗体</b>\n   文字。</p><!-- a comment -->"
        '<div hidden>hidden words</div><p style="display: none">invisible</p><ul><li>one</li><li>two</li></ul>'
        "<pre>code  line\n  indented</pre></body></html>".encode("gbk")
    )
    [doc] = read(path)
    assert doc.metadata == {"title": "量子 笔记"}
    assert doc.text == "Home\n\n标题\n\n第一段 粗体 文字。\n\none\ntwo\n\ncode line\nindented\n"


def make_pdf(path, pages, title=None, password=None):
    from fpdf import FPDF

    pdf = FPDF()
    if title:
        pdf.set_title(title)
    for text in pages:
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.multi_cell(0, 10, text)
    if password:
        pdf.set_encryption(owner_password="owner", user_password=password)
    pdf.output(str(path))
    return path


def test_pdf_is_a_document_per_page_with_page_numbers(tmp_path):
    path = make_pdf(tmp_path / "paper.pdf", ["Cover page.", "", "Giraffes eat acacia leaves.", "Zebras have stripes."], title="Savanna")
    docs = read(path)
    assert [(d.text, d.metadata) for d in docs] == [
        ("Cover page.", {"page": 1, "title": "Savanna"}),
        ("Giraffes eat acacia leaves.", {"page": 3, "title": "Savanna"}),
        ("Zebras have stripes.", {"page": 4, "title": "Savanna"}),
    ]


def test_corrupt_encrypted_and_textless_pdfs_are_load_errors(tmp_path):
    (tmp_path / "corrupt.pdf").write_bytes(b"%PDF-1.4\n garbage \x00\x01")
    with pytest.raises(LoadError, match="^not a readable PDF"):
        read(tmp_path / "corrupt.pdf")
    make_pdf(tmp_path / "locked.pdf", ["Secret words."], password="hunter2")
    with pytest.raises(LoadError, match="^encrypted PDF: save a copy without a password"):
        read(tmp_path / "locked.pdf")
    make_pdf(tmp_path / "blank.pdf", ["", ""])
    with pytest.raises(LoadError, match="^no text in this PDF"):
        read(tmp_path / "blank.pdf")


# ----- size limit, links, permissions -------------------------------------------------------------


def sparse_file(path, size):
    with open(path, "wb") as handle:
        handle.write(b"text at the start\n")
        handle.truncate(size)  # the rest is a hole: no disk space, no time to write
    return path


def test_a_document_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    path = sparse_file(tmp_path / "huge.txt", 200 * 2**20)
    tracemalloc.start()
    with pytest.raises(LoadError) as raised:
        read(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(raised.value) == "200 MB is over the 50 MB limit for one document: split it or pass --max-file-size"
    assert peak < 2**20
    with pytest.raises(LoadError, match="^binary file"):  # under a raised limit it is read (and its hole is NULs)
        read(path, max_file_bytes=300 * 2**20)


def test_links_that_loop_dangle_or_lead_to_folders_are_reported(tmp_path):
    (tmp_path / "ok.md").write_text("# ok\n", encoding="utf-8")
    (tmp_path / "loop.md").symlink_to(tmp_path / "loop.md")
    (tmp_path / "gone.md").symlink_to(tmp_path / "missing.md")
    (tmp_path / "back").symlink_to(tmp_path, target_is_directory=True)
    files, skipped = discover_files([tmp_path])
    assert [os.path.basename(f.path) for f in files] == ["ok.md"]
    assert [(os.path.basename(s.path), s.reason) for s in skipped] == [
        ("back", "link to a folder, not followed: index the folder itself to include it"),
        ("gone.md", f"broken symbolic link (to {tmp_path / 'missing.md'})"),
        ("loop.md", "symbolic link loop"),
    ]


def as_unprivileged(args, cwd):
    """Run a command as nobody when we are root (root reads any file whatever its mode)."""
    if os.geteuid() != 0:
        return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    # nobody may not be able to enter the checkout (a clone in a mode-700 `mktemp -d`, as CI does), so the
    # package is copied beside the test folder; loading needs nothing outside the standard library
    code = Path(cwd + "-code")
    shutil.copytree(REPO / "search", code / "search", ignore=shutil.ignore_patterns("__pycache__"))
    for path in (code, *code.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    env = {**os.environ, "HOME": cwd, "PYTHONPATH": str(code)}
    try:
        return subprocess.run(prefix + args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    finally:
        shutil.rmtree(code)


def test_unreadable_files_and_folders_are_skipped_with_the_reason():
    folder = Path(tempfile.mkdtemp(prefix="search-eacces-"))
    try:
        folder.chmod(0o755)
        (folder / "ok.md").write_text("# readable\n", encoding="utf-8")
        secret = folder / "secret.md"
        secret.write_text("# secret\n", encoding="utf-8")
        secret.chmod(0)
        (folder / "closed").mkdir()
        (folder / "closed" / "inside.md").write_text("x", encoding="utf-8")
        (folder / "closed").chmod(0)
        script = (
            "import sys; from search.ingest.loading import load_documents\n"
            "docs, skipped = load_documents([sys.argv[1]])\n"
            "print([d.path for d in docs]); [print(s.path, '|', s.reason) for s in skipped]"
        )
        done = as_unprivileged([sys.executable, "-c", script, str(folder)], str(folder))
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            str([str(folder / "ok.md")]),
            f"{folder / 'closed'} | cannot read folder: Permission denied",
            f"{secret} | cannot read: Permission denied",
        ]
    finally:
        (folder / "closed").chmod(0o755)
        shutil.rmtree(folder)


# ----- end to end: a messy folder ---------------------------------------------------------------


def test_a_messy_folder_builds_and_its_records_pages_and_encodings_are_found(tmp_path):
    from search import Engine

    data = tmp_path / "data"
    data.mkdir()
    rows = [alpaca(i) for i in range(6)]
    rows[4] = {"instruction": "What do lighthouse keepers polish?", "input": "", "output": "They polish the brass lens every morning."}
    lines = [json.dumps(r) for r in rows]
    lines[2] = '{"instruction": "broken record", "output": '  # malformed line mid-file
    (data / "alpaca.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (data / "qa.json").write_text(json.dumps([{"q": "Why do cats purr?", "a": "Contentment."}, {"q": "How do bees dance?", "a": "Waggle dance."}], indent=1), encoding="utf-8")
    (data / "people.csv").write_text("name,notes\nAlice,likes sourdough\nBob\nCarol,restores vintage motorcycles,extra\n", encoding="utf-8")
    (data / "物理.txt").write_bytes("量子纠缠是一种奇特的物理现象。\n\n爱因斯坦称之为鬼魅般的超距作用。\n".encode("gbk"))
    (data / "繁體.txt").write_bytes("台灣的夜市小吃非常有名。".encode("big5"))
    (data / "utf16.txt").write_bytes("Penguins huddle together for warmth.".encode("utf-16"))
    make_pdf(data / "paper.pdf", ["Introduction to the savanna.", "Giraffes eat acacia leaves with long tongues.", "Zebras have stripes."])
    (data / "page.html").write_text("<title>Tide</title><script>var tides;</script><p>Tide pools shelter anemones.</p>", encoding="utf-8")
    (data / "empty.md").write_bytes(b"")
    (data / "binary.txt").write_bytes(b"\x00\x01\x02\x03" * 100)
    (data / "invalid.txt").write_bytes(b"abc \xff\xfe\xfa")
    sparse_file(data / "huge.txt", 200 * 2**20)
    (data / "corrupt.pdf").write_bytes(b"%PDF-1.7 truncated")
    (data / "loop.md").symlink_to(data / "loop.md")
    (data / "dangling.md").symlink_to(data / "nowhere.md")

    engine, engine_summary = Engine.build([data], tmp_path / "index")
    summary = engine_summary
    reasons = {os.path.relpath(s.path, data): s.reason for s in summary.skipped}
    assert reasons == {
        "alpaca.jsonl:3": reasons["alpaca.jsonl:3"],
        "binary.txt": "binary file (NUL bytes): not text",
        "corrupt.pdf": reasons["corrupt.pdf"],
        "dangling.md": f"broken symbolic link (to {data / 'nowhere.md'})",
        "empty.md": "empty file",
        "huge.txt": "200 MB is over the 50 MB limit for one document: split it or pass --max-file-size",
        "invalid.txt": reasons["invalid.txt"],
        "loop.md": "symbolic link loop",
    }
    assert reasons["alpaca.jsonl:3"].startswith("invalid JSON")
    assert reasons["corrupt.pdf"].startswith("not a readable PDF")
    assert reasons["invalid.txt"].startswith("unknown text encoding")
    assert summary.files_added == 8  # jsonl, json, csv, the three encodings, pdf, html

    def top(query, mode="bm25"):
        return engine.search(query, k=3, mode=mode)

    [record] = [h for h in top("lighthouse keepers polish brass lens") if h.path.endswith("alpaca.jsonl")][:1]
    assert (record.line_start, record.metadata["line"]) == (5, 5)
    [row] = [h for h in top("vintage motorcycles") if h.path.endswith("people.csv")][:1]
    assert (row.line_start, row.metadata["line"]) == (4, 4) and "Carol" in row.text
    assert any(h.path.endswith("物理.txt") and "鬼魅般的超距作用" in h.text for h in top("鬼魅般的超距作用"))
    assert any(h.path.endswith("繁體.txt") for h in top("夜市小吃"))
    assert any(h.path.endswith("utf16.txt") for h in top("penguins huddle"))
    [page] = [h for h in top("giraffes acacia tongues") if h.path.endswith("paper.pdf")][:1]
    assert page.metadata["page"] == 2
    assert any(h.metadata.get("record") == 1 for h in top("bees waggle dance"))
    assert top("anemones tide pools")[0].metadata.get("title") == "Tide"
    # hybrid (both retrievers and fusion) over the same index, with a paraphrase
    assert any(h.path.endswith("paper.pdf") and h.metadata["page"] == 2 for h in top("what food do giraffes eat", "hybrid"))


def test_cli_text_fields_size_limit_and_hit_locations(tmp_path):
    from click.testing import CliRunner

    from search.cli import cli

    data = tmp_path / "data"
    data.mkdir()
    (data / "qa.jsonl").write_text("\n" + json.dumps({"q": "How do otters sleep?", "a": "Holding hands.", "src": "nature notes"}) + "\n", encoding="utf-8")
    (data / "qa.json").write_text(json.dumps([{"q": "first"}, {"q": "Where do puffins nest?", "a": "In burrows."}]), encoding="utf-8")
    make_pdf(data / "paper.pdf", ["Cover.", "Walruses use tusks to climb onto ice."])
    (data / "page.html").write_text("<p>Narwhals have a long tusk.</p>", encoding="utf-8")
    (data / "note.md").write_text("# Note\n\nSea lions bark loudly.\n" + "filler words " * 1000, encoding="utf-8")  # about 13 KB
    index = str(tmp_path / "index")
    runner = CliRunner()

    result = runner.invoke(cli, ["index", str(data), "--index", index, "--text-fields", "q,a", "--max-file-size", "0.01"])
    assert result.exit_code == 0, result.output
    size = f"{(data / 'note.md').stat().st_size / 2**20:.3g}"
    assert f"note.md: {size} MB is over the 0.01 MB limit for one document: split it or pass --max-file-size" in result.output
    assert "4 files added" in result.output and "1 skipped" in result.output

    def location(query):
        out = runner.invoke(cli, ["query", query, "--mode", "bm25", "-k", "1", "--index", index])
        assert out.exit_code == 0, out.output
        return out.output.splitlines()[0].split()[2]

    assert location("otters sleep").endswith("qa.jsonl:2")
    assert location("puffins nest").endswith("qa.json#1")
    assert location("walruses tusks climb").endswith("paper.pdf") and "p.2" in runner.invoke(
        cli, ["query", "walruses tusks climb", "--mode", "bm25", "-k", "1", "--index", index]).output
    assert location("narwhals").endswith("page.html")
    hit = json.loads(runner.invoke(cli, ["query", "otters", "--mode", "bm25", "-k", "1", "--json", "--index", index]).output)[0]
    assert hit["metadata"] == {"line": 2, "fields": {"src": "nature notes"}} and hit["line_start"] == 2

    # other load options re-read every file; the note now fits and "src" becomes text
    result = runner.invoke(cli, ["index", str(data), "--index", index])
    assert result.exit_code == 0, result.output
    assert "1 files added, 4 changed" in result.output and "0 skipped" in result.output
    assert "nature notes" in runner.invoke(cli, ["query", "otters", "--mode", "bm25", "-k", "1", "--index", index]).output
    bad = runner.invoke(cli, ["index", str(data), "--index", index, "--text-fields", " , "])
    assert bad.exit_code == 1 and "--text-fields names no field" in bad.output
