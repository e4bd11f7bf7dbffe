import pytest

from twingraph.engine.engine import Engine
from twingraph.stores.metadata import MemoryMetadataStore, SQLMetadataStore
from twingraph.stores.results.memory import MemoryStorage


@pytest.fixture
def engine():
    eng = Engine(results=MemoryStorage(), metadata=MemoryMetadataStore(), flush_interval=0.01)
    yield eng
    eng.close()


@pytest.fixture
def sqlite_engine(tmp_path):
    from twingraph.stores.results.sqlite import SQLiteStorage
    eng = Engine(results=SQLiteStorage(str(tmp_path / "results.db")),
                 metadata=SQLMetadataStore(f"sqlite:///{tmp_path / 'meta.db'}", create=True),
                 flush_interval=0.01)
    yield eng
    eng.close()
