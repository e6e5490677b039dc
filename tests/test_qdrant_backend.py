"""The Qdrant backend (issue 15) against both local engines, qdrant-client's local mode and Qdrant Edge
(each test that runs on one runs on both): the same hits as the default backend, the rebuild job
(incremental, deletions, atomic rebuild, kill -9), filters, moving an index, and its errors."""

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
from search.index.backends import mirror_for
from search.index.qdrant_client_engine import client_for, release

SEARCH = str(Path(sys.executable).parent / "search")
QUERIES = ["序列并行", "数据并行 梯度", "how long should I knead bread dough", "green tea bitter", "番茄炒蛋",
           "all-to-all 通信", "oven", "ZeRO-3"]
OPTION = {"local": "--qdrant-path", "edge": "--qdrant-edge"}  # each local engine's folder option


@pytest.fixture(scope="module", params=["local", "edge"])
def engine(request) -> str:
    """Which local Qdrant the test runs on: qdrant-client's local mode, or Qdrant Edge."""
    return request.param


def qdrant(folder: Path, engine: str, collection: str | None = None, idf: str = "client") -> BackendSpec:
    return BackendSpec("qdrant", **{"edge" if engine == "edge" else "path": str(folder)}, collection=collection, idf=idf)


def stored(spec: BackendSpec) -> list[str]:
    """The collections (local mode) or shard folders (Qdrant Edge) on disk in the engine's folder (read
    without opening it: local mode would refuse while another process holds it)."""
    folder = Path(spec.edge) if spec.edge else Path(spec.path) / "collection"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def ranked(engine: Engine, query: str, mode: str, **options) -> list[tuple[int, float]]:
    return [(hit.passage_id, round(hit.score, 4)) for hit in engine.search(query, k=10, mode=mode, collapse=False, **options).hits]


def assert_ranks_alike(engine: Engine, reference: Engine, query: str, mode: str, **options) -> None:
    """The same passages in the same order, with scores equal but for float32 summation order: Qdrant's and
    FAISS's dot products take different SIMD paths per CPU class, so a rounded digit can flip between them."""
    def hits(of: Engine) -> list:
        return of.search(query, k=10, mode=mode, collapse=False, **options).hits
    got, expected = hits(engine), hits(reference)
    assert got and [hit.passage_id for hit in got] == [hit.passage_id for hit in expected], (query, mode, options)
    assert [hit.score for hit in got] == pytest.approx([hit.score for hit in expected], abs=1e-5), (query, mode, options)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, engine):
    """The test notes indexed by the default backend and by a local Qdrant."""
    root = tmp_path_factory.mktemp("pair")
    notes = write_notes(root / "notes")
    embedded = Engine.build([notes], root / "embedded")[0]
    remote = Engine.build([notes], root / "qdrant", backend=qdrant(root / "qd", engine))[0]
    yield embedded, remote
    embedded.close(), remote.close()


def test_same_hits_and_scores_as_the_default_backend(pair):
    embedded, remote = pair
    assert remote.stats()["backend"]["kind"] == "qdrant" and embedded.stats()["backend"] == {"kind": "embedded"}
    for query in QUERIES:
        for mode in ("bm25", "dense", "hybrid"):
            assert_ranks_alike(remote, embedded, query, mode)
    hit, same = remote.search("序列并行", k=1)[0], embedded.search("序列并行", k=1)[0]
    assert (hit.path, hit.line_start, hit.bm25_rank, hit.dense_rank) == (same.path, same.line_start, same.bm25_rank, same.dense_rank)
    assert hit.bm25_score == pytest.approx(same.bm25_score, rel=1e-6) and hit.dense_score == pytest.approx(same.dense_score, abs=1e-6)


