"""metagraph_nodes: registered hotkeys per subnet, with blacklist reasons.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metagraph_nodes",
        sa.Column("hotkey", sa.String(64), nullable=False),
        sa.Column("netuid", sa.Integer(), nullable=False),
        sa.Column("coldkey", sa.String(64), nullable=False, server_default=""),
        sa.Column("node_id", sa.Integer(), nullable=False, server_default="-1"),
        sa.Column("checksum", sa.String(128), nullable=False, server_default=""),
        sa.Column("incentive", sa.Double(), nullable=False, server_default="0"),
        sa.Column("stake", sa.Double(), nullable=False, server_default="0"),
        sa.Column("tao_stake", sa.Double(), nullable=False, server_default="0"),
        sa.Column("alpha_stake", sa.Double(), nullable=False, server_default="0"),
        sa.Column("trust", sa.Double(), nullable=False, server_default="0"),
        sa.Column("vtrust", sa.Double(), nullable=False, server_default="0"),
        sa.Column("last_updated", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("ip", sa.String(64), nullable=False, server_default=""),
        sa.Column("ip_type", sa.Integer(), nullable=False, server_default="4"),
        sa.Column("port", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("protocol", sa.Integer(), nullable=False, server_default="4"),
        sa.Column("real_host", sa.String(255), nullable=True),
        sa.Column("real_port", sa.Integer(), nullable=True),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("blacklist_reason", sa.String(1024), nullable=True),
        sa.PrimaryKeyConstraint("hotkey", name=op.f("pk_metagraph_nodes")),
    )
    op.create_index(op.f("ix_metagraph_nodes_netuid"), "metagraph_nodes", ["netuid"])


def downgrade() -> None:
    op.drop_index(op.f("ix_metagraph_nodes_netuid"), table_name="metagraph_nodes")
    op.drop_table("metagraph_nodes")
