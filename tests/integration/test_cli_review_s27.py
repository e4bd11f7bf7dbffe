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
