from collections import Counter

import numpy as np
import pytest
from rank_bm25 import BM25Plus

from search.index import bm25_segments, bm25_terms
from search.index.bm25_terms import TermStream, TermWriter
from search.index.bm25 import BM25Index, BM25Params
from search.text.tokenizing import tokenize

PASSAGES = [
    "序列并行沿序列维度切分输入，DeepSpeed-Ulysses 使用 all-to-all 通信交换注意力头。",
    "数据并行：每张卡保存完整模型副本，用 all-reduce 同步梯度。",
    "ZeRO-3 把参数、梯度和优化器状态都切分到各张卡上，显存占用随卡数下降。",
    "ZeRO-1 只切分优化器状态，ZeRO-2 再切分梯度。",
    "Megatron-LM 的张量并行把注意力和 MLP 的矩阵按列、按行切分。",
    "GPipe 用流水线并行，把 batch 切成 micro-batch 来减少气泡。",
    "GPT-4 的上下文长度是 8k 或 32k，GPT-3.5 是 4k。",
    "LLaMA-2 使用 RoPE 位置编码和 SwiGLU 激活函数。",
    "C++ 和 CUDA 写的 FlashAttention 内核把注意力计算分块放进 SRAM。",
    "番茄炒蛋：鸡蛋打散，番茄切块，先炒蛋再炒番茄。",
    "Steep green tea in water below boiling for two minutes so it does not turn bitter.",
    "Knead the dough for ten minutes, let it rise until doubled, then bake it.",
    "BM25 的 k1 控制词频饱和，b 控制文档长度归一化；Lucene 的 idf 不会为负。",
    "",  # a passage with no tokens at all
    "！？。，",  # punctuation only: also no tokens
    "all-to-all 通信在 NCCL 里的实现；all-reduce 等于 reduce-scatter 加 all-gather。",
]

QUERIES = [
    "序列并行",
    "all-to-all 通信",
    "all to all",
    "ZeRO-3 切分",
    "gpt-4 gpt-4 上下文",  # repeated tokens
    "并行 并行 并行",
    "番茄 炒蛋",
    "green tea",
    "注意力 flashattention c++",
    "量子纠缠 unknownword",  # unknown tokens only
    "序列并行 unknownword",  # known + unknown
]


@pytest.fixture(scope="module")
def corpus():
    return [tokenize(p) for p in PASSAGES]


def lucene_reference(corpus, query, k1, b):
    """Lucene BM25 written out with numpy (float64)."""
    n = len(corpus)
    dl = np.array([len(d) for d in corpus], dtype=float)
    avgdl = dl.mean()
    tfs = [Counter(d) for d in corpus]
    out = np.zeros(n)
    for q in query:
        tf = np.array([c.get(q, 0) for c in tfs], dtype=float)
        df = np.count_nonzero(tf)
        if df == 0:
            continue
        idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
        has = tf > 0  # (a token-less passage with b=1 would give 0/0 otherwise)
        out[has] += idf * tf[has] / (tf[has] + k1 * (1 - b + b * dl[has] / avgdl))
    return out


# rank_bm25.BM25L multiplies its BM25L term by the raw tf once more, so it is no reference for bm25s's "bm25l".


def test_corpus_is_realistic(corpus):
    assert corpus[13] == [] and corpus[14] == []
    assert "all-to-all" in corpus[0] and "zero-3" in corpus[2] and "c++" in corpus[8]


@pytest.mark.parametrize("k1, b", [(0.9, 0.4), (1.2, 0.75), (1.5, 1.0), (2.0, 0.0)])
def test_lucene_matches_direct_formula(corpus, k1, b):
    index = BM25Index.build(corpus, BM25Params(method="lucene", k1=k1, b=b))
    for text in QUERIES:
        q = tokenize(text)
        got = index.scores(q)
        assert got.shape == (len(PASSAGES),)
        np.testing.assert_allclose(got, lucene_reference(corpus, q, k1, b), rtol=0, atol=1e-6)


