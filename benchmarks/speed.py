"""Speed and memory at scale, with the baselines run in the same process tree (issue #6).

Builds a mixed Chinese/English note corpus of --passages passages from real text (sentences of
../shared/eval and ../shared/seeds, re-packed with a seeded RNG), indexes it with `search index` and
prints, as a table and as JSON (also written to indexes/bench/speed.json):

* build time by stage, peak RSS of the build, index size on disk;
* corpus embedding throughput (passages/s, model tokens/s) of our Encoder and of plain
  sentence-transformers float32 on the same sample of passages, and their ratio;
* warm query latency p50/p95/p99 per mode over --queries eval queries (zh and en), query-process RSS;
* cold `search query` wall time (median of --cold-runs fresh processes, Chinese and English queries
  apart) and peak RSS;
* the rebuild job after editing one note: `search index` on the whole folder again, by stage;
* BM25 per-query time against rank-bm25 (BM25Okapi) on the same tokens;
* recall@10 of the approximate dense index against exact search on real query vectors, and the
  query process at 1M vectors (synthesised from the real vectors plus noise: embedding 1M passages
  does not fit the time).

Every measurement that loads models or indexes runs in a fresh subprocess (this script re-invoked with
--worker), so peak RSS is that process's own (os.wait4). Usage:
    python benchmarks/speed.py [--passages 100000] [--queries 300] [--cold-runs 5] [--million N]
    python benchmarks/speed.py --built indexes/r100k [--million 0]   # on an index built before
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from peak_memory import PeakSampler, high_water_bytes

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ZH_SETS = ("cmrc2018", "cmedqq", "oppo_xiaobu")
EN_SETS = ("scifact",)
SECTIONS_PER_NOTE = 5
ZH_SENTENCE = re.compile(r"[^。！？!?]+[。！？!?]?")
EN_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")
CJK = re.compile(r"[\u4e00-\u9fff]")


# ----- corpus -------------------------------------------------------------------------------------

def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def sentence_pools() -> tuple[list[str], list[str]]:
    """Chinese and English sentences of the shared collections and seed notes."""
    from search.text.language import detect_language

    zh, en = [], []
    for name in ZH_SETS:
        for row in read_jsonl(SHARED / "eval" / name / "corpus.jsonl"):
            zh.extend(s.strip() for s in ZH_SENTENCE.findall(row["text"]) if len(s.strip()) >= 4)
    for name in EN_SETS:
        for row in read_jsonl(SHARED / "eval" / name / "corpus.jsonl"):
            en.extend(s.strip() for s in EN_SENTENCE.split(f"{row['title']}. {row['text']}") if len(s.split()) >= 4)
    for path in sorted((SHARED / "seeds").glob("*.*")):
        if path.suffix in (".md", ".txt") and path.name != "README.md":
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.strip().lstrip("#>-* ").strip()
                if len(line) >= 8:
                    (zh if detect_language(line) == "zh" else en).append(line)
    return zh, en


def paragraph(rng: np.random.Generator, pool: list[str], zh: bool) -> str:
    """2-5 random sentences of one language, short enough to be one passage (< 200 model tokens)."""
    parts, size = [], 0
    for _ in range(int(rng.integers(2, 6))):
        sentence = pool[int(rng.integers(len(pool)))]
        cost = len(sentence) if zh else len(sentence.split())
        if parts and size + cost > (150 if zh else 100):
            break
        parts.append(sentence if zh or cost <= 100 else " ".join(sentence.split()[:100]))
        size += cost
    return ("" if zh else " ").join(parts)


def generate_corpus(folder: Path, passages: int, seed: int) -> int:
    """Write ceil(passages / 5) notes of 5 sections each under `folder`; returns the number of notes."""
    rng = np.random.default_rng(seed)
    zh, en = sentence_pools()
    shutil.rmtree(folder, ignore_errors=True)
    notes = -(-passages // SECTIONS_PER_NOTE)
    for i in range(notes):
        sub = folder / f"{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        lines = [f"# 笔记 {i}" if rng.random() < 0.5 else f"# Note {i}", ""]
        for j in range(min(SECTIONS_PER_NOTE, passages - i * SECTIONS_PER_NOTE)):
            is_zh = rng.random() < 0.5
            lines += [f"## {'第' + str(j + 1) + '节' if is_zh else 'Section ' + str(j + 1)}", "", paragraph(rng, zh if is_zh else en, is_zh), ""]
        (sub / f"note-{i:06d}.md").write_text("\n".join(lines), encoding="utf-8")
    return notes


def sample_queries(count: int, seed: int) -> list[str]:
    """Half Chinese, half English eval queries."""
    rng = np.random.default_rng(seed)
    zh = [row["text"] for name in ZH_SETS for row in read_jsonl(SHARED / "eval" / name / "queries.jsonl")]
    en = [row["text"] for name in EN_SETS for row in read_jsonl(SHARED / "eval" / name / "queries.jsonl")]
    picks = [zh[i] for i in rng.choice(len(zh), count - count // 2, replace=False)]
    picks += [en[i] for i in rng.choice(len(en), count // 2, replace=len(en) < count // 2)]
    rng.shuffle(picks)
    return picks


# ----- subprocesses with their own peak RSS -------------------------------------------------------

def run_measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run a command; returns (wall seconds, peak RSS in MB of that process, stdout)."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, env={**os.environ, **(env or {})}, cwd=ROOT)
        sampler = PeakSampler(process)
        _, status, _ = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        sampler.stop()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        stdout = out.read().decode("utf-8")
    if process.returncode != 0:
        raise SystemExit(f"failed ({process.returncode}): {' '.join(command)}")
    return seconds, sampler.peak_bytes / 2**20, stdout


def worker(name: str, payload: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `name` below in a fresh interpreter; its JSON answer plus its wall time and peak RSS."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as handle:
        json.dump(payload, handle, ensure_ascii=False)
    try:
        seconds, rss, stdout = run_measured([sys.executable, __file__, "--worker", name, handle.name], env)
    finally:
        os.unlink(handle.name)
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(process_seconds=round(seconds, 2), peak_rss_mb=round(rss, 1))
    return result


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {f"p{p}": round(float(np.percentile(ms, p)), 2) for p in (50, 95, 99)}


def self_rss_mb() -> float:
    """This process's peak RSS so far (see peak_memory for why not ru_maxrss)."""
    return high_water_bytes() / 2**20


