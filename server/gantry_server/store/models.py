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
    Column("instance_seen_at", DateTime(timezone=True), nullable=True),  # last listing/check/probe that saw it
    Column("destroy_attempts", Integer, nullable=False, server_default="0"),
    Column("verify_attempts", Integer, nullable=False, server_default="0"),
    Column("auth_failures", Integer, nullable=False, server_default="0"),  # consecutive; 3 = permanent
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

# Deployment-wide facts shared by every replica on this database (e.g. the generated deployment id that labels
# provider instances, so replicas agree on which instances are theirs without configuration).
broker_meta = Table(
    "broker_meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(1024), nullable=False),
)


# --- Servers and TDX attestation (seed 001; migration 0004) ----------------------------------------------------
from sqlalchemy import ForeignKeyConstraint, Text, UniqueConstraint  # noqa: E402  (kept beside the tables using them)

# A miner's TDX server, registered after its runtime evidence verified; its GPUs are `nodes`.
servers = Table(
    "servers", metadata,
    Column("server_id", String(255), primary_key=True),  # client-supplied (k8s node uid)
    Column("name", String(255), nullable=False),
    Column("ip", String(64), nullable=False, unique=True),  # one server per address: runtime nonces are IP-bound
    Column("miner_hotkey", String(64), nullable=False, index=True),
    Column("netuid", Integer, nullable=False),
    Column("is_tee", Boolean, nullable=False, server_default=text("true")),
    Column("compute_type", String(8), nullable=False, server_default="gpu"),
    Column("version", String(64), nullable=True),  # measurement version of the latest successful attestation
    Column("maintenance_pending_window_id", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("miner_hotkey", "name", name="uq_servers_miner_hotkey_name"),
)

# GPUs of registered servers (the reference's `nodes`); a uuid belongs to one server network-wide.
nodes = Table(
    "nodes", metadata,
    Column("uuid", String(255), primary_key=True),
    Column("miner_hotkey", String(64), nullable=False, index=True),
    Column("server_id", String(255), ForeignKey("servers.server_id", ondelete="CASCADE"), nullable=False, index=True),
    Column("gpu_identifier", String(64), nullable=False),
    Column("name", String(255), nullable=False),
    Column("memory", BigInteger, nullable=False),
    Column("major", Integer, nullable=True),
    Column("minor", Integer, nullable=True),
    Column("processors", Integer, nullable=False),
    Column("sxm", Boolean, nullable=True),
    Column("clock_rate", Double, nullable=False),
    Column("max_threads_per_processor", Integer, nullable=False),
    Column("concurrent_kernels", Boolean, nullable=True),
    Column("ecc", Boolean, nullable=True),
    Column("device_index", Integer, nullable=False),
    Column("verification_host", String(255), nullable=False),
    Column("verification_port", Integer, nullable=False),
    Column("seed", BigInteger, nullable=False, server_default="0"),
    Column("verified_at", DateTime(timezone=True), nullable=True),
    Column("verification_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Every registration and runtime attestation attempt, failed or not. No FK to servers: a failed registration
# leaves its record but no server row.
server_attestations = Table(
    "server_attestations", metadata,
    Column("attestation_id", String(36), primary_key=True),
    Column("seq", BigInteger, Identity(), nullable=False),  # insertion order: "latest" even within one clock tick
    Column("server_id", String(255), nullable=False),
    Column("miner_hotkey", String(64), nullable=True),
    Column("kind", String(16), nullable=False),  # "registration" | "runtime"
    Column("server_ip", String(64), nullable=False),
    Column("quote_data", Text, nullable=True),  # base64, as received
    Column("verified", Boolean, nullable=False),
    Column("error_reason", String(64), nullable=True),
    Column("verification_error", Text, nullable=True),
    Column("tcb_status", String(64), nullable=True),
    Column("measurement_version", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("verified_at", DateTime(timezone=True), nullable=True),
    Index("ix_server_attestations_server_created", "server_id", "created_at"),
)

# Every boot attestation attempt (VM initramfs, before a server exists); linked to servers by IP.
boot_attestations = Table(
    "boot_attestations", metadata,
    Column("attestation_id", String(36), primary_key=True),
    Column("server_ip", String(64), nullable=False, index=True),
    Column("miner_hotkey", String(64), nullable=True),
    Column("vm_name", String(255), nullable=True),
    Column("quote_data", Text, nullable=True),
    Column("verified", Boolean, nullable=False),
    Column("error_reason", String(64), nullable=True),
    Column("verification_error", Text, nullable=True),
    Column("tcb_status", String(64), nullable=True),
    Column("measurement_version", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("verified_at", DateTime(timezone=True), nullable=True),
)

# One row per VM (miner hotkey + VM name); its volumes' passphrases hang off it.
vm_cache_configs = Table(
    "vm_cache_configs", metadata,
    Column("miner_hotkey", String(64), primary_key=True),
    Column("vm_name", String(255), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=True),
    Column("last_boot_at", DateTime(timezone=True), nullable=True),
)

# LUKS volume passphrases, only as Keyring envelopes (GSE1 blobs) bound to (hotkey, VM, volume).
vm_luks_passphrases = Table(
    "vm_luks_passphrases", metadata,
    Column("miner_hotkey", String(64), primary_key=True),
    Column("vm_name", String(255), primary_key=True),
    Column("volume", String(64), primary_key=True),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(["miner_hotkey", "vm_name"], ["vm_cache_configs.miner_hotkey", "vm_cache_configs.vm_name"],
                         ondelete="CASCADE", name="fk_vm_luks_passphrases_vm_cache_configs"),
)

# Allowed TDX measurement sets loaded through AdminService (file entries are not stored).
measurement_policies = Table(
    "measurement_policies", metadata,
    Column("name", String(128), primary_key=True),
    Column("version", String(64), nullable=False),
    Column("mrtd", String(96), nullable=False),
    Column("boot_rtmrs", ARRAY(String(96)), nullable=False),
    Column("runtime_rtmrs", ARRAY(String(96)), nullable=False),
    Column("expected_gpus", ARRAY(String(64)), nullable=False, server_default="{}"),
    Column("gpu_count", Integer, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Collateral fetched from the PCCS, per FMSPC and PCK CA, until it expires.
tdx_collateral = Table(
    "tdx_collateral", metadata,
    Column("fmspc", String(12), primary_key=True),
    Column("ca", String(16), primary_key=True),
    Column("collateral", Text, nullable=False),
    Column("fetched_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

# User tokens (HS256 JWTs issued through AdminService.CreateUserToken): one row per token, so that one token can
# be revoked and the interceptor can tell a revoked token from a live one. The token itself is never stored.
user_tokens = Table(
    "user_tokens", metadata,
    Column("token_id", String(36), primary_key=True),  # the JWT's jti
    Column("user_id", String(36), ForeignKey("users.user_id", ondelete="CASCADE"), nullable=False, index=True),
    Column("name", String(255), nullable=False, server_default=""),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

# Keys the service itself signs with, shared by every replica, stored only encrypted (Keyring envelope; listed in
# store/encrypted_columns.py so key rotation covers them). `name` says what the key is for.
service_keys = Table(
    "service_keys", metadata,
    Column("name", String(64), primary_key=True),
    Column("key_enc", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


# --- Chutes, launch configs and instances (seeds 000/002; migration 0007) ---------------------------------------
from sqlalchemy.dialects.postgresql import JSONB  # noqa: E402

# Container images chutes run; `{owner username}/{name}:{tag}[-{patch_version}]` is what miners pull.
images = Table(
    "images", metadata,
    Column("image_id", String(36), primary_key=True),
    Column("user_id", String(36), ForeignKey("users.user_id", ondelete="RESTRICT"), nullable=False, index=True),
    Column("name", String(255), nullable=False),
    Column("tag", String(255), nullable=False),
    Column("patch_version", String(64), nullable=True),
    Column("compute_type", String(8), nullable=False, server_default="gpu"),
    Column("chutes_version", String(32), nullable=True),  # SDK version the image was built with (migration 0008)
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Chutes (containerised GPU apps), registered through AdminService.UpsertChute.
chutes = Table(
    "chutes", metadata,
    Column("chute_id", String(36), primary_key=True),
    Column("user_id", String(36), ForeignKey("users.user_id", ondelete="RESTRICT"), nullable=False, index=True),
    Column("name", String(255), nullable=False),
    Column("image_id", String(36), ForeignKey("images.image_id", ondelete="RESTRICT"), nullable=False, index=True),
    Column("version", String(64), nullable=False),
    Column("chutes_version", String(32), nullable=True),
    Column("node_selector", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("public", Boolean, nullable=False, server_default=text("false")),
    Column("tee", Boolean, nullable=False, server_default=text("false")),
    Column("disabled", Boolean, nullable=False, server_default=text("false")),
    Column("boost", Double, nullable=True),
    Column("allow_external_egress", Boolean, nullable=False, server_default=text("false")),
    Column("lock_modules", Boolean, nullable=True),
    Column("standard_template", String(64), nullable=True),
    Column("code", Text, nullable=False, server_default=""),
    Column("filename", String(255), nullable=False, server_default=""),
    Column("shutdown_after_seconds", Integer, nullable=True),
    Column("concurrency", Integer, nullable=True),
    Column("encrypted_fs", Boolean, nullable=False, server_default=text("false")),
    Column("preemptible", Boolean, nullable=False, server_default=text("false")),
    Column("max_instances", Integer, nullable=True),
    Column("jobs", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # migration 0008: what a stock miner runs, the chute's cords, and the bounty offered (SetChuteBounty)
    Column("ref_str", String(255), nullable=False, server_default=""),
    Column("cords", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("bounty", Integer, nullable=True),
    Column("bounty_set_at", DateTime(timezone=True), nullable=True),
)

# One-shot jobs of a chute; unclaimed while miner_hotkey is NULL, raced for through launch configs.
jobs = Table(
    "jobs", metadata,
    Column("job_id", String(36), primary_key=True),
    Column("chute_id", String(36), ForeignKey("chutes.chute_id", ondelete="CASCADE"), nullable=False, index=True),
    Column("user_id", String(36), ForeignKey("users.user_id", ondelete="RESTRICT"), nullable=False),
    Column("method", String(255), nullable=False),
    Column("job_args", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("ports", JSONB, nullable=False, server_default=text("'[]'::jsonb")),  # [{name, port, proto}]
    Column("compute_multiplier", Double, nullable=True),
    Column("status", String(32), nullable=False, server_default="pending"),
    Column("miner_uid", Integer, nullable=True),
    Column("miner_hotkey", String(64), nullable=True),
    Column("miner_coldkey", String(64), nullable=True),
    Column("instance_id", String(36), nullable=True),
    Column("port_mappings", JSONB, nullable=True),
    Column("miner_history", JSONB, nullable=False, server_default=text("'[]'::jsonb")),  # hotkeys that raced
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("error_detail", Text, nullable=True),
    Column("miner_terminated", Boolean, nullable=False, server_default=text("false")),
)

# A launch config: one miner's ticket to start one instance of a chute. `retrieved_at` is the one-time claim of
# its launch JWT; `verified_at` / `failed_at` end it (reference §3.3, §4.1).
launch_configs = Table(
    "launch_configs", metadata,
    Column("config_id", String(36), primary_key=True),
    Column("chute_id", String(36), ForeignKey("chutes.chute_id", ondelete="CASCADE"), nullable=False, index=True),
    Column("job_id", String(36), ForeignKey("jobs.job_id", ondelete="SET NULL"), nullable=True),
    Column("env_key", String(32), nullable=False),
    Column("env_type", String(8), nullable=False),  # "tee" | "graval"
    Column("seed", BigInteger, nullable=False, server_default="0"),  # the graval seed, 0 until claimed
    Column("miner_uid", Integer, nullable=False),
    Column("miner_hotkey", String(64), nullable=False, index=True),
    Column("miner_coldkey", String(64), nullable=False),
    Column("server_id", String(255), nullable=True),
    Column("nonce", String(32), nullable=True),  # copy of the runtime-integrity nonce (chutes >= 0.4.9)
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("retrieved_at", DateTime(timezone=True), nullable=True),
    Column("verified_at", DateTime(timezone=True), nullable=True),
    Column("failed_at", DateTime(timezone=True), nullable=True),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    Column("verification_error", Text, nullable=True),
    # at most one live (not failed, not completed) config per job: the race for a job has one winner
    Index("uq_launch_configs_live_job", "job_id", unique=True,
          postgresql_where=text("job_id IS NOT NULL AND failed_at IS NULL AND completed_at IS NULL")),
)

# Instances: one running copy of a chute on a miner's GPUs (reference §3.2). Secrets only as Keyring envelopes.
instances = Table(
    "instances", metadata,
    Column("instance_id", String(36), primary_key=True),
    Column("chute_id", String(36), ForeignKey("chutes.chute_id", ondelete="CASCADE"), nullable=False, index=True),
    Column("version", String(64), nullable=False),
    Column("chutes_version", String(32), nullable=True),
    Column("config_id", String(36), ForeignKey("launch_configs.config_id", ondelete="SET NULL"), nullable=True,
           unique=True),
    Column("deployment_id", String(255), nullable=True),
    Column("server_id", String(255), nullable=True),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("port_mappings", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("miner_uid", Integer, nullable=False),
    Column("miner_hotkey", String(64), nullable=False, index=True),
    Column("miner_coldkey", String(64), nullable=False),
    Column("region", String(64), nullable=False, server_default="n/a"),
    Column("active", Boolean, nullable=False, server_default=text("false")),
    Column("verified", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("activated_at", DateTime(timezone=True), nullable=True),
    Column("last_verified_at", DateTime(timezone=True), nullable=True),
    Column("verification_error", Text, nullable=True),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    Column("billed_to", String(36), nullable=True),
    Column("stop_billing_at", DateTime(timezone=True), nullable=True),
    Column("hourly_rate", Double, nullable=True),
    Column("compute_multiplier", Double, nullable=True),
    Column("warmup_compute_multiplier", Double, nullable=True),
    Column("bounty", Boolean, nullable=False, server_default=text("false")),
    Column("symmetric_key_enc", LargeBinary, nullable=False),  # 16 random bytes, Keyring envelope
    Column("rint_session_key_enc", LargeBinary, nullable=True),  # runtime-integrity session key, Keyring envelope
    Column("cacert", Text, nullable=True),  # pinned TLS certificate of the instance (PEM)
    Column("rint_commitment", Text, nullable=True),
    Column("rint_nonce", String(64), nullable=True),
    Column("rint_pubkey", Text, nullable=True),
    Column("extra", JSONB, nullable=False, server_default=text("'{}'::jsonb")),  # e2e_pubkey, ... (no secrets)
    UniqueConstraint("host", "port", name="uq_instances_host_port"),
)

# GPUs (nodes) of an instance; a GPU serves at most one instance.
instance_nodes = Table(
    "instance_nodes", metadata,
    Column("instance_id", String(36), ForeignKey("instances.instance_id", ondelete="CASCADE"), primary_key=True),
    Column("node_id", String(255), ForeignKey("nodes.uuid", ondelete="CASCADE"), primary_key=True, unique=True),
)

# Append-only record of every instance, kept after deletion (auditors reconcile against it; stats read it).
# Written by the instance repository in the same transaction as the instance change it mirrors.
instance_audit = Table(
    "instance_audit", metadata,
    Column("instance_id", String(36), primary_key=True),
    Column("chute_id", String(36), nullable=False, index=True),
    Column("version", String(64), nullable=False),
    Column("miner_uid", Integer, nullable=False),
    Column("miner_hotkey", String(64), nullable=False, index=True),
    Column("region", String(64), nullable=False, server_default="n/a"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("verified_at", DateTime(timezone=True), nullable=True),
    Column("activated_at", DateTime(timezone=True), nullable=True),
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    Column("deletion_reason", Text, nullable=True),
    Column("valid_termination", Boolean, nullable=True),
    Column("billed_to", String(36), nullable=True),
    Column("stop_billing_at", DateTime(timezone=True), nullable=True),
    Column("compute_multiplier", Double, nullable=True),
    Column("hourly_rate", Double, nullable=True),
    Column("bounty", Boolean, nullable=False, server_default=text("false")),
)

# The multiplier an instance earned over time: at most one open row (ended_at NULL) per instance.
instance_compute_history = Table(
    "instance_compute_history", metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("instance_id", String(36), nullable=False),
    Column("compute_multiplier", Double, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Index("ix_instance_compute_history_instance_started", "instance_id", "started_at"),
    Index("uq_instance_compute_history_open", "instance_id", unique=True, postgresql_where=text("ended_at IS NULL")),
)


# --- Miner face: events and rolling updates (seed 003; migration 0008) ------------------------------------------

# Transactional outbox: a producer inserts its event in the same transaction as the change it announces (and
# NOTIFYs `gantry_events`, delivered only on commit); the relay (domain/events/relay.py) moves committed rows to
# the Redis Stream and deletes them. `recipients` NULL means every miner; otherwise only these hotkeys.
event_outbox = Table(
    "event_outbox", metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("reason", String(64), nullable=False),
    Column("message", Text, nullable=True),
    Column("data", JSONB, nullable=False),
    Column("recipients", ARRAY(String(64)), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# A chute's version changed while instances of the old version existed: those instances are being replaced.
# In progress while any instance of the chute runs a version other than new_version.
rolling_updates = Table(
    "rolling_updates", metadata,
    Column("chute_id", String(36), ForeignKey("chutes.chute_id", ondelete="CASCADE"), primary_key=True),
    Column("old_version", String(64), nullable=False),
    Column("new_version", String(64), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
)
