"""API latency under load: GET of a run's status at a fixed rate against a real server.

For each backend (the embedded default, SQLite; and PostgreSQL) the script starts
``twingraph server`` on 127.0.0.1 with rate limits off, loading this file (its tiny pipeline),
creates a run over REST, starts it and waits for it to finish. Then a load generator in a
SEPARATE process (this file with ``--generate``) sends ``GET /api/v1/runs/{id}`` at a fixed
rate (default 500 requests/s for 30 s) and prints p50/p90/p99/max latency and the achieved rate.

The generator is open-loop: request *i* is due at ``t0 + i/rate`` whatever happened before, and
its latency is measured from that due time (so a stalled server is charged for the requests that
queue behind it — no coordinated omission). It speaks HTTP/1.1 keep-alive over asyncio streams
on a pool of connections that grows when every connection is busy; that is much lighter than an
HTTP client library, so the generator itself stays a small share of the CPU. (Debian's ``wrk``
is closed-loop and cannot hold a fixed rate; ``wrk2`` is not packaged, hence this generator.)

    python bench/api_load.py                          # both backends, 500 req/s, 30 s
    python bench/api_load.py --duration 10 --backends sqlite
    python bench/api_load.py --json                   # JSON lines only

Target (issue 3): p99 <= 10 ms at 500 req/s on the embedded default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twingraph import component, pipeline

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("TWINGRAPH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


# -- what the server loads (``--load bench/api_load.py``) --------------------------------------
@component
def bench_step(i: int) -> int:
    return i * 2


@pipeline(name="bench_status")
def bench_status(n: int = 3):
    return [bench_step(i=i) for i in range(n)]


# -- the server --------------------------------------------------------------------------------
@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(home: Path, load: Path, database_url: str | None = None,
                   extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    """``twingraph server`` on a free loopback port, rate limits off, stopped on exit."""
    import httpx
    env = dict(os.environ, TWINGRAPH_HOME=str(home), TWINGRAPH_RATE_LIMIT="off",
               TWINGRAPH_RATE_LIMIT_BULK="off", TWINGRAPH_RATE_LIMIT_WS="off",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               **(extra_env or {}))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    if database_url:
        env["TWINGRAPH_DATABASE_URL"] = database_url
    port = _free_port()
    log = home / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "twingraph", "server", "--host", "127.0.0.1",
                                 "--port", str(port), "--load", str(load), "--log-level", "warning"],
                                cwd=str(home), env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    srv = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + log.read_text(errors="replace")[-3000:])
            try:
                if httpx.get(srv.base_url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield srv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def fresh_postgres() -> Iterator[str]:
    import psycopg
    name = f"twingraph_bench_{secrets.token_hex(5)}"
    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) \
                + f"/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def finished_run(base_url: str) -> str:
    """Create, start and wait for one run of ``bench_status``; returns its id."""
    import httpx
    with httpx.Client(base_url=base_url, timeout=30) as http:
        run = http.post("/api/v1/runs", json={"pipeline_id": "bench_status", "params": {"n": 3}})
        run.raise_for_status()
        run_id = run.json()["data"]["id"]
        http.post(f"/api/v1/runs/{run_id}/start").raise_for_status()
        deadline = time.monotonic() + 60
        while http.get(f"/api/v1/runs/{run_id}").json()["data"]["state"] != "SUCCESS":
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id} did not finish")
            time.sleep(0.05)
    return str(run_id)


# -- the load generator (runs in its own process) -------------------------------------------
class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer


async def _request(conn: _Conn, raw: bytes) -> int:
    conn.writer.write(raw)
    head = await conn.reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await conn.reader.readexactly(length)
    return status


async def _generate(host: str, port: int, path: str, rate: float, duration: float,
                    warmup: float, max_connections: int) -> dict[str, Any]:
    raw = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n"
           "Connection: keep-alive\r\n\r\n").encode()
    idle: asyncio.Queue[_Conn] = asyncio.Queue()
    opened = 0
    latencies: list[float] = []
    errors: dict[str, int] = {}
    pending: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()

    async def one(due: float, record: bool) -> None:
        nonlocal opened
        conn: _Conn | None = None
        try:
            if idle.empty() and opened < max_connections:
                opened += 1
                conn = _Conn(*await asyncio.open_connection(host, port))
            else:
                conn = await idle.get()     # every connection busy: queue (latency counts)
            status = await _request(conn, raw)
            done = loop.time()
            idle.put_nowait(conn)
            if record:
                if status == 200:
                    latencies.append(done - due)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            opened -= 1                     # that connection is gone; a later request reopens
            if record:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

    total = int(rate * (warmup + duration))
    n_warm = int(rate * warmup)
    cpu_start = time.process_time()
    t0 = loop.time() + 0.05
    for i in range(total):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(due, i >= n_warm))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending, timeout=30)
    elapsed = loop.time() - (t0 + warmup)
    generator_cpu = (time.process_time() - cpu_start) / max(1e-9, loop.time() - t0)
    while not idle.empty():
        idle.get_nowait().writer.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000 \
            if latencies else float("nan")
    return {"requests": total - n_warm, "ok": len(latencies), "errors": errors,
            "unanswered": total - n_warm - len(latencies) - sum(errors.values()),
            "generator_cpu_share": round(generator_cpu, 3),
            "achieved_rps": round(len(latencies) / elapsed, 1), "connections": opened,
            "p50_ms": round(pct(50), 2), "p90_ms": round(pct(90), 2),
            "p99_ms": round(pct(99), 2), "max_ms": round(latencies[-1] * 1000, 2) if latencies else None}


def run_generator(base_url: str, path: str, rate: float, duration: float,
                  warmup: float, connections: int = 32) -> dict[str, Any]:
    """Start the generator as a separate process and return its figures."""
    out = subprocess.run([sys.executable, __file__, "--generate", base_url + path,
                          "--rate", str(rate), "--duration", str(duration),
                          "--warmup", str(warmup), "--connections", str(connections)],
                         capture_output=True, text=True, timeout=duration + warmup + 120)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"tg-bench-{backend}-") as tmp:
        with (fresh_postgres() if backend == "postgres" else _nothing()) as url:
            with running_server(Path(tmp), Path(__file__), url) as srv:
                run_id = finished_run(srv.base_url)
                load_before = os.getloadavg()
                cpu0, t0 = cpu_seconds(srv.process.pid), time.monotonic()
                res = run_generator(srv.base_url, f"/api/v1/runs/{run_id}", args.rate,
                                    args.duration, args.warmup, args.connections)
                cpu, wall = cpu_seconds(srv.process.pid) - cpu0, time.monotonic() - t0
                sent = args.rate * (args.duration + args.warmup)
                res["server_cpu_ms_per_request"] = round(1000 * cpu / max(1.0, sent), 3)
                res["server_cpu_share"] = round(cpu / wall, 2)   # 1.0 = one core all the time
    return {"bench": "api_load", "backend": backend, "route": "GET /api/v1/runs/{id}",
            "target_rps": args.rate, "duration_s": args.duration, **res,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=500.0, help="requests per second")
    ap.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    ap.add_argument("--connections", type=int, default=32,
                    help="keep-alive connections at most (requests queue for one when all are busy)")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--json", action="store_true", help="print JSON lines only")
    ap.add_argument("--generate", metavar="URL", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        from urllib.parse import urlsplit
        u = urlsplit(args.generate)
        res = asyncio.run(_generate(u.hostname or "127.0.0.1", u.port or 80, u.path, args.rate,
                                    args.duration, args.warmup, args.connections))
        print(json.dumps(res))
        return
    rows = []
    for backend in args.backends.split(","):
        row = bench_backend(backend.strip(), args)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not args.json:
        print(f"\n{'backend':<10} {'target/s':>9} {'achieved/s':>11} {'p50 ms':>8} {'p90 ms':>8} "
              f"{'p99 ms':>8} {'max ms':>8} {'errors':>7} {'srv cpu ms/req':>15}")
        for r in rows:
            print(f"{r['backend']:<10} {r['target_rps']:>9.0f} {r['achieved_rps']:>11.1f} "
                  f"{r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f} "
                  f"{sum(r['errors'].values()):>7} {r['server_cpu_ms_per_request']:>15.3f}"
                  f"   load {r['loadavg_before'][0]:.1f}")


if __name__ == "__main__":
    main()
