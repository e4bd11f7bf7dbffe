"""``wait_for_completion``: event-driven over ``/ws``, polling only when the socket fails.

The waiter opens ``/ws`` (with the client's credentials in the handshake headers), sends
``{"action": "subscribe", "execution_id": ...}``, then reads the status once over HTTP — so an
execution that finished before the subscription took effect is seen at once — and otherwise
sleeps on the socket until an ``execution:update`` event with a terminal status arrives for that
execution. The final state is then read over HTTP (the event may carry less than the status
route, e.g. no outputs) and, if the store lags the event, re-read with a short backoff.

Events are per server process: behind a load balancer the socket may reach a replica that is
not driving the execution (another replica started it, or its schedule firer did), and that
replica never sends its end. So while the socket is open the status is also re-read over HTTP
at growing intervals (1 s doubling to 15 s): such an execution is seen to end at most 15 s
late instead of never. ``mode="websocket"`` does not re-read: it relies on the events alone.

If the socket cannot be opened (no ``/ws`` on that server, a proxy that refuses upgrades) or
drops mid-wait, the waiter falls back to polling the status with exponential backoff (50 ms
growing to 1 s) for the time that is left. ``mode="websocket"`` forbids the fallback (an error
instead), ``mode="poll"`` never opens the socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import httpx

from twingraph.client.errors import ClientError, TransportError, WaitTimeout
from twingraph.client.models import Execution, is_terminal

log = logging.getLogger("twingraph.client")

WaitMode = Literal["auto", "websocket", "poll"]
FIRST_POLL, MAX_POLL, OPEN_TIMEOUT = 0.05, 1.0, 5.0
#: Status re-reads while the socket is open (the events may come from another replica).
FIRST_RECHECK, MAX_RECHECK = 1.0, 15.0


def ws_url(base_url: httpx.URL) -> str:
    scheme = "wss" if base_url.scheme == "https" else "ws"
    return str(base_url.copy_with(scheme=scheme, path=base_url.path.rstrip("/") + "/ws",
                                  query=None, fragment=None))


def subscribe_message(execution_id: str) -> str:
    return json.dumps({"action": "subscribe", "execution_id": execution_id})


def classify(raw: str | bytes, execution_id: str) -> Literal["final", "check", None]:
    """'final' for a terminal ``execution:update`` of this execution, 'check' for an
    execution-level ``error`` event (look at the status), None for anything else."""
    try:
        msg = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("data"), dict):
        return None
    payload: dict[str, Any] = msg["data"]
    if payload.get("execution_id", payload.get("run_id")) != execution_id:
        return None
    if msg.get("event") == "execution:update" and is_terminal(payload.get("status")):
        return "final"
    if msg.get("event") == "error" and not payload.get("node_id"):
        return "check"
    return None


class _Recheck:
    """When to re-read the status while waiting on the socket (module doc): ``wait`` is how
    long the next receive may block, ``due`` says whether a receive that timed out did so for
    the re-read (then the next one is twice as far, up to ``MAX_RECHECK``)."""

    def __init__(self, mode: WaitMode) -> None:
        self.interval = FIRST_RECHECK
        self.at = time.monotonic() + self.interval if mode == "auto" else math.inf

    def wait(self, remaining: float) -> float:
        return max(0.0, min(remaining, self.at - time.monotonic()))

    def due(self) -> bool:
        now = time.monotonic()
        if now < self.at:
            return False
        self.interval = min(self.interval * 2, MAX_RECHECK)
        self.at = now + self.interval
        return True


def _check_mode(mode: str) -> None:
    if mode not in ("auto", "websocket", "poll"):
        raise ValueError(f"mode must be 'auto', 'websocket' or 'poll', not {mode!r}")


# -- async ---------------------------------------------------------------------------------
async def wait_async(url: str, headers: dict[str, str], execution_id: str, timeout: float,
                     get_status: Callable[[], Awaitable[Execution]],
                     mode: WaitMode = "auto") -> Execution:
    _check_mode(mode)
    deadline = time.monotonic() + timeout
    if mode != "poll":
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, WebSocketException
        try:
            ws = await connect(url, additional_headers=headers,
                               open_timeout=min(OPEN_TIMEOUT, max(timeout, 0.1)))
        except (OSError, WebSocketException, TimeoutError) as exc:
            if mode == "websocket":
                raise TransportError(f"cannot open {url}: {exc}") from exc
            log.info("websocket %s unavailable (%s); polling instead", url, exc)
        else:
            async with ws:
                try:
                    await ws.send(subscribe_message(execution_id))
                    last = await get_status()
                    recheck = _Recheck(mode)
                    while not last.done:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise WaitTimeout(execution_id, timeout, last.status)
                        try:
                            raw = await asyncio.wait_for(ws.recv(), recheck.wait(remaining))
                        except TimeoutError:
                            if recheck.due():
                                last = await get_status()
                                continue
                            raise WaitTimeout(execution_id, timeout, last.status) from None
                        kind = classify(raw, execution_id)
                        if kind == "final":
                            return await _settle_async(execution_id, timeout, deadline, get_status)
                        if kind == "check":
                            last = await get_status()
                    return last
                except ConnectionClosed as exc:
                    if mode == "websocket":
                        raise TransportError(f"{url} closed while waiting: {exc}") from exc
                    log.info("websocket closed while waiting (%s); polling instead", exc)
    return await _settle_async(execution_id, timeout, deadline, get_status)


async def _settle_async(execution_id: str, timeout: float, deadline: float,
                        get_status: Callable[[], Awaitable[Execution]]) -> Execution:
    delay = FIRST_POLL
    while True:
        last = await get_status()
        if last.done:
            return last
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(execution_id, timeout, last.status)
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 1.5, MAX_POLL)


# -- blocking ------------------------------------------------------------------------------
def wait_sync(url: str, headers: dict[str, str], execution_id: str, timeout: float,
              get_status: Callable[[], Execution], mode: WaitMode = "auto") -> Execution:
    _check_mode(mode)
    deadline = time.monotonic() + timeout
    if mode != "poll":
        from websockets.exceptions import ConnectionClosed, WebSocketException
        from websockets.sync.client import connect
        try:
            ws = connect(url, additional_headers=headers,
                         open_timeout=min(OPEN_TIMEOUT, max(timeout, 0.1)))
        except (OSError, WebSocketException, TimeoutError) as exc:
            if mode == "websocket":
                raise TransportError(f"cannot open {url}: {exc}") from exc
            log.info("websocket %s unavailable (%s); polling instead", url, exc)
        else:
            with ws:
                try:
                    ws.send(subscribe_message(execution_id))
                    last = get_status()
                    recheck = _Recheck(mode)
                    while not last.done:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise WaitTimeout(execution_id, timeout, last.status)
                        try:
                            raw = ws.recv(timeout=recheck.wait(remaining))
                        except TimeoutError:
                            if recheck.due():
                                last = get_status()
                                continue
                            raise WaitTimeout(execution_id, timeout, last.status) from None
                        kind = classify(raw, execution_id)
                        if kind == "final":
                            return _settle_sync(execution_id, timeout, deadline, get_status)
                        if kind == "check":
                            last = get_status()
                    return last
                except ConnectionClosed as exc:
                    if mode == "websocket":
                        raise TransportError(f"{url} closed while waiting: {exc}") from exc
                    log.info("websocket closed while waiting (%s); polling instead", exc)
    return _settle_sync(execution_id, timeout, deadline, get_status)


def _settle_sync(execution_id: str, timeout: float, deadline: float,
                 get_status: Callable[[], Execution]) -> Execution:
    delay = FIRST_POLL
    while True:
        last = get_status()
        if last.done:
            return last
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(execution_id, timeout, last.status)
        time.sleep(min(delay, remaining))
        delay = min(delay * 1.5, MAX_POLL)


__all__ = ["ClientError", "WaitMode", "wait_async", "wait_sync", "ws_url"]
