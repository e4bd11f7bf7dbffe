"""error_handler, retry policies, timeouts, fencing, cancellation."""
import os
import time

import pytest

from tests.resources import behaviours as b
from twingraph import PipelineFailed, PipelineTimeout, TaskTimeout, pipeline
from twingraph.core.states import RunState, TaskState
from twingraph.errors import ValidationError


def _tasks(engine, run_id):
    return {t.node_id: t for t in engine.metadata.get_tasks(run_id)}


def test_fail_stops_new_work_and_cancels_running(engine):
    b.counts.clear()

    @pipeline(name="fail_fast", error_handler="fail", max_parallel=2)
    def p():
        s = b.slow(x=1, delay=2.0)
        f = b.fails(x=0)
        later = [b.quick(x=i) for i in range(5)]
        return s, f, later

    t0 = time.monotonic()
    r = p.run(engine=engine)
    assert time.monotonic() - t0 < 1.5           # did not wait for the 2 s task
    assert r.state is RunState.FAILED and isinstance(r.error, PipelineFailed)
    tasks = _tasks(engine, r.run_id)
    assert tasks["fails-0"].state is TaskState.FAILED
    assert tasks["slow-0"].state is TaskState.CANCELLED
    assert all(tasks[f"quick-{i}"].state is TaskState.CANCELLED for i in range(5))
    assert not any(k.startswith("quick") for k in b.counts)   # queued work never started


def test_continue_runs_everything_not_depending_on_the_failure(engine):
    b.counts.clear()

    @pipeline(name="keep_going", error_handler="continue")
    def p():
        bad = b.fails(x=1)
        after_bad = b.quick(x=bad["outputs"]["result"])
        ok = b.quick(x=10)
        after_ok = b.quick(x=ok["outputs"]["result"])
        return after_ok

    r = p.run(engine=engine)
    assert r.state is RunState.FAILED
    assert set(r.failures) == {"fails-0"}
    tasks = _tasks(engine, r.run_id)
    assert tasks["quick-0"].state is TaskState.SKIPPED
    assert tasks["quick-1"].state is TaskState.SUCCESS
    assert tasks["quick-2"].state is TaskState.SUCCESS
    assert b.counts["quick-11"] == 1


def test_a_body_that_raises_stops_the_run_under_fail(engine):
    """The body's own error (not a task's) let every submitted task run to its end first."""
    b.counts.clear()

    @pipeline(name="body_raises", error_handler="fail", max_parallel=1)
    def p():
        [b.slow(x=i, delay=0.5) for i in range(6)]
        raise ValueError("the body gave up")

    t0 = time.monotonic()
    r = p.run(engine=engine)
    assert time.monotonic() - t0 < 1.5              # 6 x 0.5 s one at a time: 3 s
    assert r.state is RunState.FAILED and isinstance(r.error, ValueError)
    tasks = _tasks(engine, r.run_id)
    assert all(t.state is TaskState.CANCELLED for t in tasks.values())
    assert sum(v for k, v in b.counts.items() if k.startswith("slow")) <= 1


def test_a_body_that_raises_under_continue_lets_its_tasks_finish(engine):
    b.counts.clear()

    @pipeline(name="body_raises_continue", error_handler="continue", max_parallel=2)
    def p():
        [b.quick(x=100 + i) for i in range(4)]
        raise ValueError("the body gave up")

    r = p.run(engine=engine)
    assert r.state is RunState.FAILED and isinstance(r.error, ValueError)
    assert all(t.state is TaskState.SUCCESS for t in _tasks(engine, r.run_id).values())


def test_max_parallel_below_one_is_refused_before_a_run(engine):
    @pipeline(name="mp_check")
    def p():
        return b.quick(x=1)

    for bad in (0, -1, "3", True):
        with pytest.raises(ValidationError, match="max_parallel"):
            p.run(engine=engine, max_parallel=bad)
    assert p.run(engine=engine, max_parallel=1).state is RunState.SUCCESS


def test_body_can_handle_a_failure_itself(engine):
    @pipeline(name="fallback", error_handler="continue")
    def p():
        try:
            return b.fails(x=1).result()
        except Exception:
            return b.quick(x=41)

    r = p.run(engine=engine)
    assert r.state is RunState.SUCCESS
    assert r.value["outputs"]["result"] == 42


def test_retry_policy_retries_matching_errors(engine):
    b.counts.clear()

    @pipeline(name="flaky")
    def p():
        return b.flaky(key="k1", fail_times=2)

    r = p.run(engine=engine)
    assert r.state is RunState.SUCCESS and r.value["outputs"]["result"] == 3
    attempts = engine.metadata.get_attempts(r.run_id, "flaky-0")
    assert [a.state for a in attempts] == [TaskState.FAILED, TaskState.FAILED, TaskState.SUCCESS]
    assert [a.fence for a in attempts] == [1, 2, 3]


