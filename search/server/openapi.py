"""The OpenAPI 3.1 description of the JSON API (served at /openapi.json)."""

from __future__ import annotations

from typing import Any


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _param(name: str, description: str, schema: dict, required: bool = False, repeat: bool = False) -> dict[str, Any]:
    if repeat:
        schema = {"type": "array", "items": schema}
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema,
            **({"explode": True, "style": "form"} if repeat else {})}


COMMON_ERRORS = {
    "401": _error("A token is needed (--token) and was missing or wrong."),
    "403": _error("The request's Origin is not this server's page (nor a --cors-origin)."),
    "421": _error("The Host header is not this server's own (DNS rebinding protection)."),
    "429": _error("Too many requests in flight; retry shortly."),
    "503": _error("No index can be opened (none built yet, or being built for the first time)."),
}


def openapi_document(limits: Any) -> dict[str, Any]:
    hit = {
        "type": "object",
        "description": "A passage, with the fields `search query --json` prints.",
        "properties": {
            "path": {"type": "string", "description": "Absolute path of the file, as indexed."},
            "location": {"type": "string", "description": "path:LINE, path#RECORD or 'path p.PAGE'."},
            "heading_path": {"type": "array", "items": {"type": "string"}},
            "text": {"type": "string"},
            "line_start": {"type": "integer"},
            "line_end": {"type": "integer"},
            "metadata": {"type": "object"},
            "score": {"type": "number"},
            "bm25_rank": {"type": ["integer", "null"]},
            "bm25_score": {"type": ["number", "null"]},
            "dense_rank": {"type": ["integer", "null"]},
            "dense_score": {"type": ["number", "null"]},
            "reread_score": {"type": ["number", "null"], "description": "The multilingual model's cosine, where it re-read the hit (a query across languages)."},
            "hub_penalty": {"type": ["number", "null"], "description": "What the hub rule took off the hit's cosine before fusion, where it applied (the query's dense best is near many of its other candidates)."},
            "passage_id": {"type": "integer"},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "search",
            "version": "1",
            "description": "Hybrid Chinese/English note search (BM25 + embeddings). Read-only. "
            "MCP (streamable HTTP) is served at /mcp; the web page at /.",
        },
        "paths": {
            "/api/search": {
                "get": {
                    "summary": "Search passages",
                    "parameters": [
                        _param("q", f"The query (at most {limits.max_query_chars} characters).", {"type": "string"}, required=True),
                        _param("k", f"Number of hits, 1-{limits.max_k}.", {"type": "integer", "default": 10, "minimum": 1, "maximum": limits.max_k}),
                        _param("mode", "hybrid, bm25 or dense.", {"type": "string", "enum": ["hybrid", "bm25", "dense"], "default": "hybrid"}),
                        _param("path", "Path glob ('notes/**', '*.md'); repeatable, values OR together.", {"type": "string"}, repeat=True),
                        _param("tag", "Front-matter tag or category; repeatable.", {"type": "string"}, repeat=True),
                        _param("type", "File type (suffix: md, txt, pdf, ...); repeatable.", {"type": "string"}, repeat=True),
                    ],
                    "responses": {"200": _ok("SearchResult", "Hits, best first."), "400": _error("A bad or oversized query, k or filter."), **COMMON_ERRORS},
                }
            },
            "/api/stats": {"get": {"summary": "What the index holds", "responses": {"200": _ok("Stats", "Index statistics."), **COMMON_ERRORS}}},
            "/api/facets": {"get": {"summary": "Filter values: tags, types, folders", "responses": {"200": _ok("Facets", "Values for the filters."), **COMMON_ERRORS}}},
            "/api/document": {
                "get": {
                    "summary": "A passage in its file, with surrounding lines (indexed files only)",
                    "parameters": [
                        _param("path", "Absolute path of an indexed file, as a hit gives it.", {"type": "string"}, required=True),
                        _param("line", "First line of the passage (1-based).", {"type": "integer", "default": 1, "minimum": 1}),
                        _param("end", "Last line of the passage (default: line).", {"type": "integer", "minimum": 1}),
                        _param("context", f"Lines shown before and after, 0-{limits.max_context_lines}.", {"type": "integer", "default": limits.default_context_lines}),
                    ],
                    "responses": {
                        "200": _ok("Document", "The lines."),
                        "400": _error("A bad or oversized line range."),
                        "404": _error("Not a file of this index (or it leads outside the indexed folders)."),
                        "422": _error("A PDF or web page: its hits carry their text; there are no file lines to show."),
                        **COMMON_ERRORS,
                    },
                }
            },
            "/healthz": {"get": {"summary": "Liveness and the generation served", "responses": {"200": {"description": "Serving."}, "503": _error("No index yet.")}}},
            "/mcp": {"post": {"summary": "MCP over streamable HTTP (tools: search, get, status)", "responses": {"200": {"description": "JSON-RPC answer."}}}},
        },
        "components": {
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
                "Hit": hit,
                "SearchResult": {
                    "type": "object",
                    "properties": {
                        "query": {"type": "string"},
                        "mode": {"type": "string", "description": "The mode that ran (bm25 on a keyword-only index)."},
                        "requested_mode": {"type": "string"},
                        "notice": {"type": ["string", "null"]},
                        "filtered_out": {"type": ["string", "null"], "description": "Why no passage matched the filters."},
                        "reread_by": {"type": ["string", "null"], "description": "The multilingual model that re-read the top, for a query across languages."},
                        "highlight_terms": {"type": "array", "items": {"type": "string"}},
                        "generation": {"type": "string"},
                        "passages": {"type": "integer"},
                        "took_ms": {"type": "number"},
                        "cached": {"type": "boolean", "description": "Answered from the recent results of the same generation."},
                        "hits": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}},
                    },
                },
                "Stats": {"type": "object"},
                "Facets": {"type": "object", "properties": {k: {"type": "array", "items": {"type": "string"}} for k in ("tags", "types", "folders")}},
                "Document": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string"},
                        "first_line": {"type": "integer"},
                        "last_line": {"type": "integer"},
                        "lines": {"type": "array", "items": {"type": "string"}},
                        "focus": {"type": "array", "items": {"type": "integer"}, "description": "[line, end] of the passage."},
                        "truncated": {"type": "boolean"},
                        "at_end": {"type": "boolean"},
                    },
                },
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "Only when started with --token."}},
        },
    }
