"""A lock file a killed driver left behind proves it dead (session 29, decision 0090).

Before, a resume or a `runs cancel` of a run whose driver was killed -9 a moment ago watched
the run's heartbeat for up to the live window (~11 s) to be sure the driver was gone, and a
server adopted such a run only once its heartbeat was 30 s old. On a SQLite home the driver's
lock file says it at once: a driver that lets go removes the file first, so a file left
behind, free, holding a pid that no longer exists, was held by a driver that died holding it.

Real `twingraph` processes killed with SIGKILL on a real SQLite home."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twingraph.core.records import RunRecord
from twingraph.core.states import RunState
from twingraph.engine.driverlock import _HOST, DriverLocks
from twingraph.engine.engine import LIVE_WINDOW, Engine
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.results.sqlite import SQLiteStorage

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
CRASHY = ROOT / "tests" / "resources" / "crashy.py"


def _env(tmp_path: Path, marks: Path) -> dict[str, str]:
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"), TG_MARKS=str(marks))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    return env


def _killed_half_way(tmp_path: Path) -> tuple[str, dict[str, str], int]:
    """A `twingraph run` of the crashy pipeline killed -9 after four steps: its run id, the
    environment and the dead driver's pid."""
    marks = tmp_path / "marks"
    marks.mkdir()
    env = _env(tmp_path, marks)
    proc = subprocess.Popen([sys.executable, "-m", "twingraph", "run", str(CRASHY), "--param",
                             "n=12", "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(marks.iterdir())) < 4:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    store = SQLMetadataStore(f"sqlite:///{tmp_path / 'home' / 'twingraph.db'}")
    (run,) = store.list_runs(pipeline="crashy")
    assert run.state is RunState.RUNNING
    store.close()
    return run.run_id, env, proc.pid


def _lock_dir(tmp_path: Path) -> Path:
    return tmp_path / "home" / "twingraph.db-drivers"


def test_a_resume_after_kill_minus_nine_starts_at_once(tmp_path: Path) -> None:
    run_id, env, dead = _killed_half_way(tmp_path)
    left = _lock_dir(tmp_path) / f"{run_id}.lock"
    assert left.read_text() == f"{dead}:0:{_HOST}"   # the dead driver's file, left behind

    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "twingraph", "run", "--resume", run_id,
                          "--no-progress"], env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stdout + out.stderr
    assert "506" in out.stdout
    assert "making sure its driver is gone" not in out.stderr, out.stderr
    # no heartbeat watch: the watch alone was up to LIVE_WINDOW (the run was heard from a
    # moment before the kill)
    assert took < LIVE_WINDOW - 2, (took, out.stderr)
    assert not list(_lock_dir(tmp_path).iterdir())   # the resume let go: its file is gone
    store = SQLMetadataStore(f"sqlite:///{tmp_path / 'home' / 'twingraph.db'}")
    assert store.get_run(run_id).state is RunState.SUCCESS
    store.close()


def test_runs_cancel_after_kill_minus_nine_ends_the_run_at_once(tmp_path: Path) -> None:
    run_id, env, _ = _killed_half_way(tmp_path)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "twingraph", "runs", "cancel", run_id],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert time.monotonic() - t0 < LIVE_WINDOW - 2
    assert "making sure its driver is gone" not in out.stderr, out.stderr
    store = SQLMetadataStore(f"sqlite:///{tmp_path / 'home' / 'twingraph.db'}")
    assert store.get_run(run_id).state is RunState.CANCELLED
    store.close()


