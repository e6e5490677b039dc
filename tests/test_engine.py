"""The library API end to end with the real bundled models on a tiny corpus."""

import dataclasses
import json

import numpy as np
import pytest

from search import Engine, SearchError
from search.errors import IncompatibleIndex, IndexNotFound
from search.index.backend import Selection

from conftest import write_notes


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    notes = write_notes(root / "notes")
    engine, summary = Engine.build([notes], root / "index")
    yield engine, notes, root, summary
    engine.close()


def test_build_summary_and_models(built):
    engine, _, _, summary = built
    assert summary.files_added == 3 and summary.files_changed == 0
    assert summary.passages == summary.passages_embedded > 0
    models = engine.stats()["models"]
    assert models["zh"]["name"] == "m3e-small" and models["zh"]["dim"] == 512
    assert models["en"]["name"] == "all-MiniLM-L6-v2" and models["en"]["dim"] == 384
    assert models["zh"]["passages"] > 0 and models["en"]["passages"] > 0
    stages = summary.stage_seconds
    assert set(stages) == {"load", "chunk", "tokenize", "embed", "bm25", "dense", "write"}
    assert all(t >= 0 for t in stages.values()) and sum(stages.values()) <= summary.seconds + 0.01


def test_hybrid_hit_carries_all_fields(built):
    engine, notes, _, _ = built
    hits = engine.search("序列并行", k=3)
    top = hits[0]
    assert top.path == str(notes / "并行.md")
    assert top.heading_path == ["并行训练", "序列并行"]
    assert "all-to-all" in top.text
    assert (top.line_start, top.line_end) == (10, 10)
    assert top.metadata["tags"] == ["机器学习"]
    assert top.bm25_rank == 1 and top.bm25_score > 0
    assert top.dense_rank is not None and -1 <= top.dense_score <= 1
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_modes(built):
    engine, notes, _, _ = built
    bm25 = engine.search("zero-3", k=5, mode="bm25")
    assert bm25 and "ZeRO-3" in bm25[0].text and all(h.dense_rank is None for h in bm25)
    dense = engine.search("how long should I brew green tea", k=2, mode="dense")
    assert "tea" in dense[0].text and all(h.bm25_rank is None for h in dense)
    assert dense[0].score == dense[0].dense_score
    with pytest.raises(SearchError):
        engine.search("x", mode="fuzzy")
    with pytest.raises(SearchError):
        engine.search("   ")


def test_hybrid_lets_dense_decide_when_bm25_best_two_nearly_tie(built):
    import numpy as np

    from search import SearchConfig
    from search.query.candidates import Retrieval

    engine = built[0]
    # BM25 puts passage 1 first by 2%, dense puts passage 2 first by a hair
    bm25 = (np.array([1, 2, 3, 4]), np.array([10.0, 9.8, 2.0, 1.0]))
    dense = (np.array([2, 1, 4, 3]), np.array([0.80, 0.795, 0.5, 0.4]))
    retrieval = Retrieval(bm25, dense, cosines=dict(zip(dense[0].tolist(), dense[1].tolist())),
                          bm25_scores=dict(zip(bm25[0].tolist(), bm25[1].tolist())))
    assert [pid for pid, _ in engine.rank(retrieval)][:2] == [2, 1]  # BM25's near-tie counts half
    whole = SearchConfig(bm25_tie_floor=1.0)
    assert [pid for pid, _ in engine.rank(retrieval, config=whole)][:2] == [1, 2]
    clear = Retrieval((bm25[0], np.array([10.0, 9.0, 2.0, 1.0])), dense, cosines=retrieval.cosines,
                      bm25_scores=dict(zip(bm25[0].tolist(), [10.0, 9.0, 2.0, 1.0])))
    assert engine.rank(clear) == engine.rank(clear, config=whole)  # a 10% lead keeps the whole weight
    # passages 1 and 2 of one document (their windows share words): its lead over the next document is clear
    one_document = dataclasses.replace(retrieval, bm25_leads=np.array([10.0, 2.0, 1.0]))
    assert engine.rank(one_document) == engine.rank(one_document, config=whole) != engine.rank(retrieval)


