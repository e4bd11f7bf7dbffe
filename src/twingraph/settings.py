"""Settings read from ``TWINGRAPH_*`` environment variables, at the edge only.

``TWINGRAPH_HOME`` (default ``./.twingraph``) holds the embedded stores;
``TWINGRAPH_DATABASE_URL`` selects the metadata database (default SQLite in the home);
``TWINGRAPH_RESULT_STORE`` is ``sqlite`` (default) or ``filesystem``;
``TWINGRAPH_COMPRESSION`` is empty or ``zstd``.

Server security (docs/decisions/0060-0064): ``TWINGRAPH_AUTH`` is ``none`` or ``required``
(unset: none on loopback, required when the server binds beyond it);
``TWINGRAPH_JWT_SECRET`` (HS256) and/or ``TWINGRAPH_JWT_PUBLIC_KEY_FILE`` (RS256, PEM),
``TWINGRAPH_JWT_AUDIENCE``, ``TWINGRAPH_JWT_ISSUER``; ``TWINGRAPH_RATE_LIMIT`` (default
``100/minute``), ``TWINGRAPH_RATE_LIMIT_BULK`` (``10/minute``), ``TWINGRAPH_RATE_LIMIT_WS``
(concurrent WebSockets per client, ``10``) — ``off`` disables each; ``TWINGRAPH_RATE_LIMIT_STORAGE``
(``memory://`` or ``redis://host:port/db`` to share counters between processes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("TWINGRAPH_HOME") or ".twingraph").resolve()
        url = os.environ.get("TWINGRAPH_DATABASE_URL") or f"sqlite:///{home / 'twingraph.db'}"
        return cls(home=home, database_url=url,
                   result_store=os.environ.get("TWINGRAPH_RESULT_STORE", "sqlite"),
                   compression=os.environ.get("TWINGRAPH_COMPRESSION") or None,
                   adopt_after=float(os.environ.get("TWINGRAPH_ADOPT_AFTER") or 30.0),
                   **_security_from_env())


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
