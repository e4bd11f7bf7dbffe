"""Shared fixtures for every suite: the machine's real PostgreSQL.

``postgres_url`` creates a fresh database ``twingraph_test_<random>`` on 127.0.0.1:5432 (trust
auth, user postgres; override the server with ``TWINGRAPH_TEST_POSTGRES``) for the test session
and drops it at the end. Tests that need it are skipped, with the reason, only when the server
cannot be reached.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

ADMIN_URL = os.environ.get("TWINGRAPH_TEST_POSTGRES",
                           "postgresql://postgres@127.0.0.1:5432/postgres")


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
