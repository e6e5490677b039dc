"""A damaged index (issue 18): every file of a generation emptied, halved, garbled or deleted is refused
with one line or has no effect, `search check` says which, and a plain `search index` recovers,
never reusing what does not match its checksum. Also the index folder's own hazards: a garbage
CURRENT, --index at a file, a full disk, a read-only folder, and pool workers outliving their build."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search import Engine, IndexNotFound, SearchError

from conftest import write_notes
from hardening import cli, one_line

HOWS = ["empty", "truncate", "garble", "delete"]


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":  # an empty .npy made numpy abort the process ("Aborted!")
        path.write_bytes(b"")
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garble":  # flip the bits of 16 bytes in the middle: same size, other content
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0x5A for b in data[middle : middle + 16]) + data[middle + 16 :])
    else:
        path.unlink()


def every_file(index: Path) -> list[str]:
    return sorted(str(path.relative_to(index)) for path in index.rglob("*") if path.is_file())


def query(index: Path, mode: str = "bm25"):
    return cli("query", "并行 tea", "-k", "3", "--mode", mode, "--json", "--index", index)


def ranking(stdout: str) -> list[tuple]:
    return [(hit["path"], hit["line_start"], round(hit["score"], 4)) for hit in json.loads(stdout)]


@pytest.fixture(scope="module")
def keyword_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    notes = write_notes(root / "notes")
    assert cli("index", notes, "--index", root / "pristine", "--keyword-only").returncode == 0
    expected = query(root / "pristine")
    assert expected.returncode == 0 and len(json.loads(expected.stdout)) == 3
    return notes, root / "pristine", expected.stdout


def check_matrix(notes: Path, pristine: Path, names: list[str], how: str, workdir: Path, mode: str, expected: str) -> list[str]:
    """Damage each file of `names` in a fresh copy of the pristine index; what fell short."""
    failures = []
    for name in names:
        index = workdir / f"{how}-{name.replace('/', '_')}"
        shutil.copytree(pristine, index)  # copy2 keeps modification times
        corrupt(index / name, how)
        before = query(index, mode)
        refused = before.returncode == 1 and one_line(before.stderr) and not before.stdout
        unaffected = before.returncode == 0 and ranking(before.stdout) == ranking(expected)
        checked = cli("check", "--index", index)
        rebuilt = cli("index", notes, "--index", index, "--json")
        after = query(index, mode)
        problems = [
            not (refused or unaffected) and f"query rc {before.returncode}: {before.stderr.strip()[:200]}",
            refused and not (checked.returncode == 1 and one_line(checked.stderr)) and f"check rc {checked.returncode}: {checked.output[:200]}",
            rebuilt.returncode != 0 and f"index rc {rebuilt.returncode}: {rebuilt.stderr.strip()[:200]}",
            rebuilt.returncode == 0 and ranking(after.stdout) != ranking(expected) and "other results after `search index`",
            # a keyword-only index stays one, even when its manifest was lost: no model is loaded
            rebuilt.returncode == 0 and mode == "bm25" and json.loads(rebuilt.stdout)["passages_embedded"] and "embedded",
            cli("check", "--index", index).returncode != 0 and "check fails after `search index`",
        ]
        failures += [f"{name} {how}: {problem}" for problem in problems if problem]
        shutil.rmtree(index)
    return failures


@pytest.mark.parametrize("how", HOWS)
def test_every_file_of_a_keyword_only_index_damaged(keyword_index, tmp_path, how):
    notes, pristine, expected = keyword_index
    names = every_file(pristine)
    assert len(names) >= 12 and "CURRENT" in names
    assert check_matrix(notes, pristine, names, how, tmp_path, "bm25", expected) == []


@pytest.fixture(scope="module")
def embedded_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedded")
    notes = write_notes(root / "notes")
    done = cli("index", notes, "--index", root / "pristine", "--json")
    assert done.returncode == 0, done.output
    expected = query(root / "pristine", "hybrid")
    assert expected.returncode == 0 and len(json.loads(expected.stdout)) == 3
    return notes, root / "pristine", expected.stdout


@pytest.mark.slow
@pytest.mark.parametrize("how", HOWS)
def test_every_vector_file_of_an_embedded_index_damaged(embedded_index, tmp_path, how):
    notes, pristine, expected = embedded_index
    names = [name for name in every_file(pristine) if "/dense-" in name]
    assert {Path(name).name.split(".")[0] for name in names} == {"dense-zh", "dense-en"}
    assert check_matrix(notes, pristine, names, how, tmp_path, "hybrid", expected) == []


@pytest.mark.slow
def test_a_query_with_lone_surrogates_runs_in_hybrid_mode(embedded_index):
    _, pristine, _ = embedded_index
    with Engine.open(pristine) as engine:  # was TypeError: TextEncodeInput must be ...
        assert engine.search("序列\ud800并行 tea\udcff", k=2, mode="hybrid").hits
    done = cli("query", "序列\ud800并行", "-k", "1", "--index", pristine)
    assert done.returncode == 0 and "\ud800" not in done.stdout


@pytest.mark.slow
def test_garbled_vectors_are_embedded_again_never_reused(embedded_index, tmp_path):
    notes, pristine, expected = embedded_index
    index = tmp_path / "index"
    shutil.copytree(pristine, index)
    [faiss] = [name for name in every_file(index) if name.endswith("dense-en.faiss")]
    corrupt(index / faiss, "garble")
    rebuilt = cli("index", notes, "--index", index, "--json")
    assert rebuilt.returncode == 0
    assert "dense-en.faiss does not match its checksum): re-embedding en" in rebuilt.stderr
    summary = json.loads(rebuilt.stdout)
    with Engine.open(index) as engine:
        english = engine.stats()["models"]["en"]["passages"]
    assert summary["passages_embedded"] == english and summary["passages_reused"] == summary["passages"] - english
    assert ranking(query(index, "hybrid").stdout) == ranking(expected)


def test_a_current_that_is_not_utf8_counts_as_no_index(keyword_index, tmp_path):
    notes, pristine, expected = keyword_index
    index = tmp_path / "index"
    shutil.copytree(pristine, index)
    (index / "CURRENT").write_bytes(b"\xff\xfe\x00garbage\x80\n")
    for command in (["query", "tea"], ["stats"], ["check"]):
        done = cli(*command, "--index", index)
        assert done.returncode == 1 and one_line(done.stderr) and "no index at" in done.stderr
    assert cli("index", notes, "--index", index).returncode == 0  # was a UnicodeDecodeError, even with --rebuild
    assert ranking(query(index).stdout) == ranking(expected)
    (index / "CURRENT").write_bytes(b"\xff\xfe")
    assert cli("index", notes, "--index", index, "--rebuild").returncode == 0


def test_an_index_option_naming_a_file_is_one_line(tmp_path):
    notes = write_notes(tmp_path / "notes")
    a_file = tmp_path / "file.txt"
    a_file.write_text("not an index")
    for command in (["index", notes, "--keyword-only"], ["query", "tea"], ["stats"], ["check"]):
        for where in (a_file, a_file / "below"):
            done = cli(*command, "--index", where)
            assert done.returncode == 1 and one_line(done.stderr), (command, where, done.output)
            assert "is a file" in done.stderr or "not a folder" in done.stderr or "no index at" in done.stderr
    with pytest.raises(SearchError, match="is a file, not an index folder"):
        Engine.open("/etc/passwd")
    with pytest.raises(IndexNotFound):
        Engine.open(tmp_path / "nothing here")


def test_a_full_disk_is_one_line_and_leaves_the_index_as_it_was(keyword_index, tmp_path, monkeypatch):
    from search.index.passage_store import PassageWriter

    notes, pristine, expected = keyword_index
    index = tmp_path / "index"
    shutil.copytree(pristine, index)
    (notes / "new.md").write_text("# New\n\nwritten when the disk was full\n")
    try:
        def full(self, *args):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(PassageWriter, "add", full)
        done = cli("index", notes, "--index", index)
        assert done.returncode == 1 and one_line(done.stderr) and "no space left for the index" in done.stderr
        monkeypatch.undo()
        assert [p.name for p in index.glob("gen-*")] == [p.name for p in pristine.glob("gen-*")]  # the failed one is gone
        assert ranking(query(index).stdout) == ranking(expected)
    finally:
        (notes / "new.md").unlink()


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 512 KB tmpfs, which only root with CAP_SYS_ADMIN may mount (skipped elsewhere)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root allowed to mount a tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_and_a_read_only_folder(tiny_filesystem, tmp_path):
    notes = write_notes(tmp_path / "notes")
    index = tiny_filesystem / "index"
    assert cli("index", notes, "--index", index, "--keyword-only").returncode == 0
    expected = query(index).stdout
    (notes / "big.md").write_text("\n\n".join(f"word{i} other{i * 7} more{i * 13}" for i in range(20_000)))
    full = cli("index", notes, "--index", index)
    assert full.returncode == 1 and one_line(full.stderr) and "no space left for the index" in full.stderr
    assert len(list(index.glob("gen-*"))) == 1 and query(index).stdout == expected
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_filesystem)], check=True)
    locked = cli("index", notes, "--index", index)
    assert locked.returncode == 1 and one_line(locked.stderr) and "cannot write to the index folder" in locked.stderr
    assert query(index).stdout == expected and cli("check", "--index", index).returncode == 0


# Files a build writes through a memory map or FAISS, each on the full filesystem given (argv[2]), in a
# process of its own: a write to a mapped page the disk has no room for kills the process with SIGBUS,
# and FAISS reports a failed write as a RuntimeError.
MAPPED_WRITES = """
import errno, sys, numpy as np
from pathlib import Path
from search.index.bm25 import BM25Index
from search.index.bm25_terms import TermWriter
from search.index.dense import DenseIndex
from search.index.row_files import StoredVectors
staging, full = Path(sys.argv[1]), Path(sys.argv[2])
writer = TermWriter(staging)
for passage in range(2_000):
    writer.add([f"w{passage % 97}-{i}" for i in range(50)])  # 100k postings: 800 KB of BM25 scores
