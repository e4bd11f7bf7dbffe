"""The dynamic-scheduler API: DAGs, validation, progress, cancel, file form, components.

Real engines, stores and operations. ``monkeypatch`` only shrinks ``SUBMIT_WINDOW`` (how many
nodes a DAG hands to its run at a time) so that a small DAG is submitted in several windows,
as a large one is, and ``SPEC_CACHE`` (how many specs an engine keeps) so that a few runs fill
it. One test wraps a run's ``progress`` to end the execution while a progress
read is under way: a thread interleaving that cannot be had on cue otherwise. Two replace the
engine's ``run``: one holds it back half a second (a cancel arriving before the run starts),
one raises (a run that cannot start: a store down)."""
import asyncio
import threading
import time

import pytest

from tests.resources import ops
from twingraph import pipeline, register_component
from twingraph.dagfile import dag_from_dict, parse_dag_text
from twingraph.engine.dynamic import (DAGDefinition, DynamicScheduler, ExecutionConfig,
                                      NodeDefinition, NodeExecutor, NodeStatus,
                                      register_operation)
from twingraph.errors import GraphValidationError, NotFoundError, ValidationError
from twingraph.stores.metadata import MemoryMetadataStore
from twingraph.stores.results.memory import MemoryStorage


def N(i, op, args=(), **params):
    return NodeDefinition(i, op, list(args), params)


@pytest.fixture
def scheduler():
    # Other suites load tests/resources/ops.py as a file (module "ops"), which re-registers these
    # names to that copy's functions; point them back at the copy whose ``calls`` we read.
    for name in ("make_numbers", "square_all", "add_all", "explode", "sleepy", "to_bytes"):
        register_operation(name, getattr(ops, name))
    register_component("scale", ops.scale)
    register_component("threshold", ops.Threshold)
    s = DynamicScheduler(MemoryStorage(), ExecutionConfig(max_concurrent_nodes=4),
                         metadata=MemoryMetadataStore())
    yield s
    s.engine.close()


def chain_dag(dag_id="chain", offset=0):
    return DAGDefinition(dag_id, [N("nums", "make_numbers", n=5), N("sq", "square_all", ["nums"]),
                                  N("total", "add_all", ["sq", "nums"], offset=offset)])


def test_submit_run_and_progress(scheduler):
    async def go():
        dag_id = await scheduler.submit_dag(chain_dag())
        result = await scheduler.wait_for_completion(dag_id, timeout=10)
        progress = await scheduler.get_execution_progress(dag_id)
        return result, progress
    result, progress = asyncio.run(go())
    assert result.state.value == "SUCCESS"
    assert progress.total_nodes == 3 and progress.completed_nodes == 3
    assert progress.progress_percentage == 100.0
    by = {t.node_id: t for t in scheduler.engine.metadata.get_tasks(result.run_id)}
    assert scheduler.engine.load_value(by["total"].result_key) == (0 + 1 + 4 + 9 + 16) + 10


def test_results_are_memoized_across_dags(scheduler):
    ops.calls.clear()
    scheduler.run(chain_dag("a"))
    scheduler.run(chain_dag("b"))
    assert ops.calls == ["make_numbers", "square_all", "add_all"]
    scheduler.run(chain_dag("c", offset=1))       # only the changed node re-runs
    assert ops.calls[3:] == ["add_all"]


@pytest.mark.parametrize("dag, reason, nodes", [
    (DAGDefinition("d", [N("a", "make_numbers", n=1), N("b", "add_all", ["missing"])]),
     "dangling", ["b"]),
    (DAGDefinition("d", [N("a", "make_numbers", n=1), N("b", "no_such_op", ["a"])]),
     "unknown operations", ["b"]),
    (DAGDefinition("d", [N("a", "square_all", ["c"]), N("b", "square_all", ["a"]),
                         N("c", "square_all", ["b"]), N("ok", "make_numbers", n=1)]),
     "cycle", ["a", "b", "c"]),
    (DAGDefinition("d", [N("a", "make_numbers", n=1), N("a", "make_numbers", n=2)]),
     "duplicate", ["a"]),
])
def test_invalid_dags_are_rejected_before_anything_runs(scheduler, dag, reason, nodes):
    ops.calls.clear()
    with pytest.raises(GraphValidationError) as e:
        asyncio.run(scheduler.submit_dag(dag))
    assert reason in e.value.reason and e.value.nodes == nodes
    assert ops.calls == [] and scheduler.engine.metadata.list_runs() == []


def test_malformed_dags_built_in_python_are_refused_as_the_file_form_refuses_them(scheduler):
    """Ids 1 and "1" passed the duplicate check and shared one result; a string of arguments
    was read as a list of one-letter ids ("cycle: a"); an empty DAG ran and said SUCCESS;
    ``dependencies`` with an int key crashed the CLI (a traceback) and the server (500)."""
    ops.calls.clear()
    bad = [
        (DAGDefinition("d", []), "has no nodes"),
        (DAGDefinition("d", [N(1, "make_numbers", n=1), N("1", "make_numbers", n=2)]),
         "node ids must be non-empty strings: 1"),
        (DAGDefinition("d", [N("a", "make_numbers", n=1),
                             NodeDefinition("b", "square_all", "a", {})]),
         "arguments must be a list of node ids or a mapping of names to node ids: b"),
        (DAGDefinition("d", [N("a", "make_numbers", n=1)], dependencies={1: ["a"]}),
         "dependencies map node ids to lists of node ids"),
    ]
    for dag, message in bad:
        with pytest.raises(ValidationError, match=message):
            asyncio.run(scheduler.submit_dag(dag))
    assert ops.calls == [] and scheduler.engine.metadata.list_runs() == []
    with pytest.raises(ValidationError, match="'dependencies' maps node ids"):
        parse_dag_text("nodes: [{id: a, operation: make_numbers}]\ndependencies: {1: [a]}\n")


