"""A task waiting for its inputs gets its first row late (most tasks then write one row with
their final state), but not never: after ``DEFER_WAITING`` it is visible as PENDING while its
producer still runs, and a task that changes state while deferred is written at once.

Real engines and stores. ``monkeypatch`` sets the loop's timing constants (``DEFER_WAITING``,
``HAND_OVER_EVERY``) so the behaviour shows within a test, and wraps the real recorder's
``add_many`` to look at each hand-over on its way (it still records)."""
import threading
import time

from twingraph import component, pipeline
from twingraph.engine.loop import RunLoop

gate = threading.Event()


@component(executor="thread")
def slow(x: int) -> int:
    gate.wait(20)
    return x


@component(executor="thread")
def after(x: int) -> int:
    return x + 1


@pipeline(name="deferred_rows")
def flow():
    a = slow(x=1)
    return after(x=a["outputs"]["result"])


def _states(engine, run_id):
    return {t.node_id: t.state.value for t in engine.metadata.get_tasks(run_id)}


def test_a_waiting_task_is_written_after_the_deferral_and_finishes_with_one_final_row(
        sqlite_engine, monkeypatch):
    monkeypatch.setattr(RunLoop, "DEFER_WAITING", 0.3)
    gate.clear()
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", flow.run(engine=sqlite_engine)))
    t.start()
    try:
        # due after 0.3 s: the sleeping loop wakes for it (not only at its 5 s heartbeat)
        deadline = time.monotonic() + 2.5
        seen = {}
        while time.monotonic() < deadline:
            runs = sqlite_engine.metadata.list_runs(limit=5)
            if runs:
                seen = _states(sqlite_engine, runs[0].run_id)
                if seen.get("after-0") == "PENDING":
                    break
            time.sleep(0.05)
        assert seen.get("after-0") == "PENDING", seen     # visible while slow-0 still runs
        assert seen.get("slow-0") == "RUNNING", seen
    finally:
        gate.set()
        t.join(20)
    r = box["r"]
    assert r.state.value == "SUCCESS"
    assert _states(sqlite_engine, r.run_id) == {"slow-0": "SUCCESS", "after-0": "SUCCESS"}


def test_a_short_wait_writes_no_early_row(sqlite_engine, monkeypatch):
    monkeypatch.setattr(RunLoop, "DEFER_WAITING", 30.0)
    gate.set()
    r = flow.run(engine=sqlite_engine)
    assert r.state.value == "SUCCESS"
    # both rows exist and carry the final state (the deferred first row was never needed)
    assert _states(sqlite_engine, r.run_id) == {"slow-0": "SUCCESS", "after-0": "SUCCESS"}


calls = {"n": 0}


@component(executor="thread", cache=False)
def blocker(i: int) -> int:
    time.sleep(1.0)
    return i


@component(executor="thread", cache=False)
def quick(i: int) -> int:
    return i


@component(executor="inline", cache=False,
           retry_policy={"max_attempts": 2, "backoff": "fixed", "initial_delay": 0, "jitter": 0,
                         "exceptions": ["ValueError"]})
def flaky(i: int) -> int:
    calls["n"] += 1
    time.sleep(0.1)              # quick's outcome lands in the inbox meanwhile
    if calls["n"] == 1:
        raise ValueError("transient")
    return i


@pipeline(name="retry_before_first_row")
def retry_flow():
    return [blocker(i=1), quick(i=2), flaky(i=3), blocker(i=4), blocker(i=5)]


def test_a_task_retried_before_its_first_row_is_written_keeps_its_rows(sqlite_engine):
    # flaky fails and is QUEUED for its retry (all slots busy) before any hand-over: its
    # failed attempt's row refers to the task row, so that row must not be deferred.
    calls["n"] = 0
    r = retry_flow.run(engine=sqlite_engine, max_parallel=3)
    assert r.state.value == "SUCCESS", r.error
    assert set(_states(sqlite_engine, r.run_id).values()) == {"SUCCESS"}
    assert len(_states(sqlite_engine, r.run_id)) == 5
    attempts = sqlite_engine.metadata.get_attempts(r.run_id, "flaky-0")
    assert [a.state.value for a in attempts] == ["FAILED", "SUCCESS"]