stream = writer.close()
for write in (lambda: BM25Index.build_from_terms(stream, full),
              lambda: StoredVectors(np.arange(400), np.ones((400, 512), np.float32)).save(full / "dense-zh"),  # 800 KB
              lambda: DenseIndex.build(np.ones((400, 512), np.float32), np.arange(400), 512).save(full / "dense-en")):
    try:
        write()
        print("written")
    except OSError as error:
        print(errno.errorcode[error.errno])
    for leftover in full.iterdir():
        leftover.unlink()
"""


def test_files_written_through_a_memory_map_or_faiss_meet_a_full_disk_with_enospc(tiny_filesystem, tmp_path):
    (tmp_path / "staging").mkdir()
    done = subprocess.run([sys.executable, "-c", MAPPED_WRITES, str(tmp_path / "staging"), str(tiny_filesystem)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # -7: killed by SIGBUS
    assert done.stdout.split() == ["ENOSPC", "ENOSPC", "ENOSPC"]


def members_of_session(session: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == session:
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(int(entry))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2, reason="needs /proc and a process pool")
def test_pool_workers_die_with_a_killed_build(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    paragraph = "序列并行沿序列维度切分输入，用来训练长文本。Ring attention splits the sequence across devices. " * 20
    for i in range(150):  # 1.3 million characters of new text: the build starts its pool
        (notes / f"n{i}.md").write_text(f"# Note {i}\n\n" + (paragraph + "\n\n") * 6)
    build = subprocess.Popen([str(Path(sys.executable).parent / "search"), "index", str(notes), "--index", str(tmp_path / "idx"),
                              "--keyword-only"], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(members_of_session(build.pid)) < 3 and build.poll() is None and time.time() < deadline:  # fork server, workers
            time.sleep(0.1)
        assert len(members_of_session(build.pid)) >= 3, "the pool did not start"
        os.kill(build.pid, signal.SIGKILL)  # the build alone, as an OOM killer would
        build.wait()
        deadline = time.time() + 20
        while members_of_session(build.pid) and time.time() < deadline:
            time.sleep(0.2)
        assert members_of_session(build.pid) == []
    finally:
        for pid in members_of_session(build.pid):  # only what this test started
            os.kill(pid, signal.SIGKILL)


def test_a_generation_of_another_bm25_format_is_one_line_and_rebuilt(keyword_index, tmp_path):
    """Intact files written by another version (checksums match): the reader's own refusal is one line."""
    from search.index.folder import IndexFolder
    from search.index.integrity import seal

    notes, pristine, expected = keyword_index
    index = tmp_path / "index"
    shutil.copytree(pristine, index)
    folder = IndexFolder(index)
    generation = folder.current()
    meta = generation.bm25_folder / "bm25_index.json"
    meta.write_text(meta.read_text().replace('"format": ', '"format": "other-", "was": '))
    manifest = generation.read_manifest()
    manifest["checksums"] = seal(generation)
    generation.write_manifest(manifest)
    (index / "CURRENT").write_text(f"{generation.name}\n{generation.manifest_digest}\n")
    done = query(index)
    assert done.returncode == 1 and one_line(done.stderr) and "ValueError: BM25 index" in done.stderr
    assert cli("index", notes, "--index", index).returncode == 0
    assert ranking(query(index).stdout) == ranking(expected)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: test_a_real_full_disk_and_a_read_only_folder mounts one read-only")
