"""Table definitions (SQLAlchemy Core). Alembic migrations under migrations/ create them; keep both in step."""
from __future__ import annotations

from sqlalchemy import (ARRAY, BigInteger, Column, DateTime, Double, ForeignKey, Integer, MetaData, String, Table,
                        func)

metadata = MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

metagraph_nodes = Table(
    "metagraph_nodes", metadata,
    Column("hotkey", String(64), primary_key=True),
    Column("netuid", Integer, nullable=False, index=True),
    Column("coldkey", String(64), nullable=False, server_default=""),
    Column("node_id", Integer, nullable=False, server_default="-1"),
    Column("checksum", String(128), nullable=False, server_default=""),
    Column("incentive", Double, nullable=False, server_default="0"),
    Column("stake", Double, nullable=False, server_default="0"),
    Column("tao_stake", Double, nullable=False, server_default="0"),
    Column("alpha_stake", Double, nullable=False, server_default="0"),
    Column("trust", Double, nullable=False, server_default="0"),
    Column("vtrust", Double, nullable=False, server_default="0"),
    Column("last_updated", BigInteger, nullable=False, server_default="0"),
    Column("ip", String(64), nullable=False, server_default=""),
    Column("ip_type", Integer, nullable=False, server_default="4"),
    Column("port", Integer, nullable=False, server_default="0"),
    Column("protocol", Integer, nullable=False, server_default="4"),
    Column("real_host", String(255), nullable=True),
    Column("real_port", Integer, nullable=True),
    Column("synced_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("blacklist_reason", String(1024), nullable=True),
)

users = Table(
    "users", metadata,
    Column("user_id", String(36), primary_key=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("hotkey", String(64), nullable=True, unique=True),
    Column("coldkey", String(64), nullable=True),
    Column("roles", ARRAY(String(64)), nullable=False, server_default="{}"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

api_keys = Table(
    "api_keys", metadata,
    Column("api_key_id", String(36), primary_key=True),
    Column("user_id", String(36), ForeignKey("users.user_id", ondelete="CASCADE"), nullable=False, index=True),
    Column("name", String(255), nullable=False, server_default=""),
    Column("key_prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)
