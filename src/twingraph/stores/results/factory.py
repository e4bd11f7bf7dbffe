"""``create_storage_backend``: the dynamic-scheduler CLI's ``--storage-backend`` word -> a store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twingraph.errors import ConfigurationError
from twingraph.stores.results.base import ResultStoreBase

__all__ = ["create_storage_backend", "options_from_config", "parse_size", "BACKENDS"]

BACKENDS = ("sqlite", "filesystem", "hybrid", "memory")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def create_storage_backend(backend: str, path: str | Path, **opts: Any) -> ResultStoreBase:
    """Open the named result store at ``path``; ``opts`` go to the store's constructor.

    - ``sqlite``: ``path`` is the database file if it ends in .db/.sqlite/.sqlite3, otherwise a
      directory holding ``results.db``.
    - ``filesystem``: ``path`` is the store's root directory.
    - ``hybrid``: ``path`` is a directory; values up to 1 MiB in SQLite, larger ones as files
      (``HybridStorage``).
    - ``memory``: ``path`` is ignored (a fresh, empty store).

    Unknown backends and unknown options raise ``ConfigurationError``.
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
        if name == "hybrid":
            from twingraph.stores.results.hybrid import HybridStorage
            return HybridStorage(path, **opts)
        if name == "memory":
            from twingraph.stores.results.memory import MemoryStorage
            return MemoryStorage(**opts)
    except TypeError as exc:
        raise ConfigurationError(f"bad options for the {name} result store: {exc}") from exc
    raise ConfigurationError(f"unknown storage backend {backend!r}; choose one of "
                             f"{', '.join(BACKENDS)}")


_UNITS = {"": 1, "B": 1, "KB": 1024, "K": 1024, "KIB": 1024, "MB": 1024 ** 2, "M": 1024 ** 2,
          "MIB": 1024 ** 2, "GB": 1024 ** 3, "G": 1024 ** 3, "GIB": 1024 ** 3}


def parse_size(text: str | int) -> int:
    """``"512MB"`` -> bytes (binary units, as the document's ``cache_size`` means them)."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    import re
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if m is None or m.group(2).upper() not in _UNITS:
        raise ConfigurationError(f"not a size: {text!r} (e.g. '512MB')")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def options_from_config(backend: str, *, compression: bool, cache_size: str | int) -> dict[str, Any]:
    """The document's ``ExecutionConfig.compression`` and ``cache_size`` as store options:
    zstd compression of values that shrink (both stores); ``cache_size`` is the SQLite page
    cache of each connection (the filesystem store relies on the OS page cache)."""
    name = (backend or "").strip().lower()
    opts: dict[str, Any] = {}
    if name in ("sqlite", "filesystem", "hybrid"):
        opts["compression"] = "zstd" if compression else None
    if name in ("sqlite", "hybrid"):
        opts["cache_size"] = parse_size(cache_size)
    return opts