def test_a_read_only_index_folder_is_one_line(keyword_index, tmp_path):
    notes, pristine, expected = keyword_index
    index = tmp_path / "index"
    shutil.copytree(pristine, index)
    index.chmod(0o555)
    try:
        done = cli("index", notes, "--index", index)
        assert done.returncode == 1 and one_line(done.stderr) and "cannot write to the index folder" in done.stderr
        assert ranking(query(index).stdout) == ranking(expected)
    finally:
        index.chmod(0o755)


def test_a_generation_sealed_with_sha256_by_an_older_build_is_still_checked(keyword_index, tmp_path):
    """Older builds recorded SHA-256 checksums; this one records XXH3: both are verified, by their own hash."""
    import hashlib

    from search.index.folder import IndexFolder
    from search.index.integrity import problems

    _, pristine, _ = keyword_index
    index = tmp_path / "old"
    shutil.copytree(pristine, index)
    generation = IndexFolder(index).current()
    manifest = generation.read_manifest()
    assert all(set(entry) == {"size", "mtime_ns", "xxh3"} for entry in manifest["checksums"].values())
    older = {**manifest, "checksums": {name: {"size": entry["size"], "mtime_ns": entry["mtime_ns"],
                                               "sha256": hashlib.sha256((generation.path / name).read_bytes()).hexdigest()}
                                       for name, entry in manifest["checksums"].items()}}
    assert problems(generation, older, full=True) == {} == problems(generation, manifest, full=True)
    name = "passages.jsonl"
    corrupt(generation.path / name, "garble")
    assert problems(generation, older, full=True) == {name: "does not match its checksum"} == problems(generation, manifest, full=True)
    del older["checksums"][name]["sha256"]
    assert problems(generation, older, full=True)[name] == "has no readable checksum"