def test_default_params_are_lucene_and_used(corpus):
    assert BM25Params() == BM25Params(method="lucene", k1=0.9, b=0.4)
    index = BM25Index.build(corpus, BM25Params())
    assert index.params.method == "lucene" and index.params.k1 == 0.9 and index.params.b == 0.4
    assert index.n_passages == len(PASSAGES)
    q = tokenize("序列并行")
    np.testing.assert_allclose(BM25Index.build(corpus).scores(q), index.scores(q), rtol=0, atol=0)


@pytest.mark.parametrize("k1, b, delta", [(0.9, 0.4, 0.5), (1.5, 0.75, 1.0)])
def test_bm25plus_matches_rank_bm25(corpus, k1, b, delta):
    ours = BM25Index.build(corpus, BM25Params(method="bm25+", k1=k1, b=b, delta=delta))
    ref = BM25Plus(corpus, k1=k1, b=b, delta=delta)
    for text in QUERIES:
        q = tokenize(text)
        assert np.abs(ours.scores(q) - ref.get_scores(q)).max() <= 1e-6, text


def test_repeated_query_tokens_count_every_time_like_rank_bm25(corpus):
    index = BM25Index.build(corpus)
    once = index.scores(["并行"])
    assert once.max() > 0
    np.testing.assert_allclose(index.scores(["并行", "并行", "并行"]), 3 * once, rtol=0, atol=1e-12)
    plus = BM25Index.build(corpus, BM25Params(method="bm25+", k1=0.9, b=0.4, delta=0.5))
    ref = BM25Plus(corpus, k1=0.9, b=0.4, delta=0.5)
    q = ["gpt-4", "gpt-4", "上下文"]
    assert np.abs(plus.scores(q) - ref.get_scores(q)).max() <= 1e-6
    assert np.abs(plus.scores(q) - plus.scores(["gpt-4", "上下文"])).max() > 0.1


def test_unknown_and_empty_queries_give_zeros(corpus):
    index = BM25Index.build(corpus)
    for q in ([], ["unknownword"], ["", "量子纠缠"]):
        got = index.scores(q)
        assert got.shape == (len(PASSAGES),) and not got.any()
        assert len(index.top_k(q, 5)[0]) == 0
    np.testing.assert_array_equal(index.scores(["序列", "unknownword"]), index.scores(["序列"]))
    assert index.scores(["序列"])[0] > 0


def test_zero_score_where_no_term_matches(corpus):
    index = BM25Index.build(corpus)
    s = index.scores(tokenize("番茄"))
    assert s[9] > 0 and np.count_nonzero(s) == 1
    assert index.scores(tokenize("并行"))[[13, 14]].tolist() == [0.0, 0.0]  # token-less passages


def brute_force_top_k(scores, k, allowed=None):
    ids = [i for i in range(len(scores)) if scores[i] > 0 and (allowed is None or allowed[i])]
    ids.sort(key=lambda i: (-scores[i], i))
    return ids[:k]


def test_top_k_order_and_cut(corpus):
    index = BM25Index.build(corpus)
    for text in QUERIES:
        q = tokenize(text)
        scores = index.scores(q)
        for k in (1, 2, 3, 100):
            ids, top = index.top_k(q, k)
            assert ids.dtype == np.int64
            assert ids.tolist() == brute_force_top_k(scores, k)
            np.testing.assert_array_equal(top, scores[ids])
            assert np.all(np.diff(top) <= 0) and np.all(top > 0)
    ids, _ = index.top_k(tokenize("ZeRO-3 切分"), 1)
    assert ids.tolist() == [2]
    assert index.top_k(tokenize("序列并行"), 0)[0].size == 0


