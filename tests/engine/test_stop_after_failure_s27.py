"""A run (or a nested pipeline) a failure stopped under 'fail' lets its body go on (0085), but
its timeout and a cancel still bound that body (session 27 review): the run-level stop kept
the first reason and ignored both, so a body caught in its own loop after handling a failure
ran for 10 s under ``timeout=1`` and a ``cancel`` returned True and did nothing. Real runs on
the in-memory engine of ``conftest.py``."""
from __future__ import annotations

import threading
import time

from twingraph import component, pipeline
from twingraph.core.states import RunState
from twingraph.errors import PipelineCancelled, PipelineTimeout


@component(cache=False)
def breaks_s27(x: int) -> int:
    raise ValueError("broken")


@component(cache=False)
def fine_s27(x: int) -> int:
    return x


def _busy(seconds: float) -> int:
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < seconds:     # its own Python code, no call to the engine
        n += 1
    return n


@pipeline(name="fail_then_busy_s27", timeout=1, error_handler="fail")
def fail_then_busy(seconds: float):
    try:
        breaks_s27(x=1).result()
    except ValueError:
        pass
    return _busy(seconds)


def test_the_timeout_stops_a_body_that_goes_on_after_a_fail_stop(engine) -> None:
    t0 = time.monotonic()
    r = fail_then_busy.run(engine=engine, seconds=20.0)
    took = time.monotonic() - t0
    assert took < 8, took                    # ~1 s + the 1 s grace, not the body's 20 s
    assert r.state is RunState.FAILED and isinstance(r.error, PipelineTimeout), r.error
    assert "broken" in str(r.error)          # the failure that stopped it first is named
    row = engine.metadata.get_run(r.run_id)
    assert row is not None and row.state is RunState.FAILED and "timed out" in (row.error or "")


@pipeline(name="fail_then_cancel_s27", error_handler="fail")
def fail_then_cancel(seconds: float):
    try:
        breaks_s27(x=2).result()
    except ValueError:
        pass
    return _busy(seconds)


def test_a_cancel_stops_a_body_that_goes_on_after_a_fail_stop(engine) -> None:
    ids: list[str] = []
    engine.subscribe(lambda ev: ids.append(ev["run_id"]) if ev.get("event") == "run:status" else None)
    done: list[float] = []

    def cancel_soon() -> None:
        while not ids:
            time.sleep(0.01)
        time.sleep(0.8)
        assert engine.cancel(ids[0])
        done.append(time.monotonic())

    threading.Thread(target=cancel_soon, daemon=True).start()
    t0 = time.monotonic()
    r = fail_then_cancel.run(engine=engine, seconds=20.0)
    assert time.monotonic() - t0 < 8
    assert done, "the cancel was never sent"
    assert r.state is RunState.CANCELLED and isinstance(r.error, PipelineCancelled), r.error


@pipeline(name="inner_fail_then_busy_s27", timeout=1, error_handler="fail")
def inner(seconds: float):
    try:
        breaks_s27(x=3).result()
    except ValueError:
        pass
    return _busy(seconds)


@pipeline(name="outer_s27", error_handler="continue")
def outer(seconds: float):
    try:
        got = inner(seconds=seconds)
    except PipelineTimeout as exc:
        got = str(exc)
    return [got, fine_s27(x=4)]


def test_a_nested_timeout_stops_its_body_after_a_failure_inside_it(engine) -> None:
    t0 = time.monotonic()
    r = outer.run(engine=engine, seconds=20.0)
    assert time.monotonic() - t0 < 8
    assert r.state is RunState.SUCCESS, r.error
    got, fine = r.value
    assert "inner_fail_then_busy_s27 timed out after 1s" in got and "stopped" in got
    assert fine["outputs"]["result"] == 4


