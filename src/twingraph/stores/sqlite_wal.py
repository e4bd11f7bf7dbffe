"""WAL mode for the SQLite files both stores keep (persistent once set).

Processes or threads opening a fresh file together race to switch it, and SQLite answers
"database is locked" at once there instead of waiting for its busy timeout: retry until the
deadline. A file already in WAL mode is only checked.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any


def enable_wal(conn: Any, timeout: float) -> None:
    """``conn``: a sqlite3 connection or cursor."""
    if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
