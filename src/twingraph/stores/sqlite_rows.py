"""Many rows into SQLite in few statements, for both stores' write batches.

``sqlite3`` releases the GIL around every statement step and must take it back after; while the
engine's scheduling thread holds the GIL, each take-back waits for it. ``executemany`` steps
once per row, so a batch paid that wait per row (a 200,000-node DAG's writes took up to 3.5x
their CPU time in wall time). A multi-row ``INSERT ... VALUES (...), (...)`` of
``ROWS_PER_STATEMENT`` rows pays it once per statement; 32 rows measured best
(bench/large_dag.py at 20k and 100k nodes: 256 held the GIL too long for the scheduler).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

ROWS_PER_STATEMENT = 32
#: The writer process's (``stores.writer_child`` sets ``ROWS_PER_STATEMENT`` to it when it starts):
#: it runs no other thread, so nothing waits on its GIL, and fewer statements cost less (its
#: instructions per task -1.4 % against 32; 512 gained nothing more, decision 0075).
CHILD_ROWS_PER_STATEMENT = 128
# SQLITE_MAX_VARIABLE_NUMBER: 32,766 since SQLite 3.32, 999 before.
MAX_BINDS = 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999
_VALUES = re.compile(r"VALUES \((\?(?:, \?)*)\)")


def multi_row(sql: str, width: int, rows: int | None = None) -> tuple[str, int] | None:
    """The multi-row form of a one-row ``INSERT ... VALUES (?, ...)`` of ``width`` binds and
    its rows per statement (at most ``rows``, by default ``ROWS_PER_STATEMENT`` as it is when
    called); None for any other statement (UPDATEs stay one row a step)."""
    if rows is None:
        rows = ROWS_PER_STATEMENT
    found = list(_VALUES.finditer(sql))
    if not sql.lstrip().upper().startswith("INSERT") or len(found) != 1 \
            or found[0].group(1).count("?") != width:
        return None
    n = max(1, min(rows, MAX_BINDS // width))
    m = found[0]
    return sql[:m.start()] + "VALUES " + ", ".join([f"({m.group(1)})"] * n) + sql[m.end():], n


def insert_rows(execute: Callable[[str, Any], Any], executemany: Callable[[str, Any], Any],
                sql: str, multi: tuple[str, int] | None, rows: Sequence[tuple[Any, ...]]) -> None:
    """Run ``sql`` for every row: groups of rows through ``multi`` (from ``multi_row``), the
    rest through ``executemany``. Rows go in order, so a key given twice keeps its last row."""
    if multi is not None and len(rows) >= multi[1]:
        many_sql, n = multi
        full = len(rows) - len(rows) % n
        for i in range(0, full, n):
            execute(many_sql, tuple(chain.from_iterable(rows[i:i + n])))
        rows = rows[full:]
    if rows:
        executemany(sql, rows)
