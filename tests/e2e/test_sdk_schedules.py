"""Schedules through the blocking SDK against the real server (both metadata backends): the
calls docs/sdk.md documents, and bad input answered with a typed error that changes nothing."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.conftest import unique
from tests.resources import server_app as app
from twingraph.client import AsyncTwinGraphClient, TwinGraphClient, ValidationFailed


@pytest.fixture
def client(server):
    with TwinGraphClient(base_url=server.base_url, timeout=30) as c:
        yield c


@pytest.fixture
def pipeline(client):
    project = client.projects.create(unique("sdk_sched"))
    return client.pipelines.create(project["id"], app.etl_definition(), name="etl")


def test_create_without_project_id_takes_the_pipelines_project(client, pipeline):
    """docs/sdk.md: ``schedules.create(pipeline_id, kind, expression, project_id=, ...)``; the
    server required project_id, so the call without it was always a 422."""
    sched = client.schedules.create(pipeline["id"], "CRON", "0 2 * * *", enabled=False)
    assert (sched["project_id"], sched["pipeline_id"]) == (pipeline["project_id"], pipeline["id"])
    client.schedules.delete(sched["id"])


def test_update_refuses_params_its_runs_could_not_start_with(client):
    """Creating a schedule refuses params that do not fit its pipeline (every fire would fail);
    updating to such params was accepted, and then every fire failed in the server's log."""
    # etl_python(date, n, factor) of server_app.py, by name in the default project
    sched = client.schedules.create("etl_python", "INTERVAL", "1d", project_id="default",
                                    enabled=False, params={"n": 2})
    try:
        with pytest.raises(ValidationFailed):
            client.schedules.create("etl_python", "INTERVAL", "1d", project_id="default",
                                    params={"bogus": 1})
        with pytest.raises(ValidationFailed, match="bogus"):
            client.schedules.update(sched["id"], params={"bogus": 1})
        assert client.schedules.get(sched["id"])["params"] == {"n": 2}      # nothing written
        assert client.schedules.update(sched["id"], params={"n": 5})["params"] == {"n": 5}
    finally:
        client.schedules.delete(sched["id"])


def test_backfill_before_year_one_is_a_validation_error(client, pipeline):
    """The last 30 slots of a 36500-day interval lie before year 1: that was a 500."""
    sched = client.schedules.create(pipeline["id"], "INTERVAL", "36500d",
                                    project_id=pipeline["project_id"], enabled=False)
    with pytest.raises(ValidationFailed, match="before year 1"):
        client.schedules.backfill(sched["id"], count=30)
    assert client.runs.list(schedule_id=sched["id"]).total == 0
    assert client.schedules.backfill(sched["id"], count=1)["count"] == 1
    client.schedules.delete(sched["id"])


def test_list_sorts_like_every_other_list(client, pipeline, server):
    """GET /api/v1/schedules takes ``sort`` (tauro-api.md "Common Query Parameters"); the
    SDK's ``schedules.list`` had no such parameter (a TypeError), sync and async."""
    later, earlier = (client.schedules.create(pipeline["id"], "INTERVAL", expr,
                                              project_id=pipeline["project_id"])
                      for expr in ("1d", "1h"))          # next_run_at: created + interval
    want = [earlier["id"], later["id"]]
    assert [s["id"] for s in client.schedules.list(project_id=pipeline["project_id"],
                                                  sort="next_run_at")] == want
    assert [s["id"] for s in client.schedules.list(project_id=pipeline["project_id"],
                                                  sort="-next_run_at")] == want[::-1]

    async def listed() -> list[str]:
        async with AsyncTwinGraphClient(server.base_url) as aclient:
            page = await aclient.schedules.list(project_id=pipeline["project_id"],
                                                sort="next_run_at", limit=1, offset=1)
            return [s["id"] for s in page]
    assert asyncio.run(listed()) == [later["id"]]
