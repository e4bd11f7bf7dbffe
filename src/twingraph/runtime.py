"""Composition root: builds the embedded default engine from settings.

This is the one place that knows the concrete adapters (SQLite/filesystem result store,
SQLAlchemy metadata store, local executor). Everything else receives them.
"""

from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path
from typing import Any

from twingraph.engine.engine import Engine
from twingraph.errors import ConfigurationError
from twingraph.settings import Settings

_lock = threading.Lock()
_engine: Engine | None = None
_engine_settings: Settings | None = None


def _forget_after_fork() -> None:
    """A forked child builds its own default engine: the parent's has no threads here (its
    recorder's among them), and the child's first run waited on it for ever (a
    ``multiprocessing`` pool with the fork start method hung). The parent's is left as it
    is, not closed: closing it here would write to the parent's stores."""
    global _lock, _engine, _engine_settings
    _lock = threading.Lock()            # it may have been held by another parent thread
    if _engine is not None:
        # Kept, never collected here: closing its inherited SQLite connections would close
        # file descriptors, and POSIX drops every lock this process holds on a file when
        # any descriptor of it closes (the child's own connection's included).
        _inherited.append(_engine)
    _engine, _engine_settings = None, None


_inherited: list[Engine] = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def build_engine(settings: Settings | None = None, **engine_kw: Any) -> Engine:
    from twingraph.stores.metadata import SQLMetadataStore
    from twingraph.stores.results.factory import create_storage_backend
    settings = settings or Settings.from_env()
    ensure_home(settings)
    opts: dict[str, Any] = {}
    if settings.compression:
        from twingraph.stores.results._compress import CompressionPolicy
        try:
            CompressionPolicy(settings.compression)
        except ConfigurationError as exc:       # named: it was said as the result store's
            raise ConfigurationError(f"TWINGRAPH_COMPRESSION: {exc}") from exc
        opts["compression"] = settings.compression
    try:
        results = create_storage_backend(settings.result_store, str(results_path(settings)),
                                         **opts)
    except ConfigurationError as exc:    # the setting's name: the message had the value only
        raise ConfigurationError(f"TWINGRAPH_RESULT_STORE: {exc}") from exc
    metadata = SQLMetadataStore(settings.database_url, create=True)
    # Shared-memory files of process tasks whose driver was killed (SIGKILL leaves them):
    # removed by every engine made here, not only by the next one that starts a process.
    from twingraph.executors.bulk import shared_base, sweep
    sweep(shared_base())
    return Engine(results=results, metadata=metadata, **engine_kw)


def results_path(settings: Settings) -> Path:
    """Where the home's result store of ``settings.result_store`` lives: each kind its own
    name, so switching kinds on one home never opens one kind's files as another's (hybrid
    used ``results.db`` as its directory: refused on a home that had the SQLite file, and
    once made, in the way of the SQLite store). A hybrid store made there before is kept."""
    home, kind = settings.home, (settings.result_store or "").strip().lower()
    if kind == "filesystem":
        return home / "results"
    if kind == "hybrid":
        old = home / "results.db"
        return old if old.is_dir() else home / "results-hybrid"
    return home / "results.db"


def ensure_home(settings: Settings) -> None:
    """Create ``$TWINGRAPH_HOME`` if need be. One that cannot be (a file of that name, no
    permission) is a ``ConfigurationError`` naming it: the CLI says it on one line (exit 2),
    where mkdir's ``FileExistsError`` was a traceback."""
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise _home_is_a_file(settings.home) from None
    except OSError as exc:
        raise ConfigurationError(f"cannot create TWINGRAPH_HOME {settings.home}: "
                                 f"{exc.strerror or exc}") from None


def check_home(settings: Settings) -> None:
    """What ``ensure_home`` says of a home that is a file, for commands that create nothing."""
    if settings.home.exists() and not settings.home.is_dir():
        raise _home_is_a_file(settings.home)


def _home_is_a_file(home: Path) -> ConfigurationError:
    return ConfigurationError(f"TWINGRAPH_HOME {home} is a file, not a directory")


def default_engine() -> Engine:
    """The process-wide engine for the current settings (rebuilt if the environment changed)."""
    global _engine, _engine_settings
    settings = Settings.from_env()
    with _lock:
        if _engine is None or _engine_settings != settings:
            if _engine is not None:
                _engine.close()
            _engine, _engine_settings = build_engine(settings), settings
        return _engine


def set_default_engine(engine: Engine | None) -> None:
    global _engine, _engine_settings
    with _lock:
        _engine, _engine_settings = engine, Settings.from_env() if engine else None


@atexit.register
def _close() -> None:
    if _engine is not None:
        try:
            _engine.close()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
