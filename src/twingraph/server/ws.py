"""``/ws``: live execution events, pushed from the engine through the ``EventHub``.

Protocol (twingraph-api.md "WebSocket Events"): the client sends JSON messages
``{"action": "subscribe", "execution_id": ...}`` / ``{"action": "unsubscribe", ...}`` (and
``{"action": "ping"}``, answered by a ``pong`` event). The server sends

- ``{"event": "execution:update", "data": {execution_id, status, progress: {completed_nodes,
  total_nodes, failed_nodes, running_nodes, pending_nodes, ...}}}`` when the run changes state,
  at subscription (the current state — so a finished execution answers its terminal state at
  once), and after node completions (coalesced: one update per drained batch of events);
- ``{"event": "node:status", "data": {execution_id, node_id, component, status, duration,
  cache, error?}}`` on task state changes (statuses pending/queued/running/retrying/
  completed/failed/skipped/cancelled). When the sender falls behind, the events it drains in
  one go keep only each node's newest status, and pending/queued statuses are left out
  (``_coalesce``): a lagging client is brought up to date instead of replaying superseded
  states; a node's final status is always sent. ``outputs`` is not sent: values live in the result
  store, they do not travel in events (GET /api/executions/{id} has them);
- ``{"event": "error", "data": {execution_id, node_id, error, traceback}}`` when a task fails;
- ``{"event": "error", "data": {code, message, execution_id?}}`` for a message the server
  cannot act on (bad JSON, unknown action, unknown execution) — the connection stays open;
- ``{"event": "unsubscribed", "data": {execution_id}}`` and ``{"event": "pong", "data": {}}``.

Nothing polls: the hub pushes each engine event onto the connection's asyncio queue with
``call_soon_threadsafe`` and one sender task drains it; answers to the client's own messages go
through the same queue, so that task is the only writer of the socket. Each connection's queue is bounded
(``MAX_QUEUE``): a client that cannot keep up is closed with code 1013 rather than let the server
buffer without end. After a terminal ``execution:update`` the connection drops further events of
that execution (it is over). A closed or failed socket ends both tasks and unsubscribes
everything; dead TCP peers are found by the server's protocol-level ping (uvicorn
``ws_ping_interval``/``ws_ping_timeout``, 20 s by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from twingraph.errors import NotFoundError
from twingraph.server.bodies import json_problem
from twingraph.server.deps import services
from twingraph.service import Services
from twingraph.service import workflows as wf
from twingraph.service.events import Event, Subscriber

log = logging.getLogger("twingraph.server.ws")
router = APIRouter()

MAX_QUEUE = 10_000            # events buffered per connection before it is closed
MAX_SUBSCRIPTIONS = 1_000     # executions one connection may follow
MAX_MESSAGE = 64 * 1024       # bytes of one client message
_TERMINAL = frozenset({"SUCCESS", "FAILED", "CANCELLED"})
_OVERFLOW: Event = {"event": "__overflow__"}


class BoundedSubscriber(Subscriber):
    """A hub subscriber whose queue holds at most ``limit`` (``MAX_QUEUE``) events; past that
    it stops buffering and queues one overflow marker (the sender then closes the connection).

    Engine threads hand events over in bursts (a pipeline submits thousands of tasks at once);
    waking the event loop once per event costs a self-pipe write and a loop callback each. So
    ``push`` appends to a buffer and wakes the loop only when the buffer was empty: one wake-up
    per burst, drained in order by ``_drain`` on the loop.
    """

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.limit = MAX_QUEUE if limit is None else limit
        self.overflowed = False
        self._buffer: list[Event] = []
        self._lock = threading.Lock()

    def push(self, event: Event) -> None:
        with self._lock:
            wake = not self._buffer
            if len(self._buffer) <= self.limit:       # past the bound _drain will overflow
                self._buffer.append(event)
        if wake:
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:      # the loop is closed: the client went away
                pass

    def _drain(self) -> None:
        with self._lock:
            events, self._buffer = self._buffer, []
        for event in events:
            self._put(event)

    def _put(self, event: Event) -> None:
        """On the loop's thread: queue ``event`` unless the bound is reached."""
        if self.overflowed:
            return
        if self.queue.qsize() >= self.limit:
            self.overflowed = True
            self.queue.put_nowait(_OVERFLOW)
            return
        self.queue.put_nowait(event)


