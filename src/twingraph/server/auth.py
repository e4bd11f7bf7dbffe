"""Authentication and roles: API keys (``X-API-Key``) and JWT bearer tokens.

Modes (docs/decisions/0060-auth-modes.md)
    ``none``      nobody is asked for credentials; every request acts as ``anonymous`` with all
                  roles. The default when the server binds loopback only.
    ``required``  every route but ``EXEMPT_PATHS`` (health and the OpenAPI pages) needs valid
                  credentials: 401 ``UNAUTHORIZED`` with ``WWW-Authenticate`` otherwise, and 403
                  ``FORBIDDEN`` when the principal's roles do not allow the method. Set by
                  ``TWINGRAPH_AUTH=required``, and forced when the server binds beyond loopback
                  (``build_authenticator(..., exposed=True)``), which refuses to start unless a
                  JWT key is configured or an active API key exists.
Credentials, in this order (the first one present decides; a bad one is never skipped over)
    ``X-API-Key: tg_...``; ``Authorization: Bearer <JWT>`` (a ``tg_`` API key is accepted as a
    bearer value too). On the WebSocket handshake only, where browsers cannot set headers, the
    query parameters ``api_key`` and ``access_token`` are accepted as well.
JWT (PyJWT)
    HS256 with ``TWINGRAPH_JWT_SECRET`` and/or RS256 with the PEM public key in
    ``TWINGRAPH_JWT_PUBLIC_KEY_FILE``; the key is chosen by the token's ``alg`` and any other
    ``alg`` is refused, so an RSA public key can never be used as an HMAC secret. ``exp`` is
    required; ``nbf`` and ``iat`` are checked when present; ``aud`` and ``iss`` when configured.
    The principal is ``sub`` (or ``user_id``, as twingraph-architecture.md issues them) with the
    ``roles`` claim (a list or a space-separated string; ``read`` when absent).
Roles
    ``read`` may GET/HEAD/OPTIONS and open ``/ws``; ``write`` may also POST/PUT/PATCH/DELETE;
    ``admin`` may do everything, and only admin may touch ``ADMIN_PREFIXES`` (API keys).

The middleware is pure ASGI so it guards ``websocket`` scopes too: an unauthenticated handshake
is refused with an HTTP 401 denial response where the server supports that extension, else it
is closed with code 1008 (policy violation) before being accepted. The principal is put on
``request.state.principal`` (``scope["state"]``) for routes and logs. Secrets are never logged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio.to_thread
import jwt
from fastapi import FastAPI, Request
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from twingraph.errors import ConfigurationError
from twingraph.server.envelope import error_response
from twingraph.settings import Settings
from twingraph.stores.metadata.apikeys import ROLES, SECRET_PREFIX, SQLApiKeyStore
from twingraph.stores.metadata.store import SQLMetadataStore

log = logging.getLogger("twingraph.server.auth")

MODES = ("none", "required")
EXEMPT_PATHS = frozenset({"/health", "/api/v1/health", "/docs", "/docs/oauth2-redirect",
                          "/redoc", "/openapi.json"})
#: Paths only ``admin`` may use, whatever the method.
ADMIN_PREFIXES = ("/api/v1/api-keys",)
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_RANK = {role: i for i, role in enumerate(ROLES)}
_SCOPE_KEY = "twingraph.authentication"


@dataclass(frozen=True)
class Principal:
    """Who is calling: ``id`` is ``key:<key id>``, ``jwt:<sub>`` or ``anonymous``."""

    id: str
    kind: str                  # "api_key" | "jwt" | "anonymous"
    name: str
    roles: frozenset[str]

    def allows(self, role: str) -> bool:
        """True when one of the principal's roles is ``role`` or stronger."""
        need = _RANK[role]
        return any(_RANK.get(r, -1) >= need for r in self.roles)


ANONYMOUS = Principal("anonymous", "anonymous", "anonymous", frozenset(ROLES))


def required_role(method: str, path: str) -> str:
    """The weakest role that may call ``method path`` (``WS`` for a WebSocket handshake)."""
    if path.startswith(ADMIN_PREFIXES):
        return "admin"
    return "read" if method in _READ_METHODS or method == "WS" else "write"


class InvalidCredentials(Exception):
    """Credentials were presented but are not valid; the message says why (no secrets)."""