def test_a_dag_written_out_of_order_runs_in_dependency_order(scheduler):
    dag = DAGDefinition("o", [N("total", "add_all", ["sq"], offset=1),
                              N("sq", "square_all", ["nums"]), N("nums", "make_numbers", n=3)])
    plan = scheduler.plan(dag)
    assert [node.node_id for node, _fn, _style in plan] == ["nums", "sq", "total"]
    r = scheduler.run(dag)
    assert r.state.value == "SUCCESS", r.error
    deps = dag.deps_of(dag.nodes[0])          # a copy: changing it leaves the DAG alone
    deps.append("extra")
    assert dag.nodes[0].arguments == ["sq"]


def test_failure_skips_only_dependents(scheduler):
    dag = DAGDefinition("f", [N("nums", "make_numbers", n=3), N("bad", "explode", ["nums"]),
                              N("after_bad", "add_all", ["bad"]), N("sq", "square_all", ["nums"])])
    scheduler.config.retry_failed_nodes = False
    r = scheduler.run(dag)
    by = {t.node_id: t.state.value for t in scheduler.engine.metadata.get_tasks(r.run_id)}
    assert by == {"nums": "SUCCESS", "bad": "FAILED", "after_bad": "SKIPPED", "sq": "SUCCESS"}
    progress = asyncio.run(scheduler.get_execution_progress("f"))
    assert progress.failed_nodes == 2 and progress.completed_nodes == 2


def test_failed_nodes_are_retried_per_config(scheduler):
    attempts = []

    def flaky(deps, params):
        attempts.append(1)
        if len(attempts) < 2:
            raise RuntimeError("transient")
        return "ok"

    scheduler.executor.register_operation("flaky_op", flaky)
    scheduler.config.max_retries = 2
    r = scheduler.run(DAGDefinition("r", [N("x", "flaky_op")]))
    assert r.state.value == "SUCCESS" and len(attempts) == 2


def test_cancel_execution(scheduler):
    dag = DAGDefinition("slow", [N(f"s{i}", "sleepy", seconds=2 + i) for i in range(3)])

    async def go():
        dag_id = await scheduler.submit_dag(dag)
        await asyncio.sleep(0.3)
        p = await scheduler.get_execution_progress(dag_id)
        assert p.running_nodes == 3
        assert await scheduler.cancel_execution(dag_id)
        assert not await scheduler.cancel_execution(dag_id)     # as the document: once
        t0 = time.monotonic()
        r = await scheduler.wait_for_completion(dag_id, timeout=10)
        return r, time.monotonic() - t0
    r, waited = asyncio.run(go())
    assert r.state.value == "CANCELLED" and waited < 1.5
    assert asyncio.run(scheduler.cancel_execution("slow")) is False


def test_components_and_registered_classes_as_operations(scheduler):
    dag = dag_from_dict({"dag_id": "comp", "nodes": [
        {"id": "nums", "operation": "make_numbers", "parameters": {"n": 4}},
        {"id": "scaled", "operation": "scale", "arguments": {"xs": "nums"},
         "parameters": {"factor": 3}},
        {"id": "kept", "operation": "threshold", "arguments": {"data": "scaled"},
         "parameters": {"threshold": 4}},
    ]})
    r = scheduler.run(dag)
    by = {t.node_id: t for t in scheduler.engine.metadata.get_tasks(r.run_id)}
    assert scheduler.engine.load_value(by["kept"].result_key) == {
        "filtered": [6, 9], "count": 2, "threshold": 4}


def test_bytes_results_round_trip(scheduler):
    r = scheduler.run(DAGDefinition("b", [N("x", "to_bytes", v=7)]))
    (t,) = scheduler.engine.metadata.get_tasks(r.run_id)
    assert scheduler.engine.load_value(t.result_key) == b"raw:7"


def test_node_executor_execute_node():
    ex = NodeExecutor(MemoryStorage())
    ex.register_operation("double", lambda deps, params: params["x"] * 2)
    ok = asyncio.run(ex.execute_node(NodeDefinition("n", "double", [], {"x": 4})))
    assert ok.status is NodeStatus.COMPLETED and ok.result_data == 8
    bad = asyncio.run(ex.execute_node(NodeDefinition("n", "nope", [], {})))
    assert bad.status is NodeStatus.FAILED and "Unknown operation" in bad.error_message


@pytest.mark.parametrize("text, match", [
    ("nodes: []", "non-empty"),
    ("nodes: [{operation: x}]", "'id'"),
    ("nodes: [{id: a}]", "'operation'"),
    ("nodes: [{id: a, operation: x, arguments: 3}]", "arguments"),
    ("nodes: [{id: a, operation: x, colour: red}]", "unknown fields"),
    ("{not json", "cannot parse"),
    ("nodes: {a: {id: b, operation: x}}", "its id is its key; it also says 'b'"),
    ("nodes: [{id: a, node_id: b, operation: x}]", "'id' and 'node_id' differ"),
])
def test_bad_dag_files(text, match):
    with pytest.raises(ValidationError, match=match):
        parse_dag_text(text)


