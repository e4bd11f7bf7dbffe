"""CLI additions of session 28, through the real console script in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest


@pytest.fixture
def cli(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"))
        env.pop("TWINGRAPH_DATABASE_URL", None)
        return subprocess.run([sys.executable, "-m", "twingraph", *args], env=env, cwd=tmp_path,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120)
    return run


OPS = textwrap.dedent("""
    from twingraph import operation

    @operation
    def chatty(deps, params):
        print("a line an operation prints")
        return {"n": params["n"], "half": params["n"] / 2}

    @operation
    def broken(deps, params):
        raise ValueError("no good")
""")


def test_dynamic_execute_json_puts_the_summary_alone_on_stdout(cli, tmp_path) -> None:
    (tmp_path / "ops_s28.py").write_text(OPS)
    (tmp_path / "ok.yaml").write_text(
        "nodes:\n  - {id: a, operation: chatty, parameters: {n: 3}}\n")
    out = cli("dynamic", "execute", "ok.yaml", "--load", "ops_s28.py", "--storage-path", "st",
              "--json", "--progress")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1, out.stdout                   # no table, no print, no progress
    summary = json.loads(lines[0])
    assert summary["status"] == "completed"
    assert summary["results"]["a"] == {"n": 3, "half": 1.5}
    assert "a line an operation prints" in out.stderr and "progress" in out.stderr

    (tmp_path / "bad.yaml").write_text(
        "nodes:\n  - {id: b, operation: broken}\n  - {id: c, operation: chatty, "
        "arguments: {x: b}, parameters: {n: 1}}\n")
    out = cli("dynamic", "execute", "bad.yaml", "--load", "ops_s28.py", "--storage-path", "st",
              "--json", "--max-retries", "0")
    assert out.returncode == 1, out.stderr
    summary = json.loads(out.stdout)                     # a failure is JSON on stdout too
    assert summary["status"] == "failed"
    assert "no good" in json.dumps(summary)


def test_runs_show_of_a_run_with_a_huge_error_is_quick(cli, tmp_path) -> None:
    (tmp_path / "loud_s28.py").write_text(textwrap.dedent("""
        from twingraph import component, pipeline

        @component(cache=False)
        def loud():
            raise RuntimeError("upstream said: " + "x" * 200_000)

        @pipeline(name="loud_cli_s28")
        def flow():
            return loud()
    """))
    t0 = time.monotonic()
    out = cli("run", "loud_s28.py", "--no-progress")
    assert out.returncode == 1 and "characters cut" in out.stderr, out.stderr[-2000:]
    run_id = next(line.split()[1] for line in out.stdout.splitlines() + out.stderr.splitlines()
                  if line.startswith("run "))
    out = cli("runs", "show", run_id)
    assert out.returncode == 0, out.stderr
    assert "characters cut" in out.stdout
    assert time.monotonic() - t0 < 30        # rich highlighted it: minutes at 80 KB
