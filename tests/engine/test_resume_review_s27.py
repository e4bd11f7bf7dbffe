"""Resume findings of the session 27 review, on real engines (the in-memory one of
``conftest.py``) and the real CLI: each test failed before its fix.

- A pipeline whose parameter was renamed since the run started resumed it with the new
  parameter's default (the recorded value was dropped without a word): a wrong result that
  ended SUCCESS. One that gained a required parameter claimed the run, then failed it.
- A task an earlier ``--no-cache`` resume recorded SUCCESS ran again on the next plain
  resume, "inputs changed since the run stopped".
- ``twingraph run FILE.py --resume R`` on a file of several pipelines was refused as
  ambiguous, though the run records its pipeline.
- ``TWINGRAPH_ADOPT_AFTER`` below the heartbeat window let a server take over healthy runs.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from twingraph import component, pipeline
from twingraph.core.states import RunState
from twingraph.errors import ConfigurationError, ValidationError
from twingraph.settings import MIN_ADOPT_AFTER, Settings

CALLS: list[int] = []
FAIL_AT: set[int] = set()


@component
def step_s27(i: int, prev: int) -> int:
    CALLS.append(i)
    if i in FAIL_AT:
        raise RuntimeError(f"step {i} fails this time")
    return prev + i


def _chain(n: int) -> int:
    v = 0
    for i in range(n):
        v = step_s27(i=i, prev=v)["outputs"]["result"]
    return v


@pipeline(name="chain_s27")
def chain_n(n: int = 5):
    return _chain(n)


def test_a_resume_whose_parameters_the_pipeline_no_longer_takes_is_refused(engine) -> None:
    CALLS.clear()
    FAIL_AT.clear()
    FAIL_AT.add(2)
    first = chain_n.run(engine=engine, n=3)
    assert first.state is RunState.FAILED
    FAIL_AT.clear()

    @pipeline(name="chain_s27")
    def chain_m(m: int = 5):          # renamed: its default would give 10, not 3
        return _chain(m)

    epoch = engine.metadata.driver_epoch(first.run_id)
    with pytest.raises(ValidationError, match=r"started with n=3, which pipeline 'chain_s27' "
                                              r"no longer takes"):
        chain_m.run(engine=engine, resume=first.run_id)

    @pipeline(name="chain_s27")
    def chain_nk(n: int, k: int):     # a new required parameter
        return _chain(n + k)

    with pytest.raises(ValidationError, match="missing a required argument: 'k'"):
        chain_nk.run(engine=engine, resume=first.run_id)
    # neither claimed the run: it is as the failure left it, and resumes as it was started
    assert engine.metadata.driver_epoch(first.run_id) == epoch
    assert engine.metadata.get_run(first.run_id).state is RunState.FAILED
    r = chain_n.run(engine=engine, resume=first.run_id)
    assert (r.state, r.value) == (RunState.SUCCESS, 3)


def test_what_a_no_cache_resume_stored_is_kept_by_the_next_resume(engine) -> None:
    CALLS.clear()
    FAIL_AT.clear()
    FAIL_AT.add(1)
    first = chain_n.run(engine=engine, n=4)                  # step 0 stored, 1 fails
    assert first.state is RunState.FAILED
    FAIL_AT.clear()
    FAIL_AT.add(2)
    second = chain_n.run(engine=engine, resume=first.run_id, no_cache=True)   # 1 done, 2 fails
    assert second.state is RunState.FAILED
    FAIL_AT.clear()
    CALLS.clear()
    third = chain_n.run(engine=engine, resume=first.run_id)
    assert (third.state, third.value) == (RunState.SUCCESS, 6)
    assert CALLS == [2, 3]                  # step 1 is what the --no-cache driver stored
    engine.recorder.flush()
    rows = {t.node_id: t for t in engine.metadata.get_tasks(first.run_id)}
    assert rows["step_s27-1"].cache_status == "resumed", rows["step_s27-1"].cache_reason


def test_run_file_resume_takes_the_recorded_pipeline_of_a_file_with_several(tmp_path) -> None:
    (tmp_path / "two.py").write_text(textwrap.dedent("""
        import os
        from twingraph import component, pipeline

        @component
        def part(i: int) -> int:
            if os.path.exists("fail-now"):
                raise RuntimeError("not now")
            return i * 2

        @pipeline(name="main_flow")
        def main_flow():
            return part(i=3)["outputs"]["result"]

        @pipeline(name="other_flow")
        def other_flow():
            return part(i=4)["outputs"]["result"]
    """))
    (tmp_path / "fail-now").touch()
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"))
    env.pop("TWINGRAPH_DATABASE_URL", None)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "twingraph", *args], env=env, cwd=tmp_path,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120)

    first = cli("run", "two.py:main_flow", "--no-progress")
    assert first.returncode == 1, first.stderr
    run_id = next(line.split()[1] for line in (first.stdout + first.stderr).splitlines()
                  if line.startswith("run "))
    (tmp_path / "fail-now").unlink()
    other = cli("run", "two.py:other_flow", "--resume", run_id, "--no-progress")
    assert other.returncode == 2 and "main_flow" in other.stderr     # a name given is checked
    again = cli("run", "two.py", "--resume", run_id, "--no-progress")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "main_flow: SUCCESS" in again.stdout and again.stdout.strip().endswith("6")


@pytest.mark.parametrize("given", ["1", "10.9", "1e1", "-5", "nan", "inf", "soon"])
def test_an_adoption_delay_below_the_heartbeat_window_is_refused_by_the_server_only(
        monkeypatch, tmp_path, given) -> None:
    from twingraph.engine.engine import LIVE_WINDOW
    from twingraph.server.build import build_app
    assert MIN_ADOPT_AFTER == LIVE_WINDOW
    monkeypatch.setenv("TWINGRAPH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TWINGRAPH_DATABASE_URL", raising=False)
    monkeypatch.setenv("TWINGRAPH_ADOPT_AFTER", given)
    settings = Settings.from_env()            # every command reads it: not refused here
    with pytest.raises(ConfigurationError, match="TWINGRAPH_ADOPT_AFTER must be"):
        build_app(settings)
    assert not (tmp_path / "home").exists()   # refused before anything was built
    monkeypatch.setenv("TWINGRAPH_ADOPT_AFTER", "11")
    assert Settings.from_env().adoption_delay() == 11.0
    monkeypatch.delenv("TWINGRAPH_ADOPT_AFTER")
    assert Settings.from_env().adoption_delay() == 30.0


def test_a_server_recorded_run_resumes_from_python(engine) -> None:
    """The server records a call by keyword (``service.runs.call_params``): a scheduled run's
    ``logical_date`` for a function that does not take it, extras for ``**kwargs``."""
    from twingraph.core.records import RunRecord

    @pipeline(name="plain_s27")
    def plain(n: int = 1):
        return step_s27(i=n, prev=0)["outputs"]["result"]

    @pipeline(name="kw_s27")
    def kw(a: int, **opts):
        return [a, sorted(opts.items())]

    engine.metadata.write([
        RunRecord(run_id="sched-s27", pipeline="plain_s27", state=RunState.FAILED,
                  created_at=1.0, params={"n": 7, "logical_date": "2026-12-07T00:00:00Z"}),
        RunRecord(run_id="kw-s27", pipeline="kw_s27", state=RunState.FAILED, created_at=1.0,
                  params={"a": 11, "zz": 3})])
    FAIL_AT.clear()
    r = plain.run(engine=engine, resume="sched-s27")
    assert (r.state, r.value) == (RunState.SUCCESS, 7), r.error
    r = kw.run(engine=engine, resume="kw-s27")
    assert (r.state, r.value) == (RunState.SUCCESS, [11, [("zz", 3)]]), r.error


def test_an_ended_driverless_runs_open_attempts_say_it_was_ended_not_resumed(engine) -> None:
    from twingraph.core.records import AttemptRecord, RunRecord, TaskRecord
    from twingraph.core.states import TaskState

    engine.metadata.write([
        RunRecord("gone-s27", "p", RunState.RUNNING, created_at=1.0, started_at=1.0),
        TaskRecord("gone-s27", "a", "c", state=TaskState.RUNNING, created_at=1.0),
        AttemptRecord("gone-s27", "a", 1, 0, TaskState.RUNNING, started_at=1.0)])
    assert engine.end_driverless("gone-s27") is RunState.CANCELLED
    [attempt] = engine.metadata.get_attempts("gone-s27", "a")
    assert attempt.state is TaskState.FAILED
    assert attempt.error == ("its driver stopped before it ended; the run was ended "
                             "(cancelled: its driver was gone)")


def test_a_reloaded_value_another_run_replaced_is_refused_not_substituted(tmp_path) -> None:
    """Two runs of a component whose output differs each time (random bytes) store under
    one key; the last write wins. A consumer reloading its producer's value (dropped from
    memory once stage one had it) got the other run's value, and the run recorded one hash
    and computed on another (session 27 review: 39 of 40 items, both stores). The other
    run's write is made here between the two stages."""
    import dataclasses
    import hashlib
    import pickle

    from twingraph.engine.engine import Engine
    from twingraph.stores.metadata import MemoryMetadataStore
    from twingraph.stores.results.sqlite import SQLiteStorage

    @component
    def noisy_s27(i: int) -> bytes:
        return os.urandom(64)

    @component
    def digest_s27(x: bytes, tag: str) -> str:
        return hashlib.sha256(x).hexdigest()

    eng = Engine(results=SQLiteStorage(str(tmp_path / "r.db")), metadata=MemoryMetadataStore(),
                 flush_interval=0.01)
    ids: list[str] = []
    eng.subscribe(lambda ev: ids.append(ev["run_id"]) if ev.get("event") == "run:status" else None)

    @pipeline(name="two_stages_s27")
    def two_stages():
        r = noisy_s27(i=1)
        first = digest_s27(x=r["outputs"]["result"], tag="a")["outputs"]["result"]
        str(first)                                 # stage one has read it
        eng.recorder.flush()
        [row] = [t for t in eng.metadata.get_tasks(ids[0]) if t.node_id == "noisy_s27-0"]
        meta, data = eng.results.read(row.result_key)
        theirs = pickle.loads(bytes(data))           # the outputs: {"result": ...}
        assert theirs["result"] != b"x" * 64
        theirs["result"] = b"x" * 64                 # that run's value, encoded as ours
        other = pickle.dumps(theirs)
        eng.results.put(row.result_key, [other], dataclasses.replace(
            meta, size=len(other), content_hash=hashlib.sha256(other).hexdigest()))
        return [first, digest_s27(x=r["outputs"]["result"], tag="b")["outputs"]["result"]]

    try:
        r = two_stages.run(engine=eng)
        assert r.state is RunState.FAILED
        assert "no longer the value this run computed" in str(r.error), r.error
    finally:
        eng.close()


def test_a_miss_is_explained_against_the_newest_run_that_ended(engine) -> None:
    """A run of the same pipeline still going (another process's) was taken as "the last
    run": its half-done rows made misses read "new task" or "it was RUNNING"."""
    import time as _time

    from twingraph.core.records import RunRecord, TaskRecord
    from twingraph.core.states import TaskState

    @pipeline(name="explained_s27")
    def explained(seed: int):
        return step_s27(i=seed, prev=0)["outputs"]["result"]

    FAIL_AT.clear()
    assert explained.run(engine=engine, seed=1).state is RunState.SUCCESS
    now = _time.time() + 5                                  # newer than that run
    engine.metadata.write([
        RunRecord("going-s27", "explained_s27", RunState.RUNNING, created_at=now, started_at=now),
        TaskRecord("going-s27", "other-0", "other", state=TaskState.RUNNING, created_at=now)])
    r = explained.run(engine=engine, seed=2)
    engine.recorder.flush()
    [row] = engine.metadata.get_tasks(r.run_id)
    assert (row.cache_status, row.cache_reason) == ("miss", "inputs changed since the last run")