def test_filters_apply_inside_the_query(pair):
    embedded, remote = pair
    for filters in (Filters(tags=["机器学习"]), Filters(paths=["*.txt"]), Filters(types=["md"]), Filters(paths=["**/cooking.md"], types=["md"])):
        for mode in ("bm25", "dense", "hybrid"):
            assert_ranks_alike(remote, embedded, "序列并行 tea 番茄", mode, filters=filters)
    only_text = remote.search("tea", k=10, filters=Filters(paths=["*.txt"])).hits
    assert only_text and all(hit.path.endswith(".txt") for hit in only_text)  # k asks for more than match: no md sneaks in
    assert remote.search("tea", filters=Filters(tags=["no such tag"])).hits == []


def test_ties_at_the_kth_score_are_cut_as_the_default_backend_cuts_them(tmp_path, engine):
    notes = tmp_path / "notes"
    notes.mkdir()
    for number in range(40):  # 40 passages of the same length holding "apple" once: one BM25 score
        (notes / f"fruit{number:02d}.md").write_text(f"apple zq{number:02d}\n", encoding="utf-8")
    words = BuildConfig(keyword_only=True)
    Engine.build([notes], tmp_path / "qdrant", backend=qdrant(tmp_path / "qd", engine), build_config=words)[0].close()
    for number in range(20):  # their new points now follow the others in the collection, not in passage order
        (notes / f"fruit{number:02d}.md").write_text(f"apple zr{number:02d}\n", encoding="utf-8")
    remote = Engine.build([notes], tmp_path / "qdrant")[0]
    embedded = Engine.build([notes], tmp_path / "embedded", build_config=words)[0]
    assert len({score for _, score in ranked(embedded, "apple", "bm25")}) == 1  # a tie across the top 10 and past it
    tokens = embedded.search("apple", k=1).query.tokens
    for k in (3, 10, 30):  # the backends' own top k (a query asks for more candidates than the tie holds)
        (default, _), (found, _) = embedded.backend.bm25_top(tokens, k, None), remote.backend.bm25_top(tokens, k, None)
        assert found.tolist() == default.tolist() == list(range(k))  # the tie cut at k by passage id
    embedded.close(), remote.close()


def _points(spec: BackendSpec, record: dict) -> dict:
    """Every point of a generation's collection, read with the engine's own API: id -> (vectors, payload)."""
    if spec.edge:
        from qdrant_edge import EdgeShard, ScrollRequest

        shard = EdgeShard.load(os.path.join(spec.edge, record["target"]))
        try:
            points, _ = shard.scroll(ScrollRequest(limit=10_000, with_payload=True, with_vector=True))
        finally:
            shard.close()
    else:
        client = client_for(spec)
        try:
            points, _ = client.scroll(record["collection"], limit=10_000, with_payload=True, with_vectors=True)
        finally:
            release(spec)

    def vectors(point):
        return {name: (sorted(zip(value.indices, [round(v, 5) for v in value.values])) if hasattr(value, "indices")
                       else [round(v, 5) for v in value]) for name, value in point.vector.items()}
    return {str(point.id): (vectors(point), point.payload) for point in points}


def test_incremental_edit_and_delete_converge_to_a_clean_build(tmp_path, engine):
    notes = write_notes(tmp_path / "notes")
    spec = qdrant(tmp_path / "qd", engine)
    Engine.build([notes], tmp_path / "index", backend=spec)[0].close()
    path = notes / "cooking.md"
    path.write_text(path.read_text().replace("two minutes", "three minutes"), encoding="utf-8")
    index, summary = Engine.build([notes], tmp_path / "index")  # the backend is as recorded: no options
    assert summary.passages_embedded <= 3 and index.manifest["backend"]["added"] == 1
    assert index.search("three minutes", k=1, mode="bm25")[0].path == str(path)
    index.close()
    (notes / "菜谱.txt").unlink()
    index, summary = Engine.build([notes], tmp_path / "index")
    record = index.manifest["backend"]
    assert summary.passages_embedded == 0 and (record["added"], record["deleted"], record["points"]) == (0, 1, 4)
    if spec.edge:  # the shard is a copy of the previous one: Edge's preallocated files stay sparse in it
        files = [path.stat() for path in (Path(spec.edge) / record["target"]).rglob("*") if path.is_file()]
        assert sum(stat.st_blocks * 512 for stat in files) < sum(stat.st_size for stat in files) / 4
    assert not any("番茄" in hit.text for hit in index.search("番茄炒蛋", k=5))
    index.close()
    # the same generation mirrored from scratch into another folder holds exactly the same points
    clean = qdrant(tmp_path / "clean", spec.engine, collection=record["collection"])
    clean_record = mirror_for(clean, rebuild=True)(index.generation, index.manifest, None)
    assert _points(spec, record) == _points(clean, clean_record) and len(_points(spec, record)) == 4