def test_base_component_in_a_pipeline(engine):
    t = ops.Threshold({"threshold": 1})

    @pipeline(name="with_class")
    def p():
        return t(data=[0, 1, 2, 3])

    r = p.run(engine=engine)
    assert r.value["outputs"] == {"filtered": [2, 3], "count": 2, "threshold": 1}
    assert t(data=[5]) == {"filtered": [5], "count": 1, "threshold": 1}
    with pytest.raises(ValueError, match="Missing required input"):
        t(other=1)
    r2 = pipeline(name="with_class_bad")(lambda: t(other=1)).run(engine=engine)
    assert r2.state.value == "FAILED" and "Missing required input" in str(r2.error)


def test_a_large_graph_is_submitted_in_a_window(monkeypatch):
    """The body submits a declarative graph at most SUBMIT_WINDOW (+ one check interval) nodes
    ahead of what has finished, so a huge graph never exists as that many waiting tasks."""
    import twingraph.engine.dynamic as dyn
    from twingraph.engine.engine import Engine
    from twingraph.engine.futures import BodySide

    monkeypatch.setattr(dyn, "SUBMIT_WINDOW", 200)
    seen = []
    orig = BodySide.call_declared

    def spy(self, *a, **kw):
        seen.append(self.backlog())
        return orig(self, *a, **kw)
    monkeypatch.setattr(BodySide, "call_declared", spy)

    def slowish(deps, params):
        time.sleep(0.0005)
        return params["i"]
    dyn.register_operation("slowish", slowish)
    n = 2500
    nodes = [NodeDefinition(f"s{k}", "slowish", [f"s{k - 1}"] if k else [], {"i": k})
             for k in range(n)]
    eng = Engine(results=MemoryStorage(), metadata=MemoryMetadataStore())
    try:
        r = DynamicScheduler(eng.results, ExecutionConfig(max_concurrent_nodes=4),
                             engine=eng).run(DAGDefinition("windowed", nodes))
    finally:
        eng.close()
    assert r.state.value == "SUCCESS" and r.progress["succeeded"] == n
    assert len(seen) == n and max(seen) <= 200 + 1024


def test_base_component_takes_its_inputs_positionally_too(scheduler, engine):
    # validate_inputs takes keywords: positional inputs reach it under execute's names, so the
    # documented CustomProcessor works called positionally and as a node with a list of arguments
    t = ops.Threshold({"threshold": 1})
    assert t([0, 5]) == {"filtered": [5], "count": 1, "threshold": 1}
    with pytest.raises(TypeError, match="Threshold.execute: too many positional"):
        t([1], [2])
    with pytest.raises(ValueError, match="Missing required input"):
        t()

    @pipeline(name="positional_class")
    def p():
        return t([0, 1, 2, 3])

    assert p.run(engine=engine).value["outputs"]["filtered"] == [2, 3]
    dag = DAGDefinition("positional", [N("nums", "make_numbers", n=5),
                                       N("kept", "threshold", ["nums"], threshold=2)])
    r = scheduler.run(dag)
    assert r.state.value == "SUCCESS", r.failures
    kept = {t.node_id: t for t in scheduler.engine.metadata.get_tasks(r.run_id)}["kept"]
    assert scheduler.engine.load_value(kept.result_key)["filtered"] == [3, 4]


def test_node_results_give_each_node_its_status_value_and_error(scheduler):
    from twingraph.errors import NotFoundError
    dag = DAGDefinition("results", [N("nums", "make_numbers", n=4), N("sq", "square_all", ["nums"]),
                                    N("boom", "explode", ["nums"]), N("after", "add_all", ["boom"])])
    scheduler.config.retry_failed_nodes = False
    r = scheduler.run(dag)
    assert r.state.value == "FAILED"
    res = scheduler.node_results("results")
    assert set(res) == {"nums", "sq", "boom", "after"}
    assert res["nums"].status is NodeStatus.COMPLETED and res["nums"].result_data == [0, 1, 2, 3]
    assert res["sq"].result_data == [0, 1, 4, 9] and res["sq"].execution_time_ms is not None
    assert res["boom"].status is NodeStatus.FAILED and "exploded" in res["boom"].error_message
    assert res["boom"].result_data is None
    # skipped, its input failed: FAILED, as progress counts it, with the input named
    assert res["after"].status is NodeStatus.FAILED and "boom" in res["after"].error_message
    only = asyncio.run(scheduler.get_node_results("results", ["sq"]))
    assert list(only) == ["sq"] and only["sq"].result_data == [0, 1, 4, 9]
    with pytest.raises(NotFoundError):
        scheduler.node_results("never-ran")


FLAKY_CALLS = {"n": 0}


def _flaky_once(deps, params):
    FLAKY_CALLS["n"] += 1
    if FLAKY_CALLS["n"] == 1:
        raise RuntimeError("first call fails")
    return "ok"


