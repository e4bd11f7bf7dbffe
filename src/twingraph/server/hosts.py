"""Requests to a loopback server must name a loopback host.

A server bound to 127.0.0.1 may run without authentication. A web page on another site can
still reach it through DNS rebinding: the page's own name is made to resolve to 127.0.0.1, so
the browser sends requests carrying that name in their ``Host`` header. ``LoopbackHosts``
answers 421 to any HTTP or WebSocket request whose ``Host`` is not ``localhost``, a loopback
address, or the name the server was bound to. A server bound beyond loopback requires
authentication instead (``server.auth``), and is not wrapped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port (``[::1]:8000`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class LoopbackHosts:
    """ASGI wrapper: 421 for a request whose ``Host`` is not a loopback name (see module)."""

    def __init__(self, app: ASGIApp, also: Iterable[str] = ()) -> None:
        self.app = app
        self.also = {host_name(h) for h in also}

    def allowed(self, scope: Scope) -> bool:
        for key, value in scope.get("headers") or ():
            if key == b"host":
                name = host_name(value.decode("latin-1"))
                return is_loopback_name(name) or name in self.also
        return True                  # HTTP/1.0 without a Host header: nothing to rebind

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and not self.allowed(scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            body = b'{"error":{"code":"MISDIRECTED_REQUEST","message":"this server answers ' \
                   b'requests for localhost only"}}'
            await send({"type": "http.response.start", "status": 421,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
