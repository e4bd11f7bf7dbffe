"""The `twingraph` CLI as a user types it (real subprocesses, a fresh TWINGRAPH_HOME)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(tmp_path):
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"), COLUMNS="200")
    env.pop("TWINGRAPH_DATABASE_URL", None)

    def run(*args, ok=True, columns=None):
        out = subprocess.run([sys.executable, "-m", "twingraph", *args],
                             env=env if columns is None else dict(env, COLUMNS=str(columns)),
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
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
    assert out.returncode == 1 and "no good: 3" in out.stderr        # errors on stderr
    rid = _run_id(out.stdout)
    logs = cli("runs", "logs", rid, "--level", "error")
    assert "no good: 3" in logs.stdout
    # a node the run does not have: an error naming the ones it has (it printed nothing, 0)
    typo = cli("runs", "logs", rid, "--node", "bom-0", ok=False)
    assert typo.returncode == 2 and "has no task 'bom-0'; did you mean boom-0?" in typo.stderr


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


def test_the_readme_operations_file_registers_its_operations(cli, tmp_path):
    """The README's ``my_operations.py`` (``from twingraph import operation``)."""
    readme = (ROOT / "README.md").read_text()
    ops = readme.split("`my_operations.py`:\n\n```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_operations.py").write_text(ops + "\n\n@operation('numbers')\n"
                                               "def numbers(deps, params):\n"
                                               "    return list(range(params['n']))\n")
    (tmp_path / "dag.yaml").write_text("nodes:\n  - id: numbers\n    operation: numbers\n"
                                       "    parameters: {n: 4}\n  - id: sq\n"
                                       "    operation: square_all\n    arguments: [numbers]\n")
    out = cli("dynamic", "execute", str(tmp_path / "dag.yaml"), "--storage-path",
              str(tmp_path / "s"), "--load", str(tmp_path / "my_operations.py"))
    line = next(l for l in out.stdout.splitlines() if l.startswith("Execution completed: "))
    assert json.loads(line.split(": ", 1)[1])["results"] == {"sq": [0, 1, 4, 9]}


def test_dynamic_execute_rejects_bad_dags(cli, tmp_path):
    (tmp_path / "cycle.json").write_text(json.dumps({"nodes": [
        {"id": "a", "operation": "square_all", "arguments": ["b"]},
        {"id": "b", "operation": "square_all", "arguments": ["a"]}]}))
    out = cli("dynamic", "execute", str(tmp_path / "cycle.json"), "--storage-path",
              str(tmp_path / "s"), "--load", str(ROOT / "tests" / "resources" / "ops.py"), ok=False)
    assert out.returncode == 2 and "cycle: a, b" in out.stderr
    out = cli("dynamic", "execute", str(ROOT / "tests" / "resources" / "dag_example.yaml"),
              "--storage-path", str(tmp_path / "s"), ok=False)        # no --load: unknown ops
    assert out.returncode == 2 and "unknown operations" in out.stderr
    assert not (tmp_path / "s").exists()        # rejected before its store was created


