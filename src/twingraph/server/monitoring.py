"""Health, info, statistics and Prometheus metrics (tauro-api.md "Monitoring and Health").

``/health`` answers without auth and checks both stores for real (a query on the metadata
database, a lookup in the result store); it is served at ``/health`` and ``/api/v1/health``.
``/statistics`` is computed at most once a minute (the document: "cached for 60 seconds").
"""

from __future__ import annotations

import asyncio
import logging
import platform
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from twingraph import __version__
from twingraph.server.deps import services
from twingraph.server.envelope import iso, ok

log = logging.getLogger("twingraph.server")
router = APIRouter(tags=["monitoring"])
STATISTICS_TTL = 60.0


def _check(fn: Any) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - a failed check is reported, not raised
        # /health answers without auth: name the failure, keep hosts and users to the log.
        log.error("health check failed: %s: %s", type(exc).__name__, exc)
        return {"status": "unhealthy", "error": type(exc).__name__}
    return {"status": "healthy", "latency_ms": round((time.perf_counter() - start) * 1000, 2)}


async def health(request: Request) -> Any:
    svc = services(request)

    def metadata() -> None:
        store = svc.catalog.store
        store.get_run("__health__")
        check_file = getattr(store, "check_file", None)    # a SQLite file replaced under it
        if check_file is not None:
            check_file()

    def checks() -> dict[str, Any]:
        return {"metadata_store": _check(metadata),
                "result_store": _check(lambda: svc.engine.results.head("__health__"))}
    results = await asyncio.to_thread(checks)
    healthy = all(c["status"] == "healthy" for c in results.values())
    body = {"status": "healthy" if healthy else "unhealthy", "version": __version__,
            "timestamp": iso(time.time()), "checks": results}
    return JSONResponse(body, status_code=200 if healthy else 503)


router.add_api_route("/health", health, methods=["GET"])
router.add_api_route("/api/v1/health", health, methods=["GET"])


@router.get("/api/v1/info")
async def info(request: Request) -> Any:
    svc = services(request)
    s = svc.settings
    return ok(request, {
        "name": "TwinGraph", "version": __version__, "api_versions": ["v1", "v2"],
        "python": platform.python_version(),
        "metadata_store": svc.catalog.store.url, "result_store": type(svc.engine.results).__name__,
        "home": str(s.home), "executor": svc.engine.executor.platform,
        "auth": request.app.state.auth_mode, "faces": ["/api/v1", "/api", "/ws", "/jobs"]})


@router.get("/api/v1/statistics")
async def statistics(request: Request) -> Any:
    state = request.app.state
    cached = getattr(state, "statistics_cache", None)
    now = time.monotonic()
    if cached is None or now - cached[0] > STATISTICS_TTL:
        data = await asyncio.to_thread(services(request).catalog.statistics)
        data["computed_at"] = iso(time.time())
        state.statistics_cache = cached = (now, data)
    return ok(request, cached[1])


async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


router.add_api_route("/metrics", metrics, methods=["GET"])
router.add_api_route("/api/v1/metrics", metrics, methods=["GET"])
