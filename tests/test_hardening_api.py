"""Bad arguments and hostile surroundings (issue 18): the library raises SearchError subclasses with
a message, the CLI prints one line and exits 1 (a traceback only with --debug), control characters
never reach the terminal, and neither a planted cache nor a planted lock leads outside."""

import os

import pytest

from search import Engine, FilterError, Filters, QueryError, SearchError
from search.cli import printable

from conftest import write_notes
from hardening import cli, one_line


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    notes = write_notes(root / "notes")
    assert cli("index", notes, "--index", root / "index", "--keyword-only").returncode == 0
    return root / "index"


@pytest.mark.parametrize("query, message", [
    (None, "the query must be text, not NoneType"),
    (42, "the query must be text, not int"),
    ("", "empty query"),
    ("  \n ", "empty query"),
    ("序" * 2001, "query of 2001 characters is too long: keep it under 2000"),
    ("x" * 65536, "query of 65536 characters is too long"),
])
def test_bad_queries_raise_query_error(index, query, message):
    with Engine.open(index) as engine, pytest.raises(QueryError, match=message):
        engine.search(query)


@pytest.mark.parametrize("arguments, message", [
    ({"k": -1}, "k must be a whole number from 1 to 1000, not -1"),
    ({"k": 0}, "not 0"),
    ({"k": True}, "not True"),
    ({"k": 10**6}, "not 1000000"),
    ({"k": "5"}, "not '5'"),
    ({"mode": "fuzzy"}, "unknown mode 'fuzzy': choose from hybrid, bm25, dense"),
    ({"filters": "x/**"}, "filters must be search.Filters"),
])
def test_bad_arguments_raise_query_error(index, arguments, message):
    with Engine.open(index) as engine, pytest.raises(QueryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        engine.search("tea", **arguments)


@pytest.mark.parametrize("filters, message", [
    ({"tags": [None]}, "--tag filter values must be text, not NoneType"),
    ({"paths": [""]}, "empty --path filter"),
    ({"types": [3]}, "--type filter values must be text, not int"),
])
def test_bad_filter_values_raise_filter_error(filters, message):
    with pytest.raises(FilterError, match=message):
        Filters(**filters)


def test_a_query_with_lone_surrogates_runs_on_a_keyword_index(index):
    with Engine.open(index) as engine:
        assert engine.search("tea\udcff", k=1, mode="bm25").hits


@pytest.mark.parametrize("arguments, message", [
    (["query", "x" * 65536], "query of 65536 characters is too long"),
    (["query", "   "], "empty query"),
    (["query", "tea", "--path", ""], "empty --path filter"),
    (["query", "tea", "--path", "notes/[a"], None),
    (["query", "tea", "-k", "0"], "Invalid value for '-k'"),
    (["query", "tea", "--mode", "fuzzy"], "Invalid value for '--mode'"),
])
def test_the_cli_turns_bad_queries_into_one_line(index, arguments, message):
    done = cli(*arguments, "--index", index)
    if message is None and done.returncode == 0:
        return  # a pattern wcmatch accepts: fine, as long as it did not crash
    assert done.returncode in (1, 2) and "Traceback" not in done.output
    assert message in done.stderr
    assert done.returncode == 2 or one_line(done.stderr)  # click's own usage errors say how to get help


def test_an_unexpected_error_is_one_line_and_debug_shows_it(index, monkeypatch):
    from click.testing import CliRunner

    from search.cli import cli as command

    def broken(*args, **kwargs):
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(Engine, "open", broken)
    done = cli("query", "tea", "--index", index)
    assert done.returncode == 1 and one_line(done.stderr)
    assert done.stderr == "Error: unexpected RuntimeError: something nobody foresaw (run with --debug for the traceback)\n"
    debug = CliRunner().invoke(command, ["--debug", "query", "tea", "--index", str(index)])
    assert isinstance(debug.exception, RuntimeError)


def test_control_characters_and_undecodable_bytes_are_escaped():
    assert printable("a\x1b[2Jb\x07c\x9bd") == "a\\x1b[2Jb\\x07c\\x9bd"
    assert printable("tab\tand\nnewline stay") == "tab\tand\nnewline stay"
    assert printable(os.fsdecode(b"bad\xff\xfe.md")) == "bad\\xff\\xfe.md"
    assert printable("lone \ud800") == "lone \\ud800"


def test_a_lock_that_is_a_symlink_is_refused_and_its_target_never_created(tmp_path):
    notes = write_notes(tmp_path / "notes")
    folder = tmp_path / "index"
    folder.mkdir()
    target = tmp_path / "elsewhere" / "planted"
    target.parent.mkdir()
    (folder / ".lock").symlink_to(target)
    done = cli("index", notes, "--index", folder, "--keyword-only")
    assert done.returncode == 1 and one_line(done.stderr) and ".lock is a symbolic link" in done.stderr
    assert not target.exists()


def test_a_planted_jieba_cache_is_not_trusted(tmp_path, monkeypatch):
    from search.cache import trusted
    from search.text import jieba_dictionary

    monkeypatch.setenv("SEARCH_CACHE", str(tmp_path / "cache"))
    planted = jieba_dictionary._dictionary_cache()
    planted.mkdir(parents=True)
    (planted / "total.txt").write_text("1")
    planted.chmod(0o777)  # anyone could have written it
    assert not trusted(planted)
    if os.geteuid() == 0:
        planted.chmod(0o700)
        os.chown(planted, 65534, 65534)  # another user's
        assert not trusted(planted)
        os.chown(planted, 0, 0)
        planted.chmod(0o777)

    def read_planted(folder):
        pytest.fail(f"the planted cache {folder} was read")

    monkeypatch.setattr(jieba_dictionary, "CompactDictionary", read_planted)
    tokenizer = jieba_dictionary._new_jieba(compact=True)  # falls back to jieba's own dictionary
    assert "并行" in list(tokenizer.cut("序列并行"))


def test_engine_open_on_something_else_is_a_search_error(tmp_path):
    for path in ("/etc/passwd", "/etc/passwd/below", tmp_path / "missing"):
        with pytest.raises(SearchError):
            Engine.open(path)
