"""Review findings that need a real server process (issue 3)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_websocket_query_credentials_are_not_written_to_the_server_log(tmp_path: Path) -> None:
    """Browsers cannot set headers on a WebSocket, so ``/ws?api_key=...`` (and
    ``?access_token=...``) is accepted; uvicorn logs every handshake's path *with its query
    string* at INFO on ``uvicorn.error`` (``access_log=False`` does not cover it), so
    `twingraph server` at its default log level wrote the API key to its log."""
    from websockets.sync.client import connect

    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path), TWINGRAPH_AUTH="required")
    for var in ("TWINGRAPH_DATABASE_URL", "TWINGRAPH_RATE_LIMIT", "TWINGRAPH_RATE_LIMIT_STORAGE",
                "TWINGRAPH_JWT_SECRET"):
        env.pop(var, None)
    made = subprocess.run([sys.executable, "-m", "twingraph", "apikey", "create", "ci",
                           "--role", "read"], env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("tg_")
    port = _free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "twingraph", "server", "--port", str(port),
                                 "--no-schedules"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        with connect(f"ws://127.0.0.1:{port}/ws?api_key={secret}", open_timeout=5) as ws:
            ws.send('{"action": "ping"}')
            assert ws.recv(timeout=5)
        time.sleep(0.3)
        text = log_path.read_text()
        assert '"WebSocket /ws' in text, text          # the handshake is logged...
        assert secret not in text                       # ...without the key
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
