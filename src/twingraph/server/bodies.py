"""JSON request bodies the server can store and answer with: bounded depth, valid Unicode.

Two kinds of JSON are well-formed and still unusable, and FastAPI's models let both through
wherever a field is free-form (``metadata``, ``params``, ``config``, definitions, ...):

- **Depth.** A value nested a few hundred levels deep validates, is stored, and then every
  answer that shows it fails in the JSON serializer (pydantic stops near 255 levels, the
  ``json`` module at the recursion limit): one request made an object unreadable for good.
- **Lone surrogates.** ``"\\ud800"`` is valid JSON syntax (RFC 8259 §8.2 leaves its meaning
  open) but no Unicode text: the database driver cannot encode it.

``JsonBodyLimits`` (pure ASGI, inside auth so that only authorised bodies are read) answers
both with 422 ``VALIDATION_ERROR`` naming the field, for every route that FastAPI would parse
as JSON: no ``Content-Type``, or ``application/json`` / ``application/*+json``. Anything that
does not parse is left to FastAPI, which reports it the usual way. To look at a body it reads
it whole, as FastAPI would, but never more than ``MAX_JSON_BYTES`` (413 ``PAYLOAD_TOO_LARGE``
beyond: room for the largest field a route takes, a 4 MiB ``program`` even with every
character ``\\uXXXX``-escaped), so no route reads more than it did before.
"""

from __future__ import annotations

import email.message
import json
import re
from typing import Any, cast

from fastapi import Request
from starlette.requests import HTTPConnection

from twingraph.server.envelope import error_response

#: Containers (objects and arrays) a request body may nest, the body itself being level 1.
MAX_JSON_DEPTH = 64
#: The largest JSON request body read (413 beyond).
MAX_JSON_BYTES = 32 * 1024 * 1024
_SURROGATE = re.compile("[\ud800-\udfff]")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def json_problem(value: Any, max_depth: int = MAX_JSON_DEPTH) -> tuple[str, str] | None:
    """``(field, message)`` for the first place ``value`` is too deep or holds a lone
    surrogate (in a string or a key); None when it is fine. Iterative: no recursion limit."""
    stack: list[tuple[Any, tuple[str, ...], int]] = [(value, (), 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return _field(path), "contains a lone UTF-16 surrogate (\\ud800-\\udfff escape)"
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth > max_depth:
            return _field(path), f"nested deeper than {max_depth} levels"
        if isinstance(item, dict):
            for key, sub in item.items():          # (YAML may give keys that are no str)
                if isinstance(key, str) and _SURROGATE.search(key):
                    return _field(path), "has a key with a lone UTF-16 surrogate"
                stack.append((sub, (*path, str(key)), depth + 1))
        else:
            stack.extend((sub, (*path, str(i)), depth + 1) for i, sub in enumerate(item))
    return None


def _field(path: tuple[str, ...]) -> str:
    shown = ".".join(_SURROGATE.sub("\ufffd", p) for p in path[:6])
    return (shown + ".…" if len(path) > 6 else shown) or "body"


def parsed_as_json(content_type: str | None) -> bool:
    """Whether FastAPI parses a body with this ``Content-Type`` as JSON (its own rule)."""
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


class JsonBodyLimits:
    """Pure ASGI: 422 for a JSON request body that is too deep or not valid Unicode (module)."""

    def __init__(self, app: Any, max_depth: int = MAX_JSON_DEPTH,
                 max_bytes: int = MAX_JSON_BYTES) -> None:
        self.app, self.max_depth, self.max_bytes = app, max_depth, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        content_type = declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-type" and content_type is None:
                content_type = value.decode("latin-1")
            elif name == b"content-length" and declared is None:
                declared = value.decode("latin-1")
        if not parsed_as_json(content_type):
            await self.app(scope, receive, send)
            return
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":       # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = None
        if body:
            try:
                problem = json_problem(json.loads(body), self.max_depth)
            except (ValueError, RecursionError):
                problem = None                          # FastAPI reports what does not parse
        if problem is not None:
            field, why = problem
            response = error_response(cast(Request, HTTPConnection(scope)), 422,
                                      f"invalid request: {field}: {why}",
                                      details=[{"field": field, "message": why}])
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return cast(dict[str, Any], await receive())

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        response = error_response(cast(Request, HTTPConnection(scope)), 413,
                                  f"request body larger than {self.max_bytes} bytes")
        await response(scope, receive, send)
