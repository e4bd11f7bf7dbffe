"""Rate limits on the in-process app: headers, 429, the separate bulk budget, per-client
budgets, concurrent WebSockets, configuration, and counters shared through the machine's Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

from twingraph.errors import ConfigurationError
from twingraph.server.app import create_app
from twingraph.server.auth import Authenticator
from twingraph.server.build import build_app
from twingraph.server.ratelimit import RateLimiter, build_rate_limiter
from twingraph.service import Services
from twingraph.settings import Settings
from twingraph.stores.metadata.apikeys import SQLApiKeyStore

REDIS = "redis://127.0.0.1:6379/0"


def limited(svc: Services, **kw: Any) -> TestClient:
    kw.setdefault("namespace", f"test-{uuid.uuid4().hex}")
    return TestClient(create_app(svc, rate_limits=RateLimiter(**kw)))


def test_headers_count_down_then_429_with_retry_after(svc: Services) -> None:
    c = limited(svc, default="3/minute")
    start = time.time()
    remaining = []
    for _ in range(3):
        resp = c.get("/api/v1/projects")
        assert resp.status_code == 200
        assert resp.headers["X-RateLimit-Limit"] == "3"
        remaining.append(int(resp.headers["X-RateLimit-Remaining"]))
        reset = int(resp.headers["X-RateLimit-Reset"])
        assert start <= reset <= time.time() + 61
    assert remaining == [2, 1, 0]
    resp = c.get("/api/v1/projects")
    assert resp.status_code == 429 and resp.json()["error"]["code"] == "RATE_LIMITED"
    assert resp.headers["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(resp.headers["Retry-After"]) <= 61
    assert int(resp.headers["X-RateLimit-Reset"]) == reset           # the same window
    assert c.post("/api/v1/projects", json={"name": "x"}).status_code == 429
    for path in ("/health", "/api/v1/health", "/metrics"):             # exempt, no headers
        resp = c.get(path)
        assert resp.status_code == 200 and "X-RateLimit-Limit" not in resp.headers
    assert svc.catalog.list_projects()[1] == 0                         # the refused POST wrote nothing


def test_bulk_operations_have_their_own_budget(svc: Services) -> None:
    c = limited(svc, default="2/minute", bulk="1/minute")
    resp = c.post("/api/v1/execute-dynamic", json={})
    assert resp.status_code != 429 and resp.headers["X-RateLimit-Limit"] == "1"
    assert resp.headers["X-RateLimit-Remaining"] == "0"
    assert c.post("/api/v1/execute-dynamic", json={}).status_code == 429
    # the router also takes the path with a final newline: it is the same bulk route
    assert c.post("/api/v1/execute-dynamic%0A", json={}).status_code == 429
    assert c.post("/api/v1/schedules/sch_x/backfill", json={"count": 1}).status_code == 429
    for _ in range(2):                  # the default budget was not touched by bulk requests
        resp = c.get("/api/v1/projects")
        assert resp.status_code == 200 and resp.headers["X-RateLimit-Limit"] == "2"
    assert c.get("/api/v1/projects").status_code == 429
    off = limited(svc, default="1/minute", bulk=None)
    for _ in range(3):
        assert "X-RateLimit-Limit" not in off.post("/api/v1/execute-dynamic", json={}).headers


def test_each_authenticated_client_has_its_own_budget(svc: Services) -> None:
    keys = SQLApiKeyStore(svc.catalog.store)
    _, a = keys.create("a", ["read"])
    _, b = keys.create("b", ["read"])
    auth = Authenticator("required", api_keys=keys)
    app = create_app(svc, auth=auth, rate_limits=RateLimiter(default="2/minute",
                                                             namespace=uuid.uuid4().hex))
    c = TestClient(app)
    assert [c.get("/api/v1/projects", headers={"X-API-Key": a}).status_code
            for _ in range(3)] == [200, 200, 429]
    resp = c.get("/api/v1/projects", headers={"X-API-Key": b})
    assert resp.status_code == 200 and resp.headers["X-RateLimit-Remaining"] == "1"
    # unauthenticated requests are charged to the peer address, and limited before the 401
    assert [c.get("/api/v1/projects").status_code for _ in range(3)] == [401, 401, 429]
    assert "X-RateLimit-Limit" in c.get("/api/v1/projects", headers={"X-API-Key": b}).headers


def test_concurrent_websockets_per_client(svc: Services) -> None:
    app = create_app(svc, rate_limits=RateLimiter(default=None, bulk=None, websocket=2,
                                                  namespace=uuid.uuid4().hex))
    with TestClient(app) as c:
        with c.websocket_connect("/ws"), c.websocket_connect("/ws"):
            with pytest.raises(WebSocketDenialResponse) as denied:
                with c.websocket_connect("/ws"):
                    pass
            assert denied.value.status_code == 429
            assert denied.value.json()["error"]["code"] == "RATE_LIMITED"
        deadline = time.monotonic() + 5             # slots are released when the sockets end
        while True:
            try:
                with c.websocket_connect("/ws"), c.websocket_connect("/ws"):
                    break
            except WebSocketDenialResponse:
                assert time.monotonic() < deadline, "closed sockets never released their slots"
                time.sleep(0.05)


def test_counters_are_shared_through_redis(svc: Services) -> None:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS).ping()
    except redis.ConnectionError as exc:
        pytest.skip(f"Redis not reachable at {REDIS}: {exc}")
    namespace = f"tg-test-{uuid.uuid4().hex}"
    first = limited(svc, default="3/minute", storage=REDIS, namespace=namespace)
    second = limited(svc, default="3/minute", storage=REDIS, namespace=namespace)
    other = limited(svc, default="3/minute", storage=REDIS)       # another namespace
    try:
        assert first.get("/api/v1/projects").headers["X-RateLimit-Remaining"] == "2"
        assert second.get("/api/v1/projects").headers["X-RateLimit-Remaining"] == "1"
        assert first.get("/api/v1/projects").headers["X-RateLimit-Remaining"] == "0"
        assert second.get("/api/v1/projects").status_code == 429
        assert other.get("/api/v1/projects").headers["X-RateLimit-Remaining"] == "2"
    finally:
        r = redis.Redis.from_url(REDIS)
        stale = list(r.scan_iter(match=f"*{namespace}*"))
        assert stale, "the counters were not in Redis"
        r.delete(*stale)


def test_a_failing_storage_serves_unlimited(svc: Services) -> None:
    c = limited(svc, default="1/minute", storage="redis://127.0.0.1:1/0")
    for _ in range(2):
        resp = c.get("/api/v1/projects")
        assert resp.status_code == 200 and "X-RateLimit-Limit" not in resp.headers


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db", **kw)


def test_configuration(svc: Services, tmp_path: Path) -> None:
    assert build_rate_limiter(_settings(tmp_path, rate_limit="off", rate_limit_bulk="off",
                                        rate_limit_ws="off")) is None
    limiter = build_rate_limiter(_settings(tmp_path, rate_limit="5/second", rate_limit_bulk="off"))
    assert limiter is not None and limiter.bulk is None and limiter.websocket == 10
    assert limiter.default is not None and limiter.default.amount == 5
    for bad in ({"rate_limit": "lots"}, {"rate_limit_ws": "many"},
                {"rate_limit_storage": "redis://127.0.0.1:1/0"}, {"rate_limit_storage": "nope://x"}):
        with pytest.raises(ConfigurationError):
            build_rate_limiter(_settings(tmp_path, **bad))
    app = build_app(_settings(tmp_path), services=svc, schedules=False)   # documented defaults
    resp = TestClient(app).get("/api/v1/projects")
    assert resp.headers["X-RateLimit-Limit"] == "100"
    resp = TestClient(app).post("/api/v1/execute-dynamic", json={})
    assert resp.headers["X-RateLimit-Limit"] == "10"


@pytest.fixture(autouse=True)
def _no_env_leak(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("TWINGRAPH_RATE_LIMIT", "TWINGRAPH_RATE_LIMIT_BULK", "TWINGRAPH_RATE_LIMIT_STORAGE"):
        monkeypatch.delenv(var, raising=False)
    yield


def test_security_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setenv("TWINGRAPH_HOME", str(tmp_path))
    assert (Settings.from_env().auth, Settings.from_env().rate_limit,
            Settings.from_env().rate_limit_storage) == (None, "100/minute", "memory://")
    env = {"TWINGRAPH_AUTH": "required", "TWINGRAPH_JWT_SECRET": "x" * 32,
           "TWINGRAPH_JWT_PUBLIC_KEY_FILE": str(tmp_path / "k.pem"),
           "TWINGRAPH_JWT_AUDIENCE": "aud", "TWINGRAPH_JWT_ISSUER": "iss",
           "TWINGRAPH_RATE_LIMIT": "off", "TWINGRAPH_RATE_LIMIT_BULK": "5/hour",
           "TWINGRAPH_RATE_LIMIT_WS": "3", "TWINGRAPH_RATE_LIMIT_STORAGE": REDIS}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings.from_env()
    assert (s.auth, s.jwt_secret, s.jwt_public_key_file, s.jwt_audience, s.jwt_issuer) == (
        "required", "x" * 32, tmp_path / "k.pem", "aud", "iss")
    assert (s.rate_limit, s.rate_limit_bulk, s.rate_limit_ws, s.rate_limit_storage) == (
        "off", "5/hour", "3", REDIS)
    assert "x" * 32 not in repr(s)                       # the secret stays out of reprs/logs
