"""``overlap_policy='skip'`` holds with two firers on one database (SQLite file, PostgreSQL).

The race (docs/decisions/0073-skip-overlap-atomic.md): two replicas fire consecutive slots of
one schedule at the same moment. Firer A (its clock at slot 1) has claimed slot 1, found no
active run and is creating its run; firer B (its clock at slot 2) claims slot 2, also finds no
active run, and creates one too. ``max_concurrency=1`` with 'skip' promises one run; there were
two.

The interleaving is forced, not timed: the two replicas are two ``SQLMetadataStore`` objects on
one database, each with its own ``ScheduleFirer`` and launcher, and both firers get explicit
times. A's launcher, inside ``launch`` (after A's claim and its overlap check, before its run
exists), runs B's whole tick on another thread and lets A go on only once B has either finished
its tick or is waiting for a lock that A holds. Without the fix B finishes, having created a
second run; with it B waits for the fire lock A holds (PostgreSQL: an advisory lock; SQLite: an
flock), then finds A's run and skips.

How "B is waiting" is observed, with no mock or patch: on PostgreSQL the server says so
(``pg_blocking_pids`` of B's session); on SQLite, where no DBMS view shows a waiter, B's store is
``HookedStore``, a subclass of the real ``SQLScheduleStore`` whose ``firing`` sets an event just
before calling the real method (which then waits on the lock A holds). Everything else — stores,
SQL, locks, the firers, the launchers writing real PENDING run rows — is the real thing.

Replicas are OS processes; on SQLite the lock between processes is an ``flock``, checked by
``test_sqlite_fire_lock_holds_off_another_process``: a child process asks for the lock this
process holds, and the kernel's lock table (``/proc/locks``) shows it waiting.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from twingraph.core.records import RunRecord
from twingraph.core.schedule import ScheduleRecord
from twingraph.core.states import RunState
from twingraph.schedules import ScheduleFirer, run_params
from twingraph.stores.metadata import SQLMetadataStore, upgrade
from twingraph.stores.metadata._engine import make_engine
from twingraph.stores.metadata.schedules import SQLScheduleStore
from twingraph.stores.metadata.schema import runs

# Whoever adds a schedule store backend adds it here.
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=timezone.utc).timestamp()
H = 3600.0
WAIT = 30.0         # seconds; only a broken build ever waits this long


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(backend, URL) of a fresh, migrated database: a SQLite file, or a PostgreSQL database
    of its own (so no other test's schedule is due, and no other session shows as blocked)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'meta.db'}"
        upgrade(url)
        yield "sqlite", url
        return
    psycopg = pytest.importorskip("psycopg")
    base: str = request.getfixturevalue("postgres_url")
    admin_url = base.replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"twingraph_skip_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = base.rsplit("/", 1)[0] + f"/{name}"
            upgrade(url)
            yield "postgresql", url
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Launcher:
    """A real ``RunLauncher`` of one replica: writes the PENDING run row (``schedule_id`` set)
    through that replica's store, as the port asks. ``before_first_launch`` runs once, inside
    the first ``launch``, before the run is written."""

    def __init__(self, meta: SQLMetadataStore, schedules: SQLScheduleStore, name: str,
                 before_first_launch: Callable[[], None] | None = None) -> None:
        self.meta, self.schedules, self.name = meta, schedules, name
        self.before_first_launch = before_first_launch
        self.launched: list[tuple[float, str]] = []
        self.started: list[str] = []

    def launch(self, schedule: ScheduleRecord, slot: float, backfill: bool) -> str | None:
        hook, self.before_first_launch = self.before_first_launch, None
        if hook is not None:
            hook()
        run_id = f"{self.name}-{len(self.launched)}"
        self.meta.write([RunRecord(run_id, "etl", RunState.PENDING,
                                   params=run_params(schedule, slot), created_at=slot)])
        self.schedules.link_run(schedule.id, run_id)
        self.launched.append((slot, run_id))
        return run_id

    def start_claimed(self, run_id: str) -> None:
        self.started.append(run_id)


class HookedStore(SQLScheduleStore):
    """The real store; ``entering_fire_lock`` is set just before ``firing`` takes the lock."""

    def __init__(self, meta: SQLMetadataStore) -> None:
        super().__init__(meta)
        self.entering_fire_lock = threading.Event()

    @contextmanager
    def firing(self, schedule_id: str) -> Iterator[Any]:
        self.entering_fire_lock.set()
        with super().firing(schedule_id) as section:
            yield section


def blocked_sessions(url: str) -> Callable[[], bool]:
    """True while a session of this PostgreSQL database waits for a lock another one holds."""
    engine = make_engine(url)
    query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                 "AND cardinality(pg_blocking_pids(pid)) > 0")

    def probe() -> bool:
        with engine.connect() as conn:
            return bool(conn.execute(query).scalar_one())
    probe.dispose = engine.dispose      # type: ignore[attr-defined]
    return probe


@contextmanager
def two_replicas(url: str, backend: str) -> Iterator[tuple[SQLMetadataStore, SQLMetadataStore,
                                                             Callable[[], bool]]]:
    """Two replicas' metadata stores on one database, and the blocked-session probe (always
    False on SQLite, where no DBMS view shows a waiter); closed afterwards."""
    meta_a = SQLMetadataStore(url, clock=lambda: NOW)
    meta_b = SQLMetadataStore(url, clock=lambda: NOW)
    probe = blocked_sessions(url) if backend == "postgresql" else (lambda: False)
    try:
        yield meta_a, meta_b, probe
    finally:
        getattr(probe, "dispose", lambda: None)()
        meta_a.close()
        meta_b.close()


def test_skip_with_two_firers_creates_one_run_for_consecutive_slots(
        database: tuple[str, str]) -> None:
    backend, url = database
    with two_replicas(url, backend) as (meta_a, meta_b, probe):
        store_a, store_b = SQLScheduleStore(meta_a), HookedStore(meta_b)
        pipe_id, _ = meta_a.upsert_pipeline("default", "etl", {"nodes": [], "edges": []})
        rec = store_a.create(project_id="default", pipeline_id=pipe_id, kind="INTERVAL",
                             expression="1h")
        assert (rec.overlap_policy.value, rec.max_concurrency, rec.catchup) == ("skip", 1, False)
        assert rec.next_run_at == NOW + H

        launcher_b = Launcher(meta_b, store_b, "b")
        firer_b = ScheduleFirer(store_b, launcher_b)
        b_fired: list[Any] = []
        b_done = threading.Event()
        trace: list[str] = []

        def tick_b() -> None:
            try:
                b_fired.extend(firer_b.tick(NOW + 2 * H + 1))      # slot 2 is B's latest
            finally:
                b_done.set()

        def b_ticks_now() -> None:
            """A is past its claim and its overlap check; its run does not exist yet."""
            thread = threading.Thread(target=tick_b, name="firer-b")
            thread.start()
            threads.append(thread)
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                if b_done.is_set():
                    trace.append("b finished")
                    return
                if store_b.entering_fire_lock.is_set() or probe():
                    trace.append("b waits for a")
                    return
                time.sleep(0.002)
            trace.append("timed out")

        threads: list[threading.Thread] = []
        launcher_a = Launcher(meta_a, store_a, "a", before_first_launch=b_ticks_now)
        firer_a = ScheduleFirer(store_a, launcher_a)
        a_fired = firer_a.tick(NOW + H + 1)                        # slot 1 is A's latest
        for thread in threads:
            thread.join(WAIT)
            assert not thread.is_alive(), "firer B did not finish its tick"

        assert trace in (["b finished"], ["b waits for a"]), trace
        assert a_fired == [(rec.id, NOW + H)]
        launched = launcher_a.launched + launcher_b.launched
        # The bug: B finished while A was creating its run, and both created one.
        assert len(launched) == 1, (
            f"overlap_policy='skip' with max_concurrency=1 created {len(launched)} runs: "
            f"{launched} ({trace})")
        assert b_fired == []
        with meta_a._reading() as conn:
            n = conn.execute(select(func.count()).select_from(runs)
                             .where(runs.c.schedule_id == rec.id)).scalar_one()
        assert n == 1
        assert store_a.active_runs(rec.id) == 1
        got = store_a.get(rec.id)
        assert got.next_run_at == NOW + 3 * H          # both slots were claimed, once each
        assert (got.last_run_at, got.last_run_id) == (NOW + H, "a-0")
        # started once, by whichever firer served the queue first after A's fire
        assert launcher_a.started + launcher_b.started == ["a-0"]


@pytest.mark.parametrize("competitor", ["delete_pipeline", "decorator_schedule"])
def test_a_skip_fire_does_not_deadlock_with_the_pipelines_delete_or_a_schedule_upsert(
        database: tuple[str, str], competitor: str) -> None:
    """While a 'skip' fire is launching its run (inside the fire section), another request
    deletes the schedule's pipeline (the cascade deletes the schedule) or re-syncs the
    pipeline's decorator schedule: both lock the pipeline's row, then need the schedule's.
    The launcher's run INSERT checks the pipeline's row too. A fire section that held the
    schedule's row (its first version, on PostgreSQL) made a cycle PostgreSQL cannot see:
    section -> INSERT (same thread) -> the request -> section. Everything must finish."""
    from twingraph.stores.metadata.catalog_store import SQLCatalog
    backend, url = database
    with two_replicas(url, backend) as (meta_a, meta_b, probe):
        store_a, store_b = SQLScheduleStore(meta_a), SQLScheduleStore(meta_b)
        pipe_id, _ = meta_a.upsert_pipeline("default", "etl", {"nodes": [], "edges": []})
        if competitor == "delete_pipeline":
            rec = store_a.create(project_id="default", pipeline_id=pipe_id, kind="INTERVAL",
                                 expression="1h")
        else:
            rec = store_a.upsert_decorator_schedule("default", pipe_id, "0 * * * *")
        assert rec is not None and rec.overlap_policy.value == "skip" and not rec.catchup
        outcome: dict[str, Any] = {}

        def compete() -> None:
            try:
                if competitor == "delete_pipeline":
                    SQLCatalog(meta_b).delete_pipeline(pipe_id)
                else:
                    store_b.upsert_decorator_schedule("default", pipe_id, "30 * * * *")
                outcome["ok"] = True
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = repr(exc)

        threads: list[threading.Thread] = []

        def request_now() -> None:
            """Inside the fire section, before the run's INSERT: the request starts and gets
            as far as it can (on PostgreSQL until it waits, or it finishes)."""
            thread = threading.Thread(target=compete, name="request")
            thread.start()
            threads.append(thread)
            deadline = time.monotonic() + 5.0
            while thread.is_alive() and not probe() and time.monotonic() < deadline:
                time.sleep(0.005)

        firer = ScheduleFirer(store_a, Launcher(meta_a, store_a, "a",
                                                before_first_launch=request_now))
        tick: dict[str, Any] = {}

        def run_tick() -> None:
            try:
                tick["fired"] = firer.tick(rec.next_run_at + 1)
            except BaseException as exc:  # noqa: BLE001 - the firer logs launch errors itself
                tick["error"] = repr(exc)
        ticker = threading.Thread(target=run_tick, name="firer")
        ticker.start()
        ticker.join(WAIT)
        assert not ticker.is_alive(), "the firer's tick never ended: deadlocked"
        for thread in threads:
            thread.join(WAIT)
            assert not thread.is_alive(), f"{competitor} never ended: deadlocked"
        assert outcome == {"ok": True}, outcome
        assert "error" not in tick, tick


CHILD = """
import sys
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.metadata.schedules import SQLScheduleStore
meta = SQLMetadataStore(sys.argv[1])
store = SQLScheduleStore(meta)
print("asking", flush=True)
with store.firing(sys.argv[2]) as section:
    print("inside", section is not None, flush=True)
