"""`search serve`'s JSON API over a real index of corpus/: the same hit fields as `search query
--json`, stats, facets, documents, health, OpenAPI, and following the index's generations."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
from serve_support import ENV, SEQUENCE_NOTE, build_index, copy_corpus, free_port, search_cli, wait_until
from starlette.testclient import TestClient

from search import Engine
from search.server import SearchService, ServerConfig, create_app

BASE = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def corpus_index(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("serve-api")
    notes = copy_corpus(root / "notes")
    build_index(notes, root / "index")
    return notes, root / "index"


@pytest.fixture(scope="module")
def client(corpus_index):
    _notes, index = corpus_index
    with TestClient(create_app(ServerConfig(index_dir=str(index))), base_url=BASE) as client:
        yield client


def test_search_returns_the_fields_of_search_query_json(client, corpus_index):
    _notes, index = corpus_index
    response = client.get("/api/search", params={"q": "序列并行", "k": 3})
    assert response.status_code == 200
    data = response.json()
    proc = subprocess.run(search_cli("query", "序列并行", "-k", "3", "--json", "--index", str(index)),
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cli_hits = json.loads(proc.stdout)
    assert [hit["passage_id"] for hit in data["hits"]] == [hit["passage_id"] for hit in cli_hits]
    assert set(data["hits"][0]) == set(cli_hits[0])  # exactly the --json fields, location included
    first = data["hits"][0]
    assert first["path"].endswith(SEQUENCE_NOTE) and first["heading_path"] == ["序列并行"]
    assert first["location"] == f"{first['path']}:{first['line_start']}"
    assert data["mode"] == "hybrid" and data["k"] == 3 and data["passages"] > 0
    assert {"序列", "并行"} <= set(data["highlight_terms"])
    assert response.headers["x-search-generation"] == data["generation"]


def test_english_query_modes_and_filters(client):
    data = client.get("/api/search", params={"q": "how do I merge keyword and vector results", "k": 5}).json()
    assert data["hits"][0]["path"].endswith("retrieval-notes.md")
    bm25 = client.get("/api/search", params={"q": "BM25", "mode": "bm25"}).json()
    assert bm25["mode"] == "bm25" and all(hit["dense_rank"] is None for hit in bm25["hits"])
    tagged = client.get("/api/search", params=[("q", "训练"), ("tag", "机器学习"), ("k", "20")]).json()
    assert tagged["hits"] and all(hit["path"].endswith(SEQUENCE_NOTE) for hit in tagged["hits"])
    typed = client.get("/api/search", params=[("q", "番茄"), ("type", "txt")]).json()
    assert typed["hits"] and all(hit["path"].endswith(".txt") for hit in typed["hits"])
    nothing = client.get("/api/search", params=[("q", "训练"), ("tag", "no-such-tag")]).json()
    assert nothing["hits"] == [] and "no-such-tag" in nothing["filtered_out"]


def test_repeated_queries_are_answered_from_the_cache_of_their_generation(client):
    first = client.get("/api/search", params={"q": "数据并行 all-reduce", "k": 4}).json()
    again = client.get("/api/search", params={"q": "数据并行 all-reduce", "k": 4}).json()
    assert again["cached"] and again["hits"] == first["hits"] and again["generation"] == first["generation"]
    other = client.get("/api/search", params={"q": "数据并行 all-reduce", "k": 4, "mode": "bm25"}).json()
    assert not other["cached"]


def test_stats_facets_health_and_openapi(client, corpus_index):
    notes, _index = corpus_index
    stats = client.get("/api/stats").json()
    assert stats["files"] == 5 and stats["passages"] > 0 and stats["generation"].startswith("gen-")
    facets = client.get("/api/facets").json()
    assert "机器学习" in facets["tags"] and {"md", "txt"} <= set(facets["types"])
    assert facets["folders"] == [str(notes)]
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["generation"] == stats["generation"]
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.") and {"/api/search", "/api/stats", "/api/document", "/healthz"} <= set(spec["paths"])


def test_document_shows_the_passage_with_its_surroundings(client, corpus_index):
    notes, _index = corpus_index
    hit = client.get("/api/search", params={"q": "序列并行", "k": 1}).json()["hits"][0]
    data = client.get("/api/document", params={"path": hit["path"], "line": hit["line_start"], "end": hit["line_end"], "context": 3}).json()
    lines = (notes / SEQUENCE_NOTE).read_text(encoding="utf-8").splitlines()
    assert data["first_line"] == hit["line_start"] - 3 and data["focus"] == [hit["line_start"], hit["line_end"]]
    assert data["lines"] == lines[data["first_line"] - 1 : data["last_line"]]
    assert "序列并行沿序列维度切分输入" in data["lines"][3]


def test_the_page_and_its_files_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and "搜索" in page.text and "Search" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.split("<body>")[0].replace('http://www.w3.org', '')  # nothing from a CDN
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"]


def test_server_follows_new_generations_without_failing_requests(tmp_path):
    notes = copy_corpus(tmp_path / "notes")
    index = tmp_path / "index"
    build_index(notes, index)
    service = SearchService(str(index))
    with TestClient(create_app(ServerConfig(index_dir=str(index)), service), base_url=BASE) as client:
        before = client.get("/api/search", params={"q": "蓝莓松饼", "mode": "bm25"}).json()
        assert not any("muffin.md" in hit["path"] for hit in before["hits"])
        # a request in flight on the old engine while the new generation is published
        with service.holder.lease() as old_slot:
            (notes / "muffin.md").write_text("# 蓝莓松饼\n\n蓝莓松饼要用冷黄油，面糊不要搅拌过度。\n", encoding="utf-8")
            subprocess.run(search_cli("index", str(notes), "--index", str(index)), check=True, capture_output=True, env=ENV, timeout=180)
            after = client.get("/api/search", params={"q": "蓝莓松饼", "mode": "bm25"}).json()
            assert after["generation"] != before["generation"] and not after["cached"]
            assert after["hits"][0]["path"].endswith("muffin.md")
            # the old engine still answers its request: it is closed only when that request ends
            assert old_slot.engine.search("序列并行", k=1).hits
            assert not old_slot.closed
        assert old_slot.closed
        assert client.get("/api/stats").json()["server"]["generation_swaps"] == 1


def test_no_index_yet_then_an_empty_one_then_notes(tmp_path):
    index, empty, notes = tmp_path / "index", tmp_path / "empty", tmp_path / "notes"
    empty.mkdir()
    with TestClient(create_app(ServerConfig(index_dir=str(index))), base_url=BASE) as client:
        response = client.get("/api/search", params={"q": "序列并行"})
        assert response.status_code == 503 and "search index" in response.json()["error"]
        assert client.get("/healthz").status_code == 503
        Engine.build([str(empty)], str(index))[0].close()
        time.sleep(1.1)  # a failed open is retried after a second
        data = client.get("/api/search", params={"q": "序列并行"}).json()
        assert data["hits"] == [] and data["passages"] == 0  # the page says "the index is empty"
        copy_corpus(notes)
        Engine.build([str(notes)], str(index))[0].close()
        assert client.get("/api/search", params={"q": "序列并行"}).json()["hits"][0]["path"].endswith(SEQUENCE_NOTE)


def test_concurrent_requests_during_a_rebuild_all_succeed(tmp_path):
    notes = copy_corpus(tmp_path / "notes")
    index = tmp_path / "index"
    build_index(notes, index)
    errors: list[str] = []
    generations: set[str] = set()
    stop = threading.Event()
    with TestClient(create_app(ServerConfig(index_dir=str(index))), base_url=BASE) as client:
        def hammer() -> None:
            while not stop.is_set():
                response = client.get("/api/search", params={"q": "序列并行", "k": 3})
                if response.status_code != 200:
                    errors.append(response.text)
                else:
                    generations.add(response.json()["generation"])

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            (notes / "extra.md").write_text("# 额外\n\n新的一段笔记。\n", encoding="utf-8")
            Engine.build([str(notes)], str(index))[0].close()
            assert wait_until(lambda: len(generations) == 2, timeout=30)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
    assert errors == []


def test_search_serve_command_follows_search_index_in_another_process(tmp_path):
    """The real command: `search serve` in one process, `search index` in another."""
    notes = copy_corpus(tmp_path / "notes")
    index = tmp_path / "index"
    build_index(notes, index)
    port = free_port()
    server = subprocess.Popen(search_cli("serve", "--index", str(index), "--port", str(port)), env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import httpx2 as httpx

        url = f"http://127.0.0.1:{port}"

        def get(path: str, **params):
            try:
                return httpx.get(url + path, params=params, timeout=10)
            except httpx.TransportError:
                return None

        assert wait_until(lambda: (r := get("/healthz")) is not None and r.status_code == 200, timeout=60)
        first = get("/api/stats").json()["generation"]
        (notes / "muffin.md").write_text("# Blueberry muffins\n\nUse cold butter and do not overmix the batter.\n", encoding="utf-8")
        subprocess.run(search_cli("index", str(notes), "--index", str(index)), check=True, capture_output=True, env=ENV, timeout=180)
        data = get("/api/search", q="blueberry muffins batter", k=1).json()
        assert data["generation"] != first and data["hits"][0]["path"].endswith("muffin.md")
    finally:
        server.terminate()
        _out, err = server.communicate(timeout=30)
    assert "serving" in err and "Traceback" not in err


def test_search_serve_watch_indexes_and_serves_in_one_process(tmp_path):
    notes = copy_corpus(tmp_path / "notes")
    index = tmp_path / "index"
    port = free_port()
    server = subprocess.Popen(search_cli("serve", "--index", str(index), "--port", str(port), "--watch", str(notes)),
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import httpx2 as httpx

        def hit_path(query: str) -> str | None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/api/search", params={"q": query, "k": 1}, timeout=10)
            except httpx.TransportError:
                return None
            hits = response.json().get("hits") if response.status_code == 200 else None
            return hits[0]["path"] if hits else None

        assert (wait_until(lambda: hit_path("序列并行"), timeout=90) or "").endswith(SEQUENCE_NOTE)
        (notes / "muffin.md").write_text("# Blueberry muffins\n\nUse cold butter and do not overmix the batter.\n", encoding="utf-8")
        found = wait_until(lambda: (p := hit_path("blueberry muffins batter")) and p.endswith("muffin.md") and p, timeout=60)
        assert found
    finally:
        server.terminate()
        _out, err = server.communicate(timeout=30)
    assert "Traceback" not in err


class _FakeEngine:
    """Stands for an Engine of one generation: stale once `published` names another."""

    def __init__(self, world: dict) -> None:
        self.world, self.generation, self.closed = world, world["published"], False
        if world.get("fail"):
            from search import IndexNotFound

            raise IndexNotFound("no index here: run `search index`")
        world["opened"] += 1

    def is_stale(self) -> bool:
        return self.world["published"] != self.generation

    def stats(self) -> dict:
        return {"generation": self.generation}

    def read_ahead(self) -> int:
        return 0  # no files

    def search(self, text, k=10, mode="hybrid", filters=None):
        assert not self.closed, "searched a closed engine"

    def close(self) -> None:
        self.closed = True


def test_engine_holder_swaps_generations_and_closes_old_engines_after_their_last_request():
    from search.server.engines import EngineHolder, IndexUnavailable

    world = {"published": "gen-1", "opened": 0, "fail": True}
    holder = EngineHolder("unused", opener=lambda _dir: _FakeEngine(world), retry_seconds=0.0)
    with pytest.raises(IndexUnavailable, match="search index"):
        with holder.lease():
            pass
    world["fail"] = False
    with holder.lease() as first:
        assert first.generation == "gen-1"
    world["published"] = "gen-2"
    with holder.lease() as second:
        assert second.generation == "gen-2" and first.engine.closed and not second.engine.closed
        world["published"] = "gen-3"
        with holder.lease() as third:  # the next generation is swapped in while a request runs
            assert third.generation == "gen-3"
        assert not second.engine.closed  # still in use by the outer request
    assert second.engine.closed and not third.engine.closed
    world["published"], world["fail"] = "gen-4", True  # a new generation that cannot be opened
    with holder.lease() as kept:
        assert kept.generation == "gen-3"  # the old engine goes on serving
    world["fail"] = False
    with holder.lease() as fourth:
        assert fourth.generation == "gen-4"
    def request() -> None:
        with holder.lease() as slot:
            slot.engine.search("x")

    threads = [threading.Thread(target=request) for _ in range(4)]
    world["published"] = "gen-5"
    opened = world["opened"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert world["opened"] == opened + 1  # several requests found it stale; one opened it
    holder.close()


def test_uvicorn_serves_on_its_c_parser_and_event_loop():
    """httptools and uvloop are in the lock because uvicorn picks them up only when installed: without
    them it falls back to pure Python (h11, asyncio), and a cached answer costs 1.7x the CPU."""
    import asyncio
    import sys

    from uvicorn.loops.auto import auto_loop_factory
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    assert AutoHTTPProtocol.__name__ == "HttpToolsProtocol"
    if sys.platform != "win32":
        loop = auto_loop_factory()()
        try:
            assert type(loop).__module__.startswith("uvloop") and isinstance(loop, asyncio.AbstractEventLoop)
        finally:
            loop.close()
