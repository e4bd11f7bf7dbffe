"""``AsyncTwinGraphClient`` against the real server: the documented async flow, with
``wait_for_completion`` listening on ``/ws`` (``mode="websocket"`` forbids the polling fallback,
so these tests fail if the events do not arrive)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from websockets.asyncio.client import connect

from tests.e2e.conftest import unique
from tests.resources import server_app as app
from twingraph import Workflow
from twingraph.client import AsyncTwinGraphClient, NotFound, WaitTimeout


def run(coro):
    return asyncio.run(coro)


def test_documented_async_flow(server):
    async def main():
        async with AsyncTwinGraphClient(server.base_url) as client:
            execution = await client.executions.create_async(
                workflow_id="etl_python", inputs={"n": 3, "date": "2025-01-26"})
            result = await client.executions.wait_for_completion(execution.id, timeout=1800,
                                                                 mode="websocket")
            assert result.status == "completed"
            assert result.outputs["outputs"] == {"loaded": 3, "total": 6}
            again = await client.executions.wait_for_completion(execution.id, timeout=5,
                                                                mode="websocket")
            assert again.status == "completed"          # a finished execution answers at once
    run(main())


def test_wait_on_several_executions_at_once_and_stop(server):
    async def main():
        async with AsyncTwinGraphClient(server.base_url) as client:
            wf = Workflow(name=unique("nap"))
            wf.add_component("nap", app.sleep_for, config={"seconds": "${params.seconds}"})
            wid = await client.workflows.create(wf)
            quick = [await client.executions.create(wid, inputs={"seconds": (2 + i) / 10})
                     for i in range(3)]
            results = await asyncio.gather(*(client.executions.wait_for_completion(
                e.id, timeout=60, mode="websocket") for e in quick))
            assert [r.status for r in results] == ["completed"] * 3
            assert [r.outputs["nap"]["slept"] for r in results] == [0.2, 0.3, 0.4]

            slow = await client.executions.create(wid, inputs={"seconds": 30})
            with pytest.raises(WaitTimeout) as info:
                await client.executions.wait_for_completion(slow.id, timeout=0.5,
                                                            mode="websocket")
            assert info.value.last_status == "running"
            waiter = asyncio.create_task(client.executions.wait_for_completion(
                slow.id, timeout=30, mode="websocket"))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            await client.executions.stop(slow.id)
            final = await waiter
            assert final.status == "cancelled"
            assert time.monotonic() - started < 10

            with pytest.raises(NotFound):
                await client.executions.wait_for_completion("run_does_not_exist", timeout=5,
                                                            mode="websocket")
            polled = await client.executions.wait_for_completion(quick[0].id, timeout=5,
                                                                 mode="poll")
            assert polled.status == "completed"
    run(main())


def test_ws_events_of_an_execution(server):
    """The raw protocol the SDK relies on: node:status for each node, then a terminal
    execution:update, for a subscriber that joined before the execution started."""
    async def main():
        async with AsyncTwinGraphClient(server.base_url) as client:
            run_ = await client.runs.create("etl_python", params={"n": 2})
            async with connect(server.ws_url) as ws:
                await ws.send(json.dumps({"action": "subscribe", "execution_id": run_["id"]}))
                first = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert first["event"] == "execution:update"
                assert first["data"]["status"] == "pending"
                await client.runs.start(run_["id"])
                events = []
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    events.append(msg)
                    if msg["event"] == "execution:update" and msg["data"]["status"] in (
                            "completed", "failed", "cancelled"):
                        break
            assert events[-1]["data"]["status"] == "completed"
            done_nodes = {e["data"]["component"] for e in events
                          if e["event"] == "node:status" and e["data"]["status"] == "completed"}
            assert done_nodes == {"extract", "transform", "load"}
    run(main())