meta.close()
"""


def flock_waiters(path: Path) -> int:
    """Processes waiting for an ``flock`` on ``path``, from the kernel's lock table."""
    inode = f":{os.stat(path).st_ino} "
    with open("/proc/locks") as table:
        return sum(1 for line in table if "->" in line and "FLOCK" in line and inode in line)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_sqlite_fire_lock_holds_off_another_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    upgrade(url)
    meta = SQLMetadataStore(url, clock=lambda: NOW)
    child: subprocess.Popen[str] | None = None
    try:
        store = SQLScheduleStore(meta)
        pipe_id, _ = meta.upsert_pipeline("default", "etl", {"nodes": [], "edges": []})
        rec = store.create(project_id="default", pipeline_id=pipe_id, kind="INTERVAL",
                           expression="1h")
        with store.firing(rec.id) as section:
            assert section is not None and section.active_runs() == 0
            lock_file = tmp_path / "meta.db-fire.lock"
            assert lock_file.exists()
            child = subprocess.Popen([sys.executable, "-c", CHILD, url, rec.id],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert child.stdout is not None and child.stdout.readline().strip() == "asking"
            deadline = time.monotonic() + WAIT
            while flock_waiters(lock_file) == 0 and child.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.005)
            assert child.poll() is None, "the other process got the fire lock this one holds"
            assert flock_waiters(lock_file) == 1
        out, err = child.communicate(timeout=WAIT)
        assert child.returncode == 0, err
        assert out.strip() == "inside True"
        with store.firing("sched_gone") as gone:        # a deleted schedule: nothing to fire
            assert gone is None
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        meta.close()
