"""The SDK's credentials against a real server with auth required (embedded default only: auth
does not depend on the metadata backend): an API key made by ``twingraph apikey create`` and an
HS256 JWT, each sent by the client over HTTP and on the ``/ws`` handshake."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import jwt
import pytest
from websockets.asyncio.client import connect

from tests.e2e.conftest import start_server, stop_server
from twingraph.client import (
    AsyncTwinGraphClient,
    RateLimited,
    Forbidden,
    TransportError,
    TwinGraphClient,
    Unauthorized,
    ValidationFailed,
)

SECRET = "e2e-jwt-secret-with-enough-entropy-0123456789"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("server-auth")
    env = dict(os.environ, TWINGRAPH_HOME=str(home))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    made = subprocess.run([sys.executable, "-m", "twingraph", "apikey", "create", "e2e-sdk",
                           "--role", "write"], cwd=str(home), env=env, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    key = made.stdout.strip().splitlines()[-1].strip()
    assert key.startswith("tg_")
    # at most 2 WebSockets per client: enough for one wait at a time, and a test can use both up
    srv = start_server(home, {"TWINGRAPH_AUTH": "required", "TWINGRAPH_JWT_SECRET": SECRET,
                              "TWINGRAPH_RATE_LIMIT_WS": "2", "TWINGRAPH_RATE_LIMIT_BULK": "2/minute"})
    try:
        yield srv, key
    finally:
        stop_server(srv)


def token(roles: list[str], ttl: float = 600, sub: str = "e2e-user") -> str:
    return jwt.encode({"sub": sub, "roles": roles, "exp": int(time.time() + ttl)},
                      SECRET, algorithm="HS256")


def test_api_key_and_bearer_tokens(auth_server):
    srv, key = auth_server
    with TwinGraphClient(srv.base_url) as anonymous:
        assert anonymous.health()["status"] == "healthy"          # exempt
        with pytest.raises(Unauthorized) as info:
            anonymous.projects.list()
        assert (info.value.status_code, info.value.code) == (401, "UNAUTHORIZED")
    with TwinGraphClient(srv.base_url, api_key="tg_not-a-real-key") as wrong:
        with pytest.raises(Unauthorized):
            wrong.runs.list()

    with TwinGraphClient(srv.base_url, api_key=key) as client:
        run = client.runs.create("etl_python", params={"n": 2})
        client.runs.start(run["id"])
        assert client.runs.wait(run["id"], timeout=60, mode="websocket")["state"] == "SUCCESS"

    bare, prefixed = token(["write"]), "Bearer " + token(["write"])
    for auth_token in (bare, prefixed):
        with TwinGraphClient(srv.base_url, auth_token=auth_token) as client:
            ex = client.executions.create("etl_python", inputs={"n": 1})
            done = client.executions.wait_for_completion(ex.id, timeout=60, mode="websocket")
            assert done.status == "completed"
    with TwinGraphClient(srv.base_url, auth_token=token(["read"])) as reader:
        assert reader.runs.list(limit=5).total >= 3
        with pytest.raises(Forbidden) as denied:
            reader.projects.create("not-allowed")
        assert denied.value.status_code == 403
    with TwinGraphClient(srv.base_url, auth_token=token(["write"], ttl=-60)) as expired:
        with pytest.raises(Unauthorized):
            expired.runs.list()


def test_async_client_and_websocket_need_credentials(auth_server):
    srv, key = auth_server

    async def main():
        async with AsyncTwinGraphClient(srv.base_url, api_key=key) as client:
            ex = await client.executions.create_async(workflow_id="etl_python", inputs={"n": 2})
            result = await client.executions.wait_for_completion(ex.id, timeout=60,
                                                                 mode="websocket")
            assert result.status == "completed"
        async with AsyncTwinGraphClient(srv.base_url) as anonymous:
            # the /ws handshake is refused without credentials: no silent fallback allowed
            with pytest.raises(TransportError):
                await anonymous.executions.wait_for_completion(ex.id, timeout=10,
                                                               mode="websocket")
            with pytest.raises(Unauthorized):      # auto mode falls back to polling: 401 there
                await anonymous.executions.wait_for_completion(ex.id, timeout=10)
    asyncio.run(main())



def test_wait_falls_back_to_polling_when_the_websocket_is_refused(auth_server):
    """With the client's WebSocket allowance used up, the handshake is refused: the default mode
    still finishes (polling), ``mode="websocket"`` says it could not listen."""
    srv, key = auth_server

    async def main():
        async with AsyncTwinGraphClient(srv.base_url, api_key=key) as client:
            ex = await client.executions.create_async(workflow_id="etl_python", inputs={"n": 2})
            held = [await connect(srv.ws_url, additional_headers={"X-API-Key": key})
                    for _ in range(2)]
            try:
                with pytest.raises(TransportError):
                    await client.executions.wait_for_completion(ex.id, timeout=10,
                                                                mode="websocket")
                result = await client.executions.wait_for_completion(ex.id, timeout=60)
                assert result.status == "completed"
            finally:
                for ws in held:
                    await ws.close()
    asyncio.run(main())


def test_rate_limited_carries_retry_after(auth_server):
    """The bulk budget (2/minute on this server) of one client, spent on execute-dynamic."""
    srv, _ = auth_server
    with TwinGraphClient(srv.base_url, auth_token=token(["write"], sub="rate-limit-probe")) as c:
        for _ in range(2):
            with pytest.raises(ValidationFailed):
                c.dynamic.execute("nodes: [unclosed")
        with pytest.raises(RateLimited) as info:
            c.dynamic.execute("nodes: [unclosed")
        assert info.value.code == "RATE_LIMITED" and info.value.status_code == 429
        assert info.value.retry_after is not None and 0 < info.value.retry_after <= 60
