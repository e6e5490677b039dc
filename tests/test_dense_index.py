import faiss
import numpy as np
import pytest

from search.index.dense import DenseIndex, RowFile


def unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_search_returns_passage_ids_by_cosine():
    vectors = unit([[1, 0, 0], [0.8, 0.6, 0], [0, 0, 1]])
    index = DenseIndex.build(vectors, np.array([10, 11, 12]), dim=3)
    ids, scores = index.search(unit([[1, 0.1, 0]])[0], k=2)
    assert ids.tolist() == [10, 11]
    assert scores[0] > scores[1]
    assert scores[0] == np.float32(vectors[0] @ unit([[1, 0.1, 0]])[0])


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vectors = unit(rng.normal(size=(50, 16)))
    ids = np.arange(100, 150)
    index = DenseIndex.build(vectors, ids, dim=16)
    index.save(tmp_path / "dense-zh")
    loaded = DenseIndex.load(tmp_path / "dense-zh")
    query = unit(rng.normal(size=(1, 16)))[0]
    assert loaded.search(query, 5)[0].tolist() == index.search(query, 5)[0].tolist()
    np.testing.assert_array_equal(loaded.vectors(), vectors)
    np.testing.assert_array_equal(loaded.ids, ids)


def test_k_larger_than_index_and_empty_index():
    index = DenseIndex.build(unit([[1, 0]]), np.array([0]), dim=2)
    assert index.search(np.array([1, 0], dtype=np.float32), 10)[0].tolist() == [0]
    empty = DenseIndex.build(np.zeros((0, 2), dtype=np.float32), np.array([], dtype=np.int64), dim=2)
    assert len(empty.search(np.array([1, 0], dtype=np.float32), 3)[0]) == 0
    assert empty.vectors().shape == (0, 2)


def clustered(n, dim, seed=0):
    """Unit vectors around a few hundred topics, like sentence embeddings of a corpus (and queries near them)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, dim))
    return unit(centres[rng.integers(0, 200, n)] + 0.35 * rng.normal(size=(n, dim)))


def test_index_type_follows_size(tmp_path):
    vectors = clustered(3000, 32)
    ids = np.arange(3000) * 2  # ids that are not row numbers
    small = DenseIndex.build(vectors, ids, dim=32, exact_max=3000)
    large = DenseIndex.build(vectors, ids, dim=32, exact_max=2999, graph_max=2999)
    assert small.exact and isinstance(small.index, faiss.IndexFlatIP) and small.kind == "flat"
    assert not large.exact and faiss.extract_index_ivf(large.index).nlist > 1 and large.kind == "ivf-sq8+rerank"
    large.save(tmp_path / "dense-en")
    loaded = DenseIndex.load(tmp_path / "dense-en")
    assert not loaded.exact and len(loaded) == 3000
    np.testing.assert_array_equal(loaded.vectors(), vectors)  # exact float32 kept beside the codes
    rows = np.array([5, 0, 2999, 5])
    np.testing.assert_allclose(loaded.scores_of(vectors[7], rows), vectors[rows] @ vectors[7], rtol=1e-6)


@pytest.mark.parametrize("kind", ["hnsw", "ivf-sq8+rerank"])
def test_approximate_recall_against_exact(tmp_path, kind):
    vectors = clustered(5000, 48, seed=1)
    ids = np.arange(5000)
    exact = DenseIndex.build(vectors, ids, dim=48)
    approx = DenseIndex.build(vectors, ids, dim=48, exact_max=1000, graph_max=1000 if kind != "hnsw" else 5000)
    approx.save(tmp_path / "dense-zh")
    approx = DenseIndex.load(tmp_path / "dense-zh")
    assert approx.kind == kind and not approx.exact
    np.testing.assert_array_equal(approx.vectors(), vectors)
    np.testing.assert_array_equal(approx.vectors_at(np.array([4999, 3])), vectors[[4999, 3]])
    queries = unit(vectors[:200] + 0.2 * np.random.default_rng(2).normal(size=(200, 48)))
    recall = []
    for query in queries:
        truth, truth_scores = exact.search(query, 10)
        got, scores = approx.search(query, 10)
        recall.append(len(set(truth.tolist()) & set(got.tolist())) / 10)
        # scores are exact cosines (re-ranked, or the graph's float32 vectors), best first
        np.testing.assert_allclose(scores, vectors[got] @ query, rtol=1e-5)
        assert np.all(np.diff(scores) <= 0)
    assert np.mean(recall) >= 0.98


def test_row_file_reads_any_rows_in_the_order_asked(tmp_path):
    vectors = clustered(1000, 24, seed=2)
    np.save(tmp_path / "v.npy", vectors)
    rows_of = RowFile(tmp_path / "v.npy")
    assert len(rows_of) == 1000
    # unsorted, repeated, and runs of neighbours (read as one span each)
    rows = np.array([999, 3, 4, 5, 3, 0, 998, 500, 501, 999])
    np.testing.assert_array_equal(rows_of.rows(rows), vectors[rows])
    assert rows_of.rows(np.array([], dtype=np.int64)).shape == (0, 24)
    np.testing.assert_array_equal(rows_of.all(), vectors)
    with pytest.raises(IndexError):
        rows_of.rows(np.array([1000]))
