"""The hub rule (search.query.hubness): candidates near many other candidates lose part of their
cosine when the dense list's best is such a hub."""

from dataclasses import replace

import numpy as np
import pytest

from search import Engine, SearchConfig
from search.query.candidates import Retrieval
from search.query.fusion import Hybrid
from search.query.hubness import Hubs, neighbour_closeness


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_closeness_and_occurrences_match_a_full_sort():
    vectors = unit(np.random.default_rng(3).standard_normal((60, 16)))
    closeness, occurrences = neighbour_closeness(vectors, 5)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1)[:, :5]
    np.testing.assert_allclose(closeness, np.take_along_axis(similarity, nearest, axis=1).mean(axis=1), rtol=1e-6)
    assert occurrences.tolist() == np.bincount(nearest.ravel(), minlength=60).tolist()
    assert occurrences.sum() == 60 * 5  # each counts its 5 nearest: they average 5
    # a text indexed twice: each copy is the other's nearest, and the copies are counted alike
    before = closeness[0]
    closeness, occurrences = neighbour_closeness(np.vstack([vectors, vectors[:1]]), 5)
    assert closeness[0] == closeness[60] > before and occurrences[0] == occurrences[60] >= 1
    assert occurrences.sum() >= 61 * 5  # where the copies tie at a point's 5th place, it counts both


def test_a_point_near_everything_is_the_hub():
    """Twenty directions far from each other and one between all of them: the one between is every
    other point's nearest, so it is counted by all and is the closest to its neighbours."""
    # twenty points, each sharing a little of the common direction (jittered: no exact ties)
    spread = np.eye(20) + 0.2 + 0.01 * np.random.default_rng(5).random((20, 20))
    between = np.ones((1, 20))  # the common direction itself
    vectors = unit(np.vstack([spread, between]))
    closeness, occurrences = neighbour_closeness(vectors, 3)
    assert occurrences[20] == 20 and occurrences[:20].max() < 20
    assert closeness.argmax() == 20
    hubs = Hubs.among(np.arange(100, 121), vectors, 3)
    assert hubs.is_hub(120) and not hubs.is_hub(100 + int(occurrences.argmin()))
    assert neighbour_closeness(vectors[:1], 3)[1].tolist() == [0]  # no other point: no neighbourhood


def a_retrieval(hub_counted_by: int, with_hubs: bool = True) -> Retrieval:
    """Passage 1 is dense's best by a little and a hub among the candidates; 2 is no hub. BM25 found
    neither first, so the dense side decides between them."""
    bm25 = (np.array([3, 1, 2, 4]), np.array([5.0, 3.0, 3.0, 1.0]))
    dense = (np.array([1, 2, 3, 4]), np.array([0.90, 0.88, 0.50, 0.40]))
    hubs = Hubs({1: 0.80, 2: 0.30, 3: 0.30, 4: 0.30}, {1: hub_counted_by, 2: 2, 3: 2, 4: 2}, neighbours=3) if with_hubs else None
    return Retrieval(bm25, dense, dict(zip(*map(np.ndarray.tolist, bm25))), dict(zip(*map(np.ndarray.tolist, dense))), hubs=hubs)


def test_dense_best_that_is_a_hub_loses_its_closeness_times_the_penalty():
    policy = Hybrid(SearchConfig(hub_penalty=0.3))
    column = policy.dense_column(a_retrieval(hub_counted_by=6))
    assert column[1] == pytest.approx(0.90 - 0.3 * 0.80) and column[2] == pytest.approx(0.88 - 0.3 * 0.30)
    ranked = [pid for pid, _ in policy.rank(a_retrieval(hub_counted_by=6), "hybrid")]
    assert ranked.index(2) < ranked.index(1)
    # a cosine of a passage that is no candidate (a second space's list, cut when the spaces merged)
    # was never measured, and needs not be
    retrieval = a_retrieval(hub_counted_by=6)
    cut = replace(retrieval, cosines={**retrieval.cosines, 9: 0.95})
    assert policy.dense_column(cut)[1] == pytest.approx(0.90 - 0.3 * 0.80)


@pytest.mark.parametrize("retrieval, config", [
    (a_retrieval(hub_counted_by=3), SearchConfig()),  # dense's best counted as often as the average: no hub
    (a_retrieval(hub_counted_by=6), SearchConfig(hub_penalty=0.0)),  # the rule off
    (a_retrieval(hub_counted_by=6, with_hubs=False), SearchConfig()),  # not measured (too few candidates)
])
def test_cosines_stay_as_they_are_unless_the_dense_best_is_a_hub(retrieval, config):
    policy = Hybrid(config)
    assert policy.dense_column(retrieval) == retrieval.cosines
    ranked = [pid for pid, _ in policy.rank(retrieval, "hybrid")]
    assert ranked.index(1) < ranked.index(2)


def test_a_candidate_left_unmeasured_leaves_every_cosine_alone():
    """A space that reads the query but held too few candidates has no closeness: penalising only the
    other space's candidates would favour it, so nobody is penalised."""
    retrieval = a_retrieval(hub_counted_by=6)
    partial = replace(retrieval, hubs=Hubs({pid: c for pid, c in retrieval.hubs.closeness.items() if pid != 4}, retrieval.hubs.occurrences, 3))
    assert Hybrid(SearchConfig()).dense_column(partial) == retrieval.cosines


