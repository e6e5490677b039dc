"""Merging ranked lists into one ranking: the formulas (RRF, min-max, z-scores, the tie rule) as small
functions, and `Hybrid`, which owns the whole fusion policy of a hybrid query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from search.embedding.models import CROSS_LINGUAL_RERANKER
from search.query.candidates import EMPTY, Ranking, Retrieval
from search.query.query import CROSS_LINGUAL_MODES, REREAD_MODES

__all__ = ["FUSION_METHODS", "Hybrid", "SearchConfig", "fuse", "reciprocal_rank_fusion", "tie_weight", "z_normalise"]

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


@dataclass
class SearchConfig:
    """How queries are ranked; the defaults are what `search query` does with no options."""

    # Measured on ../shared/eval (README, Relevance): z-scored fusion of fully scored candidates with
    # dense 0.6 beat RRF and min-max fusion on every collection.
    fusion: str = "zscore"  # "zscore" | "rrf" | "weighted"
    bm25_weight: float = 0.4
    dense_weight: float = 0.6
    # zscore: BM25 keeps its whole weight when its best score leads the second by 5% or more, down
    # to half of it on a tie (tie_weight); nDCG@10 +0.002 on cmedqq, oppo_xiaobu and scifact.
    bm25_tie_gap: float = 0.05
    bm25_tie_floor: float = 0.5
    rrf_k: float = 60.0
    # BM25's weight where it searched only the query's dictionary translation while a multilingual
    # model read the query itself (`--model multilingual-e5-small` on notes of the other language):
    # dense 0.8 of the weight, `search eval --sweep`'s zscore dense=0.8, xling_zh2en 0.8808 -> 0.9078
    # and xling_en2zh 0.8713 -> 0.9055 (dense alone 0.8774 / 0.8908; the word-by-word BM25 0.52)
    translated_bm25_weight: float = 0.15
    candidates: int = 100  # depth each retriever contributes to fusion
    # Share of a space's mean vector its cosines are measured from, where the space is a narrow cone
    # (search.query.centring; 0: raw cosines). Swept over 0.6 / 0.8 / 0.9 / 1.0 (README, Relevance):
    # cmedqq 0.4561 / 0.4599 / 0.4616 / 0.4612, cmrc2018 0.9908 / 0.9908 / 0.9903 / 0.9899 hybrid.
    centring: float = 0.9
    # How much a candidate's closeness to its nearest other candidates is taken off its cosine when the
    # dense list's best is a hub, in centred spaces (search.query.hubness; 0: never), and how many
    # nearest it counts. nDCG@10 hybrid at 0.3: oppo_xiaobu 0.7036 -> 0.7105, cmedqq 0.4616 -> 0.4675,
    # cmrc2018 0.9907 -> 0.9902; leave-one-set-out over 0.1-0.6 chose 0.3 for every set left out.
    hub_penalty: float = 0.3
    hub_neighbours: int = 10
    # how much a dense space of another language than the query counts when spaces are merged
    cross_language_weight: float = 0.25
    # Translate the query word by word (CC-CEDICT) into the other language's space and BM25 terms, so
    # that a Chinese query finds English passages and the reverse (one of CROSS_LINGUAL_MODES; True and
    # False read as "always" and "never"). "auto" translates only when the index holds almost nothing in
    # the query's language, where its own words cannot find anything and nothing of its language can
    # be crowded out (xling_zh2en 0.029 -> 0.677). "always" also translates on a mixed index, where the
    # translated terms outweigh the query's own language (cmedqq 0.447 -> 0.398 on cmedqq + English
    # passages; README, Relevance).
    cross_lingual: str = "auto"
    # Which queries a multilingual model re-reads (search.query.rerank), one of REREAD_MODES:
    # "cross-lingual", those whose dense search crossed languages through that translation, since the
    # model sees the query as asked: score = rerank_weight * z(its cosine) + the rest * z(fused score),
    # xling_zh2en 0.675 -> 0.895, xling_en2zh 0.632 -> 0.861 nDCG@10 (README, Relevance). "always" also
    # re-reads a query in the index's language, the best `candidates` with same_language_rerank_weight:
    # cmedqq 0.450 -> 0.469, oppo_xiaobu 0.702 -> 0.714, scifact unchanged, at 0.1-1 s a query.
    reread: str = "cross-lingual"
    rerank_model: str | None = CROSS_LINGUAL_RERANKER  # None: never re-read
    rerank_depth: int = 300  # candidates of a translated query re-read at most (the retrievers search this deep)
    # word pieces re-read at most per query, which bounds its cost: ~0.5 s for 300 short sentences,
    # ~0.8 s for 20 passages of long notes on 2 cores (benchmarks/cross_lingual.py); the xling sets
    # score the same to the fourth place at 3072, 4096 or 6144 (0.8945 / 0.8597), 2048 loses 0.004-0.007
    rerank_tokens: int = 4096
    rerank_weight: float = 0.8
    # e5 as a peer of the fused score, not its judge, where both read the query (0.2 / 0.35 / 0.5 on
    # cmedqq 0.4614 / 0.4692 / 0.4702, oppo_xiaobu 0.7099 / 0.7139 / 0.7132, scifact 0.7400 / 0.7379 / 0.7383)
    same_language_rerank_weight: float = 0.35

    def __post_init__(self) -> None:
        if isinstance(self.cross_lingual, bool):
            self.cross_lingual = "always" if self.cross_lingual else "never"
        if self.cross_lingual not in CROSS_LINGUAL_MODES:
            raise ValueError(f"unknown cross-lingual mode {self.cross_lingual!r}: choose from {', '.join(CROSS_LINGUAL_MODES)}")
        if not 0.0 <= self.centring <= 1.0:
            raise ValueError(f"centring is the share of a space's mean cosines are measured from: between 0 and 1, not {self.centring!r}")
        if self.hub_penalty < 0 or self.hub_neighbours < 1:
            raise ValueError(f"the hub rule needs a penalty of at least 0 and at least one neighbour, not {self.hub_penalty!r} and {self.hub_neighbours!r}")
        if self.reread not in REREAD_MODES:
            raise ValueError(f"unknown re-read mode {self.reread!r}: choose from {', '.join(REREAD_MODES)}")

    def rereads(self, translated: bool) -> bool:
        """Whether a query is re-read by `rerank_model`: one whose dense search went through its
        translation (`translated`) under "cross-lingual", every one under "always"."""
        wanted = self.reread == "always" or (self.reread == "cross-lingual" and translated)
        return bool(self.rerank_model) and wanted


def standardised(scores: dict[int, float], members: set[int]) -> dict[int, float]:
    """z-scores of the members' scores among themselves."""
    ids = [pid for pid in members if pid in scores]
    return dict(zip(ids, z_normalise(np.array([scores[pid] for pid in ids])).tolist()))


