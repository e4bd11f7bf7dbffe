"""A pipeline called inside a running one: the settings its decorator was given apply to its
own tasks (engine/scopes.py, decision 0004); the ones it was not given are the enclosing one's."""
import threading
import time

from tests.resources import behaviours as b
from twingraph import component, pipeline
from twingraph.core.states import RunState, TaskState

_lock = threading.Lock()
active: dict[str, int] = {}
peak: dict[str, int] = {}


@component(executor="thread")
def busy(group, i, delay=0.15):
    with _lock:
        active[group] = active.get(group, 0) + 1
        peak[group] = max(peak.get(group, 0), active[group])
    time.sleep(delay)
    with _lock:
        active[group] -= 1
    return i


def _reset():
    active.clear()
    peak.clear()
    b.counts.clear()


def _tasks(engine, run_id):
    engine.recorder.flush()
    return {t.node_id: t for t in engine.metadata.get_tasks(run_id)}


def test_a_nested_max_parallel_caps_its_own_tasks_only(engine):
    _reset()

    @pipeline(name="capped", max_parallel=2)
    def capped(n):
        return [busy(group="inner", i=i) for i in range(n)]

    @pipeline(name="wide", max_parallel=8)
    def wide():
        inner = capped(6)
        outer = [busy(group="outer", i=i) for i in range(4)]
        return inner, outer

    r = wide.run(engine=engine)
    assert r.state is RunState.SUCCESS, r.error
    assert peak["inner"] == 2                    # was 6: the run's 8 slots were its limit
    assert peak["outer"] == 4                    # the rest of the run is not held back


def test_each_nested_call_has_its_own_cap_and_the_runs_cap_still_holds(engine):
    _reset()

    @pipeline(name="one_at_a_time", max_parallel=1)
    def one(tag):
        return [busy(group=tag, i=i, delay=0.1) for i in range(3)]

    @pipeline(name="narrow", max_parallel=2)
    def narrow():
        return one("a"), one("b"), [busy(group="all", i=i, delay=0.1) for i in range(4)]

    r = narrow.run(engine=engine)
    assert r.state is RunState.SUCCESS, r.error
    assert peak["a"] == 1 and peak["b"] == 1
    assert peak["all"] <= 2


def test_a_nested_continue_under_an_outer_fail_keeps_the_run_going(engine):
    _reset()

    @pipeline(name="tolerant", error_handler="continue")
    def tolerant():
        bad = b.fails(x=1)
        return b.quick(x=bad["outputs"]["result"]), b.slow(x=7, delay=0.2)

    @pipeline(name="strict")              # error_handler='fail'
    def strict():
        dependent, sibling = tolerant()
        after = b.quick(x=sibling["outputs"]["result"])
        return after

    r = strict.run(engine=engine)
    tasks = _tasks(engine, r.run_id)
    assert tasks["fails-0"].state is TaskState.FAILED
    assert tasks["quick-0"].state is TaskState.SKIPPED        # depends on the failure
    assert tasks["slow-0"].state is TaskState.SUCCESS         # was cancelled: the run stopped
    assert tasks["quick-1"].state is TaskState.SUCCESS
    assert r.state is RunState.FAILED and set(r.failures) == {"fails-0"}


def test_a_nested_fail_under_an_outer_continue_ends_only_the_nested_pipeline(engine):
    _reset()

    @pipeline(name="all_or_nothing", error_handler="fail", max_parallel=4)
    def all_or_nothing():
        return b.slow(x=1, delay=3.0), b.fails(x=2), [b.slow(x=10 + i, delay=0.05)
                                                        for i in range(3)]

    @pipeline(name="forgiving", error_handler="continue", max_parallel=8)
    def forgiving():
        long, _, _ = all_or_nothing()
        uses_it = b.quick(x=long["outputs"]["result"])
        own = b.quick(x=100)
        return uses_it, own

    t0 = time.monotonic()
    r = forgiving.run(engine=engine)
    took = time.monotonic() - t0
    tasks = _tasks(engine, r.run_id)
    assert took < 2.5                                          # did not wait for the 3 s task
    assert tasks["fails-0"].state is TaskState.FAILED
    assert tasks["slow-0"].state is TaskState.CANCELLED        # ran 3 s: nothing stopped it
    assert tasks["quick-0"].state is TaskState.SKIPPED         # depends on a cancelled task
    assert "pipeline all_or_nothing stopped: task fails-0 failed" in str(tasks["slow-0"].error)
    assert tasks["quick-1"].state is TaskState.SUCCESS         # the outer run went on
    assert r.state is RunState.FAILED