# -- a burst of memo hits hands its rows over as it goes --------------------------------------

hold = threading.Event()


@component(executor="thread", cache=False)
def opener(x: int) -> int:
    hold.wait(20)                    # the body submits every reader before this returns
    return x


@component()
def reader(x: int, i: int) -> int:
    return x + i


@pipeline(name="hit_burst")
def burst(n: int):
    src = opener(x=1)
    outs = [reader(x=src["outputs"]["result"], i=i) for i in range(n)]
    hold.set()
    return len(outs)


def test_a_burst_of_memo_hits_hands_rows_over_while_it_runs(sqlite_engine, monkeypatch):
    # All 2,000 readers become ready at once when the opener ends, and all are memo hits in
    # the second run: one burst inside the loop that starts no task. Its rows must still
    # reach the writer every HAND_OVER_EVERY (0 here: after every lookup batch of 500), not
    # all at once after the burst (a crash would lose them all, and the writer idles).
    hold.clear()
    assert burst.run(engine=sqlite_engine, n=2000).state.value == "SUCCESS"
    monkeypatch.setattr(RunLoop, "HAND_OVER_EVERY", 0.0)
    hold.clear()
    finished_rows: list[int] = []
    real_add_many = sqlite_engine.recorder.add_many    # counted, then passed on: the writer is real

    def add_many(recs):
        done = sum(1 for r in recs if getattr(r, "state", None) is not None
                   and getattr(r, "node_id", "").startswith("reader")
                   and r.state.value == "SUCCESS")
        if done:
            finished_rows.append(done)
        return real_add_many(recs)
    monkeypatch.setattr(sqlite_engine.recorder, "add_many", add_many)
    r = burst.run(engine=sqlite_engine, n=2000)
    assert r.state.value == "SUCCESS"
    assert {t.cache_status for t in sqlite_engine.metadata.get_tasks(r.run_id)
            if t.node_id.startswith("reader")} == {"hit"}
    assert sum(finished_rows) == 2000
    assert len(finished_rows) >= 4, finished_rows      # 500 a batch: four hand-overs or more


fail_last = {"on": True}


@component(cache=False)
def last(xs: list) -> int:
    if fail_last["on"]:
        raise RuntimeError("fails the first run, after every reader has finished")
    return len(xs)


@pipeline(name="resumed_burst")
def resumed_burst(n: int):
    src = opener(x=1)
    outs = [reader(x=src["outputs"]["result"], i=i) for i in range(n)]
    hold.set()
    return last(xs=[o["outputs"]["result"] for o in outs])


def test_a_resumed_burst_hands_rows_over_while_it_runs(sqlite_engine, monkeypatch):
    # The burst again, in a resumed run: the readers finish as "resumed" from the run's own
    # records (no lookup at all), and their rows still reach the writer as the burst goes.
    hold.clear()
    fail_last["on"] = True
    first = resumed_burst.run(engine=sqlite_engine, n=2000)
    assert first.state.value == "FAILED"
    fail_last["on"] = False
    monkeypatch.setattr(RunLoop, "HAND_OVER_EVERY", 0.0)
    hold.clear()
    finished_rows: list[int] = []
    real_add_many = sqlite_engine.recorder.add_many    # counted, then passed on: the writer is real

    def add_many(recs):
        done = sum(1 for r in recs if getattr(r, "cache_status", None) == "resumed"
                   and r.node_id.startswith("reader"))
        if done:
            finished_rows.append(done)
        return real_add_many(recs)
    monkeypatch.setattr(sqlite_engine.recorder, "add_many", add_many)
    r = resumed_burst.run(engine=sqlite_engine, n=2000, resume=first.run_id)
    assert r.state.value == "SUCCESS", r.error
    assert sum(finished_rows) == 2000
    assert len(finished_rows) >= 4, finished_rows
