"""Settings read from ``TWINGRAPH_*`` environment variables, at the edge only.

``TWINGRAPH_HOME`` (default ``./.twingraph``) holds the embedded stores;
``TWINGRAPH_DATABASE_URL`` selects the metadata database (default SQLite in the home);
``TWINGRAPH_RESULT_STORE`` is ``sqlite`` (default) or ``filesystem``;
``TWINGRAPH_COMPRESSION`` is ``zstd``, or off (empty, ``none`` or ``off``).

Server security (docs/decisions/0060-0064): ``TWINGRAPH_AUTH`` is ``none`` or ``required``
(unset: none on loopback, required when the server binds beyond it);
``TWINGRAPH_JWT_SECRET`` (HS256) and/or ``TWINGRAPH_JWT_PUBLIC_KEY_FILE`` (RS256, PEM),
``TWINGRAPH_JWT_AUDIENCE``, ``TWINGRAPH_JWT_ISSUER``; ``TWINGRAPH_RATE_LIMIT`` (default
``100/minute``), ``TWINGRAPH_RATE_LIMIT_BULK`` (``10/minute``), ``TWINGRAPH_RATE_LIMIT_WS``
(concurrent WebSockets per client, ``10``) — ``off`` disables each; ``TWINGRAPH_RATE_LIMIT_STORAGE``
(``memory://`` or ``redis://host:port/db`` to share counters between processes).

Nodes the server runs for clients (``execute-dynamic``, graph pipelines; decision 0076):
``TWINGRAPH_NODE_ISOLATION`` is ``process`` (default: each node in a worker process, killed at
its limits) or ``off`` (in the server process, as embedded use does);
``TWINGRAPH_NODE_MEMORY_LIMIT`` what a worker process may allocate beyond its own ~100 MiB
(default ``1GiB``; bytes or ``512Mi``, ``2G``...; ``off`` for none; Linux only, off elsewhere);
``TWINGRAPH_NODE_TIMEOUT`` seconds a node may run (default ``300``; a component's own shorter
timeout still applies); ``TWINGRAPH_NODE_WORKERS`` worker processes (default: the CPUs, at
least 4). The embedded engine (CLI, Python API) reads none of these: its nodes run in-process.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twingraph.errors import ConfigurationError, ValidationError

NODE_ISOLATION = ("process", "off")
#: What a node's worker process may allocate by default (where the limit can be enforced).
DEFAULT_NODE_MEMORY_LIMIT: int | None = 2**30 if sys.platform.startswith("linux") else None
DEFAULT_NODE_TIMEOUT = 300.0


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    result_store: str = "sqlite"
    compression: str | None = None
    adopt_after: float = 30.0          # seconds without a heartbeat before a server adopts a run
    auth: str | None = None
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key_file: Path | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    rate_limit: str = "100/minute"
    rate_limit_bulk: str = "10/minute"
    rate_limit_ws: str = "10"
    rate_limit_storage: str = "memory://"
    node_isolation: str = "process"
    node_memory_limit: int | None = DEFAULT_NODE_MEMORY_LIMIT
    node_timeout: float = DEFAULT_NODE_TIMEOUT
    node_workers: int | None = None    # None: max(4, CPUs)

    def __post_init__(self) -> None:
        if self.node_isolation not in NODE_ISOLATION:
            raise ConfigurationError(f"node_isolation must be one of {', '.join(NODE_ISOLATION)}, "
                                     f"got {self.node_isolation!r}")

    @property
    def isolated_nodes(self) -> bool:
        return self.node_isolation == "process"

    def adoption_delay(self) -> float:
        """``adopt_after``, checked: at least ``MIN_ADOPT_AFTER`` seconds."""
        seconds = self.adopt_after
        if not (seconds >= MIN_ADOPT_AFTER and math.isfinite(seconds)):
            raise ConfigurationError(
                f"TWINGRAPH_ADOPT_AFTER must be a number of seconds of at least "
                f"{MIN_ADOPT_AFTER:g} (a live driver's heartbeat may be that old), got "
                + (f"{seconds:g} seconds" if not math.isnan(seconds) else "something that is "
                   "not a number"))
        return seconds

    @property
    def worker_processes(self) -> int:
        return self.node_workers or max(4, os.cpu_count() or 1)

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("TWINGRAPH_HOME") or ".twingraph").resolve()
        url = os.environ.get("TWINGRAPH_DATABASE_URL") or f"sqlite:///{home / 'twingraph.db'}"
        return cls(home=home, database_url=url,
                   result_store=os.environ.get("TWINGRAPH_RESULT_STORE", "sqlite"),
                   compression=_compression_from_env(),
                   adopt_after=_adopt_after_from_env(),
                   **_security_from_env(), **_nodes_from_env())


#: The shortest ``TWINGRAPH_ADOPT_AFTER``: the engine's ``LIVE_WINDOW`` (a driver beats every
#: 5 s; one silent for 2 beats + 1 s is gone). Below it a server took over healthy runs of
#: other processes between two of their beats, and their tasks ran twice.
MIN_ADOPT_AFTER = 11.0


def _adopt_after_from_env() -> float:
    """``TWINGRAPH_ADOPT_AFTER`` as read; NaN if it is no number. Checked where a server wires
    adoption (``Settings.adoption_delay``), not here: every command and embedded engine reads
    the settings, and an old server's value in a shared environment stopped them all."""
    given = (os.environ.get("TWINGRAPH_ADOPT_AFTER") or "").strip()
    if not given:
        return 30.0
    try:
        return float(given)
    except ValueError:
        return math.nan


