"""Smaller findings of the session 30 new-user review (real CLI subprocesses, fresh homes)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from twingraph.core.schedule import validate
from twingraph.errors import ValidationError


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"), **extra)
    env.pop("TWINGRAPH_DATABASE_URL", None)
    env.pop("TWINGRAPH_COMPRESSION", None)
    env.update(extra)
    return env


def test_dynamic_execute_json_is_strict_json(tmp_path: Path) -> None:
    """A NaN result was printed as a bare ``NaN`` (strict parsers refuse it), where
    ``twingraph run --json`` prints ``null``."""
    (tmp_path / "ops.py").write_text(textwrap.dedent("""
        import numpy as np
        from twingraph import operation

        @operation
        def nan(deps, params):
            return float("nan")

        @operation
        def arr(deps, params):
            return np.array([1.0, float("nan")])

        @operation
        def inf(deps, params):
            return {"x": float("inf"), "y": [1, float("-inf")]}
    """))
    (tmp_path / "dag.yaml").write_text("nodes:\n  a: {operation: nan}\n  b: {operation: arr}\n"
                                       "  c: {operation: inf}\n")
    out = subprocess.run([sys.executable, "-m", "twingraph", "dynamic", "execute", "dag.yaml",
                          "--load", "ops.py", "--json"], env=_env(tmp_path), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr

    def refuse(name: str) -> None:
        raise ValueError(name)
    summary = json.loads(out.stdout.strip().splitlines()[-1], parse_constant=refuse)
    assert summary["results"] == {"a": None, "b": [1.0, None], "c": {"x": None, "y": [1, None]}}


@pytest.mark.parametrize("expression, said", [
    ("61 * * * *", "the minute field '61' is not valid (values 0-59"),
    ("0 25 * * *", "the hour field '25'"),
    ("*/0 * * * *", "the minute field '*/0'"),
    ("0 0 32 * *", "the day-of-month field '32'"),
    ("0 0 * 13 *", "the month field '13'"),
    ("0 0 * * 8", "the weekday field '8'"),
    ("0 0 1 1 1 99", "the second field '99'"),
    ("0 0 * *", "expected 5 fields"),
])
def test_a_cron_field_out_of_range_is_named(expression: str, said: str) -> None:
    """Every one of these was refused with "expected 5 fields", which they all have."""
    with pytest.raises(ValidationError, match=f"invalid cron expression .*{re.escape(said)}"):
        validate("CRON", expression)


def test_a_bad_compression_names_its_own_setting(tmp_path: Path) -> None:
    (tmp_path / "p.py").write_text(textwrap.dedent("""
        from twingraph import component, pipeline

        @component
        def one():
            return 1

        @pipeline(name="cmp_s30")
        def p():
            return one()
    """))
    out = subprocess.run([sys.executable, "-m", "twingraph", "run", "p.py", "--no-progress"],
                         env=_env(tmp_path, TWINGRAPH_COMPRESSION="gzip"), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "TWINGRAPH_COMPRESSION: unknown compression 'gzip'" in out.stderr, out.stderr
    assert "TWINGRAPH_RESULT_STORE" not in out.stderr
