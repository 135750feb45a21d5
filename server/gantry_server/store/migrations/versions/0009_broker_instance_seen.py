"""Broker: when a session's provider instance was last seen to exist (a vanished one is billed up to there).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""
from alembic import op
import sqlalchemy as sa

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("broker_sessions", sa.Column("instance_seen_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("broker_sessions", "instance_seen_at")
