"""The BM25 variants as small formulas: an idf per term and a term-frequency component per posting.

The five variants and their names follow Kamphuis, de Vries, Boytsov and Lin, "Which BM25 Do You
Mean? A Large-Scale Reproducibility Study of Scoring Variants" (ECIR 2020), written exactly as
bm25s's `scoring.py` computes them, so that scores agree with bm25s and rank-bm25 to the last bits.
A posting's score is idf(df) * tfc(tf, length).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["BM25Params", "METHODS", "NONOCCURRENCE_METHODS", "idf", "length_norm", "saturation", "term_frequency_component"]

METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
# Variants whose score adds a non-occurrence term for every passage, so a positive score does not mean a match.
NONOCCURRENCE_METHODS = ("bm25l", "bm25+")


@dataclass(frozen=True)
class BM25Params:
    """A BM25 variant and its constants; `delta` only matters for bm25l and bm25+. The defaults are
    this project's (README, Relevance: k1 0.6/1.2 and b 0.75 were measured and lost)."""

    method: str = "lucene"
    k1: float = 0.9
    b: float = 0.4
    delta: float = 0.5
    # weight of each passage's window (itself and its neighbours in its document, search.index.bm25_window)
    # beside its own score; 0 scores passages alone. 0.5 / 1 / 2 measured (README, Relevance): scifact
    # 0.7447 / 0.7466 / 0.7441 hybrid, cmrc2018 0.9903 / 0.9907 / 0.9905 (0.7379 and 0.9903 without)
    window: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown BM25 method {self.method!r}; choose from {', '.join(METHODS)}")
        object.__setattr__(self, "k1", float(self.k1))
        object.__setattr__(self, "b", float(self.b))
        object.__setattr__(self, "delta", float(self.delta))
        object.__setattr__(self, "window", float(self.window))
        if not self.window >= 0:
            raise ValueError(f"BM25 window weight must be 0 or more, not {self.window!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def recorded(cls, params: dict[str, Any]) -> "BM25Params":
        """The parameters an index records; one written before windows were scored has none."""
        return cls(**{"window": 0.0, **params})


# ----- inverse document frequency: df passages of N hold the term ----------------------------------

def idf_robertson(df: int, n: int) -> float:
    """Robertson-Sparck Jones idf, floored at 0 (log 1) so that common terms never count against."""
    inner = (n - df + 0.5) / (df + 0.5)
    return math.log(max(inner, 1))


def idf_lucene(df: int, n: int) -> float:
    """Lucene's idf: always positive."""
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


def idf_atire(df: int, n: int) -> float:
    return math.log(n / df)


def idf_bm25l(df: int, n: int) -> float:
    return math.log((n + 1) / (df + 0.5))


def idf_bm25plus(df: int, n: int) -> float:
    return math.log((n + 1) / df)


# ----- term-frequency component: tf occurrences in a passage of length l_d, mean length l_avg ------
# Written in two steps, the passage's length normalisation and then each posting's saturation by it, so a
# build normalises each passage once rather than once per posting (the same operations on the same
# numbers as the one-expression formulas: the same bits).

def norm_k1(l_d: np.ndarray, l_avg: float, p: BM25Params) -> np.ndarray:
    """k1 scaled by the passage's length against the mean (robertson, lucene, atire, bm25+)."""
    return p.k1 * ((1 - p.b) + p.b * l_d / l_avg)


def norm_plain(l_d: np.ndarray, l_avg: float, p: BM25Params) -> np.ndarray:
    """The passage's length against the mean, without k1 (bm25l divides tf by it)."""
    return (1 - p.b) + p.b * l_d / l_avg


def saturation_robertson(tf: np.ndarray, norm: np.ndarray, p: BM25Params) -> np.ndarray:
    """Robertson's saturation (Lucene drops the (k1 + 1) factor too, so both use this)."""
    return tf / (norm + tf)


def saturation_atire(tf: np.ndarray, norm: np.ndarray, p: BM25Params) -> np.ndarray:
    return (tf * (p.k1 + 1)) / (tf + norm)


def saturation_bm25l(tf: np.ndarray, norm: np.ndarray, p: BM25Params) -> np.ndarray:
    """Lv and Zhai's BM25L: length-normalised tf shifted by delta, so long passages are not over-penalised."""
    c = tf / norm
    return ((p.k1 + 1) * (c + p.delta)) / (p.k1 + c + p.delta)


def saturation_bm25plus(tf: np.ndarray, norm: np.ndarray, p: BM25Params) -> np.ndarray:
    """Lv and Zhai's BM25+: a lower bound delta for every occurrence."""
    return ((p.k1 + 1) * tf) / (norm + tf) + p.delta


_IDF: dict[str, Callable[[int, int], float]] = {
    "robertson": idf_robertson, "lucene": idf_lucene, "atire": idf_atire, "bm25l": idf_bm25l, "bm25+": idf_bm25plus,
}
_NORM: dict[str, Callable[..., np.ndarray]] = {
    "robertson": norm_k1, "lucene": norm_k1, "atire": norm_k1, "bm25l": norm_plain, "bm25+": norm_k1,
}
_SATURATION: dict[str, Callable[..., np.ndarray]] = {
    "robertson": saturation_robertson, "lucene": saturation_robertson, "atire": saturation_atire,
    "bm25l": saturation_bm25l, "bm25+": saturation_bm25plus,
}


def idf(params: BM25Params, df: int, n: int) -> float:
    return _IDF[params.method](df, n)


def length_norm(params: BM25Params, l_d: np.ndarray, l_avg: float) -> np.ndarray:
    """What a passage's length contributes to each of its postings' term-frequency component."""
    return _NORM[params.method](l_d, l_avg, params)


def saturation(params: BM25Params, tf: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """A posting's term-frequency component, from its passage's `length_norm`."""
    return _SATURATION[params.method](tf, norm, params)


def term_frequency_component(params: BM25Params, tf: np.ndarray, l_d: np.ndarray, l_avg: float) -> np.ndarray:
    return saturation(params, tf, length_norm(params, l_d, l_avg))
