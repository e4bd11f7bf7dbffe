"""The process pool under things that happen to worker processes from outside: a worker killed
while idle (the OOM killer, an operator) is replaced before a task is handed to it, and a task
stopped by its timeout takes the processes it started with it; and an exception whose class
only the worker can load still reaches the driver with its name, text and traceback.

Real worker processes, a real SQLite-backed engine; the worker is killed with a real SIGKILL.
One test slows the spawn of a new worker (``monkeypatch`` of ``_start_without_main``, which
then sleeps a second before it starts the real process) to hold open the window a loaded
machine gives: a task handed back and waiting for its new worker."""
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


def _second_run_after(tmp_path, lose_worker):
    """Run a one-task pipeline twice on one worker process; ``lose_worker(pid, run_second)``
    does something to the first run's worker and runs the second. The second run must
    succeed on a new worker, in one attempt."""
    @pipeline(name="worker_lost")
    def p(x):
        return b.worker_pid(x)

    eng = _engine(tmp_path)
    try:
        first = p.run(1, engine=eng)
        assert first.state is RunState.SUCCESS, first.error
        pid = first.value["outputs"]["result"]
        second = lose_worker(pid, lambda: p.run(2, engine=eng))
        assert second.state is RunState.SUCCESS, second.error
        (task,) = eng.metadata.get_tasks(second.run_id)
        assert task.state is TaskState.SUCCESS and task.attempts == 1
        assert second.value["outputs"]["result"] != pid      # a new worker ran it
    finally:
        eng.close()


def test_a_worker_killed_while_idle_is_replaced_not_blamed_on_the_next_task(tmp_path):
    """The next task was handed to the dead worker and failed ('worker process ... died')
    although it never ran."""
    def killed_while_idle(pid, run_second):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and \
                open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        return run_second()
    _second_run_after(tmp_path, killed_while_idle)


def test_a_worker_dying_as_it_is_handed_a_task_it_never_read_is_not_blamed_for_it(tmp_path):
    """CI saw the idle check pass while the killed worker's exit was still under way (its
    other threads held the pipe open): the task went into the pipe, and the run failed with
    'worker process ... died' for a task that never started. Here the worker is stopped
    (alive to the check, reading nothing), handed the task, then killed."""
    import threading

    def killed_with_the_task_unread(pid, run_second):
        os.kill(pid, signal.SIGSTOP)
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", run_second()))
        t.start()
        time.sleep(0.8)                  # the task sits unread in the stopped worker's pipe
        os.kill(pid, signal.SIGKILL)
        t.join(30)
        return out["r"]
    _second_run_after(tmp_path, killed_with_the_task_unread)


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
        assert "in raises_a_worker_only_error\n    raise tg_worker_only.WorkerOnlyError(" \
            in logs                                                         # traceback
        assert "\ntg_worker_only.WorkerOnlyError: the worker's own message" in logs
    finally:
        eng.close()


def _run_in_thread(p, eng):
    import threading
    out = {}
    t = threading.Thread(target=lambda: out.update(r=p.run(engine=eng)), daemon=True)
    t.start()
    return t, out


def test_a_pool_shut_down_mid_run_fails_its_jobs_and_the_run_ends(tmp_path):
    """Running jobs' ends were taken for aborts and waiting ones never started: the run
    never ended (under error_handler='continue')."""
    eng = _engine(tmp_path)

    @pipeline(name="pool_shut_down", error_handler="continue", max_parallel=3)
    def p():
        return [b.sleeps_in_process(x=i, delay=5) for i in range(3)]

    try:
        t, out = _run_in_thread(p, eng)
        time.sleep(1.0)
        eng.executors["local"].shutdown()
        t.join(10)
        assert "r" in out, "the run hung"
        tasks = {x.node_id: x for x in eng.metadata.get_tasks(out["r"].run_id)}
        assert {x.state for x in tasks.values()} == {TaskState.FAILED}
        assert all("process pool was shut down" in x.error for x in tasks.values())
    finally:
        eng.close()


