"""`search serve` and `search mcp`: the JSON API, the web page and the MCP server, a thin layer over
`search.Engine` (see app.py, mcp_server.py, security.py, static/)."""

from search.server.app import ServerConfig, create_app, serve
from search.server.security import check_bind, is_loopback
from search.server.service import SearchService, ServerLimits, ServiceError

__all__ = ["SearchService", "ServerConfig", "ServerLimits", "ServiceError", "check_bind", "create_app", "is_loopback", "serve"]
