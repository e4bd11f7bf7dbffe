"""The TwinGraph SDK: ``TwinGraphClient`` (blocking) and ``AsyncTwinGraphClient`` (asyncio).

    from twingraph.client import TwinGraphClient
    client = TwinGraphClient(base_url="http://localhost:8000", api_key="your-api-key")

Both speak HTTP (httpx) and WebSocket only; they never import the server, the engine or the
stores (an import-linter contract keeps it so). Errors are ``twingraph.client.errors``.
"""

from twingraph.client.aio import AsyncTwinGraphClient
from twingraph.client.errors import (
    ApiError,
    ApiTimeout,
    BadRequest,
    ClientError,
    Conflict,
    Forbidden,
    NotAcceptable,
    NotFound,
    RateLimited,
    RequestTimeout,
    ServerError,
    TransportError,
    Unauthorized,
    ValidationFailed,
    WaitTimeout,
)
from twingraph.client.models import Execution, Page
from twingraph.client.sync import TwinGraphClient

__all__ = [
    "ApiError", "ApiTimeout", "AsyncTwinGraphClient", "BadRequest", "ClientError", "Conflict",
    "Execution", "Forbidden", "NotAcceptable", "NotFound", "Page", "RateLimited",
    "RequestTimeout", "ServerError", "TransportError", "TwinGraphClient", "Unauthorized",
    "ValidationFailed", "WaitTimeout",
]
