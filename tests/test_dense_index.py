import faiss
import numpy as np
import pytest

from search.index.dense import DenseIndex, load_vectors
from search.index.row_files import RowFile, StoredVectors


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


def test_vectors_without_faiss_read_back_like_an_index(tmp_path):
    """What a Qdrant-searched generation keeps: the vectors and ids alone, read as an index's rows."""
    rng = np.random.default_rng(1)
    vectors = unit(rng.normal(size=(70_000, 4)))  # more rows than one copy chunk
    staged = tmp_path / "staged.f32"
    vectors.tofile(staged)
    StoredVectors(np.arange(5, 70_005), np.memmap(staged, dtype=np.float32, mode="r", shape=vectors.shape)).save(tmp_path / "dense-zh")
    DenseIndex.build(vectors[:10], np.arange(10), dim=4).save(tmp_path / "dense-en")
    StoredVectors(np.zeros(0, dtype=np.int64), np.zeros((0, 4), dtype=np.float32)).save(tmp_path / "dense-xx")
    stored, indexed, empty = (load_vectors(tmp_path / f"dense-{space}") for space in ("zh", "en", "xx"))
    assert isinstance(stored, StoredVectors) and isinstance(indexed, DenseIndex) and not (tmp_path / "dense-zh.faiss").exists()
    np.testing.assert_array_equal(stored.vectors_at(np.array([69_999, 3, 3])), vectors[[69_999, 3, 3]])
    assert stored.ids[0] == 5 and stored.dim == 4 and len(stored) == 70_000
    np.testing.assert_array_equal(indexed.vectors_at(np.array([9])), vectors[[9]])
    assert len(empty) == 0 and empty.dim == 4


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


def test_an_extended_graph_never_returns_a_retired_row(tmp_path):
    vectors = clustered(600, 16)
    graph = DenseIndex.build(vectors[:500], np.arange(500), dim=16, exact_max=100)
    assert graph.kind == "hnsw"
    graph.save(tmp_path / "dense-zh")
    # the next generation: passages renumbered (+1000), rows 0-9 gone, 100 new vectors after the old rows
    ids = np.concatenate([np.arange(500) + 1000, np.arange(2000, 2100)])
    ids[:10] = -1
    extended = DenseIndex.extended(tmp_path / "dense-zh", ids, vectors[500:])
    assert extended is not None and (extended.retired, extended.live, len(extended)) == (10, 590, 600)
    live = ids >= 0
    for row in (0, 5, 9):  # a retired passage's own vector finds everything but it
        for k in (20, 5):  # 10 retired rows searched past (k 20), or skipped by a selector (k 5)
            found, _ = extended.search(vectors[row], k)
            assert -1 not in found.tolist() and found.tolist() == ids[live][np.argsort(-(vectors[live] @ vectors[row]), kind="stable")[:k]].tolist()
    assert extended.search(vectors[550], 1)[0].tolist() == [2050]  # a new vector is found
    everything, _ = extended.search(vectors[0], 600)
    assert sorted(everything.tolist()) == sorted(ids[ids >= 0].tolist())  # k beyond the live rows: every live one
    mask = np.zeros(2100, dtype=bool)
    mask[[1000, 1005, 1010, 2000]] = True  # two retired, two live
    rows = extended.rows_allowed(mask)
    assert sorted(extended.ids[rows].tolist()) == [1010, 2000]
    assert sorted(extended.search(vectors[0], 5, allowed_rows=rows)[0].tolist()) == [1010, 2000]
    extended.save(tmp_path / "next")
    loaded = DenseIndex.load(tmp_path / "next")
    assert loaded.retired == 10 and loaded.search(vectors[3], 20)[0].tolist() == extended.search(vectors[3], 20)[0].tolist()
    assert loaded.row_of(2100)[1010] == 10 and loaded.row_of(2100)[1000] == -1 and loaded.row_of(2100)[2050] == 550


