"""``SQLApiKeyStore``: API keys in the ``api_keys`` table, stored hashed.

A key's secret is ``tg_`` + 32 random bytes (urlsafe base64, 43 characters) from ``secrets``.
It is shown once, by ``create``; the table keeps only its SHA-256 (``key_hash``, unique) and its
first 11 characters (``prefix``) so listings can name a key without revealing it.

Verification hashes the presented secret and looks the hash up (``WHERE key_hash = :h``). No
stored secret is ever compared with the presented one byte by byte, so the time a lookup takes
says nothing about any secret: the only thing timing could leak is a SHA-256 prefix, which does
not help to guess a 256-bit key. A revoked or expired key verifies as ``None``, exactly like an
unknown one. ``last_used_at`` is refreshed at most once a minute per key by one conditional
``UPDATE`` (so a busy key does not turn every request into a write).

Errors: unknown key ids raise ``NotFoundError``; bad names, roles or expiry ``ValidationError``
(nothing is written); the database's failures ``StorageError`` (translated by the store).
"""

from __future__ import annotations

import builtins
import hashlib
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, insert, or_, select, update

from twingraph.errors import NotFoundError, ValidationError
from twingraph.stores.metadata.catalog import new_id
from twingraph.stores.metadata.schema import api_keys
from twingraph.stores.metadata.store import SQLMetadataStore

#: Roles, weakest first: ``read`` may GET, ``write`` may also change things, ``admin`` may do
#: everything including managing API keys. Each role includes the ones before it.
ROLES = ("read", "write", "admin")
SECRET_PREFIX = "tg_"
_PREFIX_CHARS = 11                 # "tg_" + 8 characters: enough to tell keys apart in a list
_MAX_SECRET_LEN = 128              # anything longer is not one of ours; reject before hashing
LAST_USED_RESOLUTION_S = 60.0


@dataclass(frozen=True)
class ApiKeyRecord:
    """One API key as stored (never its secret). Times are POSIX seconds."""

    id: str
    name: str
    prefix: str
    roles: tuple[str, ...]
    created_at: float
    last_used_at: float | None = None
    expires_at: float | None = None
    revoked_at: float | None = None

    def status(self, now: float) -> str:
        """``active``, ``revoked`` or ``expired`` at ``now``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def validate_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """Known roles, deduplicated, in ``ROLES`` order; ``ValidationError`` otherwise."""
    given = [roles] if isinstance(roles, str) else list(roles)
    unknown = sorted({str(r) for r in given} - set(ROLES))
    if unknown:
        raise ValidationError(f"unknown role(s) {', '.join(unknown)}; expected {', '.join(ROLES)}")
    if not given:
        raise ValidationError(f"an API key needs at least one role ({', '.join(ROLES)})")
    return tuple(r for r in ROLES if r in given)


class SQLApiKeyStore:
    """API keys of a ``SQLMetadataStore`` (SQLite or PostgreSQL); ``clock`` (default: the
    store's) stamps ``created_at``/``last_used_at``/``revoked_at`` and decides expiry."""

    def __init__(self, store: SQLMetadataStore, *,
                 clock: Callable[[], float] | None = None) -> None:
        self._store = store
        self._clock = clock or store._clock

    def create(self, name: str, roles: Iterable[str] = ("read",), *,
               expires_at: float | None = None) -> tuple[ApiKeyRecord, str]:
        """Store a new key; return its record and its secret (the only time it is seen)."""
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ValidationError("an API key needs a name of 1 to 200 characters")
        checked = validate_roles(roles)
        now = self._clock()
        if expires_at is not None and expires_at <= now:
            raise ValidationError("expires_at must be in the future")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        rec = ApiKeyRecord(id=new_id("key"), name=name.strip(), prefix=secret[:_PREFIX_CHARS],
                           roles=checked, created_at=now, expires_at=expires_at)
        with self._store._writing() as conn:
            conn.execute(insert(api_keys).values(
                id=rec.id, name=rec.name, key_hash=hash_secret(secret), prefix=rec.prefix,
                roles=list(rec.roles), created_at=rec.created_at, expires_at=rec.expires_at))
        return rec, secret

    def verify(self, secret: str) -> ApiKeyRecord | None:
        """The active key whose secret this is, else ``None`` (unknown, revoked, expired or
        malformed alike). Refreshes ``last_used_at`` when it is a minute old or more."""
        if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX) \
                or len(secret) > _MAX_SECRET_LEN:
            return None
        with self._store._reading() as conn:
            row = conn.execute(select(api_keys).where(
                api_keys.c.key_hash == hash_secret(secret))).first()
        if row is None:
            return None
        rec = _record(row)
        now = self._clock()
        if rec.status(now) != "active":
            return None
        if rec.last_used_at is None or now - rec.last_used_at >= LAST_USED_RESOLUTION_S:
            with self._store._writing() as conn:
                conn.execute(update(api_keys).where(
                    api_keys.c.id == rec.id,
                    or_(api_keys.c.last_used_at.is_(None),
                        api_keys.c.last_used_at <= now - LAST_USED_RESOLUTION_S),
                ).values(last_used_at=now))
        return rec

    def get(self, key_id: str) -> ApiKeyRecord | None:
        with self._store._reading() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        return None if row is None else _record(row)

    def list(self, *, include_inactive: bool = True) -> builtins.list[ApiKeyRecord]:
        """Every key, oldest first (``include_inactive=False``: only the active ones)."""
        with self._store._reading() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at,
                                                          api_keys.c.id)).all()
        recs = [_record(r) for r in rows]
        if include_inactive:
            return recs
        now = self._clock()
        return [r for r in recs if r.status(now) == "active"]

    def revoke(self, key_id: str) -> ApiKeyRecord:
        """Revoke the key (idempotent: a second revoke keeps the first time); return it."""
        now = self._clock()
        with self._store._writing() as conn:
            conn.execute(update(api_keys).where(api_keys.c.id == key_id,
                                                api_keys.c.revoked_at.is_(None))
                         .values(revoked_at=now))
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None:
            raise NotFoundError(f"API key {key_id} not found")
        return _record(row)

    def has_active(self) -> bool:
        """True when at least one key is neither revoked nor expired."""
        now = self._clock()
        with self._store._reading() as conn:
            row = conn.execute(select(api_keys.c.id).where(
                api_keys.c.revoked_at.is_(None),
                or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now)).limit(1)).first()
        return row is not None


def _record(row: Row[Any]) -> ApiKeyRecord:
    f = row._asdict()
    return ApiKeyRecord(id=f["id"], name=f["name"], prefix=f["prefix"],
                        roles=tuple(f["roles"] or ()), created_at=f["created_at"],
                        last_used_at=f["last_used_at"], expires_at=f["expires_at"],
                        revoked_at=f["revoked_at"])
