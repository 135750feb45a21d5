"""Table definitions (SQLAlchemy Core). Alembic migrations under migrations/ create them; keep both in step."""
from __future__ import annotations

from sqlalchemy import (ARRAY, BigInteger, Boolean, Column, DateTime, Double, ForeignKey, Identity, Index, Integer, LargeBinary,
                        MetaData, Numeric, String, Table, func, text)

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

# --- broker face (seed 004) -------------------------------------------------------------------------------------
# Session state lives here, not in memory: every transition is a conditional UPDATE, and background loops claim
# a row with a short lease (lease_owner/lease_until) so that several replicas never act twice on one session.

ACTIVE_SESSION_STATUSES = ("pending", "provisioning", "running")
TERMINAL_SESSION_STATUSES = ("stopped", "failed")

broker_sessions = Table(
    "broker_sessions", metadata,
    Column("id", String(36), primary_key=True),
    Column("consumer_id", String(255), nullable=False, index=True),
    Column("request_id", String(255), nullable=True),  # idempotency key of the create
    Column("provider", String(32), nullable=False, index=True),
    Column("offer_id", String(255), nullable=False),
    Column("machine_id", String(255), nullable=True),
    Column("provider_instance_id", String(255), nullable=True),
    Column("gpu_type", String(128), nullable=False),
    Column("gpu_count", Integer, nullable=False, server_default="1"),
    Column("vram_gb", Integer, nullable=False, server_default="0"),
    Column("status", String(16), nullable=False, index=True),
    Column("error", String(2048), nullable=True),
    Column("stop_reason", String(64), nullable=True),  # user_requested, done, expired, hard_max, idle, ...
    Column("ssh_host", String(255), nullable=True),
    Column("ssh_port", Integer, nullable=True),
    Column("ssh_user", String(64), nullable=True),
    Column("ssh_key_type", String(16), nullable=False, server_default="ed25519"),
    Column("ssh_public_key", String(4096), nullable=False),
    Column("ssh_private_key_enc", LargeBinary, nullable=True),  # keyring envelope; plain text never stored
    Column("workload_type", String(32), nullable=False),
    Column("reservation_hours", Integer, nullable=False),
    Column("idle_threshold_minutes", Integer, nullable=False, server_default="0"),
    Column("storage_policy", String(16), nullable=False, server_default="destroy"),
    Column("launch_mode", String(16), nullable=False, server_default="ssh"),
    Column("docker_image", String(512), nullable=True),
    Column("model_id", String(255), nullable=True),
    Column("quantization", String(32), nullable=True),
    Column("exposed_ports", ARRAY(Integer), nullable=False, server_default="{}"),
    Column("api_port", Integer, nullable=True),
    Column("api_endpoint", String(512), nullable=True),
    Column("template_hash_id", String(64), nullable=True),
    Column("template_name", String(255), nullable=True),
    Column("disk_gb", Integer, nullable=True),
    Column("on_start_cmd", String(8192), nullable=True),
    Column("price_per_hour", Double, nullable=False),
    Column("auto_retry", Boolean, nullable=False, server_default="false"),
    Column("max_retries", Integer, nullable=False, server_default="0"),
    Column("retry_scope", String(16), nullable=True),
    Column("retry_count", Integer, nullable=False, server_default="0"),
    Column("retry_parent_id", String(36), nullable=True),
    Column("retry_child_id", String(36), nullable=True),
    Column("failed_offers", String(4096), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("provision_deadline", DateTime(timezone=True), nullable=False),  # one coherent deadline (BUG-005)
    Column("billing_started_at", DateTime(timezone=True), nullable=True),  # the provider instance exists from here
    Column("running_at", DateTime(timezone=True), nullable=True),
    Column("stopped_at", DateTime(timezone=True), nullable=True),
    Column("last_active_at", DateTime(timezone=True), nullable=True),  # idle detection
    Column("preserved_until", DateTime(timezone=True), nullable=True),  # storage_policy preserve: stopped, disk kept
    Column("ghost_misses", Integer, nullable=False, server_default="0"),
    Column("destroy_attempts", Integer, nullable=False, server_default="0"),
    Column("next_check_at", DateTime(timezone=True), nullable=True),  # when a loop should look at it next
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("version", BigInteger, nullable=False, server_default="1"),  # bumped on every change (WatchSession)
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("uq_broker_sessions_active_offer", "consumer_id", "offer_id", unique=True,
          postgresql_where=text("status IN ('pending', 'provisioning', 'running')")),
    Index("uq_broker_sessions_request_id", "consumer_id", "request_id", unique=True,
          postgresql_where=text("request_id IS NOT NULL")),
)

# One row per (session, clock hour) the instance existed in, amount pro rata to the seconds in that hour; written
# once, in the same transaction as the terminal status, on every termination path.
broker_costs = Table(
    "broker_costs", metadata,
    Column("session_id", String(36), ForeignKey("broker_sessions.id", ondelete="CASCADE"), primary_key=True),
    Column("hour", DateTime(timezone=True), primary_key=True),
    Column("consumer_id", String(255), nullable=False, index=True),
    Column("provider", String(32), nullable=False),
    Column("gpu_type", String(128), nullable=False),
    Column("seconds", Double, nullable=False),
    Column("amount", Numeric(14, 6), nullable=False),
    Column("currency", String(3), nullable=False, server_default="USD"),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Index("ix_broker_costs_hour", "hour"),
)

# Failure tracker (feeds availability_confidence and /offer-health); rows older than the decay window are pruned.
broker_offer_failures = Table(
    "broker_offer_failures", metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("offer_id", String(255), nullable=False, index=True),
    Column("provider", String(32), nullable=False),
    Column("gpu_type", String(128), nullable=False),
    Column("machine_id", String(255), nullable=True),
    Column("failure_type", String(32), nullable=False),
    Column("reason", String(2048), nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
)

# Reconciler memory: a labelled provider instance with no live session is destroyed only after repeated misses
# and a direct status check.
broker_orphan_candidates = Table(
    "broker_orphan_candidates", metadata,
    Column("provider", String(32), primary_key=True),
    Column("instance_id", String(255), primary_key=True),
    Column("label", String(255), nullable=True),
    Column("misses", Integer, nullable=False, server_default="1"),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
)
