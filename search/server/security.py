"""Safe defaults for `search serve`: loopback binds, bearer tokens, Host/Origin checks, JSON errors.

Everything here is a plain function or a pure ASGI middleware so that it can be tested without
binding a socket: `Guard.check` answers "may this request go on?" from its headers alone.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import urlsplit

from search import SearchError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


def is_loopback(host: str) -> bool:
    """True for localhost and any address in 127.0.0.0/8 or ::1."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token: anyone who can reach the port could
    read every indexed note."""
    if not is_loopback(host) and not token:
        raise SearchError(
            f"refusing to listen on {host or '*'} without --token: anyone on the network could read the index; "
            "give --token SECRET (clients then send 'Authorization: Bearer SECRET') or bind 127.0.0.1"
        )


def split_host(value: str) -> tuple[str, int | None]:
    """'Example.org:8765' -> ('example.org', 8765); '[::1]:80' -> ('::1', 80); a bad port -> -1."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, _, port_text = value.partition(":")
    else:  # a name without a port, or a bare IPv6 address
        name, port_text = value, ""
    if not port_text:
        return name.rstrip("."), None
    return name.rstrip("."), int(port_text) if port_text.isdigit() else -1


def _own_names(host: str) -> set[str]:
    """The names a client may use to reach a server bound to `host`."""
    names = {name for name in LOOPBACK_NAMES}
    host = host.strip("[]").lower()
    if host in WILDCARD_ADDRESSES:  # every interface: the machine's names and addresses
        for name in {socket.gethostname(), socket.getfqdn()}:
            names.add(name.lower())
            try:
                names.update(info[4][0].lower() for info in socket.getaddrinfo(name, None))
            except OSError:
                pass
    elif host:
        names.add(host)
    return names


@dataclass
class Guard:
    """Which requests may reach the app: the server's own Host names, the page's own Origin (or a
    --cors-origin), and the bearer token when one is set."""

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    allowed_hosts: list[str] = field(default_factory=list)  # extra "name" or "name:port" (a proxy's)
    cors_origins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._names = _own_names(self.host)
        self._extra = [split_host(value) for value in self.allowed_hosts]

    def host_allowed(self, value: str | None) -> bool:
        if not value:
            return False
        name, port = split_host(value)
        if port == -1:
            return False
        for extra_name, extra_port in self._extra:
            if name == extra_name and (extra_port is None or extra_port == port):
                return True
        default_port = 80
        return name in self._names and (port if port is not None else default_port) == self.port

    def origin_allowed(self, origin: str | None) -> bool:
        if origin is None:
            return True  # not a browser, or a same-origin GET (browsers omit Origin there)
        origin = origin.strip()
        if origin in self.cors_origins or "*" in self.cors_origins:
            return True
        try:
            parts = urlsplit(origin)
            port = parts.port
        except ValueError:  # a port that is not a number
            return False
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.username:
            return False  # "null" (sandboxed frames, file:// pages) and anything odd
        netloc = parts.netloc if port else f"{parts.netloc}:{443 if parts.scheme == 'https' else 80}"
        return self.host_allowed(netloc)

    def token_ok(self, authorization: str | None) -> bool:
        if not self.token:
            return True
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode())

    def check(self, headers: dict[str, str], path: str, method: str) -> tuple[int, str] | None:
        """None when the request may go on, else (status, message)."""
        if not self.host_allowed(headers.get("host")):
            return 421, (
                f"this server does not answer to Host {headers.get('host')!r} (DNS rebinding protection): "
                f"use http://127.0.0.1:{self.port}/ or start it with --allow-host NAME"
            )
        if not self.origin_allowed(headers.get("origin")):
            return 403, (
                f"requests from origin {headers.get('origin')!r} are refused: only this server's own page may call it "
                "(start the server with --cors-origin ORIGIN to allow another)"
            )
        if self.token and not public_path(path, method) and not self.token_ok(headers.get("authorization")):
            if headers.get("authorization"):
                return 401, "wrong token: send 'Authorization: Bearer TOKEN' with the server's --token"
            return 401, "this server needs a token: send 'Authorization: Bearer TOKEN' with the server's --token"
        return None


def public_path(path: str, method: str) -> bool:
    """The page shell holds no data, so a browser may load it before it knows the token; CORS
    preflights never carry credentials."""
    if method == "OPTIONS":
        return True
    return method in ("GET", "HEAD") and (path == "/" or path.startswith("/static/") or path == "/favicon.ico")


def json_body(status: int, message: str) -> bytes:
    return json.dumps({"error": message, "status": status}, ensure_ascii=False).encode()


class GuardMiddleware:
    """Pure ASGI: refuses foreign Host/Origin and missing tokens before anything else runs."""

    def __init__(self, app, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        refusal = self.guard.check(headers, scope.get("path", "/"), scope.get("method", "GET"))
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        extra = [(b"www-authenticate", b'Bearer realm="search"')] if status == 401 else []
        await send_json(send, status, message, extra)


async def send_json(send, status: int, message: str, extra_headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json_body(status, message)
    headers = [(b"content-type", b"application/json; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + list(extra_headers)})
    await send({"type": "http.response.body", "body": body})
