"""``create_storage_backend``: the dynamic-scheduler CLI's ``--storage-backend`` word -> a store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twingraph.errors import ConfigurationError
from twingraph.stores.results.base import ResultStoreBase

__all__ = ["create_storage_backend", "BACKENDS"]

BACKENDS = ("sqlite", "filesystem", "memory")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def create_storage_backend(backend: str, path: str | Path, **opts: Any) -> ResultStoreBase:
    """Open the named result store at ``path``; ``opts`` go to the store's constructor.

    - ``sqlite``: ``path`` is the database file if it ends in .db/.sqlite/.sqlite3, otherwise a
      directory holding ``results.db``.
    - ``filesystem``: ``path`` is the store's root directory.
    - ``memory``: ``path`` is ignored (a fresh, empty store).

    Unknown backends (the document's ``hybrid`` included: it is not implemented) and unknown
    options raise ``ConfigurationError``.
    """
    name = (backend or "").strip().lower()
    try:
        if name == "sqlite":
            from twingraph.stores.results.sqlite import SQLiteStorage
            p = Path(path)
            db = p if p.suffix.lower() in _SQLITE_SUFFIXES else p / "results.db"
            return SQLiteStorage(db, **opts)
        if name == "filesystem":
            from twingraph.stores.results.filesystem import FilesystemStorage
            return FilesystemStorage(path, **opts)
        if name == "memory":
            from twingraph.stores.results.memory import MemoryStorage
            return MemoryStorage(**opts)
    except TypeError as exc:
        raise ConfigurationError(f"bad options for the {name} result store: {exc}") from exc
    raise ConfigurationError(f"unknown storage backend {backend!r}; choose one of "
                             f"{', '.join(BACKENDS)}")
