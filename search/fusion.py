"""Merging ranked lists from the keyword and the dense retriever into one ranking."""

from __future__ import annotations

from typing import Sequence

import numpy as np

# One retriever's candidates: passage ids best first, with their scores.
Ranking = tuple[np.ndarray, np.ndarray]


def reciprocal_rank_fusion(rankings: Sequence[Ranking], weights: Sequence[float], k: float = 60.0) -> dict[int, float]:
    """Weighted RRF: sum of weight / (k + rank) with ranks starting at 1."""
    fused: dict[int, float] = {}
    for (ids, _), weight in zip(rankings, weights):
        for rank, pid in enumerate(ids.tolist(), start=1):
            fused[pid] = fused.get(pid, 0.0) + weight / (k + rank)
    return fused


def min_max(scores: np.ndarray) -> np.ndarray:
    """Scale scores to [0, 1]; a list of equal scores maps to 1 (each is as good as the best)."""
    if scores.size == 0:
        return scores.astype(np.float64)
    low, high = float(scores.min()), float(scores.max())
    if high - low <= 1e-12:
        return np.ones_like(scores, dtype=np.float64)
    return (scores.astype(np.float64) - low) / (high - low)


def weighted_score_fusion(rankings: Sequence[Ranking], weights: Sequence[float]) -> dict[int, float]:
    """Convex combination of min-max normalised scores; a passage missing from a list gets 0 there."""
    fused: dict[int, float] = {}
    total = sum(weights) or 1.0
    for (ids, scores), weight in zip(rankings, weights):
        for pid, value in zip(ids.tolist(), min_max(scores).tolist()):
            fused[pid] = fused.get(pid, 0.0) + weight / total * value
    return fused


def z_normalise(scores: np.ndarray) -> np.ndarray:
    """Standard scores (mean 0, deviation 1); all-equal scores carry no preference and map to 0."""
    scores = np.asarray(scores, dtype=np.float64)
    deviation = scores.std() if scores.size else 0.0  # no candidates (a filter allowed none)
    return (scores - scores.mean()) / deviation if deviation > 1e-12 else np.zeros_like(scores)


def zscore_fusion(candidates: Sequence[int], score_columns: Sequence[np.ndarray], weights: Sequence[float]) -> dict[int, float]:
    """Weighted sum of z-normalised scores, where every candidate has a score from every retriever.

    Scoring the union of candidates on both sides (instead of counting a passage one retriever
    missed as 0) and standardising each side lets the weights mean what they say.
    """
    total = sum(weights) or 1.0
    fused = np.zeros(len(candidates))
    for column, weight in zip(score_columns, weights):
        fused += weight / total * z_normalise(column)
    return dict(zip(list(candidates), fused.tolist()))


def tie_weight(scores: np.ndarray, gap: float, floor: float) -> float:
    """How much of its weight a retriever keeps for one query, from how clearly its best candidate
    leads: 1 when the top score beats the second by at least `gap` (relative), falling linearly to
    `floor` when the two tie.

    Z-scoring stretches every score list to the same spread, so a list whose head is a near-tie (BM25
    on paraphrases that share the same words) would still push its arbitrary order into the fused
    ranking as hard as a list with a clear winner. `scores` are best first; with fewer than two
    candidates, or no positive best score, there is nothing to tie and the weight stays whole.
    """
    if len(scores) < 2 or scores[0] <= 0:
        return 1.0
    lead = float(scores[0] - scores[1]) / float(scores[0])
    return max(floor, min(1.0, lead / gap)) if gap > 0 else 1.0


FUSION_METHODS = {"rrf": reciprocal_rank_fusion, "weighted": weighted_score_fusion, "zscore": zscore_fusion}


def fuse(
    rankings: Sequence[Ranking],
    weights: Sequence[float],
    method: str = "rrf",
    rrf_k: float = 60.0,
    full_scores: Sequence[dict[int, float]] | None = None,
) -> list[tuple[int, float]]:
    """Fused (passage id, score) pairs, best first; ties broken by passage id for stable output.

    "zscore" needs `full_scores`: for each retriever, its score of every candidate in the union.
    """
    if method == "zscore":
        if full_scores is None:
            raise ValueError("zscore fusion needs every candidate's score from every retriever")
        candidates = sorted({pid for ids, _ in rankings for pid in ids.tolist()})
        columns = [np.array([scores[pid] for pid in candidates]) for scores in full_scores]
        fused = zscore_fusion(candidates, columns, weights)
    elif method == "rrf":
        fused = reciprocal_rank_fusion(rankings, weights, k=rrf_k)
    elif method == "weighted":
        fused = weighted_score_fusion(rankings, weights)
    else:
        raise ValueError(f"unknown fusion method {method!r}: choose from {sorted(FUSION_METHODS)}")
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))