UTTERANCES = [
    "你在干什么呢", "你现在在做什么", "今天天气怎么样", "明天会下雨吗", "给我讲个笑话", "再讲一个笑话吧", "我想听歌",
    "播放周杰伦的歌", "打开蓝牙", "关闭蓝牙", "手机为什么充不上电", "电池不耐用怎么办", "设个明天早上七点的闹钟",
    "取消所有闹钟", "你喜欢吃什么", "我饿了", "附近有什么好吃的", "你是机器人吗", "你叫什么名字", "你几岁了",
    "我睡不着", "晚安", "早上好", "我今天好累", "帮我打电话给妈妈", "发短信给小王", "导航去火车站", "这里离机场多远",
    "一加一等于几", "二十四乘以十二", "翻译一下你好", "英语的苹果怎么说",
]
# and 512 more, so that M3E-small's space is estimated well enough to be centred (CENTRE_MIN_VECTORS)
WHO = ["我", "你", "他", "她", "我们", "小王", "妈妈", "老师"]
DOES = ["想要", "喜欢", "不喜欢", "正在找", "买了", "讨厌", "需要", "推荐"]
WHAT = ["一杯咖啡", "一本书", "新手机", "红色的伞", "去北京的票", "一首老歌", "蓝牙耳机", "一台电脑"]


@pytest.fixture(scope="module")
def utterances(tmp_path_factory):
    root = tmp_path_factory.mktemp("utterances")
    lines = UTTERANCES + [who + does + what for who in WHO for does in DOES for what in WHAT]
    for number, text in enumerate(lines):
        (root / f"u{number:03d}.md").write_text(text + "\n", encoding="utf-8")
    Engine.build([root], root / "index")[0].close()
    with Engine.open(root / "index") as engine:
        yield engine


@pytest.mark.parametrize("query", ["你在忙什么", "讲个好笑的故事", "手机没电了", "我想睡觉", "他想买咖啡"])
def test_the_engine_measures_each_candidate_between_the_stored_vectors(utterances, query):
    """Every candidate of the space that reads the query has its closeness to its 10 nearest other
    candidates, from the vectors the index stores moved by the space's centre, and fusion ranks by the
    cosines the rule gives."""
    engine = utterances
    assert set(engine.retriever.centred) == {"zh"}
    retrieval = engine.retrieve(engine.analyse(query), 100)
    union = np.union1d(retrieval.bm25[0], retrieval.dense[0])
    assert retrieval.hubs is not None and sorted(retrieval.hubs.closeness) == union.tolist()
    vectors = engine.backend.dense["zh"].vectors_at(engine.backend.members.rows["zh"][union]).astype(np.float64)
    centre = engine.retriever.centred["zh"].centre
    closeness, occurrences = neighbour_closeness(unit(vectors - centre), 10)
    np.testing.assert_allclose([retrieval.hubs.closeness[pid] for pid in union.tolist()], closeness, atol=1e-5)
    assert [retrieval.hubs.occurrences[pid] for pid in union.tolist()] == occurrences.tolist()

    best = int(retrieval.dense[0][0])
    applies = occurrences[union.tolist().index(best)] > 10
    expected = dict(retrieval.cosines)
    if applies:
        expected = {pid: cosine - 0.3 * retrieval.hubs.closeness[pid] for pid, cosine in expected.items()}
    by_hand = Hybrid(SearchConfig()).rank(replace(retrieval, cosines=expected, hubs=None), "hybrid")
    assert engine.rank(retrieval) == by_hand
    # each hit says what the rule took off its cosine, where it applied
    for hit in engine.search(query, k=5):
        assert hit.hub_penalty == (pytest.approx(0.3 * retrieval.hubs.closeness[hit.passage_id]) if applies else None)
        assert hit.to_dict()["hub_penalty"] == hit.hub_penalty


@pytest.mark.parametrize("config", [SearchConfig(hub_penalty=0.0), SearchConfig(centring=0.0)])
def test_nothing_is_measured_with_the_rule_off_or_in_a_space_left_uncentred(utterances, config):
    """The rule off, or raw cosines (as in a wide space such as all-MiniLM-L6-v2's, where it gained nothing)."""
    with Engine.open(utterances.folder.root, config=config) as engine:
        assert engine.retrieve(engine.analyse("你在忙什么"), 100).hubs is None


@pytest.mark.parametrize("name, gain", [("oppo_xiaobu", 0.004), ("cmedqq", 0.003)])
def test_the_rule_lifts_short_utterance_collections(eval_dir, name, gain):
    """On the two sets of short questions and utterances of ../shared/eval, hybrid nDCG@10 with the rule
    beats the same retrieval fused without it (measured: oppo_xiaobu +0.0067, cmedqq +0.0059; README,
    Relevance)."""
    from search.evaluation import evaluate, load_collection, open_eval_index

    collection = load_collection(eval_dir / name)
    with open_eval_index(collection) as engine:
        result = evaluate(engine, collection, {"rule": ("hybrid", None), "without": ("hybrid", SearchConfig(hub_penalty=0.0))})
    assert result.scores["rule"]["ndcg@10"] >= result.scores["without"]["ndcg@10"] + gain
