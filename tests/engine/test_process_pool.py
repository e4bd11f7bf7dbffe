"""The process pool under things that happen to worker processes from outside: a worker killed
while idle (the OOM killer, an operator) is replaced before a task is handed to it, and a task
stopped by its timeout takes the processes it started with it; and an exception whose class
only the worker can load still reaches the driver with its name, text and traceback.

Real worker processes, a real SQLite-backed engine; the worker is killed with a real SIGKILL."""
import os
import signal
import time

from twingraph import pipeline
from twingraph.core.states import RunState, TaskState
from twingraph.executors.local import LocalExecutor

from tests.resources import behaviours as b


def _engine(tmp_path):
    from twingraph.engine.engine import Engine
    from twingraph.stores.metadata import SQLMetadataStore
    from twingraph.stores.results.sqlite import SQLiteStorage
    return Engine(results=SQLiteStorage(str(tmp_path / "r.db")),
                  metadata=SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True),
                  flush_interval=0.01, executor=LocalExecutor(max_processes=1))


def test_a_worker_killed_while_idle_is_replaced_not_blamed_on_the_next_task(tmp_path):
    """The next task was handed to the dead worker and failed ('worker process ... died')
    although it never ran."""
    @pipeline(name="idle_worker_killed")
    def p(x):
        return b.worker_pid(x)

    eng = _engine(tmp_path)
    try:
        first = p.run(1, engine=eng)
        assert first.state is RunState.SUCCESS, first.error
        pid = first.value["outputs"]["result"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and \
                open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = p.run(2, engine=eng)
        assert second.state is RunState.SUCCESS, second.error
        (task,) = eng.metadata.get_tasks(second.run_id)
        assert task.state is TaskState.SUCCESS and task.attempts == 1
        assert second.value["outputs"]["result"] != pid      # a new worker ran it
    finally:
        eng.close()


def test_a_task_stopped_by_its_timeout_takes_what_it_started_with_it(tmp_path):
    """The worker was killed, but a command its task had started went on (re-parented) and
    did the task's work after the task was reported stopped."""
    marker = tmp_path / "written-after-the-timeout"

    @pipeline(name="tool_past_timeout", error_handler="continue")
    def p():
        return b.runs_a_slow_tool(str(marker))

    eng = _engine(tmp_path)
    try:
        r = p.run(engine=eng)
        (task,) = eng.metadata.get_tasks(r.run_id)
        assert task.state is TaskState.FAILED and "TaskTimeout" in task.error
        time.sleep(4.5)                  # past the time the command would have written it
        assert not marker.exists()
    finally:
        eng.close()


def test_an_exception_the_driver_cannot_load_keeps_its_name_text_and_retries(tmp_path):
    """Its class lives in a module only the worker imports: the driver could not unpickle
    the answer and reported 'the result could not be read: ModuleNotFoundError', without
    the message or traceback, and the retry policy naming the class never matched."""
    @pipeline(name="worker_only_error", error_handler="continue")
    def p():
        return b.raises_a_worker_only_error(str(tmp_path))

    eng = _engine(tmp_path)
    try:
        r = p.run(engine=eng)
        (task,) = eng.metadata.get_tasks(r.run_id)
        assert task.state is TaskState.FAILED and task.attempts == 2       # retried by name
        assert "WorkerOnlyError: the worker's own message" in task.error
        logs = "\n".join(l.message for l in eng.metadata.get_logs(r.run_id, level="error"))
        assert "in raises_a_worker_only_error\ntg_worker_only.WorkerOnlyError" in logs   # traceback
    finally:
        eng.close()