def test_error_recovery_manager_rules_and_their_use_by_the_scheduler():
    from twingraph.engine.dynamic import ErrorRecoveryManager
    m = ErrorRecoveryManager(max_retries=2, backoff_factor=3)

    async def rules():
        out = [await m.should_retry("n", RuntimeError("x")), await m.get_retry_delay("n")]
        m.record_retry("n")
        out.append(await m.get_retry_delay("n"))
        m.record_retry("n")
        out += [await m.should_retry("n", RuntimeError("x")),
                await m.should_retry("other", ValidationError("bad input"))]
        return out
    assert asyncio.run(rules()) == [True, 1.0, 3.0, False, False]
    capped = ErrorRecoveryManager(100, 2)
    capped.retry_counts["n"] = 10
    assert asyncio.run(capped.get_retry_delay("n")) == 60.0 == capped.retry_policy().delay(11)
    assert ErrorRecoveryManager(0).retry_policy() is None
    for bad in ({"max_retries": -1}, {"backoff_factor": 0.5}, {"max_retries": True}):
        with pytest.raises(ValidationError):
            ErrorRecoveryManager(**bad)

    register_operation("flaky_once", _flaky_once)
    for retries, state, calls in ((1, "SUCCESS", 2), (0, "FAILED", 1)):
        FLAKY_CALLS["n"] = 0
        s = DynamicScheduler(MemoryStorage(), ExecutionConfig(), metadata=MemoryMetadataStore(),
                             error_recovery=ErrorRecoveryManager(retries, backoff_factor=1.5))
        try:
            t0 = time.monotonic()
            r = s.run(DAGDefinition(f"flaky{retries}", [N("f", "flaky_once")]))
            assert (r.state.value, FLAKY_CALLS["n"]) == (state, calls), r.failures
            if retries:
                assert time.monotonic() - t0 >= 1.0      # first retry after 1.5 ** 0 s
        finally:
            s.engine.close()


def test_a_plain_call_of_a_class_component_leaves_its_spec_and_name_alone():
    t = ops.Threshold({"threshold": 1})
    assert t(data=[0, 3]) == {"filtered": [3], "count": 1, "threshold": 1}
    assert t._spec is None                  # no code version computed for a plain call
    register_component("threshold_instance", t)
    assert t.name == "threshold_instance"


def test_validation_runs_with_the_relaxed_gc_threshold(scheduler, monkeypatch):
    # A large DAG's validation allocates a list per node: at the default threshold (700) a
    # 200,000-node graph ran ~260 young-generation passes inside submit/run.
    import gc

    from twingraph.engine.gcpace import RUN_THRESHOLD as GC_RUN_THRESHOLD
    seen = []
    real_known = scheduler.executor.known

    def known():
        seen.append(gc.get_threshold()[0])
        return real_known()
    monkeypatch.setattr(scheduler.executor, "known", known)
    before = gc.get_threshold()
    scheduler.plan(chain_dag("gc"))
    assert seen and seen[0] >= GC_RUN_THRESHOLD
    assert gc.get_threshold() == before


def test_deps_of_drops_repeats_and_adds_extra_dependencies():
    dag = DAGDefinition("d", [NodeDefinition("a", "inc", [], {}),
                              NodeDefinition("b", "inc", ["a", "a"], {}),
                              NodeDefinition("c", "inc", ["b"], {}),
                              NodeDefinition("e", "inc", {"x": "a", "y": "a"}, {})],
                        dependencies={"c": ["a", "b"]})
    nodes = {n.node_id: n for n in dag.nodes}
    assert dag.deps_of(nodes["a"]) == []
    assert dag.deps_of(nodes["b"]) == ["a"]
    assert dag.deps_of(nodes["c"]) == ["b", "a"]
    assert dag.deps_of(nodes["e"]) == ["a"]
    got = dag.deps_of(nodes["b"])
    got.append("z")                                   # a copy: the node's own list is untouched
    assert nodes["b"].arguments == ["a", "a"]


def test_a_declared_node_is_keyed_as_the_same_call_with_futures(scheduler):
    """A DAG's nodes go to the run with their producers named (``call_declared``), not as
    futures inside their arguments; their memo keys are those of the same calls with futures,
    so results stored either way are hits the other way (named, duplicate and extra
    inputs included), and lineage names the same producers."""
    from twingraph.engine.loop import RunOptions

    ops.calls.clear()
    register_operation("input_names", lambda deps, params: sorted(deps))
    dag = DAGDefinition("keys", [
        N("nums", "make_numbers", n=4),
        N("sq", "square_all", ["nums"]),
        NodeDefinition("both", "add_all", {"a": "sq", "b": "nums"}, {"offset": 2}),
        N("dup", "add_all", ["sq", "sq"], offset=1),
        N("tail", "input_names", ["both"]),
        N("sc", "scale", ["nums"], factor=3),          # a component as an operation
    ], dependencies={"tail": ["dup"]})
    declared = scheduler.run(dag)
    assert declared.state.value == "SUCCESS"
    eng = scheduler.engine
    first = {t.node_id: t for t in eng.metadata.get_tasks(declared.run_id)}
    assert all(t.cache_status == "miss" for t in first.values())
    assert eng.load_value(first["tail"].result_key) == ["both"]   # extra dependencies: no input

    plan, specs = scheduler.plan(dag), {}

    def with_futures(run):
        refs = {}
        for node, fn, style in plan:
            spec, op = scheduler._spec_for(node, fn, style, specs)
            args = node.arguments.values() if isinstance(node.arguments, dict) else node.arguments
            values = {a: refs[a] for a in args}
            for extra in dag.dependencies.get(node.node_id, []):
                values.setdefault(extra, refs[extra])
            refs[node.node_id] = run.call(spec, op, (node.arguments, node.parameters, values),
                                          {}, node_id=node.node_id)
        return {}

    again = eng.run(with_futures, pipeline="keys", options=RunOptions(error_handler="continue"))
    second = {t.node_id: t for t in eng.metadata.get_tasks(again.run_id)}
    assert {n: t.cache_key for n, t in second.items()} == \
        {n: t.cache_key for n, t in first.items()}
    assert all(t.cache_status == "hit" for t in second.values())
    assert first["tail"].inputs["deps"] == [["both", []], ["dup", []]] == \
        second["tail"].inputs["deps"]
    assert first["both"].inputs["deps"] == [["sq", []], ["nums", []]]
    assert ops.calls == ["make_numbers", "square_all", "add_all", "add_all"]


