"""The rebuild job's everyday case on a large index: `search index` after one note is edited, added or
removed, timed as a user runs it (a fresh process: imports, model loading and the build), next to the
same command when nothing changed (the floor: stat every file, verify, carry everything over).

Runs on an index that `benchmarks/speed.py` built (indexes/bench/corpus and indexes/bench/index by
default), in place: the notes it adds and edits are put back, and the index re-indexed, at the end.

    python benchmarks/reindex.py [--corpus DIR --index DIR] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_classes import proc_cpuinfo_flags  # noqa: E402
from speed import run_measured  # noqa: E402


def index_once(corpus: Path, index: Path) -> dict:
    """One `search index` run in a new process: wall seconds, its peak RSS and its summary."""
    wall, peak_mb, stdout = run_measured([sys.executable, "-m", "search.cli", "index", str(corpus), "--index", str(index), "--json"])
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_seconds": round(wall, 2), "build_seconds": summary["seconds"], "peak_rss_mb": round(peak_mb, 1),
            "embedded": summary["passages_embedded"], "passages": summary["passages"], "stages": summary.get("stage_seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "indexes" / "bench" / "corpus")
    parser.add_argument("--index", type=Path, default=ROOT / "indexes" / "bench" / "index")
    parser.add_argument("--runs", type=int, default=3, help="runs of each case (the median is reported)")
    args = parser.parse_args()
    notes = sorted(args.corpus.rglob("*.md"))
    if not notes or not (args.index / "CURRENT").is_file():
        sys.exit(f"no built index at {args.index} over {args.corpus}: run benchmarks/speed.py first")
    index_once(args.corpus, args.index)  # settle: the index agrees with the folder before timing
    originals = {note: note.read_bytes() for note in notes[: args.runs * 2]}
    added = [args.corpus / f"reindex-added-{i}.md" for i in range(args.runs)]
    cases: dict[str, list[dict]] = {"nothing changed": [], "one note edited": [], "one note added": [], "one note removed": []}
    try:
        for run in range(args.runs):
            cases["nothing changed"].append(index_once(args.corpus, args.index))
            # text no earlier run wrote: a vector the index ever held (a retired row's, by its text) would be reused, not embedded
            fresh = time.time_ns()
            edited = notes[run]
            edited.write_text(edited.read_text(encoding="utf-8") + f"\n\n编辑 {fresh}：流水线并行把模型按层切到多张卡上。\n", encoding="utf-8")
            cases["one note edited"].append(index_once(args.corpus, args.index))
            added[run].write_text(f"# 新笔记 {fresh}\n\n激活重计算用计算换显存。Activation checkpointing trades compute for memory.\n", encoding="utf-8")
            cases["one note added"].append(index_once(args.corpus, args.index))
            notes[args.runs + run].unlink()
            cases["one note removed"].append(index_once(args.corpus, args.index))
    finally:
        for note, data in originals.items():
            note.write_bytes(data)
        for note in added:
            note.unlink(missing_ok=True)
        index_once(args.corpus, args.index)
    floor = statistics.median(r["wall_seconds"] for r in cases["nothing changed"])
    result = {"cpu_flags": proc_cpuinfo_flags(), "cores": os.cpu_count(), "passages": cases["nothing changed"][0]["passages"], "cases": {}}
    print(f"{result['passages']} passages; CPU flags: {', '.join(result['cpu_flags'])}; median of {args.runs} runs, each a new process")
    print(f"{'case':<18} {'wall s':>7} {'build s':>8} {'x floor':>8} {'peak MB':>8}  stages of the median run")
    for name, runs in cases.items():
        median = sorted(runs, key=lambda r: r["wall_seconds"])[len(runs) // 2]
        result["cases"][name] = {**median, "all_wall_seconds": [r["wall_seconds"] for r in runs]}
        stages = ", ".join(f"{stage} {seconds}" for stage, seconds in (median["stages"] or {}).items() if seconds >= 0.05)
        print(f"{name:<18} {median['wall_seconds']:>7} {median['build_seconds']:>8} {median['wall_seconds'] / floor:>8.2f} {median['peak_rss_mb']:>8}  {stages}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
