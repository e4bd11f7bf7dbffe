"""What each SDK method sends and how its answer is read, independent of sync or async.

A resource method builds a ``Call`` (method, path, query, body, how to read the answer); the
sync and async clients only differ in how they send it. ``decode`` turns an error answer into
the typed exception of ``client.errors`` and unwraps the ``/api/v1`` envelope.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from twingraph.client.errors import ApiError, RateLimited, error_class
from twingraph.client.models import Execution, Page
from twingraph.workflow import Workflow

ACCEPT = "application/vnd.twingraph.v2+json"
_NO_BODY = object()
T = TypeVar("T")


def _identity(body: Any) -> Any:
    return body


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request: ``read`` turns the decoded JSON answer into what the method returns."""
    method: str
    path: str
    params: Mapping[str, Any] | None = None
    body: Any = _NO_BODY
    read: Callable[[Any], T] = _identity

    @property
    def has_body(self) -> bool:
        return self.body is not _NO_BODY


def seg(value: str) -> str:
    """One path segment: ids go through percent-encoding so '/' or '?' cannot change the route."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"an id must be a non-empty string, got {value!r}")
    return quote(value, safe="")


def query(**params: Any) -> dict[str, Any]:
    """Query parameters without the ones left at None (booleans as true/false)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else value
    return out


def headers(api_key: str | None, auth_token: str | None) -> dict[str, str]:
    out = {"Accept": ACCEPT, "User-Agent": "twingraph-sdk"}
    if api_key:
        out["X-API-Key"] = api_key
    if auth_token:
        token = auth_token.strip()
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        out["Authorization"] = f"Bearer {token}"
    return out


# -- answers -------------------------------------------------------------------------------
def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    reset = response.headers.get("X-RateLimit-Reset")
    if reset is not None:
        try:
            r = float(reset)
        except ValueError:
            return None
        return max(0.0, r - time.time()) if r > 1e9 else max(0.0, r)   # epoch or seconds
    return None


def raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    code, message, details, request_id = "ERROR", response.reason_phrase or "error", [], None
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping):
            code = str(err.get("code") or code)
            message = str(err.get("message") or message)
            raw = err.get("details")
            details = list(raw) if isinstance(raw, list) else ([raw] if raw else [])
        elif isinstance(err, str):
            message = err
        elif "detail" in body:              # a framework default shape
            d = body["detail"]
            message = d if isinstance(d, str) else "invalid request"
            details = d if isinstance(d, list) else []
        meta = body.get("meta")
        if isinstance(meta, Mapping):
            request_id = meta.get("request_id")
    elif response.text:
        message = response.text[:500]
    request_id = request_id or response.headers.get("X-Request-ID")
    cls = error_class(response.status_code)
    if code == "ERROR":
        code = {400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND",
                406: "NOT_ACCEPTABLE", 409: "CONFLICT", 422: "VALIDATION_ERROR",
                429: "RATE_LIMITED", 504: "TIMEOUT"}.get(
            response.status_code, "INTERNAL_ERROR" if response.status_code >= 500 else "ERROR")
    kw: dict[str, Any] = dict(status_code=response.status_code, code=code, details=details,
                              request_id=request_id, method=response.request.method,
                              url=str(response.request.url))
    err_obj: ApiError
    if cls is RateLimited:
        err_obj = RateLimited(message, retry_after=_retry_after(response), **kw)
    else:
        err_obj = cls(message, **kw)
    raise err_obj


def decode(call: Call[T], response: httpx.Response) -> T:
    raise_for_error(response)
    if response.status_code == 204 or not response.content:
        return call.read(None)
    ctype = response.headers.get("content-type", "")
    body = response.json() if "json" in ctype else response.text
    return call.read(body)


def data(body: Any) -> Any:
    """The ``data`` of an ``/api/v1`` envelope."""
    if isinstance(body, Mapping) and "data" in body and "meta" in body:
        return body["data"]
    return body


def v1_page(body: Any) -> Page:
    meta = body.get("meta", {}) if isinstance(body, Mapping) else {}
    items = data(body)
    return Page(items=list(items or []), total=meta.get("total"), limit=meta.get("limit"),
                offset=meta.get("offset"))


def api_page(key: str) -> Callable[[Any], Page]:
    def read(body: Any) -> Page:
        if isinstance(body, list):
            return Page(items=body, total=len(body))
        items = body.get(key, body.get("items", body.get("data", [])))
        return Page(items=list(items), total=body.get("total"), page=body.get("page"),
                    size=body.get("size"))
    return read


def execution(body: Any) -> Execution:
    return Execution.from_api(data(body))


def logs(body: Any) -> list[dict[str, Any]]:
    body = data(body)
    if isinstance(body, Mapping):
        for key in ("logs", "items", "data"):
            if isinstance(body.get(key), list):
                return list(body[key])
    return list(body or [])


# -- workflows (TwinGraph face) ------------------------------------------------------------
def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not s:
        raise ValueError(f"cannot derive a workflow id from the name {name!r}: pass workflow_id=")
    return s


def workflow_body(workflow: Workflow | Mapping[str, Any], name: str | None) -> dict[str, Any]:
    """The ``{name, definition, metadata}`` body from a builder or a dict (either the full body
    or a bare ``{nodes, edges, metadata}`` definition)."""
    if isinstance(workflow, Workflow):
        body = workflow.to_request()
        if name:
            body["name"] = name
        return body
    if not isinstance(workflow, Mapping):
        raise TypeError("workflow must be a twingraph.Workflow or a mapping")
    if "definition" in workflow:
        body = dict(workflow)
    else:
        definition = {k: workflow[k] for k in ("nodes", "edges", "metadata") if k in workflow}
        body = {"definition": definition, "metadata": dict(workflow.get("metadata") or {})}
        if "name" in workflow:
            body["name"] = workflow["name"]
    if name:
        body["name"] = name
    return body


def workflow_id_for(workflow: Workflow | Mapping[str, Any], workflow_id: str | None) -> str:
    if workflow_id:
        return workflow_id
    name = workflow.name if isinstance(workflow, Workflow) else workflow.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("pass workflow_id= or give the workflow a name")
    return slug(name)


def created_id(default: str) -> Callable[[Any], str]:
    def read(body: Any) -> str:
        body = data(body)
        if isinstance(body, Mapping):
            for key in ("id", "workflow_id"):
                if isinstance(body.get(key), str):
                    return str(body[key])
        return default
    return read


def pipeline_body(name: str | None, definition: Workflow | Mapping[str, Any] | None,
                  description: str | None, tags: Sequence[str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if name is not None:
        body["name"] = name
    if isinstance(definition, Workflow):
        body["definition"] = definition.to_definition()
        body.setdefault("name", definition.name)
    elif definition is not None:
        body["definition"] = dict(definition)
    if description is not None:
        body["description"] = description
    if tags is not None:
        body["tags"] = list(tags)
    return body


def without_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}