def _quick(deps, params):
    return params["k"]


def _nap(deps, params):
    time.sleep(params["s"])
    return params["k"]


def _eta_seconds(progress):
    from datetime import datetime, timezone
    if progress.estimated_completion is None:
        return None
    end = datetime.fromisoformat(progress.estimated_completion)
    return (end - datetime.now(timezone.utc)).total_seconds()


def test_resubmitting_a_finished_dag_id_drops_its_previous_result(scheduler):
    async def go():
        await scheduler.submit_dag(DAGDefinition("again", [N("n", "sleepy", seconds=0.01)]))
        first = await scheduler.wait_for_completion("again", timeout=10)
        await scheduler.submit_dag(DAGDefinition("again", [N("n", "sleepy", seconds=1.0)]))
        assert "again" not in scheduler.results           # not the previous run's
        with pytest.raises(TimeoutError):
            await scheduler.wait_for_completion("again", timeout=0.1)
        second = await scheduler.wait_for_completion("again", timeout=10)
        return first, second
    first, second = asyncio.run(go())
    assert first.state.value == second.state.value == "SUCCESS"
    assert second.run_id != first.run_id and second.run_id == scheduler.run_id("again")
    assert scheduler.results["again"] is second


def test_run_refuses_a_dag_id_that_is_running(scheduler):
    register_operation("nap", _nap)
    slow = DAGDefinition("same", [N("slow", "nap", s=1.0, k=0)])
    other = DAGDefinition("same", [N("x", "nap", s=0.01, k=1)])

    async def go():
        await scheduler.submit_dag(slow)
        first_run = scheduler.run_id("same")
        with pytest.raises(ValidationError, match="already running"):
            await asyncio.to_thread(scheduler.run, other)
        assert "same" in scheduler.active_executions and scheduler.run_id("same") == first_run
        assert (await scheduler.get_execution_progress("same")).progress_percentage == 0.0
        assert await scheduler.cancel_execution("same")
        return first_run, await scheduler.wait_for_completion("same", timeout=10)
    first_run, r = asyncio.run(go())
    assert r.state.value == "CANCELLED" and r.run_id == first_run
    assert list(scheduler.node_results("same")) == ["slow"]

    # A DAG run by run() is an active execution too: submit_dag refuses its id meanwhile.
    async def submit_while_run_goes():
        running = asyncio.create_task(asyncio.to_thread(scheduler.run, slow))
        while "same" not in scheduler.active_executions:
            await asyncio.sleep(0.01)
        with pytest.raises(ValidationError, match="already running"):
            await scheduler.submit_dag(other)
        return await running
    assert asyncio.run(submit_while_run_goes()).state.value == "SUCCESS"
    assert "same" not in scheduler.active_executions


def test_eta_covers_the_nodes_not_yet_submitted(scheduler, monkeypatch):
    """A DAG is handed to its run a window at a time: the ETA is every node not done yet at
    the run's rate, not just the window's."""
    import twingraph.engine.dynamic as dyn
    monkeypatch.setattr(dyn, "SUBMIT_WINDOW", 100)
    register_operation("nap", _nap)
    n = 6000
    dag = DAGDefinition("big", [N(f"n{i}", "nap", s=0.005, k=i) for i in range(n)])

    async def go():
        await scheduler.submit_dag(dag)
        loop = scheduler.engine.runs[scheduler.run_id("big")]
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                p = await scheduler.get_execution_progress("big")
                lp = loop.progress()
                if p.estimated_completion is not None and lp["rate"]:
                    return p, lp
            raise AssertionError("no ETA within 10 s")
        finally:
            await scheduler.cancel_execution("big")
            await scheduler.wait_for_completion("big", timeout=30)
    p, lp = asyncio.run(go())
    remaining = n - p.completed_nodes - p.failed_nodes
    assert lp["total"] - lp["finished"] < remaining / 2      # most of the DAG is not submitted
    eta = _eta_seconds(p)
    assert eta == pytest.approx(remaining / lp["rate"], rel=0.3)
    assert eta > 1.5 * lp["eta_seconds"]                      # more than the run's own window