def test_rebuild_switches_atomically_and_drops_the_old_collection(tmp_path, engine):
    notes = write_notes(tmp_path / "notes")
    spec = qdrant(tmp_path / "qd", engine, collection="notes")
    first = Engine.build([notes], tmp_path / "index", backend=spec)[0]
    before = ranked(first, "序列并行", "hybrid")
    second = Engine.build([notes], tmp_path / "index", rebuild=True)[0]
    old, new = first.manifest["backend"]["target"], second.manifest["backend"]["target"]
    assert old != new and old.startswith("notes-") and new.startswith("notes-")
    if engine == "local":  # the alias switched in one call; the old collection is dropped
        client = client_for(spec)
        try:
            assert {(a.alias_name, a.collection_name) for a in client.get_aliases().aliases} == {("notes", new)}
        finally:
            release(spec)
        assert stored(spec) == [new]
    else:  # each generation names its own shard (CURRENT switched them); the previous generation's stays, as it does
        assert stored(spec) == sorted([old, new])
    assert ranked(first, "序列并行", "hybrid")[0][0] == before[0][0]  # an engine opened before still answers
    assert [pid for pid, _ in ranked(second, "序列并行", "hybrid")] == [pid for pid, _ in before]
    expected = ranked(second, "序列并行", "hybrid")
    first.close(), second.close()
    third = Engine.build([notes], tmp_path / "index")[0]  # incremental
    assert ranked(third, "序列并行", "hybrid") == expected
    assert stored(spec) == ([new] if engine == "local" else sorted([new, third.manifest["backend"]["target"]]))
    third.close()


