"""What re-reading a query across languages costs (issue #16): warm query latency with the
multilingual re-read (search.query.rerank) against the same engine without it, in one process.

Three cases, each on an index of ../shared/eval (built once by `search eval`, cached in indexes/eval):
* short passages, zh -> en: xling_zh2en's Chinese queries on its 10,000 English sentences;
* short passages, en -> zh: xling_en2zh's English queries on its Chinese sentences;
* long passages, zh -> en: the same Chinese queries on SciFact's 5,183 English abstracts (~300 word
  pieces each: the token budget, not the depth, bounds what is re-read). Not judged: timing only.

Per case: p50/p95 of `engine.search(query, k=10)` in hybrid mode (query vectors forgotten between
runs) with the re-read off (the baseline), on with every passage embedded afresh (the first query
over those passages), and on with the passages' vectors kept from an earlier query (a server or an
eval run); the passages and word pieces re-read per query; and a one-language query's latency with
the re-read on (it must not change) and with `--reread always` (its passages embedded afresh). Usage:
    python benchmarks/cross_lingual.py [--queries 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "eval"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = (  # name, index of this set, queries of this set, one-language queries for the same index
    ("short passages, zh -> en", "xling_zh2en", "xling_zh2en", "xling_en2zh"),
    ("short passages, en -> zh", "xling_en2zh", "xling_en2zh", "xling_zh2en"),
    ("long passages, zh -> en", "scifact", "xling_zh2en", "scifact"),
)


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"p50": round(statistics.median(ordered) * 1000, 1), "p95": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 1)}


def timed(engine, queries: list[str], before_each=None) -> dict[str, float]:
    times = []
    for query in queries:
        engine.retriever.forget_query_vectors()
        if before_each:
            before_each()
        started = time.perf_counter()
        engine.search(query, k=10)
        times.append(time.perf_counter() - started)
    return percentiles_ms(times)


def reread_sizes(engine, queries: list[str]) -> dict[str, float]:
    """Passages and word pieces re-read per query (the budget's cut), from the same steps search takes."""
    from search import SearchConfig
    from search.embedding.spec import token_counter
    from search.text.passages import contextual_text

    count = token_counter(engine.config.rerank_model)
    passages, tokens = [], []
    for query in queries:
        retrieval = engine.retrieve(engine.analyse(query))
        fused = engine.rank(retrieval, config=SearchConfig(rerank_model=None))
        reread = engine.reranker.rerank(retrieval, fused, engine.config)
        texts = [contextual_text(p) for p in engine.passages.get_many(list(reread.cosines))]
        passages.append(len(texts))
        tokens.append(sum(count(text) + 2 for text in texts))
    return {"passages": round(statistics.mean(passages), 1), "word_pieces": round(statistics.mean(tokens))}


def run_case(name: str, index_set: str, query_set: str, same_language_set: str, count: int) -> dict[str, Any]:
    from search import Engine, SearchConfig
    from search.evaluation import load_collection, open_eval_index

    queries = list(load_collection(SHARED / query_set).queries.values())[:count]
    own = list(load_collection(SHARED / same_language_set).queries.values())[-count:]
    with open_eval_index(load_collection(SHARED / index_set)) as engine, \
            Engine.open(engine.folder.root, config=SearchConfig(reread="never")) as baseline, \
            Engine.open(engine.folder.root, config=SearchConfig(reread="always")) as always:
        for query in queries[:5] + own[:5]:  # models loaded, pages touched
            for warmed in (engine, baseline, always):
                warmed.search(query, k=10)
        off = timed(baseline, queries)
        fresh = timed(engine, queries, engine.reranker.forget_vectors)
        engine.reranker.forget_vectors()
        for query in queries:
            engine.search(query, k=10)
        kept = timed(engine, queries)
        one_language_off, one_language_on = timed(baseline, own), timed(engine, own)
        always_fresh = timed(always, own, always.reranker.forget_vectors)
        assert engine.search(queries[0], k=10).reread_by == engine.config.rerank_model
        sizes = reread_sizes(engine, queries)
    return {"case": name, "index": index_set, "passages": len(engine.passages), "queries": len(queries), "reread_per_query": sizes,
            "ms": {"fused only": off, "re-read, passages embedded afresh": fresh, "re-read, passage vectors kept": kept,
                   "one-language query, re-read off": one_language_off, "one-language query, re-read on": one_language_on,
                   "one-language query, --reread always": always_fresh},
            "ratio_p50": {"afresh": round(fresh["p50"] / off["p50"], 1), "kept": round(kept["p50"] / off["p50"], 1),
                          "one-language": round(one_language_on["p50"] / one_language_off["p50"], 2),
                          "always": round(always_fresh["p50"] / one_language_off["p50"], 1)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    missing = [s for _, index_set, query_set, _ in CASES for s in (index_set, query_set) if not (SHARED / s).is_dir()]
    if missing:
        print(f"skipped: {SHARED} lacks {', '.join(sorted(set(missing)))}")
        return
    from speed import machine

    from search import SearchConfig

    config = SearchConfig()
    report = {"machine": machine(), "reranker": {"model": config.rerank_model, "depth": config.rerank_depth, "tokens": config.rerank_tokens,
                                                 "weight": config.rerank_weight, "same_language_weight": config.same_language_rerank_weight,
                                                 "threads": os.cpu_count()},
              "cases": [run_case(*case, args.queries) for case in CASES]}
    print(f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, flags {' '.join(report['machine']['cpuinfo_flags'])}"
          f" ({report['machine']['cpu_class']})")
    print(f"re-read by {config.rerank_model}: best {config.rerank_depth} candidates within {config.rerank_tokens} word pieces, weight {config.rerank_weight}")
    for case in report["cases"]:
        sizes = case["reread_per_query"]
        print(f"\n{case['case']} ({case['index']}, {case['passages']} passages, {case['queries']} queries; "
              f"{sizes['passages']} passages / {sizes['word_pieces']} word pieces re-read per query)")
        for label, figures in case["ms"].items():
            print(f"  {label:<40} p50 {figures['p50']:>7.1f} ms   p95 {figures['p95']:>7.1f} ms")
        ratio = case["ratio_p50"]
        print(f"  p50 against fused only: afresh {ratio['afresh']}x, kept {ratio['kept']}x; one-language query {ratio['one-language']}x,"
              f" with --reread always {ratio['always']}x (passages embedded afresh)")
    if args.json:
        args.json.write_text(json.dumps(report, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
