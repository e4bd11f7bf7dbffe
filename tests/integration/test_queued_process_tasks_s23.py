"""A process task waiting for a free worker is not an attempt (session 23 review): it was
recorded RUNNING with attempt 1 from the moment it was handed to the pool, so a run stopped
then (a crash, a SIGTERM) and resumed counted that attempt against its retries: a task whose
first real execution fails, with ``max_attempts=2``, ended the resumed run FAILED (here each
task's first execution fails). Real
worker processes (two for four tasks), a real SQLite metadata store."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from twingraph import component, pipeline
from twingraph.core.states import RunState, TaskState
from twingraph.engine.engine import Engine
from twingraph.executors.local import LocalExecutor
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.results.sqlite import SQLiteStorage

MARKS = Path("/nonexistent")     # set by the test: one line per real execution


@component(executor="process", cache=False, timeout=30,
           retry_policy={"max_attempts": 2, "backoff": "fixed", "initial_delay": 0.05})
def slow(i: int, marks: str) -> int:
    with open(marks, "a") as f:
        f.write(f"{i}\n")
    time.sleep(1.5)
    if open(marks).read().split().count(str(i)) == 1:
        raise RuntimeError(f"the first real execution of slow-{i} fails")
    return i


@pipeline(name="queued_process_tasks_s23", max_parallel=4)
def four(marks: str):
    return [slow(i=i, marks=marks)["outputs"]["result"] for i in range(4)]


def test_a_task_waiting_for_a_worker_is_queued_and_costs_no_attempt(tmp_path):
    marks = str(tmp_path / "marks.txt")
    meta = SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True)
    eng = Engine(results=SQLiteStorage(str(tmp_path / "r.db")), metadata=meta,
                 executor=LocalExecutor(max_processes=2), flush_interval=0.05)
    try:
        holder: dict = {}
        first: dict = {}
        t = threading.Thread(target=lambda: first.setdefault("r", four.run_with(
            (), {"marks": marks}, engine=eng, on_start=lambda loop: holder.setdefault("loop", loop))))
        t.start()
        deadline = time.monotonic() + 30
        rows: dict = {}
        while time.monotonic() < deadline:
            if "loop" in holder:
                rows = {r.node_id: r for r in meta.get_tasks(holder["loop"].run_id)}
                if sum(r.state is TaskState.RUNNING for r in rows.values()) == 2 \
                        and len(rows) == 4:
                    break
            time.sleep(0.05)
        waiting = sorted(n for n, r in rows.items() if r.state is TaskState.QUEUED)
        assert len(waiting) == 2, {n: (r.state, r.attempts) for n, r in rows.items()}
        assert all(rows[n].attempts == 0 for n in waiting)
        live = holder["loop"].progress()           # what progress says is what rows say
        assert live["running"] == 2 and live["queued"] == 2, live
        assert sorted(live["running_nodes"]) == sorted(set(rows) - set(waiting))
        holder["loop"].cancel("stopped by the test")
        t.join(60)
        run_id = holder["loop"].run_id
        ended = {r.node_id: r for r in meta.get_tasks(run_id)}
        assert all(ended[n].state is TaskState.CANCELLED and ended[n].attempts == 0
                   for n in waiting), ended
        attempts = meta.get_attempts(run_id)      # none for a task that never started
        assert not [a for a in attempts if a.node_id in waiting or a.attempt < 1], attempts
        r = four.run(engine=eng, resume=run_id, marks=marks)
        assert r.state is RunState.SUCCESS, r.error
        assert r.value == [0, 1, 2, 3]
    finally:
        eng.close()


@component(executor="process", cache=False, timeout=30,
           retry_policy={"max_attempts": 3, "backoff": "fixed", "initial_delay": 1.0})
def fails_then_waits(marks: str) -> int:
    with open(marks, "a") as f:
        f.write("f\n")
    raise RuntimeError("the first attempt fails")


@component(executor="process", cache=False, timeout=30)
def holds_the_worker(seconds: float) -> int:
    time.sleep(seconds)
    return 1


@pipeline(name="queued_retry_s23", max_parallel=2)
def queued_retry(marks: str):
    first = fails_then_waits(marks=marks)
    time.sleep(0.5)                     # its first attempt ran and failed: now hold the worker
    return [holds_the_worker(seconds=20), first]


def test_a_retry_cancelled_while_waiting_keeps_the_failed_attempts_row(tmp_path):
    """The cancel of a retry still waiting for a worker wrote a CANCELLED row over the failed
    attempt's (its error lost), and one for "attempt 0" when no attempt had run."""
    marks = str(tmp_path / "marks.txt")
    meta = SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True)
    eng = Engine(results=SQLiteStorage(str(tmp_path / "r.db")), metadata=meta,
                 executor=LocalExecutor(max_processes=1), flush_interval=0.05)
    try:
        holder: dict = {}
        t = threading.Thread(target=lambda: queued_retry.run_with(
            (), {"marks": marks}, engine=eng, on_start=lambda loop: holder.setdefault("loop", loop)))
        t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            loop = holder.get("loop")
            task = loop.tasks.get("fails_then_waits-0") if loop else None
            if task is not None and task in loop.waiting and task.attempt == 2:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the retry never waited for the worker")
        loop.cancel("stopped by the test")
        t.join(60)
        rows = [(a.attempt, a.state, a.error) for a in meta.get_attempts(loop.run_id)
                if a.node_id == "fails_then_waits-0"]
        assert rows == [(1, TaskState.FAILED, "RuntimeError: the first attempt fails")], rows
        task_row = {r.node_id: r for r in meta.get_tasks(loop.run_id)}["fails_then_waits-0"]
        assert task_row.state is TaskState.CANCELLED and task_row.attempts == 1
    finally:
        eng.close()
