"""An in-run twin (the same call made again while the first is in flight) follows the first
only within the nested pipeline it was called in. Across nested pipelines it followed the
first's end too (session 22 review): a nested pipeline's short timeout cancelled the same call
made outside it, a nested 'fail' cancelled it under the outer 'continue', and a nested
'retry' never retried a call whose twin outside had failed. Each pipeline's rules apply to
its own tasks, so a twin that did not succeed elsewhere is computed anew.

Real runs on the in-memory engine of ``conftest.py``; a counter file counts executions."""
from __future__ import annotations

import time
from pathlib import Path

from twingraph import component, pipeline


@component
def work(i: int, t: float) -> int:
    time.sleep(t)
    return i


@pipeline(name="quick_check", timeout=0.3)
def quick_check():
    return work(i=1, t=0.8)


@pipeline(name="outer_budget", error_handler="continue")
def outer_budget():
    q = quick_check()                 # a short budget of its own
    a = work(i=1, t=0.8)              # the same call, outside that budget
    try:
        q.result()
        r = "inner ok"
    except Exception as e:  # noqa: BLE001
        r = f"inner failed: {type(e).__name__}"
    return {"a": a["outputs"]["result"], "r": r}


def test_a_nested_timeout_does_not_cancel_the_same_call_made_outside_it(engine):
    r = outer_budget.run(engine=engine)
    assert r.error is None, r.error
    assert r.value == {"a": 1, "r": "inner failed: TaskCancelled"}
    tasks = {t.node_id: t for t in engine.metadata.get_tasks(r.run_id)}
    assert tasks["work-1"].state.value == "SUCCESS"
    assert "in another nested pipeline" in (tasks["work-1"].cache_reason or "")


@component(cache=False)
def boom() -> None:
    time.sleep(0.1)
    raise ValueError("bad")


@pipeline(name="strict_inner", error_handler="fail")
def strict_inner():
    return [work(i=2, t=0.5), boom()]


@pipeline(name="outer_continue", error_handler="continue")
def outer_continue():
    s = strict_inner()
    a = work(i=2, t=0.5)
    try:
        s[1].result()
        r = "ok"
    except Exception as e:  # noqa: BLE001
        r = f"inner failed: {type(e).__name__}"
    return {"a": a["outputs"]["result"], "r": r}


def test_a_nested_fail_does_not_cancel_the_same_call_under_the_outer_continue(engine):
    r = outer_continue.run(engine=engine)
    assert r.error is None, r.error
    assert r.value == {"a": 2, "r": "inner failed: ValueError"}


COUNTER: dict[str, Path] = {}


@component
def fetch(url: str) -> str:
    p = COUNTER["path"]
    n = int(p.read_text()) if p.exists() else 0
    p.write_text(str(n + 1))
    time.sleep(0.2)
    if n < 1:
        raise ConnectionError(f"transient failure #{n + 1}")
    return f"page of {url}"


@pipeline(name="robust_fetch", error_handler="retry",
          error_config={"retry_policy": {"max_attempts": 3, "initial_delay": 0.05}})
def robust_fetch(url: str):
    return fetch(url=url)


@pipeline(name="outer_fetch", error_handler="continue")
def outer_fetch():
    quick = fetch(url="u")              # best effort: no retries
    robust = robust_fetch("u")          # the same call, in a pipeline that retries
    try:
        q = quick.result()["outputs"]["result"]
    except Exception as e:  # noqa: BLE001
        q = f"failed: {type(e).__name__}"
    return {"quick": q, "robust": robust["outputs"]["result"]}


def test_a_nested_retry_policy_applies_to_a_call_whose_twin_outside_failed(engine, tmp_path):
    COUNTER["path"] = tmp_path / "count"
    r = outer_fetch.run(engine=engine)
    assert r.error is None, r.error
    assert r.value == {"quick": "failed: ConnectionError", "robust": "page of u"}
    assert COUNTER["path"].read_text() == "2"      # the first failed, its twin computed again


@pipeline(name="same_scope_twins", error_handler="continue")
def same_scope_twins():
    a, b = fetch(url="v"), fetch(url="v")       # twins in one pipeline: computed once
    out = []
    for x in (a, b):
        try:
            out.append(x.result()["outputs"]["result"])
        except Exception as e:  # noqa: BLE001
            out.append(type(e).__name__)
    return out


def test_twins_in_the_same_pipeline_still_follow_each_other(engine, tmp_path):
    COUNTER["path"] = tmp_path / "count"
    r = same_scope_twins.run(engine=engine)
    assert r.value == ["ConnectionError", "ConnectionError"]
    assert COUNTER["path"].read_text() == "1"


@component
def load_shared(name: str) -> str:
    p = COUNTER["path"]
    n = int(p.read_text()) if p.exists() else 0
    p.write_text(str(n + 1))
    time.sleep(0.2)
    raise ValueError(f"no config {name}")


@pipeline(name="part_s22", max_parallel=2)          # no error handler or timeout of its own
def part_s22(i: int):
    return load_shared(name="shared")


def test_a_failed_twin_is_followed_under_the_same_error_rules_however_many_calls(
        engine, tmp_path):
    """Each call of a nested pipeline is a scope of its own: a failed twin was computed
    again once per call (5 executions, 10 with a retry policy), though none had rules of its
    own that could change the outcome."""
    COUNTER["path"] = tmp_path / "count"

    @pipeline(name="parts_parallel_s22", error_handler="continue")
    def parts_parallel():
        calls = [part_s22(i) for i in range(5)]
        out = []
        for c in calls:
            try:
                out.append(c.result())
            except Exception as e:  # noqa: BLE001
                out.append(type(e).__name__)
        return out

    r = parts_parallel.run(engine=engine)
    assert len(r.value) == 5 and all(isinstance(v, str) for v in r.value), r.value
    assert COUNTER["path"].read_text() == "1"
