"""``BaseComponent`` names, and the platform check before a run starts, for components reached
other than through a global name bound directly to them (tests/resources/reach_pipes.py)."""

from __future__ import annotations

import pytest

from tests.resources import reach_pipes as rp
from twingraph import ExecutorUnavailable
from twingraph.core.states import RunState


def test_base_component_with_a_component_runs_and_records_both(engine, tmp_path):
    marker = tmp_path / "marker"
    r = rp.base_and_component.run(str(marker), engine=engine)
    assert r.state is RunState.SUCCESS, r.error
    assert r.value["outputs"] == {"total": 18}
    assert marker.read_text() == "ran"
    names = sorted(t.component for t in engine.metadata.get_tasks(r.run_id))
    # The class name by default; the registered name when registered via register_component.
    assert names == ["ReachScale", "reach_marker", "reach_total"]
    pipe = engine.metadata.get_pipeline("default", "reach_base_and_component")
    assert pipe.definition["components"] == ["ReachScale", "reach_marker", "reach_total"]


def test_two_base_components_in_one_pipeline(engine):
    r = rp.two_bases.run(engine=engine)
    assert r.state is RunState.SUCCESS, r.error
    assert r.value["outputs"] == {"total": 9}
    assert sorted(t.component for t in engine.metadata.get_tasks(r.run_id)) == [
        "ReachScale", "reach_total"]
    assert rp.two_bases.code_hash() == rp.two_bases.code_hash()


def test_base_component_names():
    assert rp.scale.name == "ReachScale" and rp.scale.spec.name == "ReachScale"
    assert rp.total.name == "reach_total" and rp.ReachTotal.name == "reach_total"
    assert rp.ReachDocker.name == "ReachDocker"


@pytest.mark.parametrize("pipe, needs", [
    (rp.base_docker, "docker.*ReachDocker"),             # a BaseComponent instance, docker
    (rp.base_class_in_body, "docker.*ReachDocker"),      # its class, instantiated in the body
    (rp.module_attr, "docker.*reach_docker_step"),       # dockmod.reach_docker_step(...)
    (rp.dict_held, "docker.*reach_docker_step"),         # STEPS["docker"](...)
    (rp.list_of_tuples, "kubernetes.*reach_k8s_step"),   # for a, b in CHAIN: b(...)
    (rp.imported_helper, "docker.*reach_docker_step"),   # a helper of another user module
    (rp.in_comprehension, "docker.*reach_docker_step"),  # inside a comprehension
    (rp.via_partial, "docker.*reach_docker_step"),       # functools.partial(component, ...)
    (rp.inside_a_component, "docker.*reach_docker_step.*local_calls_docker calls"),
    (rp.inside_a_base_component, "kubernetes.*reach_k8s_step.*LocalCallsK8s calls"),
], ids=lambda v: getattr(v, "name", None))
def test_missing_executor_fails_before_the_run_starts(engine, tmp_path, pipe, needs):
    marker = tmp_path / "marker"
    with pytest.raises(ExecutorUnavailable, match=needs):
        pipe.run(str(marker), engine=engine)
    assert not marker.exists()                        # the upstream task never ran
    assert engine.metadata.list_runs(pipeline=pipe.name) == []


