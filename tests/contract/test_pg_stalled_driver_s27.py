"""A driver stopped inside a PostgreSQL write transaction (SIGSTOP, a host lost to a
partition) held its run's row, and a resume or ``runs cancel`` claiming the run waited on
it without end (session 27 review; SQLite gives up after its busy timeout). Now the server
ends a session idle in a transaction, and a statement waits for a row lock a bounded time.
The timeouts are shortened here; the machine's real PostgreSQL."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from twingraph.core.records import RunRecord
from twingraph.core.states import RunState
from twingraph.errors import StorageError
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.metadata import _engine

pytestmark = pytest.mark.postgres


@pytest.fixture
def short_timeouts(monkeypatch):
    monkeypatch.setattr(_engine, "PG_IDLE_IN_TRANSACTION_MS", 1000)
    monkeypatch.setattr(_engine, "PG_LOCK_TIMEOUT_MS", 4000)


def _running(store: SQLMetadataStore, run_id: str) -> None:
    now = time.time()
    store.write([RunRecord(run_id=run_id, pipeline="p", state=RunState.RUNNING,
                           created_at=now, started_at=now, heartbeat_at=now)])


@pytest.mark.timeout(60)
def test_a_claim_is_not_held_up_by_a_driver_stopped_mid_transaction(postgres_url,
                                                                    short_timeouts) -> None:
    driver = SQLMetadataStore(postgres_url, create=True)
    claimant = SQLMetadataStore(postgres_url)
    try:
        _running(driver, "stalled-s27")
        conn = driver._engine.connect()
        conn.begin()
        conn.execute(text("UPDATE runs SET heartbeat_at = heartbeat_at WHERE run_id = 'stalled-s27'"))
        t0 = time.monotonic()                # the driver stops here, its row locked
        epoch = claimant.claim_driver("stalled-s27")
        assert epoch == 1 and time.monotonic() - t0 < 3.5
        with pytest.raises(Exception):       # the server ended its session: nothing it wrote
            conn.commit()
        conn.close()
    finally:
        claimant.close()
        driver.close()


@pytest.mark.timeout(60)
def test_a_row_lock_held_by_another_program_is_waited_for_a_bounded_time(postgres_url,
                                                                        short_timeouts) -> None:
    import psycopg
    store = SQLMetadataStore(postgres_url, create=True)
    try:
        _running(store, "locked-s27")
        plain = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(plain) as other:          # no timeouts of ours on it
            other.execute("SELECT 1 FROM runs WHERE run_id = 'locked-s27' FOR UPDATE")
            t0 = time.monotonic()
            with pytest.raises(StorageError, match="lock timeout"):
                store.claim_driver("locked-s27")
            assert 3.5 < time.monotonic() - t0 < 15
            other.rollback()
        assert store.claim_driver("locked-s27") == 1  # and the store goes on
    finally:
        store.close()


def test_the_timeouts_are_set_after_connecting_and_the_urls_own_win(postgres_url) -> None:
    """Sent as startup ``options`` first, which PgBouncer refuses (no connection at all); the
    URL's own setting of one is kept."""
    from urllib.parse import quote
    for url, lock in ((postgres_url, "30s"),
                      (f"{postgres_url}?options={quote('-c lock_timeout=5000')}", "5s")):
        store = SQLMetadataStore(url, create=True)
        try:
            assert "options" not in store._engine.dialect.create_connect_args(store._engine.url)[1] \
                or url != postgres_url
            with store._engine.connect() as conn:
                assert conn.execute(text("SHOW lock_timeout")).scalar() == lock
                assert conn.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == "15s"
        finally:
            store.close()
    ro = SQLMetadataStore(postgres_url, read_only=True)
    try:
        with ro._engine.connect() as conn:
            assert conn.execute(text("SHOW default_transaction_read_only")).scalar() == "on"
    finally:
        ro.close()
