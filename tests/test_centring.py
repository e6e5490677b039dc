"""Cosines of a narrow-cone space are measured from its mean (search.query.centring): the formula, which
spaces qualify, and an index whose dense scores are those centred cosines of its stored vectors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from search import Engine, SearchConfig
from search.index.dense import DenseIndex
from search.index.folder import IndexFolder
from search.query.centring import CENTRE_MIN_NORM, CENTRE_MIN_VECTORS, centred_cosines, space_centres


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def test_the_formula_is_the_cosine_of_the_moved_vectors():
    rng = np.random.default_rng(7)
    passages = unit(rng.normal(size=(50, 16)) + 3.0)  # a narrow cone: every vector near (1, 1, ...)
    query, mean = unit(rng.normal(size=16) + 3.0), 0.9 * passages.mean(axis=0)
    centred = centred_cosines(passages @ query, query, passages @ mean, mean)
    np.testing.assert_allclose(centred, unit(passages - mean) @ unit(query - mean), rtol=1e-6, atol=1e-9)
    assert np.ptp(centred) > 3 * np.ptp(passages @ query)  # the cone's cosines, spread out
    np.testing.assert_allclose(centred_cosines(passages @ query, query, np.zeros(50), np.zeros(16)), passages @ query)


def _models(norm: float, vectors: int, name: str = "m3e-small") -> dict:
    mean = np.zeros(8)
    mean[0] = norm
    return {"zh": {"name": name, "centre": {"mean": mean.tolist(), "vectors": vectors}}}


def test_only_a_narrow_cone_with_enough_passages_is_centred():
    centres = space_centres(_models(0.8, CENTRE_MIN_VECTORS), 0.9)
    np.testing.assert_allclose(centres["zh"][0], 0.72, rtol=1e-6)
    assert space_centres(_models(0.8, CENTRE_MIN_VECTORS - 1), 0.9) == {}  # too few to estimate the mean
    assert space_centres(_models(CENTRE_MIN_NORM - 0.01, 10_000), 0.9) == {}  # a wide space keeps raw cosines
    assert space_centres(_models(0.8, 10_000), 0.0) == {}  # switched off
    assert space_centres(_models(0.8, 10_000, "multilingual-e5-small"), 0.9) == {}  # one scale across its spaces
    assert space_centres({"zh": {"name": "m3e-small"}}, 0.9) == {}  # an index built before means were kept
    for share in (-0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            SearchConfig(centring=share)


@pytest.fixture(scope="module")
def cone_index(tmp_path_factory):
    """Over 500 short Chinese passages on eight topics: M3E-small puts them in a narrow cone."""
    root = tmp_path_factory.mktemp("cone")
    topics = ["数据并行", "张量并行", "流水线并行", "混合精度", "梯度累积", "检索增强", "向量数据库", "中文分词"]
    for i in range(CENTRE_MIN_VECTORS + 40):
        topic = topics[i % len(topics)]
        (root / "notes").mkdir(exist_ok=True)
        (root / "notes" / f"note-{i:03d}.md").write_text(f"第 {i} 条记录：{topic}的第 {i % 13} 个实验，批大小 {2 ** (i % 9)}。\n", encoding="utf-8")
    Engine.build([root / "notes"], root / "index")[0].close()
    return root / "index"


def test_an_index_measures_its_narrow_space_from_its_mean(cone_index):
    generation = IndexFolder(cone_index).current()
    stored = generation.read_manifest()["models"]["zh"]["centre"]
    dense = DenseIndex.load(generation.dense_prefix("zh"))
    rows = np.flatnonzero(dense.ids >= 0)
    vectors = dense.vectors_at(rows).astype(np.float64)
    assert stored["vectors"] == len(rows) >= CENTRE_MIN_VECTORS
    np.testing.assert_allclose(stored["mean"], vectors.mean(axis=0), atol=1e-6)
    assert np.linalg.norm(stored["mean"]) >= CENTRE_MIN_NORM

    with Engine.open(cone_index) as engine, Engine.open(cone_index, config=SearchConfig(centring=0.0)) as raw:
        assert set(engine.retriever.centred) == {"zh"} and raw.retriever.centred == {}
        assert engine.stats()["models"]["zh"]["centred"] and "centre" not in engine.stats()["models"]["zh"]
        mean = 0.9 * np.asarray(stored["mean"])
        by_passage = dict(zip(dense.ids[rows].tolist(), vectors))
        for query in ("混合精度实验的批大小", "检索增强的实验", "混合精度的第 3 个实验"):  # later ones reuse the passages' dots with the mean
            vector = engine.retriever.encoders["zh"].encode_query([query])[0].astype(np.float64)
            for retrieval, expect in ((engine.retrieve(engine.analyse(query, "hybrid"), 20), lambda p: unit(p - mean) @ unit(vector - mean)),
                                      (raw.retrieve(raw.analyse(query, "hybrid"), 20), lambda p: p @ vector)):
                ids, scores = retrieval.dense
                assert list(scores) == sorted(scores, reverse=True)
                np.testing.assert_allclose(scores, [expect(by_passage[pid]) for pid in ids.tolist()], atol=2e-5)
                for pid, cosine in retrieval.cosines.items():  # BM25's candidates too: fusion compares them all
                    np.testing.assert_allclose(cosine, expect(by_passage[pid]), atol=2e-5)
        query = "混合精度实验的批大小"
        assert engine.retrieve(engine.analyse(query, "dense"), 20).dense[0].tolist() != raw.retrieve(raw.analyse(query, "dense"), 20).dense[0].tolist()


def test_stats_say_which_space_is_centred(cone_index):
    shown = subprocess.run([str(Path(sys.executable).parent / "search"), "stats", "--index", str(cone_index)],
                           capture_output=True, text=True, check=True).stdout
    zh = next(line for line in shown.splitlines() if line.startswith("model") and " zh: " in line)
    assert "cosines from its centre" in zh
    assert all("centre" not in line for line in shown.splitlines() if " en: " in line)
