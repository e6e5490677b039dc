"""The Qdrant backend (issue 15) against qdrant-client's local mode: the same hits as the default
backend, the rebuild job (incremental, deletions, alias switch, kill -9), filters, and its errors."""

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_notes
from search import BackendError, BackendSpec, BuildConfig, Engine, Filters, IncompatibleIndex, SearchError
from search.index.qdrant_sync import QdrantMirror

SEARCH = str(Path(sys.executable).parent / "search")
QUERIES = ["序列并行", "数据并行 梯度", "how long should I knead bread dough", "green tea bitter", "番茄炒蛋",
           "all-to-all 通信", "oven", "ZeRO-3"]


def qdrant(folder: Path, collection: str | None = None) -> BackendSpec:
    return BackendSpec("qdrant", path=str(folder), collection=collection)


def ranked(engine: Engine, query: str, mode: str, **options) -> list[tuple[int, float]]:
    return [(hit.passage_id, round(hit.score, 4)) for hit in engine.search(query, k=10, mode=mode, collapse=False, **options).hits]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The test notes indexed by the default backend and by Qdrant local mode."""
    root = tmp_path_factory.mktemp("pair")
    notes = write_notes(root / "notes")
    embedded = Engine.build([notes], root / "embedded")[0]
    remote = Engine.build([notes], root / "qdrant", backend=qdrant(root / "qd"))[0]
    yield embedded, remote
    embedded.close(), remote.close()


def test_same_hits_and_scores_as_the_default_backend(pair):
    embedded, remote = pair
    assert remote.stats()["backend"]["kind"] == "qdrant" and embedded.stats()["backend"] == {"kind": "embedded"}
    for query in QUERIES:
        for mode in ("bm25", "dense", "hybrid"):
            assert ranked(remote, query, mode) == ranked(embedded, query, mode), (query, mode)
    hit, same = remote.search("序列并行", k=1)[0], embedded.search("序列并行", k=1)[0]
    assert (hit.path, hit.line_start, hit.bm25_rank, hit.dense_rank) == (same.path, same.line_start, same.bm25_rank, same.dense_rank)
    assert hit.bm25_score == pytest.approx(same.bm25_score, rel=1e-6) and hit.dense_score == pytest.approx(same.dense_score, abs=1e-6)


def test_filters_apply_inside_the_query(pair):
    embedded, remote = pair
    for filters in (Filters(tags=["机器学习"]), Filters(paths=["*.txt"]), Filters(types=["md"]), Filters(paths=["**/cooking.md"], types=["md"])):
        for mode in ("bm25", "dense", "hybrid"):
            got = ranked(remote, "序列并行 tea 番茄", mode, filters=filters)
            assert got and got == ranked(embedded, "序列并行 tea 番茄", mode, filters=filters), (filters, mode)
    only_text = remote.search("tea", k=10, filters=Filters(paths=["*.txt"])).hits
    assert only_text and all(hit.path.endswith(".txt") for hit in only_text)  # k asks for more than match: no md sneaks in
    assert remote.search("tea", filters=Filters(tags=["no such tag"])).hits == []


def _points(spec: BackendSpec, alias: str) -> dict:
    """Every point of the alias's collection: id -> (sorted vectors, payload)."""
    from search.index.qdrant_store import client_for, release

    client = client_for(spec)
    try:
        points, _ = client.scroll(alias, limit=10_000, with_payload=True, with_vectors=True)
    finally:
        release(spec)
    def vectors(point):
        return {name: (sorted(zip(value.indices, [round(v, 5) for v in value.values])) if hasattr(value, "indices")
                       else [round(v, 5) for v in value]) for name, value in point.vector.items()}
    return {point.id: (vectors(point), point.payload) for point in points}


def test_incremental_edit_and_delete_converge_to_a_clean_build(tmp_path):
    notes = write_notes(tmp_path / "notes")
    spec = qdrant(tmp_path / "qd")
    Engine.build([notes], tmp_path / "index", backend=spec)[0].close()
    path = notes / "cooking.md"
    path.write_text(path.read_text().replace("two minutes", "three minutes"), encoding="utf-8")
    engine, summary = Engine.build([notes], tmp_path / "index")  # the backend is as recorded: no options
    assert summary.passages_embedded <= 3 and engine.manifest["backend"]["added"] == 1
    assert engine.search("three minutes", k=1, mode="bm25")[0].path == str(path)
    engine.close()
    (notes / "菜谱.txt").unlink()
    engine, summary = Engine.build([notes], tmp_path / "index")
    record = engine.manifest["backend"]
    assert summary.passages_embedded == 0 and (record["added"], record["deleted"], record["points"]) == (0, 1, 4)
    assert not any("番茄" in hit.text for hit in engine.search("番茄炒蛋", k=5))
    engine.close()
    # the same generation mirrored from scratch into another folder holds exactly the same points
    clean = qdrant(tmp_path / "clean", collection=record["collection"])
    QdrantMirror(clean, rebuild=True)(engine.generation, engine.manifest, None)
    assert _points(spec, record["collection"]) == _points(clean, record["collection"])


