"""Session 25 fixes: a cancelled DAG's ``node_results`` names every node (the ones it never
submitted as CANCELLED), on a scheduler with and without a metadata store."""
from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path

import pytest

from twingraph.engine.dynamic import (DAGDefinition, DynamicScheduler, ExecutionConfig,
                                      NodeDefinition, NodeStatus)
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.results.memory import MemoryStorage

N = NodeDefinition


def _slow(deps, params):
    time.sleep(0.0005)
    return params["i"]


@pytest.mark.parametrize("with_metadata", [True, False], ids=["metadata", "in-memory"])
def test_node_results_of_a_cancelled_dag_name_every_node(tmp_path, with_metadata):
    """The nodes the run never took in (it submits a window at a time) were missing."""
    async def main():
        md = SQLMetadataStore(f"sqlite:///{tmp_path / 'md.db'}", create=True) if with_metadata else None
        s = DynamicScheduler(MemoryStorage(), ExecutionConfig(no_cache=True), metadata=md)
        s.executor.register_operation("op", _slow)
        await s.submit_dag(DAGDefinition("cancel_nr_s25", [N(f"n{i}", "op", [], {"i": i})
                                                          for i in range(20_000)]))
        await asyncio.sleep(0.3)
        assert await s.cancel_execution("cancel_nr_s25")
        await s.wait_for_completion("cancel_nr_s25")
        progress = await s.get_execution_progress("cancel_nr_s25")
        every = await s.get_node_results("cancel_nr_s25")
        some = await s.get_node_results("cancel_nr_s25", ["n0", "n19999"])
        s.close()
        return progress, every, some

    progress, every, some = asyncio.run(main())
    assert len(every) == 20_000
    by = {}
    for r in every.values():
        by[r.status] = by.get(r.status, 0) + 1
    assert by.get(NodeStatus.CANCELLED, 0) == progress.cancelled_nodes > 0
    assert by.get(NodeStatus.COMPLETED, 0) == progress.completed_nodes
    assert every["n19999"].status is NodeStatus.CANCELLED
    assert "before this node was submitted" in every["n19999"].error_message
    assert set(some) == {"n0", "n19999"} and some["n0"].status is NodeStatus.COMPLETED


# -- a nested pipeline's own timeout stops its busy body -------------------------------------

from twingraph import component, pipeline                              # noqa: E402
from twingraph.core.states import RunState                             # noqa: E402
from twingraph.engine import bodystop                                  # noqa: E402
from twingraph.errors import NestedPipelineStopped, PipelineTimeout, ValidationError  # noqa: E402

nested_events: list[str] = []


@component(cache=False)
def quick_s25(i: int) -> int:
    return i


def _spin(seconds: float) -> int:
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        n += sum(range(200))
    return n


@pipeline(name="inner_busy_s25", timeout=1)
def inner_busy(seconds: float, submit_first: bool):
    if submit_first:
        quick_s25(i=1).result()
    try:
        _spin(seconds)
    except NestedPipelineStopped:
        nested_events.append("inner saw the stop")
        raise
    return quick_s25(i=2)


@pipeline(name="outer_handles_s25", error_handler="continue")     # under 'fail' the run stops
def outer_handles(seconds: float, submit_first: bool):
    try:
        inner_busy(seconds, submit_first)
    except PipelineTimeout as exc:
        nested_events.append(f"outer caught: {exc}")
    return quick_s25(i=3)              # the run goes on: the outer body handled the failure


@pipeline(name="outer_ignores_s25")
def outer_ignores(seconds: float):
    inner_busy(seconds, True)
    nested_events.append("outer went on")
    return quick_s25(i=4)


@pytest.mark.parametrize("submit_first", [True, False], ids=["after-a-task", "before-any-task"])
def test_a_nested_pipelines_busy_body_is_stopped_at_its_own_timeout(engine, submit_first):
    """Its tasks were cancelled at the timeout but its body went on (30 s here); a body that
    had submitted nothing yet was never even timed out."""
    nested_events.clear()
    t0 = time.monotonic()
    r = outer_handles.run(engine=engine, seconds=30.0, submit_first=submit_first)
    took = time.monotonic() - t0
    assert took < 1 + bodystop.GRACE + 4, took
    assert r.state is RunState.SUCCESS, r.error          # handled by the outer body
    assert r.value["outputs"]["result"] == 3
    assert nested_events[0] == "inner saw the stop"
    assert nested_events[1].startswith("outer caught: pipeline inner_busy_s25 timed out after 1s")
    logs = [x.message for x in engine.metadata.get_logs(r.run_id)]
    assert any("stopping nested pipeline inner_busy_s25" in m for m in logs), logs


def test_an_unhandled_nested_timeout_fails_the_run_with_it(engine):
    nested_events.clear()
    t0 = time.monotonic()
    r = outer_ignores.run(engine=engine, seconds=30.0)
    assert time.monotonic() - t0 < 1 + bodystop.GRACE + 4
    assert r.state is RunState.FAILED
    assert "inner_busy_s25" in str(r.error) and "timed out after 1s" in str(r.error), r.error
    assert "outer went on" not in nested_events


def test_a_nested_body_that_ends_in_time_is_not_stopped(engine):
    nested_events.clear()
    r = outer_handles.run(engine=engine, seconds=0.05, submit_first=True)
    assert r.state is RunState.SUCCESS and nested_events == []
    time.sleep(bodystop.GRACE + 0.5)      # nothing is raised in this thread later either


# -- an abandoned inline attempt's late result is not a later attempt's ----------------------

from twingraph.errors import TaskTimeout     # noqa: E402

late_calls: list[int] = []


@component(executor="inline", timeout=0.5, cache=False,
           retry_policy={"max_attempts": 3, "initial_delay": 0.1, "backoff": "fixed"})
def overruns_s25(x: int) -> str:
    late_calls.append(x)
    me = len(late_calls)
    time.sleep(1.5)
    return f"value of attempt {me}"


@pipeline(name="late_inline_s25")
def late_inline():
    return overruns_s25(1)


def test_an_abandoned_inline_attempts_late_result_is_not_taken_for_its_retrys(engine):
    """The outcome of an inline call the watchdog took over was posted with the task's fence
    read when the call returned: attempt 1's value, 1.5 s late, passed for attempt 3's and
    the task was SUCCESS ('value of attempt 1') though every attempt overran its timeout."""
    late_calls.clear()
    r = late_inline.run(engine=engine)
    assert r.state is RunState.FAILED, r.value
    (task,) = engine.metadata.get_tasks(r.run_id)
    assert task.state.value == "FAILED" and task.attempts == 3
    assert "timed out after 0.5s" in task.error
    assert isinstance(r.error.__cause__ or r.error, Exception)
    logs = [x.message for x in engine.metadata.get_logs(r.run_id)]
    assert any("dropped a late result of overruns_s25-0 (fence 1)" in m for m in logs), logs
    assert TaskTimeout.__name__ in task.error


# -- a call's arguments are taken as they are when the call is made -------------------------


@component(cache=True)
def train_s25(cfg: dict) -> dict:
    return {"lr_used": cfg["lr"]}


