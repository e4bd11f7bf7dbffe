"""A live driver on a SQLite home is never taken over (session 28 review, decision 0089). Its
heartbeat can go stale while it lives: another process holding SQLite's write lock for longer
than the live window, or a component holding the GIL. `run --resume` then claimed the healthy
run and ran its finished work again. Now the driver holds a lock file while it drives the run,
and a resume, `runs cancel` and a server's adoption ask the kernel first.

Real processes on a real SQLite home: the driver is stopped (SIGSTOP, so it cannot beat) and
its recorded heartbeat is aged, which is what a long stall looks like from outside."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from twingraph.engine.engine import Engine
from twingraph.errors import ConflictError
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.results.sqlite import SQLiteStorage

pytestmark = pytest.mark.timeout(180)

PIPELINE = textwrap.dedent("""
    import time
    from twingraph import component, pipeline

    @component
    def long_s28(i: int) -> int:
        time.sleep(60 if i == 0 else 0)
        return i

    @pipeline(name="locked_s28")
    def locked():
        return [long_s28(i=i)["outputs"]["result"] for i in range(2)]
""")


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, TWINGRAPH_HOME=str(home))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    return env


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "twingraph", *args], cwd=tmp_path,
                          env=_env(tmp_path / "home"), capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def _running_run(db: Path, deadline: float) -> str:
    while time.monotonic() < deadline:
        if db.exists():
            try:
                con = sqlite3.connect(db)
                row = con.execute("SELECT run_id FROM runs WHERE state = 'RUNNING'").fetchone()
                con.close()
            except sqlite3.Error:
                row = None
            if row:
                return str(row[0])
        time.sleep(0.1)
    raise AssertionError("the run never started")


def test_a_stalled_live_driver_is_not_taken_over_and_a_killed_one_is_at_once(tmp_path) -> None:
    (tmp_path / "locked_s28.py").write_text(PIPELINE)
    db = tmp_path / "home" / "twingraph.db"
    driver = subprocess.Popen([sys.executable, "-m", "twingraph", "run", "locked_s28.py",
                               "--no-progress"], cwd=tmp_path, env=_env(tmp_path / "home"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_id = _running_run(db, time.monotonic() + 60)
        time.sleep(0.5)
        os.kill(driver.pid, signal.SIGSTOP)             # alive, and it cannot beat
        con = sqlite3.connect(db)
        con.execute("UPDATE runs SET heartbeat_at = heartbeat_at - 600 WHERE run_id = ?",
                    (run_id,))
        con.commit()
        con.close()

        t0 = time.monotonic()
        out = _cli(tmp_path, "run", "locked_s28.py", "--resume", run_id, "--no-progress")
        assert out.returncode != 0, out.stdout           # it took the run over before
        assert f"still being driven by process {driver.pid}" in out.stderr, out.stderr
        out = _cli(tmp_path, "runs", "cancel", run_id)
        assert out.returncode != 0 and f"process {driver.pid}" in out.stderr, out.stderr
        assert time.monotonic() - t0 < 30                 # refused at once, not watched

        os.kill(driver.pid, signal.SIGKILL)               # now it is gone
        driver.wait(10)
        out = _cli(tmp_path, "runs", "cancel", run_id)
        assert out.returncode == 0, out.stderr
        assert not list((tmp_path / "home" / "twingraph.db-drivers").iterdir())
    finally:
        if driver.poll() is None:
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait(10)


def test_the_lock_is_held_while_the_run_lasts_and_let_go_after(tmp_path) -> None:
    meta = SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True)
    eng = Engine(results=SQLiteStorage(str(tmp_path / "r.db")), metadata=meta)
    other = Engine(results=SQLiteStorage(str(tmp_path / "r.db")),
                   metadata=SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}"))
    seen: dict[str, object] = {}

    def body(loop):
        seen["alive"] = eng.driver_alive(loop.run_id)
        eng.recorder.flush(loop.run_id)                 # its row is in the store
        # another engine (another driver) in this process: the lock is per open file
        try:
            other.end_driverless(loop.run_id)
        except ConflictError as exc:
            seen["refused"] = str(exc)
        return 1

    try:
        r = eng.run(body, pipeline="lock_s28")
        assert r.value == 1
        assert seen["alive"] == os.getpid()
        assert "holds the run's lock" in str(seen["refused"])
        assert eng.driver_alive(r.run_id) is None and other.driver_alive(r.run_id) is None
        assert not list((tmp_path / "m.db-drivers").iterdir())
    finally:
        other.close()
        eng.close()


FORKS = textwrap.dedent("""
    import os, time
    from twingraph import component, pipeline

    @component(executor="thread")
    def forks_s28(i: int) -> int:
        if os.fork() == 0:             # a child that outlives its parent (a pool worker...)
            time.sleep(60)
            os._exit(0)
        time.sleep(60)
        return i

    @pipeline(name="forks_s28")
    def forks():
        return forks_s28(i=1)