class JWTVerifier:
    """Checks bearer tokens: HS256 with ``secret`` and/or RS256 with ``public_key`` (PEM)."""

    def __init__(self, *, secret: str | None = None, public_key: str | None = None,
                 audience: str | None = None, issuer: str | None = None,
                 leeway: float = 0.0) -> None:
        if not secret and not public_key:
            raise ConfigurationError("a JWT verifier needs a secret (HS256) or a public key (RS256)")
        self._keys: dict[str, Any] = {}
        if secret:
            if len(secret.encode()) < 32:
                raise ConfigurationError("TWINGRAPH_JWT_SECRET must be at least 32 bytes "
                                         "(RFC 7518 §3.2: HS256 keys are 256 bits or longer)")
            self._keys["HS256"] = secret
        if public_key:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key
            try:
                self._keys["RS256"] = load_pem_public_key(public_key.encode())
            except ValueError as exc:
                raise ConfigurationError(f"the JWT public key is not a PEM public key: {exc}") from None
        self._audience, self._issuer, self._leeway = audience, issuer, leeway

    def verify(self, token: str) -> Principal:
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise InvalidCredentials("malformed bearer token") from None
        key = self._keys.get(alg) if isinstance(alg, str) else None
        if key is None:
            raise InvalidCredentials(f"token algorithm {alg!r} is not accepted "
                                     f"(accepted: {', '.join(self._keys)})")
        try:
            claims = jwt.decode(token, key, algorithms=[str(alg)], audience=self._audience,
                                issuer=self._issuer, leeway=self._leeway,
                                options={"require": ["exp"], "verify_aud": self._audience is not None})
        except jwt.ExpiredSignatureError:
            raise InvalidCredentials("token expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidCredentials("token not yet valid (nbf/iat in the future)") from None
        except jwt.InvalidTokenError as exc:
            raise InvalidCredentials(f"invalid token: {exc}") from None
        subject = claims.get("sub") or claims.get("user_id")
        if not isinstance(subject, str) or not subject:
            raise InvalidCredentials("token has no 'sub' claim")
        raw = claims.get("roles", ["read"])
        roles = raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else []
        return Principal(f"jwt:{subject}", "jwt", subject,
                         frozenset(r for r in roles if isinstance(r, str) and r in _RANK))


@dataclass(frozen=True)
class Authentication:
    """The outcome for one connection: a principal, or why there is none."""

    principal: Principal | None
    error: str | None = None           # set when credentials were presented and refused


class Authenticator:
    """Resolves a scope's credentials to a ``Principal`` (memoised on the scope's state, so the
    rate limiter and the auth middleware share one lookup)."""

    def __init__(self, mode: str = "required", *, api_keys: SQLApiKeyStore | None = None,
                 jwt_verifier: JWTVerifier | None = None) -> None:
        if mode not in MODES:
            raise ConfigurationError(f"unknown auth mode {mode!r}; expected one of {', '.join(MODES)}")
        if mode == "required" and api_keys is None and jwt_verifier is None:
            raise ConfigurationError("auth is required but neither API keys nor JWT are configured")
        self.mode, self.api_keys, self.jwt = mode, api_keys, jwt_verifier

    @classmethod
    def disabled(cls) -> Authenticator:
        return cls("none")

    async def authenticate(self, scope: Scope) -> Authentication:
        # On the scope itself (one per connection by the ASGI spec), not on scope["state"],
        # which a server may seed from shared lifespan state.
        cached = scope.get(_SCOPE_KEY)
        if cached is None:
            cached = scope[_SCOPE_KEY] = await self._authenticate(scope)
        return cast(Authentication, cached)

    async def identity(self, scope: Scope) -> str:
        """The rate-limit client id: the principal's id when authenticated, else the peer IP."""
        principal = (await self.authenticate(scope)).principal
        if principal is not None and principal.kind != "anonymous":
            return principal.id
        return peer(scope)

    async def _authenticate(self, scope: Scope) -> Authentication:
        if self.mode == "none":
            return Authentication(ANONYMOUS)
        kind, secret = _credentials(scope)
        if secret is None:
            return Authentication(None)
        try:
            if kind == "api_key" or secret.startswith(SECRET_PREFIX):
                return Authentication(await self._api_key(secret))
            if self.jwt is None:
                raise InvalidCredentials("bearer tokens are not accepted by this server "
                                         "(no TWINGRAPH_JWT_SECRET / public key configured)")
            return Authentication(self.jwt.verify(secret))
        except InvalidCredentials as exc:
            return Authentication(None, str(exc))

    async def _api_key(self, secret: str) -> Principal:
        if self.api_keys is None:
            raise InvalidCredentials("API keys are not accepted by this server")
        rec = await anyio.to_thread.run_sync(self.api_keys.verify, secret)
        if rec is None:
            raise InvalidCredentials("invalid, revoked or expired API key")
        return Principal(f"key:{rec.id}", "api_key", rec.name, frozenset(rec.roles))


def peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"ip:{client[0]}" if client else "ip:unknown"


def _credentials(scope: Scope) -> tuple[str, str | None]:
    headers = {k.lower(): v for k, v in scope.get("headers", ())}
    key = headers.get(b"x-api-key")
    if key:
        return "api_key", key.decode("latin-1").strip()
    authz = headers.get(b"authorization")
    if authz:
        scheme, _, value = authz.decode("latin-1").strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return "bearer", value.strip()
        return "bearer", ""                    # present but unusable: refused, not ignored
    if scope["type"] == "websocket":
        from urllib.parse import parse_qs
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("api_key"):
            return "api_key", query["api_key"][0]
        if query.get("access_token"):
            return "bearer", query["access_token"][0]
    return "none", None


class RedactQuerySecrets(logging.Filter):
    """Masks ``api_key=`` / ``access_token=`` query values in log records. uvicorn logs each
    WebSocket handshake's path with its query string at INFO on ``uvicorn.error`` (its
    ``access_log=False`` does not cover that line), and the handshake is where those query
    parameters carry credentials."""

    _SECRET = re.compile(r"((?:api_key|access_token)=)[^&\s\"']+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self._SECRET.sub(r"\1***", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._SECRET.sub(r"\1***", a) if isinstance(a, str) else a
                                for a in record.args)
        return True


#: Loggers of ASGI servers that write request paths with their query strings.
SERVER_LOGGERS = ("uvicorn.error", "uvicorn.access")


def redact_server_logs() -> None:
    """Install ``RedactQuerySecrets`` on ``SERVER_LOGGERS`` (once)."""
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQuerySecrets) for f in logger.filters):
            logger.addFilter(RedactQuerySecrets())


