"""The `twingraph` CLI as a user types it (real subprocesses, a fresh TWINGRAPH_HOME)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(tmp_path):
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"), COLUMNS="200")
    env.pop("TWINGRAPH_DATABASE_URL", None)

    def run(*args, ok=True):
        out = subprocess.run([sys.executable, "-m", "twingraph", *args], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        if ok:
            assert out.returncode == 0, out.stdout + out.stderr
        return out
    return run


def _run_id(stdout):
    for line in stdout.splitlines():
        if line.startswith("run "):
            return line.split()[1]
    raise AssertionError(stdout)


def test_run_example_twice_then_inspect(cli):
    first = cli("run", str(ROOT / "examples" / "quickstart.py"), "--param", "n_chunks=4",
                "--no-progress")
    assert '"total": 21253400' in first.stdout and "SUCCESS" in first.stdout
    rid1 = _run_id(first.stdout)
    second = cli("run", str(ROOT / "examples" / "quickstart.py:data_processing_pipeline"),
                 "--param", "n_chunks=4", "--no-progress")
    rid2 = _run_id(second.stdout)
    show = cli("runs", "show", rid2)
    assert show.stdout.count("hit") >= 6 and "process_chunk-3" in show.stdout
    listing = cli("runs", "list")
    assert rid1 in listing.stdout and rid2 in listing.stdout
    logs = cli("runs", "logs", rid1)
    assert logs.returncode == 0


def test_failed_run_exits_non_zero_and_logs_the_error(cli, tmp_path):
    (tmp_path / "bad.py").write_text(
        "from twingraph import component, pipeline\n"
        "@component\ndef boom(x):\n    raise ValueError('no good: ' + str(x))\n"
        "@pipeline\ndef bad():\n    return boom(x=3)\n")
    out = cli("run", str(tmp_path / "bad.py"), "--no-progress", ok=False)
    assert out.returncode == 1 and "no good: 3" in out.stdout
    rid = _run_id(out.stdout)
    logs = cli("runs", "logs", rid, "--level", "error")
    assert "no good: 3" in logs.stdout


def test_usage_errors(cli, tmp_path):
    assert cli("run", str(tmp_path / "missing.py"), ok=False).returncode == 2
    assert cli("runs", "show", "nope", ok=False).returncode == 1
    assert cli("run", str(ROOT / "examples" / "quickstart.py"), "--param", "oops",
               ok=False).returncode == 2


def test_db_upgrade_is_idempotent(cli):
    a = cli("db", "upgrade")
    b = cli("db", "upgrade")
    assert "database at head" in a.stdout and a.stdout == b.stdout


def test_dynamic_execute(cli, tmp_path):
    args = ("dynamic", "execute", str(ROOT / "tests" / "resources" / "dag_example.yaml"),
            "--storage-backend", "filesystem", "--storage-path", str(tmp_path / "store"),
            "--max-concurrent", "2", "--progress", "--load", str(ROOT / "tests" / "resources" / "ops.py"))
    out = cli(*args)
    line = next(l for l in out.stdout.splitlines() if l.startswith("Execution completed: "))
    summary = json.loads(line.split(": ", 1)[1])
    assert summary["status"] == "completed"
    assert summary["results"] == {"total": (0 + 1 + 4 + 9 + 16 + 25) + 15 + 1}
    assert "progress 100%" in out.stdout
    assert (tmp_path / "store" / "metadata").is_dir()


def test_dynamic_execute_rejects_bad_dags(cli, tmp_path):
    (tmp_path / "cycle.json").write_text(json.dumps({"nodes": [
        {"id": "a", "operation": "square_all", "arguments": ["b"]},
        {"id": "b", "operation": "square_all", "arguments": ["a"]}]}))
    out = cli("dynamic", "execute", str(tmp_path / "cycle.json"), "--storage-path",
              str(tmp_path / "s"), "--load", str(ROOT / "tests" / "resources" / "ops.py"), ok=False)
    assert out.returncode == 2 and "cycle: a, b" in out.stdout
    out = cli("dynamic", "execute", str(ROOT / "tests" / "resources" / "dag_example.yaml"),
              "--storage-path", str(tmp_path / "s"), ok=False)        # no --load: unknown ops
    assert out.returncode == 2 and "unknown operations" in out.stdout


def test_ctrl_c_cancels_and_records_the_run(tmp_path):
    import signal
    import time
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"), TG_MARKS=str(tmp_path))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "twingraph", "run",
                             str(ROOT / "tests" / "resources" / "crashy.py"), "--param", "n=40",
                             "--param", "delay=1", "--no-progress"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("*.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    from twingraph.core.states import RunState
    from twingraph.stores.metadata import SQLMetadataStore
    store = SQLMetadataStore(f"sqlite:///{tmp_path / 'home' / 'twingraph.db'}")
    (run,) = store.list_runs()
    assert run.state is RunState.CANCELLED
    store.close()