def test_a_graph_with_too_many_retired_rows_is_built_anew(tmp_path):
    vectors = clustered(300, 16)
    DenseIndex.build(vectors, np.arange(300), dim=16, exact_max=100).save(tmp_path / "graph")
    DenseIndex.build(vectors, np.arange(300), dim=16).save(tmp_path / "flat")
    ids = np.arange(310)
    ids[:63] = -1  # 63 of 310 rows: over a fifth
    assert DenseIndex.extended(tmp_path / "graph", ids, vectors[:10]) is None
    ids[:63] = np.arange(63)
    ids[:50] = -1
    assert DenseIndex.extended(tmp_path / "graph", ids, vectors[:10]) is not None
    assert DenseIndex.extended(tmp_path / "flat", ids, vectors[:10]).tail_rows == 10


def exact_ids(vectors, ids, query, k):
    """The k live passages nearest `query`, by a full sort."""
    live = np.flatnonzero(ids >= 0)
    return ids[live][np.argsort(-(vectors[live] @ query), kind="stable")[:k]].tolist()


@pytest.mark.parametrize("exact_max, graph_max", [(100, 10_000), (10_000, 10_000), (100, 200)], ids=["hnsw", "flat", "ivf"])
def test_new_rows_go_to_a_tail_beside_the_saved_index_whose_files_are_linked(tmp_path, exact_max, graph_max):
    """An incremental build's new vectors join a flat tail; the index's own files (an IVF index's re-rank
    rows too) are the previous generation's, hard-linked, and every search, filter and row read spans
    both the index's rows and the tail's."""
    vectors = clustered(700, 16)
    built = DenseIndex.build(vectors[:600], np.arange(600), dim=16, exact_max=exact_max, graph_max=graph_max)
    built.save(tmp_path / "gen1")
    ids = np.arange(650)
    ids[3] = -1  # a retired row of the index
    first = DenseIndex.extended(tmp_path / "gen1", ids, vectors[600:650])
    assert first.kind == built.kind and first.tail_rows == 50 and len(first) == 650 and first.retired == 1
    first.save(tmp_path / "gen2")
    names = [".faiss"] + ([".vectors.npy"] if built.reranks else [])
    for suffix in names:
        assert (tmp_path / f"gen2{suffix}").stat().st_ino == (tmp_path / f"gen1{suffix}").stat().st_ino
    ids2 = np.concatenate([ids, np.arange(650, 700)])
    ids2[610] = -1  # a retired row of the tail
    second = DenseIndex.extended(tmp_path / "gen2", ids2, vectors[650:], opened=DenseIndex.load(tmp_path / "gen2"))
    second.save(tmp_path / "gen3")
    loaded = DenseIndex.load(tmp_path / "gen3")
    assert (loaded.tail_rows, loaded.retired, loaded.live) == (100, 2, 698)
    assert (tmp_path / "gen3.faiss").stat().st_ino == (tmp_path / "gen1.faiss").stat().st_ino
    np.testing.assert_array_equal(loaded.vectors(), vectors)
    np.testing.assert_array_equal(loaded.vectors_at(np.array([699, 5, 650])), vectors[[699, 5, 650]])
    for row in (0, 610, 640, 699):  # an index row's vector, a retired tail row's, live tail rows'
        found, scores = loaded.search(vectors[row], 10)
        assert found.tolist() == exact_ids(vectors, ids2, vectors[row], 10)
        assert np.all(np.diff(scores) <= 0)
    assert loaded.search(vectors[699], 1)[0].tolist() == [699]
    everything, _ = loaded.search(vectors[0], 700)
    assert sorted(everything.tolist()) == sorted(ids2[ids2 >= 0].tolist())
    mask = np.zeros(700, dtype=bool)
    mask[[3, 5, 610, 611, 699]] = True  # a retired and a live row of each part, and another tail row
    rows = loaded.rows_allowed(mask)
    assert sorted(loaded.ids[rows].tolist()) == [5, 611, 699]
    assert loaded.search(vectors[611], 2, allowed_rows=rows)[0].tolist() == exact_ids(vectors, np.where(mask, ids2, -1), vectors[611], 2)
    np.testing.assert_allclose(loaded.scores_of(vectors[5], np.array([5, 699])), vectors[[5, 699]] @ vectors[5], rtol=1e-6)


