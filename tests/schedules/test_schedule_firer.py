"""``ScheduleFirer`` and ``backfill`` on a real SQLite file, with explicit times.

``Launcher`` is a real implementation of our own ``RunLauncher`` port for tests: it writes the
PENDING run rows the contract asks for (so the store's concurrency counting is exercised for
real) and records what it was asked to do; runs "end" when the test writes their end state.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from twingraph.core.records import RunRecord, RunUpdate
from twingraph.core.schedule import ScheduleRecord, logical_date
from twingraph.core.states import RunState
from twingraph.errors import NotFoundError, ValidationError
from twingraph.schedules import ScheduleFirer, backfill, run_params
from twingraph.stores.metadata import SQLMetadataStore, upgrade
from twingraph.stores.metadata.schedules import SQLScheduleStore

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=timezone.utc).timestamp()


class Launcher:
    def __init__(self, meta: SQLMetadataStore, schedules: SQLScheduleStore) -> None:
        self.meta, self.schedules = meta, schedules
        self.launched: list[tuple[str, float, bool, str]] = []
        self.started: list[str] = []
        self.fail_launch_for: set[str] = set()
        self.fail_start = False
        self._lock = threading.Lock()

    def launch(self, schedule: ScheduleRecord, slot: float, backfill: bool) -> str | None:
        if schedule.id in self.fail_launch_for:
            raise RuntimeError("engine unavailable")
        with self._lock:
            run_id = f"run{len(self.launched):03d}"
            self.meta.write([RunRecord(run_id, "etl", RunState.PENDING,
                                       params=run_params(schedule, slot),
                                       created_at=NOW + len(self.launched) / 1000)])
            self.schedules.link_run(schedule.id, run_id)
            self.launched.append((schedule.id, slot, backfill, run_id))
        return run_id

    def start_claimed(self, run_id: str) -> None:
        if self.fail_start:
            raise RuntimeError("no worker thread left")
        self.started.append(run_id)

    def finish(self, *run_ids: str) -> None:
        self.meta.write([RunUpdate(r, RunState.SUCCESS, NOW) for r in run_ids])

    def slots(self) -> list[str]:
        return [logical_date(slot) for _, slot, _, _ in self.launched]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating a new file per test is slow)."""
    path = tmp_path_factory.mktemp("firer") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def env(tmp_path: Path, template: Path) -> Iterator[tuple[SQLMetadataStore, SQLScheduleStore, Launcher]]:
    shutil.copyfile(template, tmp_path / "meta.db")
    meta = SQLMetadataStore(f"sqlite:///{tmp_path / 'meta.db'}", clock=lambda: NOW)
    schedules = SQLScheduleStore(meta)
    yield meta, schedules, Launcher(meta, schedules)
    meta.close()


def create(meta: SQLMetadataStore, schedules: SQLScheduleStore, **kw: Any) -> ScheduleRecord:
    pipe_id, _ = meta.upsert_pipeline("default", "etl", {"nodes": [], "edges": []})
    kw.setdefault("kind", "INTERVAL")
    kw.setdefault("expression", "1h")
    return schedules.create(project_id="default", pipeline_id=pipe_id, **kw)


H = 3600.0


def test_fires_each_slot_once_and_starts_the_run(env: Any) -> None:
    meta, schedules, launcher = env
    rec = create(meta, schedules)
    firer = ScheduleFirer(schedules, launcher)
    assert firer.tick(NOW + H - 1) == []
    assert firer.tick(NOW + H) == [(rec.id, NOW + H)]
    assert firer.tick(NOW + H + 1) == []                       # claimed: not again
    assert launcher.started == ["run000"]                      # started in the same tick
    run = meta.get_run("run000")
    assert run is not None and run.state is RunState.RUNNING
    assert run.params == {"logical_date": "2026-01-10T13:00:00Z"}
    got = schedules.get(rec.id)
    assert (got.next_run_at, got.last_run_at, got.last_run_id) == (NOW + 2 * H, NOW + H, "run000")
    launcher.finish("run000")
    assert firer.tick(NOW + 2 * H + 5) == [(rec.id, NOW + 2 * H)]
    assert [b for _, _, b, _ in launcher.launched] == [False, False]


def test_no_catchup_fires_only_the_latest_missed_slot(env: Any) -> None:
    meta, schedules, launcher = env
    rec = create(meta, schedules)
    firer = ScheduleFirer(schedules, launcher)
    assert firer.tick(NOW + 5.5 * H) == [(rec.id, NOW + 5 * H)]
    assert schedules.get(rec.id).next_run_at == NOW + 6 * H


