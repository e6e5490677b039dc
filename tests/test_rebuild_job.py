"""The index rebuild job: incremental edits, crash safety under SIGKILL, concurrent readers, the
build lock, and `search watch`."""

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from search import BM25Params, BuildConfig, Engine
from search.errors import SearchError
from search.index import carry as carry_module, dense_kinds, file_io
from search.index.dense import DenseIndex
from search.index.folder import IndexFolder
from search.index.passage_store import PassageStore, TokenStore
from search.text.tokenizing import tokenize_query

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


def vectors_by_file(engine: Engine, files: dict) -> dict[str, list[np.ndarray]]:
    """Each file's passage vectors, in passage order (each from the space that holds its passage)."""
    backend, out = engine.backend, {}
    for path, info in files.items():
        pids = np.arange(info["first"], info["first"] + info["count"])
        rows = []
        for pid in pids.tolist():
            space = next(space for space in backend.dense if backend.members.rows[space][pid] >= 0)
            rows.append(backend.dense[space].vectors_at(np.array([backend.members.rows[space][pid]]))[0])
        out[path] = rows
    return out


def file_lines(path: Path, offsets: Path, info: dict) -> bytes:
    starts = np.load(offsets)
    end = info["first"] + info["count"]
    with open(path, "rb") as handle:
        data = handle.read()
    return data[starts[info["first"]] : starts[end] if end < len(starts) else len(data)]


def _no_kernel_copy(*args):
    raise OSError(errno.EXDEV, "Invalid cross-device link")


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "through-memory"])
def test_unchanged_files_are_copied_as_they_were(seeds_dir, tmp_path, monkeypatch, kernel_copy):
    monkeypatch.setattr(carry_module, "RUN_PASSAGES", 7)  # runs of unchanged files copied in many pieces
    monkeypatch.setattr(file_io, "COPY_CHUNK", 1000)  # and through memory, in many reads
    kernel_copies = []
    if kernel_copy:
        if not hasattr(os, "copy_file_range"):
            pytest.skip("this platform has no copy_file_range")
        copy = os.copy_file_range
        monkeypatch.setattr(os, "copy_file_range", lambda *args: kernel_copies.append(args[2]) or copy(*args))
    else:  # another filesystem, an old kernel: the bytes go through a buffer instead
        monkeypatch.setattr(os, "copy_file_range", _no_kernel_copy, raising=False)
    notes = tmp_path / "notes"
    shutil.copytree(seeds_dir, notes / "seeds", ignore=shutil.ignore_patterns("README.md"))
    generate_notes(notes / "generated", 30)
    index = tmp_path / "index"
    engine = Engine.build([notes], index)[0]
    before = IndexFolder(index).current()
    files_before = before.read_manifest()["files"]
    vectors_before = vectors_by_file(engine, files_before)
    edited = notes / "generated" / "note-003.md"
    edited.write_text(edited.read_text(encoding="utf-8") + "\n## 新增\n\n新增一段关于专家并行的记录。\n", encoding="utf-8")

    decoded = []  # an unchanged file's passages, tokens and term ids are copied, never decoded and written again
    read_passage, read_tokens = PassageStore.get, TokenStore.get
    monkeypatch.setattr(PassageStore, "get", lambda store, pid: decoded.append(pid) or read_passage(store, pid))
    monkeypatch.setattr(TokenStore, "get", lambda store, pid: decoded.append(pid) or read_tokens(store, pid))
    engine, summary = Engine.build([notes], index)
    monkeypatch.undo()
    assert decoded == [] and summary.files_unchanged == len(files_before) - 1 and carry_module.RUN_PASSAGES > 7
    assert bool(kernel_copies) == kernel_copy

    after = IndexFolder(index).current()
    files_after = after.read_manifest()["files"]
    assert files_after[str(edited)]["count"] == files_before[str(edited)]["count"] + 1
    vectors_after = vectors_by_file(engine, files_after)
    for path, info in files_before.items():
        if path == str(edited):
            continue
        moved = files_after[path]
        assert file_lines(after.passages_file, after.passage_offsets_file, moved) == file_lines(before.passages_file, before.passage_offsets_file, info)
        assert file_lines(after.tokens_file, after.token_offsets_file, moved) == file_lines(before.tokens_file, before.token_offsets_file, info)
        assert len(vectors_after[path]) == len(vectors_before[path])
        assert all(np.array_equal(a, b) for a, b in zip(vectors_after[path], vectors_before[path]))
    # and the whole index is what a fresh build of the same notes holds
    fresh = tmp_path / "fresh"
    fresh_engine = Engine.build([notes], fresh, build_config=BuildConfig(keyword_only=True))[0]
    assert passages_of(index) == passages_of(fresh)
    fresh_generation = IndexFolder(fresh).current()
    assert after.tokens_file.read_bytes() == fresh_generation.tokens_file.read_bytes()
    assert after.facets_file.read_bytes() == fresh_generation.facets_file.read_bytes()  # files, tags: carried, not re-read
    assert np.array_equal(np.load(after.passage_file_map), np.load(fresh_generation.passage_file_map))
    for text in ("专家并行", "数据并行 实验", "experiment number 21", "英文"):
        tokens = tokenize_query(text)  # the same BM25 score for every passage, to the last bit
        assert np.array_equal(engine.backend.bm25.scores(tokens), fresh_engine.backend.bm25.scores(tokens))
    assert engine.search("专家并行", k=1, mode="bm25")[0].path == str(edited)


