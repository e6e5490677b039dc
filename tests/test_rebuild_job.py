"""The index rebuild job: incremental edits, crash safety under SIGKILL, concurrent readers, the
build lock, and `search watch`."""

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from search import Engine
from search.index.folder import IndexFolder

from conftest import write_notes

SEARCH = str(Path(sys.executable).parent / "search")


def generate_notes(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    topics = ["数据并行", "张量并行", "流水线并行", "混合精度", "梯度累积", "检索增强", "向量数据库", "中文分词"]
    for i in range(count):
        topic = topics[i % len(topics)]
        (folder / f"note-{i:03d}.md").write_text(
            f"# 笔记 {i}：{topic}\n\n## 要点\n\n第 {i} 篇笔记讨论{topic}，记录了实验设置和结论。\n\n"
            f"## English summary\n\nNote {i} covers {topic} with experiment number {i * 7}.\n",
            encoding="utf-8",
        )


def passages_of(index: Path) -> list[tuple]:
    engine = Engine.open(index)
    return [(p.path, p.text, p.line_start, p.line_end, tuple(p.heading_path)) for p in engine.passages]


def test_editing_one_paragraph_reembeds_about_one_passage(seeds_dir, tmp_path):
    notes = tmp_path / "notes"
    shutil.copytree(seeds_dir, notes / "seeds", ignore=shutil.ignore_patterns("README.md"))
    generate_notes(notes / "generated", 200)
    index = tmp_path / "index"
    full = Engine.build([notes], index)[1]
    assert full.passages_embedded == full.passages > 600

    note = notes / "generated" / "note-042.md"
    note.write_text(note.read_text(encoding="utf-8").replace("记录了实验设置和结论", "补充了新的对照实验"), encoding="utf-8")
    edited, edited_summary = Engine.build([notes], index)
    summary = edited_summary
    assert (summary.files_changed, summary.files_unchanged) == (1, full.files_added - 1)
    assert 1 <= summary.passages_embedded <= 3
    assert summary.passages_reused == summary.passages - summary.passages_embedded
    assert edited.search("新的对照实验", k=1, mode="bm25")[0].path == str(note)


def test_sigkill_at_any_moment_leaves_an_index_that_answers(tmp_path):
    notes = write_notes(tmp_path / "notes")
    generate_notes(notes / "more", 40)
    index = tmp_path / "index"
    Engine.build([notes], index)
    generate_notes(notes / "later", 20)  # the interrupted builds have new work to do

    # Kill at 8 points spread over one uninterrupted run, whatever this machine's speed.
    started = time.perf_counter()
    subprocess.run([SEARCH, "index", str(notes), "--index", str(tmp_path / "timing"), "--rebuild"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    step = (time.perf_counter() - started) / 8
    delay, kills = step, 0
    while True:
        process = subprocess.Popen([SEARCH, "index", str(notes), "--index", str(index), "--rebuild"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=delay)
            break  # finished before we killed it: every phase before this point was interrupted once
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            kills += 1
        engine = Engine.open(index)
        assert engine.search("序列并行", k=3), f"no answer after a kill at {delay:.1f}s"
        delay += step
    assert kills >= 4

    Engine.build([notes], index)  # no stale lock; finishes the work
    Engine.build([notes], tmp_path / "clean", rebuild=True)
    assert passages_of(index) == passages_of(tmp_path / "clean")
    assert len(list(index.glob("gen-*"))) <= 2  # leftovers of aborted builds were removed


def test_queries_never_fail_while_another_process_rebuilds(tmp_path):
    notes = write_notes(tmp_path / "notes")
    generate_notes(notes / "more", 30)
    index = tmp_path / "index"
    Engine.build([notes], index)
    long_lived = Engine.open(index)

    done = threading.Event()
    outcomes = []

    def rebuild_twice():
        for _ in range(2):
            outcomes.append(subprocess.run([SEARCH, "index", str(notes), "--index", str(index), "--rebuild", "--wait"],
                                           capture_output=True, text=True).returncode)
        done.set()

    threading.Thread(target=rebuild_twice).start()
    queries = 0
    while not done.is_set():
        assert Engine.open(index).search("数据并行", k=5)  # a fresh reader, like the CLI
        assert long_lived.search("all-reduce", k=5, mode="bm25")  # a reader opened before the builds
        queries += 1
    assert outcomes == [0, 0]
    assert queries >= 10
    assert Engine.open(index).generation != long_lived.generation


def test_second_build_exits_with_a_clear_message(tmp_path):
    notes = write_notes(tmp_path / "notes")
    index = tmp_path / "index"
    with IndexFolder(index).build_lock():
        done = subprocess.run([SEARCH, "index", str(notes), "--index", str(index)], capture_output=True, text=True)
    assert done.returncode == 1
    assert "another build is running" in done.stderr and "Traceback" not in done.stderr
    assert subprocess.run([SEARCH, "index", str(notes), "--index", str(index)], capture_output=True).returncode == 0


@pytest.mark.parametrize("version", [2, 999])  # 2: written before format 3 added checksums
def test_incompatible_format_is_refused_with_rebuild_hint(tmp_path, version):
    notes = write_notes(tmp_path / "notes")
    index = tmp_path / "index"
    engine, _ = Engine.build([notes], index)
    manifest = engine.generation.manifest_file
    manifest.write_text(manifest.read_text().replace('"format_version": 3', f'"format_version": {version}'))
    (index / "CURRENT").write_text(engine.generation.name)  # as builds before format 3 wrote it: no manifest digest
    for command in (["query", "x"], ["index", str(notes)]):
        done = subprocess.run([SEARCH, *command, "--index", str(index)], capture_output=True, text=True)
        assert done.returncode == 1 and "search index --rebuild" in done.stderr and "Traceback" not in done.stderr
    assert subprocess.run([SEARCH, "index", str(notes), "--index", str(index), "--rebuild"], capture_output=True).returncode == 0


def test_watch_follows_file_changes(tmp_path):
    notes = write_notes(tmp_path / "notes")
    index = tmp_path / "index"
    process = subprocess.Popen([SEARCH, "watch", str(notes), "--index", str(index), "--debounce", "0.3"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def wait_for(condition, seconds=90):
            deadline = time.time() + seconds
            while time.time() < deadline:
                try:
                    if condition():
                        return True
                except Exception:
                    pass
                time.sleep(0.3)
            return False

        assert wait_for(lambda: IndexFolder(index).exists()), "first build did not happen"
        (notes / "新笔记.md").write_text("# 新笔记\n\n量子退火算法的入门笔记。\n", encoding="utf-8")
        assert wait_for(lambda: "量子退火" in Engine.open(index).search("量子退火", k=1, mode="bm25")[0].text)
        (notes / "新笔记.md").unlink()
        assert wait_for(lambda: not Engine.open(index).search("量子退火", k=1, mode="bm25"))
    finally:
        process.terminate()
        process.wait(timeout=30)
