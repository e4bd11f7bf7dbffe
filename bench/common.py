"""Shared bench helpers: embedded engines on temporary SQLite stores, JSON-line output."""
from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from twingraph.engine.engine import Engine
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.results.sqlite import SQLiteStorage


def sqlite_engine(root: Path, **kw) -> Engine:
    """The embedded default: SQLite result store + SQLite metadata store, both durable."""
    return Engine(results=SQLiteStorage(str(root / "results.db")),
                  metadata=SQLMetadataStore(f"sqlite:///{root / 'meta.db'}", create=True), **kw)


@contextmanager
def tempdir():
    with tempfile.TemporaryDirectory(prefix="twingraph-bench-") as d:
        yield Path(d)


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return time.perf_counter() - t0, out


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def best(n: int, fn):
    """Best of ``n`` runs (seconds), the usual way to measure overhead on a noisy machine."""
    return min(fn() for _ in range(n))


if __name__ == "__main__":
    sys.exit("import me")
