"""The metadata tables (SQLAlchemy Core). The Alembic migrations build exactly this schema; a
contract test compares the two on SQLite and PostgreSQL.

Choices, and why:

- Core ``Table`` objects, not ORM classes: the hot path is ``executemany`` of thousands of rows
  per batch, and every reader converts rows to the frozen records of ``core.records`` anyway.
- Times are POSIX seconds in ``DOUBLE`` columns, as in ``core.records``: no timezone conversion
  on the hot path, the same value on every backend; the REST faces format ISO-8601 at the edge.
- Ids are strings: runs bring their own (``run_id``), projects and pipelines get ``proj_``/
  ``pipe_`` + uuid4 hex. Projects and pipelines are addressed by name from the engine and by id
  from the REST faces, so both are unique.
- ``runs.project`` and ``runs.pipeline`` are names (what the engine knows); ``pipeline_id`` is
  filled in when the pipeline is registered in ``pipelines`` and is NULL for ad-hoc runs.
- Tasks are keyed by ``(run_id, node_id)`` (records.py: node ids are unique in a run and stable
  across resumes). Attempts hang off tasks; logs and edges off runs; deleting a run cascades.
- Lineage edges are deduplicated by ``digest`` = sha256 of (kind, src, dst): one edge per
  producer/consumer pair and kind; a fixed-width digest keeps the unique index small.
- Constraint names follow ``NAMING_CONVENTION`` so migrations can address them on every backend.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

#: Autoincrement ids: BIGINT on PostgreSQL; INTEGER on SQLite, where only ``INTEGER PRIMARY
#: KEY`` is the rowid alias that autoincrements.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _empty() -> dict[str, Any]:
    return {}


def _no_tags() -> list[str]:
    return []


projects = Table(
    "projects", metadata,
    Column("id", String, primary_key=True),
    Column("name", String, nullable=False, unique=True),
    Column("description", Text),
    Column("owner", String),
    Column("metadata", JSON, nullable=False, default=_empty),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
)

pipelines = Table(
    "pipelines", metadata,
    Column("id", String, primary_key=True),
    Column("project_id", String, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("name", String, nullable=False),
    Column("description", Text),
    Column("definition", JSON, nullable=False, default=_empty),   # the current version's
    Column("schedule", String),
    Column("tags", JSON, nullable=False, default=_no_tags),    # TwinGraph: ["production", ...]
    Column("current_version", Integer, nullable=False, default=1),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    UniqueConstraint("project_id", "name"),
)

pipeline_versions = Table(
    "pipeline_versions", metadata,
    Column("pipeline_id", String, ForeignKey("pipelines.id", ondelete="CASCADE"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("definition", JSON, nullable=False),
    Column("source_hash", String),
    Column("created_at", Double, nullable=False),
    PrimaryKeyConstraint("pipeline_id", "version"),
)

runs = Table(
    "runs", metadata,
    Column("run_id", String, primary_key=True),
    Column("project", String, nullable=False),
    Column("pipeline", String, nullable=False),
    Column("pipeline_id", String, ForeignKey("pipelines.id", ondelete="SET NULL")),
    Column("pipeline_version", Integer),
    Column("state", String(16), nullable=False),
    Column("params", JSON, nullable=False, default=_empty),
    Column("config", JSON, nullable=False, default=_empty),
    Column("source", JSON, nullable=False, default=_empty),
    Column("tags", JSON, nullable=False, default=_empty),        # Tauro run tags (REST face)
    Column("created_at", Double, nullable=False),
    Column("started_at", Double),
    Column("ended_at", Double),
    Column("heartbeat_at", Double),
    Column("error", Text),
    Column("result_key", String),
    # 0002: runs fired by a schedule or a backfill name it (max_concurrency is counted on it)
    Column("schedule_id", String, ForeignKey("schedules.id", ondelete="SET NULL")),
    # 0004: processes that took the run over (resume, adoption); fencing tokens (states.fence)
    Column("driver_epoch", Integer, nullable=False, default=0, server_default="0"),
    Index(None, "created_at"),
    Index(None, "pipeline", "created_at"),
    Index(None, "state", "created_at"),
    Index(None, "project", "created_at"),
    Index(None, "pipeline_id"),
    Index(None, "schedule_id", "state"),
)

tasks = Table(
    "tasks", metadata,
    Column("run_id", String, ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
    Column("node_id", String, nullable=False),
    Column("component", String, nullable=False),
    Column("state", String(16), nullable=False),
    Column("platform", String, nullable=False, default="local"),
    Column("cache_key", String),
    Column("cache_status", String(16)),
    Column("cache_reason", Text),
    Column("result_key", String),
    Column("content_hash", String),
    Column("attempts", Integer, nullable=False, default=0),
    Column("fence", Integer, nullable=False, default=0),
    Column("order", Integer, nullable=False, default=0),
    Column("inputs", JSON, nullable=False, default=_empty),
    Column("created_at", Double, nullable=False),
    Column("started_at", Double),
    Column("ended_at", Double),
    Column("error", Text),
    PrimaryKeyConstraint("run_id", "node_id"),
)

task_attempts = Table(
    "task_attempts", metadata,
    Column("run_id", String, nullable=False),
    Column("node_id", String, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("fence", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("executor", String, nullable=False, default="local"),
    Column("started_at", Double, nullable=False),
    Column("ended_at", Double),
    Column("error", Text),
    PrimaryKeyConstraint("run_id", "node_id", "attempt"),
    ForeignKeyConstraint(["run_id", "node_id"], ["tasks.run_id", "tasks.node_id"],
                         ondelete="CASCADE"),
)

logs = Table(
    "logs", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", String, ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
    Column("node_id", String),
    Column("at", Double, nullable=False),
    Column("level", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Index(None, "run_id", "at"),
)

lineage_edges = Table(
    "lineage_edges", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", String, ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
    Column("src", String, nullable=False),
    Column("dst", String, nullable=False),
    Column("kind", String(16), nullable=False),               # DEPENDS_ON | BELONGS_TO
    Column("properties", JSON, nullable=False, default=_empty),
    Column("digest", String(64), nullable=False),
    UniqueConstraint("run_id", "digest"),
)

# -- 0002: schedules and API keys -----------------------------------------------------------

schedules = Table(
    "schedules", metadata,
    Column("id", String, primary_key=True),                    # sched_<hex>
    Column("project_id", String, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("pipeline_id", String, ForeignKey("pipelines.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),                # CRON | INTERVAL
    Column("expression", String, nullable=False),
    Column("timezone", String, nullable=False, default="UTC"),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("max_concurrency", Integer, nullable=False, default=1),
    Column("timeout_seconds", Integer),
    Column("overlap_policy", String(16), nullable=False, default="skip"),   # skip | allow
    Column("catchup", Boolean, nullable=False, default=False),
    Column("params", JSON, nullable=False, default=_empty),
    Column("description", Text),
    Column("next_run_at", Double),                             # the claim column (CAS)
    Column("last_run_at", Double),
    Column("last_run_id", String),
    Column("source", String(16), nullable=False, default="api"),   # api | decorator
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Index(None, "enabled", "next_run_at"),
    Index(None, "pipeline_id"),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", String, primary_key=True),                    # key_<hex>
    Column("name", String, nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),   # sha256 of the secret
    Column("prefix", String(16), nullable=False),              # shown in listings
    Column("roles", JSON, nullable=False, default=_no_tags),
    Column("created_at", Double, nullable=False),
    Column("last_used_at", Double),
    Column("expires_at", Double),
    Column("revoked_at", Double),
)

# -- 0003: streaming jobs and their completed checkpoints ------------------------------------

stream_jobs = Table(
    "stream_jobs", metadata,
    Column("job_id", String, primary_key=True),                # job_<hex>
    Column("job_name", String, nullable=False),
    Column("entrypoint", String, nullable=False),              # package.module:function
    Column("args", JSON, nullable=False, default=_empty),
    Column("status", String(16), nullable=False),              # CREATED ... FINISHED
    Column("restore_from", Text),
    Column("checkpoint_dir", Text),
    Column("submitted_at", Double, nullable=False),
    Column("start_time_ms", BigInteger),
    Column("end_time_ms", BigInteger),
    Column("error", Text),
    Index(None, "status"),
)

stream_checkpoints = Table(
    "stream_checkpoints", metadata,
    Column("job_id", String, ForeignKey("stream_jobs.job_id", ondelete="CASCADE"), nullable=False),
    Column("checkpoint_id", Integer, nullable=False),
    Column("kind", String(16), nullable=False),                # checkpoint | savepoint
    Column("path", Text, nullable=False),
    Column("duration_ms", Double, nullable=False),
    Column("completed_at", Double, nullable=False),
    PrimaryKeyConstraint("job_id", "checkpoint_id"),
)
