"""Settings read from ``TWINGRAPH_*`` environment variables, at the edge only.

``TWINGRAPH_HOME`` (default ``./.twingraph``) holds the embedded stores;
``TWINGRAPH_DATABASE_URL`` selects the metadata database (default SQLite in the home);
``TWINGRAPH_RESULT_STORE`` is ``sqlite`` (default) or ``filesystem``;
``TWINGRAPH_COMPRESSION`` is empty or ``zstd``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    result_store: str = "sqlite"
    compression: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("TWINGRAPH_HOME") or ".twingraph").resolve()
        url = os.environ.get("TWINGRAPH_DATABASE_URL") or f"sqlite:///{home / 'twingraph.db'}"
        return cls(home=home, database_url=url,
                   result_store=os.environ.get("TWINGRAPH_RESULT_STORE", "sqlite"),
                   compression=os.environ.get("TWINGRAPH_COMPRESSION") or None)