class AuthMiddleware:
    """Pure ASGI: refuses unauthenticated or under-privileged HTTP requests and WebSocket
    handshakes (see the module doc); passes lifespan and exempt paths through."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app, self.auth = app, authenticator
        redact_server_logs()            # credentials may come in /ws query strings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self.auth.mode == "none" or path in EXEMPT_PATHS:
            scope.setdefault("state", {})["principal"] = ANONYMOUS if self.auth.mode == "none" else None
            await self.app(scope, receive, send)
            return
        result = await self.auth.authenticate(scope)
        principal = result.principal
        method = "WS" if scope["type"] == "websocket" else scope["method"]
        if principal is None:
            message = result.error or ("authentication required: send X-API-Key or "
                                       "Authorization: Bearer <token>")
            challenge = 'Bearer realm="twingraph"' + (', error="invalid_token"' if result.error else "")
            log.info("auth refused %s %s from %s: %s", method, path, peer(scope), message)
            await _refuse(scope, receive, send, 401, message, {"WWW-Authenticate": challenge})
            return
        scope.setdefault("state", {})["principal"] = principal
        need = required_role(method, path)
        if not principal.allows(need):
            await _refuse(scope, receive, send, 403,
                          f"{principal.id} lacks the '{need}' role for {method} {path}", {})
            return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str,
                  headers: dict[str, str]) -> None:
    response = error_response(cast(Request, HTTPConnection(scope)), status, message,
                              headers=headers)
    if scope["type"] == "http":
        await response(scope, receive, send)
        return
    await receive()                                   # the websocket.connect message
    if "websocket.http.response" in scope.get("extensions", {}):
        await response(scope, receive, send)          # sent as websocket.http.response.*
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})


def document_security(app: FastAPI) -> None:
    """Declare ``X-API-Key`` and bearer JWT in the app's OpenAPI document (``/docs`` then has
    an Authorize button); the exempt paths are marked as needing nothing."""
    make = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = make()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["ApiKeyAuth"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        schemes["BearerAuth"] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        schema["security"] = [{"ApiKeyAuth": []}, {"BearerAuth": []}]
        for path, operations in schema.get("paths", {}).items():
            if path in EXEMPT_PATHS:
                for operation in operations.values():
                    operation["security"] = []
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_authenticator(settings: Settings, store: SQLMetadataStore, *,
                        exposed: bool) -> Authenticator:
    """The authenticator ``settings`` ask for. ``exposed`` (a non-loopback bind) forces mode
    ``required`` and raises ``ConfigurationError`` unless a JWT key is configured or an active
    API key exists, or when ``TWINGRAPH_AUTH=none`` was asked for explicitly."""
    mode = (settings.auth or ("required" if exposed else "none")).strip().lower()
    if mode not in MODES:
        raise ConfigurationError(f"TWINGRAPH_AUTH={settings.auth!r}: expected none or required")
    refuse = ("refusing to bind a non-loopback address without authentication: configure auth "
              "(TWINGRAPH_AUTH=required with API keys or TWINGRAPH_JWT_SECRET) or bind 127.0.0.1")
    if exposed and mode == "none":
        raise ConfigurationError(refuse + " (TWINGRAPH_AUTH=none was set)")
    if mode == "none":
        return Authenticator.disabled()
    verifier = None
    public_key = None
    if settings.jwt_public_key_file is not None:
        try:
            public_key = Path(settings.jwt_public_key_file).read_text()
        except OSError as exc:
            raise ConfigurationError(f"cannot read TWINGRAPH_JWT_PUBLIC_KEY_FILE: {exc}") from None
    if settings.jwt_secret or public_key:
        verifier = JWTVerifier(secret=settings.jwt_secret, public_key=public_key,
                               audience=settings.jwt_audience, issuer=settings.jwt_issuer)
    keys = SQLApiKeyStore(store)
    if verifier is None and not keys.has_active():
        raise ConfigurationError(
            (refuse if exposed else "TWINGRAPH_AUTH=required but no credentials can be valid")
            + ": no active API key exists (create one with `twingraph apikey create NAME "
              "--role admin`) and no JWT key is configured")
    return Authenticator("required", api_keys=keys, jwt_verifier=verifier)


__all__ = ["ANONYMOUS", "EXEMPT_PATHS", "AuthMiddleware", "Authentication", "Authenticator",
           "InvalidCredentials", "JWTVerifier", "Principal", "build_authenticator",
           "document_security", "peer",
           "required_role"]
