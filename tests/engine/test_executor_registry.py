"""One executor per platform (the architecture's executor registry): a task goes to its
component's platform's executor, and so do aborts (timeouts, cancellation); a platform with
no executor fails before the run starts, naming what is available.

``OtherPlatform`` stands in for an executor this build does not have yet (docker, kubernetes,
...): it runs jobs on its own threads and records what it was given — enough to show where
the engine sends work."""
import threading
import time

import pytest

from twingraph import ExecutorUnavailable, component, pipeline
from twingraph.core.states import RunState, TaskState
from twingraph.engine.engine import Engine
from twingraph.errors import ConfigurationError
from twingraph.executors.local import JobOutcome
from twingraph.stores.metadata import MemoryMetadataStore
from twingraph.stores.results.memory import MemoryStorage


class OtherPlatform:
    platform = "docker"

    def __init__(self):
        self.submitted, self.aborted, self.threads = [], [], set()
        self._abandoned = set()

    def submit(self, job, done):
        self.submitted.append((job.node_id, job.mode))

        def run():
            self.threads.add(threading.get_ident())
            t0 = time.perf_counter()
            try:
                out = JobOutcome(job.node_id, job.fence, True, job.fn(*job.args, **job.kwargs),
                                 None, time.perf_counter() - t0)
            except BaseException as exc:  # noqa: BLE001
                out = JobOutcome(job.node_id, job.fence, False, None, exc, time.perf_counter() - t0)
            if job not in self._abandoned:
                done(out)
        job.started_at = time.monotonic()
        threading.Thread(target=run, daemon=True).start()

    def abort(self, job):
        self.aborted.append(job.node_id)
        self._abandoned.add(job)
        return False

    def shutdown(self):
        pass


FLAKY = {"n": 0}


@component(platform="docker", docker_image="python:3.11",
           retry_policy={"max_attempts": 2, "initial_delay": 0.01})
def in_container(x: int) -> int:
    FLAKY["n"] += 1
    if FLAKY["n"] == 1:
        raise RuntimeError("first attempt fails")
    return x * 10


@component
def on_host(x: int) -> int:
    return x + 1


@pipeline(name="two_platforms")
def two_platforms():
    return on_host(x=in_container(x=4)["outputs"]["result"])


def _engine(*extra):
    return Engine(results=MemoryStorage(), metadata=MemoryMetadataStore(), flush_interval=0.01,
                  executors=extra)


def test_tasks_go_to_their_platforms_executor():
    other = OtherPlatform()
    eng = _engine(other)
    FLAKY["n"] = 0
    try:
        assert eng.platforms == {"local", "docker"}
        r = two_platforms.run(engine=eng)
        assert r.state is RunState.SUCCESS, r.error
        assert r.value["outputs"]["result"] == 41
        assert other.submitted == [("in_container-0", "remote")] * 2     # both attempts
        attempts = [a for t in ("in_container-0",) for a in eng.metadata.get_attempts(r.run_id, t)]
        assert {a.executor for a in attempts} == {"docker:remote"}, attempts
    finally:
        eng.close()


def test_a_platform_without_an_executor_fails_before_the_run():
    eng = _engine()
    try:
        with pytest.raises(ExecutorUnavailable, match="'docker'.*available here: 'local'"):
            two_platforms.run(engine=eng)
    finally:
        eng.close()
    with pytest.raises(ConfigurationError, match="two executors for platform 'docker'"):
        _engine(OtherPlatform(), OtherPlatform())


@component(platform="docker", docker_image="python:3.11", timeout=0.3)
def hangs(x: int) -> int:
    time.sleep(3)
    return x


@pipeline(name="hangs_pipe")
def hangs_pipe():
    return hangs(x=1)


def test_timeouts_abort_on_the_tasks_executor():
    other = OtherPlatform()
    eng = _engine(other)
    try:
        r = hangs_pipe.run(engine=eng)
        assert r.state is RunState.FAILED
        assert other.aborted == ["hangs-0"]
        task = eng.metadata.get_tasks(r.run_id)[0]
        assert task.state is TaskState.FAILED and "timed out" in (task.error or "")
    finally:
        eng.close()


class Unreachable(OtherPlatform):
    """Its platform's API is down: submit raises."""

    def submit(self, job, done):
        raise ConnectionError("docker daemon not reachable")


@component(platform="docker", docker_image="python:3.11")
def needs_docker(x: int) -> int:
    return x


@pipeline(name="submit_fails", error_handler="continue")
def submit_fails():
    return [needs_docker(x=1), on_host(x=1)]


def test_a_submit_that_raises_fails_that_task_not_the_run():
    eng = _engine(Unreachable())
    try:
        r = submit_fails.run(engine=eng)
        states = {t.node_id: t for t in eng.metadata.get_tasks(r.run_id)}
        assert states["on_host-0"].state is TaskState.SUCCESS
        assert states["needs_docker-0"].state is TaskState.FAILED
        assert "docker daemon not reachable" in states["needs_docker-0"].error
        assert "engine error" not in str(r.error)
    finally:
        eng.close()


def test_a_dag_with_a_component_for_a_missing_platform_is_refused_before_it_runs():
    from twingraph.engine.dynamic import DAGDefinition, DynamicScheduler, NodeDefinition
    from twingraph.registry import register_component
    register_component("needs_docker_op", needs_docker)
    sched = DynamicScheduler(MemoryStorage(), metadata=MemoryMetadataStore())
    try:
        with pytest.raises(ExecutorUnavailable, match="needs_docker_op"):
            sched.run(DAGDefinition("d", [NodeDefinition("a", "needs_docker_op", [], {"x": 1})]))
        assert sched.run_id("d") is None                     # nothing ran
    finally:
        sched.engine.close()
