"""A query that crossed languages through a word-by-word translation has its top re-read by
multilingual-e5-small (search.query.rerank); one-language queries are left as fused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from search import Engine, SearchConfig
from search.embedding.encoder import Encoder
from search.embedding.models import CROSS_LINGUAL_RERANKER
from search.embedding.spec import token_counter
from search.query.fusion import z_normalise
from search.query.rerank import mix_scores
from search.text.passages import contextual_text

from bilingual_notes import ACROSS_LANGUAGES


def test_the_mix_weighs_standard_scores():
    reread, fused = np.array([0.9, 0.5, 0.1]), np.array([1.0, 2.0, 3.0])
    assert np.argmax(mix_scores(reread, fused, 1.0)) == 0 and np.argmax(mix_scores(reread, fused, 0.0)) == 2
    np.testing.assert_allclose(mix_scores(reread, fused, 0.5), 0.0, atol=1e-12)  # opposite opinions, equal weight
    np.testing.assert_allclose(mix_scores(np.full(3, 0.7), fused, 0.8), 0.2 * z_normalise(fused))  # no preference: fusion's order


@pytest.mark.parametrize("language, query, expected", ACROSS_LANGUAGES)
def test_a_query_across_languages_is_re_read_by_the_multilingual_model(one_language, language, query, expected):
    result = one_language[language].search(query, k=3)
    assert result.reread_by == CROSS_LINGUAL_RERANKER and result.to_dict()["reread_by"] == CROSS_LINGUAL_RERANKER
    assert result.hits[0].path.endswith(expected)
    assert all(hit.reread_score is not None for hit in result.hits)
    assert max(result.hits, key=lambda hit: hit.reread_score).path.endswith(expected)  # e5 itself puts it first


def _e5_order(engine: Engine, query: str, pids: list[int]) -> list[int]:
    """The passages by multilingual-e5-small's cosine to the query, computed here apart from the engine."""
    e5 = Encoder(CROSS_LINGUAL_RERANKER)
    vectors = e5.encode([contextual_text(passage) for passage in engine.passages.get_many(pids)])
    cosines = vectors @ e5.encode_query([query])[0]
    return [pids[i] for i in np.argsort(-cosines, kind="stable")]


def test_the_weight_moves_the_order_from_fusion_to_the_multilingual_model(one_language):
    engine, query = one_language["zh"], "my cat sleeps by the window"
    retrieval = engine.retrieve(engine.analyse(query), 10)
    assert retrieval.dense_translated and retrieval.query_text == query
    fused = [pid for pid, _ in engine.rank(retrieval, config=SearchConfig(rerank_model=None))]
    e5_order = _e5_order(engine, query, fused)
    assert len(fused) == 3 and e5_order != fused  # the two disagree on this query's second place
    assert [pid for pid, _ in engine.rank(retrieval, config=SearchConfig(rerank_weight=0.0))] == fused
    assert [pid for pid, _ in engine.rank(retrieval, config=SearchConfig(rerank_weight=1.0))] == e5_order


def test_one_language_queries_keyword_mode_and_a_disabled_reranker_are_not_re_read(one_language):
    english = one_language["en"]
    for result in (english.search("how long to brew green tea", k=3), english.search("绿茶要泡多久", k=3, mode="bm25")):
        assert result.reread_by is None and all(hit.reread_score is None for hit in result.hits)
    assert not english.retrieve(english.analyse("how long to brew green tea"), 10).dense_translated
    with Engine.open(english.folder.root, config=SearchConfig(rerank_model=None)) as plain:
        result = plain.search("绿茶要泡多久", k=3)
        assert result.reread_by is None and result.notice is None and result.hits[0].reread_score is None


def test_a_query_asked_again_ranks_the_same(one_language):
    engine = one_language["en"]
    first = [(hit.passage_id, hit.score, hit.reread_score) for hit in engine.search("去机场的最后一班火车", k=3)]
    again = [(hit.passage_id, hit.score, hit.reread_score) for hit in engine.search("去机场的最后一班火车", k=3)]
    assert first == again