def _engine(tmp_path: Path) -> Engine:
    return Engine(results=SQLiteStorage(str(tmp_path / "r.db")),
                  metadata=SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _record(eng: Engine, run_id: str, state: RunState = RunState.RUNNING) -> None:
    assert eng.metadata is not None
    eng.metadata.write([RunRecord(run_id, "p", state, created_at=time.time(),
                                  heartbeat_at=time.time())])


def _dead_drivers_file(eng: Engine, run_id: str = "r1") -> tuple[DriverLocks, Path, int]:
    """``run_id``'s lock file as a driver of generation 0 that died left it."""
    locks = DriverLocks.of(eng.metadata)
    assert locks is not None
    locks.directory.mkdir(exist_ok=True)
    path = locks.directory / f"{run_id}.lock"
    dead = _dead_pid()
    path.write_text(f"{dead}:0:{_HOST}")
    return locks, path, dead


def test_what_a_lock_file_proves(tmp_path: Path) -> None:
    """Only the run's current driver, dead, with its generation written: not a pid alone (one
    about to drive or watching, killed), not an earlier generation (the run was claimed since:
    a later driver may hold no lock), not a live pid (pids are reused). Looking makes and
    writes nothing: a look killed half-way changes nothing, and the proof stays."""
    eng = _engine(tmp_path)
    try:
        locks = DriverLocks.of(eng.metadata)
        assert locks is not None and eng.metadata is not None
        for run_id in ("r0", "r1", "r2", "r3", "r4"):
            _record(eng, run_id)
        assert eng.driver_alive("r0") is None and not eng.driver_dead("r0")
        assert not locks.directory.exists() or not list(locks.directory.iterdir())

        dead = _dead_pid()
        locks.directory.mkdir(exist_ok=True)
        (locks.directory / "r1.lock").write_text(f"{dead}:0:{_HOST}")
        for _ in range(2):                      # looked at twice: still there, unchanged
            assert eng.driver_alive("r1") is None
            assert eng.driver_dead("r1")
            assert (locks.directory / "r1.lock").read_text() == f"{dead}:0:{_HOST}"
        (locks.directory / "r2.lock").write_text(str(dead))          # no generation
        (locks.directory / "r3.lock").write_text(f"{dead}:0:{_HOST}")
        eng.metadata.claim_driver("r3")                               # claimed since
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            (locks.directory / "r4.lock").write_text(f"{sleeper.pid}:0:{_HOST}")     # a live pid
            for run_id in ("r2", "r3", "r4"):
                assert not eng.driver_dead(run_id), run_id
                assert eng.driver_alive(run_id) is None, run_id
            assert eng.orphaned_runs() == ["r1"]
        finally:
            sleeper.kill()
            sleeper.wait()
    finally:
        eng.close()


def test_a_take_while_someone_looks_gets_the_lock(tmp_path: Path) -> None:
    """A look holds the lock for an instant. A resume that tried the lock at that moment went
    on without it (the holder's pid in the file was the dead driver's), drove unlocked, and
    the next resume took its run over as proven dead. It tries again for ``TAKE_WAIT``."""
    eng = _engine(tmp_path)
    try:
        locks, path, dead = _dead_drivers_file(eng)
        looker = subprocess.Popen(
            [sys.executable, "-c", "import fcntl, os, sys, time\n"
             f"fd = os.open({str(path)!r}, os.O_RDWR)\n"
             "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "print('held', flush=True)\ntime.sleep(0.1)\n"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert looker.stdout is not None and looker.stdout.readline() == "held\n"
            got = locks.take("r1")
            assert not isinstance(got, int) and got is not None, got
            assert got.orphan == (dead, 0)
            got.release()
        finally:
            looker.wait(10)
    finally:
        eng.close()


def test_lock_files_of_ended_runs_are_swept_and_a_running_runs_is_kept(tmp_path: Path) -> None:
    eng = _engine(tmp_path)
    try:
        assert eng.metadata is not None
        _record(eng, "ended", RunState.CANCELLED)
        _record(eng, "running")
        locks = DriverLocks.of(eng.metadata)
        assert locks is not None
        locks.directory.mkdir(exist_ok=True)
        dead = _dead_pid()
        for run_id in ("ended", "running", "deleted"):
            (locks.directory / f"{run_id}.lock").write_text(f"{dead}:0:{_HOST}")
        held = locks.take("held")                # a live driver's (its run not recorded yet)
        assert held is not None and not isinstance(held, int)
        try:
            assert eng.sweep_driver_locks() == 2
            assert sorted(p.name for p in locks.directory.iterdir()) == ["held.lock",
                                                                         "running.lock"]
        finally:
            held.release()
        # an engine sweeps by itself when it lets go of a run it drove
        (locks.directory / "ended.lock").write_text(f"{dead}:0:{_HOST}")
        from twingraph import component, pipeline

        @component
        def one_s29() -> int:
            return 1

        @pipeline(name="sweeps_s29")
        def sweeps() -> int:
            return one_s29()["outputs"]["result"]
        assert sweeps.run(engine=eng).state is RunState.SUCCESS
        assert sorted(p.name for p in locks.directory.iterdir()) == ["running.lock"]
    finally:
        eng.close()


def _holder(path: Path, how: str) -> subprocess.Popen[str]:
    """Another process holding ``path``'s lock (``how``: "SH", a look; "EX", a taker) and
    writing nothing, stopped once it holds it (SIGSTOP: a look or a take frozen half-way)."""
    p = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, signal, sys\n"
         f"fd = os.open({str(path)!r}, os.O_RDONLY)\n"
         f"fcntl.flock(fd, fcntl.LOCK_{how})\n"
         "print('held', flush=True)\nos.kill(os.getpid(), signal.SIGSTOP)\n"],
        stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline() == "held\n"
    return p


def test_a_lock_held_by_a_stopped_looker_or_taker_is_never_taken_for_no_lock(
        tmp_path: Path) -> None:
    """A look or a take stopped while it held the lock (the file still naming the dead
    driver) made a resume go on without a lock: the next resume, proving nothing, watched the
    heartbeat of the unlocked driver while it was stopped, and took its run over. A taker now
    waits while only lookers hold it, and refuses a lock held by anyone else."""
    eng = _engine(tmp_path)
    try:
        locks, path, dead = _dead_drivers_file(eng)
        looker = _holder(path, "SH")
        try:
            import threading
            threading.Timer(1.0, lambda: (looker.kill(), looker.wait())).start()
            t0 = time.monotonic()
            got = locks.take("r1")                 # waited for the look, then took it
            assert not isinstance(got, int) and got is not None, got
            assert 0.8 < time.monotonic() - t0 < 5
            assert got.orphan == (dead, 0)
            got.release()
        finally:
            looker.kill()
            looker.wait()
        path.write_text(f"{dead}:0:{_HOST}")
        taker = _holder(path, "EX")
        try:
            assert locks.take("r1") == 0            # held: refused, not "no lock"
            assert eng.driver_alive("r1") == 0 and not eng.driver_dead("r1")
        finally:
            taker.kill()
            taker.wait()
    finally:
        eng.close()


def test_a_pid_of_another_machine_proves_nothing(tmp_path: Path) -> None:
    """A home shared with another machine (or container) over a file system whose locks are
    not shared: its driver's pid does not exist here, and was taken for a dead driver's."""
    eng = _engine(tmp_path)
    try:
        _record(eng, "r1")
        locks = DriverLocks.of(eng.metadata)
        assert locks is not None
        locks.directory.mkdir(exist_ok=True)
        (locks.directory / "r1.lock").write_text(f"{_dead_pid()}:0:another-host.4026531836")
        assert not eng.driver_dead("r1") and eng.orphaned_runs() == []
    finally:
        eng.close()


def test_a_file_it_cannot_write_is_locked_all_the_same(tmp_path: Path, monkeypatch) -> None:
    """Another user's lock file (0644): opening it to write failed, and the driver went on
    without a lock. It is opened to read and locked (its pid is not written)."""
    import twingraph.engine.driverlock as dl
    eng = _engine(tmp_path)
    try:
        locks = DriverLocks.of(eng.metadata)
        assert locks is not None
        locks.directory.mkdir(exist_ok=True)
        path = locks.directory / "r1.lock"
        path.write_text("")
        real = os.open

        def as_another_user(p, flags, *a):       # what EACCES looks like (root is not refused)
            if str(p) == str(path) and flags & os.O_RDWR:
                raise PermissionError(13, "Permission denied", str(p))
            return real(p, flags, *a)
        monkeypatch.setattr(dl.os, "open", as_another_user)
        got = locks.take("r1")
        assert got is not None and not isinstance(got, int)
        other = subprocess.run([sys.executable, "-c", "import fcntl, os\n"
                                f"fd = os.open({str(path)!r}, os.O_RDONLY)\n"
                                "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
                                "except BlockingIOError:\n    print('held')\n"],
                               capture_output=True, text=True)
        assert other.stdout.strip() == "held"
        got.release()
    finally:
        eng.close()


def test_a_killed_driver_not_reaped_yet_is_dead(tmp_path: Path) -> None:
    """A zombie (killed, its parent a supervisor that has not waited for it) answered
    ``kill(pid, 0)``: its lock file proved nothing, and every resume watched the heartbeat."""
    eng = _engine(tmp_path)
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _record(eng, "r1")
        locks = DriverLocks.of(eng.metadata)
        assert locks is not None
        locks.directory.mkdir(exist_ok=True)
        (locks.directory / "r1.lock").write_text(f"{zombie.pid}:0:{_HOST}")
        assert not eng.driver_dead("r1")              # alive: proves nothing
        os.kill(zombie.pid, 9)
        deadline = time.monotonic() + 10
        while b") Z" not in Path(f"/proc/{zombie.pid}/stat").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert eng.driver_dead("r1")                  # not reaped, and dead
    finally:
        zombie.kill()
        zombie.wait()
        eng.close()


def test_the_sweep_does_not_wait_for_a_lock_someone_holds(tmp_path: Path) -> None:
    """It ran where a run ends, and waited ``LOOK_WAIT`` for every file someone held (a look
    stopped half-way): a run's end took seconds more."""
    eng = _engine(tmp_path)
    try:
        _record(eng, "r1", RunState.CANCELLED)
        locks, path, _ = _dead_drivers_file(eng)
        looker = _holder(path, "SH")
        try:
            t0 = time.monotonic()
            assert eng.sweep_driver_locks() == 0
            assert time.monotonic() - t0 < 1 and path.exists()
        finally:
            looker.kill()
            looker.wait()
        assert eng.sweep_driver_locks() == 1 and not path.exists()
    finally:
        eng.close()


def test_a_resume_of_a_run_cancelled_while_it_waited_for_the_lock_is_refused(
        tmp_path: Path) -> None:
    """A `runs cancel` and a resume at once after a kill: the cancel took the lock, ended the
    run CANCELLED; the resume took the lock next and ran the run on to SUCCESS after the user
    was told CANCELLED."""
    from twingraph.engine.loop import RunOptions
    from twingraph.errors import ConflictError

    eng = _engine(tmp_path)
    try:
        _record(eng, "r1", RunState.CANCELLED)
        with pytest.raises(ConflictError, match="ended meanwhile"):
            eng._claim("r1", False, RunOptions(), RunState.RUNNING)   # RUNNING when it began
        epoch, _, _ = eng._claim("r1", False, RunOptions(), RunState.CANCELLED)  # asked for
        assert epoch == 1
    finally:
        eng.close()