# ----- workers (run in their own process) --------------------------------------------------------

def work_encode(payload: dict[str, Any]) -> dict[str, Any]:
    """Throughput of our Encoder, or of plain sentence-transformers float32 (the baseline)."""
    from search.embedding.encoder import Encoder
    from search.embedding.models import model_plan, resolve_model, space_for
    from search.embedding.spec import token_counter
    from search.text.language import detect_language

    plan = model_plan()
    groups: dict[str, list[str]] = {}
    for text in payload["texts"]:
        groups.setdefault(plan[space_for(plan, detect_language(text))], []).append(text)
    total_seconds, total_tokens, per_model = 0.0, 0, {}
    for name, texts in groups.items():
        if payload["baseline"]:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
            model = SentenceTransformer(resolve_model(name), device="cpu")  # float32

            def encode(batch: list[str]) -> Any:
                # sentence-transformers' own default batch size (32): what its users get
                return model.encode(batch, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            backend = "sentence-transformers fp32 (cpu)"
        else:
            encoder = Encoder(name)
            encode = encoder.encode
            backend = f"{encoder.backend} ({'cuda' if encoder.backend == 'torch-fp16' else 'cpu'})"  # fp16 only runs on CUDA
        encode(texts[:8])  # load and warm up outside the timing
        started = time.perf_counter()
        encode(texts)
        seconds = time.perf_counter() - started
        count = token_counter(name)
        tokens = sum(min(count(t), 512) for t in texts)
        per_model[name] = {"backend": backend, "passages": len(texts), "seconds": round(seconds, 2), "passages_per_s": round(len(texts) / seconds, 1), "tokens_per_s": round(tokens / seconds)}
        total_seconds += seconds
        total_tokens += tokens
    n = len(payload["texts"])
    return {"passages": n, "passages_per_s": round(n / total_seconds, 1), "tokens_per_s": round(total_tokens / total_seconds), "models": per_model}


def work_warm(payload: dict[str, Any]) -> dict[str, Any]:
    """Warm latency per mode in one long-lived query process that has read its index ahead into the page
    cache (as `search serve` does), then approximate-vs-exact recall@10."""
    import faiss

    from search import Engine
    from search.index.dense import DenseIndex
    from search.embedding.models import space_for
    from search.text.language import detect_language

    started = time.perf_counter()
    engine = Engine.open(payload["index"])
    open_seconds = time.perf_counter() - started
    started = time.perf_counter()
    read_ahead = {"bytes": engine.read_ahead()}  # as `search serve` does when it opens an index
    read_ahead["seconds"] = round(time.perf_counter() - started, 3)
    queries = payload["queries"]
    for mode in payload["modes"]:  # warm-up: models loaded, caches and pages touched
        for query in queries[:5]:
            engine.search(query, k=10, mode=mode)
    latency = {}
    for mode in payload["modes"]:
        engine.retriever.forget_query_vectors()  # each mode embeds its queries, whatever ran them before
        times = []
        for query in queries:
            started = time.perf_counter()
            engine.search(query, k=10, mode=mode)
            times.append(time.perf_counter() - started)
        latency[mode] = percentiles(times)
    rss = self_rss_mb()
    centring = {"centred_spaces": sorted(engine.retriever.centred), **paired_against(engine, payload["index"], queries, centring=0.0)}
    hub_rule = paired_against(engine, payload["index"], queries, hub_penalty=0.0)

    recall = {}
    for space, index in engine.backend.dense.items():
        mine = [q for q in queries if space_for(engine.plan, detect_language(q)) == space] or queries
        vectors = np.ascontiguousarray(index.vectors(), dtype=np.float32)
        if len(vectors) < 1000:
            continue
        approx = index if not index.exact else DenseIndex.build(vectors, index.ids, index.dim, exact_max=0)
        exact = faiss.IndexFlatIP(index.dim)
        exact.add(vectors)
        query_vectors = engine.retriever.encoders[space].encode(mine)
        _, truth = exact.search(query_vectors, 10)
        hits, times = [], []
        for vector, true_rows in zip(query_vectors, truth):
            started = time.perf_counter()
            ids, _ = approx.search(vector, engine.config.candidates)
            times.append(time.perf_counter() - started)
            hits.append(len(set(ids[:10].tolist()) & set(index.ids[true_rows].tolist())) / 10)
        kind = approx.kind
        if isinstance(approx.index, faiss.IndexHNSW):  # which graph: its recall and speed follow M and efSearch
            kind += f" (M {approx.index.hnsw.nb_neighbors(1)}, efSearch {approx.index.hnsw.efSearch})"
        recall[space] = {"vectors": len(vectors), "queries": len(mine), "built_index": f"{kind} (built for this test: the index is exact)" if index.exact else kind,
                         "recall@10": round(float(np.mean(hits)), 4), "approx_search_ms": percentiles(times)}
    return {"open_seconds": round(open_seconds, 3), "read_ahead": read_ahead, "latency_ms": latency, "rss_after_queries_mb": round(rss, 1), "dense_recall": recall,
            "centring": centring, "hub_rule": hub_rule}


def paired_against(engine: Any, index: str, queries: list[str], **baseline: Any) -> dict[str, Any]:
    """Warm hybrid latency of the default engine against one whose SearchConfig differs by `baseline`
    (a rule switched off), query by query in one process, alternating which goes first."""
    from search import Engine, SearchConfig

    other = Engine.open(index, config=SearchConfig(**baseline))
    for query in queries[:5]:
        other.search(query, k=10)
    engine.retriever.forget_query_vectors()
    times: dict[str, list[float]] = {"default": [], "baseline": []}
    for i, query in enumerate(queries):
        for name, which in sorted((("default", engine), ("baseline", other)), reverse=bool(i % 2)):
            started = time.perf_counter()
            which.search(query, k=10)
            times[name].append(time.perf_counter() - started)
    other.close()
    return {name: percentiles(seconds) for name, seconds in times.items()}


def work_bm25(payload: dict[str, Any]) -> dict[str, Any]:
    """Our BM25 top-k against rank-bm25's BM25Okapi on the same tokens."""
    from rank_bm25 import BM25Okapi

    from search.index.bm25 import BM25Index
    from search.index.facets import read_document_starts
    from search.index.folder import Generation
    from search.index.passage_store import read_tokens
    from search.text.tokenizing import tokenize

    generation = Generation(Path(payload["generation"]))
    tokens = read_tokens(generation)
    ours = BM25Index.load(generation.bm25_folder)  # passages alone, as rank-bm25 scores them
    starts = read_document_starts(generation)
    windowed = BM25Index.load(generation.bm25_folder, document_starts=starts) if starts is not None else None
    queries = [tokenize(q) for q in payload["queries"]]
    started = time.perf_counter()
    okapi = BM25Okapi(tokens, k1=ours.params.k1, b=ours.params.b)
    okapi_build = time.perf_counter() - started
    ours_times, okapi_times = [], []
    for query in queries:
        started = time.perf_counter()
        ours.top_k(query, 100)
        ours_times.append(time.perf_counter() - started)
    windows_times = []
    for query in queries if windowed is not None and windowed.windows is not None else []:
        started = time.perf_counter()
        windowed.top_k(query, 100)
        windows_times.append(time.perf_counter() - started)
    for query in queries[: payload["okapi_queries"]]:
        started = time.perf_counter()
        scores = okapi.get_scores(query)
        top = np.argpartition(-scores, min(100, len(scores) - 1))[:100]
        top[np.argsort(-scores[top])]
        okapi_times.append(time.perf_counter() - started)
    return {"ours_ms": percentiles(ours_times), "ours_with_windows_ms": percentiles(windows_times) if windows_times else None,
            "rank_bm25_ms": percentiles(okapi_times),
            "rank_bm25_build_seconds": round(okapi_build, 1), "rank_bm25_queries": len(okapi_times)}


def work_million(payload: dict[str, Any]) -> dict[str, Any]:
    """A query process over the 1M-vector dense index: encode each query, search, then recall@10."""
    from search.index.dense import DenseIndex
    from search.embedding.encoder import Encoder

    started = time.perf_counter()
    index = DenseIndex.load(Path(payload["prefix"]))
    open_seconds = time.perf_counter() - started
    encoder = Encoder(payload["model"])
    vectors = encoder.encode(payload["queries"][:5])  # model load outside the timing
    times, results, searched = [], [], []
    for query in payload["queries"]:
        started = time.perf_counter()
        vector = encoder.encode_query([query])[0]
        ids, _ = index.search(vector, 100)
        times.append(time.perf_counter() - started)
        results.append(ids[:10])
        searched.append(vector)
    rss = self_rss_mb()  # before the exact search below pages in every vector
    # exact neighbours of the very vectors searched: int8 activations are scaled per batch, so the
    # same query encoded in a batch moves slightly, enough to reorder near-ties among 1M vectors
    vectors = np.stack(searched)
    stored = index.vectors()
    best = np.full((len(vectors), 10), -np.inf, dtype=np.float32)
    rows = np.zeros((len(vectors), 10), dtype=np.int64)
    for start in range(0, len(stored), 100_000):  # exact top-10 in chunks of the memory map
        scores = vectors @ np.asarray(stored[start : start + 100_000]).T
        both = np.concatenate([best, scores], axis=1)
        both_rows = np.concatenate([rows, np.arange(start, start + scores.shape[1])[None].repeat(len(vectors), 0)], axis=1)
        keep = np.argsort(-both, axis=1)[:, :10]
        best, rows = np.take_along_axis(both, keep, 1), np.take_along_axis(both_rows, keep, 1)
    recall = np.mean([len(set(got.tolist()) & set(index.ids[true].tolist())) / 10 for got, true in zip(results, rows)])
    return {"open_seconds": round(open_seconds, 3), "embed_and_search_ms": percentiles(times),
            "rss_after_queries_mb": round(rss, 1), "recall@10": round(float(recall), 4)}


def work_products(payload: dict[str, Any]) -> dict[str, Any]:
    """One core's int8 and float32 product rates on this CPU's kernels: the ceiling of the embedding ratio."""
    from cpu_classes import product_rates

    return {name: round(rate, 1) for name, rate in product_rates().items()}


WORKERS = {"encode": work_encode, "products": work_products, "warm": work_warm, "bm25": work_bm25, "million": work_million}


# ----- the benchmark ------------------------------------------------------------------------------

def synthesise_million(source: np.ndarray, ids_count: int, prefix: Path, seed: int) -> dict[str, Any]:
    """1M unit vectors mixing two random real vectors plus noise, indexed and saved like a build's."""
    from search.index.dense import DenseIndex

    rng = np.random.default_rng(seed)
    dim = source.shape[1]
    vectors = np.empty((ids_count, dim), dtype=np.float32)
    for start in range(0, ids_count, 100_000):
        n = min(100_000, ids_count - start)
        mix = source[rng.integers(len(source), size=n)] + 0.5 * source[rng.integers(len(source), size=n)]
        mix += rng.normal(scale=0.4 / np.sqrt(dim), size=mix.shape).astype(np.float32)
        vectors[start : start + n] = mix / np.linalg.norm(mix, axis=1, keepdims=True)
    started = time.perf_counter()
    index = DenseIndex.build(vectors, np.arange(ids_count), dim)
    build = time.perf_counter() - started
    index.save(prefix)
    size = sum(p.stat().st_size for p in prefix.parent.glob(prefix.name + ".*"))
    return {"vectors": ids_count, "dim": dim, "build_seconds": round(build, 1), "size_bytes": size,
            "note": "vectors synthesised from the corpus's real vectors (two mixed plus noise): embedding 1M passages does not fit the time"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300, help="warm queries per mode (>= 200 for the issue's figures)")
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--embed-sample", type=int, default=1000, help="passages encoded by ours and by the baseline")
    parser.add_argument("--embed-rounds", type=int, default=5, help="alternating rounds of ours and the baseline on the sample")
    parser.add_argument("--embed-budget", type=float, default=870, help="seconds of corpus embedding allowed; fewer passages are indexed if the measured throughput needs more")
    parser.add_argument("--okapi-queries", type=int, default=50, help="queries timed on rank-bm25 (~0.1 s each at 100k)")
    parser.add_argument("--million", type=int, default=1_000_000, help="vectors of the synthetic dense index (0: skip)")
    parser.add_argument("--work", type=Path, default=ROOT / "indexes" / "bench")
    parser.add_argument("--built", type=Path, help="a folder holding corpus/ and index/ built before (by a run of this script, "
                        "or `search index`): measure queries and the re-index there, without building (no build figures)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, path = args.worker
        print(json.dumps(WORKERS[name](json.loads(Path(path).read_text(encoding="utf-8")))))
        return
    if not (SHARED / "eval").is_dir():
        raise SystemExit(f"needs the shared collections at {SHARED / 'eval'}")
    started_all = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": machine(), "notes": []}
    queries = sample_queries(args.queries, args.seed)

    # embedding throughput on a sample of the corpus's own passages: ours vs sentence-transformers
    generate_corpus(args.work / "sample", args.embed_sample, args.seed + 1)
    sample = [p.read_text(encoding="utf-8").split("\n\n")[2::2] for p in sorted((args.work / "sample").rglob("*.md"))]
    sample = [text for sections in sample for text in sections][: args.embed_sample]
    result["embedding"] = ours_against_baseline(sample, args.embed_rounds)
    result["products"] = worker("products", {})
    ours = result["embedding"]["ours"]
    from search.index.folder import IndexFolder

    if args.built:
        corpus, index = args.built / "corpus", args.built / "index"
        generation = IndexFolder(index).current()
        result["build"] = {"passages": generation.read_manifest()["passages"], "index_bytes": generation.size_bytes()}
        result["notes"].append(f"measured on {args.built}, built before: no build figures")
    else:
        corpus, index = args.work / "corpus", args.work / "index"
        result["build"] = build_measured(corpus, index, capped_passages(args, ours, result["notes"]), args.seed)
        generation = IndexFolder(index).current()

    # queries: warm per mode, then cold CLI runs
    result["warm"] = worker("warm", {"index": str(index), "queries": queries, "modes": ["hybrid", "bm25", "dense"]})
    result["cold_cli"] = {}
    chinese = [q for q in queries if CJK.search(q)][: args.cold_runs]
    english = [q for q in queries if not CJK.search(q)][: args.cold_runs]
    for label, mode, texts in (("hybrid zh", "hybrid", chinese), ("hybrid en", "hybrid", english), ("bm25", "bm25", queries[: args.cold_runs])):
        runs = [run_measured([sys.executable, "-m", "search.cli", "query", q, "--index", str(index), "--json", "--mode", mode]) for q in texts]
        result["cold_cli"][label] = {"runs": len(runs), "median_seconds": round(statistics.median(r[0] for r in runs), 3),
                                     "peak_rss_mb": round(max(r[1] for r in runs), 1)}
    result["one_file_reindex"] = reindex_one_file(corpus, index)
    result["bm25"] = worker("bm25", {"generation": str(generation.path), "queries": queries, "okapi_queries": args.okapi_queries})
    result["bm25"]["ratio_p50"] = round(result["bm25"]["rank_bm25_ms"]["p50"] / max(result["bm25"]["ours_ms"]["p50"], 1e-3), 1)

    # the query process at 1M vectors
    if args.million:
        from search.index.dense import DenseIndex

        spaces = generation.read_manifest()["models"]
        space = max(spaces, key=lambda s: len(DenseIndex.load(generation.dense_prefix(s))))
        real = np.ascontiguousarray(DenseIndex.load(generation.dense_prefix(space)).vectors(), dtype=np.float32)
        prefix = args.work / "million" / f"dense-{space}"
        prefix.parent.mkdir(parents=True, exist_ok=True)
        million = synthesise_million(real, args.million, prefix, args.seed)
        del real
        mine = [q for q in queries if (space == "zh") == bool(CJK.search(q))] or queries
        million.update(worker("million", {"prefix": str(prefix), "model": spaces[space]["name"], "queries": mine}))
        result["million"] = million
        shutil.rmtree(prefix.parent, ignore_errors=True)
    result["total_minutes"] = round((time.perf_counter() - started_all) / 60, 1)
    (args.work / "speed.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    print_table(result)
    print(json.dumps(result, ensure_ascii=False))


def ours_against_baseline(sample: list[str], rounds: int) -> dict[str, Any]:
    """Our encoder and sentence-transformers float32 on the same passages, alternating for `rounds`
    rounds so that a machine whose speed drifts (a shared VM) slows both alike; the ratio is the
    median of each round's pair, and each side's run shown is its median round."""
    ours, baseline = [], []
    for _ in range(rounds):
        ours.append(worker("encode", {"texts": sample, "baseline": False}))
        baseline.append(worker("encode", {"texts": sample, "baseline": True}, env={"SEARCH_BACKEND": "torch"}))
    ratios = [round(a["passages_per_s"] / b["passages_per_s"], 2) for a, b in zip(ours, baseline)]
    median = lambda runs: sorted(runs, key=lambda run: run["passages_per_s"])[len(runs) // 2]
    return {"ours": median(ours), "sentence_transformers_fp32": median(baseline), "ratio": statistics.median(ratios), "round_ratios": ratios}


def capped_passages(args: argparse.Namespace, ours: dict[str, Any], notes: list[str]) -> int:
    """--passages, or fewer when embedding them would take longer than --embed-budget."""
    passages = args.passages
    fits = int(ours["passages_per_s"] * args.embed_budget) // 1000 * 1000
    if fits < passages:
        notes.append(f"{passages} passages would take ~{passages / ours['passages_per_s'] / 60:.0f} min to embed at "
                     f"{ours['passages_per_s']} passages/s; indexed {max(fits, 1000)} (--embed-budget {args.embed_budget:.0f} s)")
        passages = max(fits, 1000)
    return passages


def build_measured(corpus: Path, index: Path, passages: int, seed: int) -> dict[str, Any]:
    """Generate the corpus and index it from scratch in a new process: time by stage, peak RSS, size."""
    from search.index.folder import IndexFolder

    files = generate_corpus(corpus, passages, seed)
    seconds, rss, stdout = run_measured([sys.executable, "-m", "search.cli", "index", str(corpus), "--index", str(index), "--rebuild", "--json"])
    summary = json.loads(stdout.strip().splitlines()[-1])
    build = {"passages": summary["passages"], "files": files, "wall_seconds": round(seconds, 1), "stage_seconds": summary.get("stage_seconds"),
             "peak_rss_mb": round(rss, 1), "index_bytes": IndexFolder(index).current().size_bytes()}
    embed_seconds = (summary.get("stage_seconds") or {}).get("embed")
    if embed_seconds:
        build["embed_passages_per_s"] = round(summary["passages_embedded"] / embed_seconds, 1)
    return build


def reindex_one_file(corpus: Path, index: Path) -> dict[str, Any]:
    """The rebuild job's everyday case: one note gains a paragraph, then `search index` runs on the
    whole folder again (the edit stays, so the index and the corpus agree afterwards)."""
    notes = sorted(corpus.rglob("*.md"))
    note = notes[len(notes) // 2]
    note.write_text(note.read_text(encoding="utf-8") + "\n\n编辑后新增的一段：序列并行沿序列维度切分注意力的计算。\n", encoding="utf-8")
    seconds, rss, stdout = run_measured([sys.executable, "-m", "search.cli", "index", str(corpus), "--index", str(index), "--json"])
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_seconds": round(seconds, 2), "peak_rss_mb": round(rss, 1), "files_changed": summary["files_changed"],
            "passages_embedded": summary["passages_embedded"], "passages_reused": summary["passages_reused"],
            "stage_seconds": summary.get("stage_seconds")}


def machine() -> dict[str, Any]:
    """The machine, with the instruction sets its int8 kernels dispatch on (CPUID, masked under
    --emulate-style runs) and the flags /proc/cpuinfo lists."""
    from cpu_classes import cpu_class, cpuid_features, emulation, export_file_here, proc_cpuinfo_flags

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(), "cpuinfo_flags": proc_cpuinfo_flags(),
            "cpu_class": cpu_class(cpuid_features()) + (f" ({emulation()})" if emulation() else ""),
            "int8_export_file": export_file_here()}


def print_table(r: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str, str]] = []
    build, warm = r["build"], r["warm"]
    rows.append(("passages indexed", f"{build['passages']}", "", ""))
    if "wall_seconds" in build:  # not with --built
        rows.append(("build wall", f"{build['wall_seconds']} s", "", ""))
        for stage, seconds in (build.get("stage_seconds") or {}).items():
            rows.append((f"  stage {stage}", f"{seconds} s", "", ""))
        rows.append(("build peak RSS", f"{build['peak_rss_mb']:.0f} MB", "", ""))
    rows.append(("index size on disk", f"{build['index_bytes'] / 1e6:.1f} MB", "", ""))
    emb = r["embedding"]
    backends = lambda run: ", ".join(sorted({m["backend"] for m in run["models"].values()}))
    rows.append(("embedding backend", backends(emb["ours"]), backends(emb["sentence_transformers_fp32"]), ""))
    rows.append(("embedding passages/s (sample)", f"{emb['ours']['passages_per_s']}", f"{emb['sentence_transformers_fp32']['passages_per_s']} (ST fp32)",
                 f"{emb['ratio']}x (rounds {', '.join(map(str, emb['round_ratios']))})"))
    for model, run in emb["ours"]["models"].items():
        theirs = emb["sentence_transformers_fp32"]["models"][model]["passages_per_s"]
        rows.append((f"  {model} passages/s ({run['passages']})", f"{run['passages_per_s']}", f"{theirs}", f"{run['passages_per_s'] / theirs:.2f}x"))
    rates = r["products"]
    int8_rate, float_rate = rates["int8 (onnxruntime u8 x s8)"], rates["float32 (torch)"]
    rows.append(("one core's products, 10^9 multiply-adds/s", f"{int8_rate} (int8)", f"{float_rate} (torch fp32)",
                 f"{int8_rate / float_rate:.2f}x: the int8 kernels' own ceiling"))
    rows.append(("embedding tokens/s (sample)", f"{emb['ours']['tokens_per_s']}", f"{emb['sentence_transformers_fp32']['tokens_per_s']} (ST fp32)",
                 f"{emb['ours']['tokens_per_s'] / emb['sentence_transformers_fp32']['tokens_per_s']:.2f}x"))
    if "embed_passages_per_s" in build:
        rows.append(("embedding passages/s (full build)", f"{build['embed_passages_per_s']}", "", ""))
    for mode, ms in warm["latency_ms"].items():
        rows.append((f"warm {mode} p50/p95/p99", f"{ms['p50']}/{ms['p95']}/{ms['p99']} ms", "", ""))
    rows.append(("warm query process RSS", f"{warm['rss_after_queries_mb']:.0f} MB", "", ""))
    rows.append(("index read ahead at open (as serve does)", f"{warm['read_ahead']['bytes'] / 2**20:.0f} MB in {warm['read_ahead']['seconds']} s", "", ""))
    centring = warm["centring"]
    rows.append((f"warm hybrid p50, centred ({', '.join(centring['centred_spaces']) or 'no space'}) vs raw cosines", f"{centring['default']['p50']} ms",
                 f"{centring['baseline']['p50']} ms (raw)", f"{centring['default']['p50'] / centring['baseline']['p50']:.2f}x"))
    hub_rule = warm["hub_rule"]
    rows.append(("warm hybrid p50, with vs without the hub rule", f"{hub_rule['default']['p50']} ms", f"{hub_rule['baseline']['p50']} ms (without)",
                 f"{hub_rule['default']['p50'] / hub_rule['baseline']['p50']:.2f}x"))
    for mode, cold in r["cold_cli"].items():
        rows.append((f"cold `search query` {mode} (median of {cold['runs']})", f"{cold['median_seconds']} s", "", ""))
        rows.append((f"cold `search query` {mode} peak RSS", f"{cold['peak_rss_mb']:.0f} MB", "", ""))
    re_index = r["one_file_reindex"]
    rows.append(("re-index after editing one note", f"{re_index['wall_seconds']} s", "", f"{re_index['passages_embedded']} embedded, {re_index['passages_reused']} reused"))
    for stage, seconds in (re_index.get("stage_seconds") or {}).items():
        rows.append((f"  stage {stage}", f"{seconds} s", "", ""))
    bm = r["bm25"]
    rows.append(("BM25 top-100 per query p50", f"{bm['ours_ms']['p50']} ms", f"{bm['rank_bm25_ms']['p50']} ms (rank-bm25)", f"{bm['ratio_p50']}x faster"))
    if bm.get("ours_with_windows_ms"):
        rows.append(("  with each passage's window field", f"{bm['ours_with_windows_ms']['p50']} ms", "", ""))
    for space, rec in warm["dense_recall"].items():
        rows.append((f"dense {space} recall@10 vs exact ({rec['vectors']} vectors)", f"{rec['recall@10']}", "", f"built: {rec['built_index']}"))
    if "million" in r:
        m = r["million"]
        rows.append(("1M synthetic vectors: build IVF", f"{m['build_seconds']} s", "", ""))
        rows.append(("1M: embed+search p50/p95", f"{m['embed_and_search_ms']['p50']}/{m['embed_and_search_ms']['p95']} ms", "", ""))
        rows.append(("1M: query process RSS", f"{m['rss_after_queries_mb']:.0f} MB", "", ""))
        rows.append(("1M: recall@10 vs exact", f"{m['recall@10']}", "", ""))
    width = [max(len(row[i]) for row in rows) for i in range(4)]
    print(f"\nmachine: {r['machine']['cpu']}, {r['machine']['cores']} cores, {r['machine']['memory_gb']} GB; total {r['total_minutes']} min")
    print(f"cpu flags: {' '.join(r['machine']['cpuinfo_flags'])}; int8 kernels: {r['machine']['cpu_class']}; runs {r['machine'].get('int8_export_file', '?')}")
    for row in [("figure", "ours", "baseline", "ratio"), tuple("-" * w for w in width), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, width)).rstrip())
    for note in r["notes"] + ([r["million"]["note"]] if "million" in r else []):
        print(f"note: {note}")


if __name__ == "__main__":
    main()
