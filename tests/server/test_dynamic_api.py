"""execute-dynamic, execution progress and cancel, in-process on the server's one scheduler."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from twingraph.service import Services

EXAMPLE = (Path(__file__).resolve().parents[1] / "resources" / "dag_example.yaml").read_text()
PROGRESS_FIELDS = {"dag_id", "total_nodes", "completed_nodes", "failed_nodes", "running_nodes",
                   "pending_nodes", "progress_percentage", "estimated_completion"}


def _sleepy(dag_id: str, seconds: list[float]) -> str:
    return json.dumps({"dag_id": dag_id, "nodes": [
        {"id": f"s{i}", "operation": "sleepy", "parameters": {"seconds": s}}
        for i, s in enumerate(seconds)]})


def _runs(svc: Services) -> int:
    return svc.catalog.list_runs(limit=1)[1]


def test_execute_synchronously(client: TestClient, svc: Services) -> None:
    r = client.post("/api/v1/execute-dynamic", json={"program": EXAMPLE})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["execution_id"] == "example" and body["status"] == "completed"
    result = body["result"]
    assert result["results"] == {"numbers": [0, 1, 2, 3, 4, 5],
                                 "squares": [0, 1, 4, 9, 16, 25], "total": 71}
    assert set(result["progress"]) == PROGRESS_FIELDS
    assert result["progress"]["completed_nodes"] == 3 and result["progress"]["progress_percentage"] == 100.0
    # The same execution is a run on every face.
    run = client.get(f"/api/executions/{body['run_id']}").json()
    assert run["status"] == "completed" and run["workflow_name"] == "example"
    assert run["outputs"] == {"total": 71}
    progress = client.get("/api/v1/execution/example/progress").json()
    assert PROGRESS_FIELDS <= set(progress) and progress["status"] == "completed"
    # JSON programs work as well as YAML.
    r = client.post("/api/v1/execute-dynamic", json={"program": json.dumps({
        "dag_id": "as-json", "nodes": [{"id": "n", "operation": "make_numbers",
                                        "parameters": {"n": 3}}]})})
    assert r.json()["result"]["results"] == {"n": [0, 1, 2]}


def test_async_progress_and_cancel(client: TestClient, svc: Services) -> None:
    r = client.post("/api/v1/execute-dynamic", json={
        "program": _sleepy("slow", [10.0, 10.01, 10.02]), "async_execution": True,
        "max_concurrent_nodes": 2, "storage_backend": "filesystem",
        "storage_path": "/tmp/ignored"})
    assert r.status_code == 200, r.text
    assert r.json()["execution_id"] == "slow" and r.json()["status"] == "submitted"   # as the document
    assert r.json()["result"] is None
    run_id = r.json()["run_id"]
    # The shared scheduler holds it (not one made for the request).
    assert "slow" in svc.scheduler.active_executions
    deadline = time.monotonic() + 10
    while True:
        p = client.get("/api/v1/execution/slow/progress").json()
        assert PROGRESS_FIELDS <= set(p)
        if p["running_nodes"] == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (p["total_nodes"], p["completed_nodes"], p["running_nodes"], p["pending_nodes"]) == (3, 0, 2, 1)
    assert p["status"] == "running" and p["progress_percentage"] == 0.0
    _conflict = client.post("/api/v1/execute-dynamic", json={
        "program": _sleepy("slow", [0.2]), "async_execution": True})
    assert _conflict.status_code == 409, _conflict.text
    t0 = time.monotonic()
    r = client.delete("/api/v1/execution/slow")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert time.monotonic() - t0 < 8
    p = client.get("/api/v1/execution/slow/progress").json()
    assert p["status"] == "cancelled" and p["completed_nodes"] == 0
    assert svc.catalog.get_run(run_id).state.value == "CANCELLED"
    assert client.delete("/api/v1/execution/slow").status_code == 409


def test_max_concurrent_nodes_is_per_request(client: TestClient, svc: Services) -> None:
    r = client.post("/api/v1/execute-dynamic", json={
        "program": _sleepy("serial", [0.1, 0.11, 0.12]), "max_concurrent_nodes": 1})
    assert r.json()["status"] == "completed", r.text
    tasks = sorted(svc.catalog.store.get_tasks(r.json()["run_id"]),
                   key=lambda t: t.started_at or 0)
    for a, b in zip(tasks, tasks[1:]):
        assert a.ended_at is not None and b.started_at is not None
        assert b.started_at >= a.ended_at                  # never two at once
    assert svc.scheduler.config.max_concurrent_nodes == 4   # the shared default is untouched


BAD_REQUESTS: list[tuple[str, Any, str]] = [
    ("missing program", {}, "program"),
    ("program not a string", {"program": {"nodes": []}}, "program"),
    ("empty program", {"program": ""}, "program"),
    ("not YAML", {"program": "nodes: [unclosed"}, "program"),
    ("no nodes", {"program": "dag_id: x\nnodes: []\n"}, "program"),
    ("unknown operation", {"program": "nodes:\n  - id: a\n    operation: rm_rf\n"}, "program"),
    ("dangling argument", {"program": "nodes:\n  - id: a\n    operation: square_all\n"
                                      "    arguments: [ghost]\n"}, "program"),
    ("cycle", {"program": "nodes:\n  - id: a\n    operation: square_all\n    arguments: [b]\n"
                          "  - id: b\n    operation: square_all\n    arguments: [a]\n"}, "program"),
    ("unknown node field", {"program": "nodes:\n  - id: a\n    operation: make_numbers\n"
                                       "    code: print(1)\n"}, "program"),
    ("YAML aliases", {"program": "dag_id: x\nbase: &b {n: 1}\nnodes:\n  - id: a\n"
                                 "    operation: make_numbers\n    parameters: *b\n"}, "program"),
    ("max_concurrent_nodes zero", {"program": EXAMPLE, "max_concurrent_nodes": 0},
     "max_concurrent_nodes"),
    ("max_concurrent_nodes a string", {"program": EXAMPLE, "max_concurrent_nodes": "4"},
     "max_concurrent_nodes"),
    ("async_execution not a bool", {"program": EXAMPLE, "async_execution": "yes"},
     "async_execution"),
    ("unknown storage backend", {"program": EXAMPLE, "storage_backend": "s3://bucket"},
     "storage_backend"),
]


def test_bad_requests_run_nothing(client: TestClient, svc: Services) -> None:
    before = _runs(svc)
    for case, body, field in BAD_REQUESTS:
        r = client.post("/api/v1/execute-dynamic", json=body)
        assert r.status_code == 422, (case, r.text)
        err = r.json()["error"]
        assert err["code"] == "VALIDATION_ERROR" and field in [d["field"] for d in err["details"]], (case, err)
    cycle = client.post("/api/v1/execute-dynamic", json=dict(next(b for c, b, _ in BAD_REQUESTS if c == "cycle"))).json()["error"]
    assert cycle["details"][0]["nodes"] == ["a", "b"]
    dangling = client.post("/api/v1/execute-dynamic", json=dict(next(
        b for c, b, _ in BAD_REQUESTS if c == "dangling argument"))).json()["error"]
    assert dangling["details"][0]["nodes"] == ["a"]           # the node's id, as for a cycle
    assert dangling["details"][0]["why"] == {"a": "needs ghost"}
    assert _runs(svc) == before
    assert not svc.scheduler.active_executions and not svc.scheduler.execution_states


def test_unknown_ids(client: TestClient) -> None:
    for r in (client.get("/api/v1/execution/nope/progress"), client.delete("/api/v1/execution/nope")):
        assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"


def test_a_failing_node_fails_the_execution(client: TestClient) -> None:
    program = ("dag_id: partly\nnodes:\n  - id: boom\n    operation: explode\n"
               "  - id: fine\n    operation: make_numbers\n    parameters: {n: 2}\n")
    body = client.post("/api/v1/execute-dynamic", json={"program": program}).json()
    assert body["status"] == "failed"
    assert body["result"]["results"] == {"fine": [0, 1]}          # independent work still ran
    assert "exploded" in body["result"]["failures"]["boom"]
    p = client.get("/api/v1/execution/partly/progress").json()
    assert (p["completed_nodes"], p["failed_nodes"], p["status"]) == (1, 1, "failed")


def test_synchronous_requests_hold_no_worker_thread(svc: Services) -> None:
    """Ten synchronous executions waiting at once (more than the event loop's default thread
    pool) must not stall other requests: the wait is an event, not a thread blocked in join."""
    import asyncio

    import httpx

    from twingraph.server.app import create_app
    app = create_app(svc, lifespan_hooks=False)

    async def main() -> tuple[float, list[int]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://test") as c:
            waits = [asyncio.create_task(c.post("/api/v1/execute-dynamic", json={
                "program": _sleepy(f"wait-{i}", [1.5 + i / 1000])})) for i in range(10)]
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            r = await c.get("/api/workflows")
            took = time.monotonic() - t0
            assert r.status_code == 200
            assert not any(w.done() for w in waits)
            return took, [(await w).status_code for w in waits]
    took, codes = asyncio.run(main())
    assert codes == [200] * 10
    assert took < 1.0, f"a plain GET waited {took:.2f}s behind synchronous executions"