def test_a_full_tail_is_added_to_a_graph_and_a_flat_or_ivf_index_is_built_anew(tmp_path, monkeypatch):
    monkeypatch.setattr("search.index.dense.TAIL_MAX_ROWS", 40)
    vectors = clustered(400, 16)
    for name, exact_max, graph_max in (("graph", 100, 10_000), ("flat", 10_000, 10_000), ("ivf", 100, 200)):
        DenseIndex.build(vectors[:300], np.arange(300), dim=16, exact_max=exact_max, graph_max=graph_max).save(tmp_path / name)
        with_tail = DenseIndex.extended(tmp_path / name, np.arange(330), vectors[300:330])
        assert with_tail.tail_rows == 30
        with_tail.save(tmp_path / f"{name}2")
        full = DenseIndex.extended(tmp_path / f"{name}2", np.arange(350), vectors[300:350][30:])
        if name != "graph":
            assert full is None
            continue
        assert full.tail_rows == 0 and full.index.ntotal == 350
        full.save(tmp_path / "graph3")
        assert (tmp_path / "graph3.faiss").stat().st_ino != (tmp_path / "graph.faiss").stat().st_ino
        assert not (tmp_path / "graph3.tail.npy").exists()
        assert DenseIndex.load(tmp_path / "graph3").search(vectors[345], 1)[0].tolist() == [345]


def test_a_graph_is_searched_at_the_depth_measured_for_its_neighbour_count(tmp_path):
    """A new graph has 64 neighbours a node, searched 160 deep; a graph saved when the count was 32 keeps
    the 512 its recall was measured at, when loaded and when an edit extends it."""
    vectors = clustered(600, 16)
    built = DenseIndex.build(vectors[:500], np.arange(500), dim=16, exact_max=100)
    assert (built.index.hnsw.nb_neighbors(1), built.index.hnsw.efSearch) == (64, 160)
    old = faiss.IndexHNSWFlat(16, 32, faiss.METRIC_INNER_PRODUCT)  # as builds made it before
    old.add(vectors[:500])
    DenseIndex(old, np.arange(500)).save(tmp_path / "dense-zh")
    loaded = DenseIndex.load(tmp_path / "dense-zh")
    assert (loaded.index.hnsw.nb_neighbors(1), loaded.index.hnsw.efSearch) == (32, 512)
    extended = DenseIndex.extended(tmp_path / "dense-zh", np.arange(600), vectors[500:])
    assert (extended.index.hnsw.nb_neighbors(1), extended.index.hnsw.efSearch) == (32, 512)
    assert extended.search(vectors[550], 1)[0].tolist() == [550]


def test_a_filtered_graph_search_goes_deeper_by_the_share_it_allows():
    """Only the allowed rows a graph meets fill its candidate list, so a filter that lets a tenth of the
    rows through is searched deeper (up to twice the graph's depth); a flat index takes the selector as is."""
    from search.index.dense_kinds import search_parameters

    graph = DenseIndex.build(clustered(600, 16), np.arange(600), dim=16, exact_max=100).index
    selector = faiss.IDSelectorRange(0, 60)
    depths = [search_parameters(graph, selector, share).efSearch for share in (1.0, 0.8, 0.5, 0.1)]
    assert depths == [160, 200, 320, 320]
    flat = DenseIndex.build(clustered(50, 16), np.arange(50), dim=16).index
    assert type(search_parameters(flat, selector, 0.1)) is faiss.SearchParameters
