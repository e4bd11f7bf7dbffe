"""The response envelope, request ids, and the one error shape of every face.

Success on ``/api/v1``: ``{"data": ..., "meta": {"timestamp", "request_id"}}``; lists add
``total``, ``limit`` and ``offset`` to ``meta``. Errors everywhere (``/api``, ``/api/v1``,
``/jobs``...): ``{"error": {"code", "message", "details"}, "meta": {...}}`` with the codes of
tauro-api.md (VALIDATION_ERROR 422, NOT_FOUND 404, CONFLICT 409, INTERNAL_ERROR 500, TIMEOUT 504)
plus UNAUTHORIZED 401, FORBIDDEN 403, METHOD_NOT_ALLOWED 405, NOT_ACCEPTABLE 406,
PAYLOAD_TOO_LARGE 413 and RATE_LIMITED 429 for what the document leaves out.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from twingraph.errors import (
    ConflictError,
    ExecutorUnavailable,
    NotFoundError,
    PipelineTimeout,
    ResourceUnavailable,
    TwinGraphError,
    ValidationError,
)

log = logging.getLogger("twingraph.server")

T = TypeVar("T")

_STATUS_CODES = {400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND",
                 405: "METHOD_NOT_ALLOWED", 406: "NOT_ACCEPTABLE", 409: "CONFLICT",
                 413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE",
                 422: "VALIDATION_ERROR", 429: "RATE_LIMITED", 500: "INTERNAL_ERROR",
                 503: "UNAVAILABLE", 504: "TIMEOUT"}


class Meta(BaseModel):
    timestamp: str
    request_id: str | None = None


class ListMeta(Meta):
    total: int
    limit: int
    offset: int


class Envelope(BaseModel, Generic[T]):
    data: T
    meta: Meta


class ListEnvelope(BaseModel, Generic[T]):
    data: list[T]
    meta: ListMeta


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] = []


class ErrorEnvelope(BaseModel):
    error: ErrorBody
    meta: Meta


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorEnvelope} for code in (401, 404, 409, 422, 429, 500)}


class ApiError(Exception):
    """Raise from a route to answer ``status`` with ``code``/``message``/``details``."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.code = code or _STATUS_CODES.get(status, "ERROR")
        self.details = details or []
        self.headers = headers


def iso(ts: float | None) -> str | None:
    """POSIX seconds -> ``2025-01-26T10:00:00.123Z`` (None stays None)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def parse_iso(value: str, field: str, *, bounded: bool = False) -> float:
    """Epoch seconds of an ISO-8601 time (UTC when it names no offset); 422 if unparsable.
    ``bounded``: also 422 unless it lies a day inside years 1..9999, for callers that turn
    it back into calendar dates (schedule slots)."""
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(422, f"{field} is not an ISO-8601 timestamp",
                       details=[{"field": field, "message": "expected ISO-8601"}]) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    ts = dt.timestamp()
    if bounded and not _MIN_TS <= ts <= _MAX_TS:
        raise ApiError(422, f"{field} is out of range (years 1 to 9999, a day inside either end)",
                       details=[{"field": field, "message": "out of range"}])
    return ts


_MIN_TS = datetime(1, 1, 2, tzinfo=timezone.utc).timestamp()
_MAX_TS = datetime(9999, 12, 30, tzinfo=timezone.utc).timestamp()


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", None) or "req_unknown"


def meta(request: Request, **extra: Any) -> dict[str, Any]:
    return meta_values(request_id(request), **extra)


def meta_values(request_id: str | None, **extra: Any) -> dict[str, Any]:
    return {"timestamp": iso(time.time()), "request_id": request_id or "req_unknown", **extra}


def ok(request: Request, data: Any) -> dict[str, Any]:
    return {"data": data, "meta": meta(request)}


def page(request: Request, data: list[Any], *, total: int, limit: int, offset: int) -> dict[str, Any]:
    return {"data": data, "meta": meta(request, total=total, limit=limit, offset=offset)}


def error_response(request: Request, status: int, message: str, *, code: str | None = None,
                   details: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code or _STATUS_CODES.get(status, "ERROR"),
                      "message": _text(message),
                      "details": [{k: _text(v) if isinstance(v, str) else v
                                   for k, v in d.items()} for d in details or ()]},
            "meta": meta(request)}
    return JSONResponse(body, status_code=status, headers=headers)


def _text(value: str) -> str:
    """``value`` as UTF-8 can carry it: a lone surrogate echoed from the request (a path, a
    field) is shown as its escape, not left to fail the answer's encoding."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _field(loc: Any) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or ".".join(str(p) for p in loc)


