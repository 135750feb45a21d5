"""broker: sessions, costs (per session and clock hour), offer failures, orphan candidates.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "broker_sessions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("consumer_id", sa.String(255), nullable=False),
        sa.Column("request_id", sa.String(255), nullable=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("offer_id", sa.String(255), nullable=False),
        sa.Column("machine_id", sa.String(255), nullable=True),
        sa.Column("provider_instance_id", sa.String(255), nullable=True),
        sa.Column("gpu_type", sa.String(128), nullable=False),
        sa.Column("gpu_count", sa.Integer, nullable=False, server_default="1"),
        sa.Column("vram_gb", sa.Integer, nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.String(2048), nullable=True),
        sa.Column("stop_reason", sa.String(64), nullable=True),
        sa.Column("ssh_host", sa.String(255), nullable=True),
        sa.Column("ssh_port", sa.Integer, nullable=True),
        sa.Column("ssh_user", sa.String(64), nullable=True),
        sa.Column("ssh_key_type", sa.String(16), nullable=False, server_default="ed25519"),
        sa.Column("ssh_public_key", sa.String(4096), nullable=False),
        sa.Column("ssh_private_key_enc", sa.LargeBinary, nullable=True),
        sa.Column("workload_type", sa.String(32), nullable=False),
        sa.Column("reservation_hours", sa.Integer, nullable=False),
        sa.Column("idle_threshold_minutes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("storage_policy", sa.String(16), nullable=False, server_default="destroy"),
        sa.Column("launch_mode", sa.String(16), nullable=False, server_default="ssh"),
        sa.Column("docker_image", sa.String(512), nullable=True),
        sa.Column("model_id", sa.String(255), nullable=True),
        sa.Column("quantization", sa.String(32), nullable=True),
        sa.Column("exposed_ports", sa.ARRAY(sa.Integer), nullable=False, server_default="{}"),
        sa.Column("api_port", sa.Integer, nullable=True),
        sa.Column("api_endpoint", sa.String(512), nullable=True),
        sa.Column("template_hash_id", sa.String(64), nullable=True),
        sa.Column("template_name", sa.String(255), nullable=True),
        sa.Column("disk_gb", sa.Integer, nullable=True),
        sa.Column("on_start_cmd", sa.String(8192), nullable=True),
        sa.Column("price_per_hour", sa.Double, nullable=False),
        sa.Column("auto_retry", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("max_retries", sa.Integer, nullable=False, server_default="0"),
        sa.Column("retry_scope", sa.String(16), nullable=True),
        sa.Column("retry_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("retry_parent_id", sa.String(36), nullable=True),
        sa.Column("retry_child_id", sa.String(36), nullable=True),
        sa.Column("failed_offers", sa.String(4096), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("provision_deadline", TZ, nullable=False),
        sa.Column("billing_started_at", TZ, nullable=True),
        sa.Column("running_at", TZ, nullable=True),
        sa.Column("stopped_at", TZ, nullable=True),
        sa.Column("last_active_at", TZ, nullable=True),
        sa.Column("preserved_until", TZ, nullable=True),
        sa.Column("ghost_misses", sa.Integer, nullable=False, server_default="0"),
        sa.Column("destroy_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("verify_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("auth_failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_check_at", TZ, nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", TZ, nullable=True),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="1"),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broker_sessions")),
    )
    op.create_index(op.f("ix_broker_sessions_consumer_id"), "broker_sessions", ["consumer_id"])
    op.create_index(op.f("ix_broker_sessions_provider"), "broker_sessions", ["provider"])
    op.create_index(op.f("ix_broker_sessions_status"), "broker_sessions", ["status"])
    op.create_index("uq_broker_sessions_active_offer", "broker_sessions", ["consumer_id", "offer_id"], unique=True,
                    postgresql_where=sa.text("status IN ('pending', 'provisioning', 'running')"))
    op.create_index("uq_broker_sessions_request_id", "broker_sessions", ["consumer_id", "request_id"], unique=True,
                    postgresql_where=sa.text("request_id IS NOT NULL"))

    op.create_table(
        "broker_costs",
        sa.Column("session_id", sa.String(36), nullable=False),
        sa.Column("hour", TZ, nullable=False),
        sa.Column("consumer_id", sa.String(255), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("gpu_type", sa.String(128), nullable=False),
        sa.Column("seconds", sa.Double, nullable=False),
        sa.Column("amount", sa.Numeric(14, 6), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False, server_default="USD"),
        sa.Column("recorded_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("session_id", "hour", name=op.f("pk_broker_costs")),
        sa.ForeignKeyConstraint(["session_id"], ["broker_sessions.id"], ondelete="CASCADE",
                                name=op.f("fk_broker_costs_session_id_broker_sessions")),
    )
    op.create_index(op.f("ix_broker_costs_consumer_id"), "broker_costs", ["consumer_id"])
    op.create_index("ix_broker_costs_hour", "broker_costs", ["hour"])

    op.create_table(
        "broker_offer_failures",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("offer_id", sa.String(255), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("gpu_type", sa.String(128), nullable=False),
        sa.Column("machine_id", sa.String(255), nullable=True),
        sa.Column("failure_type", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(2048), nullable=False, server_default=""),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broker_offer_failures")),
    )
    op.create_index(op.f("ix_broker_offer_failures_offer_id"), "broker_offer_failures", ["offer_id"])
    op.create_index(op.f("ix_broker_offer_failures_created_at"), "broker_offer_failures", ["created_at"])

    op.create_table(
        "broker_orphan_candidates",
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("instance_id", sa.String(255), nullable=False),
        sa.Column("label", sa.String(255), nullable=True),
        sa.Column("misses", sa.Integer, nullable=False, server_default="1"),
        sa.Column("first_seen", TZ, nullable=False),
        sa.Column("last_seen", TZ, nullable=False),
        sa.PrimaryKeyConstraint("provider", "instance_id", name=op.f("pk_broker_orphan_candidates")),
    )
    op.create_table(
        "broker_meta",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.String(1024), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_broker_meta")),
    )


def downgrade() -> None:
    op.drop_table("broker_meta")
    op.drop_table("broker_orphan_candidates")
    op.drop_table("broker_offer_failures")
    op.drop_table("broker_costs")
    op.drop_table("broker_sessions")
