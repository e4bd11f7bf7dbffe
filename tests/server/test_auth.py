"""Auth on the in-process app: API keys, JWT (HS256/RS256), roles, every route, the /ws handshake,
and the non-loopback rule of ``build_app``."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import Request
from fastapi.routing import APIRoute, APIWebSocketRoute
from fastapi.testclient import TestClient
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import WebSocketDenialResponse
from typer.testing import CliRunner

from twingraph.errors import ConfigurationError
from twingraph.server.app import create_app
from twingraph.server.auth import EXEMPT_PATHS, Authenticator, JWTVerifier
from twingraph.server.build import build_app
from twingraph.service import Services
from twingraph.settings import Settings
from twingraph.stores.metadata.apikeys import SQLApiKeyStore

SECRET = "s3cret-for-tests-only-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(svc: Services, clock: Clock) -> SQLApiKeyStore:
    return SQLApiKeyStore(svc.catalog.store, clock=clock)


@pytest.fixture(scope="module")
def rsa_pair() -> tuple[Any, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public_pem


@pytest.fixture
def app(svc: Services, keys: SQLApiKeyStore, rsa_pair: tuple[Any, str]) -> Any:
    verifier = JWTVerifier(secret=SECRET, public_key=rsa_pair[1])
    app = create_app(svc, auth=Authenticator("required", api_keys=keys, jwt_verifier=verifier))

    @app.get("/test/whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        p = request.state.principal
        return {"id": p.id, "kind": p.kind, "roles": sorted(p.roles)}
    return app


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def token(key: Any = SECRET, alg: str = "HS256", **claims: Any) -> str:
    claims.setdefault("sub", "alice")
    claims.setdefault("exp", int(time.time()) + 300)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm=alg)


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def all_routes(routes: Any) -> Iterator[tuple[str, Any]]:
    """(full path, route) of every route, through included routers (FastAPI >= 0.160 keeps an
    included router as one ``_IncludedRouter`` entry of ``app.routes``; older ones flatten)."""
    for r in routes:
        if hasattr(r, "effective_candidates"):
            yield from all_routes(r.effective_candidates())
        else:
            orig = getattr(r, "original_route", r)
            yield (getattr(r, "path", "") or orig.path), orig


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def assert_401(resp: Any, why: str = "") -> None:
    assert resp.status_code == 401, (resp.request.method, resp.request.url, resp.text)
    body = resp.json()
    assert body["error"]["code"] == "UNAUTHORIZED" and why in body["error"]["message"]
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert body["meta"]["request_id"] == resp.headers["X-Request-ID"]


def test_every_route_but_the_exempt_ones_answers_401_without_credentials(
        client: TestClient, app: Any) -> None:
    checked = 0
    for path, route in all_routes(app.routes):
        if isinstance(route, (APIWebSocketRoute, WebSocketRoute)):
            with pytest.raises(WebSocketDenialResponse) as denied:
                with client.websocket_connect(_concrete(path)):
                    pass
            assert denied.value.status_code == 401
            assert denied.value.json()["error"]["code"] == "UNAUTHORIZED"
            checked += 1
            continue
        assert isinstance(route, (APIRoute, Route)), route
        for method in route.methods or ():
            resp = client.request(method, _concrete(path))
            if path in EXEMPT_PATHS:
                assert resp.status_code != 401, path
            else:
                assert_401(resp)
                checked += 1
    assert checked > 30                                  # the faces are really mounted
    for path in ("/docs", "/redoc", "/openapi.json", "/health", "/api/v1/health"):
        assert client.get(path).status_code == 200, path
    assert_401(client.get("/no/such/route"))            # unknown paths reveal nothing
    doc = client.get("/openapi.json").json()
    assert set(doc["components"]["securitySchemes"]) == {"ApiKeyAuth", "BearerAuth"}
    assert doc["security"] and doc["paths"]["/health"]["get"]["security"] == []


def test_api_keys_are_accepted_until_revoked_or_expired(
        client: TestClient, keys: SQLApiKeyStore, clock: Clock) -> None:
    rec, secret = keys.create("reader", ["read"])
    resp = client.get("/test/whoami", headers={"X-API-Key": secret})
    assert resp.status_code == 200
    assert resp.json() == {"id": f"key:{rec.id}", "kind": "api_key", "roles": ["read"]}
    assert client.get("/api/v1/projects", headers=bearer(secret)).status_code == 200
    assert_401(client.get("/api/v1/projects", headers={"X-API-Key": secret[:-2]}), "invalid")
    assert_401(client.get("/api/v1/projects", headers={"Authorization": f"Basic {secret}"}))
    keys.revoke(rec.id)
    assert_401(client.get("/api/v1/projects", headers={"X-API-Key": secret}), "revoked")
    _, short = keys.create("short", ["read"], expires_at=clock.now + 60)
    assert client.get("/api/v1/projects", headers={"X-API-Key": short}).status_code == 200
    clock.now += 61
    assert_401(client.get("/api/v1/projects", headers={"X-API-Key": short}), "expired")


def test_roles_read_write_admin(client: TestClient, keys: SQLApiKeyStore) -> None:
    _, reader = keys.create("r", ["read"])
    _, writer = keys.create("w", ["write"])
    _, admin = keys.create("a", ["admin"])
    resp = client.post("/api/v1/projects", json={"name": "p1"}, headers={"X-API-Key": reader})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "FORBIDDEN"
    assert client.get("/api/v1/projects", headers={"X-API-Key": reader}).json()["meta"]["total"] == 0
    assert client.post("/api/v1/projects", json={"name": "p1"},
                       headers={"X-API-Key": writer}).status_code == 201
    assert client.get("/api/v1/projects", headers={"X-API-Key": writer}).status_code == 200
    assert client.post("/api/v1/projects", json={"name": "p2"},
                       headers={"X-API-Key": admin}).status_code == 201
    resp = client.get("/api/v1/api-keys", headers={"X-API-Key": writer})
    assert resp.status_code == 403                     # admin-only prefix, whatever the method
    assert client.get("/api/v1/api-keys", headers={"X-API-Key": admin}).status_code == 200


def test_api_keys_over_rest_are_admin_only(client: TestClient, keys: SQLApiKeyStore) -> None:
    _, admin = keys.create("root", ["admin"])
    _, writer = keys.create("w", ["write"])
    as_admin = {"X-API-Key": admin}
    resp = client.post("/api/v1/api-keys", json={"name": "robot", "roles": ["read"],
                                                  "expires_in_seconds": 3600}, headers=as_admin)
    assert resp.status_code == 201
    made = resp.json()["data"]
    new = made["key"]
    assert new.startswith("tg_") and made["prefix"] == new[:11] and made["status"] == "active"
    assert client.get("/api/v1/projects", headers={"X-API-Key": new}).status_code == 200
    listed = client.get("/api/v1/api-keys", headers=as_admin).json()
    assert listed["meta"]["total"] == 3 and new not in str(listed)
    assert client.get(f"/api/v1/api-keys/{made['id']}", headers=as_admin).json()["data"]["name"] == "robot"
    for method, path in (("POST", "/api/v1/api-keys"), ("DELETE", f"/api/v1/api-keys/{made['id']}"),
                         ("GET", f"/api/v1/api-keys/{made['id']}")):
        assert client.request(method, path, headers={"X-API-Key": writer}).status_code == 403
    resp = client.delete(f"/api/v1/api-keys/{made['id']}", headers=as_admin)
    assert resp.status_code == 200 and resp.json()["data"]["status"] == "revoked"
    assert_401(client.get("/api/v1/projects", headers={"X-API-Key": new}), "revoked")
    bad = client.post("/api/v1/api-keys", json={"name": "x", "roles": ["root"]}, headers=as_admin)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "VALIDATION_ERROR"
    assert client.delete("/api/v1/api-keys/key_nope", headers=as_admin).status_code == 404
    assert len(keys.list()) == 3                                    # the bad POST wrote nothing


def test_jwt_bearer_tokens(client: TestClient, rsa_pair: tuple[Any, str]) -> None:
    resp = client.get("/test/whoami", headers=bearer(token(roles=["write"])))
    assert resp.json() == {"id": "jwt:alice", "kind": "jwt", "roles": ["write"]}
    assert client.post("/api/v1/projects", json={"name": "j"},
                       headers=bearer(token(roles="read write"))).status_code == 201
    assert client.post("/api/v1/projects", json={"name": "k"},
                       headers=bearer(token())).status_code == 403        # no roles: read
    legacy = token(sub=None, user_id="bob")          # twingraph-architecture.md's claim name
    assert client.get("/test/whoami", headers=bearer(legacy)).json()["id"] == "jwt:bob"
    assert client.get("/test/whoami", headers=bearer(token(rsa_pair[0], "RS256"))).status_code == 200
    odd = client.get("/test/whoami", headers=bearer(token(roles=[{"a": 1}, "write"])))
    assert odd.status_code == 200 and odd.json()["roles"] == ["write"]   # not a 500


@pytest.mark.parametrize("bad, why", [
    (lambda pair: token(exp=int(time.time()) - 5), "expired"),
    (lambda pair: token(key="another-secret-of-sufficient-length-000"), "invalid token"),
    (lambda pair: token(nbf=int(time.time()) + 120), "not yet valid"),
    (lambda pair: token(iat=int(time.time()) + 120), "not yet valid"),
    (lambda pair: token(exp=None), "exp"),
    (lambda pair: token(sub=None), "sub"),
    (lambda pair: jwt.encode({"sub": "eve", "exp": int(time.time()) + 60}, "",
                             algorithm="none"), "algorithm"),
    (lambda pair: token(alg="HS384"), "algorithm"),
    (lambda pair: "not.a.jwt", "malformed"),
])
def test_bad_tokens_are_refused(client: TestClient, rsa_pair: tuple[Any, str], bad: Any,
                                why: str) -> None:
    assert_401(client.get("/api/v1/projects", headers=bearer(bad(rsa_pair))), why)


def test_hs256_signed_with_the_rsa_public_key_is_refused(rsa_pair: tuple[Any, str]) -> None:
    """Algorithm confusion: the public key must never serve as an HMAC secret."""
    import base64
    import hashlib
    import hmac
    import json

    def enc(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    head = enc(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = enc(json.dumps({"sub": "eve", "exp": int(time.time()) + 60}).encode())
    sig = enc(hmac.new(rsa_pair[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    verifier = JWTVerifier(secret=SECRET, public_key=rsa_pair[1])
    with pytest.raises(Exception, match="invalid token"):
        verifier.verify(f"{head}.{body}.{sig}")


def test_audience_and_issuer_when_configured(svc: Services) -> None:
    verifier = JWTVerifier(secret=SECRET, audience="twingraph", issuer="https://idp")
    app = create_app(svc, auth=Authenticator("required", jwt_verifier=verifier))
    with TestClient(app) as c:
        good = token(aud="twingraph", iss="https://idp")
        assert c.get("/api/v1/projects", headers=bearer(good)).status_code == 200
        assert_401(c.get("/api/v1/projects", headers=bearer(token(aud="other", iss="https://idp"))))
        assert_401(c.get("/api/v1/projects", headers=bearer(token(aud="twingraph"))))
        # no key store configured: an API key is refused, never waved through
        assert_401(c.get("/api/v1/projects", headers={"X-API-Key": "tg_" + "a" * 43}), "not accepted")


def test_websocket_handshake_needs_credentials(client: TestClient, keys: SQLApiKeyStore) -> None:
    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect("/ws"):
            pass
    assert denied.value.status_code == 401
    with pytest.raises(WebSocketDenialResponse):
        with client.websocket_connect("/ws", headers={"X-API-Key": "tg_wrong"}):
            pass
    _, secret = keys.create("ui", ["read"])
    for kwargs in ({"headers": {"X-API-Key": secret}}, {"url": f"/ws?api_key={secret}"},
                   {"url": f"/ws?access_token={token()}"}):
        url = kwargs.pop("url", "/ws")
        with client.websocket_connect(str(url), **kwargs) as ws:
            ws.send_json({"action": "subscribe", "execution_id": "does-not-exist"})
            assert ws.receive_json()                  # the route answers: we got through


def test_no_auth_mode_lets_everything_through_as_anonymous(svc: Services) -> None:
    app = create_app(svc)
    with TestClient(app) as c:
        assert c.post("/api/v1/projects", json={"name": "open"}).status_code == 201
        assert c.get("/api/v1/info").json()["data"]["auth"] == "none"
        assert "security" not in c.get("/openapi.json").json()


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db", **kw)


def test_build_app_refuses_a_non_loopback_bind_without_auth(svc: Services, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="non-loopback"):
        build_app(_settings(tmp_path), services=svc, schedules=False, exposed=True)
    with pytest.raises(ConfigurationError, match="TWINGRAPH_AUTH=none"):
        build_app(_settings(tmp_path, auth="none", jwt_secret=SECRET), services=svc,
                  schedules=False, exposed=True)
    with pytest.raises(ConfigurationError, match="no active API key"):
        build_app(_settings(tmp_path, auth="required"), services=svc, schedules=False)


def test_build_app_allows_a_non_loopback_bind_with_auth(svc: Services, tmp_path: Path) -> None:
    app = build_app(_settings(tmp_path, jwt_secret=SECRET), services=svc, schedules=False,
                    exposed=True)
    assert app.state.auth_mode == "required"
    c = TestClient(app)
    assert_401(c.get("/api/v1/projects"))
    assert c.get("/api/v1/projects", headers=bearer(token())).status_code == 200
    _, secret = SQLApiKeyStore(svc.catalog.store).create("ops", ["admin"])
    app = build_app(_settings(tmp_path), services=svc, schedules=False, exposed=True)
    c = TestClient(app)
    assert c.get("/api/v1/projects", headers={"X-API-Key": secret}).status_code == 200
    assert_401(c.get("/api/v1/projects", headers=bearer(token())), "bearer tokens are not accepted")
    loopback = build_app(_settings(tmp_path), services=svc, schedules=False)
    assert loopback.state.auth_mode == "none"


def test_rs256_public_key_file_audience_and_issuer_from_settings(
        svc: Services, tmp_path: Path, rsa_pair: tuple[Any, str]) -> None:
    pem = tmp_path / "jwt.pub"
    pem.write_text(rsa_pair[1])
    settings = _settings(tmp_path, jwt_public_key_file=pem, jwt_audience="tg", jwt_issuer="idp")
    c = TestClient(build_app(settings, services=svc, schedules=False, exposed=True))
    good = token(rsa_pair[0], "RS256", aud="tg", iss="idp")
    assert c.get("/api/v1/projects", headers=bearer(good)).status_code == 200
    assert_401(c.get("/api/v1/projects", headers=bearer(token(rsa_pair[0], "RS256", aud="tg"))))
    assert_401(c.get("/api/v1/projects", headers=bearer(token(aud="tg", iss="idp"))), "algorithm")
    with pytest.raises(ConfigurationError, match="cannot read"):
        build_app(_settings(tmp_path, jwt_public_key_file=tmp_path / "missing.pem"),
                  services=svc, schedules=False, exposed=True)
    pem.write_text("not a key")
    with pytest.raises(ConfigurationError, match="PEM"):
        build_app(settings, services=svc, schedules=False, exposed=True)


def test_short_jwt_secret_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="32 bytes"):
        JWTVerifier(secret="short")


def test_cli_server_refuses_a_public_host_without_auth(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from twingraph.cli.main import app as cli
    monkeypatch.setenv("TWINGRAPH_HOME", str(tmp_path))
    for var in ("TWINGRAPH_AUTH", "TWINGRAPH_JWT_SECRET", "TWINGRAPH_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    result = CliRunner().invoke(cli, ["server", "--host", "0.0.0.0", "--no-schedules"])
    assert result.exit_code == 2 and "non-loopback" in result.output


# -- a real server process ------------------------------------------------------------------

def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_server_with_cli_key_sdk_and_websocket(tmp_path: Path) -> None:
    """`twingraph apikey create` + `TWINGRAPH_AUTH=required twingraph server` under uvicorn:
    the SDK with api_key / auth_token (with and without 'Bearer '), and the /ws handshake."""
    import os
    import signal
    import subprocess
    import sys

    import httpx
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from twingraph.client import TwinGraphClient
    from twingraph.client.errors import Forbidden, Unauthorized

    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path), TWINGRAPH_AUTH="required",
               TWINGRAPH_JWT_SECRET=SECRET)
    for var in ("TWINGRAPH_DATABASE_URL", "TWINGRAPH_RATE_LIMIT", "TWINGRAPH_RATE_LIMIT_STORAGE"):
        env.pop(var, None)
    made = subprocess.run([sys.executable, "-m", "twingraph", "apikey", "create", "ci",
                           "--role", "write"], env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("tg_")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "twingraph", "server", "--port", str(port),
                             "--no-schedules", "--log-level", "warning"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        resp = httpx.get(base + "/api/workflows")
        assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert resp.headers["X-RateLimit-Limit"] == "100"
        with TwinGraphClient(base, api_key=secret) as sdk:
            project = sdk.projects.create(name="secured")
            assert sdk.projects.get(project["id"])["name"] == "secured"
        for tok in (token(roles=["read"]), "Bearer " + token(roles=["read"])):
            with TwinGraphClient(base, auth_token=tok) as sdk:
                assert sdk.projects.get(project["id"])["name"] == "secured"
                with pytest.raises(Forbidden):
                    sdk.projects.create(name="not-allowed")
        with TwinGraphClient(base, api_key="tg_not-a-key") as sdk, pytest.raises(Unauthorized):
            sdk.projects.list()
        ws_url = f"ws://127.0.0.1:{port}/ws"
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url, open_timeout=5).close()
        assert refused.value.response.status_code == 401
        with connect(ws_url, additional_headers={"X-API-Key": secret}, open_timeout=5) as ws:
            ws.send('{"action": "subscribe", "execution_id": "nope"}')
            assert ws.recv(timeout=5)
        assert secret not in (tmp_path / "server.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_websocket_refusal_without_the_denial_extension_closes_with_1008(
        keys: SQLApiKeyStore) -> None:
    """Servers without ``websocket.http.response`` get a close before accept (HTTP 403 on the
    wire); the protected app never runs."""
    import anyio

    from twingraph.server.auth import AuthMiddleware

    reached: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])

    async def exchange(headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"}

        async def send(message: Any) -> None:
            sent.append(message)
        scope = {"type": "websocket", "path": "/ws", "headers": headers, "query_string": b"",
                 "client": ("10.0.0.1", 5000), "extensions": {}}
        await AuthMiddleware(inner, Authenticator("required", api_keys=keys))(scope, receive, send)
        return sent

    sent = anyio.run(exchange, [])
    assert [(m["type"], m.get("code")) for m in sent] == [("websocket.close", 1008)]
    assert reached == []
    _, secret = keys.create("ws", ["read"])
    assert anyio.run(exchange, [(b"x-api-key", secret.encode())]) == [] and reached == ["/ws"]
