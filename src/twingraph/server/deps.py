"""Request-scoped access to the process's ``Services`` (set by the app factory)."""

from __future__ import annotations

from fastapi import Request
from starlette.requests import HTTPConnection

from twingraph.service import Services


def services(request: Request | HTTPConnection) -> Services:
    svc: Services = request.app.state.services
    return svc
