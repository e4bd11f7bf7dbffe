"""Fan-out of engine events to the server's listeners (WebSocket subscribers, metrics).

The engine calls the hub from its loop threads; a hub call must not block, so each subscriber
gets the event through its own asyncio loop (``call_soon_threadsafe``) and buffers it in an
unbounded queue that its WebSocket task drains. A subscriber that cannot keep up therefore costs
memory, not engine time; the WebSocket face drops a client whose queue passes a bound.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

Event = dict[str, Any]


class Subscriber:
    """One listener on an asyncio loop; ``queue`` receives events in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def push(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:          # the loop is closed: the client went away
            pass


class EventHub:
    """Routes events by ``run_id`` to subscribers; ``listeners`` see every event."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_run: dict[str, set[Subscriber]] = {}
        self.listeners: list[Callable[[Event], None]] = []

    def __call__(self, event: Event) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a listener must never break the engine
                pass
        run_id = event.get("run_id")
        if run_id is None:
            return
        with self._lock:
            subs = tuple(self._by_run.get(run_id, ()))
        for sub in subs:
            sub.push(event)

    def subscribe(self, run_id: str, sub: Subscriber) -> None:
        with self._lock:
            self._by_run.setdefault(run_id, set()).add(sub)

    def unsubscribe(self, run_id: str, sub: Subscriber) -> None:
        with self._lock:
            subs = self._by_run.get(run_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_run[run_id]

    def subscriber_count(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._by_run.values())
