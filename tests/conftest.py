"""Shared fixtures for every suite: the machine's real PostgreSQL, and user modules written to
files and imported fresh (``user_modules``).

``postgres_url`` creates a fresh database ``twingraph_test_<random>`` on 127.0.0.1:5432 (trust
auth, user postgres; override the server with ``TWINGRAPH_TEST_POSTGRES``) for the test session
and drops it at the end. Tests that need it are skipped, with the reason, only when the server
cannot be reached.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import secrets
import sys
import textwrap
from collections.abc import Iterator

import pytest

ADMIN_URL = os.environ.get("TWINGRAPH_TEST_POSTGRES",
                           "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session", autouse=True)
def _home_outside_the_checkout(tmp_path_factory) -> Iterator[None]:
    """Runs made without an explicit engine or store (``Pipeline.run()``, a bare
    ``DynamicScheduler()``) use the default home, ``./.twingraph``: the tests' own, in a temp
    directory, not the checkout's (a test that sets TWINGRAPH_HOME itself still wins)."""
    if os.environ.get("TWINGRAPH_HOME"):
        yield
        return
    os.environ["TWINGRAPH_HOME"] = str(tmp_path_factory.mktemp("twingraph-home"))
    try:
        yield
    finally:
        os.environ.pop("TWINGRAPH_HOME", None)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database that lives for the test session."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {ADMIN_URL}: {exc}".strip())
    name = f"twingraph_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_module_counter = itertools.count()


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """load(source, **helpers) -> module: writes ``source`` (and helper modules, each
    ``name=source``) to files and imports them under fresh, unique names. ``{name}`` in a source
    is replaced by the unique name of helper module ``name`` (no other brace is touched)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[str] = []

    def _load(source, **helpers):
        names = {k: f"um_{k}_{next(_module_counter)}" for k in helpers}

        def fill(src):
            src = textwrap.dedent(src)
            for k, n in names.items():
                src = src.replace("{%s}" % k, n)
            return src
        for k, src in helpers.items():
            (tmp_path / f"{names[k]}.py").write_text(fill(src))
            made.append(names[k])
        name = f"um_main_{next(_module_counter)}"
        path = tmp_path / f"{name}.py"
        path.write_text(fill(source))
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        made.append(name)
        spec.loader.exec_module(mod)
        return mod

    yield _load
    for n in made:
        sys.modules.pop(n, None)


@pytest.fixture
def sqlite_engine(tmp_path):
    """An engine on SQLite files in ``tmp_path`` (results and metadata), flushing often."""
    from twingraph.engine.engine import Engine
    from twingraph.stores.metadata import SQLMetadataStore
    from twingraph.stores.results.sqlite import SQLiteStorage
    eng = Engine(results=SQLiteStorage(str(tmp_path / "results.db")),
                 metadata=SQLMetadataStore(f"sqlite:///{tmp_path / 'meta.db'}", create=True),
                 flush_interval=0.01)
    yield eng
    eng.close()