def test_nothing_changed_writes_no_generation(tmp_path):
    notes = write_notes(tmp_path / "notes")
    index = tmp_path / "index"
    Engine.build([notes], index)
    live = IndexFolder(index).live_name()
    engine, summary = Engine.build([notes], index)
    assert IndexFolder(index).live_name() == live and len(list(index.glob("gen-*"))) == 1  # nothing written
    assert (summary.files_unchanged, summary.files_changed, summary.passages) == (len(list(notes.rglob("*.*"))), 0, len(engine.passages))
    expected = [(hit.path, hit.score) for hit in engine.search("序列并行 all-to-all", k=3).hits]
    note = next(notes.rglob("*.md"))
    note.write_text(note.read_text(encoding="utf-8"), encoding="utf-8")  # touched, same bytes: hashed, a new generation
    before = IndexFolder(index).current()
    engine, summary = Engine.build([notes], index)
    assert IndexFolder(index).live_name() != live and (summary.files_changed, summary.passages_embedded) == (0, 0)
    after = IndexFolder(index).current()  # that records the new time, its every other file the one before's
    assert after.read_manifest()["files"][str(note)]["mtime"] == note.stat().st_mtime and Engine.check(index).ok
    assert {after.relative(path): os.stat(path).st_ino for path in after.files() if path != after.manifest_file} == \
        {before.relative(path): os.stat(path).st_ino for path in before.files() if path != before.manifest_file}
    assert [(hit.path, hit.score) for hit in engine.search("序列并行 all-to-all", k=3).hits] == expected
    live = IndexFolder(index).live_name()
    Engine.build([notes], index)  # the times are recorded now: nothing written
    assert IndexFolder(index).live_name() == live
    Engine.build([notes], index, build_config=BuildConfig(bm25=BM25Params(k1=1.2)))  # other settings: built again
    assert IndexFolder(index).live_name() != live
    live = IndexFolder(index).live_name()
    damaged = IndexFolder(index).current().bm25_folder / "seg-0000.data.npy"
    data = bytearray(damaged.read_bytes())
    data[-8:] = bytes(8)  # a score zeroed: same size; the modification time put back
    stat = damaged.stat()
    damaged.write_bytes(bytes(data))
    os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    Engine.build([notes], index, build_config=BuildConfig(bm25=BM25Params(k1=1.2)))
    assert IndexFolder(index).live_name() != live and Engine.check(index).ok  # repaired, not skipped


def test_damaged_term_ids_are_rebuilt_from_the_tokens(tmp_path):
    notes = write_notes(tmp_path / "notes")
    generate_notes(notes / "more", 20)
    index = tmp_path / "index"
    Engine.build([notes], index, build_config=BuildConfig(keyword_only=True))
    terms = IndexFolder(index).current().bm25_folder / "postings.i32"
    data = bytearray(terms.read_bytes())
    data[:8] = b"\xff" * 8  # term ids out of range, same size
    terms.write_bytes(bytes(data))
    (notes / "more" / "note-003.md").write_text("# 新笔记\n\n检索增强生成的评测。\n", encoding="utf-8")
    engine = Engine.build([notes], index)[0]
    fresh = Engine.build([notes], tmp_path / "fresh", build_config=BuildConfig(keyword_only=True))[0]
    for text in ("检索增强生成", "数据并行", "序列并行"):
        tokens = tokenize_query(text)
        assert np.array_equal(engine.backend.bm25.scores(tokens), fresh.backend.bm25.scores(tokens))


