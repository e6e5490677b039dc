"""The ASGI app of `search serve`: the JSON API, the web page and MCP over streamable HTTP, over
one long-lived Engine (models load once) that follows the index's generations."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from search.server.openapi import openapi_document
from search.server.security import Guard, GuardMiddleware, send_json
from search.server.service import SearchService, ServerLimits, ServiceError

log = logging.getLogger("search.server")

STATIC_DIR = str(resources.files("search.server") / "static")
PAGE_HEADERS = {
    # the page loads nothing from elsewhere: no CDN, works offline
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",
}
JSON_HEADERS = {"x-content-type-options": "nosniff", "cache-control": "no-store"}


@dataclass
class ServerConfig:
    index_dir: str
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)
    limits: ServerLimits = field(default_factory=ServerLimits)
    mcp: bool = True  # MCP over streamable HTTP at /mcp


def create_app(config: ServerConfig, service: SearchService | None = None) -> Starlette:
    """The app; `service` may be shared with an MCP stdio server or given a test's engine holder."""
    service = service or SearchService(config.index_dir, config.limits)
    guard = Guard(config.host, config.port, config.token, config.allowed_hosts, config.cors_origins)

    def json_response(data: Any, status: int = 200, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(data, status_code=status, headers={**JSON_HEADERS, **(headers or {})})

    def error(status: int, message: str) -> JSONResponse:
        headers = {"retry-after": "1"} if status in (429, 503) else None
        return json_response({"error": message, "status": status}, status, headers)

    async def call(work, *args) -> Response:
        try:
            body, generation = await service.run(work, *args, encode=True)
        except ServiceError as failure:
            return error(failure.status, failure.message)
        headers = {**JSON_HEADERS, "x-search-generation": generation}
        return Response(body, media_type="application/json", headers=headers)

    async def api_search(request: Request) -> Response:
        query = request.query_params
        try:
            text, k, mode = service.check_search(
                query.get("q"), query.get("k"), query.get("mode"),
                query.getlist("path"), query.getlist("tag"), query.getlist("type"),
            )
        except ServiceError as failure:
            return error(failure.status, failure.message)
        return await call(service.search, text, k, mode, query.getlist("path"), query.getlist("tag"), query.getlist("type"))

    async def api_stats(request: Request) -> Response:
        return await call(service.stats)

    async def api_facets(request: Request) -> Response:
        return await call(service.facets)

    async def api_document(request: Request) -> Response:
        query = request.query_params
        return await call(service.document, query.get("path"), query.get("line"), query.get("end"), query.get("context"))

    async def healthz(request: Request) -> Response:
        try:
            data = await service.run(service.health)
        except ServiceError as failure:
            return json_response({"status": "no index", "error": failure.message, "index": config.index_dir}, 503)
        return json_response(data)

    async def openapi(request: Request) -> Response:
        return json_response(openapi_document(service.limits))

    async def page(request: Request) -> Response:
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), headers=PAGE_HEADERS)

    routes: list[Any] = [
        Route("/", page, methods=["GET", "HEAD"]),
        Route("/api/search", api_search, methods=["GET"]),
        Route("/api/stats", api_stats, methods=["GET"]),
        Route("/api/facets", api_facets, methods=["GET"]),
        Route("/api/document", api_document, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    mcp_server = None
    if config.mcp:
        from search.server.mcp_server import create_mcp_server, streamable_http_endpoint

        mcp_server = create_mcp_server(service)
        routes.append(Route("/mcp", streamable_http_endpoint(mcp_server), methods=["GET", "POST", "DELETE"]))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        import anyio.to_thread

        await anyio.to_thread.run_sync(service.holder.start)  # models load before the first request
        async with contextlib.AsyncExitStack() as stack:
            if mcp_server is not None:
                await stack.enter_async_context(mcp_server.session_manager.run())
            ready = getattr(app.state, "on_ready", None)
            if ready is not None:
                ready()
            yield
        service.holder.close()

    async def http_error(request: Request, exc: HTTPException) -> Response:
        messages = {404: f"no such endpoint: {request.url.path} (see /openapi.json)", 405: f"{request.method} is not allowed here: this API is read-only (GET)"}
        return error(exc.status_code, messages.get(exc.status_code, str(exc.detail)))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path, exc_info=exc)
        return error(500, f"internal error ({type(exc).__name__}); the server's log has the details")

    middleware = [Middleware(GuardMiddleware, guard=guard)]
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(
            Middleware(
                CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET"],
                allow_headers=["authorization", "content-type", "mcp-protocol-version", "mcp-session-id"], max_age=600,
            )
        )
    middleware.append(Middleware(ReadOnlyMiddleware))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.service = service
    app.state.guard = guard
    app.state.mcp = mcp_server
    return app


class ReadOnlyMiddleware:
    """Only reads: GET/HEAD everywhere, and the POSTs MCP's transport needs at /mcp."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method not in ("GET", "HEAD", "OPTIONS") and not (path == "/mcp" and method in ("POST", "DELETE")):
                await send_json(send, 405, f"{method} is not allowed: this server is read-only", [(b"allow", b"GET, HEAD")])
                return
        await self.app(scope, receive, send)


def serve(
    config: ServerConfig,
    watch_paths: list[str] | None = None,
    on_build=None,
    on_error=None,
    on_ready=None,
    log_level: str = "warning",
) -> None:
    """Run the server until interrupted; with `watch_paths`, keep the index in step with them in a
    background thread of the same process (the server follows the generations it publishes)."""
    import threading

    import uvicorn

    from search.server.security import check_bind

    check_bind(config.host, config.token)
    if config.port == 0:
        config.port = _free_port(config.host)
    app = create_app(config)
    stop = threading.Event()
    watcher = None
    if watch_paths:
        from search.watching import watch

        def keep_watching() -> None:
            try:
                watch(watch_paths, config.index_dir, stop=stop, on_build=on_build, on_error=on_error)
            except Exception as error:  # the server goes on serving what was built
                log.exception("the watcher stopped")
                if on_error is not None:
                    on_error(error)

        watcher = threading.Thread(target=keep_watching, name="search-watch", daemon=True)
        watcher.start()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=log_level,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=5,
            # past the app's own 429 bound, a backstop on open connections
            limit_concurrency=max(64, config.limits.max_inflight * 4),
        )
    )
    if on_ready is not None:
        app.state.on_ready = on_ready
    try:
        server.run()
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(timeout=10)


def _free_port(host: str) -> int:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