_UNGUARDED_BUILDS = {
    "build": "Engine.build([NOTES], INDEX, build_config=BuildConfig(keyword_only=True))",
    # waiting for the build lock: the worker re-running the script used to wait for its parent's lock forever
    "update(wait=True)": "Engine.update([NOTES], INDEX, build_config=BuildConfig(keyword_only=True), wait=True)",
    "build_documents": ("Engine.build_documents((Document(path=f'd{i}', text='这是一篇关于序列并行和数据并行的笔记。' * 40, kind='text') "
                        "for i in range(1500)), INDEX, build_config=BuildConfig(keyword_only=True))"),
}


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the build prepares text in a process pool only with 2 or more CPUs")
@pytest.mark.parametrize("call", sorted(_UNGUARDED_BUILDS))
def test_a_script_that_builds_without_a_main_guard_gets_one_line(tmp_path, call):
    """Python's forkserver workers run the calling script again; there it builds too, and the pool
    breaks. The script gets a line that says why, not BrokenProcessPool nor a hang, and no index is published."""
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(1500):  # ~1.3 MB of new text: more than POOL_AFTER, so the pool starts
        (notes / f"n{i}.md").write_text(f"# Note {i}\n\n" + "这是一篇关于序列并行和数据并行的笔记。" * 40 + "\n", encoding="utf-8")
    script = tmp_path / "build.py"
    statement = _UNGUARDED_BUILDS[call].replace("NOTES", repr(str(notes))).replace("INDEX", repr(str(tmp_path / "index")))
    script.write_text(f"from search import BuildConfig, Document, Engine\n{statement}\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode != 0
    assert 'without `if __name__ == "__main__":`' in done.stderr.strip().splitlines()[-1]
    with pytest.raises(IndexNotFound):
        Engine.open(tmp_path / "index")
