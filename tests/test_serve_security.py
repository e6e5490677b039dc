"""Safe by default: loopback binds, tokens, Host/Origin checks (DNS rebinding), CORS only when asked,
read-only, documents of indexed files only, and every bound a clear 4xx JSON error."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest
from serve_support import ENV, SEQUENCE_NOTE, build_index, copy_corpus, search_cli
from starlette.testclient import TestClient

from search import SearchError
from search.server import SearchService, ServerConfig, ServerLimits, check_bind, create_app, is_loopback
from search.server.security import Guard

BASE = "http://127.0.0.1:8765"
REMOTE = ("203.0.113.7", 40000)  # a client on another machine (simulated: nothing binds beyond loopback)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """corpus/ indexed with a symlink out of the tree among the notes, and a secret beside the tree."""
    root = tmp_path_factory.mktemp("serve-security")
    notes = copy_corpus(root / "notes")
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# 秘密 Secret\n\npassword = hunter2\n", encoding="utf-8")
    (notes / "link.md").symlink_to(outside / "secret.md")
    (outside / "folder").mkdir()
    (outside / "folder" / "deep.md").write_text("# Deep secret\n\ntoken = abc\n", encoding="utf-8")
    (notes / "linked-folder").symlink_to(outside / "folder", target_is_directory=True)
    build_index(notes, root / "index")
    return root, notes, outside


@pytest.fixture(scope="module")
def client(tree):
    root, _notes, _outside = tree
    with TestClient(create_app(ServerConfig(index_dir=str(root / "index"))), base_url=BASE) as client:
        yield client


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert message and "Traceback" not in message
    return message


# ----- documents: only files the index holds, inside its tree ------------------------------------

def test_document_of_an_indexed_file_is_served(client, tree):
    _root, notes, _outside = tree
    response = client.get("/api/document", params={"path": str(notes / SEQUENCE_NOTE), "line": 34})
    assert response.status_code == 200 and any("序列并行" in line for line in response.json()["lines"])


@pytest.mark.parametrize("make_path", [
    lambda notes, outside: str(notes / ".." / "outside" / "secret.md"),  # ../ out of the tree
    lambda notes, outside: f"{notes}/../notes/{SEQUENCE_NOTE}",  # ../ back in: refused all the same
    lambda notes, outside: str(outside / "secret.md"),  # an absolute path outside
    lambda notes, outside: "/etc/passwd",
    lambda notes, outside: "../../etc/passwd",
    lambda notes, outside: f"notes/{SEQUENCE_NOTE}",  # relative
    lambda notes, outside: str(notes / "link.md"),  # a symlink out of the tree
    lambda notes, outside: str(notes / "linked-folder" / "deep.md"),  # through a symlinked folder
    lambda notes, outside: str(notes) + "/",  # the folder itself
    lambda notes, outside: str(notes / SEQUENCE_NOTE) + "\x00.txt",
], ids=["dotdot-out", "dotdot-in", "outside", "etc-passwd", "relative-dotdot", "relative", "symlink-file",
        "symlink-folder", "folder", "nul"])
def test_document_outside_the_index_is_404(client, tree, make_path):
    _root, notes, outside = tree
    for endpoint in ("/api/document",):
        message = _error(client.get(endpoint, params={"path": make_path(notes, outside), "line": 1}), 404)
        assert "hunter2" not in message


def test_document_of_a_note_replaced_by_a_symlink_after_indexing_is_404(tmp_path):
    notes = copy_corpus(tmp_path / "notes")
    build_index(notes, tmp_path / "index")
    (tmp_path / "secret.txt").write_text("password = hunter2\n", encoding="utf-8")
    note = notes / "中文分词.md"
    with TestClient(create_app(ServerConfig(index_dir=str(tmp_path / "index"))), base_url=BASE) as client:
        assert client.get("/api/document", params={"path": str(note)}).status_code == 200
        note.unlink()
        note.symlink_to(tmp_path / "secret.txt")
        response = client.get("/api/document", params={"path": str(note)})
        assert "hunter2" not in response.text
        _error(response, 404)


def test_document_bounds(client, tree):
    _root, notes, _outside = tree
    path = str(notes / SEQUENCE_NOTE)
    assert "at most" in _error(client.get("/api/document", params={"path": path, "line": 1, "end": 5000}), 400)
    _error(client.get("/api/document", params={"path": path, "line": 0}), 400)
    _error(client.get("/api/document", params={"path": path, "line": "x"}), 400)
    _error(client.get("/api/document", params={"path": path, "context": 10_000}), 400)
    _error(client.get("/api/document", params={"path": path, "line": 9999}), 404)
    _error(client.get("/api/document"), 400)


# ----- Host and Origin: DNS rebinding -------------------------------------------------------------

def test_foreign_host_is_421(client):
    for host in ("evil.example", "evil.example:8765", "127.0.0.1:9999", "localhost.evil.example:8765", ""):
        _error(client.get("/api/stats", headers={"host": host}), 421)
    _error(client.get("/", headers={"host": "rebind.attacker.example:8765"}), 421)  # the page too
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765"):
        assert client.get("/api/stats", headers={"host": host}).status_code == 200


def test_foreign_origin_is_403_and_there_is_no_cors_by_default(client):
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999", "https://localhost:8765.evil.example"):
        _error(client.get("/api/stats", headers={"origin": origin}), 403)
    own = client.get("/api/stats", headers={"origin": "http://127.0.0.1:8765"})
    assert own.status_code == 200 and "access-control-allow-origin" not in own.headers
    preflight = client.options("/api/search", headers={"origin": "http://127.0.0.1:8765", "access-control-request-method": "GET"})
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_only_for_the_origins_asked(tree):
    root, _notes, _outside = tree
    config = ServerConfig(index_dir=str(root / "index"), cors_origins=["http://localhost:3000"], mcp=False)
    with TestClient(create_app(config), base_url=BASE) as client:
        allowed = client.get("/api/stats", headers={"origin": "http://localhost:3000"})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "http://localhost:3000"
        preflight = client.options("/api/search", headers={"origin": "http://localhost:3000", "access-control-request-method": "GET"})
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        _error(client.get("/api/stats", headers={"origin": "http://localhost:4000"}), 403)


def test_guard_checks_alone():
    guard = Guard("127.0.0.1", 8765)
    assert guard.host_allowed("127.0.0.1:8765") and guard.host_allowed("LOCALHOST:8765")
    assert not guard.host_allowed("127.0.0.1") and not guard.host_allowed("evil.example:8765") and not guard.host_allowed(None)
    assert guard.origin_allowed(None) and guard.origin_allowed("http://localhost:8765")
    assert not guard.origin_allowed("http://localhost:8765/path") and not guard.origin_allowed("file://")
    proxied = Guard("127.0.0.1", 8765, allowed_hosts=["notes.example.org"])
    assert proxied.host_allowed("notes.example.org") and proxied.origin_allowed("https://notes.example.org")


# ----- binding beyond loopback needs a token; then every request needs it --------------------------

def test_binding_beyond_loopback_needs_a_token():
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        assert is_loopback(host)
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.org"):
        assert not is_loopback(host)
        with pytest.raises(SearchError, match="--token"):
            check_bind(host, None)
        check_bind(host, "s3cret")


def test_search_serve_refuses_a_public_bind_without_token_before_listening():
    proc = subprocess.run(search_cli("serve", "--host", "0.0.0.0", "--port", "1", "--index", "/nonexistent"),
                          capture_output=True, text=True, env={**ENV, "SEARCH_TOKEN": ""}, timeout=60)
    assert proc.returncode == 1 and "--token" in proc.stderr and "Traceback" not in proc.stderr


def test_token_is_required_on_every_request_of_a_public_server(tree):
    root, notes, _outside = tree
    config = ServerConfig(index_dir=str(root / "index"), host="0.0.0.0", token="s3cret")
    with TestClient(create_app(config), base_url=BASE, client=REMOTE) as client:
        for path in ("/api/search?q=序列并行", "/api/stats", "/api/facets", "/healthz", "/openapi.json",
                     f"/api/document?path={notes / SEQUENCE_NOTE}"):
            response = client.get(path)
            assert "needs a token" in _error(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "wrong token" in _error(client.get(path, headers={"authorization": "Bearer nope"}), 401)
            assert client.get(path, headers={"authorization": "Bearer s3cret"}).status_code == 200
        _error(client.post("/mcp", json={}), 401)
        # the page shell holds no data: it loads, then asks for the token
        assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200


# ----- read-only, bounds, and no tracebacks ---------------------------------------------------------

def test_read_only(client):
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        message = _error(client.request(method, "/api/search?q=x"), 405)
        assert "read-only" in message
    _error(client.get("/no/such/thing"), 404)


def test_oversized_query_k_and_filters_are_400(client):
    assert "too long" in _error(client.get("/api/search", params={"q": "序" * 501}), 400)
    _error(client.get("/api/search", params={"q": "x" * 10_000}), 400)
    assert "1 to 100" in _error(client.get("/api/search", params={"q": "x", "k": 101}), 400)
    for k in ("0", "-1", "ten", "1e9", "99999999999999999999999"):
        _error(client.get("/api/search", params={"q": "x", "k": k}), 400)
    _error(client.get("/api/search", params={"q": "  "}), 400)
    _error(client.get("/api/search"), 400)
    _error(client.get("/api/search", params={"q": "x", "mode": "magic"}), 400)
    _error(client.get("/api/search", params=[("q", "x")] + [("tag", f"t{i}") for i in range(40)]), 400)
    _error(client.get("/api/search", params={"q": "x", "path": "p" * 1000}), 400)


def test_response_size_is_bounded(tree):
    root, _notes, _outside = tree
    config = ServerConfig(index_dir=str(root / "index"), limits=ServerLimits(max_response_bytes=3000), mcp=False)
    with TestClient(create_app(config), base_url=BASE) as client:
        assert "limit" in _error(client.get("/api/search", params={"q": "训练", "k": 20}), 400)
        assert client.get("/api/search", params={"q": "训练", "k": 1}).status_code == 200


def test_concurrency_is_bounded_with_429(tree):
    root, _notes, _outside = tree
    config = ServerConfig(index_dir=str(root / "index"), limits=ServerLimits(max_inflight=1), mcp=False)
    service = SearchService(config.index_dir, config.limits)
    inside, release = threading.Event(), threading.Event()
    real_stats = service.stats

    def slow_stats(slot):
        inside.set()
        release.wait(30)
        return real_stats(slot)

    with TestClient(create_app(config, service), base_url=BASE) as client:
        service.stats = slow_stats
        results = []
        first = threading.Thread(target=lambda: results.append(client.get("/api/stats").status_code))
        first.start()
        try:
            assert inside.wait(30)
            response = client.get("/api/search", params={"q": "x"})
            assert "busy" in _error(response, 429) and response.headers["retry-after"]
        finally:
            release.set()
            first.join(30)
        assert results == [200]


def test_unexpected_errors_are_json_without_traceback(tree):
    root, _notes, _outside = tree
    config = ServerConfig(index_dir=str(root / "index"), mcp=False)
    service = SearchService(config.index_dir)

    def broken(slot):
        raise RuntimeError("/secret/path/in/a/traceback")

    with TestClient(create_app(config, service), base_url=BASE, raise_server_exceptions=False) as client:
        service.stats = broken
        message = _error(client.get("/api/stats"), 500)
        assert "RuntimeError" in message and "/secret/path" not in message


def test_mcp_body_size_is_bounded(client):
    response = client.post("/mcp", content=b"{" + b" " * (300 * 1024) + b"}",
                           headers={"content-type": "application/json", "accept": "application/json, text/event-stream"})
    assert response.status_code == 413


def test_symlinked_note_was_not_read_into_documents(tree, client):
    """Whatever the loader did with the symlinks, nothing of the secrets comes back as a document."""
    _root, notes, outside = tree
    hits = client.get("/api/search", params={"q": "password hunter2 token", "k": 20}).json()["hits"]
    for hit in hits:
        response = client.get("/api/document", params={"path": hit["path"], "line": hit["line_start"]})
        assert "hunter2" not in response.text and "token = abc" not in response.text
    assert os.path.islink(notes / "link.md")
