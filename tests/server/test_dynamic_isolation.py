"""Nodes sent by clients run isolated from the server (decision 0076).

A real ``twingraph server`` on 127.0.0.1 (a subprocess, as tests/e2e starts it) loads
``isolation_ops.py`` with ``--load`` and runs with a 64 MiB memory limit and a 3 s time limit
per node: a request whose parameters make an operation allocate far beyond the limit, or run
far beyond the time, fails that node with a clear error while the server keeps answering, its
own memory stays where it was, and later executions succeed. Graph pipelines run by the server
share the scheduler; they are checked on the service layer with real SQLite stores.

The memory-hungry parameters are bounded (768 MiB, 20 million items) so that a build where
isolation is broken costs the machine under 2 GiB instead of everything it has.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Server, start_server, stop_server
from twingraph.core.states import RunState
from twingraph.service import Services, build_services
from twingraph.settings import Settings

HERE = Path(__file__).resolve().parent
OPS = HERE / "isolation_ops.py"
RESOURCES = HERE.parent / "resources"
EXAMPLE = (RESOURCES / "dag_example.yaml").read_text()
EXAMPLE_RESULTS = {"numbers": [0, 1, 2, 3, 4, 5], "squares": [0, 1, 4, 9, 16, 25], "total": 71}
LIMIT_MIB = 64
TIME_LIMIT = 3
LIMITS = {"TWINGRAPH_NODE_MEMORY_LIMIT": f"{LIMIT_MIB}MiB",
          "TWINGRAPH_NODE_TIMEOUT": str(TIME_LIMIT), "TWINGRAPH_NODE_WORKERS": "3"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("isolated"), LIMITS, load=OPS,
                       extra_args=("--load", str(RESOURCES / "ops.py")))
    try:
        yield srv
    finally:
        stop_server(srv)


def _execute(srv: Server, program: dict[str, Any] | str, timeout: float = 60) -> dict[str, Any]:
    text = program if isinstance(program, str) else json.dumps(program)
    r = httpx.post(srv.base_url + "/api/v1/execute-dynamic", json={"program": text},
                   timeout=timeout)
    assert r.status_code == 200, r.text
    return r.json()


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_node_past_its_memory_limit_fails_alone_and_the_server_goes_on(server: Server) -> None:
    hungry = {"dag_id": "hungry", "nodes": [
        {"id": "hog", "operation": "hog", "parameters": {"mib": 768}},
        {"id": "items", "operation": "count_to", "parameters": {"n": 20_000_000}},
        {"id": "after_hog", "operation": "double_all", "arguments": ["hog"]},
        {"id": "fine", "operation": "make_numbers", "parameters": {"n": 3}}]}
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_execute, server, hungry)
        # The server answers other requests meanwhile, and runs other executions.
        while not pending.done():
            assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200
            time.sleep(0.05)
        body = pending.result()
    result = body["result"]
    assert body["status"] == "failed"
    for node in ("hog", "items"):
        assert f"node {node!r} exceeded its memory limit of {LIMIT_MIB} MiB" \
            in result["failures"][node], result["failures"]
    assert "MemoryLimitExceeded" in result["failures"]["hog"]
    # error_handler 'continue': the other branch ran, the dependent of the failure did not.
    assert result["results"] == {"fine": [0, 1, 2]}
    assert result["progress"]["failed_nodes"] == 3 and result["progress"]["completed_nodes"] == 1
    # The allocations happened elsewhere: the server process never held them.
    assert server.process.poll() is None
    assert _peak_rss_mib(server.process.pid) < 400, _peak_rss_mib(server.process.pid)
    # A later execution succeeds (the workers that ran out were replaced).
    after = _execute(server, EXAMPLE)
    assert after["status"] == "completed" and after["result"]["results"] == EXAMPLE_RESULTS
    again = _execute(server, {"dag_id": "small", "nodes": [
        {"id": "h", "operation": "hog", "parameters": {"mib": 8}}]})
    assert again["status"] == "completed" and again["result"]["results"] == {"h": 8}


def test_a_runaway_node_is_killed_at_its_time_limit(server: Server) -> None:
    program = {"dag_id": "runaway", "nodes": [
        {"id": "spin", "operation": "spin", "parameters": {"seconds": 120}},
        {"id": "fine", "operation": "make_numbers", "parameters": {"n": 2}}]}
    t0 = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_execute, server, program)
        time.sleep(0.5)
        # Meanwhile another client's execution runs to its end.
        other = _execute(server, {"dag_id": "meanwhile", "nodes": [
            {"id": "n", "operation": "make_numbers", "parameters": {"n": 4}}]})
        assert not pending.done()
        assert other["status"] == "completed" and other["result"]["results"] == {"n": [0, 1, 2, 3]}
        body = pending.result()
    took = time.monotonic() - t0
    assert body["status"] == "failed"
    assert body["result"]["failures"]["spin"] == \
        f"TaskTimeout: task 'spin' timed out after {TIME_LIMIT}s and was killed"
    assert body["result"]["results"] == {"fine": [0, 1]}
    assert took < TIME_LIMIT + 15                     # not retried, not left to run its 120 s
    assert server.process.poll() is None


def test_operations_from_load_files_give_the_same_results_in_workers(server: Server) -> None:
    program = {"dag_id": "same", "nodes": [
        {"id": "nums", "operation": "make_numbers", "parameters": {"n": 4}},     # async def
        {"id": "doubled", "operation": "double_all", "arguments": ["nums"],
         "parameters": {"extra": 7}},
        {"id": "scaled", "operation": "iso_scale", "arguments": {"xs": "nums"}},   # @component
        {"id": "kept", "operation": "iso_keep", "arguments": {"data": "scaled"},    # class
         "parameters": {"above": 4}},
        {"id": "later", "operation": "later", "arguments": ["nums", "kept"],
         "parameters": {"v": "x"}},
        {"id": "pid", "operation": "where"}]}
    body = _execute(server, program)
    assert body["status"] == "completed", body
    results = body["result"]["results"]
    assert results["doubled"] == [0, 2, 4, 6, 7]
    assert results["scaled"] == [0, 3, 6, 9]
    assert results["kept"] == {"kept": [6, 9]}
    assert results["later"] == {"v": "x", "inputs": ["kept", "nums"]}
    assert results["pid"] != server.process.pid        # it ran in a worker process


# -- the service layer: graph pipelines share the isolated scheduler ---------------------------
@pytest.fixture
def isolated(tmp_path: Path) -> Iterator[Services]:
    from twingraph.cli.loading import load_module
    load_module(str(OPS))
    load_module(str(RESOURCES / "ops.py"))
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db",
                        node_memory_limit=LIMIT_MIB * 2**20, node_timeout=TIME_LIMIT)
    svc = build_services(settings)
    try:
        yield svc
    finally:
        svc.close()


def _graph_run(svc: Services, name: str, nodes: list[dict[str, Any]],
               params: dict[str, Any] | None = None) -> Any:
    project = svc.catalog.create_project(f"iso-{name}")
    pipe = svc.catalog.create_pipeline(project.id, name, svc.runs.normalize({"nodes": nodes}))
    run = svc.runs.create(pipe, params=params or {}, config={"error_handler": "continue"})
    svc.runs.start(run.run_id)
    deadline = time.monotonic() + 60
    while not svc.catalog.get_run(run.run_id).state.terminal:
        assert time.monotonic() < deadline, "graph run did not end"
        time.sleep(0.05)
    return svc.catalog.get_run(run.run_id)


def test_graph_pipelines_run_by_the_server_are_isolated_too(isolated: Services) -> None:
    run = _graph_run(isolated, "hungry", [
        {"id": "hog", "component": "hog", "config": {"mib": "${params.mib}"}},
        {"id": "pid", "component": "where", "config": {}}], params={"mib": 768})
    assert run.state is RunState.FAILED
    tasks = {t.node_id: t for t in isolated.catalog.store.get_tasks(run.run_id)}
    assert f"node 'hog' exceeded its memory limit of {LIMIT_MIB} MiB" in (tasks["hog"].error or "")
    assert tasks["hog"].attempts == 1                  # not retried: it would fail again
    value = isolated.engine.load_value(tasks["pid"].result_key)
    assert value != os.getpid()
    attempts = isolated.catalog.store.get_attempts(run.run_id)
    assert {a.executor for a in attempts} == {"local:process"}, attempts
    ok = _graph_run(isolated, "small", [{"id": "hog", "component": "hog",
                                         "config": {"mib": 4}}])
    assert ok.state is RunState.SUCCESS


def test_a_component_that_ran_in_a_pipeline_still_runs_isolated(isolated: Services) -> None:
    """A ``@component`` called in a Python pipeline keeps a reference to the engine that ran
    it (locks, thread-locals): only its function goes to the worker, so it still runs there."""
    import isolation_ops

    from twingraph.engine.dynamic import DAGDefinition, NodeDefinition
    first = isolation_ops.iso_pipe.run(engine=isolated.engine, n=2)
    assert first.state is RunState.SUCCESS, first.error
    res = isolated.scheduler.run(DAGDefinition("after-pipeline", [
        NodeDefinition("nums", "make_numbers", [], {"n": 3}),
        NodeDefinition("scaled", "iso_scale", {"xs": "nums"}, {"factor": 5})]))
    assert res.state is RunState.SUCCESS, res.failures
    tasks = {t.node_id: t for t in isolated.catalog.store.get_tasks(res.run_id)}
    assert isolated.engine.load_value(tasks["scaled"].result_key) == [0, 5, 10]


def test_isolation_off_runs_nodes_in_the_server_process(tmp_path: Path) -> None:
    """``TWINGRAPH_NODE_ISOLATION=off``: as before, and as embedded use always does."""
    from twingraph.cli.loading import load_module
    from twingraph.engine.dynamic import DAGDefinition, NodeDefinition
    load_module(str(OPS))
    svc = build_services(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db",
                                  node_isolation="off"))
    try:
        res = svc.scheduler.run(DAGDefinition("here", [NodeDefinition("p", "where", [], {})]))
        assert res.state is RunState.SUCCESS
        (task,) = svc.catalog.store.get_tasks(res.run_id)
        assert svc.engine.load_value(task.result_key) == os.getpid()
    finally:
        svc.close()