class Hybrid:
    """The fusion policy: how embedding spaces merge, how BM25 and dense lists fuse, how ties and
    cosines of models that do not read the query count."""

    def __init__(self, config: SearchConfig) -> None:
        self.config = config

    def merge_spaces(self, rankings: dict[str, Ranking], favoured: Sequence[str], depth: int, one_scale: bool = False) -> Ranking:
        """One dense list from each space's. Cosines of different models are not comparable, so the
        lists merge by weighted RRF, the spaces in `favoured` (the query's main language) counting most;
        `one_scale` (one model read one query text in every space) merges them by cosine, as one space."""
        if len(rankings) == 1:
            return next(iter(rankings.values()))
        if not rankings:
            return EMPTY
        if one_scale:
            ids = np.concatenate([ids for ids, _ in rankings.values()])
            scores = np.concatenate([scores for _, scores in rankings.values()])
            best = np.lexsort((ids, -scores))[:depth]  # ties by passage id, whatever the order of the spaces
            return ids[best], scores[best]
        weights = [1.0 if space in favoured else self.config.cross_language_weight for space in rankings]
        merged = fuse(list(rankings.values()), weights, "rrf", self.config.rrf_k)[:depth]
        return np.array([pid for pid, _ in merged], dtype=np.int64), np.array([score for _, score in merged])

    def rank(self, retrieval: Retrieval, mode: str) -> list[tuple[int, float]]:
        """(passage id, score) best first for one mode."""
        if mode == "bm25":
            return list(zip(retrieval.bm25[0].tolist(), retrieval.bm25[1].tolist()))
        if mode == "dense":
            return [(pid, retrieval.cosines[pid]) for pid in retrieval.dense[0].tolist()]
        config = self.config
        weights = [config.translated_bm25_weight if retrieval.bm25_translated else config.bm25_weight, config.dense_weight]
        if config.fusion == "zscore":  # the tie rule answers z-scoring's stretch (and was measured with it)
            leads = retrieval.bm25[1] if retrieval.bm25_leads is None else retrieval.bm25_leads
            weights[0] *= tie_weight(leads, config.bm25_tie_gap, config.bm25_tie_floor)
        columns = [retrieval.bm25_scores, self.dense_column(retrieval)]
        return fuse([retrieval.bm25, retrieval.dense], weights, config.fusion, config.rrf_k, columns)

    def dense_column(self, retrieval: Retrieval) -> dict[int, float]:
        """Every candidate's cosine for fusion. A passage of a space whose model does not read the
        query's language (skipped, or searched only to fill the depth) gets the lowest cosine of the
        readers' passages: no evidence of meaning, and another model's cosines are on another scale
        (M3E-small's for an English query run near 0.7 where MiniLM's relevant ones are near 0.35)."""
        candidates = set(retrieval.bm25[0].tolist()) | set(retrieval.dense[0].tolist())
        foreign = retrieval.foreign if len(retrieval.foreign) < len(candidates) else frozenset()  # only foreigners: compare them
        cosines = self.without_hubs(retrieval, candidates)
        translated = retrieval.translated & candidates
        if translated and translated != candidates:  # two query texts, two models: standardise each apart
            cosines = {**cosines, **standardised(cosines, translated), **standardised(cosines, candidates - translated - foreign)}
        if not foreign and candidates <= cosines.keys():
            return cosines
        comparable = {pid: cosine for pid, cosine in cosines.items() if pid not in foreign}
        floor = min(comparable.values(), default=0.0)
        return {pid: comparable.get(pid, floor) for pid in candidates}

    def hub_penalties(self, retrieval: Retrieval, candidates: set[int] | None = None) -> dict[int, float]:
        """What the hub rule takes off each candidate's cosine for this query: `hub_penalty` times its
        closeness to its nearest other candidates, when the dense list's best is a hub (Querybank
        Normalisation's dynamic rule: search.query.hubness) and z-score fusion reads the cosines; none
        otherwise."""
        hubs, best, config = retrieval.hubs, retrieval.dense[0][:1].tolist(), self.config
        if hubs is None or not best or not hubs.is_hub(best[0]) or config.hub_penalty <= 0 or config.fusion != "zscore":
            return {}
        if candidates is None:
            candidates = set(retrieval.bm25[0].tolist()) | set(retrieval.dense[0].tolist())
        if candidates - hubs.closeness.keys() - retrieval.foreign - retrieval.translated:
            return {}  # a space that reads the query held too few candidates: one rule for all or none
        return {pid: config.hub_penalty * closeness for pid, closeness in hubs.closeness.items()}

    def without_hubs(self, retrieval: Retrieval, candidates: set[int]) -> dict[int, float]:
        """The cosines less what the hub rule takes off them (hub_penalties)."""
        penalties = self.hub_penalties(retrieval, candidates)
        if not penalties:
            return retrieval.cosines
        return {pid: cosine - penalties.get(pid, 0.0) for pid, cosine in retrieval.cosines.items()}