def test_allowed_mask_applies_before_the_cut(corpus):
    index = BM25Index.build(corpus)
    q = tokenize("并行 切分 all-to-all 通信")
    scores = index.scores(q)
    matching = np.flatnonzero(scores > 0)
    assert len(matching) >= 6
    best = brute_force_top_k(scores, 3)
    allowed = np.ones(len(PASSAGES), dtype=bool)
    allowed[best] = False  # hide the three best: a mask applied after the cut would leave nothing
    ids, top = index.top_k(q, 3, allowed=allowed)
    assert len(ids) == 3 and not set(ids.tolist()) & set(best)
    assert ids.tolist() == brute_force_top_k(scores, 3, allowed)
    # fewer allowed matches than k: all of them, and only them
    allowed = np.zeros(len(PASSAGES), dtype=bool)
    allowed[[matching[-1], 10, 13]] = True
    assert index.top_k(q, 5, allowed=allowed)[0].tolist() == [matching[-1]]
    with pytest.raises(ValueError):
        index.top_k(q, 3, allowed=np.ones(3, dtype=bool))


def test_ties_are_broken_by_lower_id():
    index = BM25Index.build([["a", "b"], ["c"], ["a", "b"], ["a", "b"], ["a", "b"], ["d"]])
    ids, scores = index.top_k(["a"], 2)
    assert ids.tolist() == [0, 2] and scores[0] == scores[1]
    assert index.top_k(["a"], 10)[0].tolist() == [0, 2, 3, 4]


def test_top_k_bm25plus_keeps_only_matching_passages(corpus):
    index = BM25Index.build(corpus, BM25Params(method="bm25+", k1=0.9, b=0.4, delta=0.5))
    q = tokenize("番茄")
    assert (index.scores(q) > 0).all()  # the non-occurrence term lifts every passage...
    assert index.top_k(q, 5)[0].tolist() == [9]  # ...but only a passage with the term is a hit


@pytest.mark.parametrize("method", ["lucene", "bm25+"])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(corpus, tmp_path, method, mmap):
    index = BM25Index.build(corpus, BM25Params(method=method, k1=1.2, b=0.6, delta=0.7))
    index.save(tmp_path / "bm25")
    loaded = BM25Index.load(tmp_path / "bm25", mmap=mmap)
    assert loaded.n_passages == index.n_passages and loaded.params == index.params
    for text in QUERIES:
        q = tokenize(text)
        np.testing.assert_array_equal(loaded.scores(q), index.scores(q))
        for a, b in zip(loaded.top_k(q, 4), index.top_k(q, 4)):
            np.testing.assert_array_equal(a, b)


def test_load_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        BM25Index.load(tmp_path / "nothing")


def test_empty_corpus(tmp_path):
    index = BM25Index.build([])
    assert index.n_passages == 0 and len(index) == 0
    assert index.scores(["a"]).shape == (0,) and index.scores([]).shape == (0,)
    ids, scores = index.top_k(["a"], 5)
    assert ids.shape == (0,) and scores.shape == (0,)
    index.save(tmp_path / "e")
    loaded = BM25Index.load(tmp_path / "e")
    assert loaded.n_passages == 0 and loaded.scores(["a"]).shape == (0,)


def test_corpus_without_any_token(tmp_path):
    index = BM25Index.build([[], tokenize("。！"), []])
    assert index.n_passages == 3
    assert index.scores(["a"]).tolist() == [0.0, 0.0, 0.0]
    assert index.top_k(["a"], 2)[0].size == 0
    index.save(tmp_path / "z")
    assert BM25Index.load(tmp_path / "z").scores(["a"]).tolist() == [0.0, 0.0, 0.0]


def test_rejects_strings_instead_of_token_lists():
    with pytest.raises(TypeError):
        BM25Index.build(["not tokenised"])
    index = BM25Index.build([["a"]])
    with pytest.raises(TypeError):
        index.scores("a")
    with pytest.raises(ValueError):
        BM25Index.build([["a"]], BM25Params(method="okapi"))


