"""Where the metadata database lives: one URL, resolved once at the edge.

``TWINGRAPH_DATABASE_URL`` wins; otherwise the database is the SQLite file ``twingraph.db`` in
``$TWINGRAPH_HOME`` (default ``./.twingraph``), so a laptop needs no service at all.
PostgreSQL URLs are normalised to the psycopg 3 driver, the only PostgreSQL driver we ship
(``twingraph[postgres]``): ``postgres://`` and ``postgresql://`` both become
``postgresql+psycopg://``; an explicit driver (``postgresql+psycopg2://``) is left as written.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.util import asbool

from twingraph.errors import ConfigurationError

DATABASE_URL_ENV = "TWINGRAPH_DATABASE_URL"
HOME_ENV = "TWINGRAPH_HOME"
DEFAULT_HOME = Path(".twingraph")
DATABASE_FILE = "twingraph.db"


def default_database_url(home: Path) -> str:
    """``sqlite:///<home>/twingraph.db`` with ``home`` made absolute (the CWD may change later)."""
    return f"sqlite:///{(Path(home).expanduser().absolute() / DATABASE_FILE).as_posix()}"


def resolve_database_url(env: Mapping[str, str] | None = None) -> str:
    """The configured database URL: ``TWINGRAPH_DATABASE_URL``, else the SQLite file in the home."""
    env = os.environ if env is None else env
    url = env.get(DATABASE_URL_ENV, "").strip()
    if url:
        return url
    return default_database_url(Path(env.get(HOME_ENV, "").strip() or DEFAULT_HOME))


#: SQLAlchemy's PostgreSQL driver names whose module has another name.
_DRIVER_MODULES = {"psycopg_async": "psycopg"}


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and pick the driver we support; raise ``ConfigurationError`` otherwise."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError as exc:
        raise ConfigurationError(f"not a database URL: {url!r} ({exc})") from exc
    backend = parsed.get_backend_name()
    if backend == "postgres":     # Heroku-style spelling
        parsed = parsed.set(drivername="postgresql+psycopg")
        backend = "postgresql"
    if backend == "postgresql":
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        driver = parsed.get_driver_name()
        if driver == "psycopg" and importlib.util.find_spec("psycopg") is None:
            raise ConfigurationError(
                "PostgreSQL needs the psycopg driver: pip install 'twingraph[postgres]'")
        module = _DRIVER_MODULES.get(driver, driver)
        if driver != "psycopg" and importlib.util.find_spec(module) is None:
            # a ModuleNotFoundError traceback at the first connection
            raise ConfigurationError(
                f"the PostgreSQL driver {driver!r} the URL names is not installed (module "
                f"{module!r}); TwinGraph ships psycopg: use postgresql+psycopg://... or "
                f"postgresql://...")
        return parsed
    if backend == "sqlite":
        if parsed.get_driver_name() not in ("", "pysqlite"):
            raise ConfigurationError(f"unsupported SQLite driver in {parsed!r}; use sqlite:///path")
        return parsed
    raise ConfigurationError(
        f"unsupported metadata database {backend!r}: use sqlite:///path or postgresql://...")


def is_memory_sqlite(url: URL) -> bool:
    """True for ``sqlite://``, ``sqlite:///:memory:`` and the URI forms of a database in
    memory (``file::memory:``, ``mode=memory``): what a process writes there ends with it."""
    if url.get_backend_name() != "sqlite":
        return False
    if url.database in (None, "", ":memory:"):
        return True
    return is_sqlite_uri(url) and (urlparse(url.database or "").path == ":memory:"
                                   or url.query.get("mode") == "memory")


def is_sqlite_uri(url: URL) -> bool:
    """Whether SQLite takes ``url``'s database for a URI (``file:...`` with ``uri`` set true,
    as SQLAlchemy reads the flag: ``true``, ``yes``, ``on``, ``1``...)."""
    flag = url.query.get("uri", "false")
    try:
        uri = asbool(flag if isinstance(flag, str) else flag[-1])
    except ValueError:
        raise ConfigurationError(f"uri={flag!r} in the metadata database URL is neither true "
                                 f"nor false") from None
    return uri and (url.database or "").startswith("file:")