def test_a_run_of_quick_tasks_gets_a_rate():
    """Thousands of tasks a second: the last 256 completions span a few milliseconds, too
    short to measure, and no rate (so no ETA) was ever given: 150,000 quick DAG nodes over
    5 s showed None throughout. The run's average since its first start is used then."""
    from collections import Counter, deque
    from types import SimpleNamespace

    from twingraph.engine.futures import BodySide

    first = 100.0
    times = deque((first + 2.0 + i * 0.00002 for i in range(256)), maxlen=256)
    done = SimpleNamespace(state=None)
    run = SimpleNamespace(counts=Counter(), tasks={f"t{i}": done for i in range(12_000)},
                          unfinished=2_000, _done_times=times, _done_count=10_000,
                          _first_start=first, waiting=set())
    run.state_counts = lambda: BodySide.state_counts(run)
    p = BodySide.progress(run)
    assert p["rate"] == pytest.approx(10_000 / (times[-1] - first))
    assert p["eta_seconds"] == pytest.approx(2_000 / p["rate"])


def test_eta_rate_counts_only_nodes_that_ran(scheduler):
    """Memo hits finish at once: counted in the rate, they made the ETA a few milliseconds
    while seconds of work remained."""
    register_operation("quick", _quick)
    register_operation("nap", _nap)
    scheduler.config.max_concurrent_nodes = 1
    cached = [N(f"q{i}", "quick", k=i) for i in range(200)]
    scheduler.run(DAGDefinition("warm", cached))
    naps = [N(f"n{i}", "nap", s=0.25, k=i) for i in range(5)]

    async def go():
        await scheduler.submit_dag(DAGDefinition("d", cached + naps))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            p = await scheduler.get_execution_progress("d")
            if p.completed_nodes >= 203:          # every hit and 3 of the 5 naps
                eta = _eta_seconds(p)
                await scheduler.wait_for_completion("d", timeout=10)
                return p, eta
            await asyncio.sleep(0.02)
        raise AssertionError("too slow")
    p, eta = asyncio.run(go())
    assert p.completed_nodes < 205
    # 2 (or 1) naps of 0.25 s left, one at a time: about 0.25-0.5 s, not milliseconds
    assert eta is not None and 0.15 < eta < 1.5


@pytest.mark.parametrize("bad", [0, -1, None, 2.5, True])
def test_max_concurrent_nodes_below_one_is_refused(scheduler, bad):
    dag = DAGDefinition("conc", [N("nums", "make_numbers", n=1)])
    with pytest.raises(ValidationError, match="max_concurrent_nodes"):
        asyncio.run(scheduler.submit_dag(dag, ExecutionConfig(max_concurrent_nodes=bad)))
    scheduler.config.max_concurrent_nodes = bad
    with pytest.raises(ValidationError, match="max_concurrent_nodes"):
        asyncio.run(scheduler.submit_dag(dag))
    with pytest.raises(ValidationError, match="max_concurrent_nodes"):
        scheduler.run(dag)
    assert scheduler.engine.metadata.list_runs() == [] and not scheduler.active_executions


def test_a_scheduler_keeps_only_its_newest_finished_executions():
    """A server runs one scheduler for every execute-dynamic request: what it keeps per
    execution (result, progress, run id) stays bounded; an older execution is forgotten here
    (its run stays in the metadata store), a running one never is."""
    register_operation("nap", _nap)
    s = DynamicScheduler(MemoryStorage(), ExecutionConfig(), metadata=MemoryMetadataStore(),
                         keep_finished=3)
    try:
        async def go():
            await s.submit_dag(DAGDefinition("long", [N("slow", "nap", s=1.0, k=-1)]))
            for i in range(6):
                s.run(DAGDefinition(f"d{i}", [N("x", "nap", s=0.0, k=i)]))
            assert set(s.results) == {"d3", "d4", "d5"}
            # The running one is kept whatever its age.
            assert set(s.execution_states) == set(s._dag_runs) == {"long", "d3", "d4", "d5"}
            assert await s.get_execution_progress("d0") is None
            with pytest.raises(NotFoundError, match="newest 3"):
                await s.wait_for_completion("d0")
            with pytest.raises(NotFoundError):
                s.node_results("d0")
            assert s.node_results("d5")["x"].result_data == 5
            return await s.wait_for_completion("long", timeout=10)
        assert asyncio.run(go()).state.value == "SUCCESS"
        assert set(s.results) == {"d4", "d5", "long"}        # it finished last: newest
        # Running an id again takes it out of the finished ones until it ends again.
        s.run(DAGDefinition("d4", [N("x", "nap", s=0.0, k=40)]))
        assert list(s._finished) == ["d5", "long", "d4"]
    finally:
        s.engine.close()


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_keep_finished_must_be_a_positive_integer(bad):
    with pytest.raises(ValidationError, match="keep_finished"):
        DynamicScheduler(MemoryStorage(), keep_finished=bad)


def test_a_scheduler_without_a_result_store_is_refused_at_once():
    """``DynamicScheduler(None, ...)`` used to fail at the first node's memo lookup, with an
    AttributeError as that node's error; it is a configuration error, named before any run."""
    from twingraph.errors import ConfigurationError
    with pytest.raises(ConfigurationError, match="result store"):
        DynamicScheduler(None, ExecutionConfig())


