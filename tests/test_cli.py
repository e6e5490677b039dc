"""The CLI end to end on a temporary corpus with the real bundled models."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from search.cli import cli

from conftest import write_notes


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    notes = write_notes(root / "notes")
    (notes / "skip.png").write_bytes(b"\x89PNG")
    index = root / "index"
    result = CliRunner().invoke(cli, ["index", str(notes), "--index", str(index)])
    assert result.exit_code == 0, result.output
    return notes, index, result


def test_index_reports_summary_and_skipped(indexed):
    _, _, result = indexed
    assert "indexed" in result.output and "3 files added" in result.output
    assert "skip.png: unsupported file type" in result.output


def test_query_json_is_utf8_hits_with_all_fields(indexed):
    notes, index, _ = indexed
    result = CliRunner().invoke(cli, ["query", "序列并行", "--json", "-k", "2", "--index", str(index)])
    assert result.exit_code == 0, result.output
    assert "\\u" not in result.output and "序列并行" in result.output
    hits = json.loads(result.output)
    assert len(hits) == 2
    expected = {"path", "heading_path", "text", "line_start", "line_end", "metadata", "score",
                "bm25_rank", "bm25_score", "dense_rank", "dense_score"}
    assert expected <= set(hits[0])
    assert hits[0]["path"].endswith("并行.md") and hits[0]["heading_path"][-1] == "序列并行"


def test_query_human_output(indexed):
    _, index, _ = indexed
    result = CliRunner().invoke(cli, ["query", "green tea", "--index", str(index), "--mode", "bm25"])
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.lstrip().startswith("1.") and "cooking.md:" in first and "Cooking > Tea" in first
    assert "\x1b[" not in result.output  # no colour when not writing to a terminal
    coloured = CliRunner().invoke(cli, ["query", "green tea", "--index", str(index)], color=True)
    assert "\x1b[31m\x1b[1mgreen" in coloured.output or "\x1b[1m\x1b[31mgreen" in coloured.output


def test_cross_lingual_option(indexed):
    """`--cross-lingual` alone translates on this mixed index; the default (auto) and `never` do not."""
    _, index, _ = indexed

    def paths(*options: str) -> list[str]:
        result = CliRunner().invoke(cli, ["query", "绿茶", "--mode", "bm25", "--json", "--index", str(index), *options])
        assert result.exit_code == 0, result.output
        return [hit["path"] for hit in json.loads(result.output or "[]")]

    assert paths("--cross-lingual")[0].endswith("cooking.md")
    assert not any(path.endswith("cooking.md") for path in paths() + paths("--cross-lingual", "never"))
    wrong = CliRunner().invoke(cli, ["query", "绿茶", "--cross-lingual", "sometimes", "--index", str(index)])
    assert wrong.exit_code == 2 and "auto" in wrong.output


def test_env_var_selects_index_and_stats(indexed):
    _, index, _ = indexed
    result = CliRunner().invoke(cli, ["stats", "--json"], env={"SEARCH_INDEX": str(index)})
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["files"] == 3 and info["passages"] > 3
    assert info["models"]["zh"]["name"] == "m3e-small"
    human = CliRunner().invoke(cli, ["stats", "--index", str(index)])
    assert "m3e-small" in human.output and "passages" in human.output
    assert info["documents"] == 3 and "bm25       lucene, k1 0.9, b 0.4; each passage's window x1.0 (3 documents)" in human.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["query", "x", "--index", "/nonexistent/idx"], "no index at /nonexistent/idx"),
        (["query", "  ", "--index", "{index}"], "empty query"),
        (["query", "x" * 3000, "--index", "{index}"], "too long"),
        (["index", "/nonexistent/notes", "--index", "/tmp/never"], "no such file or folder"),
    ],
)
def test_errors_are_one_line_without_traceback(indexed, args, message):
    result = CliRunner().invoke(cli, [arg.format(index=indexed[1]) for arg in args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_other_model_refused_naming_both(indexed):
    notes, index, _ = indexed
    result = CliRunner().invoke(cli, ["index", str(notes), "--index", str(index), "--model", "my/model"])
    assert result.exit_code != 0
    assert "m3e-small" in result.output and "my/model" in result.output and "--rebuild" in result.output


def test_console_script_runs(indexed):
    _, index, _ = indexed
    bin_dir = __import__("pathlib").Path(sys.executable).parent
    done = subprocess.run([bin_dir / "search", "query", "番茄", "--index", str(index), "-k", "1", "--mode", "bm25"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "菜谱.txt:" in done.stdout


def test_prepare_reports_the_backend_of_each_default_model(monkeypatch):
    monkeypatch.setenv("SEARCH_BACKEND", "onnx")  # a GPU machine would have nothing to prepare
    result = CliRunner().invoke(cli, ["prepare"])
    assert result.exit_code == 0, result.output
    assert "zh: onnx-int8:m3e-small-" in result.output and "en: onnx-int8:all-MiniLM-L6-v2-" in result.output
