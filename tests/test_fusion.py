import numpy as np
import pytest

from search.query.fusion import fuse, min_max, reciprocal_rank_fusion, tie_weight, weighted_score_fusion


def ranking(ids, scores):
    return np.array(ids, dtype=np.int64), np.array(scores, dtype=np.float64)


def test_rrf_sums_weighted_reciprocal_ranks():
    bm25 = ranking([7, 3, 5], [9.0, 4.0, 1.0])
    dense = ranking([3, 9], [0.8, 0.7])
    fused = reciprocal_rank_fusion([bm25, dense], [1.0, 2.0], k=60)
    assert fused[7] == pytest.approx(1 / 61)
    assert fused[3] == pytest.approx(1 / 62 + 2 / 61)
    assert fused[5] == pytest.approx(1 / 63)
    assert fused[9] == pytest.approx(2 / 62)


def test_min_max_scales_to_unit_interval_and_handles_ties():
    assert min_max(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert min_max(np.array([5.0, 5.0])).tolist() == [1.0, 1.0]
    assert min_max(np.array([])).size == 0


def test_weighted_fusion_is_convex_combination_of_normalised_scores():
    bm25 = ranking([1, 2, 3], [10.0, 6.0, 2.0])  # normalised 1, .5, 0
    dense = ranking([3, 1], [0.9, 0.5])  # normalised 1, 0
    fused = weighted_score_fusion([bm25, dense], [3.0, 1.0])
    assert fused[1] == pytest.approx(0.75 * 1.0 + 0.25 * 0.0)
    assert fused[2] == pytest.approx(0.75 * 0.5)
    assert fused[3] == pytest.approx(0.75 * 0.0 + 0.25 * 1.0)


def test_fuse_orders_best_first_with_stable_ties():
    a = ranking([4, 2], [1.0, 0.5])
    b = ranking([2, 4], [1.0, 0.5])
    ordered = fuse([a, b], [1.0, 1.0], method="rrf")
    assert [pid for pid, _ in ordered] == [2, 4]  # equal scores: lower id first
    assert ordered[0][1] == pytest.approx(ordered[1][1])
    with pytest.raises(ValueError):
        fuse([a], [1.0], method="nope")


def test_tie_weight_shrinks_a_retriever_whose_best_two_nearly_tie():
    assert tie_weight(np.array([10.0, 9.0, 1.0]), gap=0.05, floor=0.5) == 1.0  # a 10% lead: whole weight
    assert tie_weight(np.array([10.0, 9.8]), gap=0.05, floor=0.5) == 0.5  # a 2% lead: down to the floor
    assert tie_weight(np.array([10.0, 9.75]), gap=0.05, floor=0.0) == pytest.approx(0.5)  # linear in the lead
    assert tie_weight(np.array([4.0, 4.0]), gap=0.05, floor=0.25) == 0.25  # an exact tie
    # nothing to compare: one candidate, none, or no positive score
    assert tie_weight(np.array([3.0]), 0.05, 0.5) == tie_weight(np.array([]), 0.05, 0.5) == 1.0
    assert tie_weight(np.array([0.0, 0.0]), 0.05, 0.5) == 1.0
    assert tie_weight(np.array([10.0, 9.99]), gap=0.0, floor=0.5) == 1.0  # gap 0 turns the rule off


def test_a_translated_bm25_list_counts_less_beside_a_multilingual_dense_one():
    """Where BM25 searched the query's word-by-word translation and a multilingual model read the query
    itself, dense carries 0.8 of the weight: here BM25's clear winner (passage 1) yields to dense's (2)."""
    from search.query.candidates import Retrieval
    from search.query.fusion import Hybrid, SearchConfig

    bm25 = (np.array([1, 2, 3, 4, 5]), np.array([9.0, 3.0, 2.5, 2.0, 1.5]))
    dense = (np.array([2, 1, 3, 4, 5]), np.array([0.82, 0.80, 0.78, 0.77, 0.76]))
    retrieval = Retrieval(bm25, dense, dict(zip(bm25[0].tolist(), bm25[1].tolist())), dict(zip(dense[0].tolist(), dense[1].tolist())))
    policy = Hybrid(SearchConfig())
    assert policy.rank(retrieval, "hybrid")[0][0] == 1
    from dataclasses import replace

    assert policy.rank(replace(retrieval, bm25_translated=True), "hybrid")[0][0] == 2
