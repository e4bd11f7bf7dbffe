"""Regressions for bugs found in review: no run may hang, lose a result, or cross another run.

Real engines, stores, threads and worker processes. Faults no input can cause on cue are
injected by small subclasses of the real stores, each saying what it stands for: a metadata
store whose writes fail on command (a locked database, a disk error), a result store whose
lookups raise. Nothing else is replaced."""
import os
import random
import threading
import time
from collections import namedtuple

import pytest

from twingraph import component, pipeline
from twingraph.core.states import RunState, TaskState
from twingraph.errors import ValidationError
from twingraph.engine.dynamic import DAGDefinition, DynamicScheduler, ExecutionConfig, NodeDefinition
from twingraph.engine.engine import Engine
from twingraph.executors.local import LocalExecutor
from twingraph.stores.metadata import MemoryMetadataStore
from twingraph.stores.results.memory import MemoryStorage


def _engine(**kw):
    return Engine(results=MemoryStorage(), metadata=MemoryMetadataStore(), **kw)


@component
def echo(x):
    return x


@component
def boom(x):
    time.sleep(0.02)
    raise ValueError("boom")


def test_an_argument_that_cannot_be_hashed_fails_its_task_not_the_run():
    eng = _engine()

    @pipeline(timeout=5)
    def p():
        return echo(x=threading.Lock())

    t0 = time.monotonic()
    r = p.run(engine=eng)
    assert time.monotonic() - t0 < 3
    assert r.state is RunState.FAILED and "cannot encode a value of type lock" in str(r.error)
    eng.close()


def test_futures_inside_named_tuples_are_followed():
    eng = _engine()
    Pair = namedtuple("Pair", "a b")

    @component
    def add(pair):
        return pair.a + pair.b

    @pipeline
    def p():
        one, two = echo(x=1), echo(x=2)
        return add(pair=Pair(one["outputs"]["result"], two["outputs"]["result"]))

    assert p.run(engine=eng).value["outputs"]["result"] == 3
    eng.close()


def test_a_failed_twin_fails_its_alias_and_skips_what_follows():
    eng = _engine()

    @pipeline(error_handler="continue", timeout=10)
    def p():
        boom(x=1)
        twin = boom(x=1)                  # same key: an alias of the first call
        echo(x=twin["outputs"]["result"])
        return None

    t0 = time.monotonic()
    r = p.run(engine=eng)
    assert time.monotonic() - t0 < 5
    states = {t.node_id: t.state for t in eng.metadata.get_tasks(r.run_id)}
    assert states == {"boom-0": TaskState.FAILED, "boom-1": TaskState.FAILED,
                      "echo-0": TaskState.SKIPPED}
    assert set(r.failures) == {"boom-0", "boom-1"}
    eng.close()


def test_identical_failing_dag_roots_finish():
    def no_data(deps, params):
        raise ValueError("no data")

    s = DynamicScheduler(MemoryStorage(), ExecutionConfig(retry_failed_nodes=False),
                         metadata=MemoryMetadataStore())
    s.executor.register_operation("no_data", no_data)
    s.executor.register_operation("use", lambda deps, params: 1)
    dag = DAGDefinition("twins", [NodeDefinition("a", "no_data", [], {}),
                                  NodeDefinition("b", "no_data", [], {}),
                                  NodeDefinition("c", "use", ["a"], {}),
                                  NodeDefinition("d", "use", ["b"], {})])
    done = {}
    th = threading.Thread(target=lambda: done.setdefault("r", s.run(dag)))
    th.start()
    th.join(10)
    assert "r" in done, "the DAG run never finished"
    assert done["r"].progress["failed"] == 2 and done["r"].progress["skipped"] == 2
    s.engine.close()


def test_an_alias_keeps_its_value_until_its_twin_is_stored():
    @component
    def f(x):
        time.sleep(0.01)
        return {"v": x}

    @pipeline
    def p():
        x = f(x=1)
        y = f(x=1)                        # alias of x
        echo(x=y).result()                # y's only consumer has run
        return y["outputs"]["v"].result()

    for _ in range(5):
        eng = _engine(flush_interval=0.5)   # the twin's result reaches the store late
        r = p.run(engine=eng)
        assert r.state is RunState.SUCCESS and r.value == 1, r.error
        eng.close()


def test_cache_false_calls_are_never_merged():
    eng = _engine()

    @component(cache=False)
    def draw():
        return random.random()

    @pipeline
    def p():
        return [draw() for _ in range(4)]

    values = [v["outputs"]["result"] for v in p.run(engine=eng).value]
    assert len(set(values)) == 4
    eng.close()


@pytest.mark.slow
def test_an_abandoned_thread_does_not_drop_another_runs_result():
    eng = _engine()

    @component(timeout=1.0, cache=False)
    def nap(seconds):
        time.sleep(seconds)
        return seconds

    @pipeline
    def p(seconds):
        return nap(seconds=seconds)

    out = {}
    a = threading.Thread(target=lambda: out.setdefault("a", p.run(3.0, engine=eng)))
    a.start()
    time.sleep(0.2)
    b = p.run(0.9, engine=eng)            # same node id and fence as run A's task
    a.join()
    assert out["a"].state is RunState.FAILED
    assert b.state is RunState.SUCCESS, b.error
    eng.close()


@pytest.mark.slow
def test_a_queued_process_job_never_runs_after_cancel(tmp_path):
    eng = _engine(executor=LocalExecutor(max_processes=1))

    @component(cache=False, executor="process")
    def mark(tag, where):
        time.sleep(1.5)
        open(os.path.join(where, tag), "w").close()
        return tag

    @pipeline
    def p():
        return [mark(tag="a", where=str(tmp_path)), mark(tag="b", where=str(tmp_path))]

    r = p.run(engine=eng, on_start=lambda loop: threading.Timer(0.5, loop.cancel).start())
    assert r.state is RunState.CANCELLED
    time.sleep(3)
    assert os.listdir(tmp_path) == []
    eng.close()


class _FlakyStore(MemoryMetadataStore):
    """A metadata store whose writes fail on command, like a database briefly locked or a disk
    error: failures cannot be made to happen on cue with a real database."""

    def __init__(self, fail_first=0, poisoned=None):
        super().__init__()
        self.fail_first, self.poisoned = fail_first, poisoned

    def write(self, batch):
        if self.fail_first:
            self.fail_first -= 1
            raise OSError("database is locked")
        if self.poisoned is not None and any(getattr(r, "run_id", None) == self.poisoned
                                             for r in batch):
            raise OSError(f"disk I/O error on run {self.poisoned}")
        return super().write(batch)


