import numpy as np

from search.dense_index import DenseIndex


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