def test_retry_policy_gives_up_after_max_attempts(engine):
    b.counts.clear()

    @pipeline(name="flaky_out")
    def p():
        return b.flaky(key="k2", fail_times=5)

    r = p.run(engine=engine)
    assert r.state is RunState.FAILED and b.counts["k2"] == 3


def test_retry_policy_does_not_retry_other_exceptions(engine):
    b.counts.clear()

    @pipeline(name="wrong_kind")
    def p():
        return b.wrong_kind(key="k3")

    assert p.run(engine=engine).state is RunState.FAILED
    assert b.counts["k3"] == 1


def test_error_handler_retry_gives_tasks_a_policy(engine):
    b.counts.clear()

    @pipeline(name="retry_all", error_handler="retry",
              error_config={"retry_policy": {"max_attempts": 4, "initial_delay": 0.01}})
    def p():
        return b.fails(x=1)

    r = p.run(engine=engine)
    assert r.state is RunState.FAILED and b.counts["fails"] == 4


def test_error_handler_retry_default_policy():
    from twingraph.engine.loop import DEFAULT_RETRY
    assert (DEFAULT_RETRY.max_attempts, DEFAULT_RETRY.backoff, DEFAULT_RETRY.initial_delay,
            DEFAULT_RETRY.max_delay) == (3, "exponential", 1.0, 60.0)


def test_thread_task_timeout_is_abandoned_and_reported(engine):
    @pipeline(name="thread_timeout")
    def p():
        return b.hangs_in_thread(x=1)

    t0 = time.monotonic()
    r = p.run(engine=engine)
    assert time.monotonic() - t0 < 2.5
    assert r.state is RunState.FAILED
    task = _tasks(engine, r.run_id)["hangs_in_thread-0"]
    assert "TaskTimeout" in task.error and "abandoned" in task.error


def test_process_task_timeout_kills_the_process(engine, tmp_path):
    pidfile = tmp_path / "pid"

    @pipeline(name="process_timeout")
    def p():
        return b.hangs_in_process(pidfile=str(pidfile))

    r = p.run(engine=engine)
    assert r.state is RunState.FAILED
    task = _tasks(engine, r.run_id)["hangs_in_process-0"]
    assert "killed" in task.error
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"worker process {pid} still alive after its timeout")


def test_process_mode_runs_in_another_process(engine):
    @pipeline(name="in_process")
    def p():
        return b.in_process(x=21)

    r = p.run(engine=engine)
    assert r.value["outputs"]["y"] == 42 and r.value["outputs"]["pid"] != os.getpid()


class UnstoppableExecutor:
    """Behaves like a remote worker that an abort cannot reach: late results still arrive."""
    platform = "local"

    def __init__(self):
        from twingraph.executors.local import LocalExecutor
        self.inner = LocalExecutor()

    def submit(self, job, done):
        job.mode = "thread"
        self.inner.submit(job, done)

    def abort(self, job):
        return False

    def shutdown(self):
        self.inner.shutdown()


def test_a_process_error_that_cannot_travel_is_retried_by_its_base_class(engine, tmp_path):
    """An error that does not unpickle leaves the worker as a ``NodeExecutionError`` naming its
    class; a retry rule naming a base class of it did not match (one attempt, not two)."""
    @pipeline(name="stubborn")
    def p():
        return b.stubborn_in_process(marker_dir=str(tmp_path))

    r = p.run(engine=engine)
    assert r.state is RunState.SUCCESS and r.value["outputs"]["result"] == "second attempt"
    assert len(os.listdir(tmp_path)) == 2
    assert _tasks(engine, r.run_id)["stubborn_in_process-0"].attempts == 2


@pytest.mark.parametrize("executor", ["local", "unstoppable"])
def test_stale_attempt_result_is_rejected_by_its_fence(executor):
    from twingraph.engine.engine import Engine
    from twingraph.stores.metadata import MemoryMetadataStore
    from twingraph.stores.results.memory import MemoryStorage
    engine = Engine(results=MemoryStorage(), metadata=MemoryMetadataStore(),
                    executor=UnstoppableExecutor() if executor == "unstoppable" else None)
    b.counts.clear()

    @pipeline(name="fenced")
    def p():
        return b.stale_then_fresh(key="fence")

    r = p.run(engine=engine)
    assert r.state is RunState.SUCCESS and r.value["outputs"]["result"] == "fresh"
    p2 = p.run(engine=engine)   # memo now holds the fresh value, not the stale one
    assert p2.value["outputs"]["result"] == "fresh"
    logs = [l.message for l in engine.metadata.get_logs(r.run_id)]
    assert any("TaskTimeout" in m for m in logs)
    dropped = any("dropped a late result of stale_then_fresh-0 (fence 1)" in m for m in logs)
    # The local pool drops an abandoned thread's result itself; a remote-like executor
    # delivers it, and the run loop's fence check rejects it.
    assert dropped is (executor == "unstoppable")
    engine.close()


