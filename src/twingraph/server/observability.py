"""Request ids, request timing and HTTP metrics in one pure ASGI middleware.

Outermost of our middleware, so refusals by rate limits or auth get a request id too. Pure ASGI
(no ``BaseHTTPMiddleware``): it adds no task group and no response re-streaming per request,
which matters at hundreds of requests per second.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from twingraph.server.metrics import Metrics

log = logging.getLogger("twingraph.server")

Scope = dict[str, Any]
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]+")


class RequestContext:
    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                text = value.decode("latin-1")
                if 0 < len(text) <= 64 and _SAFE_ID.fullmatch(text):   # never forge log fields
                    rid = text
                break
        rid = rid or f"req_{uuid.uuid4().hex[:16]}"
        scope.setdefault("state", {})["request_id"] = rid
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        header = (b"x-request-id", rid.encode("latin-1"))

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            self.metrics.http_requests.labels(method, route, str(status)).inc()
            self.metrics.http_duration.labels(method, route).observe(elapsed)
            if log.isEnabledFor(logging.INFO):
                who = getattr(scope["state"].get("principal"), "id", "-")
                log.info("%s %s %s %.1fms request_id=%s principal=%s", method, scope["path"],
                         status, elapsed * 1000, rid, who)
