"""kill -9 a real `twingraph run` half-way, then `twingraph run --resume RUN_ID`."""
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from twingraph.core.states import RunState, TaskState
from twingraph.stores.metadata import SQLMetadataStore

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "tests" / "resources" / "crashy.py"


def _env(tmp_path, marks):
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"), TG_MARKS=str(marks))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    return env


def _cli(*args):
    return [sys.executable, "-m", "twingraph", *args]


def _children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _crashy_started(tmp_path, executed, **env_extra):
    """`twingraph run` of the crashy pipeline (12 steps), once ``executed`` steps have run."""
    marks = tmp_path / "marks"
    marks.mkdir()
    env = dict(_env(tmp_path, marks), **env_extra)
    proc = subprocess.Popen(_cli("run", str(PIPELINE), "--param", "n=12", "--no-progress"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while len(list(marks.iterdir())) < executed:
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return proc, env, marks


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["thread", "process"])
def test_kill_minus_nine_then_resume(tmp_path, writer):
    """... with the recorder writing in this process or in its writer process (decision
    0012), which ends when its parent is killed."""
    proc, env, marks = _crashy_started(tmp_path, 6, TWINGRAPH_WRITER=writer)
    time.sleep(0.1)           # let the write-behind flush some finished tasks
    writers = [c for c in _children(proc.pid)
               if b"writer_child" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(writers) == (writer == "process")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in writers):        # it ends with its parent
        assert time.monotonic() < deadline, "the writer process outlived its parent"
        time.sleep(0.05)

    store = SQLMetadataStore(f"sqlite:///{tmp_path / 'home' / 'twingraph.db'}")
    (run,) = store.list_runs(pipeline="crashy")
    assert run.state is RunState.RUNNING          # died without recording an end
    before = {t.node_id: t for t in store.get_tasks(run.run_id)}
    done_before = {n for n, t in before.items() if t.state is TaskState.SUCCESS}
    assert 0 < len(done_before) < 12
    executed_before = Counter(p.name.split(".")[0] for p in marks.iterdir())

    out = subprocess.run(_cli("run", "--resume", run.run_id, "--no-progress"), env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "506" in out.stdout

    executed = Counter(p.name.split(".")[0] for p in marks.iterdir())
    for node in done_before:                      # recorded results were not recomputed
        i = node.split("-")[1]
        assert executed[i] == executed_before[i] == 1, node
    assert set(executed) == {str(i) for i in range(12)}
    after = {t.node_id: t for t in store.get_tasks(run.run_id)}
    assert store.get_run(run.run_id).state is RunState.SUCCESS
    assert all(t.state is TaskState.SUCCESS for t in after.values())
    assert {after[n].cache_status for n in done_before} == {"resumed"}
    # every re-executed attempt carries a higher fence than anything recorded before, and a
    # number after the earlier driver's attempts (whose rows stay)
    for n, t in after.items():
        if n not in done_before and n in before:
            assert t.fence > before[n].fence
            assert t.attempts > before[n].attempts or t.cache_status == "hit"
    # what the killed driver left RUNNING ended FAILED: no attempt stays RUNNING for ever
    attempts = store.get_attempts(run.run_id)
    assert attempts and not [a for a in attempts if a.state is TaskState.RUNNING]
    stale = [a for a in attempts if a.error and "driver stopped" in a.error]
    assert len(stale) == sum(t.state is TaskState.RUNNING for t in before.values())
    store.close()


@pytest.mark.slow
def test_two_resumes_of_one_killed_run_at_once_drive_it_once(tmp_path):
    """Both resumes waited for the dead driver's heartbeat to go stale, then both claimed the
    run and ran every remaining task. The claim is a compare-and-set on the heartbeat: one
    drives, the other is refused (exit 2) and runs nothing."""
    import sqlite3

    proc, env, marks = _crashy_started(tmp_path, 4)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    db = tmp_path / "home" / "twingraph.db"
    with sqlite3.connect(db) as conn:         # long dead: neither resume has to wait
        conn.execute("UPDATE runs SET heartbeat_at = heartbeat_at - 60")
    conn.close()
    store = SQLMetadataStore(f"sqlite:///{db}")
    (run,) = store.list_runs(pipeline="crashy")
    executed_before = Counter(p.name.split(".")[0] for p in marks.iterdir())
    # A killed driver's run stays RUNNING; runs show says its driver is gone, and what to do
    shown = subprocess.run(_cli("runs", "show", run.run_id), env=dict(env, COLUMNS="300"),
                           capture_output=True, text=True, timeout=60)
    assert "has stopped (killed or crashed); finish it with `twingraph run --resume " \
        f"{run.run_id}`" in shown.stdout, shown.stdout + shown.stderr

    both = [subprocess.Popen(_cli("run", "--resume", run.run_id, "--no-progress"), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in both]
    codes = sorted(p.returncode for p in both)
    assert codes == [0, 2], outs
    refused = outs[[p.returncode for p in both].index(2)]
    # claimed meanwhile; or it came later and saw the other's heartbeat move; or later still,
    # the run had finished
    assert any(why in refused for why in ("another driver", "still being driven",
                                          "already finished")), refused
    executed = Counter(p.name.split(".")[0] for p in marks.iterdir())
    # each step ran at most once more than before the kill (the ones it interrupted)
    assert all(executed[i] - executed_before[i] <= 1 for i in executed), (executed, executed_before)
    assert set(executed) == {str(i) for i in range(12)}
    assert store.get_run(run.run_id).state is RunState.SUCCESS
    store.close()


def test_worker_processes_end_with_their_killed_driver(tmp_path):
    """A process task's worker notices its driver is gone (kill -9) and ends, instead of
    running its task on, unrecorded (it would run again on resume)."""
    pidfile = tmp_path / "worker.pid"
    script = tmp_path / "sleepy.py"
    script.write_text(
        "import os, time\n"
        "from twingraph import component, pipeline\n\n"
        "@component(executor='process')\n"
        "def sleepy(path):\n"
        "    open(path, 'w').write(str(os.getpid()))\n"
        "    time.sleep(60)\n"
        "    return 1\n\n"
        "@pipeline(name='sleepy')\n"
        "def main(path: str):\n"
        "    return sleepy(path=path)\n")
    proc = subprocess.Popen(_cli("run", str(script), "--param", f"path={pidfile}",
                                 "--no-progress"), env=_env(tmp_path, tmp_path / "marks"))
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and pidfile.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)
    worker = int(pidfile.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    pytest.fail(f"worker {worker} outlived its killed driver by 10 s")


@pytest.mark.slow
def test_resuming_a_run_whose_driver_is_alive_is_refused(tmp_path):
    """Two drivers would run the same tasks twice: `--resume` of a run whose driver still
    writes heartbeats is refused (ConflictError, exit 2) and changes nothing."""
    script = tmp_path / "long.py"
    script.write_text(
        "import time\n"
        "from twingraph import component, pipeline\n\n"
        "@component(executor='thread')\n"
        "def nap(i):\n"
        "    time.sleep(0.5)\n"
        "    return i\n\n"
        "@pipeline(name='long', max_parallel=1)\n"
        "def main():\n"
        "    return [nap(i=i) for i in range(120)]\n")
    env = _env(tmp_path, tmp_path / "marks")
    proc = subprocess.Popen(_cli("run", str(script), "--no-progress"), env=env)
    try:
        db = tmp_path / 'home' / 'twingraph.db'
        deadline = time.monotonic() + 60
        runs = []
        meta = None
        while not runs:
            assert proc.poll() is None and time.monotonic() < deadline, "the run never started"
            time.sleep(0.2)
            try:          # the driver may still be creating and migrating the database
                meta = meta or SQLMetadataStore(f"sqlite:///{db}")
                runs = meta.list_runs(pipeline="long")
            except Exception:  # noqa: BLE001
                meta, runs = None, []
        run_id = runs[0].run_id
        t0 = time.monotonic()
        out = subprocess.run(_cli("run", "--resume", run_id, "--no-progress"), env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "still being driven" in out.stdout + out.stderr
        assert "not resuming it twice" in out.stderr
        # its driver holds the run's lock (decision 0089): refused at once, with no wait
        # to explain (the wait was ~11 s of silence before)
        assert "making sure its driver is gone" not in out.stderr
        assert time.monotonic() - t0 < 8
        cancel = subprocess.run(_cli("runs", "cancel", run_id), env=env,
                                capture_output=True, text=True, timeout=120)
        assert cancel.returncode == 2, cancel.stdout + cancel.stderr
        # it said "not resuming it twice -- cancel it", to the cancel command
        assert "only a run whose driver is gone can be ended this way" in cancel.stderr
        assert "resuming" not in cancel.stderr
        assert time.monotonic() - t0 < 60
        assert proc.poll() is None           # the live driver goes on
        assert meta.get_run(run_id).state is RunState.RUNNING
    finally:
        proc.kill()
        proc.wait()


def test_process_tasks_work_from_a_script_without_a_main_guard(tmp_path):
    """`python script.py` that runs a pipeline at top level (no `if __name__ == "__main__"`):
    worker processes must not run the script again."""
    count = tmp_path / "count.txt"
    script = tmp_path / "noguard.py"
    script.write_text(
        "import os\n"
        "from twingraph import component, pipeline\n\n"
        "with open(os.environ['TG_COUNT'], 'a') as f:\n"
        "    f.write('top-level ran\\n')\n\n"
        "@component(executor='process')\n"
        "def square(x):\n"
        "    return {'y': x * x, 'pid': os.getpid()}\n\n"
        "@pipeline(name='noguard')\n"
        "def main():\n"
        "    return [square(x=i) for i in range(3)]\n\n"
        "result = main.run()\n"
        "print('STATE', result.state.value, [r['outputs']['y'] for r in result.value])\n")
    env = dict(_env(tmp_path, tmp_path / "marks"), TG_COUNT=str(count))
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert "STATE SUCCESS [0, 1, 4]" in out.stdout, out.stdout + out.stderr
    assert count.read_text().count("top-level ran") == 1


SLOW_OPS = '''
import os, time
from pathlib import Path
from twingraph import operation

@operation
def step(deps, params):
    Path(os.environ["TG_MARKS"], str(params["i"])).touch()
    time.sleep(params["s"])
    return params["i"]
'''


@pytest.mark.slow
def test_a_killed_dag_run_is_ended_with_runs_cancel(tmp_path):
    """A DAG run cannot be resumed; killed, it stayed RUNNING for ever. `runs cancel` ends
    it (run and unfinished tasks CANCELLED, what finished kept), and refuses a run that has
    ended."""
    import json
    import sqlite3

    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "ops.py").write_text(SLOW_OPS)
    nodes = [{"id": f"s{i}", "operation": "step", "parameters": {"i": i, "s": 0.05 if i < 2 else 5},
              "arguments": [f"s{i - 1}"] if i else []} for i in range(4)]
    (tmp_path / "dag.json").write_text(json.dumps({"dag_id": "killed_dag", "nodes": nodes}))
    env = _env(tmp_path, marks)
    proc = subprocess.Popen(_cli("dynamic", "execute", str(tmp_path / "dag.json"),
                                 "--storage-path", str(tmp_path / "store"),
                                 "--load", str(tmp_path / "ops.py")),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not (marks / "2").exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)                       # s0 and s1 recorded
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    db = tmp_path / "home" / "twingraph.db"
    with sqlite3.connect(db) as conn:     # long dead
        conn.execute("UPDATE runs SET heartbeat_at = heartbeat_at - 60")
    conn.close()
    store = SQLMetadataStore(f"sqlite:///{db}")
    (run,) = store.list_runs()
    assert run.state is RunState.RUNNING

    shown = subprocess.run(_cli("runs", "show", run.run_id), env=dict(env, COLUMNS="300"),
                           capture_output=True, text=True, timeout=60)
    assert f"`twingraph runs cancel {run.run_id}` ends this one" in shown.stdout, shown.stdout
    out = subprocess.run(_cli("runs", "cancel", run.run_id[:8]), env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "CANCELLED" in out.stdout, out.stdout + out.stderr
    after = store.get_run(run.run_id)
    assert after.state is RunState.CANCELLED and "driver was gone" in after.error
    tasks = {t.node_id: t.state for t in store.get_tasks(run.run_id)}
    assert tasks["s0"] is TaskState.SUCCESS and tasks["s1"] is TaskState.SUCCESS
    assert all(tasks[n] is TaskState.CANCELLED for n in tasks if n not in ("s0", "s1")), tasks
    assert not [a for a in store.get_attempts(run.run_id) if a.state is TaskState.RUNNING]
    again = subprocess.run(_cli("runs", "cancel", run.run_id), env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 2 and "is CANCELLED" in again.stderr, again.stderr
    store.close()


def _two_engines(tmp_path):
    """Two engines on one SQLite metadata and result store, as two processes would be: the
    first drives a run, the second looks at it from outside."""
    from twingraph.engine.engine import Engine
    from twingraph.stores.results.sqlite import SQLiteStorage
    url = f"sqlite:///{tmp_path / 'm.db'}"
    a = Engine(results=SQLiteStorage(str(tmp_path / "r.db")),
               metadata=SQLMetadataStore(url, create=True), flush_interval=0.01)
    b = Engine(results=SQLiteStorage(str(tmp_path / "r.db")), metadata=SQLMetadataStore(url),
               flush_interval=0.01)
    return a, b


@pytest.mark.slow
def test_ending_a_run_whose_driver_is_alive_is_refused(tmp_path):
    """By the engine driving it (cancel it instead) and by another process's engine, which
    sees the heartbeat move and touches nothing."""
    import threading

    from twingraph import component, pipeline
    from twingraph.errors import ConflictError

    release = threading.Event()

    @component(cache=False)
    def waits():
        release.wait(20)
        return 1

    @pipeline(name="alive")
    def p():
        return waits()

    a, b = _two_engines(tmp_path)
    try:
        t = threading.Thread(target=p.run, kwargs={"engine": a})
        t.start()
        deadline = time.monotonic() + 10
        while not a.runs:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (run_id,) = a.runs
        with pytest.raises(ConflictError, match="driven by this process"):
            a.end_driverless(run_id)
        while b.metadata.get_run(run_id) is None:      # its first rows are written behind
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(ConflictError, match="still being driven"):
            b.end_driverless(run_id)
        release.set()
        t.join(10)
        assert a.metadata.get_run(run_id).state is RunState.SUCCESS
    finally:
        release.set()
        a.close()
        b.close()


@pytest.mark.slow
def test_a_run_waiting_for_its_error_handler_still_beats(tmp_path):
    """After its loop ended the run waited for a slow error handler without a heartbeat: past
    the live window another process took it for dead and ended it CANCELLED while its own
    driver was still finishing it."""
    import threading

    from twingraph import component, pipeline
    from twingraph.engine.engine import LIVE_WINDOW
    from twingraph.errors import ConflictError

    @component(cache=False)
    def breaks(x):
        raise ValueError("bad")

    @pipeline(name="slow_handler_beats", error_handler="custom",
              error_config={"handler": lambda info: time.sleep(LIVE_WINDOW + 2),
                            "continue_on_error": True})
    def p():
        return breaks(1)

    a, b = _two_engines(tmp_path)
    try:
        t = threading.Thread(target=p.run, kwargs={"engine": a})
        t.start()
        deadline = time.monotonic() + 10
        while not b.metadata.list_runs(pipeline="slow_handler_beats"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (run,) = b.metadata.list_runs(pipeline="slow_handler_beats")
        with pytest.raises(ConflictError, match="still being driven"):
            b.end_driverless(run.run_id)
        t.join(30)
        assert b.metadata.get_run(run.run_id).state is RunState.FAILED
    finally:
        a.close()
        b.close()


@pytest.mark.slow
def test_a_heartbeat_stamped_ahead_of_this_clock_is_watched_for_the_window_only(tmp_path):
    """A driver whose clock ran an hour fast left a heartbeat in this process's future: a
    resume or `runs cancel` watched it for ever (the wait ended only once it looked old)."""
    from twingraph.core.records import RunRecord
    from twingraph.engine.engine import LIVE_WINDOW, Engine
    from twingraph.stores.results.sqlite import SQLiteStorage

    store = SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True)
    now = time.time()
    store.write([RunRecord("ahead", "p", RunState.RUNNING, created_at=now, started_at=now,
                           heartbeat_at=now + 3600)])
    eng = Engine(results=SQLiteStorage(str(tmp_path / "r.db")), metadata=store,
                 flush_interval=0.01)
    try:
        t0 = time.monotonic()
        assert eng.end_driverless("ahead") is RunState.CANCELLED
        assert time.monotonic() - t0 < LIVE_WINDOW + 3
    finally:
        eng.close()