def test_a_passage_window_spans_its_document_never_the_next_record(tmp_path):
    """A note cut into passages: a query word of one passage lifts its neighbour in the note (BM25's
    window field). Records of one file are documents of their own: they never lift each other."""
    from search import BuildConfig

    def texts(filler: str) -> tuple[str, str]:
        return "alpha " + " ".join(f"{filler}{i}" for i in range(12)), "beta " + " ".join(f"{filler}{i}" for i in range(12, 24))

    first, second = texts("river")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "note.md").write_text(f"# Note\n\n{first}\n\n{second}\n", encoding="utf-8")
    records = [json.dumps({"text": text}) for text in texts("cloud")]
    (notes / "records.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    config = BuildConfig(keyword_only=True, max_tokens=40, overlap_tokens=0)
    with Engine.build([notes], tmp_path / "index", build_config=config)[0] as engine:
        assert [passage.text.split()[0] for passage in engine.passages] == ["alpha", "beta"] * 2  # a passage a paragraph, a record
        found = [(hit.path.rsplit("/", 1)[1], hit.text.split()[0]) for hit in engine.search("alpha", k=10, mode="bm25")]
        assert ("note.md", "beta") in found and found[-1] == ("note.md", "beta")  # below both passages holding the word
        assert ("records.jsonl", "beta") not in found and len(found) == 3


def test_english_paraphrase_found_by_english_model(built):
    engine, _, _, _ = built
    hits = engine.search("making a loaf at home", k=1, mode="dense")
    assert "dough" in hits[0].text


def test_open_with_other_model_is_refused(built):
    _, _, root, _ = built
    with pytest.raises(IncompatibleIndex, match="m3e-small.*some-other/model|some-other/model"):
        Engine.open(root / "index", model="some-other/model")
    with pytest.raises(IndexNotFound, match="search index"):
        Engine.open(root / "missing")


def test_incremental_build_reuses_unchanged_work(built, tmp_path):
    _, _, root, _ = built
    notes = write_notes(tmp_path / "notes")
    index = tmp_path / "index"
    first = Engine.build([notes], index)[1]
    again = Engine.build([notes], index)[1]
    assert again.files_unchanged == 3 and again.passages_embedded == 0
    assert again.passages_reused == first.passages

    path = notes / "cooking.md"
    path.write_text(path.read_text().replace("two minutes", "three minutes"), encoding="utf-8")
    (notes / "菜谱.txt").unlink()
    (notes / "new.md").write_text("# Coffee\n\nGrind the beans just before brewing.\n", encoding="utf-8")
    changed, changed_summary = Engine.build([notes], index)
    s = changed_summary
    assert (s.files_added, s.files_changed, s.files_removed, s.files_unchanged) == (1, 1, 1, 1)
    assert s.passages_embedded == 2  # the edited tea paragraph and the new note
    assert changed.search("three minutes", k=1, mode="bm25")[0].path == str(path)
    assert not any("番茄" in h.text for h in changed.search("番茄炒蛋", k=5))

    rebuilt = Engine.build([notes], index, rebuild=True)[1]
    assert rebuilt.passages_embedded == rebuilt.passages and rebuilt.files_added == 3


def test_seeds_sequence_parallelism_first(seeds_dir, tmp_path_factory):
    index = tmp_path_factory.mktemp("seeds") / "index"
    engine, engine_summary = Engine.build([seeds_dir], index)
    top = engine.search("序列并行", k=5)[0]
    assert top.path.endswith("002_42593514c2d838f2.txt")
    assert "序列并行" in top.text and "序列维度" in top.text
    assert top.line_start <= 375 <= top.line_end


def test_query_is_embedded_only_in_the_spaces_that_read_its_languages(built):
    engine, _, _, _ = built
    assert set(engine.backend.dense) == {"zh", "en"}  # no space is searched with a translation: cross_lingual is off
    spaces = lambda query, depth=1: sorted(engine.retriever._spaces_to_search(engine.analyse(query), depth, None))
    assert spaces("序列并行") == ["zh"]
    assert spaces("how do I merge results") == ["en"]
    assert spaces("注意力机制 transformer") == ["en", "zh"]
    assert spaces("2024") == ["en", "zh"]  # no language: every space
    assert spaces("序列并行", depth=len(engine.passages)) == ["en", "zh"]  # too few Chinese passages to fill it
    only_english = np.zeros(len(engine.passages), dtype=bool)
    only_english[engine.backend.dense["en"].ids] = True
    assert sorted(engine.retriever._spaces_to_search(engine.analyse("序列并行"), 1, Selection(only_english))) == ["en"]  # a filter left no Chinese
    retrieval = engine.retrieve(engine.analyse("序列并行"), 1)
    english = {pid for pid in engine.backend.dense["en"].ids.tolist()}
    assert not english & set(retrieval.dense[0].tolist())
    # a BM25 candidate from a space the query skipped is fused with the lowest cosine seen
    outsider = min(english)
    retrieval = dataclasses.replace(retrieval, bm25=(np.append(retrieval.bm25[0], outsider), np.append(retrieval.bm25[1], 0.0)),
                                    bm25_scores={**retrieval.bm25_scores, outsider: 0.0})
    assert outsider not in retrieval.cosines
    ranked = dict(engine.rank(retrieval))
    assert outsider in ranked and ranked[outsider] == min(ranked.values())


def test_a_space_searched_only_to_fill_the_depth_does_not_bring_its_cosine_scale(built):
    engine = built[0]  # cross_lingual off: no space is searched with a translation
    query = "how long should I brew green tea"
    # the tiny English space holds fewer passages than the depth, so the Chinese one joins, and
    # M3E-small's cosines for an English query run far above MiniLM's
    assert sorted(engine.retriever._spaces_to_search(engine.analyse(query), 100, None)) == ["en", "zh"]
    retrieval = engine.retrieve(engine.analyse(query), 100)
    chinese, english = set(engine.backend.dense["zh"].ids.tolist()), set(engine.backend.dense["en"].ids.tolist())
    assert retrieval.foreign and retrieval.foreign <= chinese
    column = engine.policy.dense_column(retrieval)
    floor = min(column[pid] for pid in english & column.keys())
    assert all(column[pid] == floor for pid in retrieval.foreign)
    hits = engine.search(query, k=3)
    assert "tea" in hits[0].text
    # both English passages before any Chinese one (M3E's raw cosines put 番茄炒蛋 second)
    assert {hit.passage_id for hit in hits[:2]} == english


def test_a_space_of_the_other_language_is_searched_with_the_query_translated(built):
    from search import SearchConfig

    with Engine.open(built[2] / "index", config=SearchConfig(cross_lingual=True)) as engine:
        retrieval = engine.retrieve(engine.analyse("how long should I brew green tea"), 100)
        chinese = set(engine.backend.dense["zh"].ids.tolist())
        # M3E-small reads the dictionary's Chinese words, so its cosines count, standardised apart
        assert not retrieval.foreign and retrieval.translated == chinese & set(retrieval.cosines)
        hits = engine.search("how long should I brew green tea", k=1)
        assert "tea" in hits[0].text


def test_bm25_scores_of_candidates_are_those_of_their_own_query(built):
    """The backend keeps each thread's last BM25 score vector for the fusion step that follows: the
    scores it gives are the query's own, whichever query ran last in this or another thread."""
    import threading

    engine = built[0]
    backend, index = engine.backend, engine.backend.bm25
    first, other = list(engine.analyse("序列并行 all-to-all").tokens), list(engine.analyse("green tea").tokens)
    pids = np.arange(len(engine.passages))[::-1].copy()
    backend.bm25_top(first, 3, None)
    np.testing.assert_array_equal(backend.bm25_scores(first, pids), index.scores(first)[pids])
    np.testing.assert_array_equal(backend.bm25_scores(other, pids), index.scores(other)[pids])
    elsewhere = threading.Thread(target=backend.bm25_top, args=(other, 3, None))
    elsewhere.start()
    elsewhere.join()
    np.testing.assert_array_equal(backend.bm25_scores(first, pids), index.scores(first)[pids])
    assert index.scores(first)[pids].any() and not np.array_equal(index.scores(first), index.scores(other))


def test_a_query_asked_again_with_another_mode_or_filter_is_embedded_once(built):
    from search import Filters

    engine, notes, root, _ = built
    calls = []
    encoder = engine.retriever.encoders["zh"]
    original = encoder.encode_query

    def counting(texts, *args, **kwargs):
        calls.append(list(texts))
        return original(texts, *args, **kwargs)

    encoder.encode_query = counting
    try:
        text = "流水线并行的气泡怎么减少"
        first = engine.search(text, k=3)
        dense = engine.search(text, k=2, mode="dense")
        filtered = engine.search(text, k=3, filters=Filters(tags=["机器学习"]))
        assert calls == [[text]]
        assert first[0].dense_score is not None and filtered and dense
        with Engine.open(root / "index") as fresh:  # the same answers as from a vector just embedded
            assert [h.to_dict() for h in fresh.search(text, k=2, mode="dense")] == [h.to_dict() for h in dense]
        engine.search("另一个问题", k=1, mode="dense")
        assert calls == [[text], ["另一个问题"]]
        engine.retriever.forget_query_vectors()  # what benchmarks/speed.py does between modes
        engine.search(text, k=3)
        assert calls == [[text], ["另一个问题"], [text]]
    finally:
        del encoder.encode_query
