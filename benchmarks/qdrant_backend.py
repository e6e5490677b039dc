"""The Qdrant backend beside the default one (issue 15): build and query figures on the bench corpus.

Generates the bench corpus of --passages passages (benchmarks/speed.py's generator: real sentences of
../shared/eval and ../shared/seeds), then

1. builds the default index (FAISS + BM25 in the index folder) with `search index`; with
   --vectors-from, on a copy of that built index (the generator is seeded, so a 68k bench index holds
   the first 68k passages of the 100k corpus: their vectors are reused by text, only the rest embedded);
2. moves a copy of it to Qdrant (`search index --backend qdrant --qdrant-edge DIR`, or --qdrant-path
   with --engine local): nothing is embedded again, so the time is the backend's own (point ids, BM25
   weights, upserts) plus writing the new generation;
3. times an incremental build after editing one note, on each;
4. measures warm query latency per mode on each in one long-lived process (--queries eval queries),
   and how many of the top-10 hits agree.

Every step runs in its own process (wall time and peak RSS). Prints a table and JSON (also written to
WORK/qdrant_backend.json). Qdrant Edge is Qdrant's engine in process; local mode is qdrant-client's
pure-Python engine (1.6 s a BM25 query at 10k points: keep it to small corpora).
Usage: python benchmarks/qdrant_backend.py [--passages 100000] [--queries 100] [--engine edge|local]
       [--vectors-from indexes/bench/index] [--keyword-only]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import ROOT, generate_corpus, machine, percentiles, run_measured, sample_queries  # noqa: E402

SEARCH = str(Path(sys.executable).parent / "search")
OPTION = {"edge": "--qdrant-edge", "local": "--qdrant-path"}
LABEL = {"edge": "qdrant (Qdrant Edge)", "local": "qdrant (local mode)"}


def folder_bytes(folder: Path) -> int:
    """Bytes allocated on disk (Qdrant Edge preallocates sparse 32 MiB files: their size is not their cost)."""
    return sum(path.stat().st_blocks * 512 for path in folder.rglob("*") if path.is_file())


def build(args: list[str]) -> dict[str, Any]:
    seconds, rss, stdout = run_measured([SEARCH, "index", *args, "--json"])
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(rss, 1), "embedded": summary["passages_embedded"],
            "reused": summary["passages_reused"], "passages": summary["passages"], "stages": summary.get("stage_seconds", {})}


def work_queries(payload: dict[str, Any]) -> dict[str, Any]:
    """Warm latency per mode, and the top 10 of every query (compared across backends by the parent)."""
    from search import Engine

    started = time.perf_counter()
    engine = Engine.open(payload["index"])
    opened = time.perf_counter() - started
    latency, tops = {}, {}
    for mode in payload["modes"]:
        engine.search(payload["queries"][0], k=10, mode=mode)  # warm-up: models loaded
        times = []
        for query in payload["queries"]:
            started = time.perf_counter()
            hits = engine.search(query, k=10, mode=mode).hits
            times.append(time.perf_counter() - started)
            tops[f"{mode}\0{query}"] = [hit.passage_id for hit in hits]
        latency[mode] = percentiles(times)
    engine.close()
    return {"open_seconds": round(opened, 2), "latency_ms": latency, "tops": tops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--keyword-only", action="store_true", help="BM25 only (no embedding: the 100k corpus builds in minutes)")
    parser.add_argument("--engine", choices=sorted(OPTION), default="edge", help="the local Qdrant: Qdrant Edge, or qdrant-client's local mode")
    parser.add_argument("--vectors-from", type=Path, help="a built default index of the same models to start from (copied, never modified)")
    parser.add_argument("--work", type=Path, default=ROOT / "indexes" / "bench-qdrant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(work_queries(json.loads(Path(args.worker[1]).read_text(encoding="utf-8"))), ensure_ascii=False))
        return
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    corpus, default, moved, store = work / "corpus", work / "default", work / "qdrant", work / f"qdrant-{args.engine}"
    generate_corpus(corpus, args.passages, args.seed)
    extra = ["--keyword-only"] if args.keyword_only else []
    result: dict[str, Any] = {"passages": args.passages, "keyword_only": args.keyword_only, "queries": args.queries, "engine": args.engine,
                              "vectors_from": str(args.vectors_from) if args.vectors_from else None, "machine": machine()}
    if args.vectors_from:
        shutil.copytree(args.vectors_from, default)
    result["default_build"] = build([str(corpus), "--index", str(default), *extra])
    shutil.copytree(default, moved)
    result["qdrant_move"] = build([str(corpus), "--index", str(moved), "--backend", "qdrant", OPTION[args.engine], str(store)])
    note = next(corpus.rglob("*.md"))
    note.write_text(note.read_text(encoding="utf-8") + "\n\n## 新的一节\n\n序列并行沿序列维度切分输入。\n", encoding="utf-8")
    result["default_incremental"] = build([str(corpus), "--index", str(default)])
    result["qdrant_incremental"] = build([str(corpus), "--index", str(moved)])
    result["default_bytes"] = folder_bytes(default)
    result["qdrant_bytes"] = {"index_folder": folder_bytes(moved), "local_store": folder_bytes(store)}
    if args.engine == "edge":  # the store keeps the live generation's shard and the previous one's
        from search.index.folder import IndexFolder

        live = IndexFolder(moved).current().read_manifest()["backend"]["target"]
        result["qdrant_bytes"]["live_shard"] = folder_bytes(store / live)
    modes = ["bm25"] if args.keyword_only else ["bm25", "dense", "hybrid"]
    queries = sample_queries(args.queries, args.seed)
    runs = {name: worker_queries(folder, queries, modes) for name, folder in (("default", default), ("qdrant", moved))}
    same = [runs["default"]["tops"][key] == runs["qdrant"]["tops"][key] for key in runs["default"]["tops"]]
    result["top10_identical_share"] = round(sum(same) / len(same), 4)
    for name, run in runs.items():
        result[f"{name}_queries"] = {key: value for key, value in run.items() if key != "tops"}
    (work / "qdrant_backend.json").write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    print_table(result)
    print(json.dumps(result, ensure_ascii=False))


def worker_queries(folder: Path, queries: list[str], modes: list[str]) -> dict[str, Any]:
    """work_queries in a fresh process (this script with --worker), with its wall time and peak RSS."""
    payload = folder.parent / f"{folder.name}-queries.json"
    payload.write_text(json.dumps({"index": str(folder), "queries": queries, "modes": modes}, ensure_ascii=False), encoding="utf-8")
    seconds, rss, stdout = run_measured([sys.executable, __file__, "--worker", "queries", str(payload)])
    return {**json.loads(stdout.strip().splitlines()[-1]), "process_seconds": round(seconds, 2), "peak_rss_mb": round(rss, 1)}


def print_table(r: dict[str, Any]) -> None:
    built = r["default_build"]
    stores = r["qdrant_bytes"]
    store = f"{stores['local_store'] / 1e6:.1f} store" + (f" ({stores['live_shard'] / 1e6:.1f} live shard)" if "live_shard" in stores else "")
    rows = [("full build (s)", built["seconds"], f"+{r['qdrant_move']['seconds']} (move: {r['qdrant_move']['stages'].get('backend', '?')} s mirror, 0 embedded)"),
            ("  passages embedded / reused", f"{built['embedded']} / {built['reused']}", ""),
            ("build peak RSS (MB)", built["peak_rss_mb"], r["qdrant_move"]["peak_rss_mb"]),
            ("incremental, one note edited (s)", r["default_incremental"]["seconds"],
             f"{r['qdrant_incremental']['seconds']} ({r['qdrant_incremental']['stages'].get('backend', '?')} s mirror)"),
            ("on disk (MB)", round(r["default_bytes"] / 1e6, 1), f"{stores['index_folder'] / 1e6:.1f} folder + {store}"),
            ("open (s)", r["default_queries"]["open_seconds"], r["qdrant_queries"]["open_seconds"])]
    for mode, figures in r["default_queries"]["latency_ms"].items():
        other = r["qdrant_queries"]["latency_ms"][mode]
        rows.append((f"{mode} query p50 / p95 (ms)", f"{figures['p50']} / {figures['p95']}", f"{other['p50']} / {other['p95']}"))
    rows.append(("identical top 10", "", f"{r['top10_identical_share']:.0%} of queries"))
    print(f"{r['passages']} passages{' (keyword-only)' if r['keyword_only'] else ''}, {r['queries']} queries")
    print(f"{'':36}{'default (embedded)':>22}  {LABEL[r['engine']]}")
    for name, left, right in rows:
        print(f"{name:36}{str(left):>22}  {right}")


if __name__ == "__main__":
    main()