""")


def test_a_forked_child_does_not_keep_a_killed_drivers_run_alive(tmp_path) -> None:
    (tmp_path / "forks_s28.py").write_text(FORKS)
    db = tmp_path / "home" / "twingraph.db"
    driver = subprocess.Popen([sys.executable, "-m", "twingraph", "run", "forks_s28.py",
                               "--no-progress"], cwd=tmp_path, env=_env(tmp_path / "home"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        run_id = _running_run(db, time.monotonic() + 60)
        time.sleep(1.0)                                   # the child is forked
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(10)
        con = sqlite3.connect(db)
        con.execute("UPDATE runs SET heartbeat_at = heartbeat_at - 600 WHERE run_id = ?",
                    (run_id,))
        con.commit()
        con.close()
        out = _cli(tmp_path, "runs", "cancel", run_id)
        assert out.returncode == 0, out.stderr            # the child held the lock
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)         # the forked child too
        except ProcessLookupError:
            pass
        if driver.poll() is None:
            driver.wait(10)


def test_a_refused_second_resume_in_the_driving_engine_leaves_its_lock_held(tmp_path) -> None:
    meta = SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True)
    eng = Engine(results=SQLiteStorage(str(tmp_path / "r.db")), metadata=meta)
    seen: dict[str, object] = {}

    def body(loop):
        eng.recorder.flush(loop.run_id)
        con = sqlite3.connect(tmp_path / "m.db")     # a stale heartbeat: it was taken over
        con.execute("UPDATE runs SET heartbeat_at = heartbeat_at - 600")
        con.commit()
        con.close()
        try:
            eng.run(lambda _: None, pipeline="again_s28", run_id=loop.run_id, resume=True)
        except ConflictError as exc:
            seen["refused"] = str(exc)
        seen["alive"] = Engine(results=SQLiteStorage(str(tmp_path / "r.db")),
                               metadata=SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}")
                               ).driver_alive(loop.run_id)
        return 1

    try:
        r = eng.run(body, pipeline="again_s28")
        assert r.value == 1, r.error
        assert "driven by this process" in str(seen["refused"])    # at once, not watched
        assert seen["alive"] == os.getpid()       # its lock was let go by the refused resume
    finally:
        eng.close()


def test_a_database_reached_through_a_symlink_shares_its_runs_locks(tmp_path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    SQLMetadataStore(f"sqlite:///{real / 'm.db'}", create=True).close()
    (tmp_path / "link.db").symlink_to(real / "m.db")
    by_path = Engine(results=SQLiteStorage(str(tmp_path / "r.db")),
                     metadata=SQLMetadataStore(f"sqlite:///{real / 'm.db'}"))
    by_link = Engine(results=SQLiteStorage(str(tmp_path / "r.db")),
                     metadata=SQLMetadataStore(f"sqlite:///{tmp_path / 'link.db'}"))
    seen: dict[str, object] = {}

    def body(loop):
        seen["alive"] = by_link.driver_alive(loop.run_id)
        return 1

    try:
        assert by_path.run(body, pipeline="symlink_s28").value == 1
        assert seen["alive"] == os.getpid()
    finally:
        by_link.close()
        by_path.close()
