"""A driver whose run another driver took over stops (session 22 review): a `twingraph run`
stopped for longer than the live window (SIGSTOP standing in for a paused VM), whose run
`twingraph run --resume` claimed and finished meanwhile, woke up, finished its task, ran what
depended on it a second time, overwrote the stored result with its own and printed SUCCESS
with another value. Now it checks before it goes on (after a stall) and after every heartbeat.

Real processes and a real SQLite home in ``tmp_path``; the other driver's claim is made
through the metadata store, as `run --resume` makes it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from twingraph import component, pipeline
from twingraph.core.states import RunState
from twingraph.engine.engine import Engine
from twingraph.engine.timers import STALLED_AFTER
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.results.sqlite import SQLiteStorage

PIPELINE = '''
import os, time
from pathlib import Path
from twingraph import component, pipeline

SIDE = Path(os.environ["TG_SIDE"])

def mark(s):
    with SIDE.open("a") as f:
        f.write(s + "\\n")

@component(executor=os.environ.get("TG_EXECUTOR", "thread"))
def slow() -> str:
    mark("slow start")
    time.sleep(float(os.environ.get("TG_SLEEP", "3")))
    mark("slow end")
    return "made"

@component
def use(x: str) -> str:
    mark("use " + x)
    return "used " + x

@pipeline(name="takeover")
def takeover():
    return use(x=slow()["outputs"]["result"])
'''


def _run_ids(home: Path) -> list[str]:
    try:
        meta = SQLMetadataStore(f"sqlite:///{home / 'twingraph.db'}")
    except Exception:  # noqa: BLE001 - the driver has not created its schema yet
        return []
    try:
        return [r.run_id for r in meta.list_runs()]
    finally:
        meta.close()


@pytest.mark.parametrize("executor", ["thread", "inline"])
def test_a_stalled_driver_whose_run_was_taken_over_stops_when_it_wakes(tmp_path, executor):
    """``inline``: the call returns on the loop's own thread after the stall, and went
    straight on to start what depends on it (review): it is checked there too."""
    (tmp_path / "p.py").write_text(PIPELINE)
    side = tmp_path / "side"
    home = tmp_path / "home"
    env = dict(os.environ, TWINGRAPH_HOME=str(home), TG_SIDE=str(side), TG_SLEEP="2",
               TG_EXECUTOR=executor)
    env.pop("TWINGRAPH_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "twingraph", "run", str(tmp_path / "p.py"),
                             "--no-progress"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        # the task has started, and the run's row is written (records are written behind)
        while not (side.exists() and "slow start" in side.read_text()
                   and (home / "twingraph.db").exists() and _run_ids(home)):
            assert proc.poll() is None, proc.stdout.read()       # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGSTOP)                  # the driver stalls mid-task
        (run_id,) = _run_ids(home)
        meta = SQLMetadataStore(f"sqlite:///{home / 'twingraph.db'}")
        try:
            assert meta.claim_driver(run_id) == 1          # as `run --resume` claims it
        finally:
            meta.close()
        time.sleep(STALLED_AFTER + 0.5)
        os.kill(proc.pid, signal.SIGCONT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
    assert proc.returncode != 0, out
    assert "took the run over" in out
    assert "SUCCESS" not in out
    assert not any(line.startswith("use") for line in side.read_text().splitlines()), \
        side.read_text()


@component
def long_step() -> str:
    time.sleep(8)
    return "done"


@component
def after(x: str) -> str:
    AFTER.append(x)
    return x


AFTER: list[str] = []


@pipeline(name="taken")
def taken():
    return after(x=long_step()["outputs"]["result"])


def test_a_live_driver_learns_from_its_heartbeat_that_its_run_was_taken_over(tmp_path):
    """No stall: the heartbeat thread reads the run's driver epoch after each beat."""
    meta = SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True)
    eng = Engine(results=SQLiteStorage(str(tmp_path / "r.db")), metadata=meta)
    try:
        done: list = []
        t = threading.Thread(target=lambda: done.append(taken.run(engine=eng)), daemon=True)
        t.start()
        deadline = time.monotonic() + 10
        while not meta.list_runs():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        run_id = meta.list_runs()[0].run_id
        time.sleep(0.5)
        meta.claim_driver(run_id)                      # another driver now
        t.join(20)
        assert done, "the run never ended"
        r = done[0]
        assert r.state is RunState.CANCELLED
        assert "took the run over" in str(r.error)
        assert AFTER == []
        # the record is the other driver's: this one's end was fenced off
        assert meta.get_run(run_id).state is RunState.RUNNING
    finally:
        eng.close()