def test_pipeline_timeout_cancels_running_tasks(engine):
    @pipeline(name="too_slow", timeout=0.3)
    def p():
        return b.slow(x="t", delay=2)

    t0 = time.monotonic()
    r = p.run(engine=engine)
    assert time.monotonic() - t0 < 1.5
    assert isinstance(r.error, PipelineTimeout)
    assert _tasks(engine, r.run_id)["slow-0"].state is TaskState.CANCELLED


def test_cancel_a_running_run(engine):
    import threading

    @pipeline(name="cancel_me")
    def p():
        return [b.slow(x=f"c{i}", delay=1.0) for i in range(3)]

    holder = {}
    started = threading.Event()

    def on_start(loop):
        holder["id"] = loop.run_id
        started.set()

    th = threading.Thread(target=lambda: holder.setdefault("r", p.run(engine=engine, on_start=on_start)))
    th.start()
    started.wait(5)
    time.sleep(0.2)
    assert engine.cancel(holder["id"])
    th.join(5)
    assert holder["r"].state is RunState.CANCELLED
    assert engine.metadata.get_run(holder["id"]).state is RunState.CANCELLED


def test_custom_error_handler_is_called(engine):
    seen = []

    @pipeline(name="custom", error_handler="custom",
              error_config={"handler": seen.append, "continue_on_error": True})
    def p():
        b.fails(x=1)
        return b.quick(x=1)

    r = p.run(engine=engine)
    assert [s["node_id"] for s in seen] == ["fails-0"]
    assert _tasks(engine, r.run_id)["quick-0"].state is TaskState.SUCCESS


def test_timeout_error_matches_builtin_timeouterror():
    assert issubclass(TaskTimeout, TimeoutError)


def test_an_inline_call_over_its_timeout_is_a_timeout(engine):
    """Measured-fast components run inline on the scheduler thread, where nothing can stop
    them; a call that runs on there is taken over (the loop moves to a new thread) and fails
    with TaskTimeout on time, abandoned like a thread task; a slow call sends an 'auto'
    component back to worker threads."""
    from twingraph import component
    from twingraph.errors import TaskTimeout

    @component(timeout=0.3, executor="inline")
    def quick(i, nap=0.0):
        time.sleep(nap)
        return i

    @pipeline(name="inline_timeout", error_handler="continue")
    def p():
        warm = [quick(i=i) for i in range(20)]
        return {"warm": warm, "slow": quick(i=99, nap=0.6)}

    t0 = time.monotonic()
    r = p.run(engine=engine)
    assert time.monotonic() - t0 < 0.55           # did not wait for the 0.6 s call
    tasks = _tasks(engine, r.run_id)
    slow = tasks["quick-20"]
    assert slow.state.value == "FAILED" and "TaskTimeout" in slow.error \
        and "abandoned" in slow.error
    assert all(tasks[f"quick-{i}"].state.value == "SUCCESS" for i in range(20))
    assert issubclass(TaskTimeout, TimeoutError)

    def auto_default(x):
        return x

    def auto_with_timeout(x):
        return x
    auto = component(auto_default).spec                  # the engine's choice for 'auto'
    for _ in range(8):
        engine.observe(auto, 0.00001, True)
    assert engine.choose_mode(auto) == "inline"
    engine.observe(auto, 0.6, True)
    assert engine.choose_mode(auto) == "thread"
    # A timeout of its own (shorter than the default) must be enforceable: never inline.
    timed = component(timeout=0.3)(auto_with_timeout).spec
    for _ in range(20):
        engine.observe(timed, 0.00001, True)
    assert engine.choose_mode(timed) == "thread"

@pytest.mark.parametrize("which", ["engine", "sqlite_engine"])
def test_a_task_that_succeeds_on_retry_keeps_no_error(which, request):
    """The task row describes the task: after a successful retry it carries no error (the
    failed attempts keep theirs)."""
    eng = request.getfixturevalue(which)
    b.counts.clear()

    @pipeline(name="flaky_clean")
    def p():
        return b.flaky(key=f"clean-{which}", fail_times=2)

    r = p.run(engine=eng)
    assert r.state is RunState.SUCCESS
    task = _tasks(eng, r.run_id)["flaky-0"]
    assert task.state is TaskState.SUCCESS and task.error is None
    errors = [a.error for a in eng.metadata.get_attempts(r.run_id, "flaky-0")]
    assert errors[0] and errors[1] and not errors[2]


def test_named_error_handler_as_documented(engine):
    """The document's form: error_config={'handler': 'error_notification', ...} names a handler
    registered with twingraph.register_error_handler."""
    from twingraph import register_error_handler
    seen = []

    @register_error_handler("error_notification")
    def notify_me(info):
        seen.append((info["node_id"], info["error"]))

    @pipeline(name="named_handler", error_handler="custom",
              error_config={"handler": "error_notification", "continue_on_error": True})
    def p():
        b.fails(x=1)
        return b.quick(x=1)

    r = p.run(engine=engine)
    assert [n for n, _ in seen] == ["fails-0"] and seen[0][1].startswith(
        _tasks(engine, r.run_id)["fails-0"].error.split(":")[0])
    assert _tasks(engine, r.run_id)["quick-0"].state is TaskState.SUCCESS


