"""Rate limits on the ``limits`` library (the one slowapi is built on).

Policy (docs/decisions/0062-rate-limits.md)
    Each client gets ``default`` requests per window (100/minute) and, separately, ``bulk``
    requests per window (10/minute) on ``BULK_ROUTES``: a bulk request counts only against the
    bulk budget. ``EXEMPT_PATHS`` (health, metrics) are never limited. A client is the
    authenticated principal (``key:<id>`` / ``jwt:<sub>``) or else the peer IP (``ip:<addr>``;
    behind a proxy run uvicorn with ``--proxy-headers`` so the peer is the real client).
    WebSocket handshakes are not counted per window; instead a client may hold at most
    ``websocket`` connections at once (10): the next handshake is refused (HTTP 429 denial, or
    close code 1013 "try again later" where the server lacks the denial extension).
Counting
    Fixed windows (``FixedWindowRateLimiter``): one atomic increment per request in memory or
    in Redis (``INCR`` + ``EXPIRE`` in one script), so ``X-RateLimit-Reset`` is exact: the epoch
    second the window ends. A burst straddling a window boundary can reach twice the limit; the
    decision record says why that trade is taken. Over the limit the counter still counts, the
    answer is 429 ``RATE_LIMITED`` with ``Retry-After`` (seconds), and nothing else runs.
Headers
    Every limited HTTP response carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
    ``X-RateLimit-Reset`` (epoch seconds) of the budget the request was charged to.
Storage
    ``memory://`` (per process, the default) or ``redis://host:port/db`` so several server
    processes share counters. Concurrent WebSocket counts are per process in both cases. Redis
    calls run in a worker thread so the event loop never waits on the network; when Redis fails
    mid-flight the request is served unlimited and the failure logged (fail open), since a
    limiter outage should not take the API down with it.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import cast

import anyio.to_thread
from fastapi import Request
from limits import RateLimitItem, parse
from limits.errors import ConfigurationError as LimitsConfigurationError
from limits.storage import Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twingraph.errors import ConfigurationError
from twingraph.server.envelope import error_response
from twingraph.settings import Settings

log = logging.getLogger("twingraph.server.ratelimit")

EXEMPT_PATHS = frozenset({"/health", "/api/v1/health", "/metrics", "/api/v1/metrics"})
#: (method, path pattern) of the bulk operations: each starts many runs or a long-lived job.
BULK_ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("POST", re.compile(r"/api/v1/schedules/[^/]+/backfill")),
    ("POST", re.compile(r"/api/v1/execute-dynamic")),
    ("POST", re.compile(r"/api/v1/stream/run")),
    ("POST", re.compile(r"/jobs/submit")),
)
OFF = "off"


def parse_limit(text: str | None, name: str = "rate limit") -> RateLimitItem | None:
    """``'100/minute'`` (any ``limits`` notation) -> the item; ``'off'``/empty -> None."""
    if text is None or text.strip().lower() in ("", OFF, "none", "0"):
        return None
    try:
        return parse(text.strip())
    except ValueError as exc:
        raise ConfigurationError(f"invalid {name} {text!r}: {exc} (e.g. '100/minute', "
                                 "'10/second', or 'off')") from None


def parse_concurrency(text: str | int | None, name: str = "WebSocket limit") -> int | None:
    if text is None or str(text).strip().lower() in ("", OFF, "none", "0"):
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ConfigurationError(f"invalid {name} {text!r}: a whole number, or 'off'") from None
    if value < 0:
        raise ConfigurationError(f"invalid {name} {text!r}: must be positive")
    return value


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: int                  # epoch seconds when the window ends (rounded up)
    reset_at: float             # the same, unrounded

    def headers(self) -> dict[str, str]:
        return {"X-RateLimit-Limit": str(self.limit),
                "X-RateLimit-Remaining": str(self.remaining),
                "X-RateLimit-Reset": str(self.reset)}


class RateLimiter:
    """Counters for the default and bulk budgets, and concurrent WebSockets per client.

    ``namespace`` prefixes every key (processes that should share counters share it)."""

    def __init__(self, *, default: str | None = "100/minute", bulk: str | None = "10/minute",
                 websocket: int | None = 10, storage: str = "memory://",
                 namespace: str = "twingraph",
                 bulk_routes: Iterable[tuple[str, re.Pattern[str]]] = BULK_ROUTES,
                 clock: Callable[[], float] = time.time) -> None:
        self.default = parse_limit(default, "default rate limit")
        self.bulk = parse_limit(bulk, "bulk rate limit")
        self.websocket = websocket
        self.namespace = namespace
        self.bulk_routes = tuple(bulk_routes)
        self._clock = clock
        scheme, _, rest = storage.partition("://")
        self.storage_uri = f"{scheme}://{rest.rpartition('@')[2]}"     # never the password
        try:
            made = storage_from_string(storage)
        except (LimitsConfigurationError, ValueError) as exc:
            raise ConfigurationError(f"rate-limit storage {self.storage_uri!r}: {exc}") from None
        if not isinstance(made, Storage):
            raise ConfigurationError(f"rate-limit storage {self.storage_uri!r} is an async "
                                     "storage; use memory:// or redis://")
        self._storage: Storage = made
        self._blocking = not storage.startswith("memory://")
        self._limiter = FixedWindowRateLimiter(self._storage)
        self._sockets: dict[str, int] = {}

    def check_storage(self) -> None:
        """``ConfigurationError`` when the storage cannot be reached (call at startup)."""
        if not self._storage.check():
            raise ConfigurationError(f"rate-limit storage {self.storage_uri} is not reachable")

    def budget(self, method: str, path: str) -> tuple[str, RateLimitItem] | None:
        """``('bulk'|'default', item)`` that ``method path`` is charged to, or None."""
        if path in EXEMPT_PATHS:
            return None
        # The router's patterns end in ``$``, which also matches before a final newline
        # (``/api/v1/execute-dynamic%0A`` reaches the handler): matched the same way here.
        routed = path[:-1] if path.endswith("\n") else path
        if any(m == method and p.fullmatch(routed) for m, p in self.bulk_routes):
            return ("bulk", self.bulk) if self.bulk is not None else None
        return ("default", self.default) if self.default is not None else None

    def hit(self, category: str, item: RateLimitItem, client: str) -> Decision:
        """Count one request of ``client`` against ``item`` (blocking when the storage is)."""
        allowed = self._limiter.hit(item, self.namespace, category, client)
        stats = self._limiter.get_window_stats(item, self.namespace, category, client)
        reset = math.ceil(stats.reset_time)
        return Decision(allowed, item.amount, max(0, stats.remaining), reset, stats.reset_time)

    async def ahit(self, category: str, item: RateLimitItem, client: str) -> Decision:
        if self._blocking:
            return await anyio.to_thread.run_sync(self.hit, category, item, client)
        return self.hit(category, item, client)

    def open_socket(self, client: str) -> bool:
        """Reserve a WebSocket slot for ``client``; False when it already holds the maximum."""
        held = self._sockets.get(client, 0)
        if self.websocket is not None and held >= self.websocket:
            return False
        self._sockets[client] = held + 1
        return True

    def close_socket(self, client: str) -> None:
        held = self._sockets.get(client, 0) - 1
        if held > 0:
            self._sockets[client] = held
        else:
            self._sockets.pop(client, None)

    def open_sockets(self, client: str) -> int:
        return self._sockets.get(client, 0)

    def retry_after(self, decision: Decision) -> int:
        return max(1, math.ceil(decision.reset_at - self._clock()))


def build_rate_limiter(settings: Settings) -> RateLimiter | None:
    """The limiter ``settings`` ask for (None when every limit is ``off``); checks a Redis
    storage is reachable, so a typo fails at startup and not on the first request."""
    default = parse_limit(settings.rate_limit, "TWINGRAPH_RATE_LIMIT")
    bulk = parse_limit(settings.rate_limit_bulk, "TWINGRAPH_RATE_LIMIT_BULK")
    ws = parse_concurrency(settings.rate_limit_ws, "TWINGRAPH_RATE_LIMIT_WS")
    if default is None and bulk is None and ws is None:
        return None
    limiter = RateLimiter(default=settings.rate_limit if default else None,
                          bulk=settings.rate_limit_bulk if bulk else None, websocket=ws,
                          storage=settings.rate_limit_storage)
    limiter.check_storage()
    return limiter


Identify = Callable[[Scope], Awaitable[str]]


async def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"ip:{client[0]}" if client else "ip:unknown"


class RateLimitMiddleware:
    """Pure ASGI: charges each HTTP request to its budget and adds the ``X-RateLimit-*``
    headers; caps concurrent WebSockets per client. ``identify`` names the client (the auth
    layer's principal, else the peer IP)."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, identify: Identify = _peer) -> None:
        self.app, self.limiter, self.identify = app, limiter, identify
        self._last_failure_log = -math.inf

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and self.limiter.websocket is not None:
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        budget = self.limiter.budget(scope["method"], scope.get("path", ""))
        if budget is None:
            await self.app(scope, receive, send)
            return
        client = await self.identify(scope)
        try:
            decision = await self.limiter.ahit(budget[0], budget[1], client)
        except Exception:                                    # noqa: BLE001 - fail open, logged
            now = time.monotonic()
            if now - self._last_failure_log >= 60:           # once a minute, not per request
                self._last_failure_log = now
                log.exception("rate-limit storage %s failed; serving requests unlimited",
                              self.limiter.storage_uri)
            await self.app(scope, receive, send)
            return
        headers = decision.headers()
        if not decision.allowed:
            headers["Retry-After"] = str(self.limiter.retry_after(decision))
            response = error_response(
                _as_request(scope), 429,
                f"rate limit exceeded: {decision.limit} {budget[0]} requests per "
                f"{_window(budget[1])}; retry after {headers['Retry-After']} s",
                details=[{"limit": decision.limit, "budget": budget[0],
                          "reset": decision.reset}], headers=headers)
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = await self.identify(scope)
        if not self.limiter.open_socket(client):
            await receive()                                  # websocket.connect
            message = (f"too many WebSocket connections: at most {self.limiter.websocket} "
                       "at once per client")
            if "websocket.http.response" in scope.get("extensions", {}):
                response = error_response(_as_request(scope), 429, message)
                await response(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1013, "reason": message})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.limiter.close_socket(client)


def _as_request(scope: Scope) -> Request:
    return cast(Request, HTTPConnection(scope))  # error_response reads only .state (request id)


def _window(item: RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"
