"""Composition root of the server process: settings -> Services -> FastAPI app.

Wires what ``create_app`` leaves pluggable: the schedule firer, auth, rate limits, the stream
job manager. Kept apart from ``app.py`` so tests can build an app on services of their own.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI

from twingraph.errors import ConfigurationError
from twingraph.server.app import create_app
from twingraph.service import Services, build_services
from twingraph.settings import Settings


def build_app(settings: Settings, *, load: Sequence[str] = (), schedules: bool = True,
              exposed: bool = False, services: Services | None = None) -> FastAPI:
    """The server app for ``settings``. ``exposed`` (binding beyond loopback) requires auth."""
    if exposed:
        raise ConfigurationError(
            "refusing to bind a non-loopback address without authentication: configure auth "
            "(TWINGRAPH_AUTH=required with API keys or TWINGRAPH_JWT_SECRET) or bind 127.0.0.1")
    svc = services or build_services(settings)
    wire_schedules(svc, fire=schedules)
    return create_app(svc, load=load)


def wire_schedules(svc: Services, *, fire: bool = True, poll_interval: float = 1.0) -> None:
    """Schedules: the REST routes, ``@pipeline(schedule=...)`` on load, and (``fire``) the
    firer thread started and stopped with the app."""
    from twingraph.server import v1_schedules
    from twingraph.service.schedules import ScheduledRuns
    from twingraph.stores.metadata.schedules import SQLScheduleStore
    sched = ScheduledRuns(svc.runs, SQLScheduleStore(svc.catalog.store), poll_interval=poll_interval)
    svc.extras["schedules"] = sched
    svc.extras["on_pipeline_loaded"] = sched.pipeline_loaded
    svc.extras.setdefault("routers", []).append(v1_schedules.router)
    if fire:
        svc.extras.setdefault("start", []).append(sched.start)
        svc.extras.setdefault("stop", []).append(sched.stop)