def test_an_unknown_or_failing_error_handler_is_logged_in_the_run(engine):
    from twingraph import register_error_handler

    @register_error_handler("explodes")
    def explodes(info):
        raise RuntimeError("handler bug")

    for name, expected in (("nobody_registered_this", "is not registered"),
                           ("explodes", "handler bug")):
        @pipeline(name=f"handler_{name}", error_handler="custom",
                  error_config={"handler": name, "continue_on_error": True})
        def p():
            return b.fails(x=1)

        r = p.run(engine=engine)
        warnings = [l.message for l in engine.metadata.get_logs(r.run_id, level="warning")
                    if l.node_id == "fails-0"]
        assert any(expected in m for m in warnings), warnings


def test_a_failed_attempt_logs_its_traceback(engine):
    """`runs logs` shows where a task failed, not only the error's type and message."""
    @pipeline(name="tb_log")
    def p():
        return b.fails(x=1)

    r = p.run(engine=engine)
    (line,) = [l.message for l in engine.metadata.get_logs(r.run_id, level="error")
               if l.node_id == "fails-0" and l.message.startswith("attempt 1 failed")]
    assert "Traceback (most recent call last)" in line and "behaviours.py" in line


def test_a_component_with_its_own_timeout_is_stopped_even_after_many_fast_calls(engine):
    """'auto' ran a measured-fast component inline, where its timeout could not stop a slow
    call: the run (and its own timeout) waited for it."""
    from twingraph import component

    @component(timeout=0.3, cache=False)
    def mostly_fast(i, nap=0.0):
        time.sleep(nap)
        return i

    @pipeline(name="timed_fast", error_handler="continue")
    def p():
        warm = [mostly_fast(i=i) for i in range(30)]
        for w in warm:
            w.result()                                  # all measured before the slow call
        return mostly_fast(i=99, nap=3.0)

    t0 = time.monotonic()
    r = p.run(engine=engine)
    assert time.monotonic() - t0 < 2.0
    slow = _tasks(engine, r.run_id)["mostly_fast-30"]
    assert slow.state is TaskState.FAILED and "abandoned" in slow.error


def test_a_measured_fast_call_never_holds_the_pipeline_timeout_or_another_tasks(engine):
    """A component measured fast ran inline on the scheduler thread, where no timer fires
    until the call returns: a call that took long once ran the pipeline past its own timeout
    (it ended SUCCESS), and a process task's own timeout fired only when the call returned."""
    from twingraph import component

    @component(cache=False)
    def usually_fast(i, nap=0.0):
        if nap:
            time.sleep(nap)
        return i

    @component(cache=False, executor="process", timeout=1)
    def stuck(x):
        time.sleep(30)

    @pipeline(name="warm_fast")
    def warm():
        return [usually_fast(i=i) for i in range(40)]

    for _ in range(30):             # measured fast (one call slowed by a busy machine resets it)
        warm.run(engine=engine)
        if engine.choose_mode(usually_fast.spec) == "inline":
            break
    assert engine.choose_mode(usually_fast.spec) == "inline"

    @pipeline(name="short_timeout", timeout=1.0)
    def short():
        return usually_fast(i=1, nap=4.0)

    t0 = time.monotonic()
    r = short.run(engine=engine)
    assert time.monotonic() - t0 < 3.0 and r.state is RunState.FAILED, r.state

    @pipeline(name="beside_a_deadline", error_handler="continue")
    def beside():
        a = stuck(1)
        time.sleep(0.5)
        return [a, usually_fast(i=2, nap=4.0)]

    t0 = time.monotonic()
    r = beside.run(engine=engine)
    tasks = _tasks(engine, r.run_id)
    assert tasks["stuck-0"].state is TaskState.FAILED and "TaskTimeout" in tasks["stuck-0"].error
    # killed at its own second, not when the 4 s call ended
    assert tasks["stuck-0"].ended_at - tasks["stuck-0"].started_at < 3.0
    assert tasks["usually_fast-0"].state is TaskState.SUCCESS


@pytest.mark.parametrize("failing", ["fails_unprintably", "fails_unprintably_in_process"])
def test_an_exception_whose_str_raises_fails_its_task_only(engine, failing):
    """Its text raised in the run loop (``error_text``): every task ended FAILED with
    "engine error", independent ones too, and progress counted them as still running."""
    @pipeline(name=f"unprintable_{failing}", error_handler="continue")
    def p():
        return getattr(b, failing)(x=1), [b.quick(x=i) for i in range(3)]

    r = p.run(engine=engine)
    assert r.state is RunState.FAILED
    tasks = _tasks(engine, r.run_id)
    bad = tasks[f"{failing}-0"]
    assert bad.state is TaskState.FAILED
    assert bad.error.startswith("Unprintable: <str() of the exception raised AttributeError>")
    assert all(tasks[f"quick-{i}"].state is TaskState.SUCCESS for i in range(3))
    assert r.progress["running"] == 0 and r.progress["failed"] == 1


