"""API versioning by media type (twingraph-api.md "Versioning").

A client picks a version with ``Accept: application/vnd.twingraph.v2+json`` (``v1`` as well;
``application/vnd.twingraph+json`` and ``...v2.0.0+json`` mean the same major version). Plain
``application/json``, ``*/*``, any other media type or no ``Accept`` get ``CURRENT``. Only when
every range the client accepts is a TwinGraph vendor type and none of them names a supported
version is the answer 406 ``NOT_ACCEPTABLE`` (with the supported versions in ``details``): a
client that also accepts ``application/json`` is served the current version rather than refused.
Among several supported vendor types the one with the highest ``q`` wins (ties: the first).

Every HTTP response names the version served in ``X-TwinGraph-API-Version`` and carries
``Vary: Accept``; routes read it from ``request.state.api_version`` (v1 and v2 are the same
shapes today: v2.0.0 is the current version, v1 is accepted for clients written against it).
WebSocket scopes pass through untouched.
"""

from __future__ import annotations

import re
from typing import cast

from fastapi import Request
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twingraph.server.envelope import error_response

SUPPORTED = (1, 2)
CURRENT = 2
HEADER = "X-TwinGraph-API-Version"
_VENDOR = re.compile(r"application/vnd\.twingraph(?:\.v(\d+)(?:\.\d+){0,2})?\+json")


def negotiate(accept: str | None) -> int | None:
    """The major version to serve for this ``Accept`` header, or None for 406."""
    if not accept or not accept.strip():
        return CURRENT
    wanted: list[tuple[float, int, int | None]] = []   # (q, position, version or None=other)
    named_vendor = False
    for pos, part in enumerate(accept.split(",")):
        media, *params = [p.strip() for p in part.split(";")]
        if not media:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        match = _VENDOR.fullmatch(media.lower())
        named_vendor = named_vendor or match is not None
        if q <= 0:
            continue
        if match is None:
            wanted.append((q, pos, None))
        else:
            wanted.append((q, pos, int(match.group(1)) if match.group(1) else CURRENT))
    supported = [w for w in wanted if w[2] is not None and w[2] in SUPPORTED]
    if supported:
        best = max(supported, key=lambda w: (w[0], -w[1]))
        return best[2]
    if any(w[2] is None for w in wanted) or not named_vendor:
        return CURRENT
    return None


class VersioningMiddleware:
    """Pure ASGI: negotiates the version, answers 406 for an unsupported one, and labels every
    HTTP response with the version served."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accept = None
        for name, value in scope.get("headers", ()):
            if name.lower() == b"accept":
                accept = value.decode("latin-1") if accept is None else \
                    accept + "," + value.decode("latin-1")
        version = negotiate(accept)
        if version is None:
            response = error_response(
                cast(Request, HTTPConnection(scope)), 406,
                f"unsupported API version in Accept: {accept}; supported: "
                + ", ".join(f"application/vnd.twingraph.v{v}+json" for v in SUPPORTED),
                details=[{"field": "Accept", "supported_versions": [f"v{v}" for v in SUPPORTED],
                          "current_version": f"v{CURRENT}"}],
                headers={HEADER: str(CURRENT), "Vary": "Accept"})
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["api_version"] = version

        async def send_labelled(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[HEADER] = str(version)
                headers.add_vary_header("Accept")
            await send(message)

        await self.app(scope, receive, send_labelled)
