"""Contract of ``SQLScheduleStore`` on a real SQLite file and on the machine's PostgreSQL.

CRUD with validation (bad input raises and writes nothing), the claim compare-and-set, the
queued-run claim that enforces ``max_concurrency``, and the decorator's schedule upsert.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from twingraph.core.records import RunRecord, RunUpdate
from twingraph.core.schedule import OverlapPolicy, ScheduleKind, ScheduleSource
from twingraph.core.states import RunState
from twingraph.errors import NotFoundError, ValidationError
from twingraph.stores.metadata import SQLMetadataStore, upgrade
from twingraph.stores.metadata._engine import make_engine
from twingraph.stores.metadata.schedules import SQLScheduleStore

# Whoever adds a schedule store backend adds it here.
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=timezone.utc).timestamp()
DAY = 86400.0


@pytest.fixture(scope="session")
def schedule_pg_url(postgres_url: str) -> str:
    upgrade(postgres_url)
    return postgres_url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating a new file per test is slow)."""
    path = tmp_path_factory.mktemp("schedules") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[SQLMetadataStore, SQLScheduleStore, Clock]]:
    if request.param == "sqlite":
        shutil.copyfile(request.getfixturevalue("sqlite_template"), tmp_path / "meta.db")
        url = f"sqlite:///{tmp_path / 'meta.db'}"
    else:
        url = request.getfixturevalue("schedule_pg_url")
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE schedules, runs, pipeline_versions, pipelines, projects "
                              "RESTART IDENTITY CASCADE"))
        engine.dispose()
    clock = Clock(NOW)
    meta = SQLMetadataStore(url, clock=clock)          # migrated by the fixtures above
    yield meta, SQLScheduleStore(meta), clock
    meta.close()


def pipeline(meta: SQLMetadataStore, name: str = "daily_etl", project: str = "analytics") -> tuple[str, str]:
    pipe_id, _ = meta.upsert_pipeline(project, name, {"nodes": [], "edges": []})
    rec = meta.get_project(project)
    assert rec is not None
    return rec.id, pipe_id


def make(schedules: SQLScheduleStore, project_id: str, pipeline_id: str, **kw: Any) -> Any:
    kw.setdefault("kind", "CRON")
    kw.setdefault("expression", "0 2 * * *")
    return schedules.create(project_id=project_id, pipeline_id=pipeline_id, **kw)


def queued_run(meta: SQLMetadataStore, schedules: SQLScheduleStore, schedule_id: str,
               run_id: str, created_at: float) -> None:
    meta.write([RunRecord(run_id, "daily_etl", RunState.PENDING, created_at=created_at)])
    schedules.link_run(schedule_id, run_id)


# -- CRUD ----------------------------------------------------------------------------------

def test_create_and_get_with_documented_defaults(env: Any) -> None:
    meta, schedules, _ = env
    proj, pipe = pipeline(meta)
    rec = make(schedules, proj, pipe, timeout_seconds=7200)
    assert rec.id.startswith("sched_")
    assert (rec.kind, rec.expression, rec.timezone, rec.enabled, rec.max_concurrency) == (
        ScheduleKind.CRON, "0 2 * * *", "UTC", True, 1)
    assert (rec.overlap_policy, rec.catchup, rec.params, rec.source, rec.timeout_seconds) == (
        OverlapPolicy.SKIP, False, {}, ScheduleSource.API, 7200)
    assert rec.next_run_at == NOW + 14 * 3600          # 2026-01-11T02:00Z, the first 2 AM after now
    assert (rec.created_at, rec.updated_at, rec.last_run_at) == (NOW, NOW, None)
    assert schedules.get(rec.id) == rec


def test_pipeline_and_project_by_name(env: Any) -> None:
    meta, schedules, _ = env
    proj, pipe = pipeline(meta)
    rec = make(schedules, "analytics", "daily_etl")           # the Tauro example names the pipeline
    assert (rec.project_id, rec.pipeline_id) == (proj, pipe)
    interval = make(schedules, proj, pipe, kind="INTERVAL", expression="2h")
    assert interval.next_run_at == NOW + 7200                  # anchored at creation


