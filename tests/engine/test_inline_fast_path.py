"""The run loop's one-step path for declared nodes that run inline (``_run_declared_inline``)
leaves exactly what the general path (``_start`` -> ``_complete`` -> ``_finish``) leaves: the
same task rows, states, cache decisions, stored values and counts, for successes, failures,
retries, timeouts and memo hits.

Everything is real: SQLite files, the engine's writer (a child process, or a thread of this
one), the dynamic scheduler. The general path is forced by subscribing an
event sink (the fast path is only taken when nobody listens). One patch wraps the real
``_run_declared_inline`` to count the nodes it completed, so that a test fails if the fast
path was silently never taken; its behaviour is untouched. Two tests wrap the result store's
``content_hashes``: one to count the lookups, one to fail a lookup once, as a store briefly
unreachable does.
"""
import time

import pytest

from twingraph.core.states import RunState, TaskState
from twingraph.engine import loop as loop_module
from twingraph.engine.dynamic import (DAGDefinition, DynamicScheduler, ExecutionConfig,
                                      ErrorRecoveryManager, NodeDefinition, register_operation)
from twingraph.engine.engine import Engine
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.results.sqlite import SQLiteStorage

N = 400


def _ops():
    register_operation("fp_inc", lambda deps, p: p["i"] + sum(deps.values()))
    register_operation("fp_text", lambda deps, p: {"i": p["i"], "s": "x" * (p["i"] % 7)})

    def flaky(deps, p):
        if p["i"] % 50 == 49:
            raise ValueError(f"bad {p['i']}")
        return p["i"]
    register_operation("fp_flaky", flaky)



def _dag(dag_id, op, n=N):
    nodes = []
    for i in range(n):
        args = [f"n{i - 1}", f"n{i // 2}"] if i > 1 else (["n0"] if i == 1 else [])
        nodes.append(NodeDefinition(f"n{i}", op, list(dict.fromkeys(args)), {"i": i}))
    return DAGDefinition(dag_id, nodes)


@pytest.fixture
def counted(monkeypatch):
    taken = []
    real = loop_module.RunLoop._run_declared_inline

    def spy(self, task):
        done = real(self, task)
        if done:
            taken.append(task.node_id)
        return done
    monkeypatch.setattr(loop_module.RunLoop, "_run_declared_inline", spy)
    return taken


def _run_both(tmp_path, op, *, retries=0, twice=False, before_each=None, writer="process",
              dag=None):
    """Run the same DAG on two fresh engines with the given writer: one without event sinks
    (fast path), one with (general path). Returns {mode: (states, rows, values, progress)}."""
    _ops()
    out = {}
    for mode in ("fast", "general"):
        if before_each is not None:
            before_each()
        root = tmp_path / mode
        root.mkdir()
        eng = Engine(results=SQLiteStorage(str(root / "r.db")),
                     metadata=SQLMetadataStore(f"sqlite:///{root / 'm.db'}", create=True),
                     writer=writer)
        try:
            deadline = time.monotonic() + 30
            while eng.recorder.writer != writer:
                assert time.monotonic() < deadline, "the writer process did not start"
                time.sleep(0.02)
            if mode == "general":
                eng.subscribe(lambda event: None)
            cfg = ExecutionConfig(max_concurrent_nodes=4, retry_failed_nodes=bool(retries),
                                  max_retries=retries)
            recovery = ErrorRecoveryManager(retries, 1.0) if retries else None
            sched = DynamicScheduler(eng.results, cfg, engine=eng, error_recovery=recovery)
            make = dag or (lambda: _dag(f"fp-{op}", op))
            results = [sched.run(make())]
            if twice:
                results.append(sched.run(make()))
            rows = []
            values = []
            for r in results:
                tasks = sorted(eng.metadata.get_tasks(r.run_id), key=lambda t: t.order)
                rows.append([(t.node_id, t.state, t.cache_key, t.content_hash, t.cache_status,
                              t.cache_reason, t.attempts, t.error, t.inputs, t.result_key)
                             for t in tasks])
                values.append([eng.load_value(t.result_key) if t.state is TaskState.SUCCESS
                               else None for t in tasks])
            out[mode] = ([(r.state, str(r.error) if r.error else None) for r in results], rows,
                         values, [r.progress for r in results])
        finally:
            eng.close()
    return out


def _same(out):
    fast, general = out["fast"], out["general"]
    assert fast[0] == general[0]
    assert fast[1] == general[1]
    assert fast[2] == general[2]
    for pf, pg in zip(fast[3], general[3]):
        for k in ("total", "succeeded", "failed", "skipped", "cancelled", "finished"):
            assert pf[k] == pg[k], k


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_successes_leave_the_rows_and_values_of_the_general_path(tmp_path, counted, writer):
    out = _run_both(tmp_path, "fp_inc", twice=True, writer=writer)
    _same(out)
    states, rows, values, _ = out["fast"]
    assert states[0][0] is RunState.SUCCESS
    assert {r[4] for r in rows[1]} == {"hit"}               # the second run: all memo hits
    assert values[0] == values[1] and values[0][N - 1] > 0
    # The fast path ran most nodes of the first run (the first few measure the operation).
    assert len(counted) >= N - 50