def test_a_progress_read_racing_the_end_of_its_execution_does_not_bring_it_back():
    """``get_execution_progress`` computed the live progress, then stored it: an execution that
    ended (and was forgotten) in between came back at its in-flight progress, for good."""
    gate = threading.Event()

    def gated(deps, params):
        gate.wait(10)
        return params["k"]
    register_operation("gated", gated)
    register_operation("nap", _nap)
    s = DynamicScheduler(MemoryStorage(), ExecutionConfig(), metadata=MemoryMetadataStore(),
                         keep_finished=1)
    try:
        async def go():
            await s.submit_dag(DAGDefinition("X", [N("n", "gated", k=1)]))
            loop = s.engine.runs[s.run_id("X")]
            live = loop.progress

            def progress():            # X ends, and Y's end pushes it out, during the read
                p = live()
                gate.set()
                s.active_executions["X"].join(10)
                s.run(DAGDefinition("Y", [N("n", "nap", s=0.0, k=2)]))
                return p
            loop.progress = progress
            return await s.get_execution_progress("X")
        assert asyncio.run(go()) is None
        assert "X" not in s.execution_states and list(s._finished) == ["Y"]
    finally:
        gate.set()
        s.engine.close()


def test_a_run_again_names_no_run_until_its_own_starts(scheduler):
    register_operation("nap", _nap)
    scheduler.run(DAGDefinition("again", [N("n", "nap", s=0.0, k=1)]))
    assert scheduler.run_id("again") is not None
    scheduler._begin(DAGDefinition("again", [N("n", "nap", s=0.0, k=1)]), threading.current_thread())
    assert scheduler.run_id("again") is None       # not the previous execution's run
    scheduler.active_executions.pop("again")


class _Scaler:
    def __init__(self, factor):
        self.factor = factor

    def __call__(self, deps, params):
        return params["x"] * self.factor

    def times(self, deps, params):
        return params["x"] * self.factor


@pytest.mark.parametrize("make", [_Scaler, lambda f: _Scaler(f).times],
                         ids=["callable instance", "bound method"])
def test_an_operation_bound_to_an_instance_is_keyed_by_its_state(make):
    """``Scaler(2)`` then ``Scaler(3)`` under one operation name: the second computes, it does
    not reuse the first's result (it got 20 for 30: the key saw the class only)."""
    store = MemoryStorage()
    out = []
    for factor in (2, 3, 3):
        s = DynamicScheduler(store, ExecutionConfig(), metadata=MemoryMetadataStore())
        try:
            s.executor.register_operation("scale_by", make(factor))
            run = s.run(DAGDefinition(f"d{factor}", [N("n", "scale_by", x=10)]))
            out.append((s.node_results(f"d{factor}")["n"].result_data,
                        s.engine.metadata.get_tasks(run.run_id)[0].cache_status))
        finally:
            s.engine.close()
    assert out == [(20, "miss"), (30, "miss"), (30, "hit")]



@pytest.mark.parametrize("config, match", [
    (ExecutionConfig(max_retries="2"), "max_retries must be an integer >= 0"),
    (ExecutionConfig(max_retries=-1), "max_retries must be an integer >= 0"),
    (ExecutionConfig(max_retries=2.5), "max_retries must be an integer >= 0"),
    (ExecutionConfig(retry_failed_nodes="no"), "retry_failed_nodes must be True or False"),
])
def test_execution_config_is_checked_before_a_run(scheduler, config, match):
    """"2" failed the run with a TypeError before any node ran; -1 meant no retries; "no"
    counted as true. Refused when the scheduler is made with it (session 27: a dict given
    there failed later as an AttributeError), and when one DAG is given it."""
    with pytest.raises(ValidationError, match=match):
        DynamicScheduler(MemoryStorage(), config, metadata=MemoryMetadataStore())
    s = DynamicScheduler(MemoryStorage(), metadata=MemoryMetadataStore())
    try:
        with pytest.raises(ValidationError, match=match):
            asyncio.run(s.submit_dag(chain_dag(), config))
    finally:
        s.engine.close()


def test_dag_metadata_that_json_cannot_hold_is_refused_before_the_run(scheduler):
    """It becomes the run's params: a datetime ran the DAG, then failed the run when its
    record was written (progress said 100 %, node results were empty)."""
    from datetime import datetime
    dag = chain_dag()
    dag.metadata = {"when": datetime(2026, 1, 1)}
    with pytest.raises(ValidationError, match="metadata must be JSON data"):
        scheduler.run(dag)


def test_the_documents_cli_flow_works_without_a_metadata_store(tmp_path):
    """``DynamicScheduler(storage, config)`` then ``VoxLogicaIntegration`` as the document's CLI
    integration writes it: results are read from the run's own tasks (it raised "give the
    scheduler a metadata store" after the DAG had run); a cancelled execution says so."""
    from twingraph.integration import VoxLogicaIntegration
    from twingraph.stores.results.sqlite import SQLiteStorage
    program = {"dag_id": "p1", "nodes": [
        {"id": "nums", "operation": "make_numbers", "parameters": {"n": 3}},
        {"id": "sq", "operation": "square_all", "arguments": ["nums"]}]}
    register_operation("make_numbers", ops.make_numbers)
    register_operation("square_all", ops.square_all)
    storage = SQLiteStorage(str(tmp_path / "r.db"))
    scheduler = DynamicScheduler(storage, ExecutionConfig())
    try:
        out = asyncio.run(VoxLogicaIntegration(scheduler).execute_program_dynamic(
            program, ExecutionConfig()))
        assert out["status"] == "completed" and out["results"] == {"sq": [0, 1, 4]}
        nodes = scheduler.node_results("p1")
        assert {k: v.status for k, v in nodes.items()} == {
            "nums": NodeStatus.COMPLETED, "sq": NodeStatus.COMPLETED}
        assert nodes["nums"].result_data == [0, 1, 2]
    finally:
        scheduler.engine.close()