def test_a_thread_job_waiting_for_a_thread_when_its_run_stops_ends_its_attempt_row() -> None:
    """Its RUNNING attempt row was written at hand-over; cancelled before a thread took it
    ("dropped before it started"), the row stayed RUNNING in the finished run (seen 1 run in
    15). An executor that holds the job stands for a thread pool with no free thread."""
    from twingraph.core.states import TaskState
    from twingraph.engine.engine import Engine
    from twingraph.executors.local import LocalExecutor
    from twingraph.stores.metadata import MemoryMetadataStore
    from twingraph.stores.results.memory import MemoryStorage

    held: list = []

    class NoFreeThread(LocalExecutor):
        def submit(self, job, done):
            if job.node_id.startswith("waits_s27"):
                held.append(job)               # never started
            else:
                super().submit(job, done)

        def abort(self, job):
            return False if job in held else super().abort(job)

    @component(cache=False, executor="thread")
    def waits_s27(x: int) -> int:
        return x

    @pipeline(name="stopped_while_queued_s27", error_handler="fail")
    def stopped(engine_ref: list):
        waits_s27(x=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:      # its attempt row is written, RUNNING
            engine_ref[0].recorder.flush()
            rows = engine_ref[0].metadata.get_attempts(engine_ref[1][0], "waits_s27-0") \
                if engine_ref[1] else []
            if rows:
                break
            time.sleep(0.02)
        raise RuntimeError("the body fails")

    eng = Engine(results=MemoryStorage(), metadata=MemoryMetadataStore(),
                 executor=NoFreeThread(), flush_interval=0.01)
    ids: list[str] = []
    eng.subscribe(lambda ev: ids.append(ev["run_id"]) if ev.get("event") == "run:status" else None)
    try:
        r = stopped.run(engine=eng, engine_ref=[eng, ids])
        assert held and r.state is RunState.FAILED
        [attempt] = eng.metadata.get_attempts(r.run_id, "waits_s27-0")
        assert attempt.state is TaskState.CANCELLED and attempt.ended_at is not None
        [task] = [t for t in eng.metadata.get_tasks(r.run_id) if t.node_id == "waits_s27-0"]
        assert task.state is TaskState.CANCELLED and task.attempts == 1
    finally:
        eng.close()


@component(cache=False)
def slow_upstream_s27(x: int) -> list:
    time.sleep(3)
    return [x]


@component(cache=False)
def agg_s27(rows: list, *, scale: int = 1) -> int:
    return sum(rows) * scale


@pipeline(name="late_typo_s27")
def late_typo(which: str):
    rows = slow_upstream_s27(x=2)["outputs"]["result"]
    if which == "keyword":
        return agg_s27(row=rows)                     # misspelt: rows
    if which == "positional":
        return agg_s27(rows, 2)                      # scale is keyword-only
    return agg_s27(rows, scale=3, parent_hash="h")   # lineage is always taken


def test_a_call_the_component_cannot_take_fails_in_the_body_at_once(engine) -> None:
    """It failed only when the task would have run, after everything upstream of it (a
    misspelt keyword, found by a new user after 4 s of work), with no line of the body."""
    for which, said in (("keyword", "agg_s27() got an unexpected keyword argument 'row'"),
                        ("positional", "agg_s27() takes 1 positional argument but 2 were given")):
        t0 = time.monotonic()
        r = late_typo.run(engine=engine, which=which)
        assert time.monotonic() - t0 < 2.5, which          # not after the 3 s upstream task
        assert r.state is RunState.FAILED and said in str(r.error), r.error
        tb = r.error.__cause__ or r.error
        assert any(f.name == "late_typo" for f in __import__("traceback").extract_tb(
            tb.__traceback__)), "the body's line is in its traceback"
    r = late_typo.run(engine=engine, which="fine")
    assert r.state is RunState.SUCCESS and r.value["outputs"]["result"] == 6


@component(cache=False)
def writes_s27(conn, rows: list) -> int:
    return len(rows)


@pipeline(name="passes_a_lock_s27")
def passes_a_lock():
    return writes_s27(conn=threading.Lock(), rows=[1, 2])


def test_an_argument_that_cannot_be_keyed_is_named(engine) -> None:
    """The error was "cannot encode a value of type lock", the same words as for a result
    that cannot be stored: which argument, and what to do, was left to guess."""
    r = passes_a_lock.run(engine=engine)
    assert r.state is RunState.FAILED
    assert "argument conn of writes_s27: cannot encode a value of type lock" in str(r.error)
    assert "open a connection, client or lock inside the component" in str(r.error)


@component
def names_s27(folder: str) -> list:
    return [f"{folder}/a.csv", f"{folder}/b.txt"]


@pipeline(name="paths_s27")
def paths(folder: str):
    import os.path
    from pathlib import Path
    out = []
    for f in names_s27(folder=folder)["outputs"]["result"]:
        out.append((Path(f).stem, os.path.basename(f), os.fspath(f)))
    return out


def test_a_result_that_is_a_path_works_where_a_path_does(engine) -> None:
    """``Path(f)`` of a list item of a result raised "expected str, bytes or os.PathLike
    object, not Ref"; ``str(f)`` waited for it."""
    r = paths.run(engine=engine, folder="/data")
    assert r.state is RunState.SUCCESS, r.error
    assert r.value == [("a", "a.csv", "/data/a.csv"), ("b", "b.txt", "/data/b.txt")]


def _with_retries(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*args, retries=1, **kwargs):
        return fn(*args, **kwargs)
    return wrapper


def _summed(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(x, y):
        return fn(x + y)
    return wrapper


@component(cache=False)
@_with_retries
def doubled_s27(x: int) -> int:
    return 2 * x


@component(cache=False)
@_summed
def tripled_s27(x: int) -> int:
    return 3 * x


@pipeline(name="wrapped_s27")
def wrapped():
    return [doubled_s27(3, retries=2)["outputs"]["result"], tripled_s27(1, 2)["outputs"]["result"]]


def test_a_wrapped_component_is_checked_by_what_is_called(engine) -> None:
    """Regression round: the call check read the wrapped function's signature (``inspect``
    follows ``__wrapped__``), and refused calls only the wrapper takes."""
    r = wrapped.run(engine=engine)
    assert r.state is RunState.SUCCESS and r.value == [6, 9], r.error