def install(app: FastAPI) -> None:
    """The error handlers (request ids come from ``observability.RequestContext``)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.message, code=exc.code,
                              details=exc.details, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"field": _field(e.get("loc", ())), "message": e.get("msg", "invalid")}
                   for e in exc.errors()]
        return error_response(request, 422, "invalid request: " + "; ".join(
            f"{d['field']}: {d['message']}" for d in details[:3]), details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request, exc.status_code, str(exc.detail),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(TwinGraphError)
    async def _domain(request: Request, exc: TwinGraphError) -> JSONResponse:
        details = getattr(exc, "details", None)
        if isinstance(exc, NotFoundError):
            return error_response(request, 404, str(exc))
        if isinstance(exc, ConflictError):
            return error_response(request, 409, str(exc))
        if isinstance(exc, ValidationError):
            nodes, why = getattr(exc, "nodes", None), getattr(exc, "why", None)
            return error_response(request, 422, str(exc), details=details or (
                [{"field": "definition", "message": str(exc), "nodes": list(nodes),
                  **({"why": why} if why else {})}]
                if nodes else [{"field": "body", "message": str(exc)}]))
        if isinstance(exc, (ExecutorUnavailable, ResourceUnavailable)):
            # The work asks for what this installation has not: the client's pipeline, not a
            # server fault (a run whose pipeline changed after it was created, say).
            return error_response(request, 422, str(exc),
                                  details=[{"field": "pipeline_id", "message": str(exc)}])
        if isinstance(exc, PipelineTimeout):
            return error_response(request, 504, str(exc))
        # A storage or engine failure: its text names tables, paths, hosts. The log has it.
        rid = request_id(request)
        log.error("internal error request_id=%s: %s", rid, type(exc).__name__, exc_info=exc)
        return JSONResponse(internal_error_body(rid), status_code=500)

    # Not ``app.exception_handler(Exception)``: Starlette runs that handler in its outermost
    # ServerErrorMiddleware, which sends the 500 and then re-raises, so uvicorn logs the error
    # a second time and closes the keep-alive connection; and being outside RequestContext,
    # the answer had no X-Request-ID. ``ErrorBoundary`` answers it inside RequestContext.
    app.add_middleware(ErrorBoundary)


def internal_error_body(rid: str | None) -> dict[str, Any]:
    """The INTERNAL_ERROR envelope: no exception text, only where to look in the server log."""
    return {"error": {"code": "INTERNAL_ERROR",
                      "message": f"internal error; see the server log for request "
                                 f"{rid or 'req_unknown'}",
                      "details": []},
            "meta": meta_values(rid)}


class ErrorBoundary:
    """Pure ASGI: any exception that escapes the routes and the middleware inside it becomes
    the 500 INTERNAL_ERROR envelope, logged here once with its traceback and request id, and
    is not re-raised, so the server keeps the connection open for the client's next request.

    ``install`` adds it before ``observability.RequestContext`` is added, so it sits just inside
    it: the answer carries X-Request-ID and is counted as a 500. Should a response already have
    started when the exception comes, nothing more can be sent: it is logged, and if that
    response was left incomplete the server closes the connection (a cut body must not pass
    for a whole one)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)
        try:
            await self.app(scope, receive, watch)
        except Exception as exc:  # noqa: BLE001 - the boundary: answered and logged, never lost
            rid = (scope.get("state") or {}).get("request_id")
            log.error("internal error request_id=%s %s %s%s", rid, scope.get("method"),
                      scope.get("path"), " (after the response started)" if started else "",
                      exc_info=exc)
            if started:
                return
            body = json.dumps(internal_error_body(rid), separators=(",", ":")).encode()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
