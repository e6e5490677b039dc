"""The MCP server (official `mcp` SDK): tools `search`, `get` and `status` over the same
SearchService as the HTTP API, served on stdio (`search mcp`) or streamable HTTP at /mcp."""

# no `from __future__ import annotations`: the SDK evaluates the tools' annotations, which use closures

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations
from pydantic import Field

from search.server.service import SearchService, ServiceError

MAX_MCP_BODY_BYTES = 256 * 1024

INSTRUCTIONS = (
    "Searches the user's own notes and documents (Chinese and English: Markdown, text, PDF, web pages, "
    "JSONL/CSV datasets) that were indexed with `search index`. Use `search` first to find passages by "
    "keywords or meaning; each hit gives the file's path and line range. Use `get` to read more of a file "
    "around a hit. Use `status` to see what the index holds. Everything is read-only."
)

SEARCH_DESCRIPTION = (
    "Search the indexed notes and documents for passages relevant to a query, in Chinese or English "
    "(e.g. '序列并行', 'how does BM25 rank passages'). Returns the best passages first, each with its file "
    "path, line range, heading path, text and scores. mode 'hybrid' (default) combines keyword (BM25) and "
    "semantic (embedding) search; 'bm25' matches exact words and identifiers; 'dense' matches meaning. "
    "Optional filters narrow the search: paths (globs such as 'notes/**' or '*.md'), tags (front-matter tags "
    "or categories) and types (file suffixes such as md, txt, pdf, jsonl). Use `get` afterwards to read the "
    "surrounding lines of a hit."
)

GET_DESCRIPTION = (
    "Read lines of a file that the search index holds: give the absolute path exactly as a `search` hit "
    "names it, and optionally start_line/end_line (1-based, inclusive) to read a hit's passage with its "
    "surroundings. Without a range it returns the file from the top, up to {max_lines} lines per call; the "
    "answer says when more follows. Only indexed files can be read (not PDFs or web pages, whose hits "
    "already carry their text)."
)

STATUS_DESCRIPTION = (
    "Describe the search index: its folder, generation, number of files and passages, embedding models, "
    "whether it is keyword-only, its size and when it was built, plus the tags, file types and folders "
    "that `search` can filter by."
)

READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)


def _hit(rank: int, hit: dict[str, Any]) -> dict[str, Any]:
    return {
        "rank": rank,
        "path": hit["path"],
        "location": hit.get("location"),
        "line_start": hit["line_start"],
        "line_end": hit["line_end"],
        "heading": " > ".join(hit["heading_path"]),
        "text": hit["text"],
        "score": round(hit["score"], 4),
        "bm25_rank": hit["bm25_rank"],
        "bm25_score": None if hit["bm25_score"] is None else round(hit["bm25_score"], 4),
        "dense_rank": hit["dense_rank"],
        "dense_score": None if hit["dense_score"] is None else round(hit["dense_score"], 4),
        "reread_score": None if hit.get("reread_score") is None else round(hit["reread_score"], 4),
        "hub_penalty": None if hit.get("hub_penalty") is None else round(hit["hub_penalty"], 4),
        "metadata": {key: value for key, value in hit["metadata"].items() if key in ("title", "tags", "categories", "page", "record")},
    }


def create_mcp_server(service: SearchService) -> MCPServer:
    import search

    mcp = MCPServer(
        "search",
        title="Notes search (Chinese/English)",
        instructions=INSTRUCTIONS,
        version=_version(),
        log_level="WARNING",
    )

    async def run(work, *args) -> Any:
        try:
            data = await service.run(work, *args)
            service.encode(data)  # the same size bound as the HTTP API
            return data
        except ServiceError as error:
            raise ToolError(error.message) from None

    @mcp.tool(name="search", title="Search notes", description=SEARCH_DESCRIPTION, annotations=READ_ONLY)
    async def search_tool(
        query: Annotated[str, Field(description="What to look for, in Chinese or English words or a question.")],
        k: Annotated[int, Field(description=f"How many passages to return (1-{service.limits.max_k}).", ge=1, le=service.limits.max_k)] = 10,
        mode: Annotated[Literal["hybrid", "bm25", "dense"], Field(description="hybrid (default), bm25 (exact words) or dense (meaning).")] = "hybrid",
        paths: Annotated[list[str] | None, Field(description="Only files matching any of these globs, e.g. ['notes/**', '*.md'].")] = None,
        tags: Annotated[list[str] | None, Field(description="Only notes with any of these front-matter tags or categories.")] = None,
        types: Annotated[list[str] | None, Field(description="Only files of these types (suffixes): md, txt, pdf, html, jsonl, csv, ...")] = None,
    ) -> dict[str, Any]:
        try:
            text, k, mode = service.check_search(query, k, mode, paths or [], tags or [], types or [])
        except ServiceError as error:
            raise ToolError(error.message) from None
        data = await run(service.search, text, k, mode, paths or [], tags or [], types or [])
        return {
            "query": data["query"],
            "mode": data["mode"],
            "notice": data.get("notice"),
            "filtered_out": data.get("filtered_out"),
            "reread_by": data.get("reread_by"),
            "generation": data["generation"],
            "hits": [_hit(rank, hit) for rank, hit in enumerate(data["hits"], 1)],
        }

    @mcp.tool(name="get", title="Read an indexed file", description=GET_DESCRIPTION.format(max_lines=service.limits.document.max_lines), annotations=READ_ONLY)
    async def get_tool(
        path: Annotated[str, Field(description="Absolute path of an indexed file, as a search hit gives it.")],
        start_line: Annotated[int | None, Field(description="First line to return (1-based). Default 1.", ge=1)] = None,
        end_line: Annotated[int | None, Field(description="Last line to return (inclusive).", ge=1)] = None,
    ) -> dict[str, Any]:
        return await run(service.get, path, start_line, end_line)

    @mcp.tool(name="status", title="Index status", description=STATUS_DESCRIPTION, annotations=READ_ONLY)
    async def status_tool() -> dict[str, Any]:
        stats = await run(service.stats)
        facets = await run(service.facets)
        facets.pop("generation", None)
        return {**stats, "filters": facets}

    del search  # imported above so a broken install fails when the server is made, not on the first call
    return mcp


def streamable_http_endpoint(mcp: MCPServer):
    """The ASGI endpoint for /mcp. Stateless with JSON answers (each POST stands alone); the Host,
    Origin and token checks are the app's own middleware, which runs before this."""
    return mcp.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=True,
        json_response=True,
        max_request_body_size=MAX_MCP_BODY_BYTES,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )


def run_stdio(service: SearchService) -> None:
    """Serve MCP on stdin/stdout until the client closes them (opens the index first)."""
    service.holder.start()
    try:
        create_mcp_server(service).run("stdio")
    finally:
        service.holder.close()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("search")
    except Exception:
        return "0"
