"""a run's driver epoch (fencing across drivers)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

``runs.driver_epoch`` counts the processes that took a run over (``--resume``, a server's
adoption): each claims the next number in one statement, and its tasks' fencing tokens lie
above every earlier driver's (``core.states.fence``). Existing runs start at 0, their first
driver's epoch.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("driver_epoch", sa.Integer(), nullable=False,
                                   server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("driver_epoch")
