"""Miner face: event outbox, rolling updates, image chutes_version, chute ref_str/cords/bounty.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("images", sa.Column("chutes_version", sa.String(32), nullable=True))
    op.add_column("chutes", sa.Column("ref_str", sa.String(255), nullable=False, server_default=""))
    op.add_column("chutes", sa.Column("cords", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")))
    op.add_column("chutes", sa.Column("bounty", sa.Integer(), nullable=True))
    op.add_column("chutes", sa.Column("bounty_set_at", TZ, nullable=True))
    op.create_table(
        "event_outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("data", JSONB, nullable=False),
        sa.Column("recipients", ARRAY(sa.String(64)), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_event_outbox"),
    )
    op.create_table(
        "rolling_updates",
        sa.Column("chute_id", sa.String(36), nullable=False),
        sa.Column("old_version", sa.String(64), nullable=False),
        sa.Column("new_version", sa.String(64), nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("chute_id", name="pk_rolling_updates"),
        sa.ForeignKeyConstraint(["chute_id"], ["chutes.chute_id"], ondelete="CASCADE",
                                name="fk_rolling_updates_chute_id_chutes"),
    )


def downgrade() -> None:
    op.drop_table("rolling_updates")
    op.drop_table("event_outbox")
    op.drop_column("chutes", "bounty_set_at")
    op.drop_column("chutes", "bounty")
    op.drop_column("chutes", "cords")
    op.drop_column("chutes", "ref_str")
    op.drop_column("images", "chutes_version")