def test_a_batch_that_failed_once_is_written_again_with_the_next_and_nothing_is_lost():
    eng = Engine(results=MemoryStorage(), metadata=_FlakyStore(fail_first=1),
                 flush_interval=0.01)

    @component
    def slow_step(x):
        time.sleep(0.2)
        return x

    @pipeline(name="flaky_write")
    def p(x):
        first = echo(x=x)
        return slow_step(x=first["outputs"]["result"])   # its rows come in later batches

    r = p.run(1, engine=eng)
    assert r.state is RunState.SUCCESS, r.error
    assert eng.metadata.get_run(r.run_id).state is RunState.SUCCESS
    assert {t.node_id: t.state for t in eng.metadata.get_tasks(r.run_id)} == {
        "echo-0": TaskState.SUCCESS, "slow_step-0": TaskState.SUCCESS}
    eng.close()


def test_a_batch_given_up_on_fails_its_own_run_and_no_other():
    """Run A's records cannot be written (its batches fail every time: given up after the
    retries); run B, started and finished while A still runs, is not blamed for it."""
    store = _FlakyStore(poisoned="run-a")
    eng = Engine(results=MemoryStorage(), metadata=store, flush_interval=0.01)

    @component(executor="thread")
    def nap(s):
        time.sleep(s)
        return s

    results = {}
    a = threading.Thread(target=lambda: results.update(
        a=eng.run(lambda loop: nap(s=1.2), pipeline="poisoned", run_id="run-a")))
    a.start()
    time.sleep(0.6)                                  # A's first batches were given up by now
    results["b"] = eng.run(lambda loop: nap(s=0.05), pipeline="clean", run_id="run-b")
    a.join(20)
    assert results["b"].state is RunState.SUCCESS, results["b"].error
    assert store.get_run("run-b").state is RunState.SUCCESS
    assert results["a"].state is RunState.FAILED
    assert "disk I/O error on run run-a" in str(results["a"].error)
    assert store.get_run("run-a") is None            # nothing of A could be written
    eng.close()


def test_a_failure_inside_the_loop_ends_the_run_instead_of_hanging():
    class BrokenLookups(MemoryStorage):
        """A result store whose memo lookups fail, like a database that went away."""
        def content_hashes(self, keys):
            raise OSError("disk gone")

    eng = Engine(results=BrokenLookups(), metadata=MemoryMetadataStore())

    @pipeline(timeout=10)
    def p():
        return [echo(x=i) for i in range(3)]

    t0 = time.monotonic()
    r = p.run(engine=eng)
    assert time.monotonic() - t0 < 5
    assert r.state is RunState.FAILED and "disk gone" in str(r.error)
    eng.close()


def test_a_crashed_loop_fails_every_task_and_wakes_the_body():
    """Simulates a bug in the loop (every step raises): the run must still end, FAILED."""
    eng = _engine()
    from twingraph.engine.loop import RunLoop

    @pipeline(timeout=10)
    def p():
        return echo(x=1).result()

    original = RunLoop._fire_timers
    RunLoop._fire_timers = _explode
    try:
        t0 = time.monotonic()
        r = p.run(engine=eng)
    finally:
        RunLoop._fire_timers = original
    assert time.monotonic() - t0 < 5
    assert r.state is RunState.FAILED
    assert "bug in the loop" in str(r.error) or "has ended" in str(r.error)
    eng.close()


def _explode(self):
    raise RuntimeError("bug in the loop")


def test_a_result_store_without_read_still_reloads_values():
    # ``read`` came later than the port's other methods: a store implementing the port
    # without it (not a ResultStoreBase) must still serve values the engine reloads.
    class PortOnly:
        def __init__(self):
            self._inner = MemoryStorage()

        def __getattr__(self, name):
            if name == "read":
                raise AttributeError(name)
            return getattr(self._inner, name)

    from twingraph import serialization
    store = PortOnly()
    eng = Engine(results=store, metadata=MemoryMetadataStore())
    try:
        enc = serialization.encode({"a": [1, 2]})
        store.put("k" * 64, enc.buffers, enc.to_metadata("k" * 64, {"encoding": enc.encoding}))
        assert not hasattr(store, "read")
        assert eng.load_value("k" * 64) == {"a": [1, 2]}
    finally:
        eng.close()


def test_an_engine_crash_marks_started_tasks_failed_in_their_rows():
    # The loop itself fails (an engine bug, injected once into its hand-over) while a task
    # runs: that task's row, already written as RUNNING, must end FAILED too.
    @component(executor="thread", cache=False)
    def slow_one(x: int) -> int:
        time.sleep(1.0)
        return x

    eng = Engine(results=MemoryStorage(), metadata=MemoryMetadataStore(), flush_interval=0.01)
    real = eng.recorder.wait_for_room
    armed = threading.Event()

    def wait_for_room():
        if armed.is_set():
            armed.clear()
            raise RuntimeError("engine bug")
        real()

    eng.recorder.wait_for_room = wait_for_room

    @pipeline(timeout=10)
    def p():
        a = slow_one(x=1)
        time.sleep(0.4)               # slow_one is RUNNING and its row written by now
        armed.set()
        return [a, slow_one(x=2)]     # the next hand-over fails: the loop crashes

    try:
        r = p.run(engine=eng)
        assert r.state is RunState.FAILED and "engine bug" in str(r.error)
        states = {t.node_id: t.state for t in eng.metadata.get_tasks(r.run_id)}
        assert states.get("slow_one-0") is TaskState.FAILED, states
    finally:
        eng.close()


def test_a_failing_on_start_callback_fails_the_run_and_restores_the_gc_threshold():
    import gc
    before = gc.get_threshold()
    eng = Engine(results=MemoryStorage(), metadata=MemoryMetadataStore(), flush_interval=0.01)

    def on_start(loop):
        raise RuntimeError("callback broke")

    try:
        t0 = time.monotonic()
        r = eng.run(lambda run: 1, pipeline="p", on_start=on_start)
        assert time.monotonic() - t0 < 5
        assert r.state is RunState.FAILED and "callback broke" in str(r.error)
        assert eng.metadata.get_run(r.run_id).state is RunState.FAILED
        assert gc.get_threshold() == before
    finally:
        eng.close()


