"""Hubs among a query's candidates: passages near many others, so near many queries.

In a high-dimensional embedding space some points are the nearest neighbours of far more points than
others (Radovanović et al. 2010): a generic utterance ("你在干嘛呢") or question sits close to every
query of its kind and crowds its paraphrases out. Cross-domain similarity local scaling (CSLS, Conneau
et al. 2018) corrects a cosine by how close the passage is to its own K nearest neighbours:

    score(q, p) = cos(q, p) - β · r(p),   r(p) = mean cosine of p with its K nearest candidates

and Querybank Normalisation's dynamic rule (Bogolin et al. 2022) applies the correction only when the
query's nearest passage is itself a hub, so a query that lands in an ordinary neighbourhood keeps its
plain cosines. Here the neighbourhood is the query's own candidates of one embedding space, moved
by the space's centre (search.query.centring), so nothing is stored and an edited note never leaves a
stale neighbour list behind; a candidate is a hub when more of the other candidates count it among
their K nearest than the K that each is counted on average. Only centred spaces, the narrow cones
(M3E-small), take part: in all-MiniLM-L6-v2's wider space the rule gained nothing.

Hybrid nDCG@10 (README, Relevance), K = 10, β 0.3: oppo_xiaobu 0.7036 -> 0.7105, cmedqq 0.4616 ->
0.4675, cmrc2018 0.9907 -> 0.9902; β = 0.3 is what every leave-one-set-out choice among 0.1-0.6 picked.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

__all__ = ["Hubs", "neighbour_closeness"]


def neighbour_closeness(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of the unit `vectors`: its mean cosine with its `k` nearest others (r in CSLS), and how
    many of the others count it among their `k` nearest (its k-occurrence; they average `k`, a little
    more where copies of one text tie at an other's k-th place: each counts as near)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    k = min(k, len(vectors) - 1)
    if k < 1:
        return np.zeros(len(vectors)), np.zeros(len(vectors), dtype=np.int64)
    # Through FAISS's BLAS, not numpy's: FAISS's runs on the calling thread's OpenMP team (none in a query
    # thread: search.index.dense_kinds.search_one_query_per_thread), where numpy's OpenBLAS wakes a pool of its
    # own that then spins, measured +15 ms of CPU a query, slowing the next query's BM25 and embedding.
    # FAISS gives squared distances (its inner-product matrix is numpy's): for unit vectors, 2 - 2 cos.
    similarity = 1.0 - 0.5 * faiss.pairwise_distances(vectors, vectors, faiss.METRIC_L2)
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.partition(similarity, -k, axis=1)[:, -k:]  # each row's k largest (a third of argpartition's time)
    counted = similarity >= nearest.min(axis=1, keepdims=True)  # row i counts column j among its nearest
    return nearest.mean(axis=1, dtype=np.float64), counted.sum(axis=0)


@dataclass(frozen=True)
class Hubs:
    """The neighbourhood of one query's candidates in the centred spaces that read it as asked."""

    closeness: dict[int, float]  # passage id -> r(p), its mean cosine with its nearest candidates
    occurrences: dict[int, int]  # passage id -> how many candidates count it among their nearest
    neighbours: int  # K

    @classmethod
    def among(cls, pids: np.ndarray, vectors: np.ndarray, neighbours: int) -> "Hubs":
        """The hubs among candidates `pids` whose unit vectors (one space) are `vectors`."""
        closeness, occurrences = neighbour_closeness(vectors, neighbours)
        ids = pids.tolist()
        return cls(dict(zip(ids, closeness.tolist())), dict(zip(ids, occurrences.tolist())), neighbours)

    def merged(self, other: "Hubs") -> "Hubs":
        """Both spaces' candidates (each space's measured among its own)."""
        return Hubs({**self.closeness, **other.closeness}, {**self.occurrences, **other.occurrences}, self.neighbours)

    def is_hub(self, pid: int) -> bool:
        """Whether more candidates count `pid` among their nearest than the average candidate."""
        return self.occurrences.get(pid, 0) > self.neighbours