def test_an_engine_closed_mid_run_cancels_it_and_the_run_ends(tmp_path):
    """``Engine.close`` closed the recorder first: the run's last flush waited for ever."""
    eng = _engine(tmp_path)

    @pipeline(name="engine_closed", max_parallel=2)
    def p():
        return [b.sleeps_in_process(x=i, delay=5) for i in range(2)]

    t, out = _run_in_thread(p, eng)
    time.sleep(1.0)
    eng.close()
    t.join(10)
    assert "r" in out, "the run hung"
    assert out["r"].state is RunState.CANCELLED


def test_a_tasks_environment_and_directory_do_not_reach_the_next_task(tmp_path):
    """A variable a task set and the directory it moved to were the next task's, in the same
    worker."""
    eng = _engine(tmp_path)                 # one worker: both tasks run in it
    (tmp_path / "elsewhere").mkdir()

    @pipeline(name="worker_state", max_parallel=1)
    def p():
        first = b.changes_worker_state(directory=str(tmp_path / "elsewhere"))
        return first, b.reads_worker_state()     # max_parallel=1: after the first

    try:
        r = p.run(engine=eng)
        assert r.state is RunState.SUCCESS, r.error
        first, (pid, leaked, cwd) = r.value[0]["outputs"]["result"], \
            r.value[1]["outputs"]["result"]
        assert pid == first                 # the same worker
        assert leaked is None and cwd != str(tmp_path / "elsewhere")
    finally:
        eng.close()


def test_a_worker_that_dies_while_a_child_it_forked_lives_is_seen_at_once(tmp_path):
    """The child held the worker's pipe open: its death was seen only when the child ended
    (after 6 s here; never, for one that does not end)."""
    eng = _engine(tmp_path)

    @pipeline(name="forked_child_lives", error_handler="continue")
    def p():
        return b.forks_then_dies(seconds=6)

    try:
        t0 = time.monotonic()
        r = p.run(engine=eng)
        assert time.monotonic() - t0 < 4
        (task,) = eng.metadata.get_tasks(r.run_id)
        assert task.state is TaskState.FAILED and "died" in task.error
    finally:
        eng.close()


def _pid():
    return os.getpid()


def test_a_requeued_task_killed_before_it_starts_again_is_not_kept(monkeypatch):
    """A task handed back from a worker found dead, then killed (its timeout, a cancel) while
    its new worker spawned: the pool kept it, with its inputs, for good."""
    import threading
    import types

    import twingraph.executors.processes as procs
    from twingraph.engine.task import Job
    from twingraph.executors.processes import ProcessPool

    spawn, slow = procs._start_without_main, threading.Event()

    def slow_spawn(proc):                 # a spawn that takes a second, as on a loaded machine
        if slow.is_set():
            time.sleep(1.0)
        return spawn(proc)
    monkeypatch.setattr(procs, "_start_without_main", slow_spawn)

    def job(fn, node, args=()):
        return Job(types.SimpleNamespace(node_id=node, fence=1), fn, args, {}, "process")

    pool = ProcessPool(1)
    try:
        ended, outcomes = threading.Event(), []
        pool.submit(job(_pid, "first"), lambda o: (outcomes.append(o), ended.set()))
        assert ended.wait(30)
        pid = outcomes[0].value
        os.kill(pid, signal.SIGSTOP)                 # alive to the idle check, reads nothing
        second = job(len, "second", (b"x" * 1000,))
        pool.submit(second, lambda o: None)
        time.sleep(0.5)
        slow.set()
        os.kill(pid, signal.SIGKILL)                 # dies with the task unread: handed back
        deadline = time.monotonic() + 5
        while second not in pool._again and time.monotonic() < deadline:
            time.sleep(0.01)
        assert second in pool._again
        time.sleep(0.2)                               # its new worker is being spawned
        assert pool.kill(second) is False             # it had not started
        assert second not in pool._again
    finally:
        pool.shutdown()
    assert not pool._again