def test_a_full_disk_while_touched_files_are_relinked_leaves_the_live_generation(tmp_path, monkeypatch):
    notes = write_notes(tmp_path / "notes")
    index = tmp_path / "index"
    Engine.build([notes], index)
    live = IndexFolder(index).live_name()
    note = next(notes.rglob("*.md"))
    note.write_text(note.read_text(encoding="utf-8"), encoding="utf-8")  # touched, same bytes: the relinking build

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(file_io.os, "link", full)
    monkeypatch.setattr(file_io.shutil, "copyfile", full)
    with pytest.raises(SearchError, match="no space left for the index"):
        Engine.build([notes], index)
    assert IndexFolder(index).live_name() == live and [path.name for path in index.glob("gen-*")] == [live]
    monkeypatch.undo()
    Engine.build([notes], index)
    assert IndexFolder(index).live_name() != live and Engine.check(index).ok


def test_an_edit_carries_the_graph_over_and_searches_exactly_what_is_indexed(tmp_path, monkeypatch):
    monkeypatch.setattr(dense_kinds, "EXACT_MAX_VECTORS", 20)  # graphs at this small size
    notes = tmp_path / "notes"
    generate_notes(notes, 60)
    index = tmp_path / "index"
    Engine.build([notes], index)
    before = IndexFolder(index).current()
    edited = notes / "note-007.md"
    edited.write_text(edited.read_text(encoding="utf-8").replace("记录了实验设置和结论", "改为记录激活重计算"), encoding="utf-8")
    (notes / "note-011.md").unlink()
    engine, summary = Engine.build([notes], index)
    assert summary.files_removed == 1 and summary.passages_embedded <= 2
    generation = IndexFolder(index).current()
    spaces = {space: DenseIndex.load(generation.dense_prefix(space)) for space in engine.backend.dense}
    graphs = {space: index for space, index in spaces.items() if index.kind == "hnsw"}
    assert graphs and all(len(index) <= 20 for index in spaces.values() if index.kind != "hnsw")
    assert sum(graph.retired for graph in graphs.values()) >= 3  # the edited passage's and the removed note's rows
    assert sum(graph.tail_rows for graph in graphs.values()) >= 1  # the edited passage's new vector, beside the graph
    for space in graphs:  # whose file is the previous generation's own
        assert generation.dense_prefix(space).with_suffix(".faiss").stat().st_ino == before.dense_prefix(space).with_suffix(".faiss").stat().st_ino
    live = {pid for index in spaces.values() for pid in index.ids.tolist() if pid >= 0}
    assert live == set(range(len(engine.passages)))  # every passage has exactly one live row
    for space, dense in ((space, dense) for space, dense in spaces.items() if len(dense)):  # the mean carried over by what changed: the mean of what is indexed
        centre, rows = generation.read_manifest()["models"][space]["centre"], np.flatnonzero(dense.ids >= 0)
        assert centre["vectors"] == len(rows)
        assert np.allclose(centre["mean"], dense.vectors_at(rows).astype(np.float64).mean(axis=0), atol=1e-6)
    for space, graph in graphs.items():
        rows = np.flatnonzero(graph.ids >= 0)
        for query in ("数据并行的实验结论", "mixed precision experiment", "激活重计算"):
            vector = engine.retriever.encoders[space].encode_query([query])[0]
            exact = graph.ids[rows[np.argsort(-(graph.vectors_at(rows) @ vector), kind="stable")[:10]]]
            assert engine.backend.dense_search(space, vector, 10, None)[0].tolist() == exact.tolist()
    for note in list(notes.glob("note-0[2-4]*.md")):  # a third of the notes: the graphs are built anew
        note.unlink()
    engine, _ = Engine.build([notes], index)
    rebuilt = [DenseIndex.load(IndexFolder(index).current().dense_prefix(space)) for space in engine.backend.dense]
    assert all(dense.retired == 0 and dense.tail_rows == 0 for dense in rebuilt)


