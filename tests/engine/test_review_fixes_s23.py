"""Regressions a review found in session 23's own fixes, each fixed with a test here. Real runs
on the in-memory engine of ``conftest.py``, real worker processes."""
from __future__ import annotations

import functools
import os

from twingraph import component, pipeline
from twingraph.core.states import RunState
from twingraph.engine.dynamic import DAGDefinition, DynamicScheduler, NodeDefinition


@component(cache=False)
def stats(n: int) -> dict:
    return {"mean": n / 2} if n else {}


@pipeline(name="body_catches_a_missing_key_s23")
def catches(n: int):
    r = stats(n=n)
    try:
        return r["outputs"]["mean"].result()
    except KeyError as exc:
        return str(exc)


def test_a_body_that_catches_a_missing_key_still_catches_it(engine):
    """The key a future reads that is not there was raised as a NodeExecutionError, which
    ``except KeyError`` in the body no longer caught: the run failed."""
    assert catches.run(engine=engine, n=4).value == 2.0
    r = catches.run(engine=engine, n=0)
    assert r.state is RunState.SUCCESS, r.error
    assert "stats-0['outputs']['mean'] is not there: KeyError: 'mean' (it is empty)" in r.value


def with_connection(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn("a connection", *args, **kwargs)
    return wrapper


@component(name="scaled_s23")
@with_connection
def scaled(conn: str, x: int, factor: int = 2) -> int:
    return x * factor


def test_a_dag_node_may_call_a_component_through_a_decorator_that_supplies_an_argument(
        tmp_path):
    """The call check read the wrapped function's signature (``conn, x``), not the wrapper's
    that is called: a valid DAG was refused ("missing a required argument: 'x'")."""
    from twingraph.engine.dynamic import ExecutionConfig
    from twingraph.stores.results.sqlite import SQLiteStorage
    dag = DAGDefinition("wrapped_s23", [NodeDefinition("a", "seven_s23", [], {}),
                                        NodeDefinition("b", "scaled_s23", ["a"], {})])
    with DynamicScheduler(SQLiteStorage(str(tmp_path / "r.db")),
                          ExecutionConfig(max_retries=0)) as s:
        s.executor.register_operation("seven_s23", lambda deps, params: 7)
        r = s.run(dag)
        assert r.state is RunState.SUCCESS, r.failures
        assert s.node_results("wrapped_s23", ["b"])["b"].result_data == 14


class NotHere:
    """Pickled by reference to this test module, which a worker process can import; made to
    fail there by raising as it is unpickled."""

    def __reduce__(self):
        return (_refuse, ())


def _refuse():
    raise RuntimeError("cannot be loaded in the worker")


@component(cache=False, executor="process", timeout=60)
def token(x) -> str | None:
    return os.environ.get("TWINGRAPH_S23_TOKEN")


@pipeline(name="worker_env_after_a_bad_job_s23", max_parallel=1)
def tokens(bad: bool):
    return token(x=NotHere() if bad else 1)["outputs"]["result"]


def test_a_job_that_cannot_be_loaded_leaves_the_workers_environment_current(
        engine, monkeypatch):
    """The driver took the environment it sent with a job for the worker's own; a job that
    failed to unpickle never applied it, so later jobs ran with the one before."""
    monkeypatch.setenv("TWINGRAPH_S23_TOKEN", "one")
    assert tokens.run(engine=engine, bad=False).value == "one"
    monkeypatch.setenv("TWINGRAPH_S23_TOKEN", "two")
    r = tokens.run(engine=engine, bad=True)
    assert r.state is RunState.FAILED and "cannot be loaded in the worker" in str(r.error)
    assert tokens.run(engine=engine, bad=False).value == "two"
