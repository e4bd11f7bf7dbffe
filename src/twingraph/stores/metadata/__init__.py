"""The metadata store: runs, tasks, attempts, logs, lineage, and the catalog of projects and
pipelines. ``SQLMetadataStore`` on SQLite or PostgreSQL (schema by Alembic migrations shipped in
this package), ``MemoryMetadataStore`` for tests. Both implement ``twingraph.ports.MetadataStore``.
"""

from twingraph.stores.metadata.catalog import PipelineRecord, PipelineVersionRecord, ProjectRecord
from twingraph.stores.metadata.memory import MemoryMetadataStore
from twingraph.stores.metadata.migrate import current, head, upgrade
from twingraph.stores.metadata.store import SQLMetadataStore
from twingraph.stores.metadata.url import default_database_url, resolve_database_url

__all__ = [
    "MemoryMetadataStore",
    "PipelineRecord",
    "PipelineVersionRecord",
    "ProjectRecord",
    "SQLMetadataStore",
    "current",
    "default_database_url",
    "head",
    "resolve_database_url",
    "upgrade",
]