def test_an_engine_crash_gives_rows_to_tasks_still_waiting_to_be_taken_in():
    # The loop crashes while taking in the body's calls: the call it was on and every call
    # still queued behind it get a FAILED row, like the tasks it already knew.
    from twingraph.engine.loop import RunLoop
    from twingraph.errors import NodeExecutionError

    @component(executor="thread", cache=False)
    def noop(x: int) -> int:
        return x

    eng = Engine(results=MemoryStorage(), metadata=MemoryMetadataStore(), flush_interval=0.01)
    original = RunLoop._submit_guarded
    accepted = []

    def submit(self, task):
        if task.node_id == "noop-3":
            raise RuntimeError("engine bug")
        original(self, task)

    @pipeline(timeout=10)
    def p():
        for i in range(12):
            try:
                accepted.append(noop(x=i).node_id)
            except NodeExecutionError:
                break
        return 0

    RunLoop._submit_guarded = submit
    try:
        r = p.run(engine=eng)
    finally:
        RunLoop._submit_guarded = original
    try:
        assert r.state is RunState.FAILED and "engine bug" in str(r.error)
        states = {t.node_id: t.state for t in eng.metadata.get_tasks(r.run_id)}
        assert "noop-3" in accepted and set(accepted) <= set(states), (accepted, states)
        assert states["noop-3"] is TaskState.FAILED
        assert all(s.terminal for s in states.values()), states
        rows = {t.node_id: t for t in eng.metadata.get_tasks(r.run_id)}
        assert rows["noop-3"].inputs["code_version"] == noop.spec.code_version
    finally:
        eng.close()


@component
def slow_source(x):
    time.sleep(0.2)
    return x


@component
def use_value(x, extra=None):
    return x


@pipeline(name="stop_while_keying")
def _stop_while_keying(warm: bool):
    s = slow_source(x=1)
    a = use_value(x=s["outputs"]["result"])          # keyed first in the burst
    if not warm:                                     # keyed next: cannot be hashed, stops the run
        use_value(x=s["outputs"]["result"], extra=threading.Lock())
    return a