def test_catchup_fires_every_missed_slot_in_order_bounded(env: Any) -> None:
    meta, schedules, launcher = env
    rec = create(meta, schedules, catchup=True, max_concurrency=2)
    firer = ScheduleFirer(schedules, launcher, max_catchup=3)
    fired = firer.tick(NOW + 5.5 * H)
    assert fired == [(rec.id, NOW + 3 * H), (rec.id, NOW + 4 * H), (rec.id, NOW + 5 * H)]
    assert launcher.started == ["run000", "run001"]            # the third waits for room
    launcher.finish("run000")
    assert firer.tick(NOW + 5.6 * H) == [] and launcher.started[-1] == "run002"
    assert schedules.get(rec.id).next_run_at == NOW + 6 * H


def test_overlap_skip_claims_but_does_not_launch(env: Any) -> None:
    meta, schedules, launcher = env
    rec = create(meta, schedules)                               # skip, max_concurrency=1
    firer = ScheduleFirer(schedules, launcher)
    assert firer.tick(NOW + H) == [(rec.id, NOW + H)]
    assert firer.tick(NOW + 2 * H) == []                        # run000 still running: skipped
    assert schedules.get(rec.id).next_run_at == NOW + 3 * H     # ...but the slot was claimed
    assert len(launcher.launched) == 1
    launcher.finish("run000")
    assert firer.tick(NOW + 3 * H) == [(rec.id, NOW + 3 * H)]


def test_overlap_allow_queues_until_there_is_room(env: Any) -> None:
    meta, schedules, launcher = env
    rec = create(meta, schedules, overlap_policy="allow")
    firer = ScheduleFirer(schedules, launcher)
    firer.tick(NOW + H)
    assert firer.tick(NOW + 2 * H) == [(rec.id, NOW + 2 * H)]   # created...
    assert launcher.started == ["run000"]                        # ...not started: max 1
    pending = meta.get_run("run001")
    assert pending is not None and pending.state is RunState.PENDING
    launcher.finish("run000")
    firer.tick(NOW + 2 * H + 1)
    assert launcher.started == ["run000", "run001"]


def test_a_failing_launch_is_logged_and_other_schedules_still_fire(env: Any, caplog: Any) -> None:
    meta, schedules, launcher = env
    bad = create(meta, schedules)
    good = create(meta, schedules, expression="30m")
    launcher.fail_launch_for.add(bad.id)
    firer = ScheduleFirer(schedules, launcher)
    assert firer.tick(NOW + H) == [(good.id, NOW + H)]           # 30m slot NOW+1h is the latest
    assert "engine unavailable" in caplog.text
    assert schedules.get(bad.id).next_run_at == NOW + 2 * H       # claimed: at most once


def test_a_failing_start_fails_the_run_and_frees_the_slot(env: Any) -> None:
    meta, schedules, launcher = env
    rec = create(meta, schedules)
    launcher.fail_start = True
    firer = ScheduleFirer(schedules, launcher)
    firer.tick(NOW + H)
    run = meta.get_run("run000")
    assert run is not None and run.state is RunState.FAILED and "no worker thread" in (run.error or "")
    assert schedules.active_runs(rec.id) == 0
    launcher.fail_start = False
    assert firer.tick(NOW + 2 * H) == [(rec.id, NOW + 2 * H)]
    assert launcher.started == ["run001"]


def test_an_edit_between_due_and_claim_wins(env: Any) -> None:
    meta, schedules, launcher = env
    rec = create(meta, schedules)

    class EditingStore(SQLScheduleStore):
        def claim(self, schedule_id: str, expected: float, new: float) -> bool:
            schedules.update(schedule_id, expression="2h")   # lands after due(), before claim
            return super().claim(schedule_id, expected, new)

    firer = ScheduleFirer(EditingStore(meta), launcher)
    assert firer.tick(NOW + H) == [] and launcher.launched == []
    assert schedules.get(rec.id).next_run_at == NOW + 2 * H


def test_two_firers_on_one_database_fire_each_slot_once(env: Any) -> None:
    meta, schedules, launcher = env
    rec = create(meta, schedules, overlap_policy="allow", max_concurrency=100)
    other = SQLMetadataStore(meta.url, clock=lambda: NOW)
    try:
        firers = [ScheduleFirer(schedules, launcher), ScheduleFirer(SQLScheduleStore(other), launcher)]
        for k in range(1, 11):
            for firer in firers if k % 2 else reversed(firers):
                firer.tick(NOW + k * H)
    finally:
        other.close()
    assert [slot for _, slot, _, _ in launcher.launched] == [NOW + k * H for k in range(1, 11)]
    assert {sid for sid, _, _, _ in launcher.launched} == {rec.id}


