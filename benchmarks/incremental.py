"""Full build vs. incremental update after editing one paragraph (the rebuild job's promise).

Indexes ../shared/seeds plus generated notes, edits one paragraph, re-runs the build and prints
both timings, their ratio and how many passages were embedded. Usage:
    python benchmarks/incremental.py [--notes 300]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from search import Engine

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
TOPICS = ["数据并行", "张量并行", "流水线并行", "混合精度", "梯度累积", "检索增强", "向量数据库", "中文分词"]


def generate(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        (folder / f"note-{i:04d}.md").write_text(
            f"# 笔记 {i}：{topic}\n\n## 要点\n\n第 {i} 篇笔记讨论{topic}，记录了实验设置和结论。"
            f"我们比较了三种配置，第二种在显存和速度之间取得了最好的平衡。\n\n"
            f"## English summary\n\nNote {i} covers {topic}; experiment {i * 7} compared three settings.\n",
            encoding="utf-8",
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--notes", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        notes = Path(tmp) / "notes"
        if SEEDS.is_dir():
            shutil.copytree(SEEDS, notes / "seeds")
        generate(notes / "generated", args.notes)
        index = Path(tmp) / "index"
        Engine.build([notes], index)  # warm-up: loads models, so both timings below exclude that
        started = time.perf_counter()
        full = Engine.build([notes], index, rebuild=True)[1]
        full_seconds = time.perf_counter() - started

        note = notes / "generated" / "note-0042.md"
        note.write_text(note.read_text(encoding="utf-8").replace("记录了实验设置和结论", "补充了新的对照实验"), encoding="utf-8")
        started = time.perf_counter()
        edit = Engine.build([notes], index)[1]
        edit_seconds = time.perf_counter() - started
    result = {
        "files": full.files_added,
        "passages": full.passages,
        "full_build_seconds": round(full_seconds, 2),
        "incremental_seconds": round(edit_seconds, 2),
        "ratio": round(edit_seconds / full_seconds, 3),
        "passages_embedded": edit.passages_embedded,
        "passages_reused": edit.passages_reused,
    }
    print(json.dumps(result, ensure_ascii=False))
    print(f"full build {full_seconds:.1f}s for {full.passages} passages; after editing one paragraph "
          f"{edit_seconds:.2f}s ({result['ratio']:.1%} of full), {edit.passages_embedded} passage(s) embedded")


if __name__ == "__main__":
    main()
