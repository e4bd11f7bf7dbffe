"""Worker processes with a memory limit (decision 0076), the settings that turn it on for the
server, and the embedded default that stays in-process.

The pool tests drive a real ``ProcessPool`` with real spawned workers; the jobs are the
engine's own ``Job`` objects (over a bare ``Task``), as the run loop submits them. The settings
test sets ``TWINGRAPH_NODE_*`` with ``monkeypatch.setenv``: it stands for the server's
environment, nothing else is patched.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import cloudpickle
import pytest

from twingraph.engine.task import Job, Task
from twingraph.errors import ConfigurationError, NodeExecutionError
from twingraph.errors import MemoryLimitExceeded
from twingraph.executors.processes import ProcessPool

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers need not import pytest

MiB = 2**20


def hold(mib: int) -> int:
    held = [bytearray(MiB) for _ in range(mib)]
    return len(held)


def pid() -> int:
    return os.getpid()


def raises_memory_error() -> None:
    raise MemoryError("asked for too much")


def length(data: bytes) -> int:
    return len(data)


def _run(pool: ProcessPool, fn: Any, *args: Any, node: str = "n") -> Any:
    job = Job(Task(node, 0, None, fn, args, {}), fn, args, {}, "process")
    done = threading.Event()
    out: list[Any] = []
    pool.submit(job, lambda o: (out.append(o), done.set()))
    assert done.wait(60), "the job never ended"
    return out[0]


@pytest.fixture
def limited() -> Any:
    pool = ProcessPool(1, memory_limit=64 * MiB)
    try:
        yield pool
    finally:
        pool.shutdown()


def test_a_task_past_the_limit_fails_with_the_node_and_the_limit(limited: ProcessPool) -> None:
    first = _run(limited, pid)
    assert first.ok and _run(limited, pid).value == first.value      # a worker is reused
    assert _run(limited, hold, 16).value == 16                         # within the limit
    out = _run(limited, hold, 1024, node="big")
    assert not out.ok and isinstance(out.error, MemoryLimitExceeded)
    assert isinstance(out.error, NodeExecutionError) and isinstance(out.error, MemoryError)
    assert str(out.error).startswith("node 'big' exceeded its memory limit of 64 MiB")
    assert out.error.node_id == "big" and out.error.limit_bytes == 64 * MiB
    assert out.error.error_type == "MemoryLimitExceeded"
    # Its worker was replaced, not reused, and the pool goes on.
    after = _run(limited, pid)
    assert after.ok and after.value != first.value
    assert _run(limited, hold, 16).value == 16


@pytest.mark.parametrize("mib", [128, 48])    # more than the limit; less, but not twice over
def test_inputs_that_do_not_fit_fail_the_same_way(limited: ProcessPool, mib: int) -> None:
    out = _run(limited, length, b"x" * (mib * MiB), node="fat")
    assert isinstance(out.error, MemoryLimitExceeded), out.error
    assert "node 'fat' exceeded its memory limit of 64 MiB" in str(out.error)
    assert _run(limited, length, b"xy").value == 2


def test_an_unlimited_pool_leaves_memory_errors_as_they_are() -> None:
    pool = ProcessPool(1)
    try:
        first = _run(pool, pid).value
        out = _run(pool, raises_memory_error)
        assert type(out.error) is MemoryError and "asked for too much" in str(out.error)
        assert _run(pool, pid).value == first                          # reused
    finally:
        pool.shutdown()


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_a_bad_limit_is_refused(bad: Any) -> None:
    with pytest.raises(ConfigurationError):
        ProcessPool(1, memory_limit=bad)


def test_the_error_survives_pickling() -> None:
    err = cloudpickle.loads(cloudpickle.dumps(MemoryLimitExceeded("n", 64 * MiB, "why")))
    assert str(err) == "node 'n' exceeded its memory limit of 64 MiB (why); its worker " \
                       "process was replaced"


# -- settings -----------------------------------------------------------------------------------
NODE_VARS = ("TWINGRAPH_NODE_ISOLATION", "TWINGRAPH_NODE_MEMORY_LIMIT", "TWINGRAPH_NODE_TIMEOUT",
             "TWINGRAPH_NODE_WORKERS")


def test_node_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from twingraph.settings import Settings
    for name in NODE_VARS:
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env()
    assert (s.node_isolation, s.node_memory_limit, s.node_timeout) == ("process", 2**30, 300.0)
    assert s.isolated_nodes and s.worker_processes == max(4, os.cpu_count() or 1)
    monkeypatch.setenv("TWINGRAPH_NODE_MEMORY_LIMIT", "512Mi")
    monkeypatch.setenv("TWINGRAPH_NODE_TIMEOUT", "2.5")
    monkeypatch.setenv("TWINGRAPH_NODE_WORKERS", "2")
    monkeypatch.setenv("TWINGRAPH_NODE_ISOLATION", "off")
    s = Settings.from_env()
    assert (s.node_isolation, s.node_memory_limit, s.node_timeout, s.worker_processes) == \
        ("off", 512 * MiB, 2.5, 2)
    monkeypatch.setenv("TWINGRAPH_NODE_MEMORY_LIMIT", "off")
    assert Settings.from_env().node_memory_limit is None
    for name, value in [("TWINGRAPH_NODE_MEMORY_LIMIT", "lots"), ("TWINGRAPH_NODE_MEMORY_LIMIT", "0"),
                        ("TWINGRAPH_NODE_TIMEOUT", "0"), ("TWINGRAPH_NODE_TIMEOUT", "nan"),
                        ("TWINGRAPH_NODE_WORKERS", "0"), ("TWINGRAPH_NODE_ISOLATION", "thread")]:
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigurationError, match=name):
            Settings.from_env()
        monkeypatch.delenv(name)


# -- the scheduler: isolated on demand, in-process by default ----------------------------------
def test_embedded_schedulers_run_nodes_in_this_process() -> None:
    from twingraph.core.states import RunState
    from twingraph.engine.dynamic import DAGDefinition, DynamicScheduler, NodeDefinition
    from twingraph.testing import memory_engine

    def where(deps: Any, params: Any) -> int:
        return os.getpid()
    engine = memory_engine()
    try:
        sched = DynamicScheduler(engine.results, engine=engine)
        sched.executor.register_operation("where_here", where)
        res = sched.run(DAGDefinition("here", [NodeDefinition("p", "where_here", [], {})]))
        assert res.state is RunState.SUCCESS
        (task,) = engine.metadata.get_tasks(res.run_id)
        assert engine.load_value(task.result_key) == os.getpid()
    finally:
        engine.close()


def test_isolated_specs_run_in_a_process_under_the_ceilings() -> None:
    from twingraph import component
    from twingraph.engine.dynamic import DynamicScheduler, ExecutionConfig, NodeDefinition
    from twingraph.testing import memory_engine

    @component(timeout=2)
    def quick(xs: list = []) -> list:  # noqa: B006 - never called
        return xs

    def op(deps: Any, params: Any) -> None:
        return None
    engine = memory_engine()
    try:
        iso = DynamicScheduler(engine.results, ExecutionConfig(), engine=engine, isolate=True,
                               node_timeout=30)
        spec, _ = iso._spec_for(NodeDefinition("a", "op", [], {}), op, "operation", {})
        assert (spec.executor, spec.timeout) == ("process", 30.0)
        assert {"twingraph.errors.MemoryLimitExceeded", "twingraph.errors.TaskTimeout",
                "twingraph.errors.ValidationError"} <= set(spec.retry_policy.never)
        spec, _ = iso._spec_for(NodeDefinition("b", "quick", [], {}), quick, "component", {})
        assert (spec.executor, spec.timeout) == ("process", 2.0)     # its own, shorter
        plain = DynamicScheduler(engine.results, ExecutionConfig(), engine=engine)
        spec, _ = plain._spec_for(NodeDefinition("a", "op", [], {}), op, "operation", {})
        assert (spec.executor, spec.timeout) == ("auto", 300.0)
        # in this process a timed-out node is abandoned: not retried beside itself
        assert spec.retry_policy.never == ("twingraph.errors.ValidationError",
                                           "twingraph.errors.TaskTimeout")
        with pytest.raises(Exception, match="node_timeout"):
            DynamicScheduler(engine.results, engine=engine, node_timeout=0)
    finally:
        engine.close()
