"""The SDK against two server replicas that share one PostgreSQL (how several servers are
deployed behind a load balancer): a client of replica A waits for a run that replica B drives.

``/ws`` events are per process, so replica A never sends that run's end; ``wait`` must still
see it end (it re-reads the status while the socket stays quiet) instead of hanging until its
timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Server, fresh_postgres_database, start_server, stop_server, unique
from tests.resources import server_app as app
from twingraph import Workflow
from twingraph.client import AsyncTwinGraphClient, TwinGraphClient


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    with fresh_postgres_database("twingraph_replicas") as url:
        started: list[Server] = []
        try:
            for replica in ("a", "b"):          # one after the other: the first migrates
                started.append(start_server(tmp_path_factory.mktemp(f"replica-{replica}"),
                                            {"TWINGRAPH_DATABASE_URL": url}, backend="postgres"))
            yield started[0], started[1]
        finally:
            for srv in started:
                stop_server(srv)


def nap_workflow(client: TwinGraphClient) -> str:
    wf = Workflow(name=unique("replica_nap"))
    wf.add_component("nap", app.sleep_for, config={"seconds": 1.0})
    return client.workflows.create(wf)


def test_sync_wait_sees_a_run_that_another_replica_drives(replicas):
    a, b = replicas
    with TwinGraphClient(a.base_url) as on_a, TwinGraphClient(b.base_url) as on_b:
        run = on_a.runs.create(nap_workflow(on_a))
        on_b.runs.start(run["id"])
        done = on_a.executions.wait_for_completion(run["id"], timeout=20)
        assert done.status == "completed"
        assert on_a.runs.wait(run["id"], timeout=5)["state"] == "SUCCESS"


def test_async_wait_sees_a_run_that_another_replica_drives(replicas):
    a, b = replicas
    with TwinGraphClient(a.base_url) as setup:
        wid = nap_workflow(setup)

    async def main() -> None:
        async with AsyncTwinGraphClient(a.base_url) as on_a, \
                AsyncTwinGraphClient(b.base_url) as on_b:
            first, second = (await on_a.runs.create(wid), await on_a.runs.create(wid))
            await on_b.runs.start(first["id"])
            await on_b.runs.start(second["id"])
            done, finished = await asyncio.gather(
                on_a.executions.wait_for_completion(first["id"], timeout=20),
                on_a.runs.wait(second["id"], timeout=20))
            assert done.status == "completed" and finished["state"] == "SUCCESS"
    asyncio.run(main())
