"""Indexing a large Parquet dataset of chat records in bounded memory (`make bench-large`, after the JSONL run).

Generates a seeded dataset shaped like the Hugging Face hub serves chat sets: a folder of Parquet shards
(`train-00000-of-0000N.parquet`, row groups of `--row-group` rows) whose rows hold an id, OpenAI-style
`messages` ([{role, content}]: a system prompt on some rows, then one to three user/assistant turns) and
a source, with the Chinese and English sentences of ../shared/eval re-packed as in large_jsonl.py. It
indexes the folder keyword-only in a subprocess (`search index DIR --keyword-only`) and prints the
dataset's size on disk and as text, rows, passages, wall time by stage, passages/s, peak RSS (index
process and whole process tree), index size and query latencies; a small run first, so the growth of
memory with size is visible. Usage:
    python benchmarks/large_parquet.py [--size 1024] [--small 50] [--shard 256] [--json] [--workdir indexes/bench-parquet]

`--size` is MB of Parquet on disk (snappy-compressed; the text it holds is about twice that). The issue's
target: ~1 GB of Parquet with the process tree's peak RSS under 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
from pathlib import Path

from large_jsonl import QUERIES, ROOT, TARGET_RSS_BYTES, index_file, query_latencies, sentence_pool, table, text_maker

SYSTEM_PROMPTS = ["You are a helpful assistant.", "你是一个乐于助人的助手。", "Answer briefly and cite the source when you can."]


def chat_rows(rng: random.Random, chinese: list[str], english: list[str], start: int, count: int) -> tuple[list[dict], int]:
    """`count` chat records and the characters of text they hold."""
    rows, chars = [], 0
    for i in range(start, start + count):
        text = text_maker(rng, chinese, english)
        messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": text(1, 2)})
            messages.append({"role": "assistant", "content": text(2, 8)})
        chars += sum(len(m["content"]) for m in messages)
        rows.append({"id": f"chat-{i:08d}", "messages": messages, "source": rng.choice(["forum", "support", "synthetic"])})
    return rows, chars


def generate(folder: Path, size_mb: float, shard_mb: float, row_group: int, seed: int = 0) -> dict:
    """Write about `size_mb` MB of Parquet shards into `folder`; returns rows, text characters and files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    chinese, english = sentence_pool()
    rng = random.Random(seed)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    target, shard_target = size_mb * 2**20, shard_mb * 2**20
    schema = pa.schema([("id", pa.string()),
                        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
                        ("source", pa.string())])
    written = rows = chars = 0
    paths: list[Path] = []
    while written < target:
        path = folder / f"train-{len(paths):05d}.parquet"
        paths.append(path)
        with pq.ParquetWriter(path, schema, compression="snappy") as writer:
            while path.stat().st_size < shard_target and written + path.stat().st_size < target:
                batch, batch_chars = chat_rows(rng, chinese, english, rows, row_group)
                writer.write_table(pa.Table.from_pylist(batch, schema=schema), row_group_size=row_group)
                rows, chars = rows + len(batch), chars + batch_chars
        written += path.stat().st_size
    total = len(paths)
    for i, path in enumerate(paths):  # the hub's names: train-00000-of-00004.parquet
        path.rename(folder / f"train-{i:05d}-of-{total:05d}.parquet")
    return {"rows": rows, "text_chars": chars, "files": total}


def measure(workdir: Path, size_mb: float, shard_mb: float, row_group: int, progress: bool) -> dict:
    folder = workdir / f"chat-{size_mb:g}mb"
    index = workdir / f"index-{size_mb:g}mb"
    generated = generate(folder, size_mb, shard_mb, row_group)
    file_bytes = sum(path.stat().st_size for path in folder.iterdir())
    shutil.rmtree(index, ignore_errors=True)
    run = index_file(folder, index, progress)
    summary = run.pop("summary")
    from search.index.folder import IndexFolder

    result = {
        "file_bytes": file_bytes,
        "records": generated["rows"],
        "text_chars": generated["text_chars"],
        "files": generated["files"],
        "passages": summary["passages"],
        "stage_seconds": summary.get("stage_seconds", {}),
        "passages_per_second": round(summary["passages"] / run["wall_seconds"], 1),
        "index_bytes": IndexFolder(index).current().size_bytes(),
        **run,
        **query_latencies(index),
    }
    shutil.rmtree(folder)  # the generated dataset is big; the index stays for inspection
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=float, default=1024, help="MB of Parquet for the main run (default 1024)")
    parser.add_argument("--small", type=float, default=50, help="MB of the comparison run first (0: skip)")
    parser.add_argument("--shard", type=float, default=256, help="MB per Parquet shard (default 256)")
    parser.add_argument("--row-group", type=int, default=10_000, help="rows per row group (default 10000)")
    parser.add_argument("--json", action="store_true", help="print JSON only (no progress bar, no table)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "indexes" / "bench-parquet")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    progress = not args.json and sys.stderr.isatty()
    results = []
    for size in [s for s in (args.small, args.size) if s > 0]:
        if not args.json:
            print(f"generating and indexing {size:g} MB of Parquet ...", file=sys.stderr)
        results.append(measure(args.workdir, size, args.shard, args.row_group, progress))
        print(json.dumps(results[-1], ensure_ascii=False), file=sys.stderr, flush=True)  # kept if a later run is stopped
    largest = max(r["peak_tree_rss_bytes"] for r in results)
    report = {"format": "parquet (chat records, OpenAI messages)", "runs": results, "target_rss_bytes": int(TARGET_RSS_BYTES),
              "under_target": largest < TARGET_RSS_BYTES, "cpu_count": os.cpu_count()}
    print(json.dumps(report, ensure_ascii=False))
    if not args.json:
        print(table(results).replace("records", "rows", 1))
        for r in results:
            print(f"{r['file_bytes'] / 2**20:,.0f} MB of Parquet in {r['files']} shards holds {r['text_chars'] / 1e6:,.0f} M characters of text")
        print(f"peak RSS target < {TARGET_RSS_BYTES / 2**30:.1f} GB: {'met' if report['under_target'] else 'NOT met'} "
              f"(largest process tree {largest / 2**20:,.0f} MB)")


if __name__ == "__main__":
    main()