def test_unknown_references(env: Any) -> None:
    meta, schedules, _ = env
    proj, pipe = pipeline(meta)
    other_proj, other_pipe = pipeline(meta, "other", project="elsewhere")
    with pytest.raises(NotFoundError, match="pipeline"):
        make(schedules, proj, "nope")
    with pytest.raises(NotFoundError, match="project"):
        make(schedules, "proj_nope", pipe)
    with pytest.raises(ValidationError, match="another project"):
        make(schedules, proj, other_pipe)
    with pytest.raises(NotFoundError):
        schedules.get("sched_nope")
    assert schedules.list()[1] == 0


@pytest.mark.parametrize("bad", [
    {"expression": "61 * * * *"}, {"kind": "INTERVAL", "expression": "0m"},
    {"kind": "INTERVAL", "expression": "soon"}, {"timezone": "Nowhere/City"},
    {"kind": "HOURLY"}, {"max_concurrency": 0}, {"timeout_seconds": -5},
    {"overlap_policy": "queue"}, {"params": {"x": float("nan")}}, {"source": "ui"},
])
def test_bad_values_are_refused_and_nothing_is_written(env: Any, bad: dict[str, Any]) -> None:
    meta, schedules, _ = env
    proj, pipe = pipeline(meta)
    with pytest.raises(ValidationError):
        make(schedules, proj, pipe, **bad)
    assert schedules.list() == ([], 0)


def test_list_filters_paging_and_sort(env: Any) -> None:
    meta, schedules, clock = env
    proj, pipe = pipeline(meta)
    _, pipe2 = pipeline(meta, "hourly")
    made = []
    for i in range(5):
        clock.now = NOW + i
        made.append(make(schedules, proj, pipe if i % 2 == 0 else pipe2, enabled=i != 4))
    page, total = schedules.list(limit=2)
    assert total == 5 and [r.id for r in page] == [made[4].id, made[3].id]     # -created_at
    page, total = schedules.list(limit=2, offset=2, sort="created_at")
    assert total == 5 and [r.id for r in page] == [made[2].id, made[3].id]
    assert [r.id for r in schedules.list(pipeline_id=pipe2)[0]] == [made[3].id, made[1].id]
    assert schedules.list(enabled=False)[1] == 1 and schedules.list(project_id=proj)[1] == 5
    assert schedules.list(project_id="proj_other") == ([], 0)
    with pytest.raises(ValidationError, match="sort"):
        schedules.list(sort="-expression; drop table")
    with pytest.raises(ValidationError):
        schedules.list(limit=-1)


def test_update_is_partial_and_recomputes_next_run(env: Any) -> None:
    meta, schedules, clock = env
    proj, pipe = pipeline(meta)
    rec = make(schedules, proj, pipe, params={"region": "eu"})
    clock.now = NOW + 60
    same = schedules.update(rec.id, description="nightly", max_concurrency=3)
    assert (same.description, same.max_concurrency, same.params) == ("nightly", 3, {"region": "eu"})
    assert same.next_run_at == rec.next_run_at and same.updated_at == NOW + 60
    moved = schedules.update(rec.id, expression="0 3 * * *", timezone="Europe/Berlin")
    assert moved.next_run_at == NOW + 14 * 3600                # 03:00 Berlin = 02:00Z
    interval = schedules.update(rec.id, kind="INTERVAL", expression="1h")
    assert interval.next_run_at == NOW + 3600                  # anchor = created_at = NOW
    off = schedules.set_enabled(rec.id, False)
    assert (off.enabled, off.next_run_at) == (False, None)
    clock.now = NOW + 5 * 3600 + 10
    on = schedules.set_enabled(rec.id, True)                  # from now, no catch-up of the gap
    assert (on.enabled, on.next_run_at) == (True, NOW + 6 * 3600)
    assert schedules.get(rec.id) == on


def test_bad_updates_change_nothing(env: Any) -> None:
    meta, schedules, _ = env
    proj, pipe = pipeline(meta)
    rec = make(schedules, proj, pipe)
    for bad in ({"expression": "nope"}, {"id": "sched_x"}, {"next_run_at": 1.0},
                {"max_concurrency": 0}, {"enabled": "no"}, {"timezone": "Mars/Base"}):
        with pytest.raises(ValidationError):
            schedules.update(rec.id, **bad)
    assert schedules.get(rec.id) == rec
    with pytest.raises(NotFoundError):
        schedules.update("sched_nope", description="x")