@pipeline(name="sweep_s25")
def sweep():
    cfg = {"lr": 0.0, "epochs": 3}
    runs = []
    for lr in [0.1, 0.01, 0.001]:
        cfg["lr"] = lr                      # one dict, changed between the calls
        runs.append(train_s25(cfg=cfg))
    return [r["outputs"]["lr_used"] for r in runs]


def test_a_dict_changed_after_the_call_does_not_change_the_call(engine):
    """Arguments were read when the loop keyed the task, later: [0.001, 0.001, 0.001], and
    train-1 and train-2 were "hits" of train-0."""
    r = sweep.run(engine=engine)
    assert r.value == [0.1, 0.01, 0.001]
    assert {t.cache_status for t in engine.metadata.get_tasks(r.run_id)} == {"miss"}
    again = sweep.run(engine=engine)          # and the memo holds each under its own key
    assert again.value == [0.1, 0.01, 0.001]
    assert {t.cache_status for t in engine.metadata.get_tasks(again.run_id)} == {"hit"}


@component(executor="thread", cache=True)
def mutator_s25(xs: list) -> int:
    xs.append(99)
    return len(xs)


@component(executor="thread", cache=True)
def reader_s25(xs: list, delay: float = 0.2) -> list:
    time.sleep(delay)
    return list(xs)


@pipeline(name="mutates_s25")
def mutates():
    shared = [1, 2, 3]
    a = mutator_s25(xs=shared)
    b = reader_s25(xs=shared)
    return {"a": a["outputs"]["result"], "b": b["outputs"]["result"]}


def test_a_component_changing_a_list_the_body_passed_changes_nobody_elses(engine):
    """The reader saw the mutator's append and its result was stored under the key of the
    unchanged list: a wrong hit in later runs."""
    r = mutates.run(engine=engine)
    assert r.value == {"a": 4, "b": [1, 2, 3]}


@component(cache=False)
def same_s25(a: list, b: list, t: tuple) -> list:
    return [a is b, t[0] is a, len(a)]


@pipeline(name="shares_s25")
def shares():
    xs = [1, 2]
    xs.append(xs)                           # holds itself
    return same_s25(a=xs, b=xs, t=(xs, 5))


def test_a_container_passed_twice_in_one_call_is_still_one_container(engine):
    r = shares.run(engine=engine)
    assert r.value["outputs"]["result"] == [True, True, 3], r.error


def test_snapshot_rebuilds_containers_and_keeps_leaves():
    import numpy as np

    from twingraph.engine.refs import snapshot
    leaf = np.zeros(3)                     # shared, not copied
    inner = {"k": [1, leaf]}
    args, kwargs = snapshot((inner, (1, 2)), {"s": {1, 2}, "n": 3})
    assert args[0] == inner and args[0] is not inner and args[0]["k"] is not inner["k"]
    assert args[0]["k"][1] is leaf
    assert args[1] == (1, 2) and kwargs["s"] == {1, 2} and kwargs["n"] == 3
    plain = (1, "a")
    same = {"x": 1}
    assert snapshot(plain, same) == (plain, same) and snapshot(plain, same)[1] is same
    # a leaf that may hold one of the containers: the call's arguments are left as they are
    box = deque([inner])
    args, kwargs = snapshot((inner,), {"box": box})
    assert args[0] is inner and kwargs["box"] is box
    assert snapshot(([np.array([[1]], dtype=object)],), {})[0][0][0].dtype == object
    # a frozenset may hold such a leaf too (regression review: it was taken for plain)
    holder = deque([inner])
    args, _ = snapshot((inner, frozenset({(1, 2), 3})), {})
    assert args[0] is not inner                               # plain items: rebuilt
    args, _ = snapshot((inner, frozenset({_Hashable(holder)})), {})
    assert args[0] is inner                                   # one that is not: as it is


class _Hashable:
    def __init__(self, held):
        self.held = held

    def __hash__(self):
        return 1


