"""`twingraph run` findings of the session 27 reviews (a real subprocess, a fresh home)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def test_a_failed_task_points_to_its_traceback_in_the_runs_log(tmp_path) -> None:
    (tmp_path / "p.py").write_text(textwrap.dedent("""
        from twingraph import component, pipeline

        @component
        def read(x: int):
            return json.dumps(x)          # json is not imported

        @pipeline(name="tb_s27")
        def tb():
            return read(x=1)
    """))
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    out = subprocess.run([sys.executable, "-m", "twingraph", "run", "p.py", "--no-progress"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    hint = next(line for line in out.stderr.splitlines() if line.startswith("its traceback: "))
    args = hint.removeprefix("its traceback: ").split()
    assert args[:2] == ["twingraph", "runs"] and args[-2:] == ["--node", "read-0"]
    logs = subprocess.run([sys.executable, "-m", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert 'p.py", line 6, in read' in logs.stdout and "NameError" in logs.stdout


def test_runs_list_on_a_database_being_created_lists_nothing(tmp_path) -> None:
    """Polled while a first run made the home, `runs list` met the database file before its
    tables and said to run `twingraph db upgrade` (exit 2). An empty database holds no runs;
    one with tables of its own and no revision is still refused."""
    import sqlite3
    home = tmp_path / "home"
    home.mkdir()
    sqlite3.connect(home / "twingraph.db").close()          # made, not yet built
    env = dict(os.environ, TWINGRAPH_HOME=str(home))
    env.pop("TWINGRAPH_DATABASE_URL", None)

    def runs_list() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "twingraph", "runs", "list"], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)

    out = runs_list()
    assert out.returncode == 0 and out.stdout.splitlines()[1:] == [], out.stderr
    with sqlite3.connect(home / "twingraph.db") as db:
        db.execute("CREATE TABLE theirs (x)")
    out = runs_list()
    assert out.returncode == 2 and "db upgrade" in out.stderr


def test_an_error_raised_as_the_file_loads_says_where(tmp_path) -> None:
    """"cannot load p.py: it raised KeyError: 'SALES_DIR'" said what, not where (the error
    may come from a helper module the file imports)."""
    (tmp_path / "cfg.py").write_text("import json\nSETTINGS = json.load(open('config.json'))\n")
    (tmp_path / "p.py").write_text("import os\nfrom twingraph import pipeline\n"
                                   "DATA = os.environ['SALES_DIR_S27']\n")
    (tmp_path / "q.py").write_text("from twingraph import pipeline\nimport cfg\n")
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    env.pop("SALES_DIR_S27", None)
    for target, where in (("p.py", f"(at {tmp_path / 'p.py'}:3)"),
                          ("q.py", f"(at {tmp_path / 'cfg.py'}:2)")):
        out = subprocess.run([sys.executable, "-m", "twingraph", "run", target], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and where in out.stderr, out.stderr


def test_a_run_refused_for_its_arguments_leaves_no_home(tmp_path) -> None:
    (tmp_path / "p.py").write_text("from twingraph import pipeline\n\n@pipeline(name='h_s27')\n"
                                   "def h(n: int):\n    return n\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TWINGRAPH_HOME",
                                                             "TWINGRAPH_DATABASE_URL")}
    for args in (["nope.py"], ["p.py", "--param", "n=x"], ["p.py:other"]):
        out = subprocess.run([sys.executable, "-m", "twingraph", "run", *args], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stderr
        assert not (tmp_path / ".twingraph").exists(), args
