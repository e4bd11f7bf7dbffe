"""The application layer between the REST faces and the engine/stores.

``Services`` is what one server process holds: the engine (with its result and metadata stores),
the catalog (projects, pipelines, runs as the faces see them), the run service, the shared
dynamic scheduler (for ``execute-dynamic`` and graph pipelines), and the event hub. Faces
(server routers, the CLI) call these; they never touch SQLAlchemy or the engine's loop.

Nodes that clients send (``execute-dynamic`` programs, graph pipelines) run, by default, each in
a worker process with a memory limit and a timeout (``Settings.node_*``, decision 0076): a
request's parameters can make a registered operation allocate without bound or never end, and
that must cost the node, not the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twingraph.engine.dynamic import DynamicScheduler, ExecutionConfig
from twingraph.engine.engine import Engine
from twingraph.errors import ConfigurationError
from twingraph.service.events import EventHub
from twingraph.service.runs import RunService
from twingraph.settings import Settings
from twingraph.stores.metadata.catalog_store import SQLCatalog
from twingraph.stores.metadata.store import SQLMetadataStore


@dataclass
class Services:
    settings: Settings
    engine: Engine
    catalog: SQLCatalog
    runs: RunService
    scheduler: DynamicScheduler
    hub: EventHub
    extras: dict[str, Any] = field(default_factory=dict)   # schedules, auth, stream manager...
    owns_stores: bool = False          # built here from settings: close() closes the stores too

    def close(self) -> None:
        self.runs.close()
        self.engine.close()
        if self.owns_stores:
            for store in (self.engine.metadata, self.engine.results):
                close = getattr(store, "close", None)
                if close is not None:
                    close()


def build_services(settings: Settings | None = None, *, engine: Engine | None = None) -> Services:
    """Wire the embedded default (or ``engine``) into one ``Services``. The engine built here
    gets a local executor whose worker processes have ``settings.node_memory_limit``; a given
    ``engine`` keeps its own executor (isolated nodes then get the limits it has)."""
    from twingraph.runtime import build_engine
    settings = settings or Settings.from_env()
    hub = EventHub()
    owns = engine is None
    if engine is None:
        engine = build_engine(settings, executor=_local_executor(settings))
    if not isinstance(engine.metadata, SQLMetadataStore):
        raise ConfigurationError("the server needs the SQL metadata store (SQLite or PostgreSQL)")
    engine.subscribe(hub)
    catalog = SQLCatalog(engine.metadata)
    scheduler = DynamicScheduler(engine.results, ExecutionConfig(), engine=engine,
                                 isolate=settings.isolated_nodes,
                                 node_timeout=settings.node_timeout)
    runs = RunService(engine, catalog, scheduler)
    return Services(settings, engine, catalog, runs, scheduler, hub, owns_stores=owns)


def _local_executor(settings: Settings) -> Any:
    """The server's local executor: threads as embedded, and ``settings.worker_processes``
    worker processes, each limited to ``settings.node_memory_limit``."""
    from twingraph.executors.local import LocalExecutor
    return LocalExecutor(max_processes=settings.worker_processes,
                         process_memory_limit=settings.node_memory_limit)