def test_ctrl_c_cancels_and_records_the_run(tmp_path):
    import signal
    import time
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"), TG_MARKS=str(tmp_path))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    # As typed at a terminal: Ctrl-C raises KeyboardInterrupt. (A test session started in the
    # background by a shell without job control inherits SIGINT ignored, and so would the CLI.)
    as_at_a_terminal = ("import runpy, signal, sys; "
                        "signal.signal(signal.SIGINT, signal.default_int_handler); "
                        "sys.argv = ['twingraph', *sys.argv[1:]]; "
                        "runpy.run_module('twingraph', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", as_at_a_terminal, "run",
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


def test_ctrl_c_in_dynamic_execute_cancels_and_records_the_run(tmp_path):
    """The DAG's run went on in a thread of its own: the process ended on Ctrl-C and the run
    stayed RUNNING in the store for good."""
    import signal
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    (tmp_path / "slow.json").write_text(json.dumps({"dag_id": "slowchain", "nodes": [
        {"id": "s1", "operation": "sleepy", "parameters": {"seconds": 4}},
        {"id": "s2", "operation": "sleepy", "arguments": ["s1"], "parameters": {"seconds": 4}}]}))
    as_at_a_terminal = ("import runpy, signal, sys; "
                        "signal.signal(signal.SIGINT, signal.default_int_handler); "
                        "sys.argv = ['twingraph', *sys.argv[1:]]; "
                        "runpy.run_module('twingraph', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", as_at_a_terminal, "dynamic", "execute",
                             str(tmp_path / "slow.json"), "--storage-path", str(tmp_path / "s"),
                             "--load", str(ROOT / "tests" / "resources" / "ops.py")],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    from twingraph.core.states import RunState
    db = tmp_path / "home" / "twingraph.db"
    out = _signal_when_running(proc, db, signal.SIGINT)
    assert proc.returncode == 130, out
    assert "cancelled" in out
    assert _only_run(db).state is RunState.CANCELLED


def test_two_loaded_modules_with_one_operation_name_are_refused(cli, tmp_path):
    # the last one registered used to win without a word
    for name, value in (("dup_a", "A"), ("dup_b", "B")):
        (tmp_path / f"{name}.py").write_text(
            "from twingraph.engine.dynamic import register_operation\n"
            f"register_operation('dupop', lambda deps, params: {value!r})\n")
    (tmp_path / "d.json").write_text(json.dumps({"nodes": [{"id": "a", "operation": "dupop"}]}))
    out = cli("dynamic", "execute", str(tmp_path / "d.json"), "--storage-path",
              str(tmp_path / "s"), "--load", str(tmp_path / "dup_a.py"), "--load",
              str(tmp_path / "dup_b.py"), ok=False)
    assert out.returncode == 2 and "'dupop' is registered by both" in out.stderr


def test_a_loaded_module_that_raises_is_one_line_and_exit_2(cli, tmp_path):
    (tmp_path / "raises.py").write_text("raise RuntimeError('import boom')\n")
    out = cli("dynamic", "execute", str(ROOT / "tests" / "resources" / "dag_example.yaml"),
              "--storage-path", str(tmp_path / "s"), "--load", str(tmp_path / "raises.py"),
              ok=False)
    assert out.returncode == 2 and "RuntimeError: import boom" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


# -- run ids: never cut in `runs list`; `runs show|logs` take a unique prefix ----------------

A = "9d047f4ef5f14f229aca5e0c1b2a3d4e"
B = "9d047f4e00000000000000000000000a"
C = "1234567890abcdef1234567890abcdef"


def _seed(tmp_path, *records):
    from twingraph.stores.metadata import SQLMetadataStore
    store = SQLMetadataStore(f"sqlite:///{tmp_path / 'home' / 'twingraph.db'}", create=True)
    try:
        store.write(list(records))
    finally:
        store.close()


def _seed_runs(tmp_path):
    from twingraph.core.records import LogRecord, RunRecord
    from twingraph.core.states import RunState
    _seed(tmp_path,
          RunRecord(run_id=A, pipeline="data_processing_pipeline", state=RunState.SUCCESS,
                    created_at=1.0e9, started_at=1.0e9, ended_at=1.0e9 + 2),
          RunRecord(run_id=B, pipeline="etl", state=RunState.FAILED, created_at=1.0e9 + 10),
          RunRecord(run_id=C, pipeline="etl", state=RunState.RUNNING, created_at=1.0e9 + 20),
          LogRecord(run_id=A, at=1.0e9 + 1, level="info", message="hello from A"))


def _in_a_terminal(tmp_path, *args, columns=80):
    """Run the CLI with stdout on a pseudo-terminal (so rich draws its table)."""
    import pty
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"), COLUMNS=str(columns))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    for var in ("NO_COLOR", "TERM"):
        env.pop(var, None)
    main, sub = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "twingraph", *args], env=env, cwd=tmp_path,
                              stdout=sub, stderr=sub, timeout=120)
    finally:
        os.close(sub)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:            # EIO: the other end is closed and everything was read
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    return proc.returncode, out.decode()


