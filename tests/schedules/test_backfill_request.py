"""``POST /api/v1/schedules/{id}/backfill``: the request body's ``count`` is a JSON integer.

Review (session 14): pydantic's lax mode turned ``true`` into 1, ``"3"`` into 3 and ``2.0``
into 2, and each created runs. They are the documented 422 VALIDATION_ERROR now, naming the
field, and create nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from twingraph.server.app import create_app
from twingraph.server.build import wire_schedules
from twingraph.service import Services, build_services
from twingraph.settings import Settings

RESOURCES = Path(__file__).resolve().parents[1] / "resources"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Services, str]]:
    home = tmp_path_factory.mktemp("backfill")
    svc = build_services(Settings(home=home, database_url=f"sqlite:///{home}/tg.db"))
    wire_schedules(svc, fire=False)                 # the runs stay queued: nothing executes
    app = create_app(svc, load=[str(RESOURCES / "v1_app.py")])
    try:
        with TestClient(app, raise_server_exceptions=False) as c:
            pipe = svc.catalog.find_pipeline("sum_numbers")
            r = c.post("/api/v1/schedules", json={"project_id": pipe.project_id,
                                                   "pipeline_id": pipe.id, "kind": "CRON",
                                                   "expression": "0 0 * * *"})
            assert r.status_code == 201, r.text
            yield c, svc, r.json()["data"]["id"]
    finally:
        svc.close()


@pytest.mark.parametrize("count", [True, False, "3", "1", 2.0, 1.5, [1], {"n": 1}])
def test_a_count_that_is_not_a_json_integer_is_a_422_and_creates_nothing(
        server: tuple[TestClient, Services, str], count: Any) -> None:
    c, svc, sid = server
    before = svc.catalog.list_runs(schedule_id=sid)[1]
    r = c.post(f"/api/v1/schedules/{sid}/backfill", json={"count": count})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert [d["field"] for d in error["details"]] == ["count"]
    assert svc.catalog.list_runs(schedule_id=sid)[1] == before


def test_an_integer_count_still_creates_that_many_runs(
        server: tuple[TestClient, Services, str]) -> None:
    c, svc, sid = server
    before = svc.catalog.list_runs(schedule_id=sid)[1]
    r = c.post(f"/api/v1/schedules/{sid}/backfill", json={"count": 2})
    assert r.status_code == 201, r.text
    assert r.json()["data"]["count"] == 2
    assert svc.catalog.list_runs(schedule_id=sid)[1] == before + 2