@pytest.mark.parametrize("method", ["lucene", "bm25+", "robertson"])
def test_three_segments_score_exactly_like_one(corpus, tmp_path, method, monkeypatch):
    monkeypatch.setattr(bm25_terms, "_BUFFER_TOKENS", 7)  # the writer counts postings a few passages at a time
    monkeypatch.setattr(bm25_segments, "_SCORE_POSTINGS", 5)  # and a segment is scored a few passages at a time
    one = BM25Index.build(corpus, BM25Params(method=method))
    three = BM25Index.build(corpus, BM25Params(method=method), segment_passages=6)
    assert (one.n_segments, three.n_segments) == (1, 3)
    writer = TermWriter(tmp_path / "s")
    for doc in corpus:
        writer.add(doc)
    streamed = BM25Index.build_from_terms(writer.close(), tmp_path / "s", BM25Params(method=method), segment_passages=6)
    assert streamed.n_segments == 3 and BM25Index.load(tmp_path / "s").n_segments == 3
    for text in QUERIES:
        q = tokenize(text)
        np.testing.assert_array_equal(three.scores(q), one.scores(q))  # bit for bit: global statistics
        np.testing.assert_array_equal(streamed.scores(q), one.scores(q))
        for a, b in zip(three.top_k(q, 4), one.top_k(q, 4)):
            np.testing.assert_array_equal(a, b)


def test_a_segment_of_passages_without_tokens_is_written_and_read(tmp_path):
    corpus = [["gpu", "显存"], [], [], ["显存"], ["gpu"]]  # one passage a segment: two of them hold no postings
    writer = TermWriter(tmp_path / "s")
    for doc in corpus:
        writer.add(doc)
    streamed = BM25Index.build_from_terms(writer.close(), tmp_path / "s", segment_passages=1)
    loaded = BM25Index.load(tmp_path / "s")
    assert loaded.n_segments == 5
    one = BM25Index.build(corpus)
    for query in (["gpu"], ["显存"], ["gpu", "显存"]):
        np.testing.assert_array_equal(streamed.scores(query), one.scores(query))
        np.testing.assert_array_equal(loaded.scores(query), one.scores(query))


def test_segments_cut_by_postings_count_too(corpus):
    index = BM25Index.build(corpus, segment_postings=30)
    assert index.n_segments > 3
    q = tokenize("all-to-all 通信 序列并行")
    np.testing.assert_array_equal(index.scores(q), BM25Index.build(corpus).scores(q))


@pytest.mark.parametrize("method", ["lucene", "robertson", "atire", "bm25l", "bm25+"])
def test_our_formulas_score_like_bm25s(corpus, method):
    import bm25s

    model = bm25s.BM25(method=method, k1=1.2, b=0.6, delta=0.7, dtype="float64", int_dtype="int32")
    model.index(corpus, create_empty_token=False, show_progress=False)
    ours = BM25Index.build(corpus, BM25Params(method=method, k1=1.2, b=0.6, delta=0.7))
    for text in QUERIES:
        q = [t for t in tokenize(text) if t in ours._vocab]  # bm25s wants known tokens only
        if q:
            np.testing.assert_allclose(ours.scores(q), model.get_scores(q), rtol=0, atol=1e-12)


def test_an_index_of_another_format_is_refused(corpus, tmp_path):
    import json

    BM25Index.build(corpus).save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "bm25_index.json").read_text())
    (tmp_path / "old" / "bm25_index.json").write_text(json.dumps({**meta, "format": 1}))
    with pytest.raises(ValueError, match="rebuild"):
        BM25Index.load(tmp_path / "old")


