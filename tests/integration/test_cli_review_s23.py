"""The `twingraph` CLI findings of the session 23 review (real subprocesses, a fresh
TWINGRAPH_HOME): each test failed before its fix."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from rich.console import Console

from twingraph.cli.display import summary_table
from twingraph.core.states import TaskState


@pytest.fixture
def cli(tmp_path):
    def run(*args, env=None):
        full = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"), **(env or {}))
        full.pop("COLUMNS", None)
        if env is None:
            full.pop("TWINGRAPH_DATABASE_URL", None)
        return subprocess.run([sys.executable, "-m", "twingraph", *args], env=full, cwd=tmp_path,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    return run


def _run_id(out):
    return next(line.split()[1] for line in (out.stdout + out.stderr).splitlines()
                if line.startswith("run "))


LOAD = ("from twingraph import component, pipeline\n"
        "@component\ndef load(n: int) -> dict:\n    return {'n': n}\n")


def test_a_body_that_raises_shows_where(cli, tmp_path):
    """A typo in the body was told as ``KeyError: 'missing'`` alone: no file, no line, and
    nothing in ``runs logs``."""
    (tmp_path / "typo.py").write_text(
        LOAD + "def helper(d):\n    return d['missing']\n"
        "@pipeline(name='typo')\ndef typo(n: int = 2):\n"
        "    rec = load(n=n).result()\n    return helper(rec['outputs'])\n")
    out = cli("run", "typo.py", "--no-progress")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback (most recent call last)" in out.stderr, out.stderr
    assert "typo.py\", line 10, in typo" in out.stderr and "line 6, in helper" in out.stderr
    assert "twingraph/engine" not in out.stderr            # the user's frames, not ours
    logs = cli("runs", "logs", _run_id(out)).stdout
    assert "the pipeline body raised KeyError: 'missing'" in logs and "typo.py" in logs, logs


def test_a_path_read_from_a_future_that_is_not_there_names_the_task(cli, tmp_path):
    """``r['output']`` for ``r['outputs']`` failed the run with ``KeyError: 'output'``."""
    (tmp_path / "path.py").write_text(
        LOAD + "@pipeline(name='path')\ndef path(n: int = 2):\n    return load(n=n)['output']['n']\n")
    out = cli("run", "path.py", "--no-progress")
    assert out.returncode == 1
    assert "load-0['output'] is not there: KeyError: 'output' (it has 'outputs', 'hash')" \
        in out.stderr, out.stderr


def test_one_annotation_that_does_not_resolve_leaves_the_others_checked(cli, tmp_path):
    """A ``TYPE_CHECKING``-only annotation turned every check off: ``zip_code: str`` got the
    int 12345; a list parameter took malformed JSON as text."""
    (tmp_path / "hints.py").write_text(
        "from __future__ import annotations\nfrom typing import TYPE_CHECKING\n"
        "from twingraph import component, pipeline\n"
        "if TYPE_CHECKING:\n    import pandas as pd\n"
        "@component\ndef echo(x) -> str:\n    return repr(x)\n"
        "@pipeline(name='hints')\n"
        "def hints(zip_code: str, items: list[int] | None = None, frame: pd.DataFrame = None):\n"
        "    return echo(x=[zip_code, items])['outputs']['result']\n")
    out = cli("run", "hints.py", "-p", "zip_code=12345", "-p", "items=[1]", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == "['12345', [1]]"
    for bad in ("items=[1,2", "items=5"):
        out = cli("run", "hints.py", "-p", "zip_code=1", "-p", bad)
        assert out.returncode == 2 and "--param items: expected list or null" in out.stderr


def test_a_file_that_exits_as_it_is_imported_is_an_error(cli, tmp_path):
    """``sys.exit(0)`` at import: exit 0, no run, no word."""
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")
    out = cli("run", "exits.py")
    assert out.returncode == 2
    assert "it called sys.exit(0) as it was imported" in out.stderr, out.stderr


def test_json_prints_the_value_alone_on_stdout(cli, tmp_path):
    """The table and the run line came first on stdout: ``| jq`` failed on them."""
    (tmp_path / "q.py").write_text(
        LOAD + "@pipeline(name='q')\ndef q(n: int = 3):\n    return load(n=n)['outputs']\n")
    out = cli("run", "q.py", "--json", "--progress")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"n": 3}
    assert "q: SUCCESS" in out.stderr and "progress 100%" in out.stderr


def test_a_dag_node_that_calls_a_component_wrongly_fails_before_it_runs(cli, tmp_path):
    """It ran, failed with TypeError and was retried three times (9 s); the store was made."""
    (tmp_path / "ops.py").write_text(
        "from twingraph import component\n"
        "@component\ndef make_numbers(n: int) -> list:\n    return list(range(n))\n"
        "@component\ndef total(data) -> int:\n    return sum(data)\n")
    (tmp_path / "dag.yaml").write_text(
        "nodes:\n  - {id: numbers, operation: make_numbers, parameters: {n: 3}}\n"
        "  - {id: tot, operation: total, arguments: {dataa: numbers}}\n"
        "  - {id: tot2, operation: total, arguments: {dataa: numbers}}\n")
    out = cli("dynamic", "execute", "dag.yaml", "--load", "ops.py", "--storage-path", "st")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "operation 'total' cannot be called as given: missing a required argument: " \
           "'data': tot, tot2" in out.stderr, out.stderr
    assert not (tmp_path / "st").exists()


def test_a_refused_database_leaves_no_result_store(cli, tmp_path):
    (tmp_path / "ops.py").write_text(
        "from twingraph.engine.dynamic import register_operation\n"
        "register_operation('one', lambda deps, params: 1)\n")
    (tmp_path / "dag.yaml").write_text("nodes:\n  - {id: a, operation: one}\n")
    out = cli("dynamic", "execute", "dag.yaml", "--load", "ops.py", "--storage-path", "st",
              env={"TWINGRAPH_DATABASE_URL": "sqlite://"})
    assert out.returncode == 2 and "in memory" in out.stderr, out.stdout + out.stderr
    assert not (tmp_path / "st").exists()


def test_the_summary_keeps_component_names_whole_at_80_columns():
    """``process_customers`` and ``process_chunks`` were both ``process_c…``."""
    tasks = [SimpleNamespace(component=c, state=TaskState.SUCCESS, cache_status="miss",
                             started_at=1.0, ended_at=2.0)
             for c in ("process_customers", "process_chunks")]
    console = Console(width=80, record=True)
    console.print(summary_table(tasks))
    text = console.export_text()
    assert "process_customers" in text and "process_chunks" in text, text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_runs_lines_keep_one_field_per_column_for_names_with_tabs():
    """A DAG id ``a/b<TAB>c`` gave its row a field too many."""
    from twingraph.cli.display import runs_lines
    from twingraph.core.states import RunState
    run = SimpleNamespace(run_id="r1", pipeline="a/b\tc\nd", state=RunState.SUCCESS,
                          created_at=0.0, started_at=0.0, ended_at=1.0)
    header, row = runs_lines([run])
    assert len(row.split("\t")) == len(header.split("\t"))
    assert row.split("\t")[1] == "a/b\\tc\\nd"


def test_json_keeps_what_the_pipeline_prints_off_stdout(cli, tmp_path):
    """(session 24) A print in the body, a component or a process worker went to stdout
    before the value: ``| jq`` failed on it. They go to stderr while the run lasts."""
    (tmp_path / "loud.py").write_text(
        "import os\nfrom twingraph import component, pipeline\n"
        "print('imported')\n"
        "@component\ndef say(n: int) -> int:\n    print('from a component')\n    return n\n"
        "@component(executor='process')\n"
        "def worker(n: int) -> int:\n    print('from a worker')\n"
        "    os.write(1, b'raw fd 1\\n')\n    return n + 1\n"
        "@pipeline(name='loud')\ndef loud():\n    print('from the body')\n"
        "    return worker(n=say(n=1)['outputs']['result'])['outputs']\n")
    out = cli("run", "loud.py", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"result": 2}, out.stdout
    for said in ("imported", "from a component", "from the body", "from a worker", "raw fd 1"):
        assert said in out.stderr, (said, out.stderr)
