"""The documented DSL on real pipeline modules (tests/resources).

``monkeypatch`` only puts a test's ``tmp_path`` on ``sys.path`` (so a helper module written
there can be imported and reloaded) and takes it off again; nothing is mocked."""
import pytest

from tests.resources import documented as doc
from twingraph import (ExecutorUnavailable, PipelineFailed, ValidationError, component,
                       pipeline)
from twingraph.core.states import RunState, TaskState


def test_documented_pipeline_result_and_lineage(engine):
    doc.reset()
    r = doc.process_pipeline.run(engine=engine, n=4, delay=0.05)
    assert r.state is RunState.SUCCESS
    assert r.value["outputs"] == {"total": sum(range(8)), "n": 4}
    assert len(r.value["hash"]) == 64
    tasks = {t.node_id: t for t in engine.metadata.get_tasks(r.run_id)}
    assert set(tasks) == {"load_data-0", "aggregate_results-0",
                          *(f"process_chunk-{i}" for i in range(4))}
    assert all(t.state is TaskState.SUCCESS for t in tasks.values())
    from twingraph.lineage import run_lineage
    vertices, edges = run_lineage(engine.metadata, r.run_id)
    assert {v.label for v in vertices} == {"Pipeline", "Component"} and len(vertices) == 7
    dep = {(e.src, e.dst) for e in edges if e.kind == "DEPENDS_ON"}
    for i in range(4):
        assert ("load_data-0", f"process_chunk-{i}") in dep
        assert (f"process_chunk-{i}", "aggregate_results-0") in dep
    belongs = [e for e in edges if e.kind == "BELONGS_TO"]
    assert len(belongs) == 6 and all(e.dst == r.run_id for e in belongs)
    assert sorted(e.properties["component_order"] for e in belongs) == list(range(6))


def test_independent_calls_run_in_parallel(engine):
    doc.reset()
    doc.process_pipeline.run(engine=engine, n=6, delay=0.3)
    assert doc.state["peak"] == 6          # all six chunks were running at the same moment


def test_max_parallel_bounds_concurrency(engine):
    doc.reset()
    r = doc.narrow_pipeline.run(engine=engine, n=6)
    assert r.state is RunState.SUCCESS
    assert doc.state["peak"] == 2


def test_namedtuple_dict_and_plain_results(engine):
    r = doc.shapes_pipeline.run(engine=engine)
    assert r.value == {"mean": 2.0, "count": 3, "max": 3, "filtered": [2, 3]}


def test_outside_a_pipeline_a_component_is_a_plain_call():
    assert doc.process_chunk(data=[1, 2], delay=0) == {"data": 3}
    assert doc.as_namedtuple(xs=[2, 4]).mean == 3.0     # the original NamedTuple
    assert doc.load_data(source="x", n=1, parent_hash="abc")["chunks"] == [[0, 1]]


def test_calling_the_pipeline_returns_its_result(engine):
    from twingraph.runtime import set_default_engine
    set_default_engine(engine)
    try:
        out = doc.process_pipeline(n=2, delay=0)
    finally:
        set_default_engine(None)
    assert out["outputs"]["total"] == 0 + 1 + 2 + 3


