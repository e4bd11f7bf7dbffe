"""A run whose loop is busy keeps proving its driver alive. A body that submitted a million
tasks held the loop in one turn for 22 s (it took in every submitted task before anything
else), and heartbeats travelled behind the run's records in the write-behind queue: the live
run's heartbeat grew 30 s old, and ``runs cancel`` / ``--resume`` took it over (review,
session 21). ``monkeypatch`` only shortens the heartbeat interval and the intake per turn,
and wraps ``_take_submitted`` to see what each turn took; the stores are real SQLite files."""
from __future__ import annotations

import time

from twingraph import component, pipeline
from twingraph.core.states import RunState
from twingraph.engine import loop as loop_module
from twingraph.engine import timers
from twingraph.engine.engine import Engine
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.results.sqlite import SQLiteStorage


def _engine(tmp_path, **kw):
    return Engine(results=SQLiteStorage(tmp_path / "results.db"),
                  metadata=SQLMetadataStore(f"sqlite:///{tmp_path}/tg.db", create=True), **kw)


@component(cache=False)
def noop(i):
    return i


def test_heartbeats_do_not_wait_for_the_records_flush(tmp_path, monkeypatch):
    """The recorder writes every 30 s here; the heartbeat is written at once all the same."""
    monkeypatch.setattr(timers, "HEARTBEAT_INTERVAL", 0.1)
    monkeypatch.setattr(loop_module, "HEARTBEAT_INTERVAL", 0.1)     # the idle loop's wake-up
    eng = _engine(tmp_path, flush_interval=30.0)
    seen = []

    @pipeline(name="beats_apart")
    def p():
        from twingraph.engine.engine import current_run
        run_id = current_run().run_id
        eng.recorder.flush()            # the run's own record: written now, its beats not
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            run = eng.metadata.get_run(run_id)
            if run is not None and run.heartbeat_at and run.heartbeat_at > run.created_at:
                seen.append(run.heartbeat_at - run.created_at)
                break
            time.sleep(0.05)
        return noop(i=1)

    try:
        r = p.run(engine=eng)
        assert r.state is RunState.SUCCESS, r.error
        assert seen and seen[0] < 5, "no heartbeat was written while the run went on"
    finally:
        eng.close()


def test_a_turn_of_the_loop_takes_in_a_bounded_number_of_submitted_tasks(tmp_path, monkeypatch):
    monkeypatch.setattr(loop_module, "TAKE_MAX", 7)
    took = []
    original = loop_module.RunLoop._take_submitted

    def counting(self):
        before = len(self.submitted)
        original(self)
        took.append(before - len(self.submitted))
    monkeypatch.setattr(loop_module.RunLoop, "_take_submitted", counting)
    eng = _engine(tmp_path)

    @pipeline(name="bounded_intake", max_parallel=4)
    def p():
        return [noop(i=i) for i in range(200)]

    try:
        r = p.run(engine=eng)
        assert r.state is RunState.SUCCESS, r.error
        assert [x["outputs"]["result"] for x in r.value] == list(range(200))
        assert sum(took) == 200 and max(took) <= 7
    finally:
        eng.close()
