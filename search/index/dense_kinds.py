"""Which kind of FAISS index a space of passage vectors gets, and how deep each kind is searched
(search.index.dense builds, extends and searches them).

The index type follows the size of the space:

* up to ``EXACT_MAX_VECTORS`` vectors, an exact ``IndexFlatIP`` (a full scan is a few ms there);
* up to ``GRAPH_MAX_VECTORS``, an HNSW graph over the float32 vectors (``HNSW64,Flat``): about 1.5 ms
  per query at recall@10 0.99 (bench corpus, ~50k vectors per model, real queries; the IVF index below
  needed 3.5 ms for 0.989 at ~30k), and its scores are exact cosines. Its vectors are read
  memory-mapped; only the graph (~520 B per vector) is loaded.
* above it, an inverted-file index of 8-bit scalar-quantised codes (``IVF{nlist},SQ8``) that scans
  only the ``nprobe`` lists nearest the query (half of them), followed by an exact re-rank of its
  candidates with the float32 vectors kept beside it (``.vectors.npy``). The re-rank gives true
  cosines (fusion and `scores_of` need them) and makes the quantisation error irrelevant to the
  final order; only a neighbour the probed lists miss can be lost (recall@10 is measured by
  benchmarks/speed.py).

IVF rather than HNSW at scale: it builds in seconds at 1M vectors on two cores (HNSW takes many
minutes) and its lists are read memory-mapped, so a query process touches only the lists it probes.
The float32 rows a query re-ranks are read with positional reads (search.index.row_files).
"""

from __future__ import annotations

import faiss
import numpy as np

__all__ = ["EXACT_MAX_VECTORS", "GRAPH_MAX_VECTORS", "HNSW_BUILD_DEPTH", "HNSW_NEIGHBOURS", "HNSW_SEARCH_DEPTH", "TRAIN_POINTS_PER_LIST",
           "index_kind", "ivf_lists", "ivf_probes", "search_one_query_per_thread", "search_parameters", "set_search_depth"]

# Above this many vectors in one space, build an approximate index (see the module docstring) ...
EXACT_MAX_VECTORS = 20_000
# ... a graph up to this many (its build costs ~0.75 CPU-s per 1k vectors), IVF above.
GRAPH_MAX_VECTORS = 250_000
# Neighbours per node (M). 64 rather than 32: a graph with more links reaches a query's neighbours in
# fewer steps, so as much recall needs under a third of the search depth (~50k vectors a space of the
# bench corpus, 150 real queries each, one thread; recall@10 against exact search): M 32 at efSearch 512
# 0.989 (zh) / 0.997 (en) in 1.95 / 2.57 ms, M 64 at 160 0.993 / 0.999 in 1.56 / 1.50 ms (at 128: 0.990 /
# 0.999 in 1.32 / 1.22 ms, but recall@100, fusion's depth, 0.970 / 0.987 against 0.974 / 0.994). It costs
# twice the build time (~0.75 CPU-s per 1k vectors) and 256 B more per vector.
HNSW_NEIGHBOURS = 64
HNSW_BUILD_DEPTH = 80  # efConstruction
# efSearch by a graph's M, so a graph built before M was 64 keeps the depth its recall was measured at
# (queries sit farther from passages than passages from each other, hence deeper than k)
HNSW_SEARCH_DEPTH = {32: 512, 64: 160}

# k-means trains on at most this many vectors per list (FAISS's default, 256, makes training at 1M
# vectors take minutes on two cores; 64 costs no measurable recall after the exact re-rank).
TRAIN_POINTS_PER_LIST = 64


def search_one_query_per_thread() -> None:
    """Makes FAISS searches from the calling thread run without an OpenMP team (a thread initializer
    for query threads). FAISS parallelises over queries, so one query gains nothing from the team,
    while its threads spin after each search: measured on a 16k-passage index, 8.7 -> 5.0 ms of CPU
    per hybrid query, CPU that concurrent queries (`search serve`) need. Builds keep their team:
    the setting belongs to the thread that makes it."""
    faiss.omp_set_num_threads(1)


def ivf_lists(n: int) -> int:
    """Number of IVF lists for n vectors: ~4 sqrt(n) (FAISS's guidance), capped at 1024 so adding 1M
    vectors stays ~20 s on two cores, and at n/39 so k-means has enough points per list."""
    return int(min(max(4 * np.sqrt(n), 16), 1024, max(n // 39, 1)))


def ivf_probes(nlist: int) -> int:
    """Lists scanned per query: half of them. Queries sit farther from the passages than passages from
    each other, so their neighbours straddle lists. Real queries of the bench corpus (~29.6k vectors
    per model, ~688 lists): recall@10 0.966 / 0.972 (zh / en) at a third, 0.989 / 0.990 at half, search
    p50 about 3 ms either way (benchmarks/speed.py)."""
    return int(min(nlist, max(32, nlist // 2)))


def index_kind(n: int, exact_max: int | None = None, graph_max: int = GRAPH_MAX_VECTORS) -> str:
    """The kind of index (`DenseIndex.kind`) that `DenseIndex.build` makes for n vectors."""
    return "flat" if n <= (EXACT_MAX_VECTORS if exact_max is None else exact_max) else "hnsw" if n <= graph_max else "ivf-sq8+rerank"


def set_search_depth(graph: faiss.IndexHNSW) -> None:
    """efSearch for the graph's M (HNSW_SEARCH_DEPTH; the deepest for an M it does not list)."""
    graph.hnsw.efSearch = HNSW_SEARCH_DEPTH.get(graph.hnsw.nb_neighbors(1), max(HNSW_SEARCH_DEPTH.values()))


def search_parameters(index: faiss.Index, selector: faiss.IDSelector, allowed_share: float) -> faiss.SearchParameters:
    """Search parameters carrying `selector`, which lets `allowed_share` of the rows through, with the
    index's own search depth (nprobe, efSearch). A graph fills its candidate list only with the allowed
    rows it meets, so it is searched deeper by that share, up to twice its depth: bench corpus, zh, 10%
    / 30% of the rows allowed, recall@10 0.970 / 0.989 at M 64 and efSearch 160 (2.2 / 2.3 ms), 0.990 /
    0.995 at 320 (3.6 / 3.5 ms; a graph of M 32 at 512: 0.956 / 0.981 in 2.0 / 2.8 ms)."""
    if isinstance(index, faiss.IndexHNSW):
        depth = index.hnsw.efSearch
        return faiss.SearchParametersHNSW(sel=selector, efSearch=min(2 * depth, max(depth, round(depth / allowed_share))))
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        return faiss.SearchParameters(sel=selector)
    return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe, max_codes=ivf.max_codes)