def test_a_hung_inline_call_does_not_hold_the_run(engine):
    """A component measured fast runs inline on the loop's thread; one call that then hangs
    used to hold the whole run: a cancel was not read until it returned (and the run ended
    SUCCESS), independent tasks did not start. The loop now moves to a new thread after
    ``INLINE_ESCAPE`` and the call goes on as an abandoned-on-stop thread task."""
    import threading

    from twingraph import component

    release = threading.Event()

    @component(cache=False)
    def lookup(i):
        if i < 0:
            release.wait(10)          # a stall, once
        return i

    @pipeline(name="inline_hang_warm")
    def warm():
        return [lookup(i=i).result() for i in range(20)]

    @pipeline(name="inline_hang", max_parallel=4)
    def p():
        stuck = lookup(i=-1)
        others = [b.slow(x=i, delay=0.2) for i in range(3)]
        return stuck, others

    warm.run(engine=engine)
    assert engine.choose_mode(lookup.spec) == "inline"
    threading.Timer(1.0, lambda: engine.cancel(next(iter(engine.runs)), "user cancel")).start()
    t0 = time.monotonic()
    try:
        r = p.run(engine=engine)
    finally:
        release.set()
    assert time.monotonic() - t0 < 3
    assert r.state is RunState.CANCELLED
    tasks = _tasks(engine, r.run_id)
    assert tasks["lookup-0"].state is TaskState.CANCELLED
    assert all(tasks[f"slow-{i}"].state is TaskState.SUCCESS for i in range(3)), tasks


def test_a_component_measured_fast_that_turns_slow_runs_its_calls_in_parallel(engine):
    """A component measured fast runs inline; when its calls turn slow (a long-lived engine,
    durations that depend on the data), the first one escapes to a thread after
    ``INLINE_ESCAPE``. Nothing recorded that, so every next call ran inline again and waited
    ``INLINE_ESCAPE`` in turn: 8 independent calls started 0.1 s apart, not together."""
    from twingraph import component

    @component(cache=False)
    def step(i, delay):
        started = time.monotonic()
        time.sleep(delay)
        return started

    @pipeline(name="fast_then_slow_warm")
    def warm():
        return [step(i=i, delay=0).result() for i in range(60)]   # a slow first call decays

    @pipeline(name="fast_then_slow", max_parallel=8)
    def p():
        return [step(i=100 + i, delay=1.0)["outputs"]["result"] for i in range(8)]

    warm.run(engine=engine)
    assert engine.choose_mode(step.spec) == "inline"
    r = p.run(engine=engine)
    assert r.state is RunState.SUCCESS
    starts = sorted(r.value)
    # the first call escapes after INLINE_ESCAPE; the other seven start together (they were
    # 0.1 s apart, a spread of 0.6 s)
    assert starts[-1] - starts[1] < 0.3, [round(s - starts[0], 3) for s in starts]


def test_calling_a_failed_component_again_in_the_body_runs_it_again(engine, tmp_path):
    """A body that catches a failure and makes the same call again: the second call runs (it
    took the first one's failure, as an in-run twin, and never ran)."""
    from twingraph import component

    marker = tmp_path / "calls"

    @component(executor="thread")
    def fetch(url, marker):
        n = len(open(marker).read()) if os.path.exists(marker) else 0
        with open(marker, "a") as f:
            f.write("x")
        if n == 0:
            raise ConnectionError("transient")
        return "data"

    @pipeline(name="manual_retry", error_handler="continue")
    def p():
        for _ in range(3):
            try:
                return fetch(url="http://x", marker=str(marker)).result()
            except Exception:   # noqa: BLE001 - the body's own retry
                continue
        return None

    r = p.run(engine=engine)
    assert r.value["outputs"] == {"result": "data"}
    assert marker.read_text() == "xx"
    tasks = _tasks(engine, r.run_id)
    assert tasks["fetch-0"].state is TaskState.FAILED
    assert tasks["fetch-1"].state is TaskState.SUCCESS and tasks["fetch-1"].attempts == 1


@pytest.mark.parametrize("config, match", [
    ({"handler": print, "continue_on_error": "false"}, "continue_on_error must be True or False"),
    ({"handler": 42}, "handler must be a callable or the name"),
    ({"handler": print, "continue_on_eror": True}, r"unknown keys \['continue_on_eror'\]"),
])
def test_error_config_is_checked_when_the_pipeline_is_defined(config, match):
    """'false' is a true string: the run went on where it was asked to stop; a handler of 42
    showed up only as a warning at failure time; a misspelt key did nothing."""
    with pytest.raises(ValidationError, match=match):
        @pipeline(name="bad_error_config", error_handler="custom", error_config=config)
        def p():
            return None


