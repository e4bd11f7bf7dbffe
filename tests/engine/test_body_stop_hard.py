"""A pipeline body that goes on after its run timed out or was cancelled, without asking
``stop_requested()``, is stopped: ``RunStopped`` is raised in it (``engine.bodystop``). Before,
a body in a busy loop kept the run RUNNING, and ``twingraph run`` waiting, until it returned by
itself. Real runs on the in-memory engine of ``conftest.py``."""
from __future__ import annotations

import threading
import time

import pytest

from twingraph import component, pipeline
from twingraph.core.states import RunState
from twingraph.engine import bodystop
from twingraph.errors import PipelineCancelled, PipelineTimeout, RunStopped


@component(cache=False)
def quick(i: int) -> int:
    return i


@component(cache=False)
def slow(s: float) -> float:
    time.sleep(s)
    return s


def _spin(seconds: float) -> int:
    """Pure Python work that never asks whether the run stopped."""
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        n += sum(range(200))
    return n


events: list[str] = []


@pipeline(name="spinning_body", timeout=1)
def spinning_body(seconds: float):
    quick(i=1).result()
    try:
        _spin(seconds)
    finally:
        events.append("finally ran")          # its cleanup still runs
    return quick(i=2)


def test_a_body_spinning_past_its_timeout_is_stopped_and_the_run_ends(engine):
    events.clear()
    t0 = time.monotonic()
    r = spinning_body.run(engine=engine, seconds=30.0)
    took = time.monotonic() - t0
    assert r.state is RunState.FAILED and isinstance(r.error, PipelineTimeout), r.error
    assert took < 1 + bodystop.GRACE + 3, took          # not the 30 s of its loop
    assert events == ["finally ran"]
    logs = [x.message for x in engine.metadata.get_logs(r.run_id)]
    assert any("RunStopped" in m and "_spin" in m for m in logs), logs   # where it was stopped


caught: list[str] = []


@pipeline(name="stubborn_body", timeout=1)
def stubborn_body():
    quick(i=1).result()
    try:
        _spin(30.0)
    except BaseException as exc:      # noqa: BLE001 - a body that swallows the first one
        caught.append(type(exc).__name__)
    _spin(30.0)                       # is stopped again
    return 1


def test_a_body_that_swallows_the_stop_gets_it_again(engine):
    caught.clear()
    t0 = time.monotonic()
    r = stubborn_body.run(engine=engine)
    assert isinstance(r.error, PipelineTimeout), r.error
    assert caught == ["RunStopped"]
    assert time.monotonic() - t0 < 1 + bodystop.GRACE + bodystop.RESEND + 3


@pipeline(name="spin_until_cancelled")
def spin_until_cancelled(started: threading.Event):
    quick(i=1).result()
    started.set()
    _spin(30.0)
    return 1


def test_a_cancelled_run_stops_its_spinning_body(engine):
    started = threading.Event()
    out: dict = {}
    th = threading.Thread(target=lambda: out.update(r=spin_until_cancelled.run(
        engine=engine, started=started)))
    th.start()
    assert started.wait(10)
    t0 = time.monotonic()
    (run_id,) = list(engine.runs)
    assert engine.cancel(run_id, "stop it")
    th.join(bodystop.GRACE + 5)
    assert not th.is_alive() and time.monotonic() - t0 < bodystop.GRACE + 5
    r = out["r"]
    assert r.state is RunState.CANCELLED and isinstance(r.error, PipelineCancelled), r.error


@pipeline(name="waits_on_a_task", timeout=1)
def waits_on_a_task():
    return slow(s=30.0).result()


def test_a_body_waiting_in_the_engine_is_ended_by_the_engine_not_by_runstopped(engine):
    # blocked in TwinGraph's own code (a future's result): never interrupted there; the
    # cancelled task's error reaches it
    t0 = time.monotonic()
    r = waits_on_a_task.run(engine=engine)
    assert isinstance(r.error, PipelineTimeout), r.error
    assert time.monotonic() - t0 < 1 + 3
    logs = " ".join(x.message for x in engine.metadata.get_logs(r.run_id))
    assert "RunStopped" not in logs, logs


@component(cache=False)
def breaks() -> int:
    raise ValueError("broken")


@pipeline(name="handles_its_failure", error_handler="fail")
def handles_its_failure():
    f = breaks()
    try:
        f.result()
    except Exception:                 # noqa: BLE001 - it handles the failure, for a while
        _spin(bodystop.GRACE + 1.0)
        return "handled"


def test_a_run_stopped_by_a_failure_lets_its_body_finish(engine):
    r = handles_its_failure.run(engine=engine)
    assert r.state is RunState.FAILED
    logs = " ".join(x.message for x in engine.metadata.get_logs(r.run_id))
    assert "RunStopped" not in logs, logs


