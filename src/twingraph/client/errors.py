"""What the SDK raises. Every class hangs under ``twingraph.errors.TwinGraphError``::

    TwinGraphError
    └── ClientError                   anything the SDK raises on purpose
        ├── ApiError                  the server answered with an error body; carries status_code,
        │   │                         code (e.g. "NOT_FOUND"), message, details, request_id
        │   ├── BadRequest            400 (malformed request)
        │   ├── Unauthorized          401 (missing or invalid X-API-Key / bearer token)
        │   ├── Forbidden             403 (valid credentials, not allowed)
        │   ├── NotFound              404 (also a twingraph.NotFoundError and a LookupError)
        │   ├── Conflict              409 (duplicate name, wrong state; also a ConflictError)
        │   ├── NotAcceptable         406 (an API version the server does not speak)
        │   ├── ValidationFailed      422 (also a ValueError); ``details`` lists the fields
        │   ├── RateLimited           429; ``retry_after`` in seconds when the server said
        │   └── ServerError           5xx
        │       └── ApiTimeout        504 (the server's own operation timed out; a TimeoutError)
        ├── TransportError            no answer: connection refused or reset
        │   └── RequestTimeout        no answer within the client's ``timeout`` (a TimeoutError)
        └── WaitTimeout               ``wait_for_completion`` gave up (a TimeoutError); the
                                      execution goes on running on the server

``except ApiError`` catches every error answer; ``except ClientError`` adds the ones where the
server never answered; ``except TwinGraphError`` catches everything TwinGraph raises, local or remote.
"""

from __future__ import annotations

from typing import Any

from twingraph.errors import ConflictError, NotFoundError, TwinGraphError


class ClientError(TwinGraphError):
    """Base class of the SDK's errors."""


class ApiError(ClientError):
    """The server answered ``status_code`` with an error body ``{error: {code, message, details}}``."""

    def __init__(self, message: str, *, status_code: int, code: str = "ERROR",
                 details: list[Any] | None = None, request_id: str | None = None,
                 method: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status_code, self.code = message, status_code, code
        self.details: list[Any] = list(details or [])
        self.request_id, self.method, self.url = request_id, method, url

    def __str__(self) -> str:
        where = f" ({self.method} {self.url})" if self.method and self.url else ""
        rid = f" [request {self.request_id}]" if self.request_id else ""
        return f"{self.status_code} {self.code}: {self.message}{where}{rid}"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(status_code={self.status_code}, code={self.code!r}, "
                f"message={self.message!r}, request_id={self.request_id!r})")


class BadRequest(ApiError):
    """400: the server could not read the request."""


class Unauthorized(ApiError):
    """401: credentials missing or invalid."""


class Forbidden(ApiError):
    """403: the credentials do not allow this."""


class NotFound(ApiError, NotFoundError):
    """404: the id (or route) does not exist."""


class NotAcceptable(ApiError):
    """406: the server does not speak the requested API version."""


class Conflict(ApiError, ConflictError):
    """409: the request clashes with stored state (duplicate name, run not PENDING...)."""


class ValidationFailed(ApiError, ValueError):
    """422: bad input; ``details`` is a list of ``{field, message}``. Nothing was written."""


class RateLimited(ApiError):
    """429: too many requests; ``retry_after`` (seconds) when the server sent ``Retry-After``
    or ``X-RateLimit-Reset``."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(ApiError):
    """5xx: the server failed; the request id finds the traceback in its log."""


class ApiTimeout(ServerError, TimeoutError):
    """504: the server's operation timed out."""


class TransportError(ClientError):
    """The server could not be reached or did not answer in time (the httpx error is chained)."""


class RequestTimeout(TransportError, TimeoutError):
    """The server did not answer within the client's ``timeout``."""


class WaitTimeout(ClientError, TimeoutError):
    """``wait_for_completion`` timed out; ``last_status`` is the last status seen."""

    def __init__(self, execution_id: str, timeout: float, last_status: str | None) -> None:
        super().__init__(f"execution {execution_id} did not finish within {timeout:g}s "
                         f"(last status: {last_status})")
        self.execution_id, self.timeout, self.last_status = execution_id, timeout, last_status


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 406: NotAcceptable,
    409: Conflict, 422: ValidationFailed, 429: RateLimited, 504: ApiTimeout}


def error_class(status_code: int) -> type[ApiError]:
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    if status_code >= 500:
        return ServerError
    if status_code == 413 or status_code == 415 or status_code == 405:
        return BadRequest
    return ApiError
