"""Contract of ``SQLApiKeyStore`` on every SQL backend (SQLite file and the machine's PostgreSQL).

Whoever adds a metadata backend adds it to ``SQL_BACKENDS``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text

from twingraph.errors import NotFoundError, ValidationError
from twingraph.stores.metadata._engine import make_engine
from twingraph.stores.metadata.apikeys import SQLApiKeyStore
from twingraph.stores.metadata.migrate import upgrade
from twingraph.stores.metadata.schema import api_keys
from twingraph.stores.metadata.store import SQLMetadataStore

SQL_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="session")
def apikeys_postgres_url(postgres_url: str) -> str:
    upgrade(postgres_url)
    return postgres_url


@pytest.fixture(params=SQL_BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLMetadataStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'keys.db'}"
    else:
        url = request.getfixturevalue("apikeys_postgres_url")
        engine = make_engine(url)
        with engine.begin() as conn:            # every test starts from an empty table
            conn.execute(text("TRUNCATE api_keys"))
        engine.dispose()
    s = SQLMetadataStore(url, create=True)
    yield s
    s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(store: SQLMetadataStore, clock: Clock) -> SQLApiKeyStore:
    return SQLApiKeyStore(store, clock=clock)


def test_create_returns_a_secret_that_is_stored_only_as_its_hash(
        keys: SQLApiKeyStore, store: SQLMetadataStore) -> None:
    rec, secret = keys.create("ci", ["write"])
    assert secret.startswith("tg_") and len(secret) == 3 + 43
    assert rec.id.startswith("key_") and rec.roles == ("write",) and rec.prefix == secret[:11]
    with store._reading() as conn:
        rows = [r._asdict() for r in conn.execute(select(api_keys)).all()]
    assert len(rows) == 1
    assert rows[0]["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert all(secret not in str(v) for v in rows[0].values())
    other_rec, other = keys.create("ci-2", ["read"])
    assert other != secret and other_rec.id != rec.id


def test_verify_accepts_the_secret_and_nothing_else(keys: SQLApiKeyStore) -> None:
    rec, secret = keys.create("svc", ["read", "admin"])
    got = keys.verify(secret)
    assert got is not None and got.id == rec.id and got.roles == ("read", "admin")
    assert keys.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert keys.verify("tg_" + "x" * 43) is None
    assert keys.verify("") is None
    assert keys.verify(secret + "x" * 200) is None
    assert keys.verify(secret.removeprefix("tg_")) is None


def test_revoked_and_expired_keys_do_not_verify(keys: SQLApiKeyStore, clock: Clock) -> None:
    rec, secret = keys.create("old", ["read"])
    revoked = keys.revoke(rec.id)
    assert revoked.revoked_at == clock.now and keys.verify(secret) is None
    clock.now += 10
    assert keys.revoke(rec.id).revoked_at == revoked.revoked_at     # idempotent
    short, short_secret = keys.create("short", ["read"], expires_at=clock.now + 30)
    assert keys.verify(short_secret) is not None
    clock.now += 30
    assert keys.verify(short_secret) is None
    assert {r.id: r.status(clock.now) for r in keys.list()} == {rec.id: "revoked",
                                                                 short.id: "expired"}
    assert keys.list(include_inactive=False) == []
    assert not keys.has_active()


def test_last_used_is_written_at_most_once_a_minute(keys: SQLApiKeyStore, clock: Clock) -> None:
    rec, secret = keys.create("busy", ["read"])
    assert keys.get(rec.id).last_used_at is None  # type: ignore[union-attr]
    keys.verify(secret)
    first = clock.now
    clock.now += 59
    keys.verify(secret)
    assert keys.get(rec.id).last_used_at == first  # type: ignore[union-attr]
    clock.now += 1
    keys.verify(secret)
    assert keys.get(rec.id).last_used_at == clock.now  # type: ignore[union-attr]


def test_list_get_and_has_active(keys: SQLApiKeyStore, clock: Clock) -> None:
    assert keys.list() == [] and not keys.has_active() and keys.get("key_nope") is None
    a, _ = keys.create("a", ["read"])
    clock.now += 1
    b, _ = keys.create("b", ["write", "read"])
    assert [r.id for r in keys.list()] == [a.id, b.id]
    assert keys.get(b.id) == b and b.roles == ("read", "write")
    assert keys.has_active()


def test_bad_input_is_refused_and_writes_nothing(keys: SQLApiKeyStore, clock: Clock) -> None:
    with pytest.raises(ValidationError, match="unknown role"):
        keys.create("x", ["root"])
    with pytest.raises(ValidationError, match="at least one role"):
        keys.create("x", [])
    with pytest.raises(ValidationError, match="name"):
        keys.create("  ", ["read"])
    with pytest.raises(ValidationError, match="future"):
        keys.create("x", ["read"], expires_at=clock.now)
    assert keys.list() == []
    with pytest.raises(NotFoundError):
        keys.revoke("key_missing")
