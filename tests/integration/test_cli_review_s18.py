"""The `twingraph` CLI findings of the session 18 review (real subprocesses, a fresh
TWINGRAPH_HOME): each test failed before its fix."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("twingraph")      # the console script itself


def _env(tmp_path, **extra):
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"), TG_FIXED=str(tmp_path / "fixed"),
               **extra)
    env.pop("TWINGRAPH_DATABASE_URL", None)
    env.pop("COLUMNS", None)                 # as piped output has it: no width given
    return env


@pytest.fixture
def cli(tmp_path):
    """``python -m twingraph ARGS`` in ``cwd`` (default ``tmp_path``), output piped and stdin
    not a terminal either (rich takes a terminal's width from any of the three)."""
    def run(*args, cwd=None, env=None, script=False):
        command = [str(SCRIPT)] if script else [sys.executable, "-m", "twingraph"]
        return subprocess.run([*command, *args], env={**_env(tmp_path), **(env or {})},
                              cwd=cwd or tmp_path, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120)
    return run


def _ok(out):
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _usage_error(out, says):
    """Exit 2 and ``says`` on one error line of stderr, no traceback."""
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: ") and says in out.stderr, out.stderr


def _run_id(stdout):
    return next(line.split()[1] for line in stdout.splitlines() if line.startswith("run "))


# A step that fails until the file $TG_FIXED exists: a run to resume.
FLAKY_STEP = (
    "import os\n"
    "from twingraph import component\n"
    "@component\n"
    "def step(i: int) -> dict:\n"
    "    if i == 2 and not os.path.exists(os.environ['TG_FIXED']):\n"
    "        raise RuntimeError('not yet')\n"
    "    return {'v': i}\n")


def test_params_named_like_run_options_reach_the_pipeline(cli, tmp_path):
    """``--param no_cache=true`` was passed to ``Pipeline.run`` next to its own ``no_cache``
    option: a TypeError traceback (finding 1)."""
    (tmp_path / "kw.py").write_text(
        "from twingraph import component, pipeline\n"
        "@component\ndef c(x):\n    return {'x': x}\n"
        "@pipeline\ndef p(mode: str = 'a'):\n    return c(x=mode)['outputs']\n"
        "@pipeline\ndef q(no_cache: bool = False, engine: str = 'spark', resume: int = 0):\n"
        "    return c(x=[no_cache, engine, resume])['outputs']\n")
    out = _ok(cli("run", "kw.py:q", "-p", "no_cache=true", "-p", "engine=local", "-p", "resume=3"))
    assert '"x": [\n    true,\n    "local",\n    3\n  ]' in out.stdout, out.stdout
    # and an unknown one is the usual usage error
    _usage_error(cli("run", "kw.py:p", "-p", "engine=x"),
                 "bad arguments for pipeline p: got an unexpected keyword argument 'engine'")


def test_a_value_json_cannot_hold_is_printed_as_its_repr(cli, tmp_path):
    """A value with tuple keys printed SUCCESS, then a TypeError traceback, exit 1 (finding 2)."""
    (tmp_path / "ret.py").write_text(
        "from twingraph import component, pipeline\n"
        "@component\ndef c():\n    return 1\n"
        "@pipeline\ndef tk():\n    c()\n    return {(1, 2): 3, 'set': {4}}\n")
    out = _ok(cli("run", "ret.py"))
    assert "SUCCESS" in out.stdout and "{(1, 2): 3, 'set': {4}}" in out.stdout, out.stdout
    assert "Traceback" not in out.stderr


def test_resume_finds_a_pipeline_named_unlike_its_function(cli, tmp_path):
    """``daily = pipeline(name="daily")(_body)``: resume looked for ``_body`` (finding 3)."""
    (tmp_path / "alias.py").write_text(
        FLAKY_STEP + "from twingraph import pipeline\n"
        "def _body(n: int = 4):\n    return [step(i=i)['outputs']['v'] for i in range(n)]\n"
        "daily = pipeline(name='daily')(_body)\n")
    first = cli("run", "alias.py")
    assert first.returncode == 1 and "not yet" in first.stderr, first.stdout + first.stderr
    (tmp_path / "fixed").touch()
    again = _ok(cli("run", "--resume", _run_id(first.stdout)))
    assert "daily: SUCCESS" in again.stdout, again.stdout


def _package(tmp_path):
    """``pkgroot/mypkg/flow.py``, a pipeline importing its step relatively."""
    pkg = tmp_path / "pkgroot" / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "comps.py").write_text(FLAKY_STEP)
    (pkg / "flow.py").write_text(
        "from twingraph import pipeline\n"
        "from .comps import step\n"
        "@pipeline\ndef flow(n: int = 4):\n"
        "    return [step(i=i)['outputs']['v'] for i in range(n)]\n")
    return pkg.parent