def test_a_nested_timeout_cancels_what_is_left_of_it(engine):
    _reset()

    @pipeline(name="quick_or_nothing", timeout=0.5)
    def quick_or_nothing():
        return b.slow(x=1, delay=3.0)

    @pipeline(name="patient")                 # the run's timeout: 3600 s
    def patient():
        return quick_or_nothing()

    t0 = time.monotonic()
    r = patient.run(engine=engine)
    took = time.monotonic() - t0
    assert took < 2.0                             # was 3 s: the nested timeout did nothing
    assert r.state is RunState.FAILED
    assert r.failures == {"pipeline quick_or_nothing": "timed out after 0.5s"}
    assert "pipeline quick_or_nothing: timed out after 0.5s" in str(r.error)
    tasks = _tasks(engine, r.run_id)
    assert tasks["slow-0"].state is TaskState.CANCELLED
    said = [log.message for log in engine.metadata.get_logs(r.run_id)
            if "quick_or_nothing" in log.message]
    assert said[0] == ("stopping nested pipeline quick_or_nothing: timed out after 0.5s; "
                       "cancelling its 1 unfinished task")


def test_a_nested_timeout_under_continue_skips_only_what_depends_on_it(engine):
    _reset()

    @pipeline(name="bounded", timeout=0.4)
    def bounded():
        return b.slow(x=1, delay=3.0)

    @pipeline(name="goes_on", error_handler="continue")
    def goes_on():
        late = bounded()
        return b.quick(x=late["outputs"]["result"]), b.slow(x=2, delay=0.6)

    r = goes_on.run(engine=engine)
    tasks = _tasks(engine, r.run_id)
    assert tasks["slow-0"].state is TaskState.CANCELLED
    assert tasks["quick-0"].state is TaskState.SKIPPED
    assert tasks["slow-1"].state is TaskState.SUCCESS       # outlived the nested timeout


def test_a_nested_pipeline_that_finished_in_time_is_not_timed_out(engine):
    _reset()

    @pipeline(name="in_time", timeout=0.3)
    def in_time():
        return b.quick(x=1)

    @pipeline(name="later_work")
    def later_work():
        first = in_time()
        return b.slow(x=first["outputs"]["result"], delay=0.6)

    r = later_work.run(engine=engine)
    assert r.state is RunState.SUCCESS, r.error


def test_a_nested_retry_handler_gives_its_tasks_a_policy(engine):
    _reset()

    @component
    def transient(key):
        if b.bump(key) == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    @pipeline(name="retrying", error_handler="retry",
              error_config={"retry_policy": {"max_attempts": 2, "backoff": "fixed",
                                             "initial_delay": 0.01}})
    def retrying():
        return transient(key="inner")

    @pipeline(name="no_retries")
    def no_retries():
        inner = retrying()
        inner.result()                   # retried first: the run stops at the next failure
        return inner, transient(key="outer")

    r = no_retries.run(engine=engine)
    tasks = _tasks(engine, r.run_id)
    assert tasks["transient-0"].state is TaskState.SUCCESS    # retried under the nested policy
    assert tasks["transient-0"].attempts == 2
    assert tasks["transient-1"].state is TaskState.FAILED     # the run's own: no retry
    assert b.counts["outer"] == 1


