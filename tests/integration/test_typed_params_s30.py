"""Parameters annotated ``Path``, ``date``, ``datetime``, ``Decimal``, ``UUID`` or an ``Enum``
(decision 0092): built from their text by the CLI, REST and a resume, recorded as that text.
Before, the body got the text itself (a ``str`` where it expected a ``Path``), a resume was
refused until they were given again, and REST's ``2`` for a ``float`` keyed tasks apart from
the CLI's ``2.0``."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from twingraph.cli.loading import parse_params
from twingraph.errors import ValidationError

RESOURCES = Path(__file__).parents[1] / "resources"
sys.path.insert(0, str(RESOURCES))
from typed_params_app import Level, typed  # noqa: E402

UUID_TEXT = "12345678-1234-5678-1234-567812345678"
ARGS = ["out=/data/in.csv", "day=2026-12-07", "ratio=2", "level=HIGH",
        "at=2026-12-07T09:30:00+01:00", "amount=1.50", f"ident={UUID_TEXT}"]
EXPECTED = {"out": ["PosixPath", "/data/in.csv"], "day": ["date", "2026-12-07"],
            "ratio": ["float", "2.0"], "level": ["Level", "Level.HIGH"],
            "at": ["datetime", "2026-12-07 09:30:00+01:00"], "amount": ["Decimal", "1.50"],
            "ident": ["UUID", UUID_TEXT]}


def test_the_cli_builds_each_text_kind_from_its_text() -> None:
    got = parse_params(ARGS, typed.fn)
    assert got["out"] == Path("/data/in.csv") and got["day"] == date(2026, 12, 7)
    assert got["level"] is Level.HIGH and parse_params(["level=2"], typed.fn)["level"] is Level.HIGH
    assert parse_params(["at=null"], typed.fn) == {"at": None}       # Optional[datetime]


@pytest.mark.parametrize("item, said", [
    ("day=12/07/2026", "--param day: expected an ISO 8601 date"),
    ("level=3", "--param level: expected one of 1, 2"),
    ("at=yesterday", "--param at: expected an ISO 8601 date and time"),
    ("amount=NaN", "--param amount: expected a finite decimal"),
    ("ident=x", "--param ident: expected a UUID"),
    ("out=", "--param out: expected a path"),
    ("day=null", "--param day: expected an ISO 8601 date"),         # not Optional
])
def test_a_text_that_is_not_one_is_refused_naming_the_parameter(item: str, said: str) -> None:
    with pytest.raises(ValidationError, match=said):
        parse_params([item], typed.fn)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"), **extra)
    env.pop("TWINGRAPH_DATABASE_URL", None)
    return env


def _cli(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "twingraph", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def _run_id(out: subprocess.CompletedProcess[str]) -> str:
    line = next(x for x in out.stdout.splitlines() if x.startswith("run "))
    return line.split()[1]


def _record(tmp_path: Path, run_id: str) -> Any:
    from twingraph.stores.metadata import SQLMetadataStore
    md = SQLMetadataStore(f"sqlite:///{tmp_path / 'home' / 'twingraph.db'}")
    try:
        return md.get_run(run_id)
    finally:
        md.close()


def test_a_cli_run_gets_the_values_and_a_resume_builds_them_again(tmp_path: Path) -> None:
    """The first run fails in its task; ``--resume`` (no ``--param``) finishes it with the
    same values: the Path, the date, the enum... recorded as their text. Before, the run
    recorded their ``repr`` and refused a resume until each was given again."""
    shutil.copy(RESOURCES / "typed_params_app.py", tmp_path / "typed_app.py")
    flag = tmp_path / "go"
    env = _env(tmp_path, TYPED_FAIL_IF_MISSING=str(flag))
    params = [a for arg in ARGS for a in ("--param", arg)]
    first = _cli(tmp_path, env, "run", "typed_app.py:typed", *params, "--no-progress")
    assert first.returncode == 1, first.stdout + first.stderr
    run_id = _run_id(first)
    recorded = _record(tmp_path, run_id).params
    assert recorded["out"] == "/data/in.csv" and recorded["level"] == 2
    assert recorded["at"] == "2026-12-07T09:30:00+01:00" and recorded["ratio"] == 2.0
    flag.write_text("")
    again = _cli(tmp_path, env, "run", "--resume", run_id, "--json", "--no-progress")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout) == EXPECTED
    # the same value given again is the recorded one; another is refused
    flag.unlink()
    params[params.index("ratio=2")] = "ratio=3"          # a new input: not a memo hit
    third = _cli(tmp_path, env, "run", "typed_app.py:typed", *params, "--no-progress")
    rid = _run_id(third)
    assert third.returncode == 1 and rid != run_id
    flag.write_text("")
    other = _cli(tmp_path, env, "run", "--resume", rid, "--param", "day=2026-12-08",
                 "--no-progress")
    assert other.returncode == 2 and "day=" in other.stderr, other.stderr
    same = _cli(tmp_path, env, "run", "--resume", rid, "--param", "day=2026-12-07",
                "--param", "out=/data/./in.csv", "--json", "--no-progress")
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout) == {**EXPECTED, "ratio": ["float", "3.0"]}


def test_the_python_api_records_a_path_as_its_text_and_a_resume_builds_it(tmp_path: Path,
                                                                         monkeypatch: Any) -> None:
    from twingraph.engine.engine import Engine
    from twingraph.stores.metadata import SQLMetadataStore
    from twingraph.stores.results.sqlite import SQLiteStorage
    flag = tmp_path / "go"
    monkeypatch.setenv("TYPED_FAIL_IF_MISSING", str(flag))
    eng = Engine(results=SQLiteStorage(str(tmp_path / "r.db")),
                 metadata=SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True))
    try:
        first = typed.run(Path("/data/in.csv"), date(2026, 12, 7), level=Level.HIGH,
                          engine=eng)
        assert first.state.value == "FAILED"
        rec = eng.metadata.get_run(first.run_id)
        assert rec.params["out"] == "/data/in.csv" and rec.params["level"] == 2
        assert sorted(rec.source["typed_params"]) == ["day", "level", "out"]
        assert "inexact_params" not in rec.source
        flag.write_text("")
        done = typed.run(engine=eng, resume=first.run_id)
        assert done.state.value == "SUCCESS", done.error
        assert done.value["out"] == ["PosixPath", "/data/in.csv"]
        assert done.value["level"] == ["Level", "Level.HIGH"]
        # text given for a Path from Python stays text, and so does its resume
        flag.unlink()
        text = typed.run("/data/in.csv", date(2026, 12, 7), engine=eng)
        flag.write_text("")
        again = typed.run(engine=eng, resume=text.run_id)
        assert again.value["out"] == ["str", "/data/in.csv"]
    finally:
        eng.close()


@pytest.fixture()
def app_client(tmp_path: Path) -> Any:
    from fastapi.testclient import TestClient

    from twingraph.server.app import create_app
    from twingraph.service import build_services
    from twingraph.settings import Settings
    from twingraph.server.build import wire_schedules
    svc = build_services(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db"))
    wire_schedules(svc, poll_interval=0.1)
    app = create_app(svc, load=[str(RESOURCES / "typed_params_app.py")])
    with TestClient(app) as client:
        yield client
    svc.close()


def _finished(c: Any, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        run = c.get(f"/api/v1/runs/{run_id}").json()["data"]
        if run["state"] in {"SUCCESS", "FAILED"} or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def test_rest_builds_the_values_and_refuses_a_bad_text(app_client: Any) -> None:
    c = app_client
    bad = c.post("/api/v1/runs", json={"pipeline_id": "typed",
                                        "params": {"out": "/x", "day": "12/07/2026"}})
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"]["details"][0]["field"] == "params.day"
    assert "ISO 8601 date" in bad.json()["error"]["details"][0]["message"]
    assert c.post("/api/v1/runs", json={"pipeline_id": "typed",
                                        "params": {"out": 3, "day": "2026-12-07"}}
                  ).status_code == 422
    params = {"out": "/data/in.csv", "day": "2026-12-07", "ratio": 2, "level": "HIGH",
              "at": "2026-12-07T09:30:00+01:00", "amount": "1.50", "ident": UUID_TEXT}
    r = c.post("/api/v1/runs", json={"pipeline_id": "typed", "params": params})
    assert r.status_code == 201, r.text
    run_id = r.json()["data"]["id"]
    assert c.post(f"/api/v1/runs/{run_id}/start").status_code in (200, 202)
    run = _finished(c, run_id)
    assert run["state"] == "SUCCESS", run
    # the same value as the CLI's: ratio 2 reached the body as 2.0, the level by name
    outputs = c.get(f"/api/executions/{run_id}").json()["outputs"]
    assert outputs == EXPECTED, outputs


# -- the first review's findings ----------------------------------------------------------------
def _start(c: Any, pipeline: str, params: dict[str, Any]) -> str:
    r = c.post("/api/v1/runs", json={"pipeline_id": pipeline, "params": params})
    assert r.status_code == 201, r.text
    run_id = r.json()["data"]["id"]
    assert c.post(f"/api/v1/runs/{run_id}/start").status_code == 202
    return run_id


def test_a_cli_resume_of_a_rest_run_builds_the_values_the_server_gave(
        app_client: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """The server listed the text-kind names only at its own start: a run made PENDING over
    REST recorded none, and ``--resume`` gave the body the text, the int, the enum's name."""
    flag = tmp_path / "go"
    monkeypatch.setenv("TYPED_FAIL_IF_MISSING", str(flag))
    c = app_client
    run_id = _start(c, "typed", {"out": "/data//in.csv", "day": "2026-12-07", "ratio": 2,
                                 "level": "HIGH", "at": "2026-12-07T09:30:00+01:00",
                                 "amount": "1.50", "ident": UUID_TEXT})
    assert _finished(c, run_id)["state"] == "FAILED"
    rec = _record_of(c, run_id)
    assert rec["params"]["level"] == 2 and rec["params"]["out"] == "/data/in.csv"
    assert rec["params"]["ratio"] == 2.0 and type(rec["params"]["ratio"]) is float
    shutil.copy(RESOURCES / "typed_params_app.py", tmp_path / "typed_app.py")
    flag.write_text("")
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path),
               TWINGRAPH_DATABASE_URL=f"sqlite:///{tmp_path}/tg.db")
    # the same value in another spelling is the recorded one
    out = _cli(tmp_path, env, "run", "typed_app.py:typed", "--resume", run_id, "--param",
               "out=/data/./in.csv", "--param", "level=2", "--json", "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout) == EXPECTED


def _record_of(c: Any, run_id: str) -> dict[str, Any]:
    return c.get(f"/api/v1/runs/{run_id}").json()["data"]


def test_defaults_stay_the_functions_own_over_rest(app_client: Any) -> None:
    """Recorded with the run, defaults were converted (and ``since: date = ""`` failed the
    start with 422) where the CLI passes them as they are."""
    c = app_client
    run_id = _start(c, "typed_defaults", {})
    run = _finished(c, run_id)
    assert run["state"] == "SUCCESS", run
    assert c.get(f"/api/executions/{run_id}").json()["outputs"] == {
        "out": ["str", "out.csv"], "ratio": ["int", "1"], "since": ["str", ""],
        "mode": ["str", "LOW"]}
    given = _start(c, "typed_defaults", {"out": "b.csv", "mode": "HIGH", "ratio": 3})
    assert _finished(c, given)["state"] == "SUCCESS"
    assert c.get(f"/api/executions/{given}").json()["outputs"] == {
        "out": ["PosixPath", "b.csv"], "ratio": ["float", "3.0"], "since": ["str", ""],
        "mode": ["Level", "Level.HIGH"]}


def test_a_bool_is_not_an_enum_member_of_value_1(app_client: Any) -> None:
    r = app_client.post("/api/v1/runs", json={"pipeline_id": "typed",
                                               "params": {"out": "/x", "day": "2026-12-07",
                                                          "level": True}})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "params.level"
    with pytest.raises(ValidationError, match="--param level"):
        parse_params(["level=true"], typed.fn)


def test_a_schedule_gives_logical_date_as_a_date_when_annotated_so(app_client: Any) -> None:
    """The slot is a UTC date and time; ``logical_date: date`` was refused (422) at the
    schedule's creation and at every firing."""
    c = app_client
    r = c.post("/api/v1/runs", json={"pipeline_id": "dated",
                                     "params": {"logical_date": "2026-12-07T02:00:00Z"}})
    assert r.status_code == 201, r.text
    run_id = r.json()["data"]["id"]
    assert r.json()["data"]["params"]["logical_date"] == "2026-12-07T02:00:00Z"   # as given
    assert c.post(f"/api/v1/runs/{run_id}/start").status_code == 202
    assert _finished(c, run_id)["state"] == "SUCCESS"
    assert c.get(f"/api/executions/{run_id}").json()["outputs"]["logical_date"] == \
        ["date", "2026-12-07"]
    pipe = c.app.state.services.catalog.find_pipeline("dated")
    s = c.post("/api/v1/schedules", json={"project_id": pipe.project_id, "pipeline_id": pipe.id,
                                          "kind": "CRON", "expression": "0 3 * * *"})
    assert s.status_code == 201, s.text


def test_an_adopted_run_gets_what_its_record_says(app_client: Any, tmp_path: Path) -> None:
    """An adoption built every text-kind value from its text: a run started from Python
    with text for a ``Path`` got a ``Path`` once adopted. A run whose parameters were not
    recorded exactly got their ``repr`` as the value; it now fails, saying how to resume it."""
    from twingraph.core.states import RunState
    from twingraph.engine.driverlock import _HOST
    from twingraph.service.adoption import Adopter
    svc = app_client.app.state.services
    pipe = svc.catalog.find_pipeline("typed")
    as_text = svc.catalog.create_run(pipe, params={"out": "/data/in.csv", "day": "2026-12-07"},
                                     source={"typed_params": ["day"]})
    inexact = svc.catalog.create_run(pipe, params={"out": "PurePosixPath('a')",
                                                   "day": "2026-12-07"},
                                     source={"inexact_params": ["out"], "typed_params": ["day"]})
    locks = svc.runs.engine._driver_locks
    locks.directory.mkdir(exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for run in (as_text, inexact):
        assert svc.catalog.claim_start(run.run_id, time.time())
        (locks.directory / f"{run.run_id}.lock").write_text(f"{dead.pid}:0:{_HOST}")
    Adopter(svc.runs, stale_after=60).adopt_once()
    done = _finished(app_client, as_text.run_id)
    assert done["state"] == "SUCCESS", done
    outputs = app_client.get(f"/api/executions/{as_text.run_id}").json()["outputs"]
    assert outputs["out"] == ["str", "/data/in.csv"] and outputs["day"] == ["date", "2026-12-07"]
    failed = svc.catalog.get_run(inexact.run_id)
    assert failed.state is RunState.FAILED and "--resume" in failed.error, failed.error


def test_the_cli_takes_a_slots_text_for_logical_date_as_rest_does() -> None:
    """REST and schedules give ``logical_date: date`` the date of the slot's text; the CLI
    refused that text (the second review)."""
    from typed_params_app import dated
    assert parse_params(["logical_date=2026-12-07T02:00:00Z"], dated.fn) == \
        {"logical_date": date(2026, 12, 7)}
    assert parse_params(["logical_date=2026-12-07"], dated.fn) == {"logical_date": date(2026, 12, 7)}
