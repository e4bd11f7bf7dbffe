"""What users need to test their own pipelines without files or services.

    from twingraph.testing import memory_engine

    def test_my_pipeline():
        engine = memory_engine()
        result = my_pipeline.run(engine=engine)
        assert result.value["outputs"]["total"] == 42
        assert engine.metadata.get_tasks(result.run_id)[0].cache_status == "miss"

``MemoryStorage`` and ``MemoryMetadataStore`` pass the same contract suites as the SQLite,
filesystem and PostgreSQL stores, so a pipeline that works here works there.
"""

from __future__ import annotations

from typing import Any

from twingraph.engine.engine import Engine
from twingraph.stores.metadata.memory import MemoryMetadataStore
from twingraph.stores.results.memory import MemoryStorage

__all__ = ["MemoryMetadataStore", "MemoryStorage", "memory_engine"]


def memory_engine(**engine_kw: Any) -> Engine:
    """An engine on in-memory stores with local execution (close it, or let it be collected)."""
    engine_kw.setdefault("flush_interval", 0.01)
    return Engine(results=MemoryStorage(), metadata=MemoryMetadataStore(), **engine_kw)