def test_resume_of_a_run_started_from_a_package_module(cli, tmp_path):
    """Resume loaded the recorded file, whose relative import fails outside its package
    (finding 4); typed in another directory, the package is found all the same."""
    root = _package(tmp_path)
    first = cli("run", "mypkg.flow", cwd=root)
    assert first.returncode == 1 and "not yet" in first.stderr, first.stdout + first.stderr
    (tmp_path / "fixed").touch()
    again = _ok(cli("run", "--resume", _run_id(first.stdout)))        # from tmp_path
    assert "flow: SUCCESS" in again.stdout, again.stdout


@pytest.mark.skipif(not SCRIPT.exists(), reason="the twingraph console script is not installed")
def test_the_console_script_runs_a_module_of_the_current_directory(cli, tmp_path):
    """``python -m twingraph run mypkg.flow`` worked and ``twingraph run mypkg.flow`` did not:
    the console script's sys.path lacks the current directory (finding 5)."""
    root = _package(tmp_path)
    (tmp_path / "fixed").touch()
    out = _ok(cli("run", "mypkg.flow", cwd=root, script=True))
    assert "flow: SUCCESS" in out.stdout, out.stdout


def test_one_pipeline_under_two_names_or_an_imported_one_is_not_several(cli, tmp_path):
    """``default = main_flow`` and ``from two import one`` made a file one of "several
    pipelines" (finding 6); two pipelines of its own still do."""
    (tmp_path / "two.py").write_text(
        "from twingraph import component, pipeline\n"
        "@component\ndef inc(x):\n    return {'x': x + 1}\n"
        "@pipeline\ndef one():\n    return inc(x=1)\n"
        "@pipeline(name='second')\ndef two():\n    return inc(x=2)\n")
    (tmp_path / "aliasonly.py").write_text(
        "from twingraph import component, pipeline\n"
        "@component\ndef inc(x):\n    return {'x': x + 1}\n"
        "@pipeline\ndef main_flow():\n    return inc(x=1)['outputs']\n"
        "default = main_flow\n")
    (tmp_path / "composed.py").write_text(
        "from twingraph import component, pipeline\n"
        "from two import one\n"
        "@component\ndef dbl(x):\n    return {'x': x * 2}\n"
        "@pipeline\ndef top():\n    return dbl(x=one()['outputs']['x'])['outputs']\n")
    assert "main_flow: SUCCESS" in _ok(cli("run", "aliasonly.py")).stdout
    composed = _ok(cli("run", "composed.py"))
    assert "top: SUCCESS" in composed.stdout and '"x": 4' in composed.stdout, composed.stdout
    _usage_error(cli("run", "two.py"), "two has several pipelines (one, two)")


def test_runs_show_says_what_it_left_out_and_never_hides_a_failed_task(cli, tmp_path):
    """``runs show`` listed the first 200 tasks and dropped the rest without a word, the
    failed one among them (finding 7)."""
    (tmp_path / "big.py").write_text(
        "from twingraph import component, pipeline\n"
        "@component\ndef s(i: int):\n"
        "    if i == 240:\n        raise ValueError('task 240 broke')\n"
        "    return i\n"
        "@pipeline(error_handler='continue')\n"
        "def big():\n    return [s(i=i) for i in range(250)]\n")
    rid = _run_id(cli("run", "big.py").stdout)
    show = _ok(cli("runs", "show", rid))
    rows = [line for line in show.stdout.splitlines() if line.startswith("│ s-")]
    assert len(rows) == 200 and "Tasks (200 of 250 shown)" in show.stdout, show.stdout
    assert any(r.startswith("│ s-240 ") and "FAILED" in r for r in rows)
    assert show.stderr == "(50 more tasks not shown: --limit 250 shows all 250)\n"
    few = _ok(cli("runs", "show", rid, "--limit", "1"))
    assert "(249 more tasks not shown: --limit 250 shows all 250)" in few.stderr
    assert [line.split()[1] for line in few.stdout.splitlines() if line.startswith("│ s-")] \
        == ["s-240"]
    everything = _ok(cli("runs", "show", rid, "--limit", "250"))
    assert everything.stdout.count("\n│ s-") == 250 and everything.stderr == ""