def test_twins_in_a_chain_finish_as_the_general_path_finishes_them(tmp_path, counted):
    # A chain n0 <- n1 <- ..., and beside each n{i} a t{i} with the same operation, inputs
    # and parameters: the same computation (a twin in this run), finished as n{i} finished.
    register_operation("fp_k", lambda deps, p: p["i"] + sum(deps.values()))
    nodes = []
    for i in range(N // 2):
        for name in ("n", "t"):
            nodes.append(NodeDefinition(f"{name}{i}", "fp_k", [f"n{i - 1}"] if i else [],
                                        {"i": i}))
    out = _run_both(tmp_path, "fp_k", twice=True, dag=lambda: DAGDefinition("fp-twins", nodes))
    _same(out)
    rows = {r[0]: r for r in out["fast"][1][0]}
    assert rows["t9"][5] == "same computation as n9 in this run"
    assert rows["t9"][2] == rows["n9"][2] and rows["t9"][4] == "hit"
    assert rows["n9"][4] == "miss"
    last = N // 2 - 1
    assert out["fast"][2][0][-1] == out["fast"][2][0][-2] == last * (last + 1) // 2
    assert len(counted) >= N // 2 - 50


def test_dict_results_take_the_fast_path_too(tmp_path, counted):
    out = _run_both(tmp_path, "fp_text")
    _same(out)
    assert out["fast"][2][0][8] == {"i": 8, "s": "x"}
    assert len(counted) >= N - 50


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_failures_and_skips_are_the_general_paths(tmp_path, counted, writer):
    out = _run_both(tmp_path, "fp_flaky", writer=writer)
    _same(out)
    states, rows, _, progress = out["fast"]
    assert states[0][0] is RunState.FAILED
    by_id = {r[0]: r for r in rows[0]}
    assert by_id["n49"][1] is TaskState.FAILED and "bad 49" in by_id["n49"][7]
    assert by_id["n50"][1] is TaskState.SKIPPED                # n50 reads n49
    assert progress[0]["failed"] >= 1 and progress[0]["skipped"] >= 1
    assert len(counted) >= 20                                  # successes before n49 did


def test_a_retried_node_is_recorded_as_the_general_path_records_it(tmp_path, counted):
    failed = []

    def once_bad(deps, p):
        if p["i"] == 60 and not failed:
            failed.append(1)
            raise ValueError("first attempt fails")
        return p["i"]
    register_operation("fp_once_bad", once_bad)
    out = _run_both(tmp_path, "fp_once_bad", retries=1, before_each=failed.clear)
    _same(out)
    rows = {r[0]: r for r in out["fast"][1][0]}
    assert rows["n60"][1] is TaskState.SUCCESS and rows["n60"][6] == 2
    assert out["fast"][0][0][0] is RunState.SUCCESS


def test_an_inline_call_over_its_timeout_fails_the_same_way(tmp_path, counted):
    from twingraph import component

    @component(timeout=0.01, executor="inline")     # auto would not inline it: its own timeout
    def fp_slow_component(i):
        if i == 120:
            time.sleep(0.05)
        return i
    # A @component registers itself under its name; as an operation it is called with the
    # inputs' values, then the parameters by name, and keeps its own timeout.
    nodes = [NodeDefinition(f"n{i}", "fp_slow_component", [], {"i": i}) for i in range(N)]
    _ops()
    out = {}
    for mode in ("fast", "general"):
        root = tmp_path / mode
        root.mkdir()
        eng = Engine(results=SQLiteStorage(str(root / "r.db")),
                     metadata=SQLMetadataStore(f"sqlite:///{root / 'm.db'}", create=True),
                     writer="process")
        try:
            deadline = time.monotonic() + 30
            while eng.recorder.writer != "process":
                assert time.monotonic() < deadline, "the writer process did not start"
                time.sleep(0.02)
            if mode == "general":
                eng.subscribe(lambda event: None)
            sched = DynamicScheduler(eng.results, ExecutionConfig(
                max_concurrent_nodes=1, retry_failed_nodes=False), engine=eng)
            r = sched.run(DAGDefinition("fp-timeout", nodes))
            out[mode] = (r.state, {t.node_id: (t.state, t.error, t.cache_key, t.content_hash)
                                   for t in eng.metadata.get_tasks(r.run_id)})
        finally:
            eng.close()
    assert out["fast"] == out["general"]
    state, rows = out["fast"]
    assert state is RunState.FAILED
    assert rows["n120"][0] is TaskState.FAILED and "TaskTimeout" in rows["n120"][1]
    assert rows["n119"][0] is TaskState.SUCCESS and rows["n121"][0] is TaskState.SUCCESS


# -- review findings (session 17): each failed before its fix ----------------------------------
def _engine_pair(tmp_path, mode):
    root = tmp_path / mode
    root.mkdir()
    eng = Engine(results=SQLiteStorage(str(root / "r.db")),
                 metadata=SQLMetadataStore(f"sqlite:///{root / 'm.db'}", create=True),
                 writer="thread")
    if mode == "general":
        eng.subscribe(lambda event: None)
    return eng


def _declared_fn(arguments, parameters, values):
    return parameters["i"] + sum(values.values())


def test_a_stop_inside_a_submitted_batch_cancels_the_rest_of_it(tmp_path):
    """Under 'fail', a submission that fails stops the run; the declared tasks after it in the
    same batch were taken in by the one-pass loop as if nothing had happened, queued after the
    stop, and never started: the run never ended."""
    import sys
    from collections import Counter
    from twingraph.core.specs import ComponentSpec
    from twingraph.engine.loop import RunOptions
    good = ComponentSpec(name="good", qualname="m:good", code_version="v1", raw_result=True)
    # labels that are not a mapping: the task row's fingerprint fails, so does its submission
    bad = ComponentSpec(name="bad", qualname="m:bad", code_version="v1", raw_result=True,
                        labels=[1])

    def body(run):
        before = sys.getswitchinterval()
        sys.setswitchinterval(0.5)        # all submitted before the loop takes any in
        try:
            run.call_declared(bad, _declared_fn, [], {"i": -1}, [], [], "bad")
            for i in range(20):
                run.call_declared(good, _declared_fn, [], {"i": i}, [], [], f"g{i}")
        finally:
            sys.setswitchinterval(before)

    out = {}
    for mode in ("fast", "general"):
        eng = _engine_pair(tmp_path, mode)
        try:
            r = eng.run(body, pipeline="stop-mid-batch",
                        options=RunOptions(max_parallel=4, error_handler="fail"))
            out[mode] = (r.state, Counter(t.state for t in eng.metadata.get_tasks(r.run_id)))
        finally:
            eng.close()
    assert out["fast"] == out["general"] == (
        RunState.FAILED, Counter({TaskState.CANCELLED: 20, TaskState.FAILED: 1}))


def test_a_failed_lookup_fails_the_whole_burst_as_the_general_path_does(tmp_path):
    """Forty nodes that became ready together were looked up one by one by the lane: a store
    error failed one of them, where the general path (one query a burst) fails all forty. The
    store's ``content_hashes`` is wrapped to fail once, as a store briefly unreachable does."""
    from collections import Counter
    from twingraph.core.specs import ComponentSpec
    from twingraph.engine.loop import RunOptions
    inc = ComponentSpec(name="inc", qualname="m:inc", code_version="v1", raw_result=True)
    armed = []

    def fn(arguments, parameters, values):
        if parameters.get("trigger"):
            armed.append(1)
        return _declared_fn(arguments, parameters, values)

    def body(run):
        prev = []
        for i in range(20):                     # a chain: the lane runs it
            prev = [run.call_declared(inc, fn, [], {"i": i}, [p.node_id for p in prev], prev,
                                      f"c{i}")]
        t = run.call_declared(inc, fn, [], {"i": 99, "trigger": True}, [prev[0].node_id],
                              prev, "trigger")
        for i in range(40):
            run.call_declared(inc, fn, [], {"i": i}, ["trigger"], [t], f"fan{i}")

    out = {}
    for mode in ("fast", "general"):
        armed.clear()
        eng = _engine_pair(tmp_path, mode)
        real = eng.results.content_hashes

        def flaky(keys, real=real):
            if armed:
                armed.clear()
                raise OSError("store briefly unreachable")
            return real(keys)
        eng.results.content_hashes = flaky
        try:
            r = eng.run(body, pipeline="lookup-error",
                        options=RunOptions(max_parallel=4, error_handler="continue"))
            out[mode] = Counter(t.state for t in eng.metadata.get_tasks(r.run_id))
        finally:
            eng.close()
    assert out["fast"] == out["general"] == Counter({TaskState.FAILED: 40,
                                                     TaskState.SUCCESS: 21})


def test_a_wide_graph_is_looked_up_a_burst_at_a_time(tmp_path):
    """The lane took every ready node, one query each: a 20,000-node fan-out's second run
    (all memo hits) made 20,000 lookups instead of a few dozen, and ran ~1.6x slower."""
    register_operation("fp_one", lambda deps, p: p["i"])
    nodes = [NodeDefinition("root", "fp_one", [], {"i": 0})]
    nodes += [NodeDefinition(f"w{i}", "fp_one", ["root"], {"i": i}) for i in range(2000)]
    eng = _engine_pair(tmp_path, "fast")
    calls = []
    real = eng.results.content_hashes

    def counting(keys):
        calls.append(len(keys))
        return real(keys)
    eng.results.content_hashes = counting
    try:
        sched = DynamicScheduler(eng.results, ExecutionConfig(max_concurrent_nodes=4),
                                 engine=eng)
        assert sched.run(DAGDefinition("wide", nodes)).state is RunState.SUCCESS
        calls.clear()
        assert sched.run(DAGDefinition("wide", nodes)).state is RunState.SUCCESS
    finally:
        eng.close()
    assert sum(calls) == len(nodes) and len(calls) <= 20, len(calls)
