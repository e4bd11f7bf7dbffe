"""streaming jobs and their completed checkpoints

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

``stream_jobs`` is the job manager's registry (one row per submitted job, its entry point and
arguments so a job can be resubmitted from its latest checkpoint after a restart);
``stream_checkpoints`` lists each job's completed checkpoints and savepoints.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stream_jobs",
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("job_name", sa.String(), nullable=False),
        sa.Column("entrypoint", sa.String(), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("restore_from", sa.Text(), nullable=True),
        sa.Column("checkpoint_dir", sa.Text(), nullable=True),
        sa.Column("submitted_at", sa.Double(), nullable=False),
        sa.Column("start_time_ms", sa.BigInteger(), nullable=True),
        sa.Column("end_time_ms", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", name="pk_stream_jobs"),
    )
    op.create_index("ix_stream_jobs_status", "stream_jobs", ["status"])
    op.create_table(
        "stream_checkpoints",
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("checkpoint_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("duration_ms", sa.Double(), nullable=False),
        sa.Column("completed_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["stream_jobs.job_id"],
                                name="fk_stream_checkpoints_job_id_stream_jobs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "checkpoint_id", name="pk_stream_checkpoints"),
    )


def downgrade() -> None:
    op.drop_table("stream_checkpoints")
    op.drop_index("ix_stream_jobs_status", table_name="stream_jobs")
    op.drop_table("stream_jobs")