def test_an_incremental_stream_copies_postings_and_numbers_afresh_when_mostly_unused(tmp_path):
    first = TermWriter(tmp_path / "a")
    for doc in (["a", "b"], ["c", "d"], ["e", "f"], ["g"]):
        first.add(doc)
    BM25Index.build_from_terms(first.close(), tmp_path / "a")
    second = TermWriter(tmp_path / "b", TermStream.open(tmp_path / "a"))
    assert second.add_block(0, 1)  # ["a", "b"], as ids
    second.add(["a", "z"])
    index = BM25Index.build_from_terms(second.close(), tmp_path / "b")
    assert index.vocab_size == 3  # c, d, e, f, g held by no passage: five of eight, numbered afresh
    reference = BM25Index.build([["a", "b"], ["a", "z"]])
    for query in (["a"], ["b", "z"], ["z", "z", "c"]):
        np.testing.assert_array_equal(index.scores(query), reference.scores(query))
    reopened = TermStream.open(tmp_path / "b")
    assert reopened.vocab == {"a": 0, "b": 1, "z": 2} and reopened.terms.tolist() == [0, 1, 0, 2]
    assert reopened.counts.tolist() == [1, 1, 1, 1] and reopened.distinct.tolist() == [2, 2]
    third = TermWriter(tmp_path / "c", reopened)
    assert third.add_block(1, 1)
    third.add(["b"])
    np.testing.assert_array_equal(BM25Index.build_from_terms(third.close(), tmp_path / "c").scores(["b", "z"]),
                                  BM25Index.build([["a", "z"], ["b"]]).scores(["b", "z"]))


@pytest.mark.parametrize("method", ["lucene", "bm25+"])
def test_scores_at_some_passages_equal_the_full_scores_there(corpus, tmp_path, method):
    """Hybrid fusion scores only its candidates: the same floats as the whole score vector, over
    segments, in any order, with repeats, for passages that hold no query term and for none at all."""
    index = BM25Index.build(corpus, BM25Params(method=method), segment_passages=6)
    writer = TermWriter(tmp_path / "s")
    for doc in corpus:
        writer.add(doc)
    BM25Index.build_from_terms(writer.close(), tmp_path / "s", BM25Params(method=method), segment_passages=6)
    loaded = BM25Index.load(tmp_path / "s")  # memory-mapped columns
    rng = np.random.default_rng(0)
    picks = [np.arange(len(corpus)), rng.permutation(len(corpus)), np.array([15, 0, 15, 6, 13]), np.array([], dtype=np.int64)]
    for text in QUERIES:
        q = tokenize(text)
        full = index.scores(q)
        assert full.any() or text.startswith("量子")
        for pids in picks:
            for source in (index, loaded):
                np.testing.assert_array_equal(source.scores_at(q, pids), full[pids])


# ----- each passage's window: itself and its neighbours in the same document ------------------------

def _window_tokens(corpus, starts):
    """Each passage's window written out: its tokens with those of its neighbours in its document."""
    windows = []
    for i, tokens in enumerate(corpus):
        before = corpus[i - 1] if i > 0 and not starts[i] else []
        after = corpus[i + 1] if i + 1 < len(corpus) and not starts[i + 1] else []
        windows.append(list(before) + list(tokens) + list(after))
    return windows


STARTS = np.array([True, False, False, True, False, True, True, False, False, False, True, True, True, False, False, True])