class Connection:
    """One WebSocket client: its subscriptions and the translation of engine events."""

    def __init__(self, ws: WebSocket, svc: Services) -> None:
        self.ws, self.svc = ws, svc
        self.sub = BoundedSubscriber()
        self.subscribed: set[str] = set()
        self.finished: set[str] = set()          # executions whose terminal update was sent
        self.dirty: set[str] = set()             # executions whose progress changed

    # -- client -> server -------------------------------------------------------------------
    async def receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                raw = message.get("bytes") or b""
                try:
                    text = raw.decode()
                except UnicodeDecodeError:
                    await self.bad("BAD_MESSAGE", "message is not UTF-8 JSON text")
                    continue
            if len(text) > MAX_MESSAGE:
                await self.bad("MESSAGE_TOO_LARGE", f"messages are limited to {MAX_MESSAGE} bytes")
                continue
            try:
                msg = json.loads(text)
            except ValueError:
                await self.bad("BAD_MESSAGE", "message is not JSON")
                continue
            if not isinstance(msg, dict):
                await self.bad("BAD_MESSAGE", "message must be a JSON object with 'action'")
                continue
            action, eid = msg.get("action"), msg.get("execution_id")
            if action == "ping":
                self.reply("pong", {})
                continue
            if action not in ("subscribe", "unsubscribe"):
                await self.bad("UNKNOWN_ACTION", f"unknown action {action!r}; expected "
                               "'subscribe', 'unsubscribe' or 'ping'")
                continue
            if not isinstance(eid, str) or not eid:
                await self.bad("BAD_MESSAGE", f"{action} needs 'execution_id' (a string)")
                continue
            if json_problem(eid) is not None:     # "\ud800": no id, and no text to store or send
                await self.bad("BAD_MESSAGE", "execution_id contains a lone UTF-16 surrogate")
                continue
            try:
                if action == "subscribe":
                    await self.subscribe(eid)
                else:
                    self.unsubscribe(eid)
                    self.reply("unsubscribed", {"execution_id": eid})
            except Exception:  # noqa: BLE001 - like ErrorBoundary: answered, logged, socket kept
                log.exception("websocket %s of %r failed", action, eid)
                self.unsubscribe(eid)
                await self.bad("INTERNAL_ERROR", "internal error; see the server log", eid)

    async def subscribe(self, eid: str) -> None:
        if eid in self.subscribed:              # again: answer the current state again
            self.finished.discard(eid)
            return await self.snapshot(eid)
        if len(self.subscribed) >= MAX_SUBSCRIPTIONS:
            return await self.bad("TOO_MANY_SUBSCRIPTIONS",
                                  f"at most {MAX_SUBSCRIPTIONS} executions per connection", eid)
        # Subscribe before reading the state: an event that happens meanwhile is queued, not lost.
        self.svc.hub.subscribe(eid, self.sub)
        self.subscribed.add(eid)
        self.finished.discard(eid)
        await self.snapshot(eid)

    async def snapshot(self, eid: str) -> None:
        try:
            update = await asyncio.to_thread(self._current, eid)
        except NotFoundError:
            self.unsubscribe(eid)
            return await self.bad("NOT_FOUND", f"execution {eid!r} not found", eid)
        self.sub._put({"event": "__snapshot__", "run_id": eid, "update": update})

    def _current(self, eid: str) -> dict[str, Any]:
        run = self.svc.catalog.get_run(eid)
        progress = (wf.live_progress(self.svc.engine, eid)
                    or wf.node_progress(self.svc.runs.progress(run)))
        return {"execution_id": eid, "status": wf.execution_status(run.state),
                "progress": progress, "terminal": run.state.terminal}

    def unsubscribe(self, eid: str) -> None:
        if eid in self.subscribed:
            self.svc.hub.unsubscribe(eid, self.sub)
            self.subscribed.discard(eid)
        self.dirty.discard(eid)

    def close(self) -> None:
        for eid in list(self.subscribed):
            self.unsubscribe(eid)

    # -- server -> client -------------------------------------------------------------------
    async def send(self, event: str, data: dict[str, Any]) -> None:
        await self.ws.send_text(json.dumps({"event": event, "data": data}, default=str))

    def reply(self, event: str, data: dict[str, Any]) -> None:
        """Answer the client through the same queue as the engine's events: one task writes
        the socket (frames never interleave, answers keep their order), and a client that
        sends without reading hits the same bound."""
        self.sub._put({"event": "__reply__", "reply": {"event": event, "data": data}})

    async def bad(self, code: str, message: str, eid: str | None = None) -> None:
        data: dict[str, Any] = {"code": code, "message": message}
        if eid is not None:
            data["execution_id"] = eid
        self.reply("error", data)

    async def send_loop(self) -> None:
        queue = self.sub.queue
        while True:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < 2000:
                batch.append(queue.get_nowait())
            for ev in _coalesce(batch):
                if ev is _OVERFLOW:
                    await self.ws.close(code=1013, reason="too many unread events")
                    return
                await self.forward(ev)
            for eid in list(self.dirty):
                self.dirty.discard(eid)
                progress = wf.live_progress(self.svc.engine, eid)
                if progress is not None and eid in self.subscribed and eid not in self.finished:
                    await self.send("execution:update", {"execution_id": eid,
                                                         "status": "running",
                                                         "progress": progress})

    async def forward(self, ev: Event) -> None:
        if ev.get("event") == "__reply__":
            await self.ws.send_text(json.dumps(ev["reply"], default=str))
            return
        eid = ev.get("run_id")
        if not isinstance(eid, str) or eid not in self.subscribed or eid in self.finished:
            return
        kind = ev.get("event")
        if kind == "__snapshot__":
            update = dict(ev["update"])
            if update.pop("terminal"):
                self.finished.add(eid)
            await self.send("execution:update", update)
        elif kind == "run:status":
            status = str(ev.get("status"))
            progress = wf.live_progress(self.svc.engine, eid)
            if progress is None and isinstance(ev.get("progress"), dict):
                progress = _engine_progress(ev["progress"])
            if status in _TERMINAL:
                self.finished.add(eid)
                self.dirty.discard(eid)
            await self.send("execution:update", {"execution_id": eid,
                                                 "status": wf.execution_status(status),
                                                 "progress": progress or {}})
        elif kind == "node:status":
            status = str(ev.get("status"))
            data: dict[str, Any] = {"execution_id": eid, "node_id": ev.get("node_id"),
                                    "component": ev.get("component"),
                                    "status": wf.node_status(status),
                                    "duration": ev.get("duration"), "cache": ev.get("cache")}
            if ev.get("error") is not None:
                data["error"] = ev["error"]
            await self.send("node:status", data)
            if status in ("SUCCESS", "FAILED", "SKIPPED", "CANCELLED"):
                self.dirty.add(eid)
        elif kind == "error":
            await self.send("error", {"execution_id": eid, "node_id": ev.get("node_id"),
                                      "error": ev.get("error"), "traceback": ev.get("traceback")})


