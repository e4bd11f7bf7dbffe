"""The hot read, answered below FastAPI's routing: ``GET /api/v1/runs/{run_id}``.

Clients poll a run's status; at hundreds of requests a second FastAPI's route matching and
dependency solving cost more than the read itself. This pure ASGI middleware sits innermost —
inside request ids, rate limits, auth and versioning, so all of them still apply — and answers
exactly what the documented route (``v1.get_run``) answers, from the same service call. Anything
unusual (an error, a query string) falls through to the routed endpoint, which stays the
documented one in the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from twingraph.errors import NotFoundError
from twingraph.server import views
from twingraph.server.envelope import meta_values
from twingraph.service import Services

PREFIX = "/api/v1/runs/"


class HotReads:
    def __init__(self, app: Any, services: Services, route: Any = None) -> None:
        self.app, self.services, self.route = app, services, route
        # SQLite reads are local and take tens of microseconds: done on the event loop. A
        # PostgreSQL read waits for a network round trip: done on a few threads of our own,
        # each with its own long-lived connection, so the loop serves others meanwhile.
        self.remote = services.catalog.store._engine.dialect.name != "sqlite"
        self.reader = None if self.remote else services.catalog.status_reader()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="twingraph-hot-read") \
            if self.remote else None
        self._readers = [self.reader] if self.reader is not None else []
        services.extras.setdefault("stop", []).append(self.close)

    def _read(self, run_id: str) -> Any:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = self.services.catalog.status_reader()
            self._readers.append(reader)
        return self.services.runs.status(run_id, reader)

    def close(self) -> None:
        """At the app's shutdown (a "stop" hook): connections held outside the pool survive the
        pool's dispose, so they are closed here."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for reader in self._readers:
            reader.close()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if (scope["type"] != "http" or scope["method"] != "GET" or not path.startswith(PREFIX)
                or scope.get("query_string")):
            await self.app(scope, receive, send)
            return
        run_id = path[len(PREFIX):]
        if not run_id or "/" in run_id:
            await self.app(scope, receive, send)
            return
        try:
            if self._pool is not None:
                run, progress = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._read, run_id)
            else:
                run, progress = self.services.runs.status(run_id, self.reader)
        except NotFoundError:
            await self.app(scope, receive, send)        # the routed endpoint shapes the 404
            return
        state = scope.get("state", {})
        body = json.dumps({"data": views.run(run, progress),
                           "meta": meta_values(state.get("request_id"))}).encode()
        if self.route is not None:
            scope["route"] = self.route                 # metrics label it like the routed call
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