def test_a_node_timed_out_in_this_process_is_not_retried_beside_itself():
    """In this process a timed-out node is abandoned, not stopped; retried, its copies ran
    side by side (ten at once at max_concurrent_nodes=2)."""
    calls = []
    gate = threading.Event()

    def hangs(deps, params):
        calls.append(1)
        gate.wait(5)
        return 1

    s = DynamicScheduler(MemoryStorage(), ExecutionConfig(max_retries=3),
                         metadata=MemoryMetadataStore(), node_timeout=0.2)
    try:
        s.executor.register_operation("hangs", hangs)
        r = s.run(DAGDefinition("to", [N("n", "hangs")]))
        assert r.state.value == "FAILED" and "TaskTimeout" in r.failures["n"]
        assert len(calls) == 1
    finally:
        gate.set()
        s.engine.close()


def test_an_engine_keeps_a_bounded_number_of_specs(monkeypatch):
    """Each DAG run makes specs of its own; a long-lived engine kept every one's key prefix
    and fingerprint (a leak of ~1.4 KB a run)."""
    import twingraph.engine.engine as engine_module
    monkeypatch.setattr(engine_module, "SPEC_CACHE", 8)   # what a test can fill
    register_operation("make_numbers", ops.make_numbers)
    s = DynamicScheduler(MemoryStorage(), ExecutionConfig(), metadata=MemoryMetadataStore(),
                         keep_finished=2)
    try:
        for i in range(30):
            s.run(DAGDefinition(f"small{i}", [N("nums", "make_numbers", n=i % 3)]))
        assert len(s.engine._prefixes) <= 8 and len(s.engine._fingerprints) <= 8
    finally:
        s.engine.close()


def test_operation_decorator_forms_register_the_function():
    """Bare ``@operation`` took the function for the name and registered nothing (its module's
    name then held the decorator's inner function)."""
    import twingraph
    from twingraph.engine.dynamic import registered_operations

    @twingraph.operation
    def s19_bare(deps, params):
        return 1

    @twingraph.operation()
    def s19_called(deps, params):
        return 2

    @twingraph.operation("s19_named")
    def whatever(deps, params):
        return 3

    ops_now = registered_operations()
    assert ops_now["s19_bare"] is s19_bare and s19_bare({}, {}) == 1
    assert ops_now["s19_called"] is s19_called and ops_now["s19_named"] is whatever
    with pytest.raises(ValidationError):
        twingraph.operation(42)


def test_progress_says_100_only_once_the_results_can_be_collected(scheduler):
    """The document's integration polls until 100 % and then collects the results: the last
    node done, progress said 100 while the run was still recording, and the collection
    failed ("has not ended") every time."""
    async def go(i):
        dag_id = await scheduler.submit_dag(DAGDefinition(
            f"poll{i}", [N(f"n{k}", "make_numbers", n=k + i * 100) for k in range(50)]))
        while (await scheduler.get_execution_progress(dag_id)).progress_percentage < 100.0:
            await asyncio.sleep(0)
        return dag_id in scheduler.results and scheduler.node_results(dag_id)
    for i in range(10):
        assert asyncio.run(go(i)), i


def test_a_cancel_before_the_run_starts_is_applied_when_it_starts(scheduler, monkeypatch):
    """Between taking the id and its run starting, cancel_execution answered False and did
    nothing (a REST DELETE then said "cancelled" while it ran on). The engine's ``run`` is
    wrapped to hold that window open for a moment."""
    real_run = scheduler.engine.run

    def held_run(*a, **kw):
        time.sleep(0.5)
        return real_run(*a, **kw)
    monkeypatch.setattr(scheduler.engine, "run", held_run)
    dag = DAGDefinition("early_cancel", [N(f"s{i}", "sleepy", seconds=3) for i in range(2)])

    async def go():
        t = asyncio.create_task(asyncio.to_thread(scheduler.run, dag))
        while "early_cancel" not in scheduler.active_executions:
            await asyncio.sleep(0.01)
        assert scheduler.run_id("early_cancel") is None           # its run has not started
        assert await scheduler.cancel_execution("early_cancel")
        assert not await scheduler.cancel_execution("early_cancel")    # once
        return await t
    t0 = time.monotonic()
    r = asyncio.run(go())
    assert r.state.value == "CANCELLED" and time.monotonic() - t0 < 2.5
    assert not scheduler._cancelling


def test_an_execution_whose_run_could_not_start_ends_at_100_percent(scheduler, monkeypatch):
    """Its progress stayed at 0 %: a poller waiting for 100 (the document's integration)
    never stopped."""
    def broken_run(*a, **kw):
        raise RuntimeError("store unreachable")
    monkeypatch.setattr(scheduler.engine, "run", broken_run)
    r = scheduler.run(DAGDefinition("no_start", [N("a", "make_numbers", n=1)]))
    assert r.state.value == "FAILED"
    p = asyncio.run(scheduler.get_execution_progress("no_start"))
    assert p.progress_percentage == 100.0 and p.failed_nodes == 1