LAGGING_BATCH = 64            # a drained batch this large means the sender is behind
_WAITING = frozenset({"PENDING", "QUEUED"})


def _coalesce(batch: list[Event]) -> list[Event]:
    """Within one drained batch, keep only the newest ``node:status`` of each node (at its
    newest position); every other event stays, in order. When the batch is large (the sender
    is behind: a burst of thousands of tasks), ``pending``/``queued`` node statuses are not
    sent at all — they only say a node is waiting, which ``execution:update``'s counts also
    say, and each node's running/final status follows. A client that is up to date gets every
    transition; one that fell behind gets current states instead of a backlog of superseded
    ones, so the queue shrinks the further it lags. Final statuses are always sent."""
    if len(batch) < 3:
        return batch
    lagging = len(batch) >= LAGGING_BATCH
    newest: dict[tuple[Any, Any], int] = {}
    nodes = 0
    for i, ev in enumerate(batch):
        if ev.get("event") == "node:status":
            newest[(ev.get("run_id"), ev.get("node_id"))] = i
            nodes += 1
    if len(newest) == nodes and not lagging:
        return batch
    return [ev for i, ev in enumerate(batch) if ev.get("event") != "node:status"
            or (newest[(ev.get("run_id"), ev.get("node_id"))] == i
                and not (lagging and ev.get("status") in _WAITING))]


def _engine_progress(p: dict[str, Any]) -> dict[str, Any]:
    """The engine's final ``RunLoop.progress()`` in the ``*_nodes`` spelling."""
    total = int(p.get("total", 0))
    skipped = int(p.get("skipped", 0)) + int(p.get("cancelled", 0))
    return {"total_nodes": total, "completed_nodes": int(p.get("succeeded", 0)),
            "failed_nodes": int(p.get("failed", 0)), "running_nodes": int(p.get("running", 0)),
            "pending_nodes": int(p.get("pending", 0)) + int(p.get("queued", 0)),
            "skipped_nodes": skipped, "percent": round(float(p.get("percent", 0.0)), 2)}


@router.websocket("/ws")
async def websocket(ws: WebSocket) -> None:
    await ws.accept()
    conn = Connection(ws, services(ws))
    receiver = asyncio.create_task(conn.receive_loop())
    sender = asyncio.create_task(conn.send_loop())
    try:
        await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        conn.close()
        for task in (receiver, sender):
            task.cancel()
        for task in (receiver, sender):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            exc = None if task.cancelled() else task.exception()
            if exc is not None and not isinstance(exc, WebSocketDisconnect):
                log.debug("websocket task ended: %r", exc)
        if ws.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await ws.close()