def test_large_arguments_are_passed_as_they_are():
    """Regression review: every pending task held its own copy; a 200,000-item list passed
    to 100 calls tripled the run's memory (and a flat list's items were walked in Python)."""
    from twingraph.engine.refs import SNAPSHOT_MAX, snapshot
    big = list(range(SNAPSHOT_MAX + 1))
    args, kwargs = snapshot((big,), {"cfg": {"lr": 1}})
    assert args[0] is big and kwargs["cfg"] == {"lr": 1}
    small = list(range(SNAPSHOT_MAX))
    assert snapshot((small,), {})[0][0] is not small
    nested = [[0] * 100 for _ in range(SNAPSHOT_MAX // 100 + 1)]   # in all, not each
    assert snapshot((nested,), {})[0][0] is nested


# -- calling a pipeline passes every argument to it -------------------------------------------

@component(cache=False)
def echo_s25(v):
    return v


@pipeline(name="option_named_params_s25")
def option_named(max_parallel: int = 5, no_cache: bool = False, resume: str = "none"):
    return {"mp": echo_s25(v=max_parallel)["outputs"]["result"], "nc": no_cache, "r": resume}


def test_calling_a_pipeline_passes_parameters_named_like_run_options(engine):
    """``pipe(max_parallel=3, no_cache=True)`` ran the body with its defaults (the values were
    taken for run options), and ``resume="yes"`` looked for a run called 'yes'."""
    from twingraph.runtime import set_default_engine
    set_default_engine(engine)                 # what a call of the pipeline runs on
    try:
        out = option_named(max_parallel=3, no_cache=True, resume="yes")
    finally:
        set_default_engine(None)
    assert out == {"mp": 3, "nc": True, "r": "yes"}


# -- two resumes of an ended run: one drives it ------------------------------------------------

import threading                                            # noqa: E402

from twingraph.errors import ConflictError                 # noqa: E402

gate_s25 = threading.Event()
gate_runs: list[int] = []


@component(executor="thread", cache=False)
def gated_s25(i: int) -> int:
    gate_runs.append(i)
    gate_s25.wait(60)
    return i


@pipeline(name="gated_pipeline_s25")
def gated_pipeline():
    return gated_s25(1)


def test_two_resumes_of_a_cancelled_run_do_not_both_drive_it(tmp_path):
    """The winner's claim moved the heartbeat but left the run CANCELLED until its RUNNING
    update was written; a second resume reading it then skipped the wait for a live driver,
    claimed over the fresh heartbeat, and both ran every remaining task (SQLite and
    PostgreSQL, CLI and API). The claim now makes the run RUNNING in the same step."""
    from twingraph.engine.engine import Engine
    from twingraph.stores.results.sqlite import SQLiteStorage

    url = f"sqlite:///{tmp_path / 'md.db'}"

    def engine(flush: float = 0.05) -> Engine:
        return Engine(results=SQLiteStorage(str(tmp_path / "results.db")),
                      metadata=SQLMetadataStore(url, create=True), flush_interval=flush,
                      writer="thread")

    gate_s25.clear()
    gate_runs.clear()
    first = engine()
    cancel = threading.Timer(0.5, lambda: [first.cancel(r) for r in list(first.runs)])
    cancel.start()
    r = gated_pipeline.run(engine=first)
    assert r.state is RunState.CANCELLED
    first.close()

    # the winner writes its rows slowly: its RUNNING update comes 3 s after its claim
    winner, loser = engine(flush=3.0), engine()
    out: list = []
    t = threading.Thread(target=lambda: out.append(
        gated_pipeline.run(engine=winner, resume=r.run_id)))
    t.start()
    deadline = time.monotonic() + 10
    while winner.metadata.driver_epoch(r.run_id) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        with pytest.raises(ConflictError):
            gated_pipeline.run(engine=loser, resume=r.run_id)
    finally:
        gate_s25.set()
        t.join(60)
    assert out[0].state is RunState.SUCCESS, out[0].error
    assert gate_runs == [1, 1]                     # the cancelled attempt, and the winner's
    assert winner.metadata.driver_epoch(r.run_id) == 1
    winner.close()
    loser.close()


# -- the thread pool forgets an aborted job that had already finished ----------------------

def test_aborting_a_finished_thread_job_does_not_keep_it_for_ever():
    """``abandon`` took a job it did not see running for a queued one and kept it in
    ``_dropped`` (to skip it when dequeued: never, it had run). Under 'fail' a stop often
    aborts jobs whose outcome is still in the inbox; each kept its whole run alive (665 MB
    after six runs of a pipeline with 20 MB results)."""
    from types import SimpleNamespace

    from twingraph.engine.task import Job
    from twingraph.executors.local import _ThreadPool

    pool = _ThreadPool(2)
    done = threading.Event()
    started = threading.Event()
    release = threading.Event()

    def body():
        started.set()
        release.wait(10)

    def job(fn):
        return Job(SimpleNamespace(node_id="n", fence=1), fn, (), {}, "thread")
    finished, running, queued = job(lambda: 1), job(body), job(lambda: 2)
    pool.submit(finished, lambda out: done.set())
    assert done.wait(10)
    pool.abandon(finished)                  # its outcome was still on its way to the loop
    assert finished not in pool._dropped
    pool.submit(running, lambda out: None)
    assert started.wait(10)
    pool.submit(job(body), lambda out: None)            # takes the other thread
    pool.submit(queued, lambda out: pytest.fail("an aborted queued job ran"))
    time.sleep(0.1)
    pool.abandon(queued)                    # still queued: skipped when its turn comes
    assert queued in pool._dropped
    release.set()
    deadline = time.monotonic() + 10
    while queued in pool._dropped and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pool._dropped and not pool._queued
    pool.shutdown()


# -- a component raising KeyboardInterrupt is a failed task, not Ctrl-C -------------------------

@component(executor="thread", cache=False)
def interrupts_s25(x: int) -> int:
    raise KeyboardInterrupt("kb in component")


@component(executor="thread", cache=False)
def steady_s25(x: int) -> int:
    time.sleep(0.5)
    return x


@pipeline(name="kb_task_s25", error_handler="continue")
def kb_task():
    s = steady_s25(1)
    interrupts_s25(1).result()          # re-raises the task's error
    return s


def test_a_task_raising_keyboardinterrupt_fails_the_run_and_is_not_a_ctrl_c(engine):
    """The re-raised task error is a ``NodeExecutionError`` that is also a
    ``KeyboardInterrupt``: it was taken for Ctrl-C, the run CANCELLED (its other tasks
    too, under 'continue') and ``Pipeline.run`` raised ``KeyboardInterrupt``."""
    r = kb_task.run(engine=engine)           # returns: no KeyboardInterrupt here
    assert r.state is RunState.FAILED, r.error
    assert "kb in component" in str(r.error)
    tasks = {t.node_id: t for t in engine.metadata.get_tasks(r.run_id)}
    assert tasks["steady_s25-0"].state.value == "SUCCESS"
    assert tasks["interrupts_s25-0"].state.value == "FAILED"


# -- a process task may call a component that already ran as a task ----------------------------

def test_a_process_component_can_call_a_component_that_ran_as_a_task(tmp_path):
    """A component remembered the engine it was checked for; pickled by value for a process
    task (a file run by `twingraph run`), it took the engine along: "cannot pickle
    '_thread._local' object"."""
    import json
    import os
    import subprocess
    import sys
    f = tmp_path / "calls_leaf.py"
    f.write_text(
        "from twingraph import component, pipeline\n\n"
        "@component\n"
        "def leaf(x):\n"
        "    return x * 2\n\n"
        "@component(executor='process')\n"
        "def calls_leaf(n):\n"
        "    return [leaf(x=i) for i in range(n)]     # plain calls inside a component\n\n"
        "@pipeline(name='top_s25')\n"
        "def top():\n"
        "    a = leaf(x=10)                           # leaf ran as a task first\n"
        "    a.result()\n"
        "    b = calls_leaf(n=3)\n"
        "    return [a['outputs']['result'], b['outputs']['result']]\n")
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-m", "twingraph", "run", str(f), "--no-cache",
                           "--json", "--no-progress"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [20, [0, 2, 4]]


# -- node execution outside a DAG run checks a user store's bytes ------------------------------

from tests.engine.test_async_store import DictStorage     # noqa: E402


class _Flipping(DictStorage):
    """A store written from the document that returns damaged bytes (a bad disk, a bug)."""

    async def retrieve_result(self, node_id):
        d = self.data.get(node_id)
        return None if d is None else d[:-1] + bytes([d[-1] ^ 1])

    async def stream_result(self, node_id, chunk_size=1 << 20):
        d = self.data.get(node_id)
        if d is None:
            return
        d = bytes([d[0] ^ 1]) + d[1:]
        for i in range(0, len(d), chunk_size):
            yield d[i:i + chunk_size]


def test_execute_node_on_a_user_store_refuses_damaged_bytes():
    """``NodeExecutor`` read a dependency from the user's store as it came: stored 10, read
    back as 11, COMPLETED. A DAG run checks every read (``AsyncStoreAdapter``); so does this
    now."""
    from twingraph.engine.streaming_node import StreamingNodeExecutor

    async def up_streaming(ctx, params):
        async for c in ctx.read_dependency_stream("src"):
            yield bytes(c).upper()

    async def main():
        ex = StreamingNodeExecutor(_Flipping())
        ex.register_operation("mk", lambda deps, params: params["v"])
        ex.register_operation("add", lambda deps, params: sum(deps.values()))
        ex.register_operation("up", lambda deps, params: None)
        ex.register_operation("up_streaming", up_streaming)
        first = await ex.execute_node(N("x", "mk", [], {"v": 10}))
        second = await ex.execute_node(N("y", "add", ["x"], {}))
        src = await ex.execute_node(N("src", "mk", [], {"v": b"hello" * 1000}))
        streamed = await ex.execute_streaming_node(N("dst", "up", ["src"], {}))
        return first, second, src, streamed, ex.storage

    first, second, src, streamed, store = asyncio.run(main())
    assert first.status is NodeStatus.COMPLETED and src.status is NodeStatus.COMPLETED
    assert second.status is NodeStatus.FAILED and second.result_data is None
    assert "IntegrityError" in second.error_message and "corrupted" in second.error_message
    assert "y" not in store.data
    assert streamed.status is NodeStatus.FAILED and "IntegrityError" in streamed.error_message
    assert "dst" not in store.data


# -- a run whose records were lost ends its open task rows -------------------------------------

hold_s25 = threading.Event()
locked_s25 = threading.Event()


@component(executor="thread", cache=False)
def holds_s25(i: int) -> int:
    hold_s25.wait(30)
    return i


@component(executor="thread", cache=False)
def quick_lost_s25(i: int) -> int:
    return i


@pipeline(name="lost_rows_s25", max_parallel=8)
def lost_rows():
    held = [holds_s25(i) for i in range(3)]
    locked_s25.wait(30)
    return [quick_lost_s25(9), *held]


def _run_losing_a_batch(tmp_path, while_locked=lambda md, run_id: None):
    """``lost_rows`` on a real SQLite engine: once its three tasks run, another connection
    holds the result database's write lock past every retry of the batch holding the quick
    task's result (``while_locked(md, run_id)`` runs then); returns (result, md, engine,
    what ``while_locked`` returned)."""
    import sqlite3

    from twingraph.engine.engine import Engine
    from twingraph.stores.results.sqlite import SQLiteStorage

    hold_s25.clear()
    locked_s25.clear()
    md = SQLMetadataStore(f"sqlite:///{tmp_path / 'md.db'}", create=True)
    eng = Engine(results=SQLiteStorage(str(tmp_path / "r.db"), busy_timeout=0.3), metadata=md,
                 writer="thread", flush_interval=0.02)
    out: list = []
    t = threading.Thread(target=lambda: out.append(lost_rows.run(engine=eng)))
    t.start()
    locker, extra = None, None
    try:
        deadline = time.monotonic() + 20
        while True:
            runs = md.list_runs(pipeline="lost_rows_s25")
            if runs and sum(x.state.value == "RUNNING" for x in md.get_tasks(runs[0].run_id)) == 3:
                break
            assert time.monotonic() < deadline, "the tasks never ran"
            time.sleep(0.02)
        locker = sqlite3.connect(str(tmp_path / "r.db"), isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")      # the quick task's result cannot be written
        locked_s25.set()
        extra = while_locked(md, runs[0].run_id)
        time.sleep(2.5)                        # past every retry of its batch
        locker.execute("ROLLBACK")
    finally:
        locked_s25.set()
        hold_s25.set()
        t.join(60)
        if locker is not None:
            locker.close()
    return out[0], md, eng, extra


def test_a_run_whose_records_were_lost_leaves_no_task_or_attempt_running(tmp_path):
    """After a write batch was given up (a disk full, a lock held too long), the recorder
    writes none of the run's task-level records; the run ended FAILED and the tasks and
    attempts that were running stayed RUNNING for good (``runs cancel`` refuses an ended
    run)."""
    r, md, eng, _ = _run_losing_a_batch(tmp_path)
    assert r.state is RunState.FAILED and "locked" in str(r.error), r.error
    tasks = md.get_tasks(r.run_id)
    assert not [x for x in tasks if not x.state.terminal], [(x.node_id, x.state) for x in tasks]
    assert all("records could not be written" in (x.error or "") for x in tasks
               if x.node_id.startswith("holds"))
    assert not [a for a in md.get_attempts(r.run_id) if a.state.value == "RUNNING"]
    eng.close()


def test_a_dependency_on_an_unknown_node_is_named_with_every_other_problem():
    """``dependencies: {d: [a]}`` (no node d) was raised alone and hid the DAG's dangling
    references and unknown operations (decision 0083: every offending node at once)."""
    from twingraph.errors import GraphValidationError
    s = DynamicScheduler(MemoryStorage(), ExecutionConfig())
    s.executor.register_operation("add", lambda deps, params: 0)
    dag = DAGDefinition("unk_s25", [N("a", "nope", [], {}), N("b", "add", ["ghost", "a"], {})],
                        dependencies={"d": ["a"], "a": ["phantom"]})
    with pytest.raises(GraphValidationError) as err:
        s.run(dag)
    e = err.value
    assert e.nodes == ["a", "b", "d"]
    assert "dependencies name unknown nodes" in e.reason and "dangling" in e.reason
    assert "phantom" in e.why["a"] and "nope" in e.why["a"] and "ghost" in e.why["b"]
    assert "named in dependencies" in e.why["d"]
    # alone, as before
    with pytest.raises(GraphValidationError, match="^dependencies name unknown nodes: d$"):
        s.run(DAGDefinition("unk2_s25", [N("a", "add", [], {})], dependencies={"d": ["a"]}))
    s.close()


def _depth_s25(deps, params):
    n, x = 0, params["x"]
    while isinstance(x, list) and x:
        n, x = n + 1, x[0]
    return n


def test_a_node_with_deeply_nested_parameters_runs_and_is_memoized(tmp_path):
    """Parameters nested ~500 lists deep failed the node with ``RecursionError`` in its key
    (a call's arguments had a fallback, a declared node's parameters not)."""
    deep, other = [], ["leaf"]                 # they differ only at the bottom
    for _ in range(800):
        deep, other = [deep], [other]
    md = SQLMetadataStore(f"sqlite:///{tmp_path / 'md.db'}", create=True)
    s = DynamicScheduler(MemoryStorage(), ExecutionConfig(max_retries=0), metadata=md)
    s.executor.register_operation("depth", _depth_s25)

    def run(x):
        r = s.run(DAGDefinition("deep_s25", [N("a", "depth", [], {"x": x})]))
        assert r.state is RunState.SUCCESS, r.failures
        (task,) = md.get_tasks(r.run_id)
        return task.cache_status, s.node_results("deep_s25")["a"].result_data

    assert run(deep) == ("miss", 800)
    assert run(deep) == ("hit", 800)
    assert run(other) == ("miss", 801)          # not a wrong hit
    s.close()


@component(cache=False)
def show_s25(x) -> str:
    return repr(x)


@pipeline(name="ordered_s25")
def ordered():
    from collections import OrderedDict
    return show_s25(x=OrderedDict(k=echo_s25(v=1)["outputs"]["result"]))


def test_a_future_inside_an_ordereddict_is_refused_in_words_that_say_so(engine):
    """The error listed dicts as accepted: an OrderedDict is one, to its author."""
    r = ordered.run(engine=engine)
    assert r.state is RunState.FAILED
    assert "an OrderedDict, a defaultdict, a deque are other objects" in str(r.error)


# -- BaseComponent.execute gets parent_hash when it declares it --------------------------------

from twingraph import BaseComponent   # noqa: E402


class TakesLineage(BaseComponent):
    def validate_inputs(self, x):              # lineage is not an input
        if x < 0:
            raise ValueError("x must be >= 0")

    def execute(self, x, parent_hash=None):
        return {"ph": parent_hash}


class IgnoresLineage(BaseComponent):
    def execute(self, x):
        return {"x": x}


@pipeline(name="base_lineage_s25")
def base_lineage():
    s = echo_s25(v=1)
    return {"takes": TakesLineage()(x=1, parent_hash=s["hash"])["outputs"]["ph"],
            "ignores": IgnoresLineage()(x=2, parent_hash=s["hash"])["outputs"]["x"],
            "src": s["hash"]}


def test_a_base_component_declaring_parent_hash_gets_it(engine):
    """Taken out of every call (decision 0004 passes lineage arguments to a function that
    declares them; a ``BaseComponent.execute`` never got them)."""
    r = base_lineage.run(engine=engine)
    assert r.state is RunState.SUCCESS, r.error
    assert r.value["takes"] == r.value["src"] and r.value["ignores"] == 2
    assert TakesLineage()(x=1, parent_hash="abc") == {"ph": "abc"}         # a plain call too
    assert IgnoresLineage()(x=3, parent_hash="abc") == {"x": 3}


# -- resume --no-cache keeps what the run itself stored ----------------------------------------

def test_a_no_cache_resume_keeps_the_memoized_tasks_the_run_stored(engine, tmp_path):
    """``--resume RUN --no-cache`` ran the run's memoized tasks again (looked up under the
    run's own key, never their structural one), while its cache=False tasks were kept."""
    marks = tmp_path / "marks"
    marks.mkdir()

    @component(cache=True)
    def step_s25(i: int, where: str) -> int:
        (Path(where) / f"step{i}-{len(list(Path(where).iterdir()))}").touch()
        return i

    @component(cache=False)
    def own_s25(i: int, where: str) -> int:
        (Path(where) / f"own{i}-{len(list(Path(where).iterdir()))}").touch()
        return i

    @component(cache=False)
    def flaky_s25(xs: list, where: str) -> int:
        if not (Path(where) / "ok").exists():
            raise RuntimeError("not yet")
        return sum(xs)

    @pipeline(name="no_cache_resume_s25", error_handler="continue")
    def p(where: str):
        xs = [step_s25(i, where)["outputs"]["result"] for i in range(3)]
        xs.append(own_s25(9, where)["outputs"]["result"])
        return flaky_s25(xs, where)

    r = p.run(engine=engine, where=str(marks))
    assert r.state is RunState.FAILED
    before = sorted(x.name for x in marks.iterdir())
    (marks / "ok").touch()
    again = p.run(engine=engine, where=str(marks), resume=r.run_id, no_cache=True)
    assert again.state is RunState.SUCCESS, again.error
    assert again.value["outputs"]["result"] == 0 + 1 + 2 + 9
    assert sorted(x.name for x in marks.iterdir()) == sorted(before + ["ok"])   # nothing rerun


# -- strings with lone surrogates (undecodable file names) ------------------------------------

@component(cache=True)
def name_len_s25(path: str) -> int:
    return len(path)


@pipeline(name="surrogates_s25")
def surrogates(names: list):
    return [name_len_s25(path=n)["outputs"]["result"] for n in names]


def test_a_file_name_with_an_undecodable_byte_is_a_valid_input(engine):
    """``os.listdir`` gives ``'caf\\udce9.txt'`` for a Latin-1 name on a UTF-8 system: the
    key's JSON was encoded strictly and every such task failed before it ran."""
    from twingraph.core.hashing import canonical_json
    names = ["caf\udce9.txt", "\ud800" + "x" * 70, "café.txt"]
    r = surrogates.run(engine=engine, names=names)
    assert r.state is RunState.SUCCESS, r.error
    assert r.value == [8, 71, 8]
    again = surrogates.run(engine=engine, names=names)
    assert {t.cache_status for t in engine.metadata.get_tasks(again.run_id)} == {"hit"}
    assert canonical_json(["café"]) == '["café"]'.encode()           # other text: as before
    assert canonical_json(["caf\udce9"]) != canonical_json(["caf\udce8"])


def test_runs_show_prints_a_parameter_with_a_lone_surrogate(tmp_path):
    import os
    import subprocess
    import sys
    f = tmp_path / "p.py"
    f.write_text("from twingraph import component, pipeline\n\n"
                 "@component\n"
                 "def echo(a):\n"
                 "    return len(a)\n\n"
                 "@pipeline(name='untyped_s25')\n"
                 "def untyped(a=None):\n"
                 "    return echo(a)\n")
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"), PYTHONIOENCODING="utf-8")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "twingraph", *args], env=env,
                              capture_output=True, text=True, timeout=120,
                              errors="backslashreplace")
    ran = cli("run", str(f), "--param", 'a="\\ud800"', "--no-progress")
    assert ran.returncode == 0, ran.stderr
    run_id = ran.stdout.split("run ")[1].split()[0] if "run " in ran.stdout else \
        ran.stderr.split("run ")[1].split()[0]
    shown = cli("runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert '"a": "\\ud800"' in shown.stdout


def test_a_driver_taken_over_does_not_end_the_new_drivers_rows_after_a_lost_batch(tmp_path):
    """Regression review: the ending of open rows after a lost batch read fences back from
    the store and wrote them, so a driver taken over cancelled the new driver's task and
    failed its attempt (fencing bypassed)."""
    from twingraph.core.records import AttemptRecord, TaskUpdate
    from twingraph.core.states import TaskState, fence

    def take_over(md, rid):
        epoch = md.claim_driver(rid)              # another driver takes the run over
        now = time.time()
        md.write([TaskUpdate(rid, "holds_s25-0", TaskState.RUNNING, now, fence=fence(epoch, 1)),
                  AttemptRecord(rid, "holds_s25-0", 1, fence(epoch, 1), TaskState.RUNNING,
                                "local", now)])
        return epoch
    r, md, eng, epoch = _run_losing_a_batch(tmp_path, take_over)
    assert r.state is RunState.FAILED
    mine = [x for x in md.get_tasks(r.run_id) if x.node_id == "holds_s25-0"][0]
    assert mine.state.value == "RUNNING" and mine.fence == fence(epoch, 1)
    attempt = [a for a in md.get_attempts(r.run_id) if a.fence == fence(epoch, 1)][0]
    assert attempt.state.value == "RUNNING"
    eng.close()


def test_a_resume_that_fails_after_its_claim_gives_the_run_back_as_it_was(tmp_path, monkeypatch):
    """Regression review: the claim makes the run RUNNING; a resume that then failed (a
    Ctrl-C or a store error reading its tasks) left it RUNNING with no driver."""
    from twingraph.engine.engine import Engine
    from twingraph.stores.results.sqlite import SQLiteStorage
    md = SQLMetadataStore(f"sqlite:///{tmp_path / 'md.db'}", create=True)
    eng = Engine(results=SQLiteStorage(str(tmp_path / "r.db")), metadata=md,
                 flush_interval=0.02)
    gate_s25.clear()
    cancel = threading.Timer(0.5, lambda: [eng.cancel(r) for r in list(eng.runs)])
    cancel.start()
    r = gated_pipeline.run(engine=eng)
    assert r.state is RunState.CANCELLED
    before = md.get_run(r.run_id)

    def boom(run_id):
        raise KeyboardInterrupt("Ctrl-C while the resume read the task rows")
    monkeypatch.setattr(md, "get_tasks", boom)
    with pytest.raises(KeyboardInterrupt):
        gated_pipeline.run(engine=eng, resume=r.run_id)
    monkeypatch.undo()
    after = md.get_run(r.run_id)
    assert after.state is RunState.CANCELLED and after.error == before.error
    gate_s25.set()
    again = gated_pipeline.run(engine=eng, resume=r.run_id)     # and it can be resumed
    assert again.state is RunState.SUCCESS, again.error
    eng.close()


@pipeline(name="inner_late_s25", timeout=1)
def inner_late(seconds: float):
    _spin(seconds)                           # past its timeout, within the grace period
    return "value"


@pipeline(name="outer_late_s25", error_handler="continue")
def outer_late(seconds: float):
    try:
        return inner_late(seconds)
    except PipelineTimeout as exc:
        nested_events.append(f"caught: {exc}")
        return "handled"


def test_a_nested_body_returning_within_the_grace_period_raises_at_the_call(engine):
    """Regression review: a body 0.5 s over its timeout returned its value, and the run then
    failed with a timeout the calling body never had a chance to catch."""
    nested_events.clear()
    r = outer_late.run(engine=engine, seconds=1.5)
    assert r.state is RunState.SUCCESS and r.value == "handled", r.error
    assert nested_events == ["caught: pipeline inner_late_s25 timed out after 1s; its body "
                             "returned after that"]
    in_time = outer_late.run(engine=engine, seconds=0.1)
    assert in_time.state is RunState.SUCCESS and in_time.value == "value"


@pipeline(name="cheap_inner_s25", timeout=3600)
def cheap_inner(i: int):
    return i


@pipeline(name="many_calls_s25")
def many_calls(n: int):
    import gc

    from twingraph.engine.scopes import Scope
    total = sum(cheap_inner(i) for i in range(n))
    gc.collect()
    live = sum(isinstance(o, Scope) for o in gc.get_objects())      # while the run goes on
    return {"total": total, "live": live}


def test_calls_of_a_nested_pipeline_with_a_timeout_are_not_kept_until_it_passes(engine):
    """Regression review: each call's scope (and its stop machinery) stayed in the timer heap
    for the timeout's length: 200,000 calls with an hour's timeout held 666 MB."""
    r = many_calls.run(engine=engine, n=2000)
    assert r.state is RunState.SUCCESS, r.error
    assert r.value["total"] == sum(range(2000)) and r.value["live"] < 50, r.value


@pipeline(name="plain_params_s25")
def plain_params(x: int = 1):
    return x


def test_a_run_option_given_to_a_call_of_the_pipeline_is_refused_with_a_hint(engine):
    with pytest.raises(ValidationError, match=r"engine is a run option: pass it to "
                                              r"plain_params\.run\(\.\.\.\)"):
        plain_params(2, engine=engine)


# -- memo review (session 25): wrong hits -------------------------------------------------------

import functools   # noqa: E402


@component(cache=True)
def table_s25() -> dict:
    return {"a": 1, "b": 2}


@component(cache=True)
def pick_s25(which: str, delay: float) -> str:
    time.sleep(delay)
    return which


@component(cache=True)
def times_ten_s25(v: int) -> int:
    return v * 10


@pipeline(name="future_key_s25", timeout=30)
def future_key(which: str, delay: float):
    k = pick_s25(which, delay)
    t = table_s25()
    return times_ten_s25(t["outputs"][k["outputs"]["result"]])


def test_a_future_used_as_a_key_is_keyed_by_its_value_and_waited_for(engine):
    """``t['outputs'][k['outputs']['result']]`` kept the future ``k`` in the path: keyed by its
    printed name (a hit returning the value for 'a' when ``k`` became 'b'), and the loop
    itself waited on it when it read the path before ``k``'s task had run (a run that never
    ended)."""
    got = [future_key.run(engine=engine, which=w, delay=d) for w, d in
           (("a", 0.0), ("b", 0.0), ("a", 0.5))]
    assert [r.state for r in got] == [RunState.SUCCESS] * 3, [r.error for r in got]
    assert [r.value["outputs"]["result"] for r in got] == [10, 20, 10]


@component(cache=True)
def source_s25(n: int) -> int:
    return n


@component(cache=True)
def provenance_s25(x: int, parent_hash=None) -> dict:
    return {"x": x, "from": parent_hash}


@pipeline(name="provenance_s25")
def provenance(n: int):
    s = source_s25(n)
    return {"report": provenance_s25(7, parent_hash=s["hash"]), "src": s["hash"]}


def test_a_parent_hash_the_function_receives_is_in_its_key(engine):
    """It was always left out of the key: a function that reports its provenance returned
    the first run's parent hash from a hit."""
    for n in (1, 2):
        r = provenance.run(engine=engine, n=n)
        assert r.value["report"]["outputs"]["from"] == r.value["src"], n


def _sets_k(f):
    @functools.wraps(f)
    def wrapper(*a, **kw):
        kw.setdefault("k", 10)
        return f(*a, **kw)
    return wrapper


@component(cache=True)
@_sets_k
def scale_s25(x: int, k: int = 2) -> int:
    return x * k


@pipeline(name="wrapped_defaults_s25")
def wrapped_defaults():
    return [scale_s25(1)["outputs"]["result"], scale_s25(1, k=2)["outputs"]["result"]]


def test_a_wrapper_that_sets_its_own_default_keys_calls_as_made(engine):
    """Calls were named by the wrapped function's signature, which follows ``__wrapped__``:
    ``scale(1)`` and ``scale(1, k=2)`` were one computation (its default k=2 dropped), though
    the wrapper makes k 10."""
    r = wrapped_defaults.run(engine=engine)
    assert r.value == [10, 2], r.value


@component(cache=True)
def last_digit_s25(n: int) -> int:
    return n % 10


@pipeline(name="big_int_s25")
def big_int(k: int):
    return last_digit_s25(10 ** 5000 + k)


def test_an_int_beyond_the_str_digits_limit_is_a_valid_input(engine):
    """It failed the task as it was keyed (``ValueError: Exceeds the limit (4300 digits)``)."""
    got = [big_int.run(engine=engine, k=k) for k in (1, 2, 1)]
    assert [r.value["outputs"]["result"] for r in got] == [1, 2, 1], [r.error for r in got]
    assert engine.metadata.get_tasks(got[2].run_id)[0].cache_status == "hit"


@pipeline(name="unknown_parent_s25")
def unknown_parent():
    r = echo_s25(v=1)
    return echo_s25(v=2, parent_hashes=[r["hash"], "deadbeef" * 8])


def test_a_parent_hash_naming_no_task_of_the_run_is_said_in_its_log(engine):
    """Dropped without a word: no edge, no warning (a typo, another run's hash)."""
    r = unknown_parent.run(engine=engine)
    assert r.state is RunState.SUCCESS, r.error
    logs = [x for x in engine.metadata.get_logs(r.run_id) if x.level == "warning"]
    assert [x.node_id for x in logs] == ["echo_s25-1"]
    assert "parent_hashes deadbeefdeadbeef… of echo_s25-1 names no task" in logs[0].message
    from twingraph.lineage import run_lineage
    _, edges = run_lineage(engine.metadata, r.run_id)
    assert [(e.src, e.dst) for e in edges if e.kind == "DEPENDS_ON"] == [("echo_s25-0",
                                                                          "echo_s25-1")]


# -- a result that is a view of a reused buffer ------------------------------------------------

import numpy as np   # noqa: E402

WORKSPACE_S25 = np.zeros(1_000_000)


@component(executor="thread", cache=False)
def fill_s25(v: float):
    WORKSPACE_S25[:] = v
    return WORKSPACE_S25[:]                # a view of a workspace the next call fills again


@component(executor="thread", cache=False)
def total_s25(a) -> float:
    return float(a.sum())


@component(executor="thread", cache=False)
def shaped_s25(n: int):
    a = np.arange(float(n))
    return a.reshape(2, -1)                # a view of a local array: nobody else holds it


@pipeline(name="workspace_s25")
def workspace():
    a = fill_s25(1.0)["outputs"]["result"]
    s1 = total_s25(a)
    b = fill_s25(2.0, parent_hash=s1["hash"])["outputs"]["result"]
    return {"s1": s1, "s2": total_s25(b), "again": total_s25(a), "shape": shaped_s25(10)}


def test_a_result_that_views_a_reused_buffer_is_kept_as_it_was_returned(tmp_path):
    """The view's bytes were hashed at completion and written later, after the next fill had
    changed them: the write failed (a hash mismatch) and the run with it."""
    from twingraph.engine.engine import Engine
    from twingraph.stores.results.sqlite import SQLiteStorage
    md = SQLMetadataStore(f"sqlite:///{tmp_path / 'md.db'}", create=True)
    eng = Engine(results=SQLiteStorage(str(tmp_path / "r.db")), metadata=md)
    r = workspace.run(engine=eng)
    assert r.state is RunState.SUCCESS, r.error
    assert r.value["s1"]["outputs"]["result"] == 1e6
    assert r.value["s2"]["outputs"]["result"] == 2e6
    assert r.value["again"]["outputs"]["result"] == 1e6        # a is what fill returned
    shaped = r.value["shape"]["outputs"]["result"]
    assert shaped.shape == (2, 5) and shaped[1, 4] == 9.0
    eng.close()


def test_settled_copies_only_views_of_memory_held_elsewhere():
    from twingraph.serialization import settled

    def local_view():
        a = np.arange(10.0)
        return a.reshape(2, 5)
    v = local_view()
    assert settled(v) is v and not v.base.flags.writeable        # no copy; its base frozen
    shared = np.zeros(4)
    w = shared[:]
    assert settled(w) is not w and shared.flags.writeable         # a copy; the buffer as it was
    out = {"result": shared[1:]}
    assert settled(out)["result"].base is None
    buf = bytearray(16)
    assert settled(np.frombuffer(buf)).base is None               # a writable bytearray's view
    assert settled(np.frombuffer(bytes(16))).base is not None     # an immutable one's: kept


@component(executor="thread", cache=False)
def big_result_s25(i: int) -> bytes:
    return bytes(5_000_000) + bytes([i])


@pipeline(name="big_results_s25", max_parallel=4)
def big_results():
    return [len(big_result_s25(i)["outputs"]["result"]) for i in range(4)]


def _holds_big(v, depth=0):
    if isinstance(v, bytes):
        return len(v) >= 5_000_000
    if depth > 3:
        return False
    if isinstance(v, dict):
        return any(_holds_big(x, depth + 1) for x in v.values())
    if isinstance(v, (list, tuple)):
        return any(_holds_big(x, depth + 1) for x in v[:10])
    return _holds_big(getattr(v, "value", None), depth + 1) if hasattr(v, "value") else False


def test_idle_worker_threads_hold_no_result(engine):
    """An idle pool thread kept its last job's result and inputs as locals while it waited
    for the next job (up to 32 large results pinned in a long-lived process)."""
    import gc
    import sys
    r = big_results.run(engine=engine)
    assert r.state is RunState.SUCCESS and r.value == [5_000_001] * 4
    del r
    gc.collect()
    time.sleep(0.2)
    names = {t.ident: t.name for t in threading.enumerate()}
    held = []
    for ident, frame in sys._current_frames().items():
        while frame is not None:
            for name, v in frame.f_locals.items():
                if _holds_big(v):
                    held.append((names.get(ident), frame.f_code.co_name, name))
            frame = frame.f_back
    assert not held, held


# -- regression review, round 2 -------------------------------------------------------------------

@component(cache=True)
def pairs_s25() -> dict:
    return {"pairs": {("a", 1): 10, ("b", 1): 20}, "lst": [10, 20, 30, 40]}


@component(cache=True)
def count_s25(n: int) -> int:
    return n


@component(cache=True)
def sum_s25(xs) -> int:
    return sum(xs)


@pipeline(name="nested_keys_s25", timeout=30)
def nested_keys(which: str, start: int):
    t = pairs_s25()
    k = pick_s25(which, 0.2)
    s = count_s25(start)
    return [times_ten_s25(t["outputs"]["pairs"][(k["outputs"]["result"], 1)]),
            sum_s25(t["outputs"]["lst"][s["outputs"]["result"]:])]


def test_futures_in_a_tuple_key_or_a_slice_are_waited_for_and_keyed_by_value(engine):
    """A future inside a tuple key hung the run (the loop waited on it); one in a slice gave
    wrong hits (900 for every start)."""
    got = [nested_keys.run(engine=engine, which=w, start=n) for w, n in
           (("a", 1), ("b", 2), ("a", 3))]
    assert [r.state for r in got] == [RunState.SUCCESS] * 3, [r.error for r in got]
    assert [[x["outputs"]["result"] for x in r.value] for r in got] == \
        [[100, 90], [200, 70], [100, 40]]


@pipeline(name="quick_inner_s25", timeout=0.005)
def quick_inner(d: float):
    _spin(d)
    return "v"


@pipeline(name="many_late_s25", error_handler="continue")
def many_late(n: int):
    import random
    caught = returned = 0
    for _ in range(n):
        try:
            quick_inner(0.005 + random.uniform(-0.002, 0.0005))
            returned += 1
        except PipelineTimeout:
            caught += 1
    return [returned, caught]


def test_a_timeout_as_a_nested_body_returns_is_either_raised_or_not_a_failure(engine):
    """A nested timeout taken just as the body returned its value was recorded after the
    call had returned, and failed the run with a failure nobody could catch (5 in 1,500)."""
    import sys
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        r = many_late.run(engine=engine, n=1500)
    finally:
        sys.setswitchinterval(before)
    assert r.state is RunState.SUCCESS, r.error
    assert sum(r.value) == 1500


class _Runner:
    def execute(self, x):              # not a BaseComponent: its execute is no concern
        return x

    def process(self, x, parent_hash=None):
        return {"x": x, "from": parent_hash}


_runner_s25 = component(_Runner().process, name="runner_process_s25")


@pipeline(name="bound_lineage_s25")
def bound_lineage(n: int):
    s = source_s25(n)
    return {"report": _runner_s25(7, parent_hash=s["hash"]), "src": s["hash"]}


def test_a_bound_method_component_whose_class_has_execute_keys_its_parent_hash(engine):
    """Any bound method whose class had ``execute`` was taken for a BaseComponent: its
    execute's signature decided, and the hash it received was left out of its key."""
    for n in (1, 2):
        r = bound_lineage.run(engine=engine, n=n)
        assert r.value["report"]["outputs"]["from"] == r.value["src"], n


@pipeline(name="big_param_s25")
def big_param(n):
    return last_digit_s25(n)


def test_a_huge_int_parameter_is_recorded_as_inexact_and_keys_anywhere(engine):
    """The run record refused it ("not JSON-serialisable: Exceeds the limit (4300 digits)")
    after repeated recorder tracebacks; and a dict key or an int subclass that big sent the
    canonical JSON fallback into endless recursion."""
    from twingraph.core.hashing import canonical_json

    class Big(int):
        pass
    r = big_param.run(engine=engine, n=10 ** 5000 + 3)
    assert r.state is RunState.SUCCESS and r.value["outputs"]["result"] == 3
    rec = engine.metadata.get_run(r.run_id)
    assert rec.params["n"].startswith("<int of ") and "n" in rec.source["inexact_params"]
    assert canonical_json({10 ** 5000: 1}) != canonical_json({10 ** 5000 + 1: 1})
    assert canonical_json([Big(10 ** 5000)]) == canonical_json([10 ** 5000])


# -- errors whose constructor takes more than a message ----------------------------------------

@component(executor="thread", cache=False)
def raises_s25(kind: str):
    import json
    import subprocess
    if kind == "json":
        json.loads("{bad")
    if kind == "proc":
        subprocess.run(["false"], check=True)
    if kind == "decode":
        b"\xff".decode()
    if kind == "file":
        open("/nonexistent/s25/f.txt")
    return kind


@pipeline(name="own_errors_s25", error_handler="continue")
def own_errors():
    import json
    import subprocess
    caught = {}
    for kind, cls in (("json", json.JSONDecodeError), ("proc", subprocess.CalledProcessError),
                      ("decode", ValueError), ("file", FileNotFoundError)):
        try:
            raises_s25(kind)["outputs"]["result"].result()
        except cls as exc:
            caught[kind] = [type(exc).__name__, exc.node_id, getattr(exc, "pos", None),
                            getattr(exc, "returncode", None), getattr(exc, "errno", None),
                            getattr(exc, "filename", None)]
    return caught


def test_an_error_whose_constructor_takes_more_than_a_message_is_caught_by_its_class(engine):
    """``JSONDecodeError``, ``CalledProcessError``, ``UnicodeDecodeError`` reached the body as
    a plain ``NodeExecutionError`` (``except ValueError`` missed them), and an OSError's
    ``errno``/``filename`` were None."""
    r = own_errors.run(engine=engine)
    assert r.state is RunState.SUCCESS, r.error
    assert r.value == {
        "json": ["JSONDecodeError", "raises_s25-0", 1, None, None, None],
        "proc": ["CalledProcessError", "raises_s25-1", None, 1, None, None],
        "decode": ["UnicodeDecodeError", "raises_s25-2", None, None, None, None],
        "file": ["FileNotFoundError", "raises_s25-3", None, None, 2, "/nonexistent/s25/f.txt"]}


def test_task_errors_keep_their_class_text_attributes_and_can_be_copied():
    """Regression review round 3: an OSError without a file name printed ': None'; a copy of
    an error built from its own arguments failed; HTTPError and ExceptionGroup (their own
    ``__new__``) came as plain errors; a one-message constructor's error lost its attributes
    (``e.code`` its default, ``e.response`` None); ``__slots__`` were not copied."""
    import copy
    import http.client
    import urllib.error

    from twingraph.engine.futures import _task_error

    class SlotErr(Exception):
        __slots__ = ("code",)

        def __init__(self, code):
            super().__init__(code)
            self.code = code

        def __str__(self):
            return f"code {self.code}"

    class WithDefault(Exception):
        def __init__(self, message, code=500):
            super().__init__(message)
            self.code = code

    cases = [(ConnectionRefusedError(111, "Connection refused"), "[Errno 111] Connection refused",
              {"errno": 111}),
             (SlotErr(7), "code 7", {"code": 7}),
             (WithDefault("m", code=404), "task n-0 failed: WithDefault: m", {"code": 404}),
             (urllib.error.HTTPError("http://x", 404, "Not Found", {}, None),
              "HTTP Error 404: Not Found", {"code": 404}),
             (http.client.IncompleteRead(b"abc", 10),
              "IncompleteRead(3 bytes read, 10 more expected)", {"expected": 10}),
             (ExceptionGroup("eg", [ValueError(1)]), "eg (1 sub-exception)", {})]
    for err, text, attrs in cases:
        e = _task_error(err, "n-0")
        assert isinstance(e, type(err)) and e.node_id == "n-0", err
        assert str(e) == text
        for k, v in attrs.items():
            assert getattr(e, k) == v, (err, k)
        c = copy.copy(e)
        assert type(c) is type(e) and str(c) == text


@component(cache=True)
def grid_s25():
    return np.arange(20).reshape(2, 10)


@component(cache=True)
def as_list_s25(v) -> list:
    return [int(x) for x in v]


@pipeline(name="slice_in_tuple_s25")
def slice_in_tuple(k: int):
    g = grid_s25()["outputs"]["result"]
    n = count_s25(k)["outputs"]["result"]
    return as_list_s25(g[0, 0:n])


def test_a_future_in_a_slice_inside_a_tuple_key_is_waited_for(engine):
    got = [slice_in_tuple.run(engine=engine, k=k).value["outputs"]["result"] for k in (3, 5)]
    assert got == [[0, 1, 2], [0, 1, 2, 3, 4]]


def test_settled_follows_the_owner_and_counts_the_results_own_views():
    """Regression review round 3: ``as_strided`` of a reused buffer (its base is NumPy's own
    holder) and a view of a view of a shared bytearray were kept, and the run failed; two
    views of one local array in the outputs were both copied."""
    from numpy.lib.stride_tricks import as_strided

    from twingraph.serialization import settled
    workspace, shared_bytes = np.zeros(10), bytearray(80)

    def strided():
        return as_strided(workspace, shape=(5,), strides=(16,))

    def view_of_view():
        a = np.frombuffer(shared_bytes)
        return a[:]

    def two_views():
        a = np.arange(10.0)
        return {"x": a[1:], "y": a[:-1]}

    def whole_and_half():
        a = np.arange(10.0)
        return {"full": a, "half": a[::2]}
    for make in (strided, view_of_view):
        v = make()
        assert settled(v) is not v, make
    for make in (two_views, whole_and_half):
        v = make()
        out = settled(v)
        assert all(out[k] is v[k] for k in v), make
    assert workspace.flags.writeable
