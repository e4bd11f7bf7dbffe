"""Dynamic-scheduler findings of the session 27 review (real schedulers, engines and stores;
the CLI as a real subprocess): each test failed before its fix.

- A plain operation had the ``@component`` default of 300 s and ``node_timeout`` could only
  lower it: a server's ``TWINGRAPH_NODE_TIMEOUT=3600`` left nodes killed at 300 s, and
  ``dynamic execute`` had no way to set it.
- Nodes of a registered ``BaseComponent`` (class or instance) were not checked against
  ``execute``'s signature before the run: a call it cannot take ran, failed with a TypeError
  and was retried three times.
- ``submit_dag(dict)`` / ``DynamicScheduler(storage, dict)`` raised a bare AttributeError,
  and ``register_operation(5, fn)`` was kept under a name no node could give.
- ``dynamic execute`` printed a bytes result in full, as its escaped ``repr``.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.resources import ops
from twingraph import register_component
from twingraph.core.specs import DEFAULT_TIMEOUT
from twingraph.engine.dynamic import (DAGDefinition, DynamicScheduler, ExecutionConfig,
                                      NodeDefinition, NodeExecutor, register_operation)
from twingraph.errors import GraphValidationError, ValidationError
from twingraph.stores.metadata import MemoryMetadataStore
from twingraph.stores.results.memory import MemoryStorage


def _limit(scheduler: DynamicScheduler, dag: DAGDefinition, op: str) -> float:
    """The timeout a node of ``op`` runs under in ``dag`` (the spec its task is given)."""
    plan = scheduler.plan(dag)
    node = next(n for n in dag.nodes if n.operation == op)
    spec, _call = scheduler._spec_for(node, *plan.ops[op], {}, None, None)
    return spec.timeout


def test_node_timeout_is_a_plain_operations_limit_raised_as_well_as_lowered() -> None:
    register_operation("sleepy", ops.sleepy)
    register_component("scale", ops.scale)
    dag = DAGDefinition("t", [NodeDefinition("a", "sleepy", [], {}),
                              NodeDefinition("b", "scale", [], {"xs": [1]})], {})
    for node_timeout, plain, component in ((None, DEFAULT_TIMEOUT, DEFAULT_TIMEOUT),
                                           (3600, 3600.0, DEFAULT_TIMEOUT),   # its own default
                                           (2, 2.0, 2.0)):
        s = DynamicScheduler(MemoryStorage(), node_timeout=node_timeout,
                             metadata=MemoryMetadataStore())
        try:
            assert _limit(s, dag, "sleepy") == plain
            assert _limit(s, dag, "scale") == component
        finally:
            s.close()


def test_a_class_or_instance_node_execute_cannot_take_fails_the_dag_before_it_runs() -> None:
    register_operation("make_numbers", ops.make_numbers)
    register_component("threshold", ops.Threshold)                       # execute(self, data, **kw)
    register_component("threshold_i", ops.Threshold({"threshold": 2}))
    s = DynamicScheduler(MemoryStorage(), metadata=MemoryMetadataStore())
    try:
        for op in ("threshold", "threshold_i"):
            dag = DAGDefinition(f"bad-{op}", [NodeDefinition("n", "make_numbers", [], {"n": 3}),
                                              NodeDefinition("t", op, ["n", "n"], {})], {})
            t0 = time.monotonic()
            with pytest.raises(GraphValidationError, match="too many positional arguments") as e:
                asyncio.run(s.submit_dag(dag))
            assert time.monotonic() - t0 < 2 and e.value.nodes == ["t"]
        good = DAGDefinition("good", [NodeDefinition("n", "make_numbers", [], {"n": 4}),
                                      NodeDefinition("t", "threshold", ["n"], {"threshold": 1}),
                                      NodeDefinition("u", "threshold_i", ["n"], {})], {})
        r = s.run(good)
        assert r.state.value == "SUCCESS", r.failures
        res = s.node_results("good")
        assert res["t"].result_data["filtered"] == [2, 3]          # parameters: its config
        assert res["u"].result_data["filtered"] == [3]
    finally:
        s.close()


def test_misused_entry_points_are_validation_errors() -> None:
    with pytest.raises(ValidationError, match="ExecutionConfig, not dict"):
        DynamicScheduler(MemoryStorage(), {"max_concurrent_nodes": 2})   # type: ignore[arg-type]
    s = DynamicScheduler(MemoryStorage(), metadata=MemoryMetadataStore())
    try:
        for given in ({"dag_id": "x", "nodes": []}, "nodes: []"):
            with pytest.raises(ValidationError, match="submit_dag takes a DAGDefinition"):
                asyncio.run(s.submit_dag(given))                       # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="non-empty string, not 5"):
            s.executor.register_operation(5, ops.sleepy)               # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="non-empty string"):
            register_operation("", ops.sleepy)
        assert 5 not in NodeExecutor().operation_registry
    finally:
        s.close()


@pytest.fixture
def cli(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"))
        env.pop("TWINGRAPH_DATABASE_URL", None)
        return subprocess.run([sys.executable, "-m", "twingraph", *args], env=env, cwd=tmp_path,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120)
    return run


def test_dynamic_execute_node_timeout_and_a_bytes_result(cli, tmp_path) -> None:
    (tmp_path / "s27ops.py").write_text(textwrap.dedent("""
        import time
        from twingraph import operation

        @operation
        def nap(deps, params):
            time.sleep(params["s"])
            return params["s"]

        @operation
        def blob(deps, params):
            return b"\\x00\\x01" * params["n"]
    """))
    (tmp_path / "slow.yaml").write_text("nodes:\n  - {id: slow, operation: nap, parameters: {s: 30}}\n")
    t0 = time.monotonic()
    out = cli("dynamic", "execute", "slow.yaml", "--load", "s27ops.py", "--node-timeout", "1",
              "--storage-path", "st")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "timed out after 1s" in out.stderr and time.monotonic() - t0 < 25
    (tmp_path / "bin.yaml").write_text("nodes:\n  - {id: b, operation: blob, parameters: {n: 300000}}\n")
    out = cli("dynamic", "execute", "bin.yaml", "--load", "s27ops.py", "--storage-path", "st")
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("Execution completed: "))
    summary = json.loads(line.removeprefix("Execution completed: "))
    assert summary["results"]["b"] == "<bytes of 600000 bytes>"
    assert len(out.stdout) < 20_000
