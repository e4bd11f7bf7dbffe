"""The per-task floor on this machine: the least work any engine must do per task to meet issue
2's durability and memo requirements, written as a bare single-threaded loop (no scheduler, no
task objects, no threads, no futures). Engine overhead = an engine's time per task minus this.

    python bench/floor.py [--n 10000] [--repeat 5]

Per task: a structural key (sha256 over a canonical JSON of parameters and the producer's content
hash), a memo lookup in the SQLite result store (batched 500 at a time for a fan-out; one point
query per task for a chain, where a key needs the producer's result), the call, encoding and
hashing of the result, one result row and one task row (WAL, synchronous=NORMAL, committed
every 500 tasks). Prints JSON lines.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402

BATCH = 500


def run(n: int, chain: bool) -> float:
    with tempfile.TemporaryDirectory(prefix="twingraph-floor-") as d:
        res = sqlite3.connect(os.path.join(d, "r.db"), isolation_level=None)
        meta = sqlite3.connect(os.path.join(d, "m.db"), isolation_level=None)
        for c in (res, meta):
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
        res.execute("CREATE TABLE r (k TEXT PRIMARY KEY, h TEXT, data BLOB)")
        meta.execute("CREATE TABLE t (run TEXT, node TEXT, state TEXT, key TEXT, h TEXT, "
                     "started REAL, ended REAL, inputs TEXT, PRIMARY KEY (run, node))")
        run_id = os.urandom(16).hex()
        enc = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
        rrows: list[tuple] = []
        trows: list[tuple] = []
        keys: list[str] = []
        prev = "0" * 64
        t0 = time.perf_counter()
        for i in range(n):
            params = {"i": i}
            key = hashlib.sha256(b"inc\0" + enc.encode([params, prev]).encode()).hexdigest()
            if chain:
                res.execute("SELECT h FROM r WHERE k = ?", (key,)).fetchone()
            else:
                keys.append(key)
            started = time.time()
            value = params["i"]
            ended = time.time()
            data = str(value).encode()
            h = hashlib.sha256(data).hexdigest()
            rrows.append((key, h, data))
            trows.append((run_id, f"n{i}", "SUCCESS", key, h, started, ended,
                          enc.encode({"deps": [[f"n{i - 1}", []]]})))
            if chain:
                prev = h
            if len(rrows) == BATCH or i == n - 1:
                if keys:
                    res.execute(f"SELECT k, h FROM r WHERE k IN ({','.join('?' * len(keys))})",
                                keys).fetchall()
                    keys = []
                res.execute("BEGIN")
                res.executemany("INSERT INTO r VALUES (?, ?, ?)", rrows)
                res.execute("COMMIT")
                meta.execute("BEGIN")
                meta.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?)", trows)
                meta.execute("COMMIT")
                rrows, trows = [], []
        dt = time.perf_counter() - t0
        res.close()
        meta.close()
        return dt / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    for chain in (False, True):
        us = min(run(a.n, chain) for _ in range(a.repeat))
        emit(bench="floor", shape="chain (point lookups)" if chain else "fan-out (batched lookups)",
             n=a.n, us_per_task=round(us, 1), nodes_per_s=round(1e6 / us))


if __name__ == "__main__":
    main()