def test_nothing_is_raised_in_the_thread_once_the_body_returned(engine):
    # a stop that comes after the body returned sends nothing; one sent just before is taken
    # back by ``settle`` (the thread goes on, in the caller's code, untouched)
    watch = bodystop.BodyWatch(threading.get_ident(), __import__("sys")._getframe())
    watch.settle()
    watch.stop_later()
    assert watch.stopper is None
    _spin(bodystop.GRACE + 0.3)       # nothing raised here


def test_runstopped_is_not_an_exception_a_body_catches_by_accident():
    assert issubclass(RunStopped, BaseException) and not issubclass(RunStopped, Exception)
    with pytest.raises(RunStopped, match="stopped here"):
        raise RunStopped


# -- second review (session 24) ---------------------------------------------------------------

from twingraph import stop_requested          # noqa: E402


cleanup: dict = {}


@pipeline(name="cleans_up_in_its_grace", timeout=1)
def cleans_up_in_its_grace():
    quick(i=1).result()
    while not stop_requested():       # a body that checks, as it should
        time.sleep(0.01)
    t0 = time.monotonic()
    _spin(0.3)                        # its cleanup, well inside the grace period
    cleanup["took"] = time.monotonic() - t0
    return 1


def test_a_body_that_checks_gets_its_grace_period(engine):
    """``RunStopped`` was raised at once: the grace period was slept after the first send."""
    cleanup.clear()
    r = cleans_up_in_its_grace.run(engine=engine)
    assert isinstance(r.error, PipelineTimeout)
    assert cleanup.get("took", 0) >= 0.3, cleanup
    logs = " ".join(x.message for x in engine.metadata.get_logs(r.run_id))
    assert "RunStopped" not in logs


@pipeline(name="inner_spinner")
def inner_spinner():
    _spin(30.0)
    return 1


@pipeline(name="outer_of_a_spinner", timeout=1)
def outer_of_a_spinner():
    return inner_spinner()


def test_a_nested_pipelines_body_is_stopped_with_its_run(engine):
    """Its call (``Pipeline.__call__``) is TwinGraph's frame between two bodies: it was taken
    for the engine's own code, and nothing was ever raised."""
    t0 = time.monotonic()
    r = outer_of_a_spinner.run(engine=engine)
    assert isinstance(r.error, PipelineTimeout), r.error
    assert time.monotonic() - t0 < 1 + bodystop.GRACE + 3


def test_a_plain_body_given_to_engine_run_is_stopped_and_nothing_follows_it(engine):
    """``Engine.run(body)`` without the DSL's wrapper; once it returned, no stopper thread is
    left, and nothing is raised into the engine's own waits (a slow notification)."""
    from twingraph.engine.loop import RunOptions
    seen = []

    def body(run):
        _spin(30.0)

    t0 = time.monotonic()
    r = engine.run(body, pipeline="plain_body_s24", options=RunOptions(timeout=0.5),
                   notifications=lambda summary: (time.sleep(1.5), seen.append(summary)))
    assert isinstance(r.error, PipelineTimeout) and len(seen) == 1
    assert time.monotonic() - t0 < 0.5 + bodystop.GRACE + 4
    time.sleep(bodystop.RETRY * 4)
    assert not [t for t in threading.enumerate() if t.name == "twingraph-body-stop"]


@pipeline(name="calls_in_a_loop", timeout=1)
def calls_in_a_loop(seconds: float):
    t0, i = time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        quick(i=i)
        i += 1
    return i


def test_a_body_calling_after_its_run_stopped_is_refused(engine):
    """Calls after a timeout were taken in and cancelled one by one (a body calling in a loop
    wrote a million cancelled rows, and went on): the next call raises ``RunStopped``."""
    r = calls_in_a_loop.run(engine=engine, seconds=20.0)
    assert isinstance(r.error, PipelineTimeout), r.error
    logs = [x.message for x in engine.metadata.get_logs(r.run_id)]
    assert any("RunStopped" in m and "quick was not called" in m for m in logs), logs[-3:]
    stopped = [x for x in engine.metadata.get_logs(r.run_id) if "stopping:" in x.message]
    raised = [x for x in engine.metadata.get_logs(r.run_id) if "RunStopped" in x.message]
    assert raised[0].at - stopped[0].at < bodystop.GRACE + 1


@component(cache=False, retry_policy={"max_attempts": 2, "initial_delay": 0.01})
def aliased(a, *, b):
    a.append("x")
    return [a is b, b == ["x"]]


@pipeline(name="retried_aliases")
def retried_aliases():
    d = []
    return aliased(d, b=d)


def test_a_retried_call_keeps_what_its_arguments_share(engine):
    """The copy a retryable attempt gets was taken for positional and keyword arguments
    apart: ``f(d, b=d)`` got two lists."""
    assert retried_aliases.run(engine=engine).value["outputs"]["result"] == [True, True]
