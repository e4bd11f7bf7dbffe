"""An argument that holds itself (a list appended to itself, a dict that is its own value)
failed its task with ``RecursionError`` before it was keyed (session 22 review): the search
for futures in arguments and the key's digest recursed for ever. Such an argument is now
walked once per container and keyed by its pickle; one that also holds futures is refused
with a clear error. Real runs on the in-memory engine of ``conftest.py``."""
from __future__ import annotations

from twingraph import component, pipeline

CALLS: list[int] = []


@component
def size(x) -> int:
    CALLS.append(1)
    return len(x)


@component
def three() -> int:
    return 3


@pipeline(name="holds_itself")
def holds_itself(n: int):
    a: list = list(range(n))
    a.append(a)
    d: dict = {"k": 1}
    d["self"] = d
    return size(x=a), size(x=d), size(x=list(range(n)))


def test_an_argument_that_holds_itself_is_keyed_and_passed(engine):
    CALLS.clear()
    r = holds_itself.run(engine=engine, n=2)
    assert r.error is None, r.error
    assert [x["outputs"]["result"] for x in r.value] == [3, 2, 2]
    r = holds_itself.run(engine=engine, n=2)            # the same: memo hits
    assert [x["outputs"]["result"] for x in r.value] == [3, 2, 2]
    assert len(CALLS) == 3
    tasks = {t.node_id: t.cache_status for t in engine.metadata.get_tasks(r.run_id)}
    assert set(tasks.values()) == {"hit"}
    r = holds_itself.run(engine=engine, n=3)            # another value: another key
    assert [x["outputs"]["result"] for x in r.value] == [4, 2, 3]


@pipeline(name="holds_itself_and_a_future")
def holds_itself_and_a_future():
    a: list = [three()]
    a.append(a)
    return size(x=a)


def test_an_argument_that_holds_itself_and_a_future_is_refused_with_the_reason(engine):
    r = holds_itself_and_a_future.run(engine=engine)
    assert r.error is not None
    assert "holds itself" in str(r.error) and "RecursionError" not in str(r.error)
