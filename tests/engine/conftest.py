import pytest

from twingraph.engine.engine import Engine
from twingraph.stores.metadata import MemoryMetadataStore
from twingraph.stores.results.memory import MemoryStorage


@pytest.fixture
def engine():
    eng = Engine(results=MemoryStorage(), metadata=MemoryMetadataStore(), flush_interval=0.01)
    yield eng
    eng.close()

