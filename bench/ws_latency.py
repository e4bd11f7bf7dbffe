"""WebSocket event latency: engine state change -> client receipt, with 1,000 tasks running.

The script starts ``twingraph server`` (embedded default, rate limits off) loading this file,
whose pipeline ``ws_fanout`` fans out ``--tasks`` small components (each sleeps ``--sleep``
seconds). A client creates a run (PENDING), subscribes to it on ``/ws``, starts it, and stamps
every ``node:status`` event with its wall-clock receipt time. The events carry no timestamp of
their own, so the state-change time is taken from the metadata store afterwards: the engine
sets a task's ``started_at`` / ``ended_at`` (``time.time()``) in the same step that emits its
``running`` / ``completed`` event (engine/loop.py), and the store keeps them at full precision.
Server and client run on one machine, so the two clocks are the same clock.

    python bench/ws_latency.py                         # 1,000 tasks, 5 ms each
    python bench/ws_latency.py --tasks 1000 --sleep 0.005 --max-parallel 50

Prints p50/p90/p99/max latency for the running and the completed events and how many arrived
within 100 ms (issue 3: events "within 100 ms of the state change").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twingraph import component, pipeline


@component(cache=False)
def ws_tick(i: int, sleep: float = 0.005) -> int:
    time.sleep(sleep)
    return i


@pipeline(name="ws_fanout", max_parallel=50)
def ws_fanout(n: int = 1000, sleep: float = 0.005):
    return [ws_tick(i=i, sleep=sleep) for i in range(n)]


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else float("nan")


async def _measure(base_url: str, ws_url: str, tasks: int, sleep: float,
                   max_parallel: int) -> tuple[str, list[tuple[str, str, float]], float]:
    import httpx
    from websockets.asyncio.client import connect
    received: list[tuple[str, str, float]] = []      # (node_id, status, receipt wall time)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        r = await http.post("/api/v1/runs", json={"pipeline_id": "ws_fanout",
                                                  "params": {"n": tasks, "sleep": sleep},
                                                  "config": {"max_parallel": max_parallel}})
        r.raise_for_status()
        run_id = r.json()["data"]["id"]
        async with connect(ws_url, max_queue=None) as ws:
            await ws.send(json.dumps({"action": "subscribe", "execution_id": run_id}))
            first = json.loads(await ws.recv())
            assert first["event"] == "execution:update", first
            started = time.time()
            # Start without waiting for the answer: the socket is read from now on, so no event
            # sits in the client's buffer while the start request is in flight.
            start = asyncio.ensure_future(http.post(f"/api/v1/runs/{run_id}/start"))
            while True:
                raw = await asyncio.wait_for(ws.recv(), 120)
                now = time.time()
                msg = json.loads(raw)
                data = msg.get("data", {})
                if msg.get("event") == "node:status":
                    received.append((data["node_id"], data["status"], now))
                elif msg.get("event") == "execution:update" and data.get("status") in (
                        "completed", "failed", "cancelled"):
                    break
            wall = time.time() - started
            (await start).raise_for_status()
    return run_id, received, wall


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from api_load import running_server

    from twingraph.stores.metadata import SQLMetadataStore

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--sleep", type=float, default=0.005, help="seconds each task sleeps")
    ap.add_argument("--max-parallel", type=int, default=50)
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tg-ws-bench-") as tmp:
        home = Path(tmp)
        with running_server(home, Path(__file__)) as srv:
            ws_url = srv.base_url.replace("http://", "ws://") + "/ws"
            run_id, received, wall = asyncio.run(_measure(srv.base_url, ws_url, args.tasks,
                                                          args.sleep, args.max_parallel))
            time.sleep(1.5)                      # let the recorder flush the last task rows
            store = SQLMetadataStore(f"sqlite:///{home / 'twingraph.db'}")
            rows = {t.node_id: t for t in store.get_tasks(run_id)}
    figures: dict[str, Any] = {"bench": "ws_latency", "tasks": args.tasks, "sleep_s": args.sleep,
                               "max_parallel": args.max_parallel, "run_wall_s": round(wall, 2),
                               "events": len(received), "loadavg_before": load_before,
                               "loadavg_after": os.getloadavg()}
    for status, attr in (("running", "started_at"), ("completed", "ended_at")):
        lat = sorted((now - getattr(rows[node], attr)) * 1000 for node, st, now in received
                     if st == status and node in rows and getattr(rows[node], attr) is not None)
        figures[status] = {"n": len(lat), "p50_ms": round(_pct(lat, 50), 2),
                           "p90_ms": round(_pct(lat, 90), 2), "p99_ms": round(_pct(lat, 99), 2),
                           "max_ms": round(lat[-1], 2) if lat else None,
                           "within_100ms": round(sum(x <= 100 for x in lat) / len(lat), 4)
                           if lat else None}
    # Does the lag grow during the run (a backlog) or stay flat? p50 of the completed events'
    # latency per quarter of the run, by state-change time.
    done = sorted((rows[node].ended_at, now - rows[node].ended_at) for node, st, now in received
                  if st == "completed" and node in rows and rows[node].ended_at is not None)
    if done:
        t_first, t_last = done[0][0], done[-1][0]
        span = max(t_last - t_first, 1e-9)
        quarters: list[list[float]] = [[], [], [], []]
        for t, lag in done:
            quarters[min(3, int(4 * (t - t_first) / span))].append(lag * 1000)
        figures["completed_p50_ms_by_quarter"] = [round(_pct(sorted(q), 50), 1) for q in quarters]
    print(json.dumps(figures))
    print(f"\n{'event':<10} {'n':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'<=100ms':>8}")
    for status in ("running", "completed"):
        f = figures[status]
        print(f"{status:<10} {f['n']:>6} {f['p50_ms']:>8.2f} {f['p90_ms']:>8.2f} "
              f"{f['p99_ms']:>8.2f} {f['max_ms']:>8.2f} {f['within_100ms']:>8.2%}")
    if "completed_p50_ms_by_quarter" in figures:
        print("completed p50 ms by quarter of the run:", figures["completed_p50_ms_by_quarter"])


if __name__ == "__main__":
    main()
