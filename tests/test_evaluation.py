"""Metric arithmetic on hand-made runs, and `search eval` end to end on a tiny collection."""

import json
import math

import pytest
from click.testing import CliRunner

from search.cli import cli
from search.evaluation import load_collection, mrr_at, ndcg_at, recall_at, roll_up


def test_ndcg_with_graded_relevance():
    judged = {"a": 2, "b": 1}
    ranked = ["x", "a", "b"]
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at(ranked, judged) == pytest.approx(dcg / ideal)
    assert ndcg_at(["a", "b"], judged) == pytest.approx(1.0)
    assert ndcg_at(["x"] * 10 + ["a"], judged) == 0.0  # beyond the cut-off
    assert ndcg_at(["a"], {}) == 0.0


def test_recall_and_mrr():
    judged = {"a": 1, "b": 1, "c": 1, "d": 1}
    assert recall_at(["a", "x", "c"], judged) == pytest.approx(0.5)
    assert recall_at(["x"] * 100 + ["a"], judged) == 0.0
    assert mrr_at(["x", "y", "b"], judged) == pytest.approx(1 / 3)
    assert mrr_at(["x"] * 10 + ["a"], judged) == 0.0


def test_roll_up_keeps_each_document_at_its_best_passage():
    document_of = ["d1", "d1", "d2", "d3", "d2"]
    assert roll_up([1, 0, 4, 3, 2], document_of) == ["d1", "d2", "d3"]
    assert roll_up([3, 2, 0], document_of, limit=2) == ["d3", "d2"]


def write_collection(folder):
    folder.mkdir()
    docs = [
        {"id": "zh1", "title": "序列并行", "text": "序列并行沿序列维度切分输入，用于训练长文本。"},
        {"id": "zh2", "title": "番茄炒蛋", "text": "鸡蛋打散，番茄切块，先炒蛋再炒番茄。"},
        {"id": "zh3", "title": "数据并行", "text": "每张卡保存完整模型，用 all-reduce 同步梯度。"},
        {"id": "en1", "title": "Bread", "text": "Knead the dough, let it rise, then bake it in a hot oven."},
        {"id": "en2", "title": "Tea", "text": "Steep green tea below boiling so it does not turn bitter."},
    ]
    queries = [{"id": "q1", "text": "怎么切分长序列来训练"}, {"id": "q2", "text": "how to brew green tea"},
               {"id": "q3", "text": "番茄鸡蛋怎么做"}, {"id": "q4", "text": "unjudged query"}]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in docs) + "\n", encoding="utf-8")
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q, ensure_ascii=False) for q in queries) + "\n", encoding="utf-8")
    (folder / "qrels.tsv").write_text("q1\tzh1\t1\nq2\ten2\t2\nq3\tzh2\t1\nq3\tzh3\t0\n", encoding="utf-8")
    return folder


def test_collection_loading_keeps_judged_queries_only(tmp_path):
    collection = load_collection(write_collection(tmp_path / "tiny"))
    assert set(collection.queries) == {"q1", "q2", "q3"}
    assert collection.qrels["q3"] == {"zh2": 1}  # relevance 0 is not relevant


def test_eval_command_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the eval cache goes under ./indexes/eval
    folder = write_collection(tmp_path / "tiny")
    per_query = tmp_path / "per_query.tsv"
    result = CliRunner().invoke(cli, ["eval", str(folder), "--json", "--per-query", str(per_query)])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["queries"] == 3 and set(scores) == {"hybrid", "bm25", "dense", "queries"}
    assert scores["hybrid"]["ndcg@10"] == pytest.approx(1.0)  # each query's answer is unmistakable
    assert scores["dense"]["recall@100"] == 1.0
    rows = per_query.read_text(encoding="utf-8").splitlines()
    assert rows[0].split("\t") == ["config", "query_id", "ndcg@10", "recall@100", "mrr@10"]
    assert len(rows) == 1 + 3 * 3
    cached = list((tmp_path / "indexes" / "eval").iterdir())
    again = CliRunner().invoke(cli, ["eval", str(folder), "--mode", "bm25"])
    assert again.exit_code == 0 and "bm25" in again.output and "hybrid" not in again.output
    assert list((tmp_path / "indexes" / "eval").iterdir()) == cached  # reused, not rebuilt


def test_eval_of_a_folder_that_is_not_a_collection(tmp_path):
    result = CliRunner().invoke(cli, ["eval", str(tmp_path)])
    assert result.exit_code == 1 and "corpus.jsonl is missing" in result.output