@pytest.mark.parametrize("method", ["lucene", "robertson", "atire"])
@pytest.mark.parametrize("search_cost", [0, 10**9], ids=["searched", "read through marks"])
def test_a_window_scores_as_an_index_of_the_windows_themselves(corpus, tmp_path, method, search_cost, monkeypatch):
    """passage + λ·window, where the window's score is the one an index whose passages were the
    windows would give (their own document frequencies and mean length), over segments, in memory
    and streamed from disk, whichever way the windows' counts are read."""
    from search.index import bm25_window

    monkeypatch.setattr(bm25_window, "_SEARCH_COST", search_cost)
    params = BM25Params(method=method, window=0.7)
    plain = BM25Index.build(corpus, BM25Params(method=method, window=0))
    windows = BM25Index.build(_window_tokens(corpus, STARTS), BM25Params(method=method, window=0))
    built = BM25Index.build(corpus, params, segment_passages=6, document_starts=STARTS)
    writer = TermWriter(tmp_path / "s")
    for doc in corpus:
        writer.add(doc)
    BM25Index.build_from_terms(writer.close(), tmp_path / "s", params, segment_passages=5)
    loaded = BM25Index.load(tmp_path / "s", document_starts=STARTS)
    assert built.windows is not None and loaded.windows is not None and loaded.n_segments == 4
    for text in QUERIES:
        q = tokenize(text)
        want = plain.scores(q) + 0.7 * windows.scores(q)
        for index in (built, loaded):
            np.testing.assert_allclose(index.scores(q), want, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(index.scores_at(q, np.array([15, 0, 4, 4])), want[[15, 0, 4, 4]], rtol=1e-12, atol=1e-12)
        (ids, scores), known = built.top_k_and_scores(q, 5)
        assert ids.tolist() == [int(i) for i in np.lexsort((np.arange(len(want)), -want))[: len(ids)]]
        np.testing.assert_allclose(scores, want[ids], rtol=1e-12, atol=1e-12)
        everyone = np.arange(len(corpus))  # what the top k scored is read, the rest scored: the same either way
        np.testing.assert_array_equal(built.scores_at(q, everyone, known), built.scores_at(q, everyone))
        allowed = (np.cumsum(STARTS) - 1) % 2 == 0  # a filter (whole documents, as filters allow) before the cut
        expected = [i for i in np.lexsort((np.arange(len(want)), -want)).tolist() if allowed[i] and want[i] > 0][:4]
        assert built.top_k(q, 4, allowed)[0].tolist() == expected
    q = tokenize("序列 输入")  # only passage 0 holds them: its neighbour 1 gains, 2 (beyond 1) does not
    assert plain.scores(q)[[1, 2]].tolist() == [0, 0] and built.scores(q)[0] > built.scores(q)[1] > 0 == built.scores(q)[2]


def test_bm25plus_windows_rank_as_the_windows_index_does(corpus):
    """bm25+ adds a non-occurrence term to every window; that constant cannot move one passage above another."""
    plain = BM25Index.build(corpus, BM25Params(method="bm25+", window=0))
    windows = BM25Index.build(_window_tokens(corpus, STARTS), BM25Params(method="bm25+", window=0))
    built = BM25Index.build(corpus, BM25Params(method="bm25+", window=1.0), document_starts=STARTS)
    for text in QUERIES[:-2]:
        q = tokenize(text)
        difference = built.scores(q) - (plain.scores(q) + windows.scores(q))
        np.testing.assert_allclose(difference, difference[0], atol=1e-9)


def test_without_documents_or_term_counts_passages_score_alone(corpus, tmp_path):
    """No window without knowing where documents start, with weight 0, or over segments written before
    the term counts were (an index of an older build scores as it did until it is built again)."""
    plain = BM25Index.build(corpus, BM25Params(window=0))
    writer = TermWriter(tmp_path / "s")
    for doc in corpus:
        writer.add(doc)
    BM25Index.build_from_terms(writer.close(), tmp_path / "s", segment_passages=6)
    assert BM25Index.load(tmp_path / "s", document_starts=STARTS).windows is not None
    for path in (tmp_path / "s").glob("seg-0001.counts.npy"):
        path.unlink()
    older = BM25Index.load(tmp_path / "s", document_starts=STARTS)
    others = (BM25Index.build(corpus), BM25Index.build(corpus, BM25Params(window=0), document_starts=STARTS), older)
    assert all(index.windows is None for index in others)
    for text in QUERIES:
        q = tokenize(text)
        for index in others:
            np.testing.assert_array_equal(index.scores(q), plain.scores(q))


def test_window_weight_must_not_be_negative():
    with pytest.raises(ValueError, match="window"):
        BM25Params(window=-1)
    assert BM25Params.recorded({"method": "lucene", "k1": 0.9, "b": 0.4, "delta": 0.5}).window == 0.0  # written before windows
