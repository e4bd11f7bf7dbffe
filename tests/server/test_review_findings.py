"""Review findings on the server (issue 3): each test reproduces a bug that was found by review
and fixed; see the commit that adds it.

Real app, services and stores. One ``monkeypatch`` stands for what cannot be caused on cue:
``threading.Thread`` in ``service.runs`` replaced by a subclass whose ``start`` raises, as
CPython does when the process is out of threads (``can't start new thread``). Another wraps
the real recorder's in-process write with a 3 s sleep first, standing for a slow disk under
another run's backlog (its records are still written), and one wraps the metadata store's
``write`` to fail the batch holding one marked log line, as a full disk would. One wraps the
real catalog's ``claim_start`` to send a cancel just after it wins (a request arriving in
that instant); the claim itself still runs. One test writes a run's rows straight into the
store, as a `twingraph run` in another process that was then killed leaves them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from twingraph.core.states import RunState
from twingraph.server.app import create_app
from twingraph.service import Services, build_services
from twingraph.settings import Settings

RESOURCES = Path(__file__).resolve().parents[1] / "resources"


@pytest.fixture
def app_svc(tmp_path: Path) -> Iterator[Services]:
    svc = build_services(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db"))
    app = create_app(svc, load=[str(RESOURCES / "v1_app.py")])
    try:
        with TestClient(app):
            yield svc
    finally:
        svc.close()


def _slow_pipeline(svc: Services) -> Any:
    return svc.catalog.find_pipeline("slow")


def _cancel_in_background(svc: Services, run_id: str, out: dict[str, Any]) -> threading.Thread:
    def cancel() -> None:
        try:
            out["run"] = svc.runs.cancel(run_id, "review: cancel while starting")
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            out["error"] = exc
    t = threading.Thread(target=cancel)
    t.start()
    return t


def test_cancel_between_claim_and_driver_registration_is_not_refused(app_svc: Services) -> None:
    """A cancel that reads the run RUNNING after ``start``'s compare-and-set but before the
    driver thread is registered was answered 409 "RUNNING in another process" and ignored."""
    svc = app_svc
    run = svc.runs.create(_slow_pipeline(svc), params={"seconds": 5.0})
    out: dict[str, Any] = {}
    original = svc.catalog.claim_start
    threads: list[threading.Thread] = []

    def claim_then_cancel(run_id: str, now: float) -> bool:
        won = original(run_id, now)
        threads.append(_cancel_in_background(svc, run_id, out))
        time.sleep(0.3)                     # the cancel arrives before the driver exists
        return won

    svc.catalog.claim_start = claim_then_cancel  # type: ignore[method-assign]
    svc.runs.start(run.run_id)
    threads[0].join(15)
    assert "error" not in out, repr(out.get("error"))
    final = svc.runs.wait(run.run_id, timeout=15)
    assert final.state is RunState.CANCELLED


def test_cancel_of_a_claimed_scheduled_run_while_it_is_prepared(app_svc: Services) -> None:
    """The schedule firer moves a run to RUNNING (claim_queued_runs) and then calls
    ``start(claimed=True)``; a cancel during its preparation was refused with 409."""
    svc = app_svc
    run = svc.runs.create(_slow_pipeline(svc), params={"seconds": 5.0})
    assert svc.catalog.claim_start(run.run_id, time.time())      # as the firer's claim does
    out: dict[str, Any] = {}
    original = svc.runs._prepare
    threads: list[threading.Thread] = []

    def prepare_slowly(*args: Any, **kwargs: Any) -> Any:
        threads.append(_cancel_in_background(svc, run.run_id, out))
        time.sleep(0.3)
        return original(*args, **kwargs)

    svc.runs._prepare = prepare_slowly  # type: ignore[method-assign]
    svc.runs.start(run.run_id, claimed=True)
    threads[0].join(15)
    assert "error" not in out, repr(out.get("error"))
    final = svc.runs.wait(run.run_id, timeout=15)
    assert final.state is RunState.CANCELLED


def test_run_results_held_in_memory_are_bounded(app_svc: Services) -> None:
    """``RunService`` kept every finished run's ``RunResult`` (its return value, its exception
    and traceback) for the life of the process: memory grew with every run ever driven."""
    svc = app_svc
    svc.runs.max_results = 2
    pipe = svc.catalog.find_pipeline("sum_numbers")
    ids = []
    for n in range(4):
        run = svc.runs.create(pipe, params={"n": n})
        svc.runs.start(run.run_id)
        assert svc.runs.wait(run.run_id, timeout=20).state is RunState.SUCCESS
        ids.append(run.run_id)
    assert len(svc.runs._results) == 2
    assert svc.runs.result(ids[-1]) is not None and svc.runs.result(ids[0]) is None
    assert svc.runs.outputs(ids[-1]) == sum(range(3))


@pytest.fixture
def client(app_svc: Services) -> Iterator[TestClient]:
    app = create_app(app_svc)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _two_nodes(edge: dict[str, Any]) -> dict[str, Any]:
    return {"nodes": [{"id": "make", "component": "numbers"}, {"id": "sum", "component": "total"}],
            "edges": [{"source": "make", "target": "sum", **edge}]}


@pytest.mark.parametrize("edge", [{"targetHandle": []}, {"targetHandle": {"x": 1}},
                                  {"sourceHandle": {"a": 1}}, {"sourceHandle": ["a"]},
                                  {"targetHandle": 5}, {"sourceHandle": 7}])
def test_edge_handles_that_are_not_strings_are_422_and_write_nothing(
        client: TestClient, app_svc: Services, edge: dict[str, Any]) -> None:
    """A list as ``targetHandle`` was a 500 (``unhashable type``) on both faces; a dict or a
    number as a handle was stored and broke the pipeline's runs later."""
    pid = client.post("/api/v1/projects", json={"name": "review"}).json()["data"]["id"]
    r = client.post(f"/api/v1/projects/{pid}/pipelines", json={"name": "g", **_two_nodes(edge)})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"].startswith("definition.edges[0]")
    r = client.post("/api/workflows/wf_review", json={"name": "w", "definition": _two_nodes(edge)})
    assert r.status_code == 422, r.text
    rows, total = app_svc.catalog.list_pipelines(project_id=pid, limit=10)
    assert total == 0
    assert client.get("/api/workflows/wf_review").status_code == 404


