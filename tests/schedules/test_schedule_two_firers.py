"""Two server processes on one PostgreSQL never fire the same slot twice (issue 3, item 8).

Two OS processes (tests/resources/schedule_firer_proc.py) each run a ``ScheduleFirer`` with a
50 ms poll against the same database for ~5 s, on an INTERVAL '1s' schedule. Each launch
inserts (schedule_id, slot, pid) into ``fire_log``, which has no unique constraint: a slot
fired by both processes would appear twice.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from twingraph.stores.metadata import SQLMetadataStore, upgrade
from twingraph.stores.metadata._engine import make_engine
from twingraph.stores.metadata.schedules import SQLScheduleStore

HELPER = Path(__file__).parents[1] / "resources" / "schedule_firer_proc.py"
RUN_FOR = 5.0


@pytest.fixture
def own_database(postgres_url: str) -> Iterator[str]:
    """A database of its own on the session's server: the extra ``fire_log`` table must not
    show up in the schema comparison of the metadata contract suite."""
    psycopg = pytest.importorskip("psycopg")
    admin_url = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"twingraph_fires_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_two_processes_fire_every_slot_exactly_once(own_database: str) -> None:
    postgres_url = own_database
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS fire_log"))
        conn.execute(text("CREATE TABLE fire_log (schedule_id TEXT, slot DOUBLE PRECISION, pid INT)"))
    meta = SQLMetadataStore(postgres_url)
    try:
        pipe_id, _ = meta.upsert_pipeline("two-firers", "tick", {"nodes": [], "edges": []})
        rec = SQLScheduleStore(meta).create(project_id="two-firers", pipeline_id=pipe_id,
                                            kind="INTERVAL", expression="1s")
    finally:
        meta.close()
    procs = [subprocess.Popen([sys.executable, str(HELPER), postgres_url], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        for proc in procs:                      # both connected before either starts polling
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"go {RUN_FOR}\n")
            proc.stdin.flush()
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT schedule_id, slot, pid FROM fire_log ORDER BY slot")).all()
    engine.dispose()

    counts = Counter(slot for _, slot, _ in rows)
    assert {sid for sid, _, _ in rows} == {rec.id}
    doubles = {slot: n for slot, n in counts.items() if n > 1}
    assert not doubles, f"slots fired more than once: {doubles}"
    slots = sorted(counts)
    assert len(slots) >= RUN_FOR - 1, f"too few slots fired: {slots}; {reports}"
    # every slot of the window, not just distinct ones: consecutive 1 s slots on the anchor
    assert [round(b - a, 6) for a, b in zip(slots, slots[1:])] == [1.0] * (len(slots) - 1)
    assert all(round(s - rec.created_at, 6) % 1 == 0 for s in slots)
    # both processes were alive and polling the same database the whole time
    assert len({r["pid"] for r in reports}) == 2
    assert all(r["ticks"] >= 10 for r in reports), reports
    assert sum(r["won"] for r in reports) == len(slots)
    print("two firers:", reports, "slots:", len(slots),
          "fired by pid:", Counter(pid for _, _, pid in rows))
