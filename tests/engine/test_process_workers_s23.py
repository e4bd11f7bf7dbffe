"""Process tasks run as a thread task would, from what the driver is now (session 23 review):
- a worker kept the environment variables and working directory of the driver as they were
  when the worker started, so a task after an ``os.environ[...] =`` or ``os.chdir`` in the
  driver read the old ones (a thread task, or a plain call, read the new);
- a worker could not start processes (``multiprocessing.Pool``, ``ProcessPoolExecutor``):
  "daemonic processes are not allowed to have children".
Real worker processes; no mocks."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

from twingraph import component, pipeline


@component(cache=False, executor="process", timeout=60)
def where(tag: str) -> list:
    return [os.environ.get("TWINGRAPH_S23_TOKEN"), os.getcwd(), tag]


@component(cache=False, executor="process", timeout=60, environment={"TWINGRAPH_S23_MINE": "m"})
def where_with_env(tag: str) -> list:
    return [os.environ.get("TWINGRAPH_S23_TOKEN"), os.environ.get("TWINGRAPH_S23_MINE"),
            os.getcwd()]


@pipeline(name="process_caller_s23", max_parallel=1)
def where_now(tag: str):
    return [where(tag=tag)["outputs"]["result"], where_with_env(tag=tag)["outputs"]["result"]]


def test_a_process_task_sees_the_drivers_environment_and_directory_as_they_are_now(
        engine, tmp_path, monkeypatch):
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    monkeypatch.setenv("TWINGRAPH_S23_TOKEN", "one")
    r = where_now.run(engine=engine, tag="a")
    assert r.error is None, r.error
    assert r.value == [["one", str(first), "a"], ["one", "m", str(first)]]
    monkeypatch.chdir(second)                           # the same workers, reused
    monkeypatch.setenv("TWINGRAPH_S23_TOKEN", "two")
    r = where_now.run(engine=engine, tag="b")
    assert r.error is None, r.error
    assert r.value == [["two", str(second), "b"], ["two", "m", str(second)]]
    monkeypatch.delenv("TWINGRAPH_S23_TOKEN")
    r = where_now.run(engine=engine, tag="c")
    assert r.value[0][0] is None and r.value[1][:2] == [None, "m"]


def _square(x: int) -> int:
    return x * x


@component(cache=False, executor="process", timeout=120)
def squares_in_processes(n: int) -> int:
    import multiprocessing
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        return sum(pool.map(_square, range(n)))


@pipeline(name="process_children_s23")
def children(n: int):
    return squares_in_processes(n=n)


def test_a_process_task_may_start_processes_of_its_own(engine):
    r = children.run(engine=engine, n=10)
    assert r.error is None, r.error
    assert r.value["outputs"]["result"] == 285


@component(cache=False, executor="process", timeout=60)
def leaves_a_removed_directory(tag: str) -> str:
    import shutil
    import tempfile
    gone = tempfile.mkdtemp()
    os.chdir(gone)
    shutil.rmtree(gone)
    return tag


@component(cache=False, executor="process", timeout=60)
def reads_relative(tag: str) -> str:
    with open("data.txt") as f:
        return f.read() + tag


@pipeline(name="removed_cwd_s23", max_parallel=1)
def removed_cwd():
    first = leaves_a_removed_directory(tag="a")
    return reads_relative(tag=first["outputs"]["result"])["outputs"]["result"]


def test_a_worker_goes_back_to_the_drivers_directory_after_a_task_removed_its_own(
        tmp_path, monkeypatch):
    """``os.getcwd()`` raised in the removed directory, so the worker never went back: the
    next task there could not open a relative path."""
    from twingraph.engine.engine import Engine
    from twingraph.executors.local import LocalExecutor
    from twingraph.stores.metadata import MemoryMetadataStore
    from twingraph.stores.results.memory import MemoryStorage
    (tmp_path / "data.txt").write_text("here-")
    monkeypatch.chdir(tmp_path)
    eng = Engine(results=MemoryStorage(), metadata=MemoryMetadataStore(),
                 executor=LocalExecutor(max_processes=1))          # one worker: both tasks
    try:
        r = removed_cwd.run(engine=eng)
        assert r.error is None, r.error
        assert r.value == "here-a"
    finally:
        eng.close()
