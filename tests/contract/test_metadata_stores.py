"""Contract of ``MetadataStore`` (twingraph.ports), run over every implementation.

The SQL store is tested on a real SQLite file and on the machine's real PostgreSQL; the memory
fake must pass the very same tests. Batches are all-or-nothing: a record that refers to a run or
task that does not exist fails the whole batch with ``NotFoundError``, a value JSON cannot hold
with ``ValidationError`` (both ``TwinGraphError``), and nothing of the batch remains.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from twingraph.core.records import (
    AttemptRecord,
    EdgeRecord,
    LogRecord,
    RunHeartbeat,
    RunRecord,
    RunUpdate,
    TaskRecord,
    TaskUpdate,
)
from twingraph.core.states import RunState, TaskState
from twingraph.errors import (
    ConflictError,
    ConfigurationError,
    NotFoundError,
    StorageError,
    TwinGraphError,
    ValidationError,
)
from twingraph.ports import MetadataStore
from twingraph.stores.metadata import (
    MemoryMetadataStore,
    SQLMetadataStore,
    current,
    default_database_url,
    head,
    resolve_database_url,
    upgrade,
)
from twingraph.stores.metadata import _bulk, _write
from twingraph.stores.metadata._engine import make_engine
from twingraph.stores.metadata.schema import metadata
from twingraph.stores.metadata.url import normalize_url

# Whoever adds a MetadataStore backend adds it here (and to ``_open`` below); every test in
# this module then runs against it.
IMPLEMENTATIONS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgres),
    "memory",
]
SQL_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]

TABLES = ("lineage_edges", "logs", "task_attempts", "tasks", "runs", "pipeline_versions",
          "pipelines", "projects")


def _clock() -> Callable[[], float]:
    counter = itertools.count(1000)
    return lambda: float(next(counter))


@pytest.fixture(scope="session")
def postgres_metadata_url(postgres_url: str) -> str:
    """The session's PostgreSQL database, migrated to head once."""
    upgrade(postgres_url)
    return postgres_url


def _sql_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'meta' / 'twingraph.db'}"
    url: str = request.getfixturevalue("postgres_metadata_url")
    engine = make_engine(url)
    with engine.begin() as conn:        # every test starts from empty tables
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


