"""The FastAPI app factory: one process serves every face on one ``Services``.

``create_app(services, load=[...])`` mounts the routers, installs the envelope/error handling,
metrics and (when configured) auth and rate limits, loads user modules (their ``@pipeline``s
become pipelines of the default project), and starts/stops the schedule firer with the app's
lifespan. ``twingraph server`` builds the embedded default and runs it under uvicorn.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from twingraph import __version__
from twingraph.server import envelope, monitoring, v1
from twingraph.server.metrics import Metrics
from twingraph.server.observability import RequestContext
from twingraph.service import Services

log = logging.getLogger("twingraph.server")


def load_modules(svc: Services, targets: Sequence[str]) -> list[str]:
    """Import ``targets`` (files or modules); register every ``@pipeline`` found in them.
    Returns the ids of the registered pipelines."""
    from twingraph.cli.loading import load_module
    from twingraph.dsl.pipeline import Pipeline
    ids = []
    for target in targets:
        module = load_module(target)
        allowed = svc.extras.get("stream_modules")
        if allowed is not None:
            allowed.add(module.__name__)          # its stream entry points may be submitted
        for value in vars(module).values():
            if isinstance(value, Pipeline):
                ids.append(svc.runs.register_python(value))
                hook = svc.extras.get("on_pipeline_loaded")
                if hook is not None:
                    hook(value)
    return ids


def create_app(svc: Services, *, load: Sequence[str] = (), lifespan_hooks: bool = True,
               auth: Any = None, rate_limits: Any = None) -> FastAPI:
    metrics = Metrics()
    svc.hub.listeners.append(metrics)
    stream = svc.extras.get("stream")
    if stream is not None:                         # the stream document's metrics, same /metrics
        from twingraph.stream.prometheus import StreamCollector
        metrics.registry.register(StreamCollector(lambda: [r.client.run for r in stream.jobs()]))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        starters = svc.extras.get("start", []) if lifespan_hooks else []
        for start in starters:
            start()
        try:
            yield
        finally:
            for stop in svc.extras.get("stop", []) if lifespan_hooks else []:
                stop()

    app = FastAPI(title="TwinGraph", version=__version__, lifespan=lifespan,
                  description="Pipelines, runs, schedules and streaming jobs. Faces: /api/v1 "
                              "(Tauro), /api (TwinGraph), /ws, /jobs.",
                  redirect_slashes=False)
    app.state.services = svc
    app.state.metrics = metrics
    app.state.auth_mode = "none" if auth is None else auth.mode
    # Security middleware, outermost last: rate limits (they charge refused requests too) ->
    # auth -> versioning -> routes; added before envelope.install so request ids wrap them.
    from twingraph.server.auth import Authenticator, AuthMiddleware, document_security
    from twingraph.server.ratelimit import RateLimitMiddleware
    from twingraph.server.versioning import VersioningMiddleware
    authenticator = auth if auth is not None else Authenticator.disabled()
    from twingraph.server.bodies import JsonBodyLimits
    from twingraph.server.fastpath import HotReads
    app.add_middleware(JsonBodyLimits)          # innermost: only bodies auth let through
    app.add_middleware(HotReads, services=svc, route=v1.get_run_route())
    app.add_middleware(VersioningMiddleware)
    app.add_middleware(AuthMiddleware, authenticator=authenticator)
    if authenticator.mode == "required":
        document_security(app)
    from twingraph.server import apikeys
    app.include_router(apikeys.router)      # /api/v1/api-keys, admin only (auth.ADMIN_PREFIXES)
    if rate_limits is not None:
        app.add_middleware(RateLimitMiddleware, limiter=rate_limits,
                           identify=authenticator.identity)
    envelope.install(app)           # its handlers, and ErrorBoundary around all of the above

    app.add_middleware(RequestContext, metrics=metrics)     # outermost: ids on refusals too

    app.include_router(v1.router)           # first: routes are matched in order, runs are hot
    app.include_router(monitoring.router)
    from twingraph.server import api, dynamic, ws
    app.include_router(api.router)
    app.include_router(ws.router)
    app.include_router(dynamic.router)
    for extra in svc.extras.get("routers", []):
        app.include_router(extra)
    if load:
        load_modules(svc, load)
    return app