def _compression_from_env() -> str | None:
    """``TWINGRAPH_COMPRESSION``: ``zstd``, or off when empty, unset, ``none`` or ``off`` (in any
    case); anything else is refused by the store (``CompressionPolicy``), naming the choices."""
    value = (os.environ.get("TWINGRAPH_COMPRESSION") or "").strip()
    return None if value.lower() in ("", "none", "off") else \
        "zstd" if value.lower() == "zstd" else value


def _security_from_env() -> dict[str, Any]:
    env = os.environ
    key_file = env.get("TWINGRAPH_JWT_PUBLIC_KEY_FILE")
    return {"auth": env.get("TWINGRAPH_AUTH") or None,
            "jwt_secret": env.get("TWINGRAPH_JWT_SECRET") or None,
            "jwt_public_key_file": Path(key_file) if key_file else None,
            "jwt_audience": env.get("TWINGRAPH_JWT_AUDIENCE") or None,
            "jwt_issuer": env.get("TWINGRAPH_JWT_ISSUER") or None,
            "rate_limit": env.get("TWINGRAPH_RATE_LIMIT") or "100/minute",
            "rate_limit_bulk": env.get("TWINGRAPH_RATE_LIMIT_BULK") or "10/minute",
            "rate_limit_ws": env.get("TWINGRAPH_RATE_LIMIT_WS") or "10",
            "rate_limit_storage": env.get("TWINGRAPH_RATE_LIMIT_STORAGE") or "memory://"}


def _nodes_from_env() -> dict[str, Any]:
    """The ``TWINGRAPH_NODE_*`` settings; ``ConfigurationError`` naming the variable if bad."""
    env = os.environ
    out: dict[str, Any] = {}
    iso = (env.get("TWINGRAPH_NODE_ISOLATION") or "process").strip().lower()
    if iso not in NODE_ISOLATION:
        raise ConfigurationError(f"TWINGRAPH_NODE_ISOLATION must be one of "
                                 f"{', '.join(NODE_ISOLATION)}, got {iso!r}")
    out["node_isolation"] = iso
    mem = (env.get("TWINGRAPH_NODE_MEMORY_LIMIT") or "").strip()
    if mem:
        out["node_memory_limit"] = parse_memory(mem, "TWINGRAPH_NODE_MEMORY_LIMIT")
    timeout = (env.get("TWINGRAPH_NODE_TIMEOUT") or "").strip()
    if timeout:
        try:
            t = float(timeout)
        except ValueError:
            t = math.nan
        if not (t > 0 and math.isfinite(t)):
            raise ConfigurationError(f"TWINGRAPH_NODE_TIMEOUT must be a positive number of "
                                     f"seconds, got {timeout!r}")
        out["node_timeout"] = t
    workers = (env.get("TWINGRAPH_NODE_WORKERS") or "").strip()
    if workers:
        if not workers.isdigit() or int(workers) < 1:
            raise ConfigurationError(f"TWINGRAPH_NODE_WORKERS must be an integer >= 1, "
                                     f"got {workers!r}")
        out["node_workers"] = int(workers)
    return out


def parse_memory(text: str, name: str) -> int | None:
    """``off``/``none`` -> None; else an amount of memory as resources write it (bytes,
    ``512Mi``, ``1GiB``, ``2G``) in bytes."""
    if text.lower() in ("off", "none"):
        return None
    from twingraph.core.specs import resource_amounts, validate_resources
    try:
        amount = resource_amounts(validate_resources({"memory": text}))[1]
    except ValidationError:
        amount = 0
    if amount <= 0:
        raise ConfigurationError(f"{name} must be an amount of memory (bytes, or with a unit: "
                                 f"512Mi, 1GiB, 2G) or 'off', got {text!r}")
    return amount
