"""``@component(resources=...)`` on the local platform: a task starts only once the CPU, memory
and GPUs it asks for are free on the engine's machine, and gives them back when it ends
(decision 0014). Real thread tasks; overlap is read from the times each task ran."""
from __future__ import annotations

import threading
import time

import pytest

from twingraph import BaseComponent, Engine, component, pipeline
from twingraph.core.specs import resource_amounts
from twingraph.engine.resources import LocalResources, parse_setting
from twingraph.errors import ConfigurationError, ResourceUnavailable, SchedulingError
from twingraph.stores.metadata import MemoryMetadataStore
from twingraph.stores.results import MemoryStorage

SPANS: list[tuple[str, float, float]] = []
_lock = threading.Lock()


def _span(name: str, seconds: float) -> str:
    t0 = time.monotonic()
    time.sleep(seconds)
    with _lock:
        SPANS.append((name, t0, time.monotonic()))
    return name


@component(executor="thread", resources={"cpu": 1}, cache=False)
def one_cpu(i: int) -> str:
    return _span(f"cpu{i}", 0.15)


@component(executor="thread", resources={"memory": "3Gi"}, cache=False)
def big_memory(i: int) -> str:
    return _span(f"mem{i}", 0.15)


@component(executor="thread", cache=False)
def free_task(i: int) -> str:
    return _span(f"free{i}", 0.15)


@component(executor="thread", resources={"gpu": True}, cache=False)
def needs_gpu() -> str:
    return "gpu"


@component(executor="thread", resources={"cpu": 1}, cache=False)
def failing(i: int) -> str:
    raise RuntimeError("boom")


@pipeline(name="cpus", max_parallel=8)
def cpus(n: int):
    return [one_cpu(i=i) for i in range(n)]


@pipeline(name="mixed", max_parallel=8)
def mixed():
    return [big_memory(i=0), big_memory(i=1), free_task(i=0), free_task(i=1)]


@pipeline(name="gpu")
def gpu_pipe():
    return needs_gpu()


class GpuStep(BaseComponent):
    component_options = {"resources": {"gpu": 2}}

    def execute(self, x):
        return x


gpu_step = GpuStep()


@pipeline(name="gpu_instance")
def gpu_instance_pipe():
    return gpu_step(x=1)


@pipeline(name="gpu_class")
def gpu_class_pipe():
    return GpuStep()(x=1)


@pipeline(name="fails_then_runs", max_parallel=8, error_handler="continue")
def fails_then_runs():
    return [failing(i=0), one_cpu(i=0), one_cpu(i=1)]


def engine(**capacity) -> Engine:
    return Engine(results=MemoryStorage(), metadata=MemoryMetadataStore(), flush_interval=0.01,
                  local_resources=capacity)


def most_at_once(prefix: str) -> int:
    spans = [(a, b) for name, a, b in SPANS if name.startswith(prefix)]
    return max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)


@pytest.fixture(autouse=True)
def _spans():
    SPANS.clear()


@pytest.mark.parametrize("cpu, expected", [(1, 1), (2, 2), (4, 4)])
def test_tasks_asking_for_a_cpu_run_as_many_at_once_as_there_are_cpus(cpu: int, expected: int) -> None:
    eng = engine(cpu=cpu)
    try:
        r = cpus.run(engine=eng, n=4)
        assert r.state.value == "SUCCESS", r.error
        assert most_at_once("cpu") == expected
        assert eng.local_resources.free == eng.local_resources.capacity    # all given back
    finally:
        eng.close()


def test_memory_is_reserved_and_tasks_asking_for_nothing_are_not_held(tmp_path) -> None:
    eng = engine(memory="4Gi")
    try:
        r = mixed.run(engine=eng)
        assert r.state.value == "SUCCESS", r.error
        assert most_at_once("mem") == 1          # 3 GiB each: one at a time in 4 GiB
        assert most_at_once("free") == 2
    finally:
        eng.close()


def test_two_runs_of_one_engine_share_its_resources() -> None:
    eng = engine(cpu=1)
    try:
        runs = [threading.Thread(target=cpus.run, kwargs={"engine": eng, "n": 2}) for _ in range(2)]
        for t in runs:
            t.start()
        for t in runs:
            t.join(10)
        assert len(SPANS) == 4 and most_at_once("cpu") == 1
    finally:
        eng.close()


def test_a_failed_task_gives_its_resources_back() -> None:
    eng = engine(cpu=1)
    try:
        r = fails_then_runs.run(engine=eng)
        assert r.state.value == "FAILED"
        assert sorted(name for name, _, _ in SPANS) == ["cpu0", "cpu1"]
        assert eng.local_resources.free == eng.local_resources.capacity
    finally:
        eng.close()


def test_asking_for_more_than_the_machine_has_fails_before_the_run_starts() -> None:
    eng = engine()                                  # detected: no GPU
    try:
        with pytest.raises(ResourceUnavailable, match="needs_gpu asks for gpu 1 GPU") as info:
            gpu_pipe.run(engine=eng)
        assert isinstance(info.value, SchedulingError)
        assert eng.metadata.list_runs() == []       # nothing was started
    finally:
        eng.close()
    eng = engine(gpu=1)
    try:
        assert gpu_pipe.run(engine=eng).value["outputs"]["result"] == "gpu"
        for pipe in (gpu_instance_pipe, gpu_class_pipe):      # class-based components too
            with pytest.raises(ResourceUnavailable, match="asks for gpu 2 GPU"):
                pipe.run(engine=eng)
    finally:
        eng.close()


def test_capacity_from_the_environment_and_detected(monkeypatch) -> None:
    monkeypatch.setenv("TWINGRAPH_LOCAL_RESOURCES", "cpu=8, memory=16Gi, gpu=2")
    assert LocalResources().capacity == (8000, 16 * 2**30, 2)
    monkeypatch.setenv("TWINGRAPH_LOCAL_RESOURCES", "gpu=1")
    cpu, memory, gpu = LocalResources().capacity
    assert cpu >= 1000 and memory > 2**28 and gpu == 1
    for bad in ("cpu", "disk=1", "cpu=-1", "memory=lots"):
        monkeypatch.setenv("TWINGRAPH_LOCAL_RESOURCES", bad)
        with pytest.raises(ConfigurationError):
            LocalResources()
    assert parse_setting("") == {}


def test_amounts_are_read_as_kubernetes_writes_them() -> None:
    assert resource_amounts({"cpu": "500m", "memory": "1Gi", "gpu": True}) == (500, 2**30, 1)
    assert resource_amounts({"cpu": 1.5, "memory": "2G"}) == (1500, 2 * 10**9, 0)
    assert resource_amounts({"memory": "512 MiB"}) == (0, 512 * 2**20, 0)
    assert resource_amounts({}) == (0, 0, 0)
