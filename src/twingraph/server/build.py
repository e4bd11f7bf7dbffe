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
    return create_app(svc, load=load)
