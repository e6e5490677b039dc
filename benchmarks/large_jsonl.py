"""Indexing a large JSONL of instruction records in bounded memory (`make bench-large`, not part of `make bench`).

Generates a seeded JSONL of Alpaca/BELLE-like records ({"instruction", "input", "output"}) whose Chinese and
English sentences are re-packed from the ../shared/eval corpora, indexes it keyword-only in a subprocess
(`search index FILE --keyword-only`), and prints file size, records, passages, wall time by stage,
passages/s, peak RSS, index size and query latencies; first for a small file, then for the large one, so
growth of memory with size is visible. Usage:
    python benchmarks/large_jsonl.py [--size 1024] [--small 100] [--json] [--workdir indexes/bench-large]

Peak RSS is reported two ways: the index process's own peak (VmHWM, see peak_memory.py) and the peak of
the whole process tree's summed RSS (index process + chunking/tokenizing pool), sampled every 0.2 s.
The target (1.5 GB) is checked against the tree's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from peak_memory import PeakSampler

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "eval"
SEARCH = str(Path(sys.executable).parent / "search")
TARGET_RSS_BYTES = 1.5 * 2**30
QUERIES = ["糖尿病能根治吗", "音乐推荐", "white matter diffusion imaging", "注意力机制 transformer", "蛋白质 结构 protein folding"]
_SENTENCE_END = re.compile(r"(?<=[。！？!?])|(?<=\.)\s+")

def sentence_pool() -> tuple[list[str], list[str]]:
    """Chinese and English sentences of the eval corpora."""
    chinese, english = [], []
    for corpus in sorted(EVAL.glob("*/corpus.jsonl")):
        with open(corpus, encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                for part in (record.get("title", ""), record.get("text", "")):
                    for sentence in _SENTENCE_END.split(part):
                        sentence = sentence.strip()
                        if len(sentence) >= 4:
                            (english if sentence.isascii() else chinese).append(sentence)
    if not chinese or not english:
        sys.exit(f"no sentences found under {EVAL}: the benchmark needs ../shared/eval")
    return chinese, english


def text_maker(rng: random.Random, chinese: list[str], english: list[str]) -> Callable[[int, int], str]:
    """One record's text source: a language drawn once (60% Chinese), then `text(low, high)` joins
    low..high of its sentences, and 15% of the time one sentence of the other language (records mix
    languages, as instruction and chat sets do). Shared with large_parquet.py."""
    pool, other = (chinese, english) if rng.random() < 0.6 else (english, chinese)
    joiner = "" if pool is chinese else " "

    def text(low: int, high: int) -> str:
        parts = [rng.choice(pool) for _ in range(rng.randint(low, high))]
        if rng.random() < 0.15:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(other))
        return joiner.join(parts)

    return text


def generate(path: Path, size_mb: float, seed: int = 0) -> int:
    """Write about `size_mb` MB of records; returns how many."""
    chinese, english = sentence_pool()
    rng = random.Random(seed)
    target = int(size_mb * 2**20)
    written = records = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < target:
            text = text_maker(rng, chinese, english)
            record = {"instruction": text(1, 2), "input": text(1, 3) if rng.random() < 0.4 else "", "output": text(2, 12)}
            line = json.dumps(record, ensure_ascii=False) + "\n"
            handle.write(line)
            written += len(line.encode("utf-8"))
            records += 1
    return records


def index_file(path: Path, index: Path, progress: bool) -> dict:
    """Index `path` keyword-only in a child process; its summary, wall time and peak memory."""
    command = [SEARCH, "index", str(path), "--index", str(index), "--keyword-only", "--rebuild", "--json"]
    if progress:
        command.remove("--json")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=None, env=env, text=True)
    sampler = PeakSampler(process)
    output = process.stdout.read()
    process.wait()
    sampler.stop()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        sys.exit(f"indexing failed with status {process.returncode}")
    summary = _summary_of(output, index)
    return {"how": "search index --keyword-only", "wall_seconds": round(wall, 1), "summary": summary,
            "peak_rss_bytes": sampler.peak_bytes, "peak_tree_rss_bytes": sampler.peak_tree_bytes}


def _summary_of(output: str, index: Path) -> dict:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    # the human-readable line: take the numbers from the manifest instead
    from search.index.folder import IndexFolder

    manifest = IndexFolder(index).current().read_manifest()
    return {"passages": manifest["passages"], "stage_seconds": {}, "seconds": None}


def query_latencies(index: Path) -> dict:
    from search import Engine

    started = time.perf_counter()
    engine = Engine.open(index)
    opened = time.perf_counter() - started
    warm = {}
    for query in QUERIES:
        engine.search(query, k=10, mode="bm25")  # first run pages the query's columns in
        times = []
        for _ in range(5):
            started = time.perf_counter()
            engine.search(query, k=10, mode="bm25")
            times.append(time.perf_counter() - started)
        warm[query] = round(statistics.median(times) * 1000, 1)
    started = time.perf_counter()
    subprocess.run([SEARCH, "query", QUERIES[0], "--index", str(index), "-k", "5"], capture_output=True, check=True)
    cold = time.perf_counter() - started
    return {"open_ms": round(opened * 1000), "warm_bm25_ms": warm, "cold_cli_query_ms": round(cold * 1000)}


def measure(workdir: Path, size_mb: float, progress: bool) -> dict:
    path = workdir / f"records-{size_mb:g}mb.jsonl"
    index = workdir / f"index-{size_mb:g}mb"
    records = generate(path, size_mb)
    shutil.rmtree(index, ignore_errors=True)
    run = index_file(path, index, progress)
    summary = run.pop("summary")
    passages = summary["passages"]
    from search.index.folder import IndexFolder

    size = IndexFolder(index).current().size_bytes()
    result = {
        "file_bytes": path.stat().st_size,
        "records": records,
        "passages": passages,
        "stage_seconds": summary.get("stage_seconds", {}),
        "passages_per_second": round(passages / run["wall_seconds"], 1),
        "index_bytes": size,
        **run,
        **query_latencies(index),
    }
    path.unlink()  # the generated file is big; the index stays for inspection
    return result


def table(results: list[dict]) -> str:
    mb = lambda n: f"{n / 2**20:,.0f} MB"
    rows = [
        ("file", lambda r: mb(r["file_bytes"])),
        ("records", lambda r: f"{r['records']:,}"),
        ("passages", lambda r: f"{r['passages']:,}"),
        ("wall", lambda r: f"{r['wall_seconds']:,.0f} s"),
        *[(f"  {stage}", (lambda s: lambda r: f"{r['stage_seconds'].get(s, 0):,.0f} s")(stage))
          for stage in ("load", "chunk", "tokenize", "wait_pool", "write", "bm25")],
        ("passages/s", lambda r: f"{r['passages_per_second']:,.0f}"),
        ("peak RSS (index process)", lambda r: mb(r["peak_rss_bytes"])),
        ("peak RSS (process tree)", lambda r: mb(r["peak_tree_rss_bytes"])),
        ("index size", lambda r: mb(r["index_bytes"])),
        ("open index", lambda r: f"{r['open_ms']:,} ms"),
        *[(f"  bm25 '{q}'", (lambda q: lambda r: f"{r['warm_bm25_ms'][q]} ms")(q)) for q in QUERIES],
        ("cold `search query`", lambda r: f"{r['cold_cli_query_ms']:,} ms"),
    ]
    lines = [f"{'':<34}" + "".join(f"{mb(r['file_bytes']) + ' file':>18}" for r in results)]
    for name, cell in rows:
        lines.append(f"{name:<34}" + "".join(f"{cell(r):>18}" for r in results))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=float, default=1024, help="MB of JSONL for the main run (default 1024)")
    parser.add_argument("--small", type=float, default=100, help="MB of the comparison run first (0: skip)")
    parser.add_argument("--json", action="store_true", help="print JSON only (no progress bar, no table)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "indexes" / "bench-large")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    progress = not args.json and sys.stderr.isatty()
    sizes = [s for s in (args.small, args.size) if s > 0]
    results = []
    for size in sizes:
        if not args.json:
            print(f"generating and indexing {size:g} MB ...", file=sys.stderr)
        results.append(measure(args.workdir, size, progress))
    largest = max(r["peak_tree_rss_bytes"] for r in results)
    report = {"runs": results, "target_rss_bytes": int(TARGET_RSS_BYTES), "under_target": largest < TARGET_RSS_BYTES,
              "cpu_count": os.cpu_count()}
    print(json.dumps(report, ensure_ascii=False))
    if not args.json:
        print(table(results))
        print(f"peak RSS target < {TARGET_RSS_BYTES / 2**30:.1f} GB: {'met' if report['under_target'] else 'NOT met'} "
              f"(largest process tree {largest / 2**20:,.0f} MB)")


if __name__ == "__main__":
    main()