@pytest.mark.parametrize("handler, config, match", [
    ("continue", {"handler": print}, r"'handler' does nothing under error_handler='continue'"),
    ("fail", {"continue_on_error": True}, r"'continue_on_error' is for error_handler='custom'"),
    ("custom", {"handler": print, "retry_policy": {"max_attempts": 2}},
     r"'retry_policy' is for error_handler='retry'"),
    ("retry", {"handler": print}, r"'handler' does nothing under error_handler='retry'"),
])
def test_error_config_keys_the_chosen_handler_never_reads_are_refused(handler, config, match):
    """They were accepted and did nothing: a handler never called, no retry."""
    with pytest.raises(ValidationError, match=match):
        @pipeline(name="idle_error_config", error_handler=handler, error_config=config)
        def p():
            return None


def test_a_notifier_that_exits_does_not_change_the_outcome(engine):
    told = []

    def exits(summary):
        raise SystemExit(3)

    @pipeline(name="notify_exits", notifications=[exits, told.append])
    def p():
        return b.quick(x=1)

    r = p.run(engine=engine)
    assert r.state is RunState.SUCCESS
    assert [s["status"] for s in told] == ["SUCCESS"]         # the next target is told too


def test_a_stop_names_process_jobs_that_never_started_as_dropped(engine):
    """Process jobs still waiting for a worker when 'fail' stops the run never ran: their
    records said "running task abandoned"."""
    n = (os.cpu_count() or 1) + 2           # the pool holds one worker a CPU: two wait

    @pipeline(name="dropped_jobs", error_handler="fail", max_parallel=n + 1)
    def p():
        jobs = [b.sleeps_in_process(x=i, delay=3) for i in range(n)]
        return jobs, b.slow(x=0, delay=0.5), b.fails(x=b.slow(x=1, delay=0.5))

    r = p.run(engine=engine)
    assert r.state is RunState.FAILED
    errors = [t.error for t in _tasks(engine, r.run_id).values()
              if t.node_id.startswith("sleeps_in_process")]
    assert sum("dropped before it started" in e for e in errors) >= 2, errors
    assert all("dropped before it started" in e or "killed" in e for e in errors), errors


def test_inline_calls_taken_over_one_after_another_end_the_run(engine):
    """Each call outlives ``INLINE_ESCAPE``: the loop moves thread after thread. A call that
    returned on an old thread took the entry of its successor's call, the successor then
    left the loop too, and the run hung with no driver (its timeout could not fire)."""
    import threading

    from twingraph import component

    @component(cache=False, executor="inline")
    def work(i):
        time.sleep(0.3)
        return i

    @pipeline(name="inline_takeovers", timeout=20)
    def p():
        return [work(i=i)["outputs"]["result"] for i in range(6)]

    out = {}
    t = threading.Thread(target=lambda: out.update(r=p.run(engine=engine)), daemon=True)
    t.start()
    t.join(15)
    assert "r" in out, "the run hung"
    assert out["r"].state is RunState.SUCCESS and out["r"].value == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("stop", ["a failing task", "a cancel"])
def test_a_stop_while_an_inline_call_is_taken_over_ends_the_run(engine, stop):
    """The stop was handled before the takeover (queued behind it): the inline task, not yet
    RUNNING in the loop's books, ended as one never started and its slot was never given
    back; the run hung."""
    import threading

    from twingraph import component

    @component(cache=False, executor="thread")
    def boom(x):
        time.sleep(0.03)
        raise ValueError("boom")

    @component(cache=False, executor="inline")
    def slow_inline(x):
        time.sleep(0.5)
        return x

    @pipeline(name=f"stop_during_takeover_{stop.split()[-1]}")
    def p():
        if stop == "a failing task":
            boom(x=1)
        return slow_inline(x=2)

    if stop == "a cancel":
        threading.Timer(0.03, lambda: [engine.cancel(r) for r in list(engine.runs)]).start()
    out = {}
    t = threading.Thread(target=lambda: out.update(r=p.run(engine=engine)), daemon=True)
    t.start()
    t.join(8)
    assert "r" in out, "the run hung"
    assert out["r"].state in (RunState.FAILED, RunState.CANCELLED)