def test_delete_cancels_queued_runs_and_keeps_others(env: Any) -> None:
    meta, schedules, _ = env
    proj, pipe = pipeline(meta)
    rec = make(schedules, proj, pipe)
    queued_run(meta, schedules, rec.id, "done", NOW)
    meta.write([RunUpdate("done", RunState.RUNNING, NOW), RunUpdate("done", RunState.SUCCESS, NOW + 1)])
    queued_run(meta, schedules, rec.id, "queued", NOW + 2)
    schedules.delete(rec.id)
    with pytest.raises(NotFoundError):
        schedules.get(rec.id)
    with pytest.raises(NotFoundError):
        schedules.delete(rec.id)
    queued, done = meta.get_run("queued"), meta.get_run("done")
    assert queued is not None and queued.state is RunState.CANCELLED
    assert queued.error == "its schedule was deleted"
    assert done is not None and done.state is RunState.SUCCESS


# -- firing ---------------------------------------------------------------------------------

def test_due_and_the_claim_compare_and_set(env: Any) -> None:
    meta, schedules, _ = env
    proj, pipe = pipeline(meta)
    a = make(schedules, proj, pipe, kind="INTERVAL", expression="10s")
    b = make(schedules, proj, pipe, kind="INTERVAL", expression="20s")
    make(schedules, proj, pipe, kind="INTERVAL", expression="10s", enabled=False)
    assert schedules.due(NOW + 9) == []
    assert [r.id for r in schedules.due(NOW + 10)] == [a.id]
    assert [r.id for r in schedules.due(NOW + 20)] == [a.id, b.id]
    assert schedules.claim(a.id, NOW + 10, NOW + 30) is True
    assert schedules.claim(a.id, NOW + 10, NOW + 30) is False      # the same expected value again
    assert schedules.get(a.id).next_run_at == NOW + 30
    assert schedules.claim("sched_nope", NOW + 10, NOW + 30) is False
    schedules.set_enabled(b.id, False)
    assert schedules.claim(b.id, NOW + 20, NOW + 40) is False      # disabled: no fire


