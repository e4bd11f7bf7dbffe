"""Prometheus metrics named as in the architecture document, fed by engine events.

``twingraph_component_executions_total{component,platform,status}`` counts finished tasks
(status is the task's terminal state in lower case); ``twingraph_execution_duration_seconds``
observes each finished run's wall time; ``twingraph_http_requests_total`` and
``twingraph_http_request_duration_seconds`` time the API itself. Each app gets its own registry so
two apps in one process (tests) do not collide.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from twingraph.registry import registered_components

_TERMINAL = {"SUCCESS", "FAILED", "SKIPPED", "CANCELLED"}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.component_executions = Counter(
            "twingraph_component_executions_total", "Finished component executions (tasks)",
            ["component", "platform", "status"], registry=self.registry)
        self.execution_duration = Histogram(
            "twingraph_execution_duration_seconds", "Wall time of finished executions (runs)",
            ["status"], registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600))
        self.runs_active = Gauge("twingraph_runs_active", "Runs being driven by this server",
                                 registry=self.registry)
        self.http_requests = Counter("twingraph_http_requests_total", "HTTP requests",
                                     ["method", "route", "status"], registry=self.registry)
        self.http_duration = Histogram("twingraph_http_request_duration_seconds",
                                       "HTTP request latency", ["method", "route"],
                                       registry=self.registry,
                                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                0.25, 0.5, 1, 2.5))
        self._started: dict[str, float] = {}
        self._platforms: dict[str, str] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "node:status" and event.get("status") in _TERMINAL:
            component = str(event.get("component", "?"))
            self.component_executions.labels(component, self._platform(component),
                                             str(event["status"]).lower()).inc()
        elif kind == "run:status":
            run_id, status = event.get("run_id", ""), event.get("status")
            if status == "RUNNING":
                self._started[run_id] = time.monotonic()
                self.runs_active.inc()
            elif status in ("SUCCESS", "FAILED", "CANCELLED"):
                start = self._started.pop(run_id, None)
                if start is not None:
                    self.runs_active.dec()
                    self.execution_duration.labels(str(status).lower()).observe(
                        time.monotonic() - start)

    def _platform(self, component: str) -> str:
        p = self._platforms.get(component)
        if p is None:
            spec = getattr(registered_components().get(component), "spec", None)
            p = self._platforms[component] = str(getattr(spec, "platform", "local"))
        return p

    def render(self) -> bytes:
        return generate_latest(self.registry)