def test_graphs_are_linked_not_written_again_and_new_vectors_fill_a_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(dense_kinds, "EXACT_MAX_VECTORS", 5)  # graphs at this small size, in both spaces
    notes = tmp_path / "notes"
    generate_notes(notes, 20)  # Chinese passages
    for i in range(20):
        (notes / f"en-{i:02d}.md").write_text(f"# Run {i}\n\nMixed precision training keeps a float32 master copy of the weights; run {i} used loss scale {2 ** i}.\n",
                                             encoding="utf-8")
    index = tmp_path / "index"
    engine, _ = Engine.build([notes], index)
    assert all(DenseIndex.load(IndexFolder(index).current().dense_prefix(space)).kind == "hnsw" for space in engine.backend.dense)
    before = IndexFolder(index).current()
    old_checksums = before.read_manifest()["checksums"]
    (notes / "新笔记.md").write_text("# 激活重计算\n\n激活重计算用额外的前向计算换取显存，长序列训练时常用。\n", encoding="utf-8")
    engine, summary = Engine.build([notes], index)
    assert summary.passages_embedded == 1
    after = IndexFolder(index).current()
    checksums = after.read_manifest()["checksums"]
    for space in ("zh", "en"):  # the Chinese graph gained a vector, the English one nothing: both are the old files
        graph = after.relative(after.dense_prefix(space).with_suffix(".faiss"))
        assert os.stat(after.path / graph).st_ino == os.stat(before.path / graph).st_ino and checksums[graph] == old_checksums[graph]
    tails = sorted(name for name in checksums if name.endswith(".tail.npy"))
    assert tails == [after.relative(after.dense_prefix("zh").with_suffix(".tail.npy"))] and not any(name.endswith(".tail.npy") for name in old_checksums)
    assert Engine.check(index).ok
    top = engine.search("激活重计算", k=1, mode="dense").hits[0]
    assert top.path.endswith("新笔记.md")
    shutil.rmtree(before.path)  # the older generation goes (as a later build removes it): the link keeps the file
    assert Engine.check(index).ok and Engine.open(index).search("mixed precision", k=3, mode="dense").hits


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
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format_version": version}))
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


def test_a_build_with_nothing_changed_still_repairs_a_damaged_file_it_does_not_reuse(tmp_path):
    notes = write_notes(tmp_path / "notes")
    index = tmp_path / "index"
    Engine.build([notes], index, build_config=BuildConfig(keyword_only=True))
    live = IndexFolder(index).live_name()
    damaged = IndexFolder(index).current().bm25_folder / "seg-0000.data.npy"
    stat, data = damaged.stat(), bytearray(damaged.read_bytes())
    data[-8:] = b"\xff" * 8  # same size, same modification time: only hashing sees it
    damaged.write_bytes(bytes(data))
    os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    Engine.update([notes], index)
    assert IndexFolder(index).live_name() != live and Engine.check(index).ok


def test_an_index_older_than_document_starts_is_searched_without_windows_then_read_once_and_gains_them(tmp_path, caplog):
    """A generation written before documents and term counts were recorded: queries score passages
    alone (its BM25 as built), and the next `search index` reads every file again to find where its
    documents start (reusing every vector), after which it ranks as a fresh build does."""
    from search.index.bm25 import BM25Index
    from search.index.integrity import seal
    from search.index.passage_store import read_tokens

    notes = write_notes(tmp_path / "notes")
    index = tmp_path / "index"
    with Engine.build([notes], index)[0] as engine:
        assert engine.backend.bm25.windows is not None and engine.retriever.documents is not None
    generation = IndexFolder(index).current()
    generation.document_starts_file.unlink()
    for counts in generation.bm25_folder.glob("seg-*.counts.npy"):
        counts.unlink()
    meta = generation.bm25_folder / "bm25_index.json"
    recorded = json.loads(meta.read_text())
    del recorded["params"]["window"]
    meta.write_text(json.dumps(recorded))
    manifest = generation.read_manifest()
    del manifest["bm25"]["window"]
    manifest["checksums"] = seal(generation)
    (index / "CURRENT").write_text(f"{generation.name}\n{generation.write_manifest(manifest)}\n")

    plain = BM25Index.build(read_tokens(generation), BM25Params(window=0))
    with Engine.open(index) as older:
        assert older.backend.bm25.windows is None and older.retriever.documents is None and older.stats()["documents"] is None
        for text in ("序列并行", "green tea"):
            np.testing.assert_array_equal(older.backend.bm25.scores(tokenize_query(text)), plain.scores(tokenize_query(text)))
        assert older.search("序列并行", k=3)

    with caplog.at_level("INFO", logger="search"):
        engine, summary = Engine.build([notes], index)
    assert "built before documents were recorded: reading every file once more" in caplog.text
    fresh = Engine.build([notes], tmp_path / "fresh")[0]
    with engine, fresh:
        assert summary.files_unchanged == 0 and summary.passages_embedded == 0 and summary.passages_reused == summary.passages
        assert engine.backend.bm25.windows is not None
        assert np.array_equal(np.load(engine.generation.document_starts_file), np.load(fresh.generation.document_starts_file))
        for text in ("序列并行", "green tea", "专家并行 数据"):
            tokens = tokenize_query(text)
            assert np.array_equal(engine.backend.bm25.scores(tokens), fresh.backend.bm25.scores(tokens))
            assert [hit.path for hit in engine.search(text, k=5)] == [hit.path for hit in fresh.search(text, k=5)]