def test_the_token_budget_bounds_what_is_re_read(one_language):
    """Candidates are re-read best first while their word pieces (with the model's two special tokens) fit."""
    engine, query = one_language["en"], "最后一班火车"
    retrieval = engine.retrieve(engine.analyse(query), 10)
    fused = engine.rank(retrieval, config=SearchConfig(rerank_model=None))
    count = token_counter(CROSS_LINGUAL_RERANKER)
    first_two = sum(count(contextual_text(p)) + 2 for p in engine.passages.get_many([pid for pid, _ in fused[:2]]))
    with Engine.open(engine.folder.root, config=SearchConfig(rerank_tokens=first_two)) as bounded:
        hits = bounded.search(query, k=3, collapse=False).hits
        assert [hit.reread_score is not None for hit in hits] == [True, True, False]
        assert {hit.passage_id for hit in hits[:2]} == {pid for pid, _ in fused[:2]}  # the head re-ordered, the rest below it
    with Engine.open(engine.folder.root, config=SearchConfig(rerank_tokens=first_two // 2)) as starved:  # one passage: nothing to compare
        result = starved.search(query, k=3, collapse=False)
        assert result.reread_by is None and [hit.passage_id for hit in result.hits] == [pid for pid, _ in fused]


def test_a_reranker_that_cannot_load_leaves_the_fused_ranking_and_says_so(one_language, tmp_path):
    engine = one_language["en"]
    missing = str(tmp_path / "no-such-model")
    fused = [pid for pid, _ in engine.rank(engine.retrieve(engine.analyse("绿茶要泡多久"), 10), config=SearchConfig(rerank_model=None))]
    with Engine.open(engine.folder.root, config=SearchConfig(rerank_model=missing)) as broken:
        for _ in range(2):  # the second query does not try to load it again
            result = broken.search("绿茶要泡多久", k=3, collapse=False)
            assert [hit.passage_id for hit in result.hits] == fused and result.reread_by is None
            assert result.notice.startswith("note: results not re-read across languages") and "no-such-model" in result.notice


COLD_QUERY = """
import json, sys
from search.cli import cli
try:
    cli(["query", sys.argv[1], "--index", sys.argv[2], "-k", "2", "--json"], standalone_mode=False)
finally:
    print("HEAVY=" + ",".join(sorted(m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules)))
"""


def test_a_cold_query_across_languages_is_re_read_without_torch(one_language):
    """`search query` in a fresh process: the re-reading model runs on the int8 ONNX path too."""
    env = {key: value for key, value in os.environ.items() if key != "SEARCH_BACKEND"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", COLD_QUERY, "绿茶要泡多久", str(one_language["en"].folder.root)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    hits_json, heavy = done.stdout.rsplit("HEAVY=", 1)
    hits = json.loads(hits_json)
    assert hits[0]["path"].endswith("tea.md") and all(hit["reread_score"] is not None for hit in hits)
    assert heavy.strip() == ""


def test_reread_on_the_command_line(one_language):
    """--reread never keeps the fused ranking; always re-reads a query in the index's own language too."""
    from click.testing import CliRunner

    from search.cli import cli

    engine = one_language["en"]
    hits = {}
    for query, mode in (("绿茶要泡多久", "cross-lingual"), ("绿茶要泡多久", "never"), ("how long to brew green tea", "always"),
                        ("how long to brew green tea", "cross-lingual")):
        result = CliRunner().invoke(cli, ["query", query, "--index", str(engine.folder.root), "-k", "3", "--json", "--reread", mode])
        assert result.exit_code == 0, result.output
        hits[query, mode] = [hit["reread_score"] for hit in json.loads(result.output)]
    assert all(score is not None for score in hits["绿茶要泡多久", "cross-lingual"] + hits["how long to brew green tea", "always"])
    assert all(score is None for score in hits["绿茶要泡多久", "never"] + hits["how long to brew green tea", "cross-lingual"])
    result = CliRunner().invoke(cli, ["query", "tea", "--index", str(engine.folder.root), "--reread", "sometimes"])
    assert result.exit_code == 2 and "cross-lingual" in result.output


def test_always_re_reads_a_same_language_query_as_a_peer(one_language):
    """Under reread="always" a query no model had to translate is re-read too, with the lighter weight."""
    engine, query = one_language["zh"], "出门要带伞吗"
    retrieval = engine.retrieve(engine.analyse(query), 10)
    assert not retrieval.dense_translated
    fused = engine.rank(retrieval, config=SearchConfig(reread="never"))
    assert engine.rank(retrieval) == fused  # the default leaves it alone
    pids = [pid for pid, _ in fused]
    e5 = Encoder(CROSS_LINGUAL_RERANKER)
    cosines = e5.encode([contextual_text(p) for p in engine.passages.get_many(pids)]) @ e5.encode_query([query])[0]
    expected = mix_scores(cosines, np.array([score for _, score in fused]), SearchConfig().same_language_rerank_weight)
    always = engine.rank(retrieval, config=SearchConfig(reread="always"))
    assert [pid for pid, _ in always] == [pids[i] for i in np.lexsort((np.array(pids), -expected))]
    # the engine may hold vectors embedded in other batches by earlier tests: int8 activations are
    # quantised per batch, which moves z-scores by ~0.003 here
    np.testing.assert_allclose(sorted(score for _, score in always), sorted(expected), atol=0.02)
    with pytest.raises(ValueError, match="cross-lingual, always, never"):
        SearchConfig(reread="sometimes")


def test_prepare_makes_the_re_reader_ready_or_says_why_not(tmp_path):
    """`search prepare` (make install) exports e5 beside the default pair; a re-reader that cannot load
    is reported, not fatal, since queries then keep the fused ranking."""
    assert Engine.prepare_models()["rerank"] == Encoder(CROSS_LINGUAL_RERANKER).identity
    assert "rerank" not in Engine.prepare_models(CROSS_LINGUAL_RERANKER)  # the index's own model reads every language
    missing = Engine.prepare_models(config=SearchConfig(rerank_model=str(tmp_path / "no-such-model")))["rerank"]
    assert missing.startswith("not available:") and "no-such-model" in missing
