"""schedules, API keys, and runs.schedule_id

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

``schedules.next_run_at`` is the claim column: a firer advances it with a compare-and-set, so two
server processes never fire the same slot. ``api_keys`` stores only the sha256 of each secret.
``runs.schedule_id`` names the schedule that fired (or backfilled) a run. SQLite cannot add a
foreign key to an existing table without rebuilding it, so the column is added in batch mode.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("pipeline_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("expression", sa.String(), nullable=False),
        sa.Column("timezone", sa.String(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("max_concurrency", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=True),
        sa.Column("overlap_policy", sa.String(length=16), nullable=False),
        sa.Column("catchup", sa.Boolean(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("next_run_at", sa.Double(), nullable=True),
        sa.Column("last_run_at", sa.Double(), nullable=True),
        sa.Column("last_run_id", sa.String(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["pipeline_id"], ["pipelines.id"],
                                name="fk_schedules_pipeline_id_pipelines", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"],
                                name="fk_schedules_project_id_projects", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_schedules"),
    )
    op.create_index("ix_schedules_enabled_next_run_at", "schedules", ["enabled", "next_run_at"])
    op.create_index("ix_schedules_pipeline_id", "schedules", ["pipeline_id"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("last_used_at", sa.Double(), nullable=True),
        sa.Column("expires_at", sa.Double(), nullable=True),
        sa.Column("revoked_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("schedule_id", sa.String(), nullable=True))
        batch.create_foreign_key("fk_runs_schedule_id_schedules", "schedules",
                                 ["schedule_id"], ["id"], ondelete="SET NULL")
        batch.create_index("ix_runs_schedule_id_state", ["schedule_id", "state"])


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_schedule_id_state")
        batch.drop_constraint("fk_runs_schedule_id_schedules", type_="foreignkey")
        batch.drop_column("schedule_id")
    op.drop_table("api_keys")
    op.drop_index("ix_schedules_pipeline_id", table_name="schedules")
    op.drop_index("ix_schedules_enabled_next_run_at", table_name="schedules")
    op.drop_table("schedules")