def test_the_runtime_guard_still_refuses_what_the_walk_cannot_see(engine, tmp_path):
    """A component picked by a computed name is a documented blind spot of the static check:
    the call itself is refused (the run fails), it never runs locally."""
    from tests.resources import reach_steps
    from twingraph import pipeline

    @pipeline(name="reach_getattr")
    def by_getattr():
        return getattr(reach_steps, "reach_" + "docker_step")(x=1)

    r = by_getattr.run(engine=engine)
    assert r.state is RunState.FAILED
    msg = str(r.error)
    assert "no executor for platform 'docker'" in msg and "reach_docker_step" in msg


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_non_local_component_called_inside_a_task_is_refused_not_run_here(
        engine, tmp_path, executor):
    """A component's body that picks a docker component by a computed name (the walk cannot
    see it): the plain call inside the task, in a thread or a worker process, took itself
    for a call outside any pipeline, warned, and ran the docker component here."""
    from tests.resources import reach_steps
    from twingraph import component, pipeline

    @component(cache=False, executor=executor, name=f"dispatch_{executor}")
    def dispatch(name, x):
        return getattr(reach_steps, name)(x=x)

    @pipeline(name=f"reach_dispatch_{executor}")
    def p():
        return dispatch(name="reach_" + "docker_step", x=1)

    r = p.run(engine=engine)
    assert r.state is RunState.FAILED
    assert "no executor for platform 'docker'" in str(r.error), r.error
    assert "not by its body" in str(r.error)


def test_a_non_local_component_called_from_a_thread_the_body_started_is_refused(engine):
    """Calls from a thread the body starts are plain calls (no run on that thread): one of
    a lambda component ran here, with a warning that it was outside a pipeline."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.resources import reach_steps
    from twingraph import pipeline

    @pipeline(name="reach_body_thread")
    def p():
        step = getattr(reach_steps, "reach_" + "k8s_step")
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda i: step(x=i), range(2)))

    r = p.run(engine=engine)
    assert r.state is RunState.FAILED
    assert "no executor for platform 'kubernetes'" in str(r.error), r.error


def test_a_non_local_component_called_outside_a_pipeline_says_it_runs_here():
    # Outside a pipeline a component is a plain function call: for one meant to run on
    # another platform that is said out loud, never done silently.
    import warnings

    from twingraph import BaseComponent, component

    @component(platform="docker", docker_image="python:3.11")
    def in_docker(x: int) -> int:
        return x + 1

    class InBatch(BaseComponent):
        component_options = {"platform": "batch"}

        def execute(self, x):
            return x * 2

    @component
    def here(x: int) -> int:
        return x

    with pytest.warns(RuntimeWarning, match="'in_docker' \\(platform 'docker'\\) called outside"):
        assert in_docker(1) == 2
    with pytest.warns(RuntimeWarning, match="platform 'batch'"):
        assert InBatch()(x=2) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert here(3) == 3


def test_a_plain_call_on_the_main_thread_runs_while_a_pipeline_runs_elsewhere(engine):
    """A unit test or a notebook calling a docker component as a plain function while a
    pipeline runs on another thread: refused (any run going on counted), where it is the
    documented plain call (with its warning)."""
    import threading

    from twingraph import component, pipeline

    release, started = threading.Event(), threading.Event()

    @component(cache=False)
    def waits():
        started.set()
        release.wait(10)
        return 1

    @pipeline(name="reach_background")
    def bg():
        return waits()

    @component(platform="docker", docker_image="python:3.11")
    def remote_add(a, b):
        return a + b

    t = threading.Thread(target=lambda: bg.run(engine=engine), daemon=True)
    t.start()
    try:
        assert started.wait(10)
        with pytest.warns(RuntimeWarning, match="called outside a pipeline"):
            assert remote_add(1, 2) == 3
    finally:
        release.set()
        t.join(10)


class _Proxy:
    """A lazy proxy whose target cannot be reached: asking its class forces it."""
    @property
    def __class__(self):
        raise ConnectionError("the proxy was forced")

    def __getattr__(self, name):
        raise ConnectionError("the proxy was forced")


def test_a_lazy_proxy_default_does_not_break_the_check_before_the_run(engine):
    """The walk for reachable components asked each default ``isinstance``, which reads a
    proxy's ``__class__``: the run crashed before it started."""
    from twingraph import component, pipeline

    @component
    def one(x, client=_Proxy()):
        return x

    @pipeline(name="reach_proxy_default")
    def p(lazy=_Proxy()):
        return one(x=5)

    r = p.run(engine=engine)
    assert r.state is RunState.SUCCESS, r.error
    assert r.value["outputs"]["result"] == 5
