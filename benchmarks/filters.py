"""What a filter costs per query: building the allowed-passage mask, and dense search among allowed rows.

Synthetic data, no models: --files notes of --per-file passages each (paths in two folders, tags in
front matter), and a flat FAISS index of random unit vectors of --dim dimensions. For each share of
allowed rows it times FAISS with an IDSelectorBitmap ("selector", what a flat index uses) and scoring
the allowed rows directly ("exact rows"), against the unfiltered search; then the recall of filtered
searches on the HNSW tier (random vectors, a hard case), which is why small allowed sets are scored
directly there. Usage:
    python benchmarks/filters.py [--files 20000] [--per-file 5] [--dim 512]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from search.index.dense import DenseIndex
from search import Filters
from search.index.facets import Facets, facet_rows
from search.schema import Passage


def median_ms(call, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def bench_masks(files: int, per_file: int) -> None:
    passages = (
        Passage(
            path=f"/home/u/kb/{'notes' if i % 3 else 'other'}/sub{i % 50}/note-{i}.{'md' if i % 4 else 'txt'}",
            text="",
            metadata={"tags": [f"tag{i % 20}", "机器学习" if i % 7 == 0 else "其他"]},
        )
        for i in range(files)
        for _ in range(per_file)
    )
    started = time.perf_counter()
    facets = Facets(*facet_rows(passages))
    built = (time.perf_counter() - started) * 1000
    loaded = median_ms(lambda: Facets(facets.rows, facets.passage_row), 3)  # what a query pays on opening
    print(f"facets: {files} files, {len(facets)} passages; from passages {built:.0f} ms, from the stored table {loaded:.0f} ms")
    cases = {
        "--tag 机器学习": Filters(tags=["机器学习"]),
        "--type md": Filters(types=["md"]),
        "--path notes/**": Filters(paths=["notes/**"]),
        "--path notes/** --path '*.txt' --tag 机器学习": Filters(paths=["notes/**", "*.txt"], tags=["机器学习"]),
    }
    for name, filters in cases.items():
        fresh = [Facets(facets.rows, facets.passage_row) for _ in range(3)]  # no cached path masks
        first = median_ms(lambda: filters.mask(fresh.pop()), 3)
        again = median_ms(lambda: filters.mask(facets), 20)
        print(f"  mask {name:<45} first {first:8.1f} ms   repeated {again:6.2f} ms   allows {int(filters.mask(facets).sum())}")


def unit_vectors(rng, rows: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def bench_dense(rows: int, dim: int, k: int) -> None:
    """Flat index: the selector (what DenseIndex.search uses) against scoring the allowed rows directly."""
    rng = np.random.default_rng(0)
    index = DenseIndex.build(unit_vectors(rng, rows, dim), np.arange(rows), dim)
    queries = iter(unit_vectors(rng, 1000, dim))
    full = median_ms(lambda: index.search(next(queries), k), 10)
    print(f"dense: {rows} x {dim} flat, k={k}; unfiltered search {full:.1f} ms")
    print(f"  {'allowed':>9} {'rows':>8} {'selector ms':>12} {'exact rows ms':>14}")
    for share in (0.001, 0.01, 0.05, 0.1, 0.2, 0.5):
        allowed = np.sort(rng.choice(rows, int(rows * share), replace=False))
        selector = median_ms(lambda: index.search(next(queries), k, allowed_rows=allowed), 10)
        exact = median_ms(lambda: index._search_rows(next(queries).reshape(1, -1), min(k, len(allowed)), allowed), 10)
        print(f"  {share:>9.1%} {len(allowed):>8} {selector:>12.1f} {exact:>14.1f}")


def bench_hnsw_recall(rows: int, dim: int, k: int) -> None:
    """The HNSW tier as built for a model's passages: recall@k of a filtered search against the exact
    top k, by share of allowed rows; through the selector alone, and as DenseIndex.search does it
    (allowed sets up to EXACT_FILTER_ROWS scored directly). Random vectors are a hard case for a graph."""
    rng = np.random.default_rng(1)
    vectors = unit_vectors(rng, rows, dim)
    started = time.perf_counter()
    index = DenseIndex.build(vectors, np.arange(rows), dim, exact_max=0)
    built = time.perf_counter() - started
    queries = unit_vectors(rng, 20, dim)
    graph = index.index.hnsw
    print(f"{index.kind}: {rows} x {dim}, built in {built:.1f} s, efSearch={graph.efSearch}, k={k}: recall@k of a filtered search")
    print(f"    {'allowed':>9} {'rows':>8} {'selector':>9} {'as searched':>12}")
    for share in (0.001, 0.01, 0.1, 0.5, 1.0):
        allowed = np.sort(rng.choice(rows, max(k, int(rows * share)), replace=False))
        truths = [set(allowed[np.argsort(-(vectors[allowed] @ query))[:k]].tolist()) for query in queries]
        recall = {}
        for name, direct_up_to in (("selector", 0), ("as searched", DenseIndex.EXACT_FILTER_ROWS)):
            index.EXACT_FILTER_ROWS = direct_up_to
            found = [index.search(query, k, allowed)[0] for query in queries]
            recall[name] = statistics.mean(len(truth & set(ids.tolist())) / k for truth, ids in zip(truths, found))
        del index.EXACT_FILTER_ROWS  # back to the class default
        print(f"    {share:>9.1%} {len(allowed):>8} {recall['selector']:>9.3f} {recall['as searched']:>12.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--per-file", type=int, default=5)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("-k", type=int, default=100)
    args = parser.parse_args()
    bench_masks(args.files, args.per_file)
    bench_dense(args.files * args.per_file, args.dim, args.k)
    bench_hnsw_recall(50_000, 64, 10)


if __name__ == "__main__":
    main()