def test_selected_output_colliding_with_a_node_id_is_refused_when_stored(
        client: TestClient, app_svc: Services) -> None:
    """An edge ``make -> sum`` with ``sourceHandle: "x"`` compiles to a node ``make.x``; a
    definition that also has a node ``make.x`` was stored (201) and every run of it then
    FAILED at start with "duplicate node ids"."""
    pid = client.post("/api/v1/projects", json={"name": "review"}).json()["data"]["id"]
    definition = {"nodes": [{"id": "make", "component": "numbers"},
                            {"id": "make.x", "component": "numbers"},
                            {"id": "sum", "component": "total"}],
                  "edges": [{"source": "make", "target": "sum", "sourceHandle": "x"}]}
    r = client.post(f"/api/v1/projects/{pid}/pipelines", json={"name": "coll", **definition})
    assert r.status_code == 422, r.text
    assert app_svc.catalog.list_pipelines(project_id=pid, limit=10)[1] == 0


def test_concurrent_creates_of_one_pipeline_name_give_one_pipeline_and_conflicts(
        app_svc: Services) -> None:
    """``create_pipeline`` checked the name in one transaction and then *upserted* in another:
    of concurrent ``POST /api/v1/projects/{id}/pipelines`` with one name, several answered 201
    with the same id, each silently replacing the others' definition as a new version."""
    from twingraph.errors import ConflictError

    svc = app_svc
    project = svc.catalog.create_project("race")
    outcomes: list[Any] = []
    for trial in range(8):
        barrier = threading.Barrier(4)

        def create(k: int, trial: int = trial) -> None:
            barrier.wait()
            try:
                rec = svc.catalog.create_pipeline(
                    project.id, f"p{trial}",
                    {"nodes": [{"id": f"n{k}", "component": "numbers"}], "edges": []})
                outcomes.append((trial, rec.id, rec.current_version))
            except ConflictError:
                outcomes.append("conflict")
        threads = [threading.Thread(target=create, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    created = [o for o in outcomes if o != "conflict"]
    assert len(created) == 8, created                     # one creation per name
    assert all(version == 1 for _t, _id, version in created)
    assert outcomes.count("conflict") == 24


@pytest.mark.parametrize("start", ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00",
                                   "0001-01-01"])
def test_backfill_from_the_first_year_is_422_not_500(tmp_path: Path, start: str) -> None:
    """A backfill ``start`` at the very beginning of the calendar crashed slot enumeration
    (``ValueError: year 0 is out of range``) into a 500; ISO times with offsets could also
    parse to instants outside what ``datetime`` can represent."""
    from twingraph.server.build import wire_schedules

    svc = build_services(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db"))
    wire_schedules(svc, fire=False)
    app = create_app(svc, load=[str(RESOURCES / "v1_app.py")])
    try:
        with TestClient(app, raise_server_exceptions=False) as c:
            pipe = svc.catalog.find_pipeline("sum_numbers")
            sid = c.post("/api/v1/schedules", json={
                "project_id": pipe.project_id, "pipeline_id": pipe.id, "kind": "CRON",
                "expression": "0 0 * * *"}).json()["data"]["id"]
            r = c.post(f"/api/v1/schedules/{sid}/backfill", json={"start": start})
            assert r.status_code == 422, r.text
            assert r.json()["error"]["details"][0]["field"] == "start"
            assert svc.catalog.list_runs(schedule_id=sid)[1] == 0
    finally:
        svc.close()


def test_backfill_on_a_server_that_does_not_fire_schedules_fires_nothing(tmp_path: Path) -> None:
    """``twingraph server --no-schedules`` (``wire_schedules(fire=False)``) must not fire
    schedules, but a backfill request ran the firer's whole ``tick`` in the request thread:
    every due schedule of the database fired (and queued runs started) on that server."""
    from sqlalchemy import update

    from twingraph.server.build import wire_schedules
    from twingraph.stores.metadata.schema import schedules

    svc = build_services(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db"))
    wire_schedules(svc, fire=False)
    app = create_app(svc, load=[str(RESOURCES / "v1_app.py")])
    try:
        with TestClient(app, raise_server_exceptions=False) as c:
            pipe = svc.catalog.find_pipeline("sum_numbers")
            body = {"project_id": pipe.project_id, "pipeline_id": pipe.id, "kind": "INTERVAL",
                    "expression": "1h"}
            due = c.post("/api/v1/schedules", json=body).json()["data"]["id"]
            other = c.post("/api/v1/schedules", json=body).json()["data"]["id"]
            with svc.catalog.store._writing() as conn:         # ``due`` is overdue
                conn.execute(update(schedules).where(schedules.c.id == due)
                             .values(next_run_at=time.time() - 60))
            r = c.post(f"/api/v1/schedules/{other}/backfill", json={"count": 1})
            assert r.status_code == 201, r.text
            assert svc.catalog.list_runs(schedule_id=due)[1] == 0      # nothing fired
            queued, _ = svc.catalog.list_runs(schedule_id=other)
            assert [q.state for q in queued] == [RunState.PENDING]    # stays queued
    finally:
        svc.close()


def test_renaming_a_project_keeps_its_runs(client: TestClient, app_svc: Services) -> None:
    """Runs name their project (``runs.project``); renaming a project left every run under the
    old name: the project's run list and statistics lost them, the runs showed no
    ``project_id``, deleting the project left them behind, and a new project given the old
    name inherited them."""
    pid = client.post("/api/v1/projects", json={"name": "before"}).json()["data"]["id"]
    pipe = client.post(f"/api/v1/projects/{pid}/pipelines", json={
        "name": "g", "nodes": [{"id": "make", "component": "numbers"}]}).json()["data"]["id"]
    run = client.post("/api/v1/runs", json={"pipeline_id": pipe}).json()["data"]
    assert client.put(f"/api/v1/projects/{pid}", json={"name": "after"}).status_code == 200
    listed = client.get(f"/api/v1/runs?project_id={pid}").json()
    assert listed["meta"]["total"] == 1
    assert client.get(f"/api/v1/runs/{run['id']}").json()["data"]["project_id"] == pid
    assert client.get(f"/api/v1/projects/{pid}/statistics").json()["data"]["total_runs"] == 1
    reused = client.post("/api/v1/projects", json={"name": "before"}).json()["data"]["id"]
    assert client.get(f"/api/v1/runs?project_id={reused}").json()["meta"]["total"] == 0


@pytest.mark.parametrize("change", [{"name": None}, {"metadata": None}])
def test_project_update_with_null_required_fields_is_422(client: TestClient,
                                                         change: dict[str, Any]) -> None:
    """``PUT /api/v1/projects/{id}`` with ``"name": null`` was a 500 (NOT NULL constraint) and
    ``"metadata": null`` stored a project whose metadata is not an object."""
    pid = client.post("/api/v1/projects", json={"name": "p", "metadata": {"k": 1}}).json()["data"]["id"]
    r = client.put(f"/api/v1/projects/{pid}", json=change)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == next(iter(change))
    stored = client.get(f"/api/v1/projects/{pid}").json()["data"]
    assert stored["name"] == "p" and stored["metadata"] == {"k": 1}


def test_hot_read_connection_goes_back_with_the_app_shutdown(tmp_path: Path) -> None:
    """The fast path of ``GET /api/v1/runs/{id}`` keeps a dedicated connection
    (``StatusReader``) checked out of the pool; nothing gave it back, so each app held one
    connection past its shutdown (the pool's dispose skips checked-out connections)."""
    svc = build_services(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db"))
    app = create_app(svc, load=[str(RESOURCES / "v1_app.py")])
    pool = svc.catalog.store._engine.pool
    try:
        run = svc.runs.create(svc.catalog.find_pipeline("sum_numbers"), params={"n": 1})
        with TestClient(app) as c:
            assert c.get(f"/api/v1/runs/{run.run_id}").status_code == 200
            assert pool.checkedout() == 1                    # the reader's, while serving
        assert pool.checkedout() == 0
    finally:
        svc.close()


@pytest.mark.parametrize("program", [
    {"nodes": {"a": 5}},
    {"nodes": {"a": ["make_numbers"]}},
    {"nodes": [{"id": "a", "operation": "make_numbers", "parameters": {"n": 2}}],
     "metadata": "x"},
    {"nodes": [{"id": "a", "operation": "make_numbers", "parameters": {"n": 2}}],
     "metadata": [1, 2]},
])
def test_execute_dynamic_malformed_program_is_422(client: TestClient,
                                                  program: dict[str, Any]) -> None:
    """A node mapping whose value is not a mapping was a 500 (``TypeError``); a ``metadata``
    that is not a mapping was accepted (200) and the execution then failed inside the
    scheduler with no run recorded (``run_id: null``)."""
    import json

    r = client.post("/api/v1/execute-dynamic", json={"program": json.dumps(program)})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == "program"


# -- session h9: definitions that could never run, runs left RUNNING --------------------------
def _graph_pipeline(svc: Services, definition: dict[str, Any], name: str = "g") -> Any:
    project = svc.catalog.create_project(f"h9-{name}")
    return svc.catalog.create_pipeline(project.id, name, svc.runs.normalize(definition))


def test_graph_run_of_a_component_with_no_executor_is_refused_at_create(
        app_svc: Services) -> None:
    """``create`` refused a Python pipeline whose component needs a platform with no executor
    but accepted such a graph pipeline: the PENDING run then FAILED at every start."""
    from twingraph import component
    from twingraph.registry import unregister_component
    from twingraph.service.definitions import DefinitionError

    @component(platform="kubernetes")
    def h9_remote(xs: list = []) -> list:  # noqa: B006 - never called
        return xs
    try:
        pipe = _graph_pipeline(app_svc, {"nodes": [{"id": "r", "component": "h9_remote"}]})
        with pytest.raises(DefinitionError, match="no executor for platform 'kubernetes'"):
            app_svc.runs.create(pipe, params={})
        assert app_svc.catalog.list_runs(pipeline_id=pipe.id, limit=10)[1] == 0
    finally:
        unregister_component("h9_remote")


@pytest.mark.parametrize("definition, message", [
    ({"nodes": [{"id": "a", "component": "numbers"}, {"id": "b", "component": "numbers"},
                {"id": "t", "component": "total"}],
      "edges": [{"source": "a", "target": "t", "targetHandle": "values"},
                {"source": "b", "target": "t", "targetHandle": "values"}]},
     "more than one edge into input 'values'"),
    ({"nodes": [{"id": "t", "component": "total", "config": {"values": [1], "nope": 1}}]},
     "unexpected keyword argument 'nope'"),
    ({"nodes": [{"id": "t", "component": "total"}]}, "missing a required argument: 'values'"),
    ({"nodes": [{"id": "a", "component": "numbers"},
                {"id": "t", "component": "total", "config": {"values": [1]}}],
      "edges": [{"source": "a", "target": "t", "targetHandle": "values"}]},
     "'values' is given both by an edge and by config"),
])
def test_graph_nodes_that_cannot_call_their_component_are_refused_when_stored(
        app_svc: Services, definition: dict[str, Any], message: str) -> None:
    """Stored and then failing at that node on every run (two edges into one targetHandle
    even ran, passing only the last edge's value)."""
    from twingraph.service.definitions import DefinitionError
    with pytest.raises(DefinitionError, match=message):
        app_svc.runs.normalize(definition)


def test_node_config_null_next_to_parameters_keeps_the_parameters(app_svc: Services) -> None:
    """``{"config": null, "parameters": {...}}`` dropped the parameters."""
    graph = app_svc.runs.normalize({"nodes": [{"id": "n", "component": "numbers",
                                               "config": None, "parameters": {"n": 4}}]})
    assert graph["nodes"][0]["config"] == {"n": 4}


def _start_without_a_thread(svc: Services, run_id: str, monkeypatch: pytest.MonkeyPatch,
                            before: Any = None) -> None:
    """``svc.runs.start(run_id)`` in a process out of threads: its driver thread's ``start``
    raises, as CPython's does then (after calling ``before``, if given)."""
    import twingraph.service.runs as runs_module

    class NoThread(threading.Thread):
        def start(self) -> None:
            if before is not None:
                before()
            raise RuntimeError("can't start new thread")
    monkeypatch.setattr(runs_module.threading, "Thread", NoThread)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        svc.runs.start(run_id)
    monkeypatch.undo()


def test_a_run_whose_driver_cannot_start_does_not_stay_running(
        app_svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """``start`` moved the run to RUNNING, then failed to start its driver thread: the run
    stayed RUNNING for ever (listed as this process's, so never adopted; cancel refused)."""
    svc = app_svc
    run = svc.runs.create(_slow_pipeline(svc), params={"seconds": 0.1})
    _start_without_a_thread(svc, run.run_id, monkeypatch)
    final = svc.catalog.get_run(run.run_id)
    assert final.state is RunState.FAILED and "can't start new thread" in (final.error or "")
    assert svc.runs.active() == []


def test_a_failed_start_does_not_wait_for_other_runs_records(
        app_svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """``_fail_start`` wrote its log line through the recorder and flushed it: inside the
    REST request that started the run, it waited for every record of every other run queued
    before it (a busy server's backlog). The line is written at once, alone."""
    from twingraph.core.records import LogRecord
    from twingraph.engine import recorder as recorder_module
    svc = app_svc
    other = svc.runs.create(_slow_pipeline(svc), params={"seconds": 0.1})
    run = svc.runs.create(_slow_pipeline(svc), params={"seconds": 0.1})
    real = recorder_module.Recorder._write_here

    def slow(self: Any, records: Any, results: Any) -> None:
        time.sleep(3.0)                   # a slow disk under another run's backlog
        real(self, records, results)
    monkeypatch.setattr(recorder_module.Recorder, "_write_here", slow)
    svc.engine.recorder.add(LogRecord(other.run_id, time.time(), "info", "backlog"))
    time.sleep(0.1)                       # the recorder has taken it: writing, slowly
    t0 = time.monotonic()
    _start_without_a_thread(svc, run.run_id, monkeypatch)
    took = time.monotonic() - t0
    assert took < 2.0, took
    final = svc.catalog.get_run(run.run_id)
    assert final.state is RunState.FAILED
    assert any("can't start new thread" in r.message
               for r in svc.engine.metadata.get_logs(run.run_id))


def test_recorded_defaults_never_make_a_start_fail(app_svc: Services) -> None:
    """``create`` recorded every default: a positional-only one, which the server cannot pass
    by keyword, and one off its annotation (``n: int = 3.0``), which the start's check
    refused. Both runs ended FAILED; ``Pipeline.run`` ran them."""
    from twingraph import component, pipeline

    @component
    def r17_double(x: int) -> int:
        return 2 * x

    @pipeline(name="r17_posonly")
    def r17_posonly(n=3, /):
        return r17_double(x=n)

    @pipeline(name="r17_mismatch")
    def r17_mismatch(n: int = 3.0, k: int = 1):
        return r17_double(x=int(n) + k)

    for pipe, recorded in ((r17_posonly, {}), (r17_mismatch, {"k": 1})):
        rec = app_svc.catalog.get_pipeline(app_svc.runs.register_python(pipe))
        run = app_svc.runs.create(rec, params={})
        assert app_svc.catalog.get_run(run.run_id).params == recorded
        app_svc.runs.start(run.run_id)
        app_svc.runs.wait(run.run_id, 20)
        assert app_svc.catalog.get_run(run.run_id).state is RunState.SUCCESS, pipe.name


def test_a_failed_launch_leaves_another_runs_lost_batch_to_that_run(
        app_svc: Services) -> None:
    """A driver whose launch raised flushed the recorder for every run: it took the error of
    another run's batch that was given up (and swallowed it), so that run ended SUCCESS with
    its records lost. The metadata store's ``write`` is wrapped to fail the batch holding one
    marked log line, as a full disk fails it (the only way to give a batch up on cue)."""
    from twingraph.core.records import LogRecord
    from twingraph.errors import StorageError
    svc = app_svc
    meta = svc.engine.metadata
    a = svc.runs.create(_slow_pipeline(svc), params={"seconds": 1.5})
    svc.runs.start(a.run_id)
    deadline = time.monotonic() + 20
    while not meta.get_tasks(a.run_id):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    real = meta.write

    def write(batch: Any) -> Any:
        if any(isinstance(r, LogRecord) and r.message == "r17-lost" for r in batch):
            raise StorageError("disk full")
        return real(batch)
    meta.write = write
    try:
        svc.engine.recorder.add(LogRecord(a.run_id, time.time(), "info", "r17-lost"))
        time.sleep(0.5)                        # the batch is tried and given up
        b = svc.runs.create(_slow_pipeline(svc), params={"seconds": 0.1})
        assert svc.catalog.claim_start(b.run_id, time.time())

        def launch() -> Any:
            raise RuntimeError("launch failed")
        svc.runs._drive(b.run_id, launch)      # what b's driver thread runs
        assert svc.catalog.get_run(b.run_id).state is RunState.FAILED
        svc.runs.wait(a.run_id, 20)
    finally:
        meta.write = real
    final = svc.catalog.get_run(a.run_id)
    assert final.state is RunState.FAILED and "disk full" in (final.error or "")


def test_a_failed_start_someone_else_ended_first_says_so_once(
        app_svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """``_fail_start`` ended a claimed run, then read the run back to see whether it was the
    one that ended it: a run another actor had failed in between read FAILED all the same, and
    a second ``run:status`` event (and log line) followed that actor's own."""
    svc = app_svc
    run = svc.runs.create(_slow_pipeline(svc), params={"seconds": 0.1})
    events: list[dict[str, Any]] = []
    svc.engine.subscribe(events.append)
    # Another actor (an operator's cancel, adoption) ends the run first.
    _start_without_a_thread(svc, run.run_id, monkeypatch, before=lambda: svc.catalog.finish_running(
        run.run_id, RunState.FAILED, "ended by another actor", svc.engine.clock.now()))
    final = svc.catalog.get_run(run.run_id)
    assert final.state is RunState.FAILED and final.error == "ended by another actor"
    assert [e for e in events if e.get("run_id") == run.run_id
            and e.get("event") == "run:status" and e.get("status") == "FAILED"] == []


def test_a_graph_run_whose_components_are_not_loaded_here_is_left_for_another_adopter(
        app_svc: Services) -> None:
    """``can_drive`` said yes to every graph pipeline: a server without its components claimed
    a stale run and FAILED it ("could not be adopted") instead of leaving it to one that has
    them."""
    from twingraph.registry import register_component, unregister_component
    from twingraph.service.adoption import Adopter

    def h9_gone(x: int = 1) -> int:
        return x
    register_component("h9_gone", h9_gone)
    try:
        pipe = _graph_pipeline(app_svc, {"nodes": [{"id": "g", "component": "h9_gone"}]})
        run = app_svc.runs.create(pipe, params={})
    finally:
        unregister_component("h9_gone")
    assert app_svc.catalog.claim_start(run.run_id, time.time() - 3600)   # its driver died
    assert not app_svc.runs.can_drive(app_svc.catalog.get_run(run.run_id))
    assert Adopter(app_svc.runs, stale_after=60).adopt_once() == []
    assert app_svc.catalog.get_run(run.run_id).state is RunState.RUNNING


def test_two_output_selectors_that_would_share_a_node_id_are_refused() -> None:
    """Output ``c`` of node ``a.b`` and output ``b.c`` of node ``a`` both need the selector
    node ``a.b.c``: one would take the other's place and a consumer would read the wrong
    value."""
    from twingraph.service.definitions import DefinitionError, normalize_graph
    nodes = [{"id": "a", "component": "op"}, {"id": "a.b", "component": "op"},
             {"id": "x", "component": "op"}, {"id": "y", "component": "op"}]
    graph = {"nodes": nodes, "edges": [
        {"source": "a", "target": "x", "sourceHandle": "b.c", "targetHandle": "v"},
        {"source": "a.b", "target": "y", "sourceHandle": "c", "targetHandle": "v"}]}
    with pytest.raises(DefinitionError, match="a.b.c") as e:
        normalize_graph(graph, lambda name: True)
    assert e.value.details[0]["field"] == "definition.edges[1].sourceHandle"
    # the same output read twice is one selector, and fine
    same = {"nodes": nodes, "edges": [
        {"source": "a", "target": "x", "sourceHandle": "b.c", "targetHandle": "v"},
        {"source": "a", "target": "y", "sourceHandle": "b.c", "targetHandle": "v"}]}
    assert len(normalize_graph(same, lambda name: True)["edges"]) == 2


def test_a_run_whose_driver_died_elsewhere_can_be_cancelled_here(app_svc: Services) -> None:
    """A run a killed `twingraph run` left RUNNING on the shared database: cancelling it
    through the service said "RUNNING in another process; it cannot be cancelled from here",
    for ever. Its driver silent past the live window, it is ended here (claimed, fenced)."""
    from twingraph.core.records import RunRecord, TaskRecord
    from twingraph.core.states import TaskState
    from twingraph.errors import ConflictError

    svc = app_svc
    md = svc.engine.metadata
    old = time.time() - 120
    md.write([RunRecord("run_killed_cli", "cli_pipe", RunState.RUNNING, created_at=old,
                        started_at=old, heartbeat_at=old, source={"kind": "python",
                                                                  "file": "gone.py"}),
              TaskRecord("run_killed_cli", "a-0", "a", TaskState.SUCCESS, started_at=old,
                         ended_at=old),
              TaskRecord("run_killed_cli", "b-0", "b", TaskState.RUNNING, started_at=old)])
    row = svc.runs.cancel("run_killed_cli", "operator: its driver was killed")
    assert row.state is RunState.CANCELLED
    tasks = {t.node_id: t.state for t in md.get_tasks("run_killed_cli")}
    assert tasks == {"a-0": TaskState.SUCCESS, "b-0": TaskState.CANCELLED}
    # a live driver elsewhere (fresh heartbeat) is still refused at once
    now = time.time()
    md.write([RunRecord("run_live_cli", "cli_pipe", RunState.RUNNING, created_at=now,
                        started_at=now, heartbeat_at=now, source={"kind": "python"})])
    with pytest.raises(ConflictError, match="RUNNING in another process"):
        svc.runs.cancel("run_live_cli")