def test_a_slow_error_handler_does_not_hold_the_run_or_its_timeouts(engine):
    """The custom handler ran on the run loop's thread: while a handler posting a webhook
    slept 2 s, no timer fired (a 0.3 s task timeout fired at 2 s, the pipeline's 1 s timeout
    not at all) and nothing started. It runs beside the loop now; the run's end waits for it."""
    from twingraph import component
    from twingraph.errors import PipelineTimeout

    calls = []

    def slow_handler(info):
        time.sleep(2.0)
        calls.append(info["node_id"])

    @component(cache=False)
    def breaks(x):
        raise ValueError("bad")

    @component(cache=False, executor="thread", timeout=0.3)
    def overruns(x):
        time.sleep(3)
        return x

    @pipeline(name="slow_handler", error_handler="custom", timeout=1,
              error_config={"handler": slow_handler, "continue_on_error": True})
    def p():
        return [breaks(1), overruns(2)]

    r = p.run(engine=engine)
    assert isinstance(r.error, PipelineTimeout) or "TaskTimeout" in str(r.error), r.error
    tasks = _tasks(engine, r.run_id)
    slow = tasks["overruns-0"]
    assert slow.state.value == "FAILED" and "TaskTimeout" in slow.error
    attempt = [a for a in engine.metadata.get_attempts(r.run_id) if a.node_id == "overruns-0"]
    assert attempt and attempt[0].ended_at - attempt[0].started_at < 1.0      # on time
    assert calls and calls[0] == "breaks-0"              # called, and waited for by the end


def test_an_error_handler_that_exits_does_not_crash_the_run(engine):
    """``sys.exit()`` in the handler went through the loop's crash path: a healthy task was
    failed with "engine error: SystemExit: 3"."""
    import sys

    from twingraph import component

    @component(cache=False)
    def breaks(x):
        raise ValueError("bad")

    @component(cache=False)
    def fine(x):
        time.sleep(0.2)
        return x

    @pipeline(name="exiting_handler", error_handler="custom",
              error_config={"handler": lambda info: sys.exit(3), "continue_on_error": True})
    def p():
        return [breaks(1), fine(2)]

    r = p.run(engine=engine)
    tasks = _tasks(engine, r.run_id)
    assert tasks["fine-0"].state.value == "SUCCESS", tasks["fine-0"].error
    assert tasks["breaks-0"].state.value == "FAILED"
    logs = [l.message for l in engine.metadata.get_logs(r.run_id)]
    assert any("error handler" in m and "SystemExit: 3" in m for m in logs), logs


def test_a_failure_is_blamed_on_the_task_that_ran_not_its_twin(engine):
    """The same call made twice: the second follows the first. When the first failed, the
    twin (which never ran) was failed first: the handler, the stop and the run's error named
    it before the task that raised."""
    from twingraph import component

    calls = []

    @component
    def risky(x):
        time.sleep(0.05)
        raise ValueError(f"risky {x}")

    @pipeline(name="twin_blame", error_handler="custom",
              error_config={"handler": lambda info: calls.append(info["node_id"])})
    def p():
        return [risky(1), risky(1)]

    r = p.run(engine=engine)
    assert calls[0] == "risky-0", calls
    assert str(r.error).startswith("pipeline 'twin_blame' failed: risky-0: ValueError"), r.error
    logs = [l.message for l in engine.metadata.get_logs(r.run_id) if l.level == "warning"]
    assert any(m.startswith("stopping: task risky-0 failed") for m in logs), logs

    @pipeline(name="twin_blame_continue", error_handler="continue")
    def q():
        return [risky(2), risky(2)]

    r = q.run(engine=engine)
    twin = _tasks(engine, r.run_id)["risky-1"]
    assert twin.state.value == "FAILED" and twin.attempts == 0
    assert twin.cache_reason == "same computation as risky-0 in this run, which failed"


def test_reading_a_missing_output_names_the_producer_and_path_and_counts_no_attempt(engine):
    """``prod(1)["outputs"]["nope"]``: the consumer failed with a bare "KeyError: 'nope'" that
    read as its own error, and its row said attempts=1 with no attempt row (it never ran)."""
    from twingraph import component

    @component(cache=False)
    def prod(x):
        return {"a": x}

    @component(cache=False, retry_policy={"max_attempts": 3, "initial_delay": 0.01})
    def cons(v):
        return v

    @pipeline(name="missing_output", error_handler="continue")
    def p():
        return cons(prod(1)["outputs"]["nope"])

    r = p.run(engine=engine)
    cons_row = _tasks(engine, r.run_id)["cons-0"]
    assert cons_row.state.value == "FAILED" and cons_row.attempts == 0
    assert "input prod-0['outputs']['nope'] is not there: KeyError: 'nope'" in cons_row.error
    assert not [a for a in engine.metadata.get_attempts(r.run_id) if a.node_id == "cons-0"]


def test_a_skipped_tasks_result_says_which_upstream_failed_and_why(engine):
    """Under 'continue', ``.result()`` of a task skipped for a failed producer said only "an
    upstream task failed", without the task or its error."""
    from twingraph import component
    from twingraph.errors import NodeExecutionError

    @component(cache=False)
    def risky(x):
        raise ValueError(f"boom {x}")

    @component(cache=False)
    def consume(v):
        return v

    seen = {}

    @pipeline(name="skipped_says_why", error_handler="continue")
    def p():
        c = consume(risky(2))
        try:
            c.result()
        except NodeExecutionError as exc:
            seen["error"] = exc
        return 1

    p.run(engine=engine)
    err = seen["error"]
    assert "consume-0 was skipped: upstream risky-0 failed: ValueError: boom 2" in str(err), err
    assert isinstance(err.__cause__, ValueError)