@pytest.mark.parametrize("stored", [False, True], ids=["lookup-misses", "lookup-hits"])
def test_a_task_cancelled_while_its_burst_was_keyed_stays_cancelled(stored):
    """Under 'fail', a key that cannot be built stops the run and cancels the tasks keyed
    before it in the same burst; their batched lookup must not move them on (a miss made one
    QUEUED for good, a hit finished it twice and the run never ended)."""
    eng = _engine(flush_interval=0.01)
    if stored:
        assert _stop_while_keying.run(warm=True, engine=eng).state is RunState.SUCCESS
    out = {}
    t = threading.Thread(target=lambda: out.update(r=_stop_while_keying.run(warm=False, engine=eng)),
                         daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "the run never ended"
    r = out["r"]
    assert r.state is RunState.FAILED
    states = {x.node_id: x.state for x in eng.metadata.get_tasks(r.run_id)}
    assert states == {"slow_source-0": TaskState.SUCCESS, "use_value-0": TaskState.CANCELLED,
                      "use_value-1": TaskState.FAILED}
    eng.close()


def test_identical_calls_that_are_not_memoized_keep_their_own_results():
    """Two identical calls of a cache=False component each run and may differ: each keeps its
    own value after it was stored and dropped from memory (one result key per task), in the
    body and downstream."""
    eng = _engine(flush_interval=0.01)
    drawn = iter(range(100))

    @component(cache=False)
    def draw(seed):
        return {"value": next(drawn)}

    @component
    def show(v):
        return v

    @pipeline(name="own_results")
    def p():
        a, b = draw(seed=1), draw(seed=1)
        first = (a["outputs"]["value"].result(), b["outputs"]["value"].result())
        deadline = time.monotonic() + 5           # until both are stored and dropped
        loop = next(iter(eng.runs.values()))
        while not all(t.stored for t in loop.tasks.values() if t.component == "draw"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.05)
        again = (a["outputs"]["value"].result(), b["outputs"]["value"].result())
        return first, again, show(v=a["outputs"]["value"])["outputs"]["result"], a["hash"] != b["hash"]

    r = p.run(engine=eng)
    first, again, downstream, distinct = r.value
    # the two calls run side by side on threads: either may draw first
    assert sorted(first) == [0, 1] and again == first and downstream == first[0] and distinct
    rows = {t.node_id: t for t in eng.metadata.get_tasks(r.run_id)}
    assert rows["draw-0"].result_key != rows["draw-1"].result_key
    assert eng.load_value(rows["draw-1"].result_key) == {"value": first[1]}   # b's own
    eng.close()


def test_futures_inside_sets_and_int_keyed_dicts_are_inputs_like_any_other():
    eng = _engine()

    @component
    def total(xs):
        return sum(xs.values()) if isinstance(xs, dict) else sum(xs)

    @pipeline(name="refs_in_sets")
    def p():
        a, b = echo(x=1), echo(x=2)
        return (total(xs={a["outputs"]["result"], b["outputs"]["result"]}),
                total(xs={1: a["outputs"]["result"], 2: b["outputs"]["result"]}))

    first = p.run(engine=eng)
    assert first.state is RunState.SUCCESS, first.error
    assert [v["outputs"]["result"] for v in first.value] == [3, 3]
    again = p.run(engine=eng)          # same inputs: memo hits
    assert {t.cache_status for t in eng.metadata.get_tasks(again.run_id)} == {"hit"}
    eng.close()


def test_a_run_with_parameters_json_cannot_carry_resumes_only_when_given_them_again():
    """A tuple parameter is recorded as its repr (for reading); resuming with that text in its
    place ran the body on another input. Now the resume asks for it, and given it, re-executes
    nothing that was stored."""

    eng = _engine(flush_interval=0.01)
    calls, state = [], {"fail": True}

    @component
    def size(xs):
        calls.append(xs)
        return len(xs)

    @component
    def maybe_fail(n):
        if state["fail"]:
            raise RuntimeError("first attempt fails")
        return n

    @pipeline(name="inexact_params")
    def p(xs, label="plain"):
        return maybe_fail(n=size(xs=xs)["outputs"]["result"])

    first = p.run(xs=(1, 2, 3), label="a", engine=eng)
    assert first.state is RunState.FAILED
    rec = eng.metadata.get_run(first.run_id)
    assert rec.params == {"xs": "(1, 2, 3)", "label": "a"}
    assert rec.source["inexact_params"] == ["xs"]
    state["fail"] = False
    with pytest.raises(ValidationError, match=r"could not be recorded exactly \(xs=\(1, 2, 3\)\)"):
        p.run(engine=eng, resume=first.run_id)
    resumed = p.run(xs=(1, 2, 3), engine=eng, resume=first.run_id)
    assert resumed.state is RunState.SUCCESS and resumed.value["outputs"]["result"] == 3
    assert calls == [(1, 2, 3)]                       # size ran once, on the tuple
    eng.close()


def test_a_pipeline_taking_star_args_or_star_kwargs_resumes_with_its_own_arguments():
    """A resume called the body with every recorded parameter as a keyword: ``p(**opts)`` got
    ``opts={'opts': {...}}`` (and succeeded, with other outputs), ``q(*xs)`` could not be
    resumed at all."""
    eng = _engine()
    state = {"fail": True}

    @component(cache=False)
    def maybe(v):
        if state["fail"]:
            raise RuntimeError("first attempt fails")
        return v

    @pipeline(name="star_kwargs")
    def p(first, **opts):
        return maybe(v=[first, opts])

    @pipeline(name="star_args")
    def q(*xs):
        return maybe(v=list(xs))

    r1, r2 = p.run(0, a=1, b="x", engine=eng), q.run(1, 2, engine=eng)
    assert r1.state is r2.state is RunState.FAILED
    state["fail"] = False
    again = p.run(engine=eng, resume=r1.run_id)
    assert again.state is RunState.SUCCESS
    assert again.value["outputs"]["result"] == [0, {"a": 1, "b": "x"}]
    with pytest.raises(ValidationError, match=r"run\(\*xs, resume=...\)"):   # a tuple: not exact
        q.run(engine=eng, resume=r2.run_id)
    again = q.run(1, 2, engine=eng, resume=r2.run_id)
    assert again.state is RunState.SUCCESS and again.value["outputs"]["result"] == [1, 2]
    eng.close()


def test_a_resume_runs_with_the_defaults_the_run_started_with():
    """Defaults were not recorded: a run resumed after its pipeline's default was edited ran
    with the new default (a different result, under the same run)."""
    eng = _engine()
    state = {"fail": True}

    @component
    def scaled(n):
        if state["fail"]:
            raise RuntimeError("first attempt fails")
        return n * 10

    def pipe(default):
        @pipeline(name="edited_default")
        def p(n=default, label=("a", "tuple")):       # a tuple: not recorded, no burden
            return scaled(n=n)
        return p

    first = pipe(12).run(engine=eng)
    assert first.state is RunState.FAILED
    assert eng.metadata.get_run(first.run_id).params == {"n": 12}
    state["fail"] = False
    again = pipe(4).run(engine=eng, resume=first.run_id)      # the default was edited since
    assert again.state is RunState.SUCCESS and again.value["outputs"]["result"] == 120
    (row,) = eng.metadata.get_tasks(first.run_id)
    # its miss is told against the run's own row from before, not against another run's
    assert row.cache_reason == "no stored result (it failed before the run was resumed)"
    eng.close()


def test_a_resumed_run_ends_the_tasks_its_body_no_longer_submits():
    """A driver died with tasks recorded PENDING and RUNNING; the resumed body took another
    path and never submitted them again: they stayed PENDING/RUNNING in a run that ended."""
    from twingraph.core.records import AttemptRecord, RunRecord, TaskRecord
    from twingraph.engine.loop import RunOptions

    eng = _engine(flush_interval=0.01)
    eng.metadata.write([
        RunRecord("crashed", "pathy", RunState.RUNNING, heartbeat_at=1.0, created_at=1.0),
        TaskRecord("crashed", "old-branch-0", "old", TaskState.RUNNING, attempts=1, fence=1),
        TaskRecord("crashed", "old-branch-1", "old", TaskState.PENDING),
        AttemptRecord("crashed", "old-branch-0", 1, 1, TaskState.RUNNING, started_at=1.0)])

    def body(run):
        return echo(x="the other path")

    r = eng.run(body, pipeline="pathy", run_id="crashed", resume=True, options=RunOptions())
    assert r.state is RunState.SUCCESS
    tasks = {t.node_id: t for t in eng.metadata.get_tasks("crashed")}
    assert tasks["echo-0"].state is TaskState.SUCCESS
    assert tasks["echo-0"].cache_reason == "no stored result (new task)"
    for n in ("old-branch-0", "old-branch-1"):
        assert tasks[n].state is TaskState.CANCELLED and "not submitted again" in tasks[n].error
    (attempt,) = eng.metadata.get_attempts("crashed", "old-branch-0")
    assert attempt.state is TaskState.FAILED and "driver stopped" in attempt.error
    # Ended under this driver's fence: the earlier driver's late end of it (it was only
    # stalled) is dropped, as its task rows are.
    from twingraph.core.states import fence
    assert attempt.fence >= fence(1, 0)
    eng.metadata.write([AttemptRecord("crashed", "old-branch-0", 1, 1, TaskState.SUCCESS,
                                      started_at=1.0, ended_at=9.0)])
    assert eng.metadata.get_attempts("crashed", "old-branch-0") == [attempt]
    eng.close()


def test_a_long_resumed_chain_ends_with_every_row_success():
    """A resumed task whose row was written while it waited (this driver's fence) was then
    finished with its earlier attempt's lower fence: the update was dropped as stale, and the
    row stayed PENDING in a run that succeeded (1,208 of 3,000 in the review's run)."""
    eng = _engine(flush_interval=0.01)
    state = {"fail": True}

    @component
    def inc(x):
        return x + 1

    @component(cache=False)
    def last(x):
        if state["fail"]:
            raise RuntimeError("first driver fails at the end")
        return x

    @pipeline(name="long_chain")
    def p(n: int):
        v = 0
        for _ in range(n):
            v = inc(x=v)["outputs"]["result"]
        return last(x=v)

    first = p.run(n=3000, engine=eng)
    assert first.state is RunState.FAILED
    state["fail"] = False
    again = p.run(engine=eng, resume=first.run_id)
    assert again.state is RunState.SUCCESS and again.value["outputs"]["result"] == 3000
    rows = eng.metadata.get_tasks(first.run_id)
    assert len(rows) == 3001 and {t.state for t in rows} == {TaskState.SUCCESS}
    assert {t.cache_status for t in rows if t.node_id != "last-0"} == {"resumed"}
    eng.close()


def test_a_stalled_first_driver_cannot_cancel_a_task_the_new_driver_finished():
    """A first driver's update of a task that never started went out without a fence (0 was
    sent as "none"), so the store applied it over the row of the driver that took the run
    over."""
    from twingraph.core.records import TaskUpdate
    from twingraph.core.states import FENCE_STRIDE

    meta = MemoryMetadataStore()
    eng = Engine(results=MemoryStorage(), metadata=meta, flush_interval=0.01)

    @pipeline(name="two_drivers")
    def p():
        return echo(x=1)

    r = p.run(engine=eng)
    (row,) = meta.get_tasks(r.run_id)
    seen = meta.get_run(r.run_id).heartbeat_at
    epoch = meta.claim_driver(r.run_id, heartbeat=seen, now=1.0)
    meta.write([TaskUpdate(r.run_id, row.node_id, TaskState.SUCCESS, 2.0,
                           fence=FENCE_STRIDE * epoch + 1)])
    # the first driver wakes and cancels the task it never started (its fence: 0)
    from twingraph.engine.snapshot import task_rows
    from twingraph.engine.task import Task
    late = Task(row.node_id, 0, echo.spec, echo.fn, (), {})
    late.persisted, late.state = True, TaskState.CANCELLED
    out: list = []
    task_rows(r.run_id, late, out)
    assert meta.write(out) == [(r.run_id, row.node_id)]          # reported stale
    assert meta.get_tasks(r.run_id)[0].state is TaskState.SUCCESS
    eng.close()


def test_an_attempt_stopped_with_its_run_is_not_left_running_in_its_row():
    eng = _engine(flush_interval=0.01)

    @component(executor="thread")
    def sleepy(x):
        time.sleep(1.5)
        return x

    @pipeline(name="stopped_attempt", timeout=0.5)
    def p():
        return sleepy(x=1)

    r = p.run(engine=eng)
    assert r.state is RunState.FAILED and type(r.error).__name__ == "PipelineTimeout"
    (task,) = eng.metadata.get_tasks(r.run_id)
    (attempt,) = eng.metadata.get_attempts(r.run_id, task.node_id)
    assert task.state is TaskState.CANCELLED
    assert attempt.state is TaskState.CANCELLED and attempt.ended_at is not None
    assert "running task abandoned" in attempt.error
    eng.close()


class _Transient(Exception):
    pass


def test_a_stalled_old_driver_is_fenced_off_after_its_run_was_taken_over():
    """Driver A stalls inside a task; driver B takes the run over (as a server's adoption
    does) and finishes it; then A wakes and retries. B's fencing tokens are above any of A's,
    so A's late row is rejected as stale and B's recorded result stands."""
    from twingraph.core.states import FENCE_STRIDE
    from twingraph.engine.loop import RunOptions

    results, meta = MemoryStorage(), MemoryMetadataStore()
    a_eng = Engine(results=results, metadata=meta, flush_interval=0.01)
    b_eng = Engine(results=results, metadata=meta, flush_interval=0.01)
    wake_a, driver = threading.Event(), {"name": "A", "stalled": False}

    @component(retry_policy={"max_attempts": 3, "backoff": "fixed", "initial_delay": 0.01,
                             "exceptions": ["_Transient"]}, executor="thread", cache=False)
    def step(x):
        if driver["name"] == "A" and not driver["stalled"]:
            driver["stalled"] = True
            wake_a.wait(10)                      # A stalls in its first attempt ...
            raise _Transient("A's first attempt")  # ... then fails it, and retries
        return f"computed by {driver['name']}"

    def body(run):
        return step(x=1)

    out = {}
    a = threading.Thread(target=lambda: out.update(A=a_eng.run(body, pipeline="fenced",
                                                               run_id="r1", options=RunOptions())))
    a.start()
    deadline = time.monotonic() + 5
    while not any(t.state is TaskState.RUNNING for t in meta.get_tasks("r1")):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    driver["name"] = "B"
    b = b_eng.run(body, pipeline="fenced", run_id="r1", resume=True, claimed=True,
                  options=RunOptions())
    assert b.state is RunState.SUCCESS and b.value["outputs"]["result"] == "computed by B"
    driver["name"] = "A"
    wake_a.set()
    a.join(10)
    (row,) = meta.get_tasks("r1")
    assert row.fence == FENCE_STRIDE + 2          # B's attempt (the 2nd: after A's first), epoch 1
    assert a_eng.load_value(row.result_key) == {"result": "computed by B"}
    assert meta.get_run("r1").state is RunState.SUCCESS
    a_eng.close()
    b_eng.close()


def test_a_resumed_run_keeps_the_stored_results_of_tasks_that_are_not_memoized():
    eng = _engine(flush_interval=0.01)
    calls, failures = [], [1, 1]              # finish fails under the first two drivers

    @component(cache=False)
    def draw(seed):
        calls.append(seed)
        return len(calls)

    @component
    def finish(n):
        if failures:
            failures.pop()
            raise RuntimeError("not yet")
        return n

    @pipeline(name="resume_uncached")
    def p():
        return finish(n=draw(seed=7)["outputs"]["result"])

    first = p.run(engine=eng)
    assert first.state is RunState.FAILED
    assert p.run(engine=eng, resume=first.run_id).state is RunState.FAILED    # driver 2
    resumed = p.run(engine=eng, resume=first.run_id)                          # driver 3
    assert resumed.state is RunState.SUCCESS and resumed.value["outputs"]["result"] == 1
    assert calls == [7]
    rows = {t.node_id: t for t in eng.metadata.get_tasks(first.run_id)}
    assert rows["draw-0"].cache_status == "resumed"
    eng.close()


class _QuotaError(Exception):
    """An ordinary exception whose constructor takes two arguments: it pickles, but does not
    unpickle (``args`` holds the message only)."""

    def __init__(self, user, limit):
        super().__init__(f"{user} is over {limit}")


def test_a_process_task_error_that_does_not_unpickle_fails_the_task_and_frees_its_worker():
    eng = Engine(results=MemoryStorage(), metadata=MemoryMetadataStore(),
                 executor=LocalExecutor(max_processes=1))

    @component(cache=False, executor="process", timeout=30)
    def over_quota():
        raise _QuotaError("bob", 3)

    @component(cache=False, executor="process", timeout=30)
    def fine():
        return 1

    t0 = time.monotonic()
    r = pipeline(name="quota")(lambda: over_quota()).run(engine=eng)
    assert r.state is RunState.FAILED and "_QuotaError: bob is over 3" in str(r.error)
    assert time.monotonic() - t0 < 20              # not after its timeout
    r2 = pipeline(name="after_quota", timeout=20)(lambda: fine()).run(engine=eng)
    assert r2.state is RunState.SUCCESS, r2.error  # the only worker slot is free again
    eng.close()


def test_a_process_task_error_keeps_its_traceback_in_the_error_event():
    eng = _engine()
    events = []
    eng.subscribe(lambda ev: events.append(ev) if ev.get("event") == "error" else None)

    @component(cache=False, executor="process")
    def deep():
        def helper():
            raise ValueError("bad thing")
        return helper()

    r = pipeline(name="remote_tb")(lambda: deep()).run(engine=eng)
    assert r.state is RunState.FAILED
    (ev,) = events
    assert "in helper" in ev["traceback"] and ev["traceback"].rstrip().endswith("ValueError: bad thing")
    eng.close()


def test_futures_behave_like_their_values_in_operators_sets_and_iteration():
    eng = _engine()

    @component
    def value(v):
        return v

    @pipeline(name="future_ops")
    def p():
        c = value(v=3)["outputs"]["result"]
        f = value(v=0.5)["outputs"]["result"]
        s = value(v="bob")["outputs"]["result"]
        tags = value(v={"a", "b"})["outputs"]["result"]
        return {"mixed": (c + 1.5, c * 0.5, f + c, 1.5 + c), "text": "hi " + s,
                "round": round(f + c), "divmod": divmod(c, 2), "rdivmod": divmod(7, c),
                "in_set": c in {1, 2, 3}, "as_key": {3: "three"}.get(c),
                "iterated": sorted(tags)}

    r = p.run(engine=eng)
    assert r.state is RunState.SUCCESS, r.error
    assert r.value == {"mixed": (4.5, 1.5, 3.5, 4.5), "text": "hi bob", "round": 4,
                       "divmod": (1, 1), "rdivmod": (2, 1), "in_set": True, "as_key": "three",
                       "iterated": ["a", "b"]}
    eng.close()


def test_a_class_component_is_not_given_the_lineage_arguments_in_a_pipeline():
    from twingraph import BaseComponent

    class Doubler(BaseComponent):
        def execute(self, data):
            return {"doubled": [2 * v for v in data]}

    eng = _engine()

    @pipeline(name="class_lineage")
    def p():
        raw = echo(x=[1, 2, 3])
        return Doubler()(data=raw["outputs"]["result"], parent_hash=raw["hash"])

    assert Doubler()(data=[1], parent_hash="abc") == {"doubled": [2]}      # plain call
    r = p.run(engine=eng)
    assert r.state is RunState.SUCCESS, r.error
    assert r.value["outputs"]["doubled"] == [2, 4, 6]
    eng.close()


def test_a_failed_future_raises_an_error_of_the_tasks_own_type_in_the_body():
    from twingraph.errors import NodeExecutionError

    @component
    def risky(x):
        if x < 0:
            raise ValueError("negative input")
        return x

    class Picky(Exception):
        def __init__(self, a, b):            # cannot be built from a message: built from its
            super().__init__(f"{a}/{b}")     # own arguments (session 25; a plain error before)
            self.a = a

    @component
    def picky():
        raise Picky(1, 2)

    seen = {}

    @pipeline(name="own_type", error_handler="continue")
    def p():
        try:
            risky(x=-1)["outputs"]["result"].result()
        except ValueError as exc:                # as a plain call would be caught
            seen["value"] = exc
        try:
            picky()["outputs"]["result"].result()
        except NodeExecutionError as exc:
            seen["picky"] = exc
        return echo(x=0)

    eng = _engine()
    r = p.run(engine=eng)
    assert r.state is RunState.SUCCESS, r.error
    err = seen["value"]
    assert isinstance(err, NodeExecutionError) and err.node_id == "risky-0"
    assert type(err.__cause__) is ValueError and "negative input" in str(err)
    picked = seen["picky"]
    assert isinstance(picked, Picky) and isinstance(picked, NodeExecutionError)
    assert type(picked.__cause__) is Picky and picked.a == 1 and picked.node_id == "picky-0"
    eng.close()


def test_a_result_array_is_read_only_for_its_consumers():
    """Array results are stored from their own memory, after the task: a consumer changing
    one in place made the stored bytes differ from the hash (the write failed and the run's
    records were lost). Results are frozen: that consumer fails with NumPy's own error."""
    np = pytest.importorskip("numpy")

    @component
    def make(n):
        return {"arr": np.ones(n), "top": np.zeros(n)}

    @component
    def scale_in_place(arr):
        arr *= 2
        return float(arr.sum())

    @component
    def total(arr):
        return float(arr.sum())

    @pipeline(name="frozen_results", error_handler="continue")
    def p(n):
        made = make(n=n)
        return (scale_in_place(arr=made["outputs"]["arr"]), total(arr=made["outputs"]["arr"]))

    eng = _engine(flush_interval=0.01)
    r = p.run(200_000, engine=eng)
    assert "output array is read-only" in r.failures["scale_in_place-0"]
    rows = {t.node_id: t for t in eng.metadata.get_tasks(r.run_id)}
    assert rows["make-0"].state is TaskState.SUCCESS and rows["total-0"].state is TaskState.SUCCESS
    stored = eng.load_value(rows["make-0"].result_key)
    assert float(stored["arr"].sum()) == 200_000.0            # the stored result is intact
    eng.close()


def test_lineage_records_every_output_read_from_a_producer(engine):
    from twingraph.lineage import run_lineage

    @component
    def split():
        return {"train": [1, 2], "test": [3]}

    @component
    def fit(a, b, again):
        return len(a) + len(b) + len(again)

    @pipeline(name="two_outputs")
    def p():
        d = split()
        return fit(a=d["outputs"]["train"], b=d["outputs"]["test"], again=d["outputs"]["train"])

    r = p.run(engine=engine)
    assert r.state is RunState.SUCCESS, r.error
    _, edges = run_lineage(engine.metadata, r.run_id)
    (edge,) = [e for e in edges if e.kind == "DEPENDS_ON" and e.dst == "fit-0"]   # one edge
    assert edge.properties == {"data_flow": ["outputs", "train"],
                               "data_flows": [["outputs", "train"], ["outputs", "test"]]}


@pytest.mark.parametrize("cache", [True, False])
def test_a_resume_recomputes_a_task_recorded_success_whose_result_is_not_stored(cache):
    """A task row can say SUCCESS while its result never reached the store (its write batch
    was given up) or has left it since (a purged store). A resume that trusted the row failed
    on every try: the consumer could not load the value. The resume now looks the result up,
    and computes the task again if it is missing."""
    eng = _engine(flush_interval=0.01)
    calls, failures = [], [1]

    @component(cache=cache)
    def make(x):
        calls.append(x)
        return {"v": x * 10}

    @component
    def use(v):
        if failures:
            failures.pop()
            raise RuntimeError("not yet")
        return v + 1

    @pipeline(name=f"resume_missing_{cache}")
    def p():
        return use(v=make(x=4)["outputs"]["v"])

    first = p.run(engine=eng)
    assert first.state is RunState.FAILED and calls == [4]
    row = {t.node_id: t for t in eng.metadata.get_tasks(first.run_id)}["make-0"]
    assert row.state is TaskState.SUCCESS and row.result_key
    assert eng.results.delete(row.result_key)            # the result is gone from the store
    resumed = p.run(engine=eng, resume=first.run_id)
    assert resumed.state is RunState.SUCCESS, resumed.error
    assert resumed.value["outputs"]["result"] == 41
    assert calls == [4, 4]
    row = {t.node_id: t for t in eng.metadata.get_tasks(first.run_id)}["make-0"]
    assert "not in the result store" in row.cache_reason
    assert eng.load_value(row.result_key) == {"v": 40}
    eng.close()


def test_a_resumed_task_keeps_the_times_and_attempts_of_the_attempt_that_computed_it():
    eng = _engine(flush_interval=0.01)
    failures = [1]

    @component(retry_policy={"max_attempts": 2, "initial_delay": 0.01})
    def flaky(x):
        if failures:
            failures.pop()
            raise RuntimeError("once")
        return x

    @component
    def stop(v):
        raise RuntimeError("the run stops here")

    @pipeline(name="resume_times")
    def p():
        return stop(v=flaky(x=1)["outputs"]["result"])

    first = p.run(engine=eng)
    assert first.state is RunState.FAILED
    before = {t.node_id: t for t in eng.metadata.get_tasks(first.run_id)}["flaky-0"]
    assert before.attempts == 2 and before.started_at and before.ended_at
    time.sleep(0.05)
    p.run(engine=eng, resume=first.run_id)
    after = {t.node_id: t for t in eng.metadata.get_tasks(first.run_id)}["flaky-0"]
    assert after.cache_status == "resumed"
    assert (after.started_at, after.ended_at, after.attempts, after.fence) == \
        (before.started_at, before.ended_at, before.attempts, before.fence)
    eng.close()


def test_a_base_component_that_skips_super_init_works_in_a_pipeline(engine):
    """Its ``__init__`` sets ``config`` itself and never calls ``BaseComponent.__init__``: a
    plain call worked, a pipeline failed with "'CustomProcessor' object has no attribute
    '_spec'"; one without ``config`` at all must work too."""
    from twingraph import BaseComponent

    class CustomProcessor(BaseComponent):
        def __init__(self, config):
            self.config = config

        def execute(self, data):
            return {"scaled": [x * self.config["factor"] for x in data]}

    class Bare(BaseComponent):
        def __init__(self, offset):
            self.offset = offset

        def execute(self, data):
            return [x + self.offset for x in data]

    @pipeline(name="no_super_init")
    def p():
        return CustomProcessor({"factor": 2})(data=[1, 2, 3]), Bare(10)(data=[1])

    r = p.run(engine=engine)
    assert r.state.value == "SUCCESS", r.error
    scaled, bare = r.value
    assert scaled["outputs"]["scaled"] == [2, 4, 6] and bare["outputs"]["result"] == [11]
    assert p.run(engine=engine).state.value == "SUCCESS"            # and as memo hits


def test_resuming_a_finished_run_is_refused_in_words(engine):
    """The engine said "invalid run transition SUCCESS -> RUNNING" (an engine-bug error) to a
    resume of a run that had succeeded, also when the run ended while the resume watched its
    driver."""
    from twingraph.errors import ConflictError

    @pipeline(name="done_already")
    def p():
        return echo(x=1)

    r = p.run(engine=engine)
    with pytest.raises(ConflictError, match="already finished successfully: there is nothing "
                                            "to resume"):
        p.run(engine=engine, resume=r.run_id)


def test_dataclass_components_with_slots_or_frozen_get_keys_of_their_own(engine):
    """``@dataclass(slots=True)`` keeps its fields in slots, which the memo key did not see:
    ``Scale(3)`` took ``Scale(2)``'s result. A frozen dataclass refused the cached spec
    (FrozenInstanceError) in a pipeline."""
    import dataclasses

    from twingraph import BaseComponent

    @dataclasses.dataclass(slots=True)
    class Scale(BaseComponent):
        factor: int

        def execute(self, data):
            return [x * self.factor for x in data]

    @dataclasses.dataclass(frozen=True)
    class Shift(BaseComponent):
        by: int

        def execute(self, data):
            return [x + self.by for x in data]

    @pipeline(name="dataclass_components")
    def p():
        return [Scale(2)(data=[1, 2]), Scale(3)(data=[1, 2]), Shift(1)(data=[1]),
                Shift(5)(data=[1])]

    for _ in range(2):                      # computed, then from the memo: the same
        r = p.run(engine=engine)
        assert r.state.value == "SUCCESS", r.error
        assert [v["outputs"]["result"] for v in r.value] == [[2, 4], [3, 6], [2], [6]]


class _Plain:
    """No slots: its subclasses' instances have a ``__dict__`` as well as their slots."""


class _Slotted(_Plain):
    __slots__ = ("n", "__secret")

    def __init__(self, n, secret):
        self.n = n
        self.__secret = secret

    def value(self):
        return self.n * 10 + self.__secret


@component
def uses_slotted(obj):
    return obj.value()


def test_an_argument_whose_state_is_in_slots_is_keyed_by_it(engine):
    """Two instances that differ only in a slot (a private one too) passed as an argument:
    their (empty) ``__dict__`` was all the key saw, and the second run hit the first's."""
    @pipeline(name="slotted_args")
    def p(a, b):
        return uses_slotted(obj=_Slotted(a, b))

    assert p.run(1, 2, engine=engine).value["outputs"]["result"] == 12
    assert p.run(1, 3, engine=engine).value["outputs"]["result"] == 13
    assert p.run(2, 3, engine=engine).value["outputs"]["result"] == 23


def _fails_until_fixed(name):
    """A pipeline whose one task fails while ``state["fail"]`` is True (then returns ``n``)."""
    state = {"fail": True}

    @component
    def maybe_fail(n):
        if state["fail"]:
            raise RuntimeError("first attempt fails")
        return n

    @pipeline(name=name)
    def p(n: int = 1):
        return maybe_fail(n=n)
    return p, state


def test_a_resume_logs_the_run_options_it_changed():
    """A resume with ``no_cache`` (or another ``max_parallel``) left no trace: the run's
    config keeps the first driver's options, and nothing said the resume ran without the
    cache. Its "resumed" log line now names what it changed."""
    eng = _engine(flush_interval=0.01)
    p, state = _fails_until_fixed("resume_options")
    first = p.run(engine=eng)
    assert first.state is RunState.FAILED
    state["fail"] = False
    again = p.run(engine=eng, resume=first.run_id, no_cache=True, max_parallel=3)
    assert again.state is RunState.SUCCESS, again.error
    lines = [r.message for r in eng.metadata.get_logs(first.run_id) if "resumed" in r.message]
    assert len(lines) == 1 and lines[0].endswith(
        "; this resume runs with max_parallel=3, no_cache=True"), lines
    assert eng.metadata.get_run(first.run_id).config["no_cache"] is False   # as first recorded
    eng.close()


@pytest.mark.parametrize("executor", ["thread", "inline"])
def test_a_retry_gets_the_arguments_as_called_not_as_the_failed_attempt_left_them(executor):
    """An attempt that changed its argument in place (``queue.pop(0)``) and then failed gave
    its retry what was left: the run returned 'b' for ``["a", "b", "c"]``, and stored it under
    that call's key (the next run's memo hit said 'b' too). A process attempt always got a
    pickled copy: now every executor does what it does."""
    eng = _engine(flush_interval=0.01)
    failed = []

    @component(executor=executor, retry_policy={"max_attempts": 3, "initial_delay": 0.01,
                                                 "backoff": "fixed"})
    def take_first(queue: list, seen: dict) -> str:
        item = queue.pop(0)
        seen["n"] = seen.get("n", 0) + 1
        if len(failed) < 2:
            failed.append(item)
            raise ConnectionError("transient")
        return f"{item}/{seen['n']}"

    @pipeline(name=f"retry_mutated_args_{executor}")
    def p():
        return take_first(["a", "b", "c"], {})

    first = p.run(engine=eng)
    assert first.state is RunState.SUCCESS, first.error
    assert failed == ["a", "a"] and first.value["outputs"]["result"] == "a/1"
    again = p.run(engine=eng)
    assert again.value["outputs"]["result"] == "a/1"
    assert {t.cache_status for t in eng.metadata.get_tasks(again.run_id)} == {"hit"}
    eng.close()


def test_a_last_run_too_large_to_compare_is_not_loaded(monkeypatch):
    """A miss's reason loaded every task of the pipeline's last run: after a run of 780,000
    tasks, the next run spent 25 s (and ~1 GB) on its loop before its first task. Above
    ``PREVIOUS_MAX`` the last run is not loaded, and the reason says so."""
    import twingraph.engine.engine as engine_module
    monkeypatch.setattr(engine_module, "PREVIOUS_MAX", 5)
    eng = _engine(flush_interval=0.01)

    @pipeline(name="previous_too_large")
    def p(n: int, base: int):
        return [echo(x=base + i) for i in range(n)]

    p.run(engine=eng, n=4, base=0)
    small = p.run(engine=eng, n=4, base=100)
    assert {t.cache_reason for t in eng.metadata.get_tasks(small.run_id)} == {
        "inputs changed since the last run"}
    p.run(engine=eng, n=8, base=200)
    big = p.run(engine=eng, n=8, base=300)
    assert {t.cache_reason for t in eng.metadata.get_tasks(big.run_id)} == {
        "no stored result (the last run was too large to compare it with)"}
    eng.close()


def test_a_resume_given_another_parameter_value_is_refused():
    """``p.run(resume=RUN_ID, n=50)`` of a run started with ``n=200`` ran with 200 and said
    nothing (the CLI refused such a ``--param``); the same value again is accepted."""
    eng = _engine(flush_interval=0.01)
    p, state = _fails_until_fixed("resume_params_api")

    first = p.run(engine=eng, n=200)
    assert first.state is RunState.FAILED
    state["fail"] = False
    with pytest.raises(ValidationError, match=r"started with n=200: a resumed run keeps"):
        p.run(engine=eng, resume=first.run_id, n=50)
    again = p.run(engine=eng, resume=first.run_id, n=200)
    assert again.state is RunState.SUCCESS and again.value["outputs"]["result"] == 200
    eng.close()


def test_a_retryable_attempt_copies_its_inputs_once(monkeypatch):
    """The attempt's inputs from other tasks were copied as fetched, then all its arguments
    again: a DAG of large values took twice as long (DAG nodes retry by default)."""
    import twingraph.engine.loop as loop_module
    copies = []
    real = loop_module.own_copy

    def counting(v):
        copies.append(type(v).__name__)
        return real(v)
    monkeypatch.setattr(loop_module, "own_copy", counting)
    eng = _engine(flush_interval=0.01)

    @component(executor="thread", retry_policy={"max_attempts": 2, "initial_delay": 0.01})
    def total(xs: list) -> int:
        return sum(xs)

    @component(executor="thread")
    def make() -> list:
        return [1, 2, 3]

    @pipeline(name="retryable_copies_once")
    def p():
        return total(xs=make()["outputs"]["result"])

    r = p.run(engine=eng)
    eng.close()
    assert r.value["outputs"]["result"] == 6, r.error
    assert copies == ["tuple"], copies        # (args, kwargs) in one piece, nothing before
