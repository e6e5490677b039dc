"""Cosines taken from the middle of an embedding space instead of from its origin.

Some models put every text in a narrow cone: M3E-small's passage vectors average to a vector of length
0.78-0.89 on the Chinese sets of ../shared/eval (1 would mean all alike), so any two texts score a
cosine near 0.7, and a passage near the common direction (a generic question) scores high against
every query. Moving query and passage by most of the index's mean vector before the cosine takes that
shared part out (the first step of "all-but-the-top", Mu & Viswanath 2018, and of whitening, Su et al.
2021). The index stores each space's mean (search.index.vectors); a centred cosine needs each
passage's dot product with it, one more product over the candidates, since every vector is unit length:

    cos_c(q, p) = (q·p - q·m - p·m + m·m) / (|q - m| |p - m|),   |p - m|² = 1 - 2 p·m + m·m

nDCG@10, hybrid (README, Relevance): cmedqq 0.4501 -> 0.4616, oppo_xiaobu 0.7020 -> 0.7036, xling_en2zh
0.8608 -> 0.8664, cmrc2018 0.9906 -> 0.9903; all-MiniLM-L6-v2, whose mean is short, is left alone.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from search.embedding.models import reads_every_language

__all__ = ["CENTRE_MIN_NORM", "CENTRE_MIN_VECTORS", "CentredSpace", "centred_cosines", "space_centres"]

# A mean estimated from fewer passages is mostly those passages themselves: a space keeps raw cosines.
CENTRE_MIN_VECTORS = 500
# Only a space whose mean is this long (a narrow cone) is centred. Measured means: M3E-small 0.78-0.89
# (cmrc2018, oppo_xiaobu, xling_en2zh, the bench corpus, cmedqq), all-MiniLM-L6-v2 0.32-0.49 (xling_zh2en,
# SciFact, the bench corpus, oppo_xiaobu's English lines), where moving it by its whole mean cost
# SciFact's dense ranking 0.670 -> 0.666.
CENTRE_MIN_NORM = 0.6


def centred_cosines(raw: np.ndarray, query: np.ndarray, passage_dots: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """cos(q - m, p - m) of passages whose raw cosines with the unit `query` are `raw` and whose dot
    products with the centre m are `passage_dots` (unit passage vectors)."""
    query_dot = float(np.asarray(query, dtype=np.float64) @ centre)
    m2 = float(centre @ centre)
    query_norm = np.sqrt(max(1.0 - 2.0 * query_dot + m2, 1e-12))
    passage_norms = np.sqrt(np.maximum(1.0 - 2.0 * np.asarray(passage_dots, dtype=np.float64) + m2, 1e-12))
    return (np.asarray(raw, dtype=np.float64) - query_dot - passage_dots + m2) / (query_norm * passage_norms)


class CentredSpace:
    """One centred space of an open index: the point its cosines are measured from, and each passage's
    dot product with it, read from the backend the first time the passage is a candidate and kept (a
    float per passage), so a warm engine re-scores from memory (a Qdrant backend would fetch the
    vectors again for every query)."""

    def __init__(self, centre: np.ndarray, passages: int, dots_of: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        """`dots_of(vector, pids)`: the backend's dot products of its stored vectors of `pids` with `vector`."""
        self.centre, self._dots_of = centre, dots_of
        self._dots = np.full(passages, np.nan, dtype=np.float32)  # unknown until read; a race writes the same value

    def moved(self, vectors: np.ndarray) -> np.ndarray:
        """Unit passage `vectors` moved by the centre and made unit again: what a centred cosine compares."""
        moved = np.asarray(vectors, dtype=np.float32) - self.centre.astype(np.float32)
        return moved / np.maximum(np.linalg.norm(moved, axis=1, keepdims=True), 1e-12)

    def cosines(self, raw: np.ndarray, query: np.ndarray, pids: np.ndarray) -> np.ndarray:
        """Centred cosines of `pids` (members of the space) whose raw cosines with `query` are `raw`."""
        dots = self._dots[pids]
        unknown = np.isnan(dots)
        if unknown.any():
            dots[unknown] = self._dots[pids[unknown]] = self._dots_of(self.centre, pids[unknown])
        return centred_cosines(raw, query, dots, self.centre)


def space_centres(models: Mapping[str, Mapping[str, Any]], share: float) -> dict[str, np.ndarray]:
    """The point each centred space of an index (its manifest's "models") is measured from: `share` of
    its mean, where the mean is long enough and estimated from enough passages. A multilingual model's
    spaces are left alone: their cosines are compared across spaces as one scale, which a mean per
    space would break."""
    centres = {}
    for space, info in models.items():
        stored = info.get("centre")
        if share <= 0 or not stored or stored["vectors"] < CENTRE_MIN_VECTORS or reads_every_language(info["name"]):
            continue
        mean = np.asarray(stored["mean"], dtype=np.float64)
        if float(np.linalg.norm(mean)) >= CENTRE_MIN_NORM:
            centres[space] = (share * mean).astype(np.float32)
    return centres
