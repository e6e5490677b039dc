"""Hostile files (issue 18): each is skipped or bounded with one line, and never stops the build.

One folder holds every hostile file beside ordinary notes and is indexed once by the real `search`
command (keyword-only, so no model is loaded); each test then checks its own case: the one line
that names the file, the exit status, and that the rest of the folder was indexed.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from search import BuildConfig, Engine, LoadError
from search.ingest.html import html_document
from search.schema import SourceFile

from conftest import write_notes
from hardening import cli

SEARCH = str(Path(sys.executable).parent / "search")
GOOD = ["并行.md", "cooking.md", "菜谱.txt"]
BAD_NAME = os.fsdecode(b"bad\xff\xfename.md")
ESCAPE_NAME = "esc\x1b[2Jname.md"
DEEP_FOLDERS = 1500
# 9 levels of 9 aliases: a few hundred bytes that expand to 9^9 strings if aliases are followed
LAUGHS = "---\ntitle: laughs\nl0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)
) + "---\n\n# Laughs\n\nThe body of the laughing note mentions a walrus.\n"


def run(*args, cwd):
    """The real `search` command (its warnings reach stderr as a person sees them)."""
    return subprocess.run([SEARCH, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def lines_about(stderr: str, name: str) -> list[str]:
    return [line for line in stderr.splitlines() if name in line]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    notes = write_notes(root / "notes")
    (notes / "deep.json").write_text("[" * 10_000)
    (notes / "deep-object.json").write_text('{"a":' * 10_000)
    nested = '{"text": ' + "[" * 1000 + '"x"' + "]" * 1000 + "}"
    (notes / "deep.jsonl").write_text(nested + '\n{"text": "the surviving record talks about narwhals"}\n')
    (notes / BAD_NAME).write_text("# Bad name\n\nundecodable name\n")
    deep = [str(notes)]
    for _ in range(DEEP_FOLDERS):  # one level at a time: os.makedirs and Path.mkdir recurse
        deep.append(os.path.join(deep[-1], "d"))
        os.mkdir(deep[-1])
    Path(deep[-1], "bottom.md").write_text("# Bottom\n\nthe deepest note\n")
    (notes / "d" / "d" / "shallow.md").write_text("# Shallow\n\nthe shallow note mentions an okapi\n")
    (notes / "nested.html").write_text("<html><body>" + "<div>" * 20_000 + "x" + "</div>" * 20_000 + "</body></html>")
    (notes / "laughs.md").write_text(LAUGHS)
    (notes / "long.md").write_text("# Long\n\n" + "x" * 300_000 + "\n")
    (notes / ESCAPE_NAME).write_text("# Esc\n\nterminal \x1b]52;c;ZXZpbA==\x07 escape zebra \x1b[2J\n")
    (root / "outside").mkdir()
    (root / "outside" / "secret.txt").write_text("root:x:0:0 the secret password line\n")
    (notes / "passwd.txt").symlink_to(root / "outside" / "secret.txt")
    (notes / "inner-link.md").symlink_to(notes / "cooking.md")  # inside the tree: followed
    done = run("index", "notes", "--index", "idx", "--keyword-only", cwd=root)
    yield root, notes, done
    os.remove(os.path.join(deep[-1], "bottom.md"))
    for folder in reversed(deep[3:]):  # shutil.rmtree would recurse 1,500 deep when pytest cleans up
        os.rmdir(folder)


def test_the_build_finishes_and_indexes_the_rest(hostile):
    root, notes, done = hostile
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    with Engine.open(root / "idx") as engine:
        for name in GOOD + ["inner-link.md", "laughs.md", "long.md", ESCAPE_NAME]:
            assert engine.holds(notes / name), name
        assert engine.holds(notes / "d" / "d" / "shallow.md")
    assert "indexed" in done.stdout and "skipped" in done.stdout


@pytest.mark.parametrize("name", ["deep.json", "deep-object.json"])
def test_json_ten_thousand_deep_is_one_skipped_line(hostile, name):
    root, notes, done = hostile
    [line] = lines_about(done.stderr, f"notes/{name}:")
    assert line == f"skipped notes/{name}: JSON nested more than 100 levels deep (line 1)"
    with Engine.open(root / "idx") as engine:
        assert not engine.holds(notes / name) and engine.holds(notes / GOOD[0])


def test_a_jsonl_record_a_thousand_deep_is_skipped_and_the_next_record_indexed(hostile):
    root, notes, done = hostile
    [line] = lines_about(done.stderr, "deep.jsonl")
    assert line == "skipped notes/deep.jsonl:1: a record nested more than 100 levels deep"
    with Engine.open(root / "idx") as engine:
        [hit] = engine.search("narwhals", k=1, mode="bm25")
    assert hit.location.endswith("deep.jsonl:2")


def test_a_file_name_that_is_not_utf8_is_skipped_with_its_bytes_escaped(hostile):
    _, _, done = hostile
    [line] = lines_about(done.stderr, "name.md: file name")
    assert line == "skipped notes/bad\\xff\\xfename.md: file name is not valid UTF-8: rename it"


def test_folders_1500_deep_stop_at_the_depth_limit(hostile):
    root, notes, done = hostile
    [line] = lines_about(done.stderr, "folder nested")
    assert line.startswith("skipped notes/" + "d/" * 100 + "d: folder nested more than 100 levels deep: not read")
    with Engine.open(root / "idx") as engine:
        assert engine.search("okapi", k=1, mode="bm25")[0].path.endswith("shallow.md")
        assert not engine.search("deepest", k=1, mode="bm25").hits


def test_html_nested_20k_deep_is_skipped(hostile):
    _, _, done = hostile
    [line] = lines_about(done.stderr, "nested.html")
    assert line == "skipped notes/nested.html: elements nested more than 2,048 deep: not read"


def test_html_of_20k_tags_takes_well_under_a_second():
    """CPU time, not wall time: the machine running the tests may be busy (BeautifulSoup: 10.6 s)."""
    source = SourceFile("page.html", 0, 0.0, "html")
    nested = ("<html><body>" + "<div>" * 20_000 + "x" + "</div>" * 20_000 + "</body></html>").encode()
    started = time.process_time()
    with pytest.raises(LoadError, match="nested more than 2,048 deep"):
        html_document(source, nested)
    assert time.process_time() - started < 1.0
    flat = ("<html><body>" + "<p>para <b>bold</b></p>" * 10_000 + "<div>" * 2000 + "end" + "</div>" * 2000 + "</body></html>").encode()
    started = time.process_time()
    document = html_document(source, flat)
    assert time.process_time() - started < 1.0
    assert document.text.count("para bold") == 10_000 and document.text.endswith("end\n")


def test_billion_laughs_front_matter_is_refused_and_the_note_indexed(hostile):
    root, notes, done = hostile
    [line] = lines_about(done.stderr, "laughs.md")
    assert line == f"warning: {notes / 'laughs.md'}: front matter not read: YAML aliases (*name) are not allowed"
    with Engine.open(root / "idx") as engine:
        [hit] = engine.search("walrus", k=1, mode="bm25")
        assert hit.path.endswith("laughs.md") and hit.metadata == {}
        assert engine.generation.passages_file.stat().st_size < 2_000_000  # 73.7 MB a passage before


def test_a_line_without_spaces_is_cut_into_bounded_passages_and_tokens(hostile):
    root, notes, done = hostile
    assert not lines_about(done.stderr, "long.md")
    with Engine.open(root / "idx") as engine:
        passages = [p for p in engine.passages if p.path.endswith("long.md")]
        tokens = [json.loads(line) for line in engine.generation.tokens_file.read_text().splitlines()]
    assert len(passages) >= 300_000 // 2411 and max(len(p.text) for p in passages) <= 2411
    assert max(len(token) for row in tokens for token in row) <= 100


def test_escape_sequences_in_names_and_text_are_printed_escaped(hostile):
    root, _, done = hostile
    assert "\x1b" not in done.stdout + done.stderr
    shown = cli("query", "zebra", "--index", "idx", "--mode", "bm25", cwd=root)
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "esc\\x1b[2Jname.md" in shown.stdout and "\\x1b]52;c;ZXZpbA==\\x07" in shown.stdout


def test_a_link_to_a_file_outside_the_tree_is_skipped_unless_asked(hostile):
    root, notes, done = hostile
    [line] = lines_about(done.stderr, "passwd.txt")
    secret = os.path.realpath(root / "outside" / "secret.txt")
    assert line == f"skipped notes/passwd.txt: link to {secret}, outside the indexed folders: not followed (pass --follow-symlinks to index it)"
    found = cli("query", "root:x:0", "--index", "idx", "--mode", "bm25", cwd=root)
    assert found.returncode == 0 and "secret password" not in found.stdout
    followed = cli("index", "notes/passwd.txt", "notes/cooking.md", "--index", "idx2", "--keyword-only", cwd=root)
    assert followed.returncode == 0  # a file named on its own is taken, link or not
    opted = cli("index", "notes", "--index", "idx3", "--keyword-only", "--follow-symlinks", cwd=root)
    assert opted.returncode == 0 and not lines_about(opted.stderr, "passwd.txt")
    with Engine.open(root / "idx3") as engine:
        assert engine.holds(notes / "passwd.txt")


def test_the_index_folder_inside_the_notes_is_never_indexed(tmp_path):
    notes = write_notes(tmp_path / "notes")
    counts = []
    for _ in range(3):  # `cd notes; search index .`: the default index folder lands inside
        done = cli("index", ".", "--keyword-only", "--json", cwd=notes)
        assert done.returncode == 0, done.stderr
        counts.append(json.loads(done.stdout)["passages"])
    assert counts[0] == counts[1] == counts[2]  # was 15 -> 619 -> 1,832
    with Engine.open(notes / "indexes" / "default") as engine:
        assert all("indexes" not in Path(path).relative_to(notes).parts for path in engine.files())
    inside = cli("index", "indexes/default", "--keyword-only", cwd=notes)
    assert inside.returncode == 1 and inside.stderr.count("\n") == 1 and "inside the index folder" in inside.stderr


def test_any_exception_of_a_reader_or_the_chunker_skips_only_its_file(tmp_path, monkeypatch):
    from search.index import preparing
    from search.ingest import loading

    notes = write_notes(tmp_path / "notes")
    (notes / "boom.md").write_text("# Boom\n\nreader fails\n")
    (notes / "chunk.md").write_text("# Chunk\n\nchunker fails\n")
    real_read, real_chunk = loading.read_document, preparing.chunk_document

    def read(source, options=None):
        if source.path.endswith("boom.md"):
            raise ValueError("a reader bug\nover two lines")
        return real_read(source, options)

    def chunk(document, *args):
        if document.path.endswith("chunk.md"):
            raise IndexError("a chunker bug")
        return real_chunk(document, *args)

    monkeypatch.setattr(loading, "read_document", read)
    monkeypatch.setattr(preparing, "chunk_document", chunk)
    engine, summary = Engine.build([notes], tmp_path / "idx", build_config=BuildConfig(keyword_only=True))
    reasons = {os.path.basename(s.path): s.reason for s in summary.skipped}
    assert reasons == {"boom.md": "cannot read (ValueError: a reader bug over two lines)",
                       "chunk.md": "cannot read (IndexError: a chunker bug)"}
    assert all(engine.holds(notes / name) for name in GOOD)
    engine.close()
    monkeypatch.undo()
    _, again = Engine.build([notes], tmp_path / "idx")  # failed files are read again, not taken as unchanged
    assert (again.files_added, again.files_changed, again.skipped) == (1, 1, [])


def test_the_watcher_outlives_a_hostile_file_and_a_failed_build(tmp_path, monkeypatch):
    from search.index import build
    from search.watching import watch

    notes = write_notes(tmp_path / "notes")
    index = tmp_path / "idx"
    Engine.build([notes], index, build_config=BuildConfig(keyword_only=True))[0].close()  # later builds stay keyword-only
    real_run, runs = build.Builder.run, []

    def second_run_fails(self, paths):
        runs.append(paths)
        if len(runs) == 2:
            raise RuntimeError("the disk caught fire")
        return real_run(self, paths)

    monkeypatch.setattr(build.Builder, "run", second_run_fails)
    built, errors, stop = [], [], threading.Event()
    thread = threading.Thread(target=watch, args=([notes], index), daemon=True,
                              kwargs={"debounce": 0.2, "on_build": built.append, "on_error": errors.append, "stop": stop})
    thread.start()

    def wait_for(condition):
        deadline = time.time() + 60
        while not condition() and time.time() < deadline:
            time.sleep(0.1)
        return condition()

    try:
        assert wait_for(lambda: built)
        (notes / "deep.json").write_text("[" * 10_000)
        (notes / "later.md").write_text("# Later\n\na quokka arrived later\n")
        assert wait_for(lambda: errors) and str(errors[0]) == "the disk caught fire"
        (notes / "third.md").write_text("# Third\n\nanother change\n")
        assert wait_for(lambda: any(s.path.endswith("deep.json") for b in built for s in b.skipped))
        assert thread.is_alive() and len(errors) == 1
        with Engine.open(index) as engine:
            assert engine.search("quokka", k=1, mode="bm25")[0].path.endswith("later.md")
    finally:
        stop.set()
        thread.join(timeout=30)