def _run_with_slow_handler(engine, seconds, name):
    """A run whose one task fails and whose custom handler takes ``seconds``: its loop ends
    at once, then the run waits for the handler."""
    from twingraph import component

    @component(cache=False)
    def breaks(x):
        raise ValueError("bad")

    @pipeline(name=name, error_handler="custom",
              error_config={"handler": lambda info: time.sleep(seconds), "continue_on_error": True})
    def p():
        return breaks(1)
    return p


def test_ctrl_c_while_a_run_waits_for_its_error_handler_still_records_its_end(engine):
    """The interrupt skipped the recording of the run's end: the run stayed RUNNING and in
    ``engine.runs`` for good."""
    import _thread
    import threading

    p = _run_with_slow_handler(engine, 4.0, "ctrl_c_handler_wait")
    threading.Timer(1.0, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt, match="interrupted; it ended FAILED"):
        p.run(engine=engine)
    (run,) = engine.metadata.list_runs(pipeline="ctrl_c_handler_wait")
    assert run.state.value == "FAILED" and not engine.runs
    # what the interrupted wait leaves behind is said in the run's log
    logs = [l.message for l in engine.metadata.get_logs(run.run_id)]
    assert any("still running when the wait for it was interrupted" in m for m in logs), logs


def test_closing_the_engine_cuts_the_wait_for_error_handlers(tmp_path):
    """``Engine.close`` gave runs 5 s to record their end, but a run waited up to 30 s for
    its handler: the recorder was closed first and the run stayed RUNNING in the store."""
    import threading

    from twingraph.engine.engine import Engine
    from twingraph.stores.metadata import SQLMetadataStore
    from twingraph.stores.results.sqlite import SQLiteStorage

    eng = Engine(results=SQLiteStorage(str(tmp_path / "r.db")),
                 metadata=SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True),
                 flush_interval=0.01)
    p = _run_with_slow_handler(eng, 8.0, "close_handler_wait")
    t = threading.Thread(target=p.run, kwargs={"engine": eng})
    t.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    eng.close()
    t.join(10)
    assert time.monotonic() - t0 < 5
    store = SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}")
    (run,) = store.list_runs(pipeline="close_handler_wait")
    assert run.state.value != "RUNNING", run
    store.close()


def test_tasks_submitted_after_their_upstream_failed_are_skipped_in_its_words(engine):
    """A consumer submitted once its producer had already failed was skipped with "upstream X
    did not succeed", no error and no cause, unlike one submitted before; and down a chain,
    each link nested the one before in its message (100 KB a task at 2,000 links)."""
    from twingraph import component
    from twingraph.errors import NodeExecutionError

    @component(cache=False)
    def boom(x):
        raise ValueError("disk full")

    @component(cache=False)
    def use(v):
        return v

    seen = []

    @pipeline(name="late_skip", error_handler="continue")
    def p():
        b = boom(1)
        try:
            b.result()
        except NodeExecutionError:
            pass
        v = use(b)                         # submitted after boom-0 failed
        try:
            v.result()
        except NodeExecutionError as exc:
            seen.append(exc)
        for _ in range(49):                # a chain behind it
            v = use(v)
        return 1

    r = p.run(engine=engine)
    (err,) = seen
    assert "use-0 was skipped: upstream boom-0 failed: ValueError: disk full" in str(err), err
    assert isinstance(err.__cause__, ValueError)
    errors = [t.error for t in engine.metadata.get_tasks(r.run_id) if t.node_id != "boom-0"]
    assert len(errors) == 50
    assert all(e == "NodeExecutionError: upstream boom-0 failed: ValueError: disk full"
               for e in errors), max(errors, key=len)[:300]


class HoldsALock(ValueError):
    """An exception that cannot be pickled (it holds a lock), as some libraries' do."""

    def __init__(self, message):
        super().__init__(message)
        import threading
        self.lock = threading.Lock()


def test_an_exception_a_process_task_cannot_pickle_is_still_caught_by_its_class(engine):
    """From a worker process it arrived as a plain NodeExecutionError, which ``except
    ValueError`` in the body did not catch (from a thread task it did)."""
    from twingraph import component

    @component(executor="process", cache=False)
    def locked(x):
        raise HoldsALock(f"bad {x}")

    @pipeline(name="unpicklable_exception", error_handler="continue")
    def p():
        try:
            locked(x=1).result()
        except ValueError as exc:
            return f"caught {type(exc).__name__}: {exc}"
        return "not caught"

    r = p.run(engine=engine)
    assert r.value.startswith("caught HoldsALock: ") and r.value.endswith("bad 1"), r