def test_a_nested_custom_handler_is_called_for_its_own_failures(engine):
    _reset()
    seen = []

    @pipeline(name="reporting", error_handler="custom",
              error_config={"handler": seen.append, "continue_on_error": True})
    def reporting():
        return b.fails(x=1), b.slow(x=3, delay=0.2)

    @pipeline(name="plain")
    def plain():
        return reporting()

    r = plain.run(engine=engine)
    tasks = _tasks(engine, r.run_id)
    assert [s["node_id"] for s in seen] == ["fails-0"]
    assert tasks["slow-0"].state is TaskState.SUCCESS         # the handler continued
    assert r.state is RunState.FAILED


def test_a_scope_without_its_own_handler_leaves_the_decision_to_the_enclosing_one(engine):
    """A pipeline given only a max_parallel inside one given 'continue' inside a 'fail' run:
    the middle one's 'continue' decides for the innermost one's failure."""
    _reset()

    @pipeline(name="innermost", max_parallel=1)
    def innermost():
        return b.fails(x=1), b.quick(x=5)

    @pipeline(name="middle", error_handler="continue")
    def middle():
        return innermost(), b.slow(x=9, delay=0.2)

    @pipeline(name="top")
    def top():
        return middle()

    r = top.run(engine=engine)
    tasks = _tasks(engine, r.run_id)
    assert tasks["fails-0"].state is TaskState.FAILED
    assert tasks["quick-0"].state is TaskState.SUCCESS
    assert tasks["slow-0"].state is TaskState.SUCCESS


def test_tasks_a_nested_body_submits_after_it_failed_are_cancelled(engine):
    _reset()

    @pipeline(name="keeps_submitting", error_handler="fail")
    def keeps_submitting():
        bad = b.fails(x=1)
        try:
            bad.result()
        except Exception:
            pass
        return b.quick(x=2)

    @pipeline(name="lenient", error_handler="continue")
    def lenient():
        late = keeps_submitting()
        return late, b.quick(x=3)

    r = lenient.run(engine=engine)
    tasks = _tasks(engine, r.run_id)
    assert tasks["quick-0"].state is TaskState.CANCELLED
    assert "pipeline keeps_submitting stopped" in str(tasks["quick-0"].error)
    assert tasks["quick-1"].state is TaskState.SUCCESS
    assert "quick-2" not in b.counts


def test_a_nested_pipeline_without_settings_of_its_own_takes_the_enclosing_ones(engine):
    _reset()

    @pipeline(name="plain_inner")
    def plain_inner(n):
        return [busy(group="plain", i=i, delay=0.1) for i in range(n)]

    @pipeline(name="roomy", max_parallel=12, error_handler="continue")
    def roomy():
        inner = plain_inner(12)
        return inner, b.fails(x=0), b.quick(x=1)

    r = roomy.run(engine=engine)
    tasks = _tasks(engine, r.run_id)
    assert peak["plain"] > 10                     # not the default max_parallel of 10
    assert tasks["quick-0"].state is TaskState.SUCCESS       # 'continue', not the default


def test_an_in_run_twin_of_a_task_a_nested_failure_cancelled_is_computed_anew(engine):
    """The outer body makes the same call as the nested pipeline (one key: the outer one
    follows the nested one's task). That task was cancelled with its nested pipeline while
    the run went on: the twin ended CANCELLED too and what depended on it waited for ever.
    Since session 22 a twin in another pipeline is computed anew under its own pipeline's
    rules (tests/engine/test_twins_across_scopes.py), so what depends on it runs."""
    _reset()

    @pipeline(name="fragile", error_handler="fail")
    def fragile():
        return b.slow(x=1, delay=1.0), b.fails(x=2)

    @pipeline(name="sturdy", error_handler="continue")
    def sturdy():
        fragile()
        twin = b.slow(x=1, delay=1.0)
        return b.quick(x=twin["outputs"]["result"]), b.quick(x=50)

    done = []
    t = threading.Thread(target=lambda: done.append(sturdy.run(engine=engine)), daemon=True)
    t.start()
    t.join(10)
    assert done, "the run never ended"
    tasks = _tasks(engine, done[0].run_id)
    assert tasks["slow-0"].state is TaskState.CANCELLED
    assert tasks["slow-1"].state is TaskState.SUCCESS
    assert tasks["quick-0"].state is TaskState.SUCCESS
    assert tasks["quick-1"].state is TaskState.SUCCESS