def test_rebuild_switches_the_alias_and_drops_the_old_collection(tmp_path):
    notes = write_notes(tmp_path / "notes")
    spec = qdrant(tmp_path / "qd", collection="notes")
    first = Engine.build([notes], tmp_path / "index", backend=spec)[0]
    before = ranked(first, "序列并行", "hybrid")
    second = Engine.build([notes], tmp_path / "index", rebuild=True)[0]
    old, new = first.manifest["backend"]["target"], second.manifest["backend"]["target"]
    assert old != new and old.startswith("notes-") and new.startswith("notes-")
    from search.index.qdrant_store import client_for, release

    client = client_for(spec)
    try:
        assert {(a.alias_name, a.collection_name) for a in client.get_aliases().aliases} == {("notes", new)}
        assert [c.name for c in client.get_collections().collections] == [new]
    finally:
        release(spec)
    assert ranked(first, "序列并行", "hybrid")[0][0] == before[0][0]  # an engine opened before still answers
    assert [pid for pid, _ in ranked(second, "序列并行", "hybrid")] == [pid for pid, _ in before]
    first.close(), second.close()


def test_sigkill_during_a_rebuild_leaves_a_queryable_collection_and_the_next_build_converges(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    for number in range(40):  # enough points that the mirror takes a moment
        paragraphs = [f"第{number}篇 第{i}段：序列并行与数据并行的笔记，词{number * 50 + i}。" for i in range(40)]
        (notes / f"n{number}.md").write_text("\n\n".join(paragraphs), encoding="utf-8")
    index, store = tmp_path / "index", tmp_path / "qd"
    command = [SEARCH, "index", str(notes), "--index", str(index), "--keyword-only"]
    subprocess.run(command + ["--backend", "qdrant", "--qdrant-path", str(store)], check=True, capture_output=True)
    with Engine.open(index) as engine:
        expected = ranked(engine, "序列并行 词77", "bm25")
    process = subprocess.Popen(command + ["--rebuild"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        if len(list((store / "collection").iterdir())) > 1:  # the rebuild's new collection is being filled
            time.sleep(0.2)
            break
        time.sleep(0.02)
    killed = process.poll() is None  # False only if the rebuild finished first (a much faster machine)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with Engine.open(index) as engine:  # the alias still names a complete collection
        assert ranked(engine, "序列并行 词77", "bm25") == expected, f"killed={killed}"
        assert 1 <= len(list((store / "collection").iterdir())) <= 2  # the live one, and a half-filled one if killed before the switch
    subprocess.run(command, check=True, capture_output=True)
    with Engine.open(index) as engine:
        assert ranked(engine, "序列并行 词77", "bm25") == expected
        assert len(list((store / "collection").iterdir())) == 1  # the killed rebuild's collection is gone


def test_keyword_only_build_and_repeated_texts_get_their_own_points(tmp_path):
    notes = write_notes(tmp_path / "notes")
    (notes / "twice.md").write_text("# A\n\n同一段话出现两次。\n\n# B\n\n同一段话出现两次。\n", encoding="utf-8")
    engine = Engine.build([notes], tmp_path / "index", backend=qdrant(tmp_path / "qd"),
                          build_config=BuildConfig(keyword_only=True))[0]
    assert engine.keyword_only and engine.search("序列并行", k=1)[0].path.endswith("并行.md")
    points = np.load(engine.generation.point_ids_file)
    assert len(np.unique(points, axis=0)) == len(points) == len(engine.passages) == engine.manifest["backend"]["points"]
    hit = engine.search("同一段话", k=1)[0]
    assert len(hit.duplicates) == 1  # both copies were found: two points, collapsed into one hit
    engine.close()


def test_seeds_same_top_ten_as_the_default_backend(seeds_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    embedded = Engine.build([seeds_dir], root / "embedded")[0]
    shutil.copytree(root / "embedded", root / "qdrant")  # moved to Qdrant: the same vectors, nothing embedded again
    remote, summary = Engine.build([seeds_dir], root / "qdrant", backend=qdrant(root / "qd"))
    assert summary.passages_embedded == 0
    top = remote.search("序列并行", k=5)[0]
    assert top.path.endswith("002_42593514c2d838f2.txt") and "序列并行" in top.text
    for query in ("序列并行", "GAN 训练不稳定", "注意力机制", "how to merge keyword and vector results"):
        assert [pid for pid, _ in ranked(remote, query, "hybrid")] == [pid for pid, _ in ranked(embedded, query, "hybrid")], query
    embedded.close(), remote.close()


# ----- errors a user understands, nothing lost locally ------------------------------------------

class _FakeServer(http.server.BaseHTTPRequestHandler):
    """Answers like a Qdrant server that refuses the key, or runs an old version."""

    status, body = 200, {}

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        data = json.dumps(self.body).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_server():
    servers = []

    def start(status: int, body: dict) -> str:
        handler = type("Handler", (_FakeServer,), {"status": status, "body": body})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SEARCH, *args], capture_output=True, text=True, env={**os.environ, "SEARCH_QDRANT_API_KEY": "wrong"})


def test_server_errors_are_one_line_and_leave_the_index_alone(tmp_path, fake_server):
    notes = write_notes(tmp_path / "notes")
    index = tmp_path / "index"
    Engine.build([notes], index)[0].close()
    live = (index / "CURRENT").read_text()
    cases = {
        "http://127.0.0.1:9": "cannot reach the Qdrant server at http://127.0.0.1:9",
        fake_server(401, {"status": {"error": "Unauthorized"}}): "refused the API key (HTTP 401): set SEARCH_QDRANT_API_KEY",
        fake_server(200, {"title": "qdrant - vector search engine", "version": "1.7.4"}): "runs version 1.7.4; this backend needs 1.10",
    }
    for url, message in cases.items():
        done = _cli("index", str(notes), "--index", str(index), "--rebuild", "--backend", "qdrant", "--qdrant-url", url)
        last = done.stderr.strip().splitlines()[-1]  # before it at most "warning: ... insecure connection" (a key over http)
        assert done.returncode == 1 and message in last and "Traceback" not in done.stderr, done.stderr
        assert (index / "CURRENT").read_text() == live and json.loads((index / "backend.json").read_text() if (index / "backend.json").exists() else '{"kind": "embedded"}')["kind"] == "embedded"
    with Engine.open(index) as engine:
        assert engine.search("序列并行", k=1)[0].path.endswith("并行.md")


def test_a_collection_of_other_vectors_is_refused(tmp_path):
    notes = write_notes(tmp_path / "notes")
    spec = qdrant(tmp_path / "qd", collection="shared")
    Engine.build([notes], tmp_path / "words", backend=spec, build_config=BuildConfig(keyword_only=True))[0].close()
    with pytest.raises(IncompatibleIndex, match=r"collection shared-.* holds vectors of none \(keyword-only\), this index uses en: .*all-MiniLM-L6-v2 \(384-dim\)"):
        Engine.build([notes], tmp_path / "vectors", backend=spec)
    Engine.build([notes], tmp_path / "words2", backend=spec, build_config=BuildConfig(keyword_only=True), rebuild=True)[0].close()
    with pytest.raises(IncompatibleIndex, match=r"collection shared at .* belongs to the index at .*words2: choose another --collection"):
        Engine.build([notes], tmp_path / "words", build_config=BuildConfig(keyword_only=True))  # one writer per collection
    with pytest.raises(SearchError, match="either --qdrant-url URL"):
        Engine.build([notes], tmp_path / "other", backend=BackendSpec("qdrant"))
    assert issubclass(BackendError, SearchError)


def test_an_existing_index_moves_to_qdrant_and_back_without_re_embedding(tmp_path):
    notes = write_notes(tmp_path / "notes")
    index = tmp_path / "index"
    before = Engine.build([notes], index)[0]
    expected = ranked(before, "序列并行", "hybrid")
    before.close()
    moved, summary = Engine.build([notes], index, backend=qdrant(tmp_path / "qd"))
    assert summary.passages_embedded == 0 and moved.manifest["backend"]["added"] == summary.passages
    assert ranked(moved, "序列并行", "hybrid") == expected
    moved.close()
    back, summary = Engine.build([notes], index, backend=BackendSpec())
    assert summary.passages_embedded == 0 and back.stats()["backend"] == {"kind": "embedded"}
    assert ranked(back, "序列并行", "hybrid") == expected and json.loads((index / "backend.json").read_text()) == {"kind": "embedded"}
    back.close()


def test_server_idf_writes_only_the_changed_points_and_ranks_like_the_default(tmp_path, pair):
    embedded, _ = pair
    notes = write_notes(tmp_path / "notes")
    spec = BackendSpec("qdrant", path=str(tmp_path / "qd"), idf="server")
    engine = Engine.build([notes], tmp_path / "index", backend=spec)[0]
    for query in QUERIES:  # Qdrant's IDF is Lucene's formula: the same BM25 on a fresh collection
        assert [pid for pid, _ in ranked(engine, query, "bm25")] == [pid for pid, _ in ranked(embedded, query, "bm25")], query
        assert ranked(engine, query, "hybrid") == ranked(embedded, query, "hybrid"), query
    engine.close()
    path = notes / "cooking.md"
    path.write_text(path.read_text().replace("two minutes", "three minutes"), encoding="utf-8")
    engine = Engine.build([notes], tmp_path / "index")[0]
    record = engine.manifest["backend"]
    assert (record["idf"], record["added"], record["reweighted"], record["deleted"]) == ("server", 1, 0, 1)
    assert engine.search("three minutes", k=1, mode="bm25")[0].path == str(path)
    engine.close()


def test_a_local_folder_held_by_another_process_is_one_line(tmp_path):
    notes = write_notes(tmp_path / "notes")
    with Engine.build([notes], tmp_path / "index", backend=qdrant(tmp_path / "qd"), build_config=BuildConfig(keyword_only=True))[0] as engine:
        done = _cli("index", str(notes), "--index", str(tmp_path / "index"))  # this process holds the folder
        assert done.returncode == 1 and "is open in another process" in done.stderr and "Traceback" not in done.stderr
        assert engine.search("序列并行", k=1)[0].path.endswith("并行.md")  # nothing changed under the open engine
