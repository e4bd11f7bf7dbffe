"""Review findings that need a real server process (issue 3)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _server(env: dict[str, str], log_path: Path) -> Iterator[int]:
    """A real ``twingraph server`` on a free loopback port, until the block ends."""
    port = _free_port()
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
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


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
    log_path = tmp_path / "server.log"
    with _server(env, log_path) as port:
        with connect(f"ws://127.0.0.1:{port}/ws?api_key={secret}", open_timeout=5) as ws:
            ws.send('{"action": "ping"}')
            assert ws.recv(timeout=5)
        time.sleep(0.3)
        text = log_path.read_text()
        assert '"WebSocket /ws' in text, text          # the handshake is logged...
        assert secret not in text                       # ...without the key


def test_concurrent_duplicate_names_are_409_not_500_on_postgres(postgres_url: str,
                                                                 tmp_path: Path) -> None:
    """``create_project`` checks the name and inserts in one transaction, but under
    PostgreSQL's READ COMMITTED two such transactions both see no row: the loser hit the
    unique index and got ``StorageError`` (a 500 carrying the database's message) instead of
    the documented 409 CONFLICT for a duplicate project name. Same for a pipeline created
    with a chosen id (``POST /api/workflows/{id}``) and for renaming a project."""
    import threading
    from collections.abc import Callable

    from twingraph.errors import ConflictError
    from twingraph.service import build_services
    from twingraph.settings import Settings

    svc = build_services(Settings(home=tmp_path, database_url=postgres_url))
    outcomes: list[str] = []

    def race(make: Callable[[int, int], object], n: int = 6, trials: int = 4) -> None:
        """``n`` threads call ``make(trial, thread)`` at once, ``trials`` times."""
        for trial in range(trials):
            barrier = threading.Barrier(n)

            def one(k: int, trial: int = trial) -> None:
                barrier.wait()
                try:
                    make(trial, k)
                    outcomes.append("ok")
                except ConflictError:
                    outcomes.append("conflict")
                except Exception as exc:  # noqa: BLE001 - the bug
                    outcomes.append(f"{type(exc).__name__}: {exc}")
            threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    try:
        race(lambda trial, _k: svc.catalog.create_project(f"dup-{trial}"))
        home = svc.catalog.create_project("home")
        race(lambda trial, _k: svc.catalog.create_pipeline(
            home.id, f"p-{trial}", {"nodes": [], "edges": []}, pipeline_id=f"wf-{trial}"))
        others = [svc.catalog.create_project(f"other-{k}") for k in range(6)]
        race(lambda trial, k: svc.catalog.update_project(others[k].id,
                                                         {"name": f"renamed-{trial}"}))
        bad = [o for o in outcomes if o not in ("ok", "conflict")]
        assert not bad, bad[:3]
        assert outcomes.count("ok") == 12          # one winner per race
    finally:
        svc.close()


def test_a_loopback_server_refuses_requests_for_other_host_names(tmp_path: Path) -> None:
    """DNS rebinding: a web page whose name resolves to 127.0.0.1 reaches a loopback server
    (no auth needed there) with its own name in ``Host``; such requests get 421."""
    from websockets.sync.client import connect

    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path))
    for var in ("TWINGRAPH_DATABASE_URL", "TWINGRAPH_AUTH", "TWINGRAPH_RATE_LIMIT",
                "TWINGRAPH_RATE_LIMIT_STORAGE", "TWINGRAPH_JWT_SECRET"):
        env.pop(var, None)
    with _server(env, tmp_path / "server.log") as port:
        url = f"http://127.0.0.1:{port}/api/v1/projects"
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost"):
            assert httpx.get(url, headers={"host": host}).status_code == 200, host
        for host in (f"attacker.example:{port}", "attacker.example", "10.0.0.5"):
            resp = httpx.get(url, headers={"host": host})
            assert resp.status_code == 421 and "localhost only" in resp.text, host
        try:
            with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5,
                         additional_headers={"Host": "attacker.example"}) as ws:
                ws.recv(timeout=5)
            raise AssertionError("the WebSocket was accepted")
        except AssertionError:
            raise
        except Exception:  # noqa: BLE001 - refused (closed during the handshake)
            pass