def test_runs_list_piped_prints_full_ids_one_run_a_line(cli, tmp_path):
    _seed_runs(tmp_path)
    out = cli("runs", "list", columns=80)
    lines = out.stdout.splitlines()
    assert lines[0].split("\t") == ["run id", "pipeline", "state", "created", "duration"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == [C, B, A]                      # newest first, whole ids
    assert rows[2][1:3] == ["data_processing_pipeline", "SUCCESS"] and rows[2][4] == "2.00s"
    assert "\u2026" not in out.stdout                              # no ellipsis anywhere


@pytest.mark.parametrize("columns", [100, 140])
def test_runs_list_table_in_a_terminal_keeps_full_ids(tmp_path, columns):
    _seed_runs(tmp_path)
    code, out = _in_a_terminal(tmp_path, "runs", "list", columns=columns)
    assert code == 0, out
    assert "\u2501" in out                                       # rich drew its table
    for rid in (A, B, C):
        assert rid in out, out
    assert "\u2026" not in out
    # each date on one line (at 80 columns they broke over three)
    assert len(re.findall(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", out)) == 3, out


@pytest.mark.parametrize("columns", [40, 80])
def test_runs_list_in_a_narrow_terminal_falls_back_to_lines(tmp_path, columns):
    _seed_runs(tmp_path)
    code, out = _in_a_terminal(tmp_path, "runs", "list", columns=columns)
    assert code == 0 and "\u2501" not in out
    assert all(rid in out for rid in (A, B, C))


def test_runs_show_and_logs_accept_a_unique_prefix(cli, tmp_path):
    _seed_runs(tmp_path)
    show = cli("runs", "show", A[:10])
    assert show.stdout.startswith(A) and "data_processing_pipeline" in show.stdout
    assert cli("runs", "show", C[:6]).stdout.startswith(C)          # 6 characters suffice
    assert cli("runs", "show", A).stdout.startswith(A)             # whole ids still work
    logs = cli("runs", "logs", A[:9])
    assert "hello from A" in logs.stdout


def test_a_real_runs_id_prefix_resolves(cli, tmp_path):
    (tmp_path / "bad.py").write_text(
        "from twingraph import component, pipeline\n"
        "@component\ndef boom(x):\n    raise ValueError('no good: ' + str(x))\n"
        "@pipeline\ndef bad():\n    return boom(x=3)\n")
    rid = _run_id(cli("run", str(tmp_path / "bad.py"), "--no-progress", ok=False).stdout)
    assert "no good: 3" in cli("runs", "logs", rid[:8], "--level", "error").stdout
    assert cli("runs", "show", rid[:8]).stdout.startswith(rid)


@pytest.mark.parametrize("command", ["show", "logs"])
def test_ambiguous_prefix_lists_the_candidates_and_exits_2(cli, tmp_path, command):
    _seed_runs(tmp_path)
    out = cli("runs", command, "9d047f4e", ok=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "ambiguous" in out.stderr and "2 runs" in out.stderr          # errors on stderr
    assert A in out.stderr and B in out.stderr and C not in out.stderr


def test_prefix_too_short_or_unknown_is_not_found(cli, tmp_path):
    _seed_runs(tmp_path)
    short = cli("runs", "show", "9d047", ok=False)                 # 5 characters: not a prefix
    assert short.returncode == 1 and "at least 6 characters" in short.stderr
    unknown = cli("runs", "logs", "ffffffff", ok=False)
    assert unknown.returncode == 1 and "run ffffffff not found" in unknown.stderr
    upper = cli("runs", "show", A[:8].upper(), ok=False)           # ids are case-sensitive
    assert upper.returncode == 1


def test_dynamic_execute_on_the_hybrid_store(cli, tmp_path):
    out = cli("dynamic", "execute", str(ROOT / "tests" / "resources" / "dag_example.yaml"),
              "--storage-backend", "hybrid", "--storage-path", str(tmp_path / "h"),
              "--load", str(ROOT / "tests" / "resources" / "ops.py"))
    line = next(l for l in out.stdout.splitlines() if l.startswith("Execution completed: "))
    assert json.loads(line.split(": ", 1)[1])["results"] == {"total": (0 + 1 + 4 + 9 + 16 + 25) + 15 + 1}
    assert (tmp_path / "h" / "results.db").exists()


# -- errors are reported, not raised; stored text is shown as text --------------------------

def _no_traceback(out):
    """Exit 2 and an error line, no traceback; returns stderr unwrapped (rich wraps lines)."""
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "error:" in out.stderr, out.stderr
    return " ".join(out.stderr.split())


@pytest.mark.parametrize("args, env, says", [
    (("runs", "list", "--state", "bogus"), {}, "unknown run state 'BOGUS'"),
    (("runs", "logs", A, "--level", "bogus"), {}, "unknown log level 'bogus'"),
    (("runs", "list"), {"TWINGRAPH_DATABASE_URL": "bogus://x"}, "unsupported metadata database"),
    (("runs", "show", A), {"TWINGRAPH_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"},
     "cannot read the metadata schema revision"),
    (("runs", "logs", A), {"TWINGRAPH_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"},
     "cannot read the metadata schema revision"),
])
def test_runs_commands_report_errors_and_exit_2(tmp_path, args, env, says):
    _seed_runs(tmp_path)
    out = subprocess.run([sys.executable, "-m", "twingraph", *args], cwd=tmp_path, timeout=120,
                         env=dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"), **env),
                         capture_output=True, text=True)
    assert says in _no_traceback(out)


def test_runs_show_and_list_print_stored_text_that_looks_like_markup(cli, tmp_path):
    from twingraph.core.records import RunRecord, TaskRecord, TaskUpdate
    from twingraph.core.states import RunState, TaskState
    _seed(tmp_path,
          RunRecord(run_id=A, pipeline="etl[/p]", state=RunState.FAILED, created_at=1.0e9,
                    params={"col": "[/price]", "style": "[bold red]"},
                    error="PipelineFailed: KeyError: 'column [/price] missing'"),
          TaskRecord(run_id=A, node_id="load[/n]-0", component="load[/c]", created_at=1.0e9),
          TaskUpdate(run_id=A, node_id="load[/n]-0", state=TaskState.FAILED, at=1.0e9 + 1,
                     cache_status="miss", cache_reason="inputs [/changed]",
                     error="KeyError: 'column [/price] missing'"))
    show = cli("runs", "show", A)
    for text in ("etl[/p]", '"col": "[/price]"', '"style": "[bold red]"', "load[/n]-0",
                 "load[/c]", "inputs [/changed]", "'column [/price] missing'"):
        assert text in show.stdout, (text, show.stdout)
    code, table = _in_a_terminal(tmp_path, "runs", "list", columns=120)
    assert code == 0 and "etl[/p]" in table, table


def test_summary_table_shows_component_names_as_text():
    import io

    from rich.console import Console

    from twingraph.cli.display import summary_table, tasks_table
    from twingraph.core.records import TaskRecord
    from twingraph.core.states import TaskState
    tasks = [TaskRecord(run_id=A, node_id="n[/x]-0", component="c[/x]", created_at=1.0,
                        state=TaskState.FAILED, error="[red]not red[/red]")]
    out = io.StringIO()
    Console(file=out, width=200).print(summary_table(tasks), tasks_table(tasks))
    assert "c[/x]" in out.getvalue() and "n[/x]-0" in out.getvalue()
    assert "[red]not red[/red]" in out.getvalue()


def test_apikey_names_that_look_like_markup_are_printed_as_text(cli):
    made = cli("apikey", "create", "ci [/bot]")
    assert "(ci [/bot])" in made.stdout
    key_id = made.stdout.split("API key ", 1)[1].split()[0]
    assert "[/bot]" in cli("apikey", "list").stdout
    assert "(ci [/bot])" in cli("apikey", "revoke", key_id).stdout


FLAKY_ONCE = (
    "import os\n"
    "from twingraph import component, pipeline\n"
    "@component(retry_policy={'max_attempts': 1})\n"
    "def step(x: int) -> int:\n"
    "    if not os.path.exists(os.environ['TG_FIXED']):\n"
    "        raise RuntimeError('not yet [/fixed]')\n"
    "    return x + 1\n"
    "@pipeline(name='flaky')\n"
    "def flaky(x: int = 1):\n"
    "    return step(x=x)['outputs']\n")


def _flaky_cli(tmp_path):
    """``twingraph ...`` in a subprocess, in ``tmp_path`` holding FLAKY_ONCE as flaky.py (its
    step fails until the file ``fixed`` exists), with a home of its own."""
    (tmp_path / "flaky.py").write_text(FLAKY_ONCE)
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"), COLUMNS="200",
               TG_FIXED=str(tmp_path / "fixed"))
    env.pop("TWINGRAPH_DATABASE_URL", None)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "twingraph", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    return cli


def test_a_run_resumed_to_success_no_longer_shows_its_earlier_error(tmp_path):
    cli = _flaky_cli(tmp_path)
    first = cli("run", "flaky.py", "--no-progress")
    assert first.returncode == 1 and "not yet [/fixed]" in first.stderr
    rid = _run_id(first.stdout)
    assert "error:" in cli("runs", "show", rid).stdout
    (tmp_path / "fixed").touch()
    again = cli("run", "--resume", rid[:8], "--no-progress")     # a prefix, as runs show takes
    assert again.returncode == 0 and "SUCCESS" in again.stdout, again.stdout + again.stderr
    show = cli("runs", "show", rid)
    assert "state SUCCESS" in show.stdout and "error:" not in show.stdout, show.stdout
    # and plainly refused once finished: nothing to resume
    said = _no_traceback(cli("run", "--resume", rid, "--no-progress"))
    assert "already finished" in said and "invalid run transition" not in said


def test_a_database_migrated_by_a_newer_twingraph_is_refused_plainly(cli, tmp_path):
    from sqlalchemy import create_engine, text
    _seed_runs(tmp_path)
    engine = create_engine(f"sqlite:///{tmp_path / 'home' / 'twingraph.db'}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    (tmp_path / "p.py").write_text("from twingraph import pipeline\n"
                                   "@pipeline\ndef p():\n    return 1\n")
    for args in (("db", "upgrade"), ("runs", "list"), ("runs", "show", A),
                 ("run", "p.py", "--no-progress")):
        said = _no_traceback(cli(*args, ok=False))
        assert "a newer TwinGraph migrated this database" in said, (args, said)


SHADOWING = (
    "import json as stdlib_json\n"
    "from twingraph import component, pipeline\n"
    "@component(executor='process')\n"
    "def encode(x: int) -> str:\n"
    "    return stdlib_json.dumps({'x': x})\n"
    "@pipeline(name='shadowing')\n"
    "def shadowing(x: int = 1):\n"
    "    return encode(x=x)['outputs']\n")


def test_a_pipeline_file_named_like_a_loaded_module_does_not_replace_it(cli, tmp_path):
    """``json.py`` runs (in a process worker too) and ``json`` stays the standard library's:
    the CLI prints the result with it. Run again, its task is a memo hit (a stable name)."""
    (tmp_path / "user").mkdir()        # not the cwd: `python -m` puts the cwd first on sys.path
    (tmp_path / "user" / "json.py").write_text(SHADOWING)
    first = cli("run", "user/json.py", "--param", "x=5", "--no-progress")
    assert '"result": "{\\"x\\": 5}"' in first.stdout, first.stdout
    second = cli("run", "user/json.py", "--param", "x=5", "--no-progress")
    assert "hit" in cli("runs", "show", _run_id(second.stdout)).stdout


def test_syntax_errors_in_user_code_name_the_file_and_line(cli, tmp_path):
    (tmp_path / "syn.py").write_text("from twingraph import pipeline\n\ndef f(:\n    pass\n")
    said = _no_traceback(cli("run", "syn.py", ok=False))
    assert "syn.py:3" in said and "def f(:" in said
    out = cli("dynamic", "execute", str(ROOT / "tests" / "resources" / "dag_example.yaml"),
              "--storage-path", str(tmp_path / "s"), "--load", "syn.py", ok=False)
    assert out.returncode == 2 and "syn.py:3" in out.stderr and "Traceback" not in out.stderr


def test_a_missing_import_in_a_pipeline_file_is_said_like_for_a_module(cli, tmp_path):
    """A file whose import fails printed a full traceback and exited 1; the same failure in a
    module target was one line and exit 2."""
    (tmp_path / "needs.py").write_text("import twingraph_no_such_dependency\n")
    out = cli("run", "needs.py", ok=False)
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr
    assert "twingraph_no_such_dependency" in out.stdout + out.stderr


def test_run_resume_of_a_dag_run_says_so(cli, tmp_path):
    out = cli("dynamic", "execute", str(ROOT / "tests" / "resources" / "dag_example.yaml"),
              "--storage-path", str(tmp_path / "s"),
              "--load", str(ROOT / "tests" / "resources" / "ops.py"))
    line = next(l for l in out.stdout.splitlines() if l.startswith("Execution completed: "))
    rid = json.loads(line.split(": ", 1)[1])["run_id"]
    said = _no_traceback(cli("run", "--resume", rid, ok=False))
    assert "DAG" in said and "cannot import" not in said


def _dynamic(cli, tmp_path, dag_file):
    return cli("dynamic", "execute", str(dag_file), "--storage-path", str(tmp_path / "s"),
               "--load", str(ROOT / "tests" / "resources" / "ops.py"), ok=False)


def test_a_dag_file_that_is_not_utf8_is_a_usage_error(cli, tmp_path):
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe bad")
    out = _dynamic(cli, tmp_path, tmp_path / "binary.yaml")
    assert out.returncode == 2 and "not UTF-8" in " ".join(out.stderr.split())
    assert "Traceback" not in out.stderr


def test_dag_metadata_that_json_cannot_hold_is_refused_before_running(cli, tmp_path):
    (tmp_path / "datemeta.yaml").write_text(
        "metadata: {when: 2024-01-01}\nnodes:\n  - {id: a, operation: make_numbers}\n")
    out = _dynamic(cli, tmp_path, tmp_path / "datemeta.yaml")
    assert out.returncode == 2 and "'metadata' must be JSON data" in " ".join(out.stderr.split())
    assert cli("runs", "list").stdout.splitlines()[1:] == []           # no run was started


def test_dag_text_in_yaml_flow_style_without_a_suffix_is_read_as_yaml(cli, tmp_path):
    (tmp_path / "program").write_text("{nodes: [{id: nums, operation: make_numbers, "
                                      "parameters: {n: 3}}]}")
    out = _dynamic(cli, tmp_path, tmp_path / "program")
    assert out.returncode == 0 and '"status": "completed"' in out.stdout, out.stdout + out.stderr


# -- session 14: logs piped, non-ASCII params, --param with --resume, progress on a pipe ------
CHATTY = (
    "from twingraph import component, get_logger, pipeline\n"
    "@component\n"
    "def chatty(n: int):\n"
    "    log = get_logger()\n"
    "    for i in range(n):\n"
    "        log.info(f'line {i:04d} ' + 'x' * 150)\n"
    "    return n\n"
    "@pipeline(name='chatty')\n"
    "def chatty_pipe(n: int = 5):\n"
    "    return chatty(n=n)\n")


def test_runs_logs_piped_is_one_record_a_line_and_pages_with_offset(cli, tmp_path):
    """Piped, each record was cut at 80 columns (a 150-character message became three lines)
    and past ``--limit`` the rest were dropped without a word (no way to page)."""
    (tmp_path / "chatty.py").write_text(CHATTY)
    rid = _run_id(cli("run", "chatty.py", "--param", "n=25", "--no-progress",
                      columns=80).stdout)
    first = cli("runs", "logs", rid, "--limit", "10", columns=80)
    lines = first.stdout.splitlines()
    assert len(lines) == 10 and all(l.endswith("x" * 150) for l in lines), first.stdout
    assert [l.split()[5] for l in lines] == [f"{i:04d}" for i in range(10)]   # oldest first
    assert "--offset 10" in first.stderr
    last = cli("runs", "logs", rid, "--limit", "10", "--offset", "20", columns=80)
    assert [l.split()[5] for l in last.stdout.splitlines()] == [f"{i:04d}" for i in range(20, 25)]
    assert "--offset" not in last.stderr                     # nothing more to page to


def test_runs_show_prints_non_ascii_parameters_as_typed(cli, tmp_path):
    (tmp_path / "uni.py").write_text(
        "from twingraph import component, pipeline\n"
        "@component\ndef up(word: str):\n    return word.upper()\n"
        "@pipeline(name='uni')\ndef uni(word: str = 'x'):\n    return up(word=word)\n")
    rid = _run_id(cli("run", "uni.py", "--param", "word=Größe→✓", "--no-progress").stdout)
    show = cli("runs", "show", rid).stdout
    assert 'params {"word": "Größe→✓"}' in show, show                 # not "\u00f6"


def test_resume_refuses_a_param_that_differs_from_the_runs_own(tmp_path):
    """``run --resume RID --param x=99`` used to drop the value without a word and finish the
    run with the x it was started with."""
    cli = _flaky_cli(tmp_path)
    first = cli("run", "flaky.py", "--param", "x=3", "--no-progress")
    assert first.returncode == 1
    rid = _run_id(first.stdout)
    (tmp_path / "fixed").touch()
    other = cli("run", "--resume", rid, "--param", "x=99", "--no-progress")
    assert other.returncode == 2, other.stdout + other.stderr
    assert "started with x=3" in " ".join(other.stderr.split()) and "Traceback" not in other.stderr
    same = cli("run", "--resume", rid, "--param", "x=3", "--no-progress")   # the same: fine
    assert same.returncode == 0 and '"result": 4' in same.stdout, same.stdout + same.stderr


def test_progress_asked_for_on_a_pipe_prints_lines(cli, tmp_path):
    """``--progress`` with stdout not a terminal drew nothing at all (a transient live
    display); it now prints a plain line at each tenth, the last one at 100 %."""
    (tmp_path / "slow.py").write_text(
        "import time\nfrom twingraph import component, pipeline\n"
        "@component\ndef work(i: int):\n    time.sleep(0.3)\n    return i\n"
        "@pipeline(name='slow', max_parallel=2)\n"
        "def slow(n: int = 6):\n    return [work(i=i) for i in range(n)]\n")
    out = cli("run", "slow.py", "--progress")
    lines = [l for l in out.stdout.splitlines() if l.startswith("progress ")]
    assert len(lines) >= 2 and lines[-1].startswith("progress 100% (6/6 tasks"), out.stdout
    quiet = cli("run", "slow.py", "--no-cache")                # not asked for: no lines
    assert "progress " not in quiet.stdout


def test_the_run_line_keeps_the_run_id_whole_in_a_narrow_terminal(cli, tmp_path):
    (tmp_path / "uni.py").write_text(
        "from twingraph import component, pipeline\n"
        "@component\ndef one():\n    return 1\n"
        "@pipeline(name='narrow')\ndef narrow():\n    return one()\n")
    out = cli("run", "uni.py", "--no-progress", columns=20)
    rid = _run_id(out.stdout)
    assert len(rid) == 32, out.stdout
    assert cli("runs", "show", rid).returncode == 0


def test_a_terminal_that_cannot_spell_a_name_gets_escapes_not_a_crash(tmp_path):
    """On a latin-1 (or ASCII) stdout, a pipeline whose names need other characters used to
    crash ``run`` and ``runs show`` inside Rich with UnicodeEncodeError."""
    (tmp_path / "arrows.py").write_text(
        "from twingraph import component, pipeline\n"
        "@component(name='größe→✓')\n"
        "def step(x: int = 1):\n"
        "    return x\n"
        "@pipeline(name='pfeil→✓')\n"
        "def arrows(x: int = 1):\n"
        "    return step(x=x)['outputs']\n")
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"), COLUMNS="200",
               PYTHONIOENCODING="latin-1")
    env.pop("TWINGRAPH_DATABASE_URL", None)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "twingraph", *args], env=env, cwd=tmp_path,
                              capture_output=True, timeout=120)
    ran = cli("run", "arrows.py", "--no-progress")
    assert ran.returncode == 0, ran.stderr.decode("latin-1")
    assert b"UnicodeEncodeError" not in ran.stderr
    listed = cli("runs", "list")
    assert listed.returncode == 0, listed.stderr.decode("latin-1")
    run_id = re.search(r"run ([0-9a-f]{32})", ran.stdout.decode("latin-1")).group(1)
    shown = cli("runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr.decode("latin-1")
    out = shown.stdout.decode("latin-1")
    assert "größe" in out and "\\u2192" in out           # latin-1 has ö and ß, not the arrow


def test_runs_cancel_cancels_a_pending_run(cli, tmp_path):
    """A PENDING run (created over REST, its server gone) could not be cancelled from the
    CLI ("only a RUNNING run ...")."""
    from twingraph.core.records import RunRecord
    from twingraph.core.states import RunState
    _seed(tmp_path, RunRecord(run_id="pend0001pend", pipeline="etl", state=RunState.PENDING,
                              created_at=1.0e9))
    out = cli("runs", "cancel", "pend0001")
    assert "CANCELLED" in out.stdout
    shown = cli("runs", "show", "pend0001pend").stdout
    assert "state CANCELLED" in shown and "cancelled by user" in shown   # it had no driver
    again = cli("runs", "cancel", "pend0001pend", ok=False)
    assert again.returncode == 2 and "is CANCELLED" in " ".join(again.stderr.split())


def _wait_for_a_run(db, seconds=30):
    import sqlite3
    import time
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:      # until a run is recorded
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                if conn.execute("SELECT count(*) FROM runs").fetchone()[0]:
                    return
            finally:
                conn.close()
        except sqlite3.Error:                # not created or migrated yet
            pass
        time.sleep(0.1)
    raise AssertionError("no run was recorded")


def _signal_when_running(proc, db, sig):
    """Send ``sig`` to ``proc`` once its run is recorded (and has started its work); its
    output once it has exited."""
    import time
    _wait_for_a_run(db)
    time.sleep(0.5)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    return out


def _only_run(db):
    from twingraph.stores.metadata import SQLMetadataStore
    store = SQLMetadataStore(f"sqlite:///{db}")
    try:
        (run,) = store.list_runs()
        return run
    finally:
        store.close()


def _slow_dag(tmp_path, n=2, seconds=4):
    (tmp_path / "slow.json").write_text(json.dumps({"dag_id": "slowchain", "nodes": [
        {"id": f"s{i}", "operation": "sleepy", "parameters": {"seconds": seconds}}
        for i in range(n)]}))
    return tmp_path / "slow.json"


@pytest.mark.parametrize("command", ["run", "dynamic"])
def test_sigterm_cancels_and_records_the_run(tmp_path, command):
    """``timeout``, ``kill`` and ``docker stop`` send SIGTERM: the process ended at once and
    its run stayed RUNNING in the store for good."""
    import signal
    from twingraph.core.states import RunState
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"), TG_MARKS=str(tmp_path))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    if command == "run":
        args = ["run", str(ROOT / "tests" / "resources" / "crashy.py"), "--param", "n=40",
                "--param", "delay=1", "--no-progress"]
    else:
        args = ["dynamic", "execute", str(_slow_dag(tmp_path)), "--storage-path",
                str(tmp_path / "s"), "--load", str(ROOT / "tests" / "resources" / "ops.py")]
    proc = subprocess.Popen([sys.executable, "-m", "twingraph", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    db = tmp_path / "home" / "twingraph.db"
    out = _signal_when_running(proc, db, signal.SIGTERM)
    assert proc.returncode == 143, out
    assert "terminated (SIGTERM)" in out
    run = _only_run(db)
    assert run.state is RunState.CANCELLED
    assert "terminated (SIGTERM)" in (run.error or "")


def test_dynamic_execute_whose_output_is_closed_records_the_end_of_its_run(tmp_path):
    """``... --progress | head -1``: printing the next progress line failed (BrokenPipeError),
    the process exited 1 without a word and the DAG's run stayed RUNNING for good."""
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    dag = _slow_dag(tmp_path, n=6, seconds=1)
    proc = subprocess.Popen([sys.executable, "-m", "twingraph", "dynamic", "execute", str(dag),
                             "--storage-path", str(tmp_path / "s"), "--max-concurrent", "1",
                             "--no-cache", "--progress",
                             "--load", str(ROOT / "tests" / "resources" / "ops.py")],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first.startswith("progress"), first
    proc.stdout.close()                     # as `head -1` does
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode != 0
    from twingraph.core.states import RunState
    run = _only_run(tmp_path / "home" / "twingraph.db")
    assert run.state is RunState.CANCELLED, run


def test_a_package_directory_is_a_target_and_a_load(cli, tmp_path):
    """``twingraph run mypkg`` (a directory with __init__.py next to the user) was "file not
    found": it was taken for a file."""
    pkg = tmp_path / "flows"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from twingraph import component, pipeline\n"
        "@component\ndef double(x):\n    return 2 * x\n"
        "@pipeline\ndef flow(n: int = 4):\n    return double(x=n)\n")
    out = cli("run", "flows", "--no-progress")
    assert "SUCCESS" in out.stdout and '"result": 8' in out.stdout
    ops = tmp_path / "myops"
    ops.mkdir()
    (ops / "__init__.py").write_text(
        "from twingraph.engine.dynamic import register_operation\n"
        "register_operation('seven', lambda deps, params: 7)\n")
    (tmp_path / "d.json").write_text(json.dumps({"nodes": [{"id": "a", "operation": "seven"}]}))
    out = cli("dynamic", "execute", "d.json", "--load", "myops", "--storage-path",
              str(tmp_path / "s"))
    assert '"status": "completed"' in out.stdout
    (tmp_path / "empty").mkdir()
    out = cli("run", "empty", ok=False)
    assert out.returncode == 2 and "not a Python file or package" in out.stderr


def test_dynamic_execute_refuses_an_in_memory_metadata_database(tmp_path):
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"),
               TWINGRAPH_DATABASE_URL="sqlite://")
    (tmp_path / "d.json").write_text(json.dumps({"nodes": [{"id": "a", "operation": "sleepy",
                                                            "parameters": {"seconds": 0}}]}))
    out = subprocess.run([sys.executable, "-m", "twingraph", "dynamic", "execute", "d.json",
                          "--storage-backend", "memory",
                          "--load", str(ROOT / "tests" / "resources" / "ops.py")],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "is in memory" in out.stderr


def test_a_metadata_database_whose_directory_cannot_be_made_is_a_usage_error(cli, tmp_path):
    (tmp_path / "afile").write_text("")
    out = cli("db", "upgrade", "--url", f"sqlite:///{tmp_path / 'afile' / 'x.db'}", ok=False)
    assert out.returncode == 2 and "cannot create the directory" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_process_tasks_traceback_names_the_pipeline_files_lines(cli, tmp_path):
    """A pipeline file's functions travel to a worker process by value, and cloudpickle names
    their file ``<dynamic-code>``: the traceback of a process task said neither the file nor
    the line's text, where a thread task's did."""
    (tmp_path / "tb_flow.py").write_text(
        "from twingraph import component, pipeline\n"
        "\n"
        "def helper(x):\n"
        "    return [1 / (i - x) for i in range(3)]\n"
        "\n"
        "@component(executor='process', cache=False)\n"
        "def boom(x):\n"
        "    return helper(x)\n"
        "\n"
        "@pipeline\n"
        "def p():\n"
        "    return boom(x=1)\n")
    out = cli("run", str(tmp_path / "tb_flow.py"), "--no-progress", ok=False)
    logs = cli("runs", "logs", _run_id(out.stdout), "--level", "error").stdout
    path = str(tmp_path / "tb_flow.py")
    assert f'File "{path}", line 8, in boom\n    return helper(x)' in logs, logs
    assert f'File "{path}", line 4, in helper\n    return [1 / (i - x)' in logs, logs
    if sys.version_info < (3, 12):       # a comprehension is a frame of its own there
        assert f'File "{path}", line 4, in <listcomp>\n    return [1 / (i - x)' in logs
    assert "<dynamic-code>" not in logs


def test_server_on_a_port_in_use_says_so_before_anything_starts(cli):
    """It printed "TwinGraph server on http://..." and "Application startup complete" (its
    schedules started) before the bind failed with a traceback-like log and exit 3."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = cli("server", "--port", str(port), ok=False)
    assert out.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr
    assert "TwinGraph server on" not in out.stdout and "startup" not in out.stderr.lower()


def test_a_ctrl_c_as_the_run_finishes_does_not_ask_for_a_resume(cli, tmp_path):
    """Ctrl-C that lands as the run ends (here: in its end notification) left the run SUCCESS
    but said "(resume it with --resume)" (a resume is refused for a finished run), sometimes
    after an empty message."""
    (tmp_path / "late.py").write_text(
        "import os, signal\n"
        "from twingraph import component, pipeline\n"
        "def _interrupt(summary):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "@component\n"
        "def one(x):\n"
        "    return x\n"
        "@pipeline(notifications=_interrupt)\n"
        "def p():\n"
        "    return one(x=1)\n")
    out = cli("run", str(tmp_path / "late.py"), "--no-progress", ok=False)
    assert out.returncode == 130
    assert "--resume" not in out.stdout and "it had finished: twingraph runs show" in out.stdout
    assert "\tSUCCESS\t" in cli("runs", "list").stdout


def test_dynamic_execute_max_retries(cli, tmp_path):
    """A DAG node is retried 3 times by default (1, 2 and 4 s apart); the command could not
    change that. ``--max-retries 0``: one attempt."""
    (tmp_path / "flaky_ops.py").write_text(
        "from twingraph import operation\n"
        "@operation\n"
        "def fails(deps, params):\n"
        "    raise ValueError('always')\n")
    (tmp_path / "dag.yaml").write_text("nodes:\n  - id: f\n    operation: fails\n")
    out = cli("dynamic", "execute", str(tmp_path / "dag.yaml"), "--storage-path",
              str(tmp_path / "s"), "--load", str(tmp_path / "flaky_ops.py"),
              "--max-retries", "0", ok=False)
    assert out.returncode == 1 and "Execution failed: " in out.stderr
    show = cli("runs", "show", json.loads(out.stderr.split("Execution failed: ", 1)[1]
                                          .splitlines()[0])["run_id"]).stdout
    assert re.search(r"\bf\b.*FAILED", show)
    logs = cli("runs", "logs", json.loads(out.stderr.split("Execution failed: ", 1)[1]
                                          .splitlines()[0])["run_id"]).stdout
    assert logs.count("attempt 1 failed") == 1 and "attempt 2" not in logs, logs


def test_process_task_failures_that_once_broke_the_traceback_or_the_worker(cli, tmp_path):
    """From a review of the frame rewriting and the exception rebuilding: a lazy proxy among
    the file's globals was forced (its error replaced the task's), an exception group's
    frames lost their "|" margin, a same-named function of another by-value module took this
    file's name and line, and an unpicklable exception whose ``str()`` raises killed the
    worker ("worker process ... died")."""
    (tmp_path / "tb_other.py").write_text(
        "def load(path):\n"
        "    raise FileNotFoundError(path)\n")
    (tmp_path / "tb_cases.py").write_text(
        "import threading\n"
        "import cloudpickle\n"
        "import tb_other\n"
        "cloudpickle.register_pickle_by_value(tb_other)\n"
        "from twingraph import component, pipeline\n"
        "\n"
        "class Proxy:\n"
        "    def __getattr__(self, name):\n"
        "        raise RuntimeError('the proxy was forced')\n"
        "\n"
        "CURRENT = Proxy()\n"
        "\n"
        "def load(name):\n"
        "    return name.upper()\n"
        "\n"
        "def inner(i):\n"
        "    raise ValueError(f'bad {i}')\n"
        "\n"
        "class BadStr(Exception):\n"
        "    def __init__(self, msg):\n"
        "        super().__init__(msg)\n"
        "        self.lock = threading.Lock()\n"
        "    def __str__(self):\n"
        "        raise RuntimeError('no str')\n"
        "\n"
        "@component(executor='process', cache=False)\n"
        "def step(case):\n"
        "    if case == 'group':\n"
        "        errs = []\n"
        "        for i in range(2):\n"
        "            try:\n"
        "                inner(i)\n"
        "            except ValueError as e:\n"
        "                errs.append(e)\n"
        "        raise ExceptionGroup('several', errs)\n"
        "    if case == 'other':\n"
        "        return tb_other.load(load('x'))\n"
        "    if case == 'one-line':\n"
        "        return one_line(case)\n"
        "    raise BadStr('x')\n"
        "\n"
        "def one_line(x): raise KeyError(x)\n"
        "\n"
        "@pipeline(error_handler='continue')\n"
        "def p():\n"
        "    return [step(case=c) for c in ('group', 'other', 'badstr', 'one-line')]\n")
    out = cli("run", str(tmp_path / "tb_cases.py"), "--no-progress", ok=False)
    assert "proxy was forced" not in out.stdout + out.stderr
    logs = cli("runs", "logs", _run_id(out.stdout), "--level", "error").stdout
    path = str(tmp_path / "tb_cases.py")
    assert f'    |   File "{path}", line 32, in step\n    |     inner(i)' in logs, logs
    assert f'    |   File "{path}", line 17, in inner\n    |     raise ValueError' in logs
    assert 'File "<dynamic-code>", line 2, in load\nFileNotFoundError: X' in logs
    assert "BadStr: <str() of the exception raised RuntimeError>" in logs
    assert "died" not in logs
    assert f'File "{path}", line 42, in one_line\n    def one_line(x): raise KeyError(x)' in logs


def test_a_child_the_server_started_does_not_keep_its_port(tmp_path):
    """The listening socket was made inheritable: a process a loaded module (or a task)
    started with exec kept the port open after the server was gone, and a new server on that
    port was refused "address already in use"."""
    import signal
    import socket
    import time

    import httpx

    (tmp_path / "spawns.py").write_text("import os\nos.system('sleep 20 &')\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    srv = subprocess.Popen([sys.executable, "-m", "twingraph", "server", "--port", str(port),
                            "--load", str(tmp_path / "spawns.py"), "--log-level", "warning"],
                           cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError("the server did not come up")
    finally:
        srv.send_signal(signal.SIGTERM)
        srv.wait(30)
    with socket.socket() as again:          # the sleep still runs: the port must be free
        # (SO_REUSEADDR: closed connections in TIME_WAIT do not count; a listener does)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen(1)
