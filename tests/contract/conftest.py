"""Fixtures shared by the contract suites."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from twingraph.stores.metadata import MemoryMetadataStore, SQLMetadataStore


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def metadata_store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    """A fresh metadata store of each kind: in memory, a SQLite file, the machine's
    PostgreSQL (a database of the test session)."""
    if request.param == "memory":
        s: Any = MemoryMetadataStore()
    elif request.param == "sqlite":
        s = SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True)
    else:
        s = SQLMetadataStore(request.getfixturevalue("postgres_url"), create=True)
    yield s
    s.close()
