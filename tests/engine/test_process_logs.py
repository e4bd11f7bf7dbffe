"""Tasks in worker processes: what they log through get_logger() is recorded with their task,
as it is emitted (a task killed by its timeout keeps what it logged before)."""
import os
import time

import pytest

from twingraph import pipeline
from twingraph.core.states import RunState

from tests.resources import behaviours as b


def test_process_task_logs_are_recorded_with_their_task(engine):
    @pipeline(name="process_logs")
    def p():
        return [b.logs_in_process(n=i) for i in range(2)]

    r = p.run(engine=engine)
    assert r.state is RunState.SUCCESS, r.error
    logs = engine.metadata.get_logs(r.run_id, node_id="logs_in_process-1")
    messages = [l.message for l in logs]
    first = messages[0]
    assert first.startswith("child 1 starts in pid ") and int(first.rsplit(" ", 1)[1]) != os.getpid()
    # every line from every thread of the child arrives whole, none mixed up or lost
    assert sorted(m for m in messages if m.startswith("thread ")) == sorted(
        f"thread {i} line {j}" for i in range(3) for j in range(20))
    err = [l for l in logs if l.level == "error"]
    assert len(err) == 1 and err[0].message.startswith("caught it\nTraceback")
    assert "ValueError: inner" in err[0].message
    other = engine.metadata.get_logs(r.run_id, node_id="logs_in_process-0")
    assert other and all(l.node_id == "logs_in_process-0" for l in other)


def test_a_killed_process_task_keeps_what_it_logged(engine):
    @pipeline(name="process_logs_killed")
    def p():
        return b.logs_then_hangs(n=1)

    r = p.run(engine=engine)
    assert r.state is RunState.FAILED
    logs = engine.metadata.get_logs(r.run_id, node_id="logs_then_hangs-0")
    assert [(l.level, l.message) for l in logs if l.level == "warning"] == [
        ("warning", "about to hang")]


def test_environment_is_applied_in_the_tasks_own_process(engine):
    """environment= needs a process of its own (threads share os.environ): 'auto' picks one,
    the task sees its variables, and the driver's environment is left alone."""
    import pytest

    from twingraph import component
    from twingraph.errors import ValidationError

    @pipeline(name="env_pipe")
    def p():
        return [b.reads_environment(x=i) for i in range(2)]

    r = p.run(engine=engine)
    assert r.state is RunState.SUCCESS, r.error
    for ref in r.value:
        out = ref["outputs"] if "outputs" in ref else ref
        assert out["var"] == "from-the-component" and out["home"] == "/tg-home"
        assert out["pid"] != os.getpid()
    assert os.environ.get("TG_TASK_VAR") is None and os.environ.get("HOME") != "/tg-home"
    with pytest.raises(ValidationError, match="environment"):
        component(executor="thread", environment={"A": "1"})(lambda: 1)


def test_a_variable_that_cannot_be_set_leaves_no_other_behind_in_the_worker():
    """A task whose environment cannot be set in full fails, and what was set before the failing
    variable is restored: the next task in the same worker process does not see it."""
    from twingraph.engine.engine import Engine
    from twingraph.executors.local import LocalExecutor
    from twingraph.stores.metadata import MemoryMetadataStore
    from twingraph.stores.results.memory import MemoryStorage

    eng = Engine(results=MemoryStorage(), metadata=MemoryMetadataStore(), flush_interval=0.01,
                 executor=LocalExecutor(max_processes=1))       # one worker: both tasks in it
    try:
        @pipeline(name="env_unsettable", error_handler="continue", max_parallel=1)
        def p():
            b.environment_cannot_be_set()
            return b.reads_leaked_variable()

        r = p.run(engine=eng)
        tasks = {t.node_id: t for t in eng.metadata.get_tasks(r.run_id)}
        assert tasks["environment_cannot_be_set-0"].state.name == "FAILED"
        assert "UnicodeEncodeError" in tasks["environment_cannot_be_set-0"].error

        @pipeline(name="env_after")
        def q():
            return b.reads_leaked_variable()

        later = q.run(engine=eng)
        assert later.state is RunState.SUCCESS, later.error
        out = later.value["outputs"]
        assert out["var"] is None and out["pid"] != os.getpid()
    finally:
        eng.close()
    assert os.environ.get("TG_LEAKED_VAR") is None


def _one_worker_engine():
    from twingraph.engine.engine import Engine
    from twingraph.executors.local import LocalExecutor
    from twingraph.stores.metadata import MemoryMetadataStore
    from twingraph.stores.results.memory import MemoryStorage
    return Engine(results=MemoryStorage(), metadata=MemoryMetadataStore(), flush_interval=0.01,
                  executor=LocalExecutor(max_processes=1))


@pytest.mark.parametrize("pause, second_takes", [(0.0, 1.0), (1.0, 0.1)],
                         ids=["logs-during-the-next-task", "logs-while-the-worker-is-idle"])
def test_a_line_from_an_earlier_tasks_thread_is_not_credited_to_the_next_task(pause, second_takes):
    """A thread the first task left running logged while the worker ran the next task, or
    while it was idle (the frame waited in the pipe): the line was recorded as the next
    task's."""
    @pipeline(name="leaves_thread")
    def first():
        return b.leaves_a_logging_thread(1)

    @pipeline(name="runs_after")
    def second():
        return b.waits_quietly(second_takes)

    eng = _one_worker_engine()
    try:
        a = first.run(engine=eng)
        time.sleep(pause)            # the thread logs 0.4 s after the first task
        r = second.run(engine=eng)
        assert r.value["outputs"]["result"] == a.value["outputs"]["result"]   # same worker
        messages = [l.message for l in eng.metadata.get_logs(r.run_id)]
        assert messages == ["my own line"]
    finally:
        eng.close()


def test_a_pool_made_by_one_task_logs_for_the_task_that_uses_it():
    """A module-level thread pool, made by the first task and used by the second: what the
    second's work items log is the second's (it was dropped, once threads were tagged with
    the task that started them)."""
    @pipeline(name="shared_pool")
    def p(i):
        return b.logs_through_a_shared_pool(i)

    eng = _one_worker_engine()
    try:
        runs = [p.run(i, engine=eng) for i in (1, 2)]
        assert runs[0].value["outputs"]["result"] == runs[1].value["outputs"]["result"]  # one pool
        for i, r in zip((1, 2), runs):
            messages = sorted(l.message for l in eng.metadata.get_logs(r.run_id))
            assert messages == [f"task {i} part {k}" for k in range(4)]
    finally:
        eng.close()