def test_runs_show_counts_the_failed_tasks_it_cannot_show(cli, tmp_path):
    (tmp_path / "bad.py").write_text(
        "from twingraph import component, pipeline\n"
        "@component\ndef s(i: int):\n    raise ValueError('broke')\n"
        "@pipeline(error_handler='continue')\n"
        "def bad():\n    return [s(i=i) for i in range(3)]\n")
    rid = _run_id(cli("run", "bad.py").stdout)
    few = _ok(cli("runs", "show", rid, "--limit", "2"))
    assert few.stderr == "(1 more task not shown, 1 of them failed: --limit 3 shows all 3)\n"


def test_a_home_that_is_a_file_is_one_line_and_exit_2(cli, tmp_path):
    """``TWINGRAPH_HOME`` naming a file was a FileExistsError traceback (finding 8)."""
    (tmp_path / "homefile").write_text("x")
    (tmp_path / "p.py").write_text("")
    env = {"TWINGRAPH_HOME": str(tmp_path / "homefile")}
    for args in (("runs", "list"), ("run", "p.py"), ("db", "upgrade")):
        _usage_error(cli(*args, env=env), f"TWINGRAPH_HOME {tmp_path / 'homefile'} is a file")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:",
                                 # the URI forms (session 26): the run "succeeded", then vanished
                                 "sqlite:///file::memory:?uri=true",
                                 "sqlite:///file:mem1?mode=memory&uri=on"])
def test_an_in_memory_database_is_refused(cli, tmp_path, url):
    """Runs recorded in memory vanished with the command, and ``db upgrade`` said ``database
    at head: None`` (finding 9)."""
    (tmp_path / "p.py").write_text(
        "from twingraph import component, pipeline\n"
        "@component\ndef c():\n    return 1\n"
        "@pipeline\ndef p():\n    return c()\n")
    env = {"TWINGRAPH_DATABASE_URL": url}
    for args in (("run", "p.py"), ("runs", "list"), ("db", "upgrade")):
        _usage_error(cli(*args, env=env), f"the metadata database {url} is in memory")


def test_db_upgrade_says_the_revision_it_reached(cli):
    from twingraph.stores.metadata.migrate import HEAD
    assert _ok(cli("db", "upgrade")).stdout == f"database at head: {HEAD}\n"


def test_piped_output_is_not_wrapped_at_80_columns(cli, tmp_path):
    """Not a terminal, rich cut lines at 80 columns: an error line in two, a table cell and
    ``runs show``'s parameters mid-value (finding 10)."""
    (tmp_path / "imp.py").write_text("import a_module_that_is_nowhere_to_be_found_at_all_xyz\n")
    _usage_error(cli("run", "imp.py"), "No module named 'a_module_that_is_nowhere_to_be_found")
    name = "a_component_with_a_name_long_enough_to_be_folded_in_an_eighty_column_table"
    (tmp_path / "wide.py").write_text(
        "from twingraph import component, pipeline\n"
        f"@component(name='{name}')\ndef c(word: str):\n    return word\n"
        "@pipeline\ndef wide(word: str = 'x'):\n    return c(word=word)\n")
    word = "w" * 120
    ran = _ok(cli("run", "wide.py", "-p", f"word={word}"))
    assert f"│ {name} " in ran.stdout, ran.stdout                   # the summary table
    show = _ok(cli("runs", "show", _run_id(ran.stdout)))
    assert f'params {{"word": "{word}"}}' in show.stdout, show.stdout
    assert f"│ {name} " in show.stdout, show.stdout                 # the tasks table
