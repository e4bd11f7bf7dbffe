"""Composition root of the server process: settings -> Services -> FastAPI app.

Wires what ``create_app`` leaves pluggable: the schedule firer, auth, rate limits, the stream
job manager. Kept apart from ``app.py`` so tests can build an app on services of their own.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI

from twingraph.server.app import create_app
from twingraph.server.auth import build_authenticator
from twingraph.server.ratelimit import build_rate_limiter
from twingraph.service import Services, build_services
from twingraph.settings import Settings


def build_app(settings: Settings, *, load: Sequence[str] = (), schedules: bool = True,
              exposed: bool = False, services: Services | None = None) -> FastAPI:
    """The server app for ``settings``. ``exposed`` (binding beyond loopback) requires auth."""
    stale_after = settings.adoption_delay()      # refused before anything is built
    svc = services or build_services(settings)
    try:    # exposed + no usable credentials -> ConfigurationError (server/auth.py)
        auth = build_authenticator(settings, svc.catalog.store, exposed=exposed)
        rate_limits = build_rate_limiter(settings)
    except BaseException:
        if services is None:
            svc.close()
        raise
    wire_schedules(svc, fire=schedules)
    wire_adoption(svc, stale_after=stale_after)
    from twingraph.server.stream import wire_stream
    wire_stream(svc)
    return create_app(svc, load=load, auth=auth, rate_limits=rate_limits)


def wire_adoption(svc: Services, *, stale_after: float = 30.0, interval: float | None = None) -> None:
    """Finish runs whose driver died (see ``service.adoption``), checked with the app running."""
    from twingraph.service.adoption import Adopter
    adopter = Adopter(svc.runs, stale_after=stale_after,
                      interval=interval if interval is not None else max(1.0, stale_after / 3))
    svc.extras["adopter"] = adopter
    svc.extras.setdefault("start", []).append(adopter.start)
    svc.extras.setdefault("stop", []).append(adopter.stop)


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