def test_concurrent_claims_have_one_winner(env: Any) -> None:
    meta, schedules, _ = env
    proj, pipe = pipeline(meta)
    rec = make(schedules, proj, pipe, kind="INTERVAL", expression="10s")
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def contender() -> None:
        barrier.wait()
        results.append(schedules.claim(rec.id, NOW + 10, NOW + 20))

    threads = [threading.Thread(target=contender) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


def test_record_fire_link_and_active_runs(env: Any) -> None:
    meta, schedules, _ = env
    proj, pipe = pipeline(meta)
    rec = make(schedules, proj, pipe)
    assert schedules.active_runs(rec.id) == 0
    queued_run(meta, schedules, rec.id, "r1", NOW)
    queued_run(meta, schedules, rec.id, "r2", NOW + 1)
    meta.write([RunRecord("unrelated", "daily_etl", RunState.PENDING, created_at=NOW)])
    meta.write([RunUpdate("r2", RunState.RUNNING, NOW + 2)])
    assert schedules.active_runs(rec.id) == 2
    meta.write([RunUpdate("r2", RunState.FAILED, NOW + 3)])
    assert schedules.active_runs(rec.id) == 1
    schedules.record_fire(rec.id, "r1", NOW - 3600)
    got = schedules.get(rec.id)
    assert (got.last_run_at, got.last_run_id) == (NOW - 3600, "r1")
    with pytest.raises(NotFoundError):
        schedules.record_fire("sched_nope", "r1", NOW)
    with pytest.raises(NotFoundError):
        schedules.link_run(rec.id, "no-such-run")
    with pytest.raises(NotFoundError):
        schedules.link_run("sched_nope", "r1")


def test_claim_queued_runs_respects_max_concurrency(env: Any) -> None:
    meta, schedules, _ = env
    proj, pipe = pipeline(meta)
    rec = make(schedules, proj, pipe, max_concurrency=2)
    for i in range(5):
        queued_run(meta, schedules, rec.id, f"q{i}", NOW + i)
    assert schedules.with_queued_runs() == [rec.id]
    assert schedules.claim_queued_runs(rec.id, NOW + 10) == ["q0", "q1"]     # oldest first
    assert schedules.claim_queued_runs(rec.id, NOW + 10) == []               # full
    q0 = meta.get_run("q0")
    assert q0 is not None and (q0.state, q0.started_at, q0.heartbeat_at) == (
        RunState.RUNNING, NOW + 10, NOW + 10)
    meta.write([RunUpdate("q0", RunState.SUCCESS, NOW + 11)])
    assert schedules.claim_queued_runs(rec.id, NOW + 12) == ["q2"]
    schedules.fail_claimed_run("q2", "could not start", NOW + 13)
    failed = meta.get_run("q2")
    assert failed is not None and (failed.state, failed.error) == (RunState.FAILED, "could not start")
    assert schedules.claim_queued_runs(rec.id, NOW + 14) == ["q3"]
    assert schedules.claim_queued_runs("sched_nope", NOW) == []


def test_concurrent_queue_claims_never_exceed_max_concurrency(env: Any) -> None:
    meta, schedules, _ = env
    proj, pipe = pipeline(meta)
    rec = make(schedules, proj, pipe, max_concurrency=3)
    for i in range(20):
        queued_run(meta, schedules, rec.id, f"q{i:02d}", NOW + i)
    claimed: list[str] = []
    barrier = threading.Barrier(6)

    def contender() -> None:
        barrier.wait()
        for _ in range(3):
            claimed.extend(schedules.claim_queued_runs(rec.id, NOW + 30))

    threads = [threading.Thread(target=contender) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == ["q00", "q01", "q02"]
    assert len(meta.list_runs(state="RUNNING")) == 3


def test_with_queued_runs_lists_only_schedules_with_room_in_pages(env: Any) -> None:
    """Review (session 14): ``with_queued_runs(limit)`` returned the first ``limit`` schedules
    with PENDING runs, full or not; with more schedules with a backlog than ``limit`` the
    later ones (in id order) never had their queued runs started. It now returns only those
    with room under ``max_concurrency``, one keyset page (``after``) at a time."""
    meta, schedules, _ = env
    proj, pipe = pipeline(meta)
    recs = sorted((make(schedules, proj, pipe, max_concurrency=1) for _ in range(5)),
                  key=lambda r: r.id)
    full, idle, *with_room = recs                    # full: its one slot is taken
    queued_run(meta, schedules, full.id, "f0", NOW)
    queued_run(meta, schedules, full.id, "f1", NOW + 1)
    assert schedules.claim_queued_runs(full.id, NOW + 2) == ["f0"]
    for i, rec in enumerate(with_room):              # idle has no queued run at all
        queued_run(meta, schedules, rec.id, f"w{i}", NOW + i)
    room = [r.id for r in with_room]
    assert schedules.with_queued_runs() == room
    assert schedules.with_queued_runs(2) == room[:2]                 # full ones take no place
    assert schedules.with_queued_runs(2, after=room[1]) == room[2:]
    assert schedules.with_queued_runs(2, after=room[2]) == []
    meta.write([RunUpdate("f0", RunState.SUCCESS, NOW + 3)])         # room again
    assert schedules.with_queued_runs() == sorted([full.id, *room])
    assert idle.id not in schedules.with_queued_runs()


@pytest.mark.parametrize("env", [pytest.param("postgresql", marks=pytest.mark.postgres)],
                         indirect=True)
def test_a_queued_run_cancelled_during_the_claim_is_not_returned_as_claimed(env: Any) -> None:
    """Review (session 14), PostgreSQL: a queued run cancelled by another connection between
    ``claim_queued_runs``' SELECT of the oldest PENDING runs and its UPDATE stayed CANCELLED
    (the UPDATE re-checks ``state = PENDING``) but was still returned as claimed, so the firer
    called ``start_claimed`` on a CANCELLED run. The chosen rows are now locked: the cancel
    waits for the claim and finds the run RUNNING."""
    from sqlalchemy import event, update

    from twingraph.stores.metadata.schema import runs

    meta, schedules, _ = env
    proj, pipe = pipeline(meta)
    rec = make(schedules, proj, pipe, max_concurrency=2)
    for i in range(3):
        queued_run(meta, schedules, rec.id, f"q{i}", NOW + i)
    other = SQLMetadataStore(meta.url)
    cancelled: list[int] = []
    threads: list[threading.Thread] = []

    def cancel() -> None:                   # what ``cancel_pending`` does, on its own connection
        with other._writing() as conn:
            cancelled.append(conn.execute(
                update(runs).where(runs.c.run_id == "q0", runs.c.state == RunState.PENDING.value)
                .values(state=RunState.CANCELLED.value, ended_at=NOW, error="user")).rowcount)

    def between_select_and_update(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if not threads and statement.startswith("UPDATE runs SET state"):
            threads.append(threading.Thread(target=cancel))
            threads[0].start()
            threads[0].join(1.0)            # done, or waiting for the claim's row lock

    event.listen(meta._engine, "before_cursor_execute", between_select_and_update)
    try:
        claimed = schedules.claim_queued_runs(rec.id, NOW + 10)
    finally:
        event.remove(meta._engine, "before_cursor_execute", between_select_and_update)
        for t in threads:
            t.join(10)
        other.close()
    assert threads and cancelled == [0]     # the cancel came in the window, and lost
    states = {r: meta.get_run(r).state for r in claimed}  # type: ignore[union-attr]
    assert claimed == ["q0", "q1"] and set(states.values()) == {RunState.RUNNING}


def test_record_fire_never_goes_back_to_an_older_slot(env: Any) -> None:
    """Review (session 14): two firers firing consecutive slots record them in either order;
    the slower one (older slot) overwrote ``last_run_at``/``last_run_id`` with its older
    slot."""
    meta, schedules, _ = env
    proj, pipe = pipeline(meta)
    rec = make(schedules, proj, pipe)
    schedules.record_fire(rec.id, "newer", NOW + 7200)
    schedules.record_fire(rec.id, "older", NOW + 3600)
    got = schedules.get(rec.id)
    assert (got.last_run_at, got.last_run_id) == (NOW + 7200, "newer")
    schedules.record_fire(rec.id, "newest", NOW + 10800)
    assert schedules.get(rec.id).last_run_id == "newest"
    with pytest.raises(NotFoundError):
        schedules.record_fire("sched_nope", "r1", NOW)


# -- the decorator's schedule --------------------------------------------------------------

def test_upsert_decorator_schedule(env: Any) -> None:
    meta, schedules, clock = env
    proj, pipe = pipeline(meta)
    api = make(schedules, proj, pipe, expression="0 5 * * *")
    assert schedules.upsert_decorator_schedule(proj, pipe, None) is None
    clock.now = NOW + 0.5                                     # created after the API schedule
    created = schedules.upsert_decorator_schedule(proj, pipe, "0 */6 * * *")
    assert created is not None and created.source is ScheduleSource.DECORATOR
    assert (created.kind, created.expression, created.enabled) == (ScheduleKind.CRON, "0 */6 * * *", True)
    assert schedules.upsert_decorator_schedule(proj, pipe, "0 */6 * * *") == created     # unchanged
    clock.now = NOW + 1
    changed = schedules.upsert_decorator_schedule(proj, pipe, "0 0 * * *")
    assert changed is not None and changed.id == created.id and changed.expression == "0 0 * * *"
    disabled = schedules.upsert_decorator_schedule(proj, pipe, None)
    assert disabled is not None and (disabled.enabled, disabled.next_run_at) == (False, None)
    again = schedules.upsert_decorator_schedule(proj, pipe, "0 0 * * *")
    assert again is not None and again.id == created.id and again.enabled
    assert [r.id for r in schedules.find_for_pipeline(pipe)] == [created.id]
    assert [r.id for r in schedules.find_for_pipeline(pipe, source=None)] == [api.id, created.id]
    assert schedules.get(api.id) == api                                # API schedules untouched
    with pytest.raises(ValidationError):
        schedules.upsert_decorator_schedule(proj, pipe, "every day")


def test_concurrent_decorator_upserts_leave_one_schedule(env: Any) -> None:
    meta, schedules, _ = env
    proj, pipe = pipeline(meta)
    got: list[str] = []
    barrier = threading.Barrier(6)

    def loader() -> None:                       # six servers loading the same module at once
        barrier.wait()
        rec = schedules.upsert_decorator_schedule(proj, pipe, "0 */6 * * *")
        assert rec is not None
        got.append(rec.id)

    threads = [threading.Thread(target=loader) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6 and len(set(got)) == 1
    assert [r.id for r in schedules.find_for_pipeline(pipe)] == got[:1]
    with pytest.raises(NotFoundError):
        schedules.upsert_decorator_schedule(proj, "pipe_nope", "0 0 * * *")