@pytest.mark.parametrize("kwargs, match", [
    ({"platform": "mainframe"}, "platform"),
    ({"timeout": -1}, "timeout"),
    ({"timeout": "soon"}, "timeout"),
    ({"retry_policy": {"max_attempts": 0}}, "max_attempts"),
    ({"retry_policy": {"tries": 3}}, "unknown keys"),
    ({"retry_policy": {"backoff": "random"}}, "backoff"),
    ({"resources": {"cpu": "lots"}}, "cpu"),
    ({"resources": {"disk": "1G"}}, "unknown key"),
    ({"environment": {"A": object()}}, "environment"),
    # names and values os.environ cannot hold: refused here, not when the task's worker sets them
    ({"environment": {"A=B": "1"}}, "environment: invalid variable name 'A=B'"),
    ({"environment": {"": "1"}}, "environment: invalid variable name ''"),
    ({"environment": {"A\0B": "1"}}, "environment: invalid variable name"),
    ({"environment": {"A": "x\0y"}}, r"environment\['A'\]: the value must not contain NUL"),
    # retry delays that are not finite numbers would keep a task waiting to retry forever
    ({"retry_policy": {"max_attempts": 2, "initial_delay": float("nan")}}, "initial_delay"),
    ({"retry_policy": {"max_attempts": 2, "initial_delay": float("inf"),
                       "max_delay": float("inf")}}, "initial_delay"),
    ({"retry_policy": {"max_attempts": 2, "multiplier": float("nan")}}, "multiplier"),
    # string amounts follow the rules of numbers: 0 is no amount, and 2**62 bounds GPUs too
    ({"resources": {"cpu": "0"}}, "cpu"),
    ({"resources": {"cpu": "0m"}}, "cpu"),
    ({"resources": {"cpu": "0.0"}}, "cpu"),
    ({"resources": {"memory": "0"}}, "memory"),
    ({"resources": {"memory": "0Gi"}}, "memory"),
    ({"resources": {"gpu": 2**70}}, "gpu"),
    ({"labels": "prod"}, "labels"),
    ({"config": ["x"]}, "config"),
    ({"platform": "docker"}, "docker_image"),
    ({"executor": "gpu"}, "executor"),
    # an empty name or version was silently replaced by the function's name / code version
    ({"name": ""}, "name"),
    ({"name": "  "}, "name"),
    ({"version": ""}, "version"),
    ({"retry_policy": {"exceptions": 5}}, "exceptions"),
])
def test_component_parameters_are_validated(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        component(**kwargs)(lambda x: x)


def test_every_documented_component_parameter_is_accepted():
    c = component(platform="local", docker_image="python:3.11", config={"memory": "2G", "timeout": 30},
                  retry_policy={"max_attempts": 3, "backoff": "exponential", "initial_delay": 1,
                                "max_delay": 60, "exceptions": ["TransientError", "TimeoutError"]},
                  timeout=120, resources={"cpu": "500m", "memory": "1Gi", "gpu": 0},
                  environment={"ENV": "test", "N": 3}, labels={"team": "data"})(lambda x: x)
    s = c.spec
    assert s.timeout == 30 and s.environment == {"ENV": "test", "N": "3"}   # config timeout bounds it
    assert s.retry_policy.exceptions == ("TransientError", "TimeoutError")


@pytest.mark.parametrize("kwargs, match", [
    ({"max_parallel": 0}, "max_parallel"),
    ({"error_handler": "ignore"}, "error_handler"),
    ({"timeout": 0}, "timeout"),
    ({"schedule": "every day"}, "cron"),
    # croniter accepts these; the schedule store refused them and `server --load` exited
    ({"schedule": "0 0 31 2 *"}, "never fires"),
    ({"schedule": "0 0 * * * * *"}, "5 fields"),
    ({"notifications": {"on_fire": print}}, "unknown event"),
    ({"notifications": "ftp://x"}, "URL"),
    ({"error_handler": "custom"}, "handler"),
    ({"name": ""}, "name"),
])
def test_pipeline_parameters_are_validated(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        pipeline(**kwargs)(lambda: None)


def test_schedule_is_stored_with_the_pipeline(sqlite_engine):
    @pipeline(name="scheduled", schedule="0 */6 * * *")
    def scheduled():
        return doc.as_plain(xs=[1])

    scheduled.run(engine=sqlite_engine)
    rec = sqlite_engine.metadata.get_pipeline("default", "scheduled")
    assert rec.schedule == "0 */6 * * *"


def test_non_local_platform_fails_before_the_run_starts(engine):
    ran = []

    @component(platform="kubernetes", config={"namespace": "default"})
    def on_k8s(x):
        ran.append(x)
        return x

    @component
    def local_first(x):
        ran.append(("local", x))
        return x

    @pipeline(name="needs_k8s")
    def needs_k8s():
        a = local_first(x=1)
        return on_k8s(x=a["outputs"]["result"])

    with pytest.raises(ExecutorUnavailable, match="kubernetes.*on_k8s"):
        needs_k8s.run(engine=engine)
    assert ran == []
    assert engine.metadata.list_runs(pipeline="needs_k8s") == []


def test_a_non_local_component_given_as_an_argument_or_default_fails_before_the_run(engine):
    """Passed in (``p.run(step=heavy)``) or a default (``def p(step=heavy)``), it was not seen:
    the run started, ran the local task before it, and failed."""
    ran = []

    @component(platform="batch")
    def heavy(x):
        return x

    @component
    def prep():
        ran.append("prep")
        return 1

    @pipeline(name="step_given")
    def given(step):
        return step(x=prep())

    @pipeline(name="step_default")
    def by_default(step=heavy):
        return step(x=prep())

    for run in (lambda: given.run(heavy, engine=engine), lambda: by_default.run(engine=engine)):
        with pytest.raises(ExecutorUnavailable, match="batch.*heavy"):
            run()
    assert ran == []
    assert engine.metadata.list_runs(pipeline="step_given") == []


def test_failed_pipeline_raises_pipeline_failed(engine):
    @component
    def boom(x):
        raise RuntimeError("kaput")

    @pipeline(name="boom")
    def boom_pipeline():
        return boom(x=1)

    r = boom_pipeline.run(engine=engine)
    assert r.state is RunState.FAILED
    assert isinstance(r.error, PipelineFailed) and "kaput" in str(r.error)
    assert engine.metadata.get_run(r.run_id).state is RunState.FAILED
    with pytest.raises(PipelineFailed):
        r.unwrap()


def test_component_logs_are_recorded_with_their_task(engine):
    from twingraph import get_logger

    @component
    def chatty(n):
        log = get_logger()
        log.info("working on %d", n)
        if n == 2:
            log.warning("two is odd")
        return n

    @pipeline(name="chatty")
    def p():
        return [chatty(n=i) for i in range(3)]

    r = p.run(engine=engine)
    logs = engine.metadata.get_logs(r.run_id, node_id="chatty-2")
    assert [(l.level, l.message) for l in logs] == [("info", "working on 2"),
                                                    ("warning", "two is odd")]
    assert [l.message for l in engine.metadata.get_logs(r.run_id, level="warning")] == ["two is odd"]
    import logging
    logging.getLogger("twingraph.task").info("outside any task: not recorded")
    assert len(engine.metadata.get_logs(r.run_id)) == 4


def test_the_rate_counts_the_work_of_the_first_bunch_of_parallel_tasks(engine):
    """Equal tasks in two slots end in pairs. Measured from the first completion, the rate
    left out the first pair's work: 10 tasks/s claimed where 6.7 are done."""
    import threading
    import time

    seen = {}

    @component(executor="thread")
    def nap(i):
        time.sleep(0.3)
        return i

    @pipeline(name="eta_bunches", max_parallel=2)
    def p():
        return [nap(i=i)["outputs"]["result"] for i in range(6)]

    def watch(loop):
        def look():
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                prog = loop.progress()
                if prog["succeeded"] >= 4:
                    seen.update(prog)
                    return
                time.sleep(0.005)
        threading.Thread(target=look, daemon=True).start()

    r = p.run(engine=engine, on_start=watch)
    assert r.state.value == "SUCCESS"
    assert seen["rate"] == pytest.approx(2 / 0.3, rel=0.2)


def test_progress_gives_no_eta_from_a_burst(engine):
    """Two tasks finishing within microseconds must not claim an ETA of 0 s for the rest."""
    import threading

    from twingraph import component

    gate = threading.Event()

    @component(executor="thread")
    def instant(i):
        return i

    @component(executor="thread")
    def held(i):
        gate.wait(10)
        return i

    seen = {}

    @pipeline(name="eta_burst", max_parallel=4)
    def p():
        fast = [instant(i=i) for i in range(2)]
        slow = [held(i=i) for i in range(3)]
        [f.result() for f in fast]
        return slow

    def watch(loop):
        def look():
            import time
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                prog = loop.progress()
                if prog["succeeded"] >= 2:
                    seen.update(prog)
                    break
                time.sleep(0.005)
            gate.set()
        threading.Thread(target=look, daemon=True).start()

    r = p.run(engine=engine, on_start=watch)
    assert r.state.value == "SUCCESS"
    assert seen["succeeded"] >= 2 and seen["eta_seconds"] is None


def test_a_nested_pipelines_run_settings_are_said_not_to_apply(engine):
    """A pipeline called inside another runs inline, as part of it: its max_parallel,
    error_handler and timeout apply to its tasks (test_nested_pipelines.py), but its
    notifications and graph_config are for runs of it, and were ignored without a word."""
    @component
    def one(x):
        return x

    @pipeline(name="inner_settings", max_parallel=2, notifications=lambda event: None,
              graph_config={"lineage": False})
    def inner(x):
        return one(x=x)

    @pipeline(name="outer_settings")
    def outer():
        return [inner(i) for i in range(3)]

    r = outer.run(engine=engine)
    assert r.state.value == "SUCCESS"
    engine.recorder.flush()
    notes = [log.message for log in engine.metadata.get_logs(r.run_id)
             if "inner_settings" in log.message]
    assert notes == ["pipeline inner_settings runs inside this run's body, as part of it: its "
                     "own notifications, graph_config do not apply (they are for runs of it)"]


@pytest.mark.parametrize("memo", ["cached", "--no-cache", "cache=False producer"])
def test_parent_hashes_given_as_strings_draw_lineage_edges(engine, memo):
    """``parent_hash=raw["hash"]`` after the body read the value (original TwinGraph's form):
    a hash string, not a future; it drew no DEPENDS_ON edge. Nor did it, later, when the
    producer was not memoized (``cache=False``, a ``--no-cache`` run): its hash is its own
    key, which the lookup did not know."""
    from twingraph.lineage import run_lineage

    @component(cache=memo != "cache=False producer")
    def load(n):
        return {"chunks": [[i, i + 1] for i in range(n)]}

    @component
    def proc(data):
        return {"data": sum(data)}

    @component
    def agg(results):
        return {"total": sum(results)}

    @pipeline(name="explicit_hashes")
    def p():
        raw = load(n=2).result()
        rs = [proc(data=c, parent_hash=raw["hash"]) for c in raw["outputs"]["chunks"]]
        vals = [r.result() for r in rs]
        return agg(results=[v["outputs"]["data"] for v in vals],
                   parent_hashes=[v["hash"] for v in vals])

    r = p.run(engine=engine, no_cache=memo == "--no-cache")
    assert r.state.value == "SUCCESS"
    engine.recorder.flush()
    _, edges = run_lineage(engine.metadata, r.run_id)
    assert sorted((e.src, e.dst) for e in edges if e.kind == "DEPENDS_ON") == [
        ("load-0", "proc-0"), ("load-0", "proc-1"), ("proc-0", "agg-0"), ("proc-1", "agg-0")]


def test_a_helper_reloaded_in_the_same_process_is_a_new_version(engine, tmp_path, monkeypatch):
    """A notebook or a long-lived worker: the helper module is edited and reloaded between two
    runs of one pipeline; the component's version was taken once, at its first run, and the
    second run got the old result."""
    import importlib
    import sys
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "reloaded_helper.py").write_text("def helper(x):\n    return x * 2\n")
    import reloaded_helper

    @component
    def comp(x):
        return reloaded_helper.helper(x)

    @pipeline(name="reloaded_helper_flow")
    def flow():
        return comp(x=5)

    try:
        assert flow.run(engine=engine).value["outputs"]["result"] == 10
        (tmp_path / "reloaded_helper.py").write_text("def helper(x):\n    return x * 100\n")
        importlib.reload(reloaded_helper)
        r = flow.run(engine=engine)
        assert r.value["outputs"]["result"] == 500
        assert engine.metadata.get_tasks(r.run_id)[0].cache_reason == \
            "code changed since the last run"
    finally:
        sys.modules.pop("reloaded_helper", None)


def test_futures_in_dict_keys_and_dataclasses_are_resolved(engine):
    """A future used as a dict key, or held by a dataclass, reached the component (and the
    pipeline's result) as a future: they were walked in lists, tuples, sets and dict values
    only."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Box:
        v: object

    @component
    def name():
        return "alice"

    @component(executor="thread")
    def key_types(d, box):
        return [type(k).__name__ for k in d] + [type(box.v).__name__]

    @pipeline(name="refs_in_keys_and_dataclasses")
    def p():
        n = name()["outputs"]["result"]
        return key_types(d={n: 1}, box=Box(n)), {n: 1}, Box(n)

    seen, keyed, boxed = p.run(engine=engine).value
    assert seen["outputs"]["result"] == ["str", "str"]
    assert keyed == {"alice": 1} and boxed == Box("alice")


def test_parent_hash_strings_of_a_resumed_run_keep_their_edges(tmp_path):
    """A ``cache=False`` producer recorded SUCCESS before the stop is resumed under the key
    it had: ``parent_hash`` strings naming it found nothing, and the resumed run's lineage
    lost every edge, those recorded before the stop too."""
    import os

    from twingraph.engine.engine import Engine
    from twingraph.lineage import run_lineage
    from twingraph.stores.metadata import SQLMetadataStore
    from twingraph.stores.results.sqlite import SQLiteStorage

    flag = tmp_path / "fail"
    eng = Engine(results=SQLiteStorage(tmp_path / "r.db"),
                 metadata=SQLMetadataStore(f"sqlite:///{tmp_path}/m.db", create=True))

    @component(cache=False)
    def load(n):
        return {"chunks": [[i, i + 1] for i in range(n)]}

    @component
    def proc(data):
        if flag.exists():
            raise RuntimeError("transient")
        return {"data": sum(data)}

    @pipeline(name="resumed_hash_strings")
    def p(n: int):
        raw = load(n=n).result()
        rs = [proc(data=c, parent_hash=raw["hash"]) for c in raw["outputs"]["chunks"]]
        return [r.result()["outputs"]["data"] for r in rs]

    def edges(run_id):
        eng.recorder.flush()
        _, es = run_lineage(eng.metadata, run_id)
        return sorted((e.src, e.dst) for e in es if e.kind == "DEPENDS_ON")

    try:
        flag.touch()
        first = p.run(3, engine=eng)
        assert first.state.value == "FAILED"
        os.remove(flag)
        resumed = p.run(3, engine=eng, resume=first.run_id)
        assert resumed.state.value == "SUCCESS", resumed.error
        assert edges(resumed.run_id) == [("load-0", f"proc-{i}") for i in range(3)]
    finally:
        eng.close()
