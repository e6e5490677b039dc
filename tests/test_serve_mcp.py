"""The MCP server with the SDK's own client: `search mcp` over stdio, and streamable HTTP at /mcp of
`search serve`. Tools search, get and status over a real index of corpus/."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from serve_support import ENV, SEQUENCE_NOTE, RunningServer, build_index, copy_corpus, free_port

from search.server import ServerConfig


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve-mcp")
    build_index(copy_corpus(root / "notes"), root / "index")
    return root / "index"


async def exercise(client: Client) -> None:
    """What an assistant does: list the tools, search, read the hit's lines, fail outside the index."""
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {"search", "get", "status"}
    for tool in tools.values():
        assert len(tool.description) > 80 and tool.annotations.read_only_hint
    assert {"query", "k", "mode", "paths", "tags", "types"} <= set(tools["search"].input_schema["properties"])

    found = await client.call_tool("search", {"query": "序列并行", "k": 3})
    assert not found.is_error
    first = found.structured_content["hits"][0]
    assert first["path"].endswith(SEQUENCE_NOTE) and first["heading"] == "序列并行"
    assert "序列并行沿序列维度切分输入" in first["text"] and first["bm25_rank"] == 1
    assert first["location"] == f"{first['path']}:{first['line_start']}"
    assert "序列并行" in found.content[0].text  # the same as text, for clients without structured output

    english = await client.call_tool("search", {"query": "how do I merge keyword and vector results", "k": 1})
    assert english.structured_content["hits"][0]["path"].endswith("retrieval-notes.md")
    tagged = await client.call_tool("search", {"query": "训练", "tags": ["机器学习"], "k": 10})
    assert all(hit["path"].endswith(SEQUENCE_NOTE) for hit in tagged.structured_content["hits"])

    lines = await client.call_tool("get", {"path": first["path"], "start_line": first["line_start"], "end_line": first["line_end"]})
    assert not lines.is_error
    assert lines.structured_content["first_line"] == first["line_start"]
    assert any("序列并行沿序列维度切分输入" in line for line in lines.structured_content["lines"])
    whole = await client.call_tool("get", {"path": first["path"]})
    assert whole.structured_content["first_line"] == 1 and whole.structured_content["at_end"]

    outside = await client.call_tool("get", {"path": "/etc/passwd"})
    assert outside.is_error and "not a file of this index" in outside.content[0].text
    sneaky = await client.call_tool("get", {"path": first["path"].replace(SEQUENCE_NOTE, "../../../etc/passwd")})
    assert sneaky.is_error and "root:" not in sneaky.content[0].text
    too_many = await client.call_tool("search", {"query": "序列并行", "k": 100_000})
    assert too_many.is_error
    empty = await client.call_tool("search", {"query": "   "})
    assert empty.is_error and "empty query" in empty.content[0].text

    status = await client.call_tool("status", {})
    assert status.structured_content["passages"] > 0 and "机器学习" in status.structured_content["filters"]["tags"]


def test_mcp_over_stdio(index):
    params = StdioServerParameters(command=sys.executable, args=["-m", "search.cli", "mcp", "--index", str(index)], env=ENV)

    async def main() -> None:
        async with Client(params, read_timeout_seconds=120) as client:
            await exercise(client)

    anyio.run(main)


def test_mcp_over_streamable_http(index):
    with RunningServer(ServerConfig(index_dir=str(index), port=free_port())) as server:
        async def main() -> None:
            async with Client(f"{server.url}/mcp", read_timeout_seconds=60) as client:
                await exercise(client)

        anyio.run(main)


def test_mcp_over_http_needs_the_token_when_one_is_set(index):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    with RunningServer(ServerConfig(index_dir=str(index), port=free_port(), token="s3cret")) as server:
        async def with_token() -> None:
            async with httpx2.AsyncClient(headers={"authorization": "Bearer s3cret"}, timeout=60) as http:
                async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client:
                    found = await client.call_tool("search", {"query": "序列并行", "k": 1})
                    assert found.structured_content["hits"][0]["path"].endswith(SEQUENCE_NOTE)

        anyio.run(with_token)
        refused = httpx2.post(f"{server.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                              headers={"accept": "application/json, text/event-stream"})
        assert refused.status_code == 401 and "token" in refused.json()["error"]