def test_sigkill_during_a_rebuild_leaves_a_queryable_collection_and_the_next_build_converges(tmp_path, engine):
    notes = tmp_path / "notes"
    notes.mkdir()
    for number in range(40):  # enough points that the mirror takes a moment
        paragraphs = [f"第{number}篇 第{i}段：序列并行与数据并行的笔记，词{number * 50 + i}。" for i in range(40)]
        (notes / f"n{number}.md").write_text("\n\n".join(paragraphs), encoding="utf-8")
    index, store = tmp_path / "index", tmp_path / "qd"
    spec = qdrant(store, engine)
    command = [SEARCH, "index", str(notes), "--index", str(index), "--keyword-only"]
    subprocess.run(command + ["--backend", "qdrant", OPTION[engine], str(store)], check=True, capture_output=True)
    with Engine.open(index) as opened:
        expected = ranked(opened, "序列并行 词77", "bm25")
    process = subprocess.Popen(command + ["--rebuild"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        if len(stored(spec)) > 1:  # the rebuild's new collection is being filled
            time.sleep(0.2 if engine == "local" else 0.01)  # Qdrant Edge fills it in a fraction of a second
            break
        time.sleep(0.01)
    killed = process.poll() is None  # False only if the rebuild finished first (a much faster machine)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with Engine.open(index) as opened:  # the alias (local) or CURRENT (edge) still names a complete collection
        assert ranked(opened, "序列并行 词77", "bm25") == expected, f"killed={killed}"
        assert 1 <= len(stored(spec)) <= 2  # the live one, and a half-filled one if killed before the switch
        live = opened.manifest["backend"]["target"]
    subprocess.run(command, check=True, capture_output=True)
    with Engine.open(index) as opened:
        assert ranked(opened, "序列并行 词77", "bm25") == expected
        # the killed rebuild's collection is gone (Qdrant Edge keeps the previous generation's shard)
        now = opened.manifest["backend"]["target"]
        assert stored(spec) == ([now] if engine == "local" else sorted([live, now]))


def test_keyword_only_build_and_repeated_texts_get_their_own_points(tmp_path, engine):
    notes = write_notes(tmp_path / "notes")
    (notes / "twice.md").write_text("# A\n\n同一段话出现两次。\n\n# B\n\n同一段话出现两次。\n", encoding="utf-8")
    index = Engine.build([notes], tmp_path / "index", backend=qdrant(tmp_path / "qd", engine),
                         build_config=BuildConfig(keyword_only=True))[0]
    assert index.keyword_only and index.search("序列并行", k=1)[0].path.endswith("并行.md")
    points = np.load(index.generation.point_ids_file)
    assert len(np.unique(points, axis=0)) == len(points) == len(index.passages) == index.manifest["backend"]["points"]
    hit = index.search("同一段话", k=1)[0]
    assert len(hit.duplicates) == 1  # both copies were found: two points, collapsed into one hit
    index.close()


def test_seeds_same_top_ten_as_the_default_backend(seeds_dir, tmp_path_factory, engine):
    root = tmp_path_factory.mktemp("seeds")
    embedded = Engine.build([seeds_dir], root / "embedded")[0]
    shutil.copytree(root / "embedded", root / "qdrant")  # moved to Qdrant: the same vectors, nothing embedded again
    remote, summary = Engine.build([seeds_dir], root / "qdrant", backend=qdrant(root / "qd", engine))
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


def test_a_collection_of_other_vectors_is_refused(tmp_path, engine):
    notes = write_notes(tmp_path / "notes")
    spec = qdrant(tmp_path / "qd", engine, collection="shared")
    Engine.build([notes], tmp_path / "words", backend=spec, build_config=BuildConfig(keyword_only=True))[0].close()
    with pytest.raises(IncompatibleIndex, match=r"collection shared-.* holds vectors of none \(keyword-only\), this index uses en: .*all-MiniLM-L6-v2 \(384-dim\)"):
        Engine.build([notes], tmp_path / "vectors", backend=spec)
    Engine.build([notes], tmp_path / "words2", backend=spec, build_config=BuildConfig(keyword_only=True), rebuild=True)[0].close()
    with pytest.raises(IncompatibleIndex, match=r"collection shared at .* belongs to the index at .*words2: choose another --collection"):
        Engine.build([notes], tmp_path / "words", build_config=BuildConfig(keyword_only=True))  # one writer per collection
    with pytest.raises(SearchError, match="either --qdrant-url URL"):
        Engine.build([notes], tmp_path / "other", backend=BackendSpec("qdrant"))
    with pytest.raises(SearchError, match="either --qdrant-url URL"):  # one place, not two
        Engine.build([notes], tmp_path / "other", backend=BackendSpec("qdrant", path=str(tmp_path / "a"), edge=str(tmp_path / "b")))
    assert issubclass(BackendError, SearchError)


def _search_files(engine: Engine) -> list[str]:
    """The generation's files that only the default backend searches: FAISS indexes and BM25 matrices."""
    return sorted(path.name for path in engine.generation.path.rglob("*") if path.suffix == ".faiss" or "bm25" in path.parts)


def test_an_existing_index_moves_to_qdrant_and_back_without_re_embedding(tmp_path, engine):
    notes = write_notes(tmp_path / "notes")
    index = tmp_path / "index"
    before = Engine.build([notes], index)[0]
    expected = ranked(before, "序列并行", "hybrid")
    assert {"dense-zh.faiss", "dense-en.faiss"} <= set(_search_files(before))
    before.close()
    moved, summary = Engine.build([notes], index, backend=qdrant(tmp_path / "qd", engine))
    assert summary.passages_embedded == 0 and moved.manifest["backend"]["added"] == summary.passages
    assert ranked(moved, "序列并行", "hybrid") == expected
    # Qdrant searches: the folder keeps passages, tokens and vectors (hits, incremental reuse), no FAISS or BM25
    assert _search_files(moved) == [] and (moved.generation.path / "dense-zh.vectors.npy").is_file()
    moved.close()
    path = notes / "cooking.md"  # an incremental build there reuses those vectors
    path.write_text(path.read_text().replace("two minutes", "three minutes"), encoding="utf-8")
    edited, summary = Engine.build([notes], index)
    assert 1 <= summary.passages_embedded <= 3 and summary.passages_reused >= 3 and _search_files(edited) == []
    expected = ranked(edited, "序列并行", "hybrid")
    edited.close()
    back, summary = Engine.build([notes], index, backend=BackendSpec())
    assert summary.passages_embedded == 0 and back.stats()["backend"] == {"kind": "embedded"}
    assert ranked(back, "序列并行", "hybrid") == expected and json.loads((index / "backend.json").read_text()) == {"kind": "embedded"}
    assert {"dense-zh.faiss", "dense-en.faiss"} <= set(_search_files(back))
    back.close()


def test_server_idf_writes_only_the_changed_points_and_ranks_like_the_default(tmp_path, pair, engine):
    embedded, _ = pair
    notes = write_notes(tmp_path / "notes")
    spec = qdrant(tmp_path / "qd", engine, idf="server")
    index = Engine.build([notes], tmp_path / "index", backend=spec)[0]
    for query in QUERIES:  # Qdrant's IDF is Lucene's formula: the same BM25 on a fresh collection
        assert [pid for pid, _ in ranked(index, query, "bm25")] == [pid for pid, _ in ranked(embedded, query, "bm25")], query
        assert_ranks_alike(index, embedded, query, "hybrid")
    index.close()
    path = notes / "cooking.md"
    path.write_text(path.read_text().replace("two minutes", "three minutes"), encoding="utf-8")
    index = Engine.build([notes], tmp_path / "index")[0]
    record = index.manifest["backend"]
    assert (record["idf"], record["added"], record["reweighted"], record["deleted"]) == ("server", 1, 0, 1)
    assert index.search("three minutes", k=1, mode="bm25")[0].path == str(path)
    index.close()


def test_another_process_while_this_one_holds_the_index_open(tmp_path, engine):
    """Local mode lets one process at a time open its folder: a build elsewhere is refused in one line.
    Qdrant Edge shards are published read-only, so other processes build and query meanwhile."""
    notes = write_notes(tmp_path / "notes")
    with Engine.build([notes], tmp_path / "index", backend=qdrant(tmp_path / "qd", engine), build_config=BuildConfig(keyword_only=True))[0] as index:
        (notes / "new.md").write_text("# 新笔记\n\n序列并行的另一段笔记。\n", encoding="utf-8")
        done = _cli("index", str(notes), "--index", str(tmp_path / "index"))  # this process holds the folder
        if engine == "local":
            assert done.returncode == 1 and "is open in another process" in done.stderr and "Traceback" not in done.stderr
        else:
            assert done.returncode == 0, done.stderr
            found = _cli("query", "另一段笔记", "--index", str(tmp_path / "index"), "--json", "-k", "1")
            assert found.returncode == 0 and json.loads(found.stdout)[0]["path"].endswith("new.md"), found.stderr
            assert index.is_stale()
        assert not any(hit.path.endswith("new.md") for hit in index.search("另一段笔记", k=5))  # the open engine's generation
        assert index.search("序列并行", k=1)[0].path.endswith("并行.md")  # nothing changed under the open engine