def _open(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if kind == "memory":
        return MemoryMetadataStore(clock=_clock())
    return SQLMetadataStore(_sql_url(kind, request, tmp_path), create=True, clock=_clock())


@pytest.fixture(params=IMPLEMENTATIONS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    s = _open(request.param, request, tmp_path)
    yield s
    s.close()


@pytest.fixture(params=SQL_BACKENDS)
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _sql_url(request.param, request, tmp_path)


def run(run_id: str = "r1", **kw: Any) -> RunRecord:
    kw.setdefault("pipeline", "etl")
    kw.setdefault("state", RunState.PENDING)
    kw.setdefault("created_at", 10.0)
    return RunRecord(run_id=run_id, **kw)


def task(node_id: str, run_id: str = "r1", **kw: Any) -> TaskRecord:
    kw.setdefault("component", "comp")
    kw.setdefault("created_at", 11.0)
    return TaskRecord(run_id=run_id, node_id=node_id, **kw)


def upd(node_id: str, state: TaskState, at: float, run_id: str = "r1", **kw: Any) -> TaskUpdate:
    return TaskUpdate(run_id=run_id, node_id=node_id, state=state, at=at, **kw)


def tasks_by_id(store: Any, run_id: str = "r1") -> dict[str, TaskRecord]:
    return {t.node_id: t for t in store.get_tasks(run_id)}


# -- the port --------------------------------------------------------------------------------

def test_implements_the_port(store: Any) -> None:
    assert isinstance(store, MetadataStore)


def test_misses_return_none_or_empty(store: Any) -> None:
    assert store.get_run("nope") is None
    assert store.get_tasks("nope") == []
    assert store.get_logs("nope") == []
    assert store.get_edges("nope") == []
    assert store.get_attempts("nope") == []
    assert store.list_runs() == []
    assert store.get_pipeline("default", "nope") is None
    assert store.write([]) == []


def test_each_claim_of_a_run_gets_the_next_driver_epoch(store: Any) -> None:
    """Fencing across drivers (core.states.fence): every process that resumes or adopts a run
    claims a number no other claimant gets, above every earlier one."""
    store.write([run()])
    assert store.claim_driver("r1") == 1                 # the first driver had epoch 0
    got: list[int] = []
    lock = threading.Lock()

    def claim() -> None:
        for _ in range(5):
            epoch = store.claim_driver("r1")
            with lock:
                got.append(epoch)
    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(2, 22))             # distinct, none skipped
    assert store.get_run("r1") is not None
    with pytest.raises(NotFoundError):
        store.claim_driver("nope")


def test_driver_epoch_is_the_latest_claim(store: Any) -> None:
    """What a driver asks to learn that another took its run over (engine/heartbeats.py)."""
    assert store.driver_epoch("r1") is None                   # unknown run
    store.write([run()])
    assert store.driver_epoch("r1") == 0                      # its first driver
    store.claim_driver("r1")
    store.claim_driver("r1")
    assert store.driver_epoch("r1") == 2


def test_a_claim_with_the_heartbeat_it_read_is_a_compare_and_set(store: Any) -> None:
    """Two resumes of one run that both found its driver dead: the first claim moves the
    heartbeat, the second (holding the old one) is refused."""
    store.write([run()])
    seen = store.get_run("r1").heartbeat_at
    assert store.claim_driver("r1", heartbeat=seen, now=1234.5) == 1
    assert store.get_run("r1").heartbeat_at == 1234.5
    with pytest.raises(ConflictError):
        store.claim_driver("r1", heartbeat=seen, now=1300.0)
    assert store.claim_driver("r1", heartbeat=1234.5, now=1300.0) == 2
    with pytest.raises(NotFoundError):
        store.claim_driver("nope", heartbeat=None, now=1.0)


def test_a_resume_claim_of_an_ended_run_makes_it_running_in_the_same_step(store: Any) -> None:
    """Session 25: two resumes of a CANCELLED run both drove it (tasks ran twice). The winner's
    claim moved the heartbeat, but the run stayed CANCELLED until its RUNNING update was
    written; a resume reading it then skipped the wait for a live driver and claimed over the
    fresh heartbeat. Now the claim itself makes it RUNNING: the later reader waits."""
    store.write([run(), RunUpdate("r1", RunState.CANCELLED, 20.0, error="cancelled by user")])
    seen = store.get_run("r1").heartbeat_at
    assert store.claim_driver("r1", heartbeat=seen, now=1234.5, running=True) == 1
    rec = store.get_run("r1")
    assert rec.state is RunState.RUNNING and rec.heartbeat_at == 1234.5
    assert rec.ended_at is None and rec.error is None
    store.write([RunUpdate("r1", RunState.RUNNING, 1234.6, epoch=1)])    # what follows it
    assert store.get_run("r1").state is RunState.RUNNING
    # without ``running`` (ending a driverless run), the state is left to the caller
    store.write([RunUpdate("r1", RunState.FAILED, 1240.0, epoch=1)])
    store.claim_driver("r1", heartbeat=store.get_run("r1").heartbeat_at, now=1250.0)
    assert store.get_run("r1").state is RunState.FAILED


def test_run_updates_and_heartbeats_of_a_taken_over_driver_are_dropped(store: Any) -> None:
    """A driver paused past its run's takeover wrote its final state (and heartbeats) over the
    new driver's: they carry the writer's epoch and are dropped once a newer one claimed."""
    store.write([run()])
    seen = store.get_run("r1").heartbeat_at
    assert store.claim_driver("r1", heartbeat=seen, now=50.0) == 1
    store.write([RunUpdate("r1", RunState.SUCCESS, 60.0, epoch=1)])
    store.write([RunUpdate("r1", RunState.FAILED, 70.0, error="old driver", epoch=0),
                 RunHeartbeat("r1", 80.0, epoch=0)])
    rec = store.get_run("r1")
    assert (rec.state, rec.error, rec.ended_at, rec.heartbeat_at) == (RunState.SUCCESS, None,
                                                                       60.0, 50.0)
    store.write([RunHeartbeat("r1", 90.0, epoch=1), RunHeartbeat("r1", 91.0)])
    assert store.get_run("r1").heartbeat_at == 91.0       # no epoch: unconditional


def test_run_lifecycle(store: Any) -> None:
    rec = run(params={"date": "2025-01-26"}, config={"max_parallel": 4},
              source={"module": "m"}, pipeline_version=3)
    assert store.write([rec]) == []
    assert store.get_run("r1") == rec

    store.write([RunUpdate("r1", RunState.RUNNING, at=11.0), RunHeartbeat("r1", at=12.0)])
    got = store.get_run("r1")
    assert (got.state, got.started_at, got.ended_at, got.heartbeat_at) == (RunState.RUNNING, 11.0, None, 12.0)
    assert isinstance(got.state, RunState)

    store.write([RunUpdate("r1", RunState.FAILED, at=13.0, error="boom")])
    got = store.get_run("r1")
    assert (got.state, got.ended_at, got.error) == (RunState.FAILED, 13.0, "boom")

    # Resume: RUNNING again keeps the first start and clears the end (and the old error).
    store.write([RunUpdate("r1", RunState.RUNNING, at=20.0)])
    got = store.get_run("r1")
    assert (got.state, got.started_at, got.ended_at) == (RunState.RUNNING, 11.0, None)

    store.write([RunUpdate("r1", RunState.SUCCESS, at=21.0, result_key="res")])
    got = store.get_run("r1")
    assert (got.state, got.ended_at, got.result_key, got.error) == (
        RunState.SUCCESS, 21.0, "res", None)
    # everything else is what the RunRecord said
    assert (got.params, got.config, got.source, got.pipeline_version, got.created_at) == (
        {"date": "2025-01-26"}, {"max_parallel": 4}, {"module": "m"}, 3, 10.0)


@pytest.mark.parametrize("ended", [RunState.FAILED, RunState.CANCELLED])
def test_resuming_a_run_clears_the_error_of_its_earlier_end(store: Any, ended: RunState) -> None:
    """A run that failed (or was cancelled), then resumed and succeeded, no longer shows the
    earlier error: RUNNING clears it, and so does SUCCESS, also when both follow the failure
    in one batch. An error the update itself carries is still written."""
    store.write([run(state=RunState.RUNNING), RunUpdate("r1", ended, at=13.0, error="boom")])
    assert store.get_run("r1").error == "boom"
    store.write([RunUpdate("r1", RunState.RUNNING, at=20.0)])
    assert (store.get_run("r1").state, store.get_run("r1").error) == (RunState.RUNNING, None)
    store.write([RunUpdate("r1", ended, at=21.0, error="again")])
    assert store.get_run("r1").error == "again"
    store.write([RunUpdate("r1", RunState.SUCCESS, at=22.0)])
    assert (store.get_run("r1").state, store.get_run("r1").error) == (RunState.SUCCESS, None)
    store.write([RunUpdate("r1", RunState.FAILED, at=23.0, error="third"),
                 RunUpdate("r1", RunState.RUNNING, at=24.0),
                 RunUpdate("r1", RunState.SUCCESS, at=25.0, result_key="res")])
    got = store.get_run("r1")
    assert (got.state, got.error, got.result_key) == (RunState.SUCCESS, None, "res")


def test_run_record_replaces_the_run(store: Any) -> None:
    store.write([run(params={"a": 1})])
    replacement = run(state=RunState.RUNNING, params={"b": 2}, created_at=5.0, started_at=6.0)
    store.write([replacement])
    assert store.get_run("r1") == replacement
    assert len(store.list_runs()) == 1


def test_task_registration_and_updates(store: Any) -> None:
    store.write([run(), task("b", order=1, inputs={"x": [1, 2]}, platform="docker"),
                 task("a", order=0, cache_key="k-a")])
    assert [t.node_id for t in store.get_tasks("r1")] == ["a", "b"]       # by call order
    b = tasks_by_id(store)["b"]
    assert (b.inputs, b.platform, b.state) == ({"x": [1, 2]}, "docker", TaskState.PENDING)

    store.write([upd("a", TaskState.QUEUED, 12.0),
                 upd("a", TaskState.RUNNING, 13.0, attempts=1, fence=1)])
    a = tasks_by_id(store)["a"]
    assert (a.state, a.started_at, a.ended_at, a.attempts, a.fence) == (TaskState.RUNNING, 13.0, None, 1, 1)

    store.write([upd("a", TaskState.SUCCESS, 15.0, fence=1, result_key="rk", content_hash="ch",
                     cache_status="miss", cache_reason="new inputs")])
    a = tasks_by_id(store)["a"]
    assert a == task("a", order=0, cache_key="k-a", state=TaskState.SUCCESS, attempts=1, fence=1,
                     result_key="rk", content_hash="ch", cache_status="miss",
                     cache_reason="new inputs", started_at=13.0, ended_at=15.0)
    assert isinstance(a.state, TaskState)


def test_a_batch_of_many_rows(store: Any) -> None:
    # Many multi-row INSERTs on SQLite (32 rows each) and a remainder: every row lands as given.
    tasks = [task(f"t{i:04d}", state=TaskState.SUCCESS, inputs={"i": i}, order=i,
                  content_hash=f"h{i}") for i in range(600)]
    logs = [LogRecord("r1", float(i), "info", f"line {i}", f"t{i:04d}") for i in range(530)]
    store.write([run(), *tasks, *logs])
    got = tasks_by_id(store)
    assert len(got) == 600
    for i in (0, 255, 256, 511, 512, 599):
        t = got[f"t{i:04d}"]
        assert (t.state, t.inputs, t.order, t.content_hash) == (TaskState.SUCCESS, {"i": i}, i,
                                                                 f"h{i}")
    assert [r.message for r in store.get_logs("r1", limit=1000)] == [f"line {i}"
                                                                     for i in range(530)]


def test_task_paging_and_counts(store: Any) -> None:
    store.write([run()] + [task(f"n{i}", order=9 - i) for i in range(10)])
    store.write([upd(f"n{i}", TaskState.QUEUED, 1.0) for i in range(3)]
                + [upd("n9", TaskState.SKIPPED, 2.0)])
    assert [t.node_id for t in store.get_tasks("r1", limit=3, offset=2)] == ["n7", "n6", "n5"]
    assert [t.node_id for t in store.get_tasks("r1", offset=8)] == ["n1", "n0"]
    assert store.task_counts("r1") == {TaskState.PENDING: 6, TaskState.QUEUED: 3, TaskState.SKIPPED: 1}
    assert store.task_counts("nope") == {}


def test_retry_keeps_first_start_and_clears_end(store: Any) -> None:
    store.write([run(), task("a")])
    store.write([upd("a", TaskState.QUEUED, 1.0), upd("a", TaskState.RUNNING, 2.0, fence=1)])
    store.write([upd("a", TaskState.RETRYING, 3.0, error="flaky")])
    store.write([upd("a", TaskState.QUEUED, 4.0), upd("a", TaskState.RUNNING, 5.0, fence=2)])
    a = tasks_by_id(store)["a"]
    assert (a.state, a.started_at, a.ended_at, a.fence, a.error) == (TaskState.RUNNING, 2.0, None, 2, "flaky")
    store.write([upd("a", TaskState.FAILED, 6.0, fence=2, error="still flaky")])
    store.write([upd("a", TaskState.QUEUED, 7.0)])     # resume re-queues: not ended any more
    a = tasks_by_id(store)["a"]
    assert (a.state, a.ended_at, a.error) == (TaskState.QUEUED, None, "still flaky")


def test_explicit_times_on_an_update_win(store: Any) -> None:
    store.write([run(), task("a"), task("b")])
    store.write([upd("a", TaskState.SUCCESS, 9.0, started_at=4.0),              # folded update
                 upd("b", TaskState.RUNNING, 5.0, started_at=3.0, ended_at=None)])
    got = tasks_by_id(store)
    assert (got["a"].started_at, got["a"].ended_at) == (4.0, 9.0)
    assert (got["b"].started_at, got["b"].ended_at) == (3.0, None)
    store.write([upd("b", TaskState.FAILED, 8.0, ended_at=7.5),
                 upd("a", TaskState.QUEUED, 10.0, ended_at=9.5)])
    got = tasks_by_id(store)
    assert (got["b"].started_at, got["b"].ended_at) == (3.0, 7.5)
    assert (got["a"].state, got["a"].ended_at) == (TaskState.QUEUED, 9.5)


def test_reregistration_replaces_fields_but_keeps_created_at_and_max_fence(store: Any) -> None:
    store.write([run(), task("a", fence=3, created_at=11.0, cache_key="old", state=TaskState.FAILED)])
    again = task("a", fence=3, created_at=99.0, cache_key="new", state=TaskState.PENDING,
                 inputs={"v": 1}, order=5)
    store.write([again])
    a = tasks_by_id(store)["a"]
    assert a == task("a", fence=3, created_at=11.0, cache_key="new", state=TaskState.PENDING,
                     inputs={"v": 1}, order=5)
    store.write([task("a", fence=7)])
    assert tasks_by_id(store)["a"].fence == 7


def test_a_registration_with_a_lower_fence_is_dropped(store: Any) -> None:
    """The late first row of a driver the run was taken over from (a stalled process that
    wakes up) overwrote the newer driver's row in every column but the fence."""
    store.write([run(), task("a", fence=10001, created_at=11.0, cache_key="new driver",
                             state=TaskState.SUCCESS)])
    store.write([task("a", fence=1, created_at=99.0, cache_key="old driver",
                      state=TaskState.CANCELLED)])
    a = tasks_by_id(store)["a"]
    assert (a.fence, a.cache_key, a.state) == (10001, "new driver", TaskState.SUCCESS)


def test_repeated_registration_in_one_batch(store: Any) -> None:
    store.write([run(), task("a", fence=4, created_at=1.0), task("a", fence=5, created_at=2.0,
                                                                 component="other"),
                 task("a", fence=2, created_at=3.0, component="stale")])
    a = tasks_by_id(store)["a"]
    assert (a.fence, a.created_at, a.component) == (5, 1.0, "other")


def test_stale_fence_is_rejected_and_reported_rest_of_batch_applies(store: Any) -> None:
    store.write([run(), task("a", fence=2, state=TaskState.RUNNING), task("b")])
    stale = store.write([
        upd("a", TaskState.SUCCESS, 20.0, fence=1, result_key="late"),     # stale
        upd("b", TaskState.QUEUED, 21.0),
        LogRecord("r1", 22.0, "info", "still here"),
    ])
    assert stale == [("r1", "a")]
    got = tasks_by_id(store)
    assert (got["a"].state, got["a"].result_key, got["a"].fence) == (TaskState.RUNNING, None, 2)
    assert got["b"].state == TaskState.QUEUED
    assert [r.message for r in store.get_logs("r1")] == ["still here"]


def test_fence_equal_applies_higher_raises_none_ignores(store: Any) -> None:
    store.write([run(), task("a", fence=2)])
    assert store.write([upd("a", TaskState.QUEUED, 1.0, fence=2)]) == []
    assert store.write([upd("a", TaskState.RUNNING, 2.0, fence=5)]) == []
    assert tasks_by_id(store)["a"].fence == 5
    assert store.write([upd("a", TaskState.SUCCESS, 3.0, fence=4)]) == [("r1", "a")]
    assert store.write([upd("a", TaskState.CANCELLED, 4.0)]) == []          # no fence: applies
    a = tasks_by_id(store)["a"]
    assert (a.state, a.fence, a.ended_at) == (TaskState.CANCELLED, 5, 4.0)


def test_updates_of_one_task_in_one_batch_apply_in_order(store: Any) -> None:
    store.write([run(), task("a"), task("b")])
    stale = store.write([
        upd("a", TaskState.QUEUED, 1.0),
        upd("b", TaskState.QUEUED, 1.5),
        upd("a", TaskState.RUNNING, 2.0, fence=3, attempts=1),
        upd("a", TaskState.SUCCESS, 3.0, fence=2, result_key="stale"),      # older attempt
        upd("a", TaskState.SUCCESS, 4.0, fence=3, result_key="good"),
        upd("b", TaskState.RUNNING, 5.0),
    ])
    assert stale == [("r1", "a")]
    got = tasks_by_id(store)
    assert (got["a"].state, got["a"].result_key, got["a"].fence, got["a"].attempts,
            got["a"].started_at, got["a"].ended_at) == (TaskState.SUCCESS, "good", 3, 1, 2.0, 4.0)
    assert (got["b"].state, got["b"].started_at) == (TaskState.RUNNING, 5.0)


def test_states_given_as_strings_come_back_as_enums(store: Any) -> None:
    store.write([run(state="RUNNING"), task("a", state="QUEUED")])     # type: ignore[arg-type]
    store.write([upd("a", "RUNNING", 1.0)])                            # type: ignore[arg-type]
    assert store.get_run("r1").state is RunState.RUNNING
    assert tasks_by_id(store)["a"].state is TaskState.RUNNING
    with pytest.raises(ValidationError):
        store.write([upd("a", "EXPLODED", 2.0)])                       # type: ignore[arg-type]


def test_json_fields_come_back_as_json(store: Any) -> None:
    store.write([run(params={"t": (1, 2), "n": None}), task("a", inputs={"x": ("a", 1.5)})])
    assert store.get_run("r1").params == {"t": [1, 2], "n": None}
    assert tasks_by_id(store)["a"].inputs == {"x": ["a", 1.5]}


def test_json_fields_keep_the_order_of_their_dicts(store: Any) -> None:
    """A run's parameters are its inputs, and a dict's order is part of a memo key: a resume
    that got them back sorted recomputed what the run had stored (decision 0005)."""
    store.write([run(params={"weights": {"b": 1, "a": 2}, "z": 0, "m": 1})])
    params = store.get_run("r1").params
    assert list(params) == ["weights", "z", "m"] and list(params["weights"]) == ["b", "a"]


def test_records_are_copied_in_and_out(store: Any) -> None:
    rec, t = run(params={"a": 1}), task("a", inputs={"x": [1]})
    store.write([rec, t])
    rec.params["a"] = 2
    t.inputs["x"].append(2)
    t.state = TaskState.FAILED
    got_run, got_task = store.get_run("r1"), store.get_tasks("r1")[0]
    assert (got_run.params, got_task.inputs, got_task.state) == ({"a": 1}, {"x": [1]}, TaskState.PENDING)
    got_run.params["a"] = 3
    got_task.inputs["x"].append(3)
    assert store.get_run("r1").params == {"a": 1}
    assert store.get_tasks("r1")[0].inputs == {"x": [1]}


# -- atomicity -------------------------------------------------------------------------------

def test_update_of_unknown_task_fails_the_whole_batch(store: Any) -> None:
    store.write([run(), task("a")])
    with pytest.raises(NotFoundError):
        store.write([
            RunUpdate("r1", RunState.RUNNING, at=1.0),
            task("new"),
            upd("a", TaskState.QUEUED, 2.0),
            LogRecord("r1", 3.0, "info", "lost"),
            EdgeRecord("r1", "a", "new"),
            upd("missing", TaskState.QUEUED, 4.0),
        ])
    assert store.get_run("r1").state == RunState.PENDING
    assert list(tasks_by_id(store)) == ["a"]
    assert tasks_by_id(store)["a"].state == TaskState.PENDING
    assert store.get_logs("r1") == [] and store.get_edges("r1") == []


@pytest.mark.parametrize("bad", [
    TaskRecord("ghost-run", "a", "comp"),
    RunUpdate("ghost-run", RunState.RUNNING, at=1.0),
    RunHeartbeat("ghost-run", at=1.0),
    AttemptRecord("r1", "ghost-task", 1, 1, TaskState.RUNNING),
    LogRecord("ghost-run", 1.0, "info", "x"),
    EdgeRecord("ghost-run", "a", "b"),
], ids=lambda r: type(r).__name__)
def test_records_about_unknown_runs_or_tasks_fail_the_batch(store: Any, bad: Any) -> None:
    store.write([run()])
    with pytest.raises(NotFoundError):
        store.write([task("a"), LogRecord("r1", 1.0, "info", "before"), bad])
    assert store.get_tasks("r1") == [] and store.get_logs("r1") == []


def test_value_json_cannot_hold_fails_the_batch(store: Any) -> None:
    store.write([run()])
    with pytest.raises(ValidationError):
        store.write([task("a"), task("b", inputs={"x": object()})])
    with pytest.raises(ValidationError):
        store.write([task("a"), task("b", inputs={"x": float("nan")})])
    with pytest.raises(ValidationError):
        store.write([run("r2", params={"f": {1, 2}})])
    assert store.get_tasks("r1") == [] and store.get_run("r2") is None


def test_unknown_record_type_is_rejected(store: Any) -> None:
    with pytest.raises(ValidationError):
        store.write([run(), "not a record"])                            # type: ignore[list-item]
    assert store.get_run("r1") is None


def test_errors_are_twingraph_errors(store: Any) -> None:
    store.write([run()])
    with pytest.raises(TwinGraphError):
        store.write([upd("missing", TaskState.QUEUED, 1.0)])


# -- attempts, logs, lineage -----------------------------------------------------------------

def test_attempts_upsert_by_attempt_number(store: Any) -> None:
    store.write([run(), task("a"), task("b")])
    first = AttemptRecord("r1", "a", 1, fence=1, state=TaskState.RUNNING, started_at=1.0)
    store.write([first, AttemptRecord("r1", "b", 1, fence=1, state=TaskState.RUNNING, started_at=1.5)])
    done = AttemptRecord("r1", "a", 1, fence=1, state=TaskState.FAILED, started_at=1.0,
                         ended_at=2.0, error="boom", executor="celery")
    second = AttemptRecord("r1", "a", 2, fence=2, state=TaskState.RUNNING, started_at=3.0)
    store.write([done, second])
    assert store.get_attempts("r1", "a") == [done, second]
    assert [(x.node_id, x.attempt) for x in store.get_attempts("r1")] == [("a", 1), ("a", 2), ("b", 1)]
    assert isinstance(store.get_attempts("r1")[0].state, TaskState)


def test_attempt_rows_of_a_taken_over_driver_are_fenced_off(store: Any) -> None:
    from twingraph.core.states import fence
    store.write([run(), task("a")])
    stalled = AttemptRecord("r1", "a", 1, fence=fence(0, 1), state=TaskState.RUNNING,
                            started_at=1.0)
    store.write([stalled])
    assert store.claim_driver("r1") == 1
    # The new driver ends the attempt it found RUNNING, under its own fence ...
    ended = AttemptRecord("r1", "a", 1, fence=fence(1, 0), state=TaskState.FAILED,
                          started_at=1.0, ended_at=5.0, error="its driver stopped")
    store.write([ended])
    # ... and the stalled driver wakes up: its attempt's late end, and a retry it starts,
    # are dropped (alone, or in one batch with the new driver's own attempt).
    late = AttemptRecord("r1", "a", 1, fence=fence(0, 1), state=TaskState.SUCCESS,
                         started_at=1.0, ended_at=6.0)
    retry = AttemptRecord("r1", "a", 2, fence=fence(0, 2), state=TaskState.RUNNING,
                          started_at=6.5)
    store.write([late])
    own = AttemptRecord("r1", "a", 2, fence=fence(1, 2), state=TaskState.RUNNING,
                        started_at=7.0)
    store.write([own, retry])
    assert store.get_attempts("r1", "a") == [ended, own]
    # In one batch, a row of an attempt fenced lower than the one before it is dropped too.
    done = AttemptRecord("r1", "a", 2, fence=fence(1, 2), state=TaskState.SUCCESS,
                         started_at=7.0, ended_at=8.0)
    store.write([done, AttemptRecord("r1", "a", 2, fence=fence(1, 1), state=TaskState.FAILED,
                                     started_at=7.0, ended_at=9.0)])
    assert store.get_attempts("r1", "a") == [ended, done]


def test_new_task_rows_of_a_taken_over_driver_are_fenced_off(store: Any) -> None:
    """A stalled driver's first row of a task, written after the run was taken over (ended
    or resumed by another driver), went in: the upsert fenced a row only against a stored
    one of the same task. A SUCCESS task appeared inside a run ended CANCELLED."""
    from twingraph.core.states import fence
    store.write([run(), task("a")])
    assert store.claim_driver("r1") == 1
    late = TaskRecord("r1", "b", "comp", TaskState.SUCCESS, fence=fence(0, 1), attempts=1)
    mine = TaskRecord("r1", "c", "comp", TaskState.SUCCESS, fence=fence(1, 1), attempts=1)
    stale = store.write([late, mine])
    assert {t.node_id for t in store.get_tasks("r1")} == {"a", "c"}
    assert ("r1", "b") in stale
    # ... and that driver's later update of the task is stale too, not an unknown task
    # (which failed the whole batch: other runs' records with it).
    later = TaskUpdate("r1", "b", TaskState.FAILED, 20.0, fence=fence(0, 2))
    assert store.write([later, RunRecord("r3", "p", RunState.RUNNING)]) == [("r1", "b")]
    assert store.get_run("r3") is not None
    # A run never taken over (epoch 0) takes rows of epoch 0 as always.
    store.write([RunRecord("r2", "p", RunState.RUNNING),
                 TaskRecord("r2", "x", "comp", TaskState.SUCCESS, fence=fence(0, 1))])
    assert [t.node_id for t in store.get_tasks("r2")] == ["x"]


def test_a_long_custom_level_is_kept_alike_by_every_store(store: Any) -> None:
    # the column holds 16 characters: PostgreSQL cut it there, SQLite and memory kept it all
    store.write([run(), LogRecord("r1", 1.0, "AUDIT_TRAIL_NOTICE", "m")])
    assert [r.level for r in store.get_logs("r1")] == ["audit_trail_noti"]


def test_logs_filters_and_paging(store: Any) -> None:
    store.write([run(), run("r2")])
    levels = ["debug", "info", "warning", "error", "INFO", "warn"]
    store.write([LogRecord("r1", float(i), levels[i % 6], f"m{i}", node_id="a" if i % 2 else None)
                 for i in range(12)] + [LogRecord("r2", 0.5, "error", "other run")])
    all_logs = store.get_logs("r1")
    assert [r.message for r in all_logs] == [f"m{i}" for i in range(12)]
    assert {r.level for r in all_logs} == {"debug", "info", "warning", "error"}   # normalised
    assert [r.message for r in store.get_logs("r1", level="warning")] == [
        "m2", "m3", "m5", "m8", "m9", "m11"]
    assert [r.message for r in store.get_logs("r1", level="ERROR")] == ["m3", "m9"]
    assert len(store.get_logs("r1", level="debug")) == 12
    assert [r.message for r in store.get_logs("r1", node_id="a", level="info")] == [
        "m1", "m3", "m5", "m7", "m9", "m11"]
    assert [r.message for r in store.get_logs("r1", limit=3, offset=4)] == ["m4", "m5", "m6"]
    assert store.get_logs("r1", offset=50) == []
    assert all_logs[1] == LogRecord("r1", 1.0, "info", "m1", node_id="a")
    with pytest.raises(ValidationError):
        store.get_logs("r1", level="loud")
    with pytest.raises(ValidationError):
        store.get_logs("r1", limit=-1)


def test_logs_with_equal_times_keep_write_order(store: Any) -> None:
    store.write([run()])
    store.write([LogRecord("r1", 5.0, "info", f"m{i}") for i in range(5)])
    store.write([LogRecord("r1", 5.0, "info", "m5"), LogRecord("r1", 1.0, "info", "early")])
    assert [r.message for r in store.get_logs("r1")] == ["early", "m0", "m1", "m2", "m3", "m4", "m5"]


def test_edges_in_write_order_one_per_kind_and_endpoints(store: Any) -> None:
    """An edge is identified by (run, kind, src, dst); a repeat is dropped, the first kept."""
    store.write([run(), run("r2")])
    e1 = EdgeRecord("r1", "a", "b", "DEPENDS_ON", {"data_flow": {"output": "x"}})
    e2 = EdgeRecord("r1", "a", "b", "DEPENDS_ON", {"data_flow": {"output": "y"}})
    e3 = EdgeRecord("r1", "a", "etl", "BELONGS_TO", {"component_order": 0})
    e4 = EdgeRecord("r1", "b", "a", "DEPENDS_ON", {})
    store.write([e1, e2, e1, e3])
    store.write([e3, e4, EdgeRecord("r1", "a", "b", "DEPENDS_ON", {"data_flow": {"output": "z"}}),
                 EdgeRecord("r2", "a", "b", "DEPENDS_ON", {"data_flow": {"output": "x"}})])
    assert store.get_edges("r1") == [e1, e3, e4]
    assert len(store.get_edges("r2")) == 1


# -- listing runs ----------------------------------------------------------------------------

def test_list_runs_filters_order_and_paging(store: Any) -> None:
    store.write([
        run("r1", pipeline="etl", created_at=1.0),
        run("r2", pipeline="etl", created_at=3.0, state=RunState.RUNNING),
        run("r3", pipeline="ml", created_at=2.0, state=RunState.RUNNING, project="lab"),
        run("r4", pipeline="etl", created_at=4.0, state=RunState.SUCCESS),
        run("r0", pipeline="etl", created_at=4.0),                 # same time: run_id breaks tie
    ])
    ids = lambda runs: [r.run_id for r in runs]                   # noqa: E731
    assert ids(store.list_runs()) == ["r4", "r0", "r2", "r3", "r1"]
    assert ids(store.list_runs(pipeline="etl")) == ["r4", "r0", "r2", "r1"]
    assert ids(store.list_runs(state="RUNNING")) == ["r2", "r3"]
    assert ids(store.list_runs(state=RunState.RUNNING, pipeline="ml")) == ["r3"]
    assert ids(store.list_runs(state="running")) == ["r2", "r3"]
    assert ids(store.list_runs(limit=2)) == ["r4", "r0"]
    assert ids(store.list_runs(limit=2, offset=2)) == ["r2", "r3"]
    assert ids(store.list_runs(offset=4)) == ["r1"]
    assert ids(store.list_runs(project="lab")) == ["r3"]
    assert store.list_runs(pipeline="nope") == []
    with pytest.raises(ValidationError):
        store.list_runs(state="EXPLODED")
    with pytest.raises(ValidationError):
        store.list_runs(offset=-1)


def test_find_run_ids_by_prefix(store: Any) -> None:
    store.write([run("9d047f4e01", created_at=1.0), run("9d047f4e02", created_at=2.0),
                 run("9d047fAB", created_at=3.0), run("ab_c%1", created_at=4.0),
                 run("abXcY1", created_at=5.0), run("zz", created_at=6.0)])
    assert store.find_run_ids("9d047f") == ["9d047f4e01", "9d047f4e02", "9d047fAB"]
    assert store.find_run_ids("9d047f4e02") == ["9d047f4e02"]        # a whole id is a prefix
    assert store.find_run_ids("9d047f", limit=2) == ["9d047f4e01", "9d047f4e02"]
    assert store.find_run_ids("9d047fab") == []                       # case-sensitive
    assert store.find_run_ids("9D047F") == []
    assert store.find_run_ids("ab_c%") == ["ab_c%1"]                  # no LIKE wildcards
    assert store.find_run_ids("ab") == ["abXcY1", "ab_c%1"]          # code-point order
    assert store.find_run_ids("nope") == []
    for bad in ("", None):
        with pytest.raises(ValidationError):
            store.find_run_ids(bad)
    with pytest.raises(ValidationError):
        store.find_run_ids("9d", limit=0)


# -- the catalog -----------------------------------------------------------------------------

def test_upsert_pipeline_versions_only_on_change(store: Any) -> None:
    v1 = {"nodes": [{"id": "extract"}], "edges": []}
    pid, version = store.upsert_pipeline("analytics", "daily_etl", v1, description="first",
                                         tags=["etl"])
    assert pid.startswith("pipe_") and version == 1
    assert store.upsert_pipeline("analytics", "daily_etl", {"edges": [], "nodes": [{"id": "extract"}]}) == (pid, 1)

    v2 = {"nodes": [{"id": "extract"}, {"id": "load"}], "edges": [{"from": "extract", "to": "load"}]}
    assert store.upsert_pipeline("analytics", "daily_etl", v2, schedule="0 2 * * *") == (pid, 2)
    assert store.upsert_pipeline("analytics", "daily_etl", v2, source_hash="abc") == (pid, 3)
    assert store.upsert_pipeline("analytics", "daily_etl", v2, source_hash="abc") == (pid, 3)
    assert store.upsert_pipeline("analytics", "daily_etl", v2) == (pid, 3)   # no hash: not a change

    got = store.get_pipeline("analytics", "daily_etl")
    assert (got.id, got.name, got.project, got.definition, got.current_version) == (
        pid, "daily_etl", "analytics", v2, 3)
    assert (got.description, got.schedule, got.tags) == ("first", "0 2 * * *", ["etl"])
    assert got.updated_at > got.created_at
    project = store.get_project("analytics")
    assert project is not None and got.project_id == project.id and project.id.startswith("proj_")
    versions = store.get_pipeline_versions(pid)
    assert [(v.version, v.definition, v.source_hash) for v in versions] == [
        (1, v1, None), (2, v2, None), (3, v2, "abc")]

    other, version = store.upsert_pipeline("other", "daily_etl", v1)
    assert other != pid and version == 1
    with pytest.raises(ValidationError):
        store.upsert_pipeline("analytics", "bad", {"x": object()})


def test_ensure_project_is_idempotent(store: Any) -> None:
    pid = store.ensure_project("lab")
    assert store.ensure_project("lab") == pid
    assert store.get_project("lab").name == "lab"


def test_runs_register_their_project(store: Any) -> None:
    store.write([run(project="lab")])
    assert store.get_project("lab") is not None


def test_chunked_paths(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches larger than one statement's chunk (tiny chunks here) behave like small ones."""
    monkeypatch.setattr(_bulk, "POSTGRES_CHUNK", 7)
    monkeypatch.setattr(_write, "POSTGRES_IN_CHUNK", 5)
    monkeypatch.setattr(_write, "SQLITE_IN_CHUNK", 5)
    n = 40
    store.write([run()] + [task(f"n{i:02d}", order=i, inputs={"i": i}) for i in range(n)])
    stale = store.write([upd(f"n{i:02d}", TaskState.RUNNING, 1.0 + i, fence=1) for i in range(n)]
                        + [upd(f"n{i:02d}", TaskState.SUCCESS, 100.0, fence=0) for i in range(0, n, 3)]
                        + [LogRecord("r1", float(i), "info", f"m{i}") for i in range(n)]
                        + [EdgeRecord("r1", f"n{i:02d}", f"n{i + 1:02d}") for i in range(n - 1)])
    assert stale == [("r1", f"n{i:02d}") for i in range(0, n, 3)]
    got = store.get_tasks("r1")
    assert [t.node_id for t in got] == [f"n{i:02d}" for i in range(n)]
    assert all(t.state == TaskState.RUNNING and t.started_at == 1.0 + t.order and t.fence == 1
               and t.inputs == {"i": t.order} for t in got)
    assert len(store.get_logs("r1")) == n and len(store.get_edges("r1")) == n - 1


# -- SQL only: threads, migrations, errors ---------------------------------------------------

def test_concurrent_writers_and_readers(sql_url: str) -> None:
    first = SQLMetadataStore(sql_url, create=True)
    second = SQLMetadataStore(sql_url)        # another engine: real cross-connection locking
    errors: list[BaseException] = []

    def writer(s: SQLMetadataStore, run_id: str) -> None:
        try:
            s.write([run(run_id, state=RunState.RUNNING)])
            for b in range(20):
                s.write([task(f"n{b}-{i}", run_id=run_id, order=b * 10 + i) for i in range(10)]
                        + [upd(f"n{b}-{i}", TaskState.QUEUED, float(b), run_id=run_id) for i in range(10)]
                        + [LogRecord(run_id, float(b), "info", f"batch {b}")])
            s.write([RunUpdate(run_id, RunState.SUCCESS, at=99.0)])
        except BaseException as exc:      # pragma: no cover - reported below
            errors.append(exc)

    def reader(s: SQLMetadataStore, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                for r in s.list_runs():
                    s.get_tasks(r.run_id)
        except BaseException as exc:      # pragma: no cover
            errors.append(exc)

    stop = threading.Event()
    threads = [threading.Thread(target=writer, args=(first, "ra")),
               threading.Thread(target=writer, args=(second, "rb")),
               threading.Thread(target=writer, args=(first, "rc"))]
    readers = [threading.Thread(target=reader, args=(second, stop))]
    for t in threads + readers:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    for run_id in ("ra", "rb", "rc"):
        got = first.get_run(run_id)
        assert got is not None and got.state == RunState.SUCCESS
        assert len(first.get_tasks(run_id)) == 200
        assert all(t.state == TaskState.QUEUED for t in second.get_tasks(run_id))
        assert len(second.get_logs(run_id)) == 20
    first.close()
    second.close()


def test_racing_fenced_updates_leave_the_newest_attempt(sql_url: str) -> None:
    """Two writers (an old attempt and a new one) race on the same tasks: whatever the
    interleaving, the higher fence wins and the lower one is either overwritten or reported."""
    stores = [SQLMetadataStore(sql_url, create=True), SQLMetadataStore(sql_url)]
    n = 200
    stores[0].write([run()] + [task(f"n{i:03d}", state=TaskState.RUNNING) for i in range(n)])
    barrier = threading.Barrier(2)
    reported: dict[int, list[tuple[str, str]]] = {}
    errors: list[BaseException] = []

    def attempt(k: int, fence: int, state: TaskState) -> None:
        try:
            barrier.wait()
            out: list[tuple[str, str]] = []
            for lo in range(0, n, 20):
                out += stores[k].write([upd(f"n{i:03d}", state, float(fence), fence=fence)
                                        for i in range(lo, lo + 20)])
            reported[k] = out
        except BaseException as exc:      # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(0, 5, TaskState.SUCCESS)),
               threading.Thread(target=attempt, args=(1, 3, TaskState.FAILED))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and reported[0] == []
    got = stores[0].get_tasks("r1")
    assert all((t.state, t.fence) == (TaskState.SUCCESS, 5) for t in got)
    for s in stores:
        s.close()


def test_concurrent_upgrades_of_a_fresh_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    results: list[str | None] = []
    threads = [threading.Thread(target=lambda: results.append(upgrade(url))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [head()] * 3


def test_in_memory_sqlite_url_works(tmp_path: Path) -> None:
    s = SQLMetadataStore("sqlite://", create=True)
    s.write([run(), task("a")])
    assert [t.node_id for t in s.get_tasks("r1")] == ["a"]
    s.close()


def test_migration_is_idempotent_and_matches_the_models(sql_url: str) -> None:
    # the scripts (a new SQLite file would be built from the models, test_migration_head)
    assert upgrade(sql_url, from_models=False) == head()
    assert upgrade(sql_url) == head()
    assert current(sql_url) == head()
    engine = make_engine(sql_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_unmigrated_database_is_refused_until_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert current(url) is None
    with pytest.raises(ConfigurationError, match="db upgrade"):
        SQLMetadataStore(url)
    assert upgrade(url) == head()
    SQLMetadataStore(url).close()


def test_database_migrated_by_a_newer_twingraph_is_refused_plainly(tmp_path: Path) -> None:
    """A revision the packaged scripts do not know: ``ConfigurationError`` saying a newer
    TwinGraph migrated the database (not Alembic's ``CommandError``), from ``upgrade`` and
    from opening a store with ``create=True``; nothing is changed."""
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(ConfigurationError, match="a newer TwinGraph migrated this database"):
        upgrade(url)
    with pytest.raises(ConfigurationError, match="a newer TwinGraph migrated this database"):
        SQLMetadataStore(url, create=True)
    assert current(url) == "0099"


def test_unreachable_database_raises_storage_error() -> None:
    with pytest.raises(StorageError):
        SQLMetadataStore("postgresql://postgres@127.0.0.1:1/nothing")


def test_database_url_resolution(tmp_path: Path) -> None:
    assert default_database_url(tmp_path) == f"sqlite:///{tmp_path.absolute()}/twingraph.db"
    assert resolve_database_url({"TWINGRAPH_DATABASE_URL": "postgresql://h/db",
                                 "TWINGRAPH_HOME": str(tmp_path)}) == "postgresql://h/db"
    assert resolve_database_url({"TWINGRAPH_HOME": str(tmp_path)}) == default_database_url(tmp_path)
    assert resolve_database_url({}) == default_database_url(Path(".twingraph"))
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    import importlib.util
    if importlib.util.find_spec("psycopg2") is not None:      # an explicit driver: as written
        assert normalize_url("postgresql+psycopg2://u@h/db").drivername == "postgresql+psycopg2"
    else:                 # (session 27: a ModuleNotFoundError traceback at the first connect)
        with pytest.raises(ConfigurationError, match="'psycopg2' the URL names is not installed"):
            normalize_url("postgresql+psycopg2://u@h/db")
    with pytest.raises(ConfigurationError):
        normalize_url("mysql://u@h/db")
    with pytest.raises(ConfigurationError):
        normalize_url("not a url")


# -- session 22 review: bad input is a ValidationError and writes nothing ------------------

def test_lone_surrogates_in_text_are_a_validation_error_and_write_nothing(sql_url: str) -> None:
    """A bare ``UnicodeEncodeError`` leaked from SQLite and PostgreSQL (decision 0003: every
    failure is a TwinGraphError). The memory store keeps text as it is given."""
    store = SQLMetadataStore(sql_url, create=True)
    store.write([RunRecord("r1", "p", RunState.RUNNING, created_at=1.0)])
    for bad in ([LogRecord("r1", 2.0, "info", "file \udcff.csv")],
                [RunUpdate("r1", RunState.FAILED, 3.0, error="bad \udcff")]):
        with pytest.raises(ValidationError):
            store.write(bad)
    assert store.get_logs("r1") == []
    assert store.get_run("r1").state is RunState.RUNNING
    store.close()


@pytest.mark.parametrize("t", [float("nan"), float("inf"), -float("inf")])
def test_run_times_that_are_not_finite_are_refused(store: Any, t: float) -> None:
    """NaN or infinity was accepted by PostgreSQL (SQLite took infinity), and ``runs list``
    failed on that row for good."""
    with pytest.raises(ValidationError):
        store.write([RunRecord("r1", "p", RunState.RUNNING, created_at=t)])
    assert store.get_run("r1") is None
    store.write([RunRecord("r2", "p", RunState.RUNNING, created_at=1.0)])
    with pytest.raises(ValidationError):
        store.write([RunUpdate("r2", RunState.SUCCESS, t)])
    assert store.get_run("r2").state is RunState.RUNNING