def _run_or_hang(p, engine, seconds=10):
    done = []
    t = threading.Thread(target=lambda: done.append(p.run(engine=engine)), daemon=True)
    t.start()
    t.join(seconds)
    assert done, "the run never ended"
    return done[0]


def test_a_slot_given_to_a_task_that_never_starts_is_given_on(engine):
    """The inner pipeline timed out; cancelling its running task gave the middle one's only
    slot to the inner's queued task, cancelled next: the middle one's other task waited for
    a slot for ever."""
    _reset()

    @pipeline(name="step", timeout=0.5)
    def step(i):
        return b.slow(x=i, delay=2.0), b.quick(x=i)

    @pipeline(name="one_slot", max_parallel=1)
    def one_slot():
        return step(1), b.quick(x=50)

    @pipeline(name="around", error_handler="continue")
    def around():
        return one_slot()

    r = _run_or_hang(around, engine)
    tasks = _tasks(engine, r.run_id)
    assert tasks["quick-1"].state is TaskState.SUCCESS
    assert r.state is RunState.FAILED


def test_three_levels_skip_what_depends_on_the_innermost_cancelled_tasks(engine):
    """The middle pipeline's 'fail' handed the outer 'continue' only the tasks it cancelled
    itself (none: the innermost had cancelled them): what depended on them waited for ever."""
    _reset()

    @pipeline(name="innermost_t", timeout=0.3)
    def innermost_t():
        return b.slow(x=1, delay=2.0)

    @pipeline(name="middle_f", error_handler="fail")
    def middle_f():
        return innermost_t()

    @pipeline(name="top_c", error_handler="continue")
    def top_c():
        a = middle_f()
        return b.quick(x=a["outputs"]["result"]), b.quick(x=100)

    r = _run_or_hang(top_c, engine)
    tasks = _tasks(engine, r.run_id)
    assert tasks["quick-0"].state is TaskState.SKIPPED
    assert tasks["quick-1"].state is TaskState.SUCCESS


def test_a_body_that_catches_a_nested_timeout_has_handled_it(engine):
    """The body got ``PipelineCancelled('task slow-0 was cancelled: ')`` (the run was not
    cancelled) and, having caught it, still saw its run fail."""
    _reset()
    seen = []

    @pipeline(name="bounded_c", timeout=0.3)
    def bounded_c(i):
        return b.slow(x=i, delay=2.0)

    @pipeline(name="catches", error_handler="continue")    # under 'fail' the run stops
    def catches():
        for i in range(2):           # two calls, two entries
            late = bounded_c(i)
            try:
                late.result()
            except Exception as exc:  # noqa: BLE001
                seen.append(exc)
        return b.quick(x=5)

    r = _run_or_hang(catches, engine)
    assert len(seen) == 2
    assert all(str(e).startswith("pipeline bounded_c timed out after 0.3s") for e in seen)
    assert all(type(e).__name__ == "TaskCancelled" for e in seen)
    assert r.failures == {"pipeline bounded_c": "timed out after 0.3s",
                          "pipeline bounded_c (call 2)": "timed out after 0.3s"}
    assert r.state is RunState.SUCCESS, r.error


def test_a_nested_timeout_does_not_fire_after_the_run_was_cancelled(engine):
    _reset()
    seen = []

    @pipeline(name="inner_sleeps", timeout=0.6)
    def inner_sleeps():
        s = b.slow(x=1, delay=3.0)
        time.sleep(1.0)                    # the body itself outlives the timeout
        return s

    @pipeline(name="custom_outer", error_handler="custom",
              error_config={"handler": seen.append, "continue_on_error": True})
    def custom_outer():
        return inner_sleeps()

    def cancel_soon(loop):
        threading.Timer(0.2, loop.cancel, args=("user said stop",)).start()

    r = custom_outer.run(engine=engine, on_start=cancel_soon)
    time.sleep(0.6)                        # past the nested timeout
    assert r.state is RunState.CANCELLED
    assert r.failures == {} and seen == []