def test_thread_fires_on_the_clock_and_stops_at_once(env: Any) -> None:
    meta, schedules, launcher = env
    rec = create(meta, schedules)
    now = [NOW]
    firer = ScheduleFirer(schedules, launcher, clock=lambda: now[0], poll_interval=0.01)
    firer.start()
    try:
        now[0] = NOW + H
        deadline = time.monotonic() + 10
        while not launcher.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert launcher.launched[0][:2] == (rec.id, NOW + H) and launcher.started == ["run000"]
        assert firer.running and firer.ticks > 0
    finally:
        firer.stop()
    assert not firer.running
    slow = ScheduleFirer(schedules, launcher, poll_interval=3600)
    slow.start()
    begun = time.monotonic()
    slow.stop()                         # wakes the hour-long wait
    assert time.monotonic() - begun < 5 and not slow.running


def test_thread_survives_a_failing_tick(env: Any) -> None:
    meta, schedules, launcher = env
    create(meta, schedules)
    calls = [0]

    def clock() -> float:
        calls[0] += 1
        if calls[0] == 1:
            raise OSError("clock source unavailable")
        return NOW + H

    firer = ScheduleFirer(schedules, launcher, clock=clock, poll_interval=0.01)
    firer.start()
    try:
        deadline = time.monotonic() + 10
        while not launcher.started and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        firer.stop()
    assert launcher.started == ["run000"]


def _queue(meta: SQLMetadataStore, schedules: SQLScheduleStore, schedule_id: str,
           run_ids: list[str]) -> None:
    meta.write([RunRecord(r, "etl", RunState.PENDING, created_at=NOW + i)
                for i, r in enumerate(run_ids)])
    for r in run_ids:
        schedules.link_run(schedule_id, r)


def test_more_schedules_with_a_backlog_than_a_batch_all_get_their_runs_started(env: Any) -> None:
    """Review (session 14): a tick started queued runs only for the first ``batch`` schedules
    (by id) with PENDING runs, full or not. 101 schedules with max_concurrency=1 and a backlog
    of two: the first 100 held the page forever and the 101st never started a run."""
    meta, schedules, launcher = env
    pipe_id, _ = meta.upsert_pipeline("default", "etl", {"nodes": [], "edges": []})
    ids = sorted(schedules.create(project_id="default", pipeline_id=pipe_id, kind="INTERVAL",
                                  expression="1h", enabled=False).id for _ in range(101))
    for i, sid in enumerate(ids):
        _queue(meta, schedules, sid, [f"b{i:03d}_0", f"b{i:03d}_1"])
    firer = ScheduleFirer(schedules, launcher)                   # batch = 100
    firer.tick(NOW)
    firer.tick(NOW)
    assert sorted(launcher.started) == [f"b{i:03d}_0" for i in range(101)]


def test_schedules_whose_runs_end_at_once_do_not_starve_the_later_ones(env: Any) -> None:
    """The other face of the same starvation: runs that end within a tick give the first
    ``batch`` schedules room again at every tick, so leaving out full schedules is not enough;
    every tick pages through all schedules with room."""
    meta, schedules, launcher = env
    pipe_id, _ = meta.upsert_pipeline("default", "etl", {"nodes": [], "edges": []})
    ids = sorted(schedules.create(project_id="default", pipeline_id=pipe_id, kind="INTERVAL",
                                  expression="1h", enabled=False).id for _ in range(7))
    for i, sid in enumerate(ids):
        _queue(meta, schedules, sid, [f"e{i}_{j}" for j in range(3)])

    def start_and_end(run_id: str) -> None:
        launcher.started.append(run_id)
        launcher.finish(run_id)
    launcher.start_claimed = start_and_end                       # type: ignore[method-assign]
    firer = ScheduleFirer(schedules, launcher, batch=3)
    firer.tick(NOW)
    assert sorted(launcher.started) == [f"e{i}_0" for i in range(7)]
    firer.tick(NOW)
    firer.tick(NOW)
    assert sorted(launcher.started) == sorted(f"e{i}_{j}" for i in range(7) for j in range(3))


