"""``--no-cache`` refreshes the memo (decision 0093): what such a run computes also replaces
the result later memoized runs look up. Before, it went only under keys of the run's own,
and the next normal run brought the old value back — a silent stale result right after the
user asked for fresh ones (a file read at run time, the README's case for --no-cache)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path


def test_the_run_after_a_no_cache_run_gets_its_values(tmp_path: Path) -> None:
    (tmp_path / "nc.py").write_text(textwrap.dedent(f"""
        from twingraph import component, pipeline

        @component
        def read_file(path: str) -> str:
            return open(path).read()

        @component
        def upper(s: str) -> str:
            return s.upper()

        @component(cache=False)
        def stamp(s: str) -> str:        # never memoized, never refreshes anything
            return s + open({str(tmp_path / "stamp")!r}).read()

        @pipeline(name="nc_s30")
        def nc(path: str = {str(tmp_path / "input.txt")!r}):
            text = upper(s=read_file(path=path)["outputs"]["result"])["outputs"]["result"]
            return [text, stamp(s=text)["outputs"]["result"]]
    """))
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"))
    env.pop("TWINGRAPH_DATABASE_URL", None)

    def run(*args: str) -> list[str]:
        out = subprocess.run([sys.executable, "-m", "twingraph", "run", "nc.py", "--json",
                              "--no-progress", *args], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    (tmp_path / "stamp").write_text("1")
    (tmp_path / "input.txt").write_text("hello")
    assert run() == ["HELLO", "HELLO1"]
    (tmp_path / "input.txt").write_text("world")
    assert run() == ["HELLO", "HELLO1"]                  # documented: a file is not an input
    (tmp_path / "stamp").write_text("2")
    assert run("--no-cache") == ["WORLD", "WORLD2"]
    (tmp_path / "stamp").write_text("3")
    assert run() == ["WORLD", "WORLD3"]                  # refreshed; cache=False runs anew
    (tmp_path / "input.txt").write_text("again")
    assert run() == ["WORLD", "WORLD3"]
