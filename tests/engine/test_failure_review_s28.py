"""Failure semantics found in the session 28 review."""
from __future__ import annotations

import threading
import time

import pytest

from twingraph import BaseComponent, component, pipeline
from twingraph.core.states import RunState
from twingraph.engine import notify


def test_a_notification_callable_that_hangs_does_not_hold_the_pipelines_call(
        engine, monkeypatch) -> None:
    monkeypatch.setattr(notify, "CALLABLE_WAIT", 0.5, raising=False)
    release = threading.Event()
    told: list[str] = []

    def hangs(summary):          # an HTTP call without a timeout, say
        release.wait(30)
        told.append(summary["status"])

    @component
    def fine_s28() -> int:
        return 1

    @pipeline(name="hung_notifier_s28", notifications=hangs)
    def flow():
        return fine_s28()["outputs"]["result"]

    try:
        t0 = time.monotonic()
        r = flow.run(engine=engine)
        assert time.monotonic() - t0 < 10          # it waited for the notifier, for ever
        assert (r.state, r.value) == (RunState.SUCCESS, 1)
        engine.recorder.flush()
        logs = [x.message for x in engine.metadata.get_logs(r.run_id)]
        assert any("had not returned after 0.5 s" in m for m in logs), logs
    finally:
        release.set()
    deadline = time.monotonic() + 10
    while not told and time.monotonic() < deadline:
        time.sleep(0.02)
    assert told == ["SUCCESS"]                     # left to finish on its own, and it did


def test_a_huge_error_message_is_stored_cut_to_its_head_and_tail(engine) -> None:
    @component(cache=False)
    def loud_s28() -> int:
        raise RuntimeError("upstream said: " + "x" * 2_000_000 + " END")

    @pipeline(name="loud_s28")
    def flow():
        return loud_s28()

    r = flow.run(engine=engine)
    assert r.state is RunState.FAILED
    engine.recorder.flush()
    task = engine.metadata.get_tasks(r.run_id)[0]
    run = engine.metadata.get_run(r.run_id)
    for text in (task.error, run.error):
        assert len(text) < 70_000 and "characters cut" in text     # was 2 MB, each
        assert text.startswith(("RuntimeError: upstream said", "PipelineFailed"))
    assert task.error.endswith(" END")
    # (an attempt's line holds its error and its traceback: each cut)
    assert all(len(x.message) < 140_000 for x in engine.metadata.get_logs(r.run_id))


class QuotaErrorS28(Exception):
    """A constructor that takes more than the message it passes up: it does not unpickle."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code={code} detail={detail}")
        self.code = code


@component(cache=False, executor="process")
def over_quota_s28() -> None:
    try:
        {}["k"]
    except KeyError as exc:
        raise QuotaErrorS28(429, "slow down") from exc


@component(cache=False, executor="process")
def wrapped_s28() -> None:
    try:
        {}["k"]
    except KeyError as exc:
        raise RuntimeError("lookup failed") from exc


@pytest.mark.timeout(120)
def test_a_process_tasks_exception_keeps_its_class_attributes_and_cause(engine) -> None:
    caught: dict[str, object] = {}

    @pipeline(name="odd_exceptions_s28", error_handler="continue")
    def flow():
        try:
            over_quota_s28().result()
        except QuotaErrorS28 as exc:     # was a NodeExecutionError: not caught
            caught["code"] = exc.code
            # (the body gets the task's error, its own exception the cause, as a thread's)
            caught["quota_cause"] = repr(exc.__cause__.__cause__)
        try:
            wrapped_s28().result()
        except RuntimeError as exc:      # its cause was dropped by pickling
            caught["cause"] = repr(exc.__cause__.__cause__)
        return 1

    r = flow.run(engine=engine)
    assert r.value == 1, r.error
    assert caught == {"code": 429, "quota_cause": "KeyError('k')", "cause": "KeyError('k')"}


refused_calls: list[int] = []


class PickyS28(BaseComponent):
    def validate_inputs(self, **kwargs):
        refused_calls.append(1)
        if "data" not in kwargs:
            raise ValueError("Missing required input: data")

    def execute(self, data=None, **kwargs):
        return len(data)


def test_inputs_validate_inputs_refused_are_not_retried(engine) -> None:
    refused_calls.clear()
    picky = PickyS28()

    @pipeline(name="picky_s28", error_handler="retry")
    def flow():
        return picky(other=1)

    t0 = time.monotonic()
    r = flow.run(engine=engine)
    assert r.state is RunState.FAILED and "Missing required input" in str(r.error)
    assert len(refused_calls) == 1                 # was 3, 1 s and 2 s apart
    assert time.monotonic() - t0 < 1.0


class SlottedS28(Exception):
    """Keeps its code in a slot, and its message reads it."""
    __slots__ = ("code",)

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code

    def __str__(self) -> str:
        return f"[{self.code}] {self.args[0]}"


@component(cache=False, executor="process")
def slotted_s28() -> None:
    raise SlottedS28(429, "slow down")


@pytest.mark.timeout(120)
def test_a_process_tasks_exception_with_slots_comes_back_whole(engine) -> None:
    seen: dict[str, object] = {}

    @pipeline(name="slotted_s28", error_handler="continue")
    def flow():
        try:
            slotted_s28().result()
        except SlottedS28 as exc:        # was half made: str() raised, the body got that
            seen["code"], seen["text"] = exc.code, str(exc)
        return 1

    r = flow.run(engine=engine)
    assert r.value == 1, r.error
    assert seen == {"code": 429, "text": "[429] slow down"}