def test_start_after_a_timed_out_stop_never_runs_a_second_loop(env: Any) -> None:
    """Review (session 14): ``stop(timeout)`` forgot its thread even when the join timed out
    (a tick blocked on a slow database), so a later ``start()`` started a second loop next to
    the old one, which then also kept polling: two loops in one process. Now ``start()``
    revives the old thread while it is alive, and a new one starts only after it ended."""
    meta, schedules, launcher = env
    release = threading.Event()
    lock = threading.Lock()
    inside = [0, 0]                                              # now, most at once

    class SlowDue(SQLScheduleStore):
        first = True

        def due(self, now: float, limit: int = 100) -> list[ScheduleRecord]:
            with lock:
                inside[0] += 1
                inside[1] = max(inside)
            try:
                if SlowDue.first:
                    SlowDue.first = False
                    release.wait(10)
                return super().due(now, limit)
            finally:
                with lock:
                    inside[0] -= 1

    def count() -> int:
        return sum(t.name == "twingraph-schedule-firer" and t.is_alive()
                   for t in threading.enumerate())
    others = count()                                             # other tests' firers, if any

    def loops() -> int:
        return count() - others

    firer = ScheduleFirer(SlowDue(meta), launcher, poll_interval=0.01)
    firer.start()
    try:
        deadline = time.monotonic() + 10
        while inside[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        stopped = firer.stop(timeout=0.1)                        # stuck in its tick
        assert not firer.running and loops() == 1
        firer.start()                                            # the old thread goes on
        assert loops() == 1 and firer.running and stopped is False
        release.set()
        ticks = firer.ticks
        while firer.ticks < ticks + 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert firer.ticks >= ticks + 5 and loops() == 1 and inside[1] == 1
    finally:
        release.set()
        final_stop = firer.stop(timeout=10)
    assert final_stop is True and loops() == 0 and not firer.running
    firer.start()                                                # a fresh thread after a clean stop
    try:
        assert firer.running and loops() == 1
    finally:
        firer.stop(timeout=10)


# -- backfill ------------------------------------------------------------------------------

def test_backfill_count_creates_queued_runs_started_within_max_concurrency(env: Any) -> None:
    meta, schedules, launcher = env
    rec = create(meta, schedules, kind="CRON", expression="0 2 * * *", max_concurrency=2,
                 params={"region": "eu"})
    slots = backfill(schedules, rec.id, launcher.launch, count=5, now=NOW)
    days = ["2026-01-06", "2026-01-07", "2026-01-08", "2026-01-09", "2026-01-10"]
    assert [logical_date(s) for s in slots] == [f"{d}T02:00:00Z" for d in days]
    assert [b for _, _, b, _ in launcher.launched] == [True] * 5
    first = meta.get_run("run000")
    assert first is not None and first.state is RunState.PENDING
    assert first.params == {"region": "eu", "logical_date": "2026-01-06T02:00:00Z"}
    firer = ScheduleFirer(schedules, launcher)
    firer.tick(NOW)
    assert launcher.started == ["run000", "run001"]             # oldest first, two at a time
    firer.tick(NOW)
    assert len(launcher.started) == 2
    launcher.finish("run001")
    firer.tick(NOW)
    assert launcher.started == ["run000", "run001", "run002"]
    launcher.finish("run000", "run002")
    firer.tick(NOW)
    firer.tick(NOW)
    assert launcher.started == ["run000", "run001", "run002", "run003", "run004"]
    assert schedules.get(rec.id).last_run_at is None             # a backfill is not a fire


def test_backfill_range_and_bad_requests_create_nothing(env: Any) -> None:
    meta, schedules, launcher = env
    rec = create(meta, schedules, kind="CRON", expression="0 2 * * *")
    slots = backfill(schedules, rec.id, launcher.launch, start=NOW - 3 * 86400, end=NOW - 86400,
                     now=NOW)
    assert [logical_date(s) for s in slots] == ["2026-01-08T02:00:00Z", "2026-01-09T02:00:00Z"]
    before = len(launcher.launched)
    for bad in ({}, {"count": 0}, {"count": 1001}, {"count": 3, "start": NOW - 86400},
                {"count": 3, "end": NOW}, {"start": NOW - 86400, "end": NOW + 86400},
                {"start": NOW, "end": NOW - 86400}, {"start": NOW - 1100 * 86400}):
        with pytest.raises(ValidationError):
            backfill(schedules, rec.id, launcher.launch, now=NOW, **bad)
    assert len(launcher.launched) == before
    with pytest.raises(NotFoundError):
        backfill(schedules, "sched_nope", launcher.launch, count=1, now=NOW)


def test_backfill_of_an_interval_goes_before_the_schedule_existed(env: Any) -> None:
    meta, schedules, launcher = env
    rec = create(meta, schedules, expression="6h", enabled=False)
    slots = backfill(schedules, rec.id, launcher.launch, count=3, now=NOW + 1)
    assert slots == [NOW - 12 * H, NOW - 6 * H, NOW]


def test_backfill_that_reaches_before_year_one_is_refused_and_creates_nothing(env: Any) -> None:
    """Interval slots go back from the schedule's creation without bound: the last 30 slots of
    a 36500-day interval lie ~3000 years before year 1, which no ``logical_date`` can spell.
    That was a ValueError from the first launch (a 500 over REST); it is a ValidationError
    (422) now, raised before any run is created."""
    meta, schedules, launcher = env
    rec = create(meta, schedules, expression="36500d", enabled=False)
    with pytest.raises(ValidationError, match="before year 1"):
        backfill(schedules, rec.id, launcher.launch, count=30, now=NOW)
    assert launcher.launched == []
    assert len(backfill(schedules, rec.id, launcher.launch, count=2, now=NOW)) == 2   # 1926 is fine
