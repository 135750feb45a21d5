"""Chutes, images, jobs, launch configs, instances with their GPUs, the instance audit and compute history.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def _jsonb(name: str, default: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, JSONB, nullable=nullable, server_default=sa.text(f"'{default}'::jsonb"))


def _false(name: str) -> sa.Column:
    return sa.Column(name, sa.Boolean(), nullable=False, server_default=sa.text("false"))


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("image_id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("tag", sa.String(255), nullable=False),
        sa.Column("patch_version", sa.String(64), nullable=True),
        sa.Column("compute_type", sa.String(8), nullable=False, server_default="gpu"),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("image_id", name=op.f("pk_images")),
        sa.ForeignKeyConstraint(["user_id"], ["users.user_id"], ondelete="RESTRICT", name=op.f("fk_images_user_id_users")),
    )
    op.create_index(op.f("ix_images_user_id"), "images", ["user_id"])

    op.create_table(
        "chutes",
        sa.Column("chute_id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("image_id", sa.String(36), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("chutes_version", sa.String(32), nullable=True),
        _jsonb("node_selector", "{}"),
        _false("public"),
        _false("tee"),
        _false("disabled"),
        sa.Column("boost", sa.Double(), nullable=True),
        _false("allow_external_egress"),
        sa.Column("lock_modules", sa.Boolean(), nullable=True),
        sa.Column("standard_template", sa.String(64), nullable=True),
        sa.Column("code", sa.Text(), nullable=False, server_default=""),
        sa.Column("filename", sa.String(255), nullable=False, server_default=""),
        sa.Column("shutdown_after_seconds", sa.Integer(), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=True),
        _false("encrypted_fs"),
        _false("preemptible"),
        sa.Column("max_instances", sa.Integer(), nullable=True),
        _jsonb("jobs", "[]"),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("chute_id", name=op.f("pk_chutes")),
        sa.ForeignKeyConstraint(["user_id"], ["users.user_id"], ondelete="RESTRICT", name=op.f("fk_chutes_user_id_users")),
        sa.ForeignKeyConstraint(["image_id"], ["images.image_id"], ondelete="RESTRICT",
                                name=op.f("fk_chutes_image_id_images")),
    )
    op.create_index(op.f("ix_chutes_user_id"), "chutes", ["user_id"])
    op.create_index(op.f("ix_chutes_image_id"), "chutes", ["image_id"])

    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("chute_id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("method", sa.String(255), nullable=False),
        _jsonb("job_args", "{}"),
        _jsonb("ports", "[]"),
        sa.Column("compute_multiplier", sa.Double(), nullable=True),
        sa.Column("status", sa.String(32), nullable=False, server_default="pending"),
        sa.Column("miner_uid", sa.Integer(), nullable=True),
        sa.Column("miner_hotkey", sa.String(64), nullable=True),
        sa.Column("miner_coldkey", sa.String(64), nullable=True),
        sa.Column("instance_id", sa.String(36), nullable=True),
        sa.Column("port_mappings", JSONB, nullable=True),
        _jsonb("miner_history", "[]"),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("started_at", TZ, nullable=True),
        sa.Column("finished_at", TZ, nullable=True),
        sa.Column("error_detail", sa.Text(), nullable=True),
        _false("miner_terminated"),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_jobs")),
        sa.ForeignKeyConstraint(["chute_id"], ["chutes.chute_id"], ondelete="CASCADE",
                                name=op.f("fk_jobs_chute_id_chutes")),
        sa.ForeignKeyConstraint(["user_id"], ["users.user_id"], ondelete="RESTRICT", name=op.f("fk_jobs_user_id_users")),
    )
    op.create_index(op.f("ix_jobs_chute_id"), "jobs", ["chute_id"])

    op.create_table(
        "launch_configs",
        sa.Column("config_id", sa.String(36), nullable=False),
        sa.Column("chute_id", sa.String(36), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("env_key", sa.String(32), nullable=False),
        sa.Column("env_type", sa.String(8), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("miner_uid", sa.Integer(), nullable=False),
        sa.Column("miner_hotkey", sa.String(64), nullable=False),
        sa.Column("miner_coldkey", sa.String(64), nullable=False),
        sa.Column("server_id", sa.String(255), nullable=True),
        sa.Column("nonce", sa.String(32), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("retrieved_at", TZ, nullable=True),
        sa.Column("verified_at", TZ, nullable=True),
        sa.Column("failed_at", TZ, nullable=True),
        sa.Column("completed_at", TZ, nullable=True),
        sa.Column("verification_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("config_id", name=op.f("pk_launch_configs")),
        sa.ForeignKeyConstraint(["chute_id"], ["chutes.chute_id"], ondelete="CASCADE",
                                name=op.f("fk_launch_configs_chute_id_chutes")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"], ondelete="SET NULL", name=op.f("fk_launch_configs_job_id_jobs")),
    )
    op.create_index(op.f("ix_launch_configs_chute_id"), "launch_configs", ["chute_id"])
    op.create_index(op.f("ix_launch_configs_miner_hotkey"), "launch_configs", ["miner_hotkey"])
    op.create_index("uq_launch_configs_live_job", "launch_configs", ["job_id"], unique=True,
                    postgresql_where=sa.text("job_id IS NOT NULL AND failed_at IS NULL AND completed_at IS NULL"))

    op.create_table(
        "instances",
        sa.Column("instance_id", sa.String(36), nullable=False),
        sa.Column("chute_id", sa.String(36), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("chutes_version", sa.String(32), nullable=True),
        sa.Column("config_id", sa.String(36), nullable=True),
        sa.Column("deployment_id", sa.String(255), nullable=True),
        sa.Column("server_id", sa.String(255), nullable=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        _jsonb("port_mappings", "[]"),
        sa.Column("miner_uid", sa.Integer(), nullable=False),
        sa.Column("miner_hotkey", sa.String(64), nullable=False),
        sa.Column("miner_coldkey", sa.String(64), nullable=False),
        sa.Column("region", sa.String(64), nullable=False, server_default="n/a"),
        _false("active"),
        _false("verified"),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("activated_at", TZ, nullable=True),
        sa.Column("last_verified_at", TZ, nullable=True),
        sa.Column("verification_error", sa.Text(), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("billed_to", sa.String(36), nullable=True),
        sa.Column("stop_billing_at", TZ, nullable=True),
        sa.Column("hourly_rate", sa.Double(), nullable=True),
        sa.Column("compute_multiplier", sa.Double(), nullable=True),
        sa.Column("warmup_compute_multiplier", sa.Double(), nullable=True),
        _false("bounty"),
        sa.Column("symmetric_key_enc", sa.LargeBinary(), nullable=False),
        sa.Column("rint_session_key_enc", sa.LargeBinary(), nullable=True),
        sa.Column("cacert", sa.Text(), nullable=True),
        sa.Column("rint_commitment", sa.Text(), nullable=True),
        sa.Column("rint_nonce", sa.String(64), nullable=True),
        sa.Column("rint_pubkey", sa.Text(), nullable=True),
        _jsonb("extra", "{}"),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_instances")),
        sa.ForeignKeyConstraint(["chute_id"], ["chutes.chute_id"], ondelete="CASCADE",
                                name=op.f("fk_instances_chute_id_chutes")),
        sa.ForeignKeyConstraint(["config_id"], ["launch_configs.config_id"], ondelete="SET NULL",
                                name=op.f("fk_instances_config_id_launch_configs")),
        sa.UniqueConstraint("config_id", name=op.f("uq_instances_config_id")),
        sa.UniqueConstraint("host", "port", name="uq_instances_host_port"),
    )
    op.create_index(op.f("ix_instances_chute_id"), "instances", ["chute_id"])
    op.create_index(op.f("ix_instances_miner_hotkey"), "instances", ["miner_hotkey"])

    op.create_table(
        "instance_nodes",
        sa.Column("instance_id", sa.String(36), nullable=False),
        sa.Column("node_id", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("instance_id", "node_id", name=op.f("pk_instance_nodes")),
        sa.UniqueConstraint("node_id", name=op.f("uq_instance_nodes_node_id")),
        sa.ForeignKeyConstraint(["instance_id"], ["instances.instance_id"], ondelete="CASCADE",
                                name=op.f("fk_instance_nodes_instance_id_instances")),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.uuid"], ondelete="CASCADE", name=op.f("fk_instance_nodes_node_id_nodes")),
    )

    op.create_table(
        "instance_audit",
        sa.Column("instance_id", sa.String(36), nullable=False),
        sa.Column("chute_id", sa.String(36), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("miner_uid", sa.Integer(), nullable=False),
        sa.Column("miner_hotkey", sa.String(64), nullable=False),
        sa.Column("region", sa.String(64), nullable=False, server_default="n/a"),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("verified_at", TZ, nullable=True),
        sa.Column("activated_at", TZ, nullable=True),
        sa.Column("deleted_at", TZ, nullable=True),
        sa.Column("deletion_reason", sa.Text(), nullable=True),
        sa.Column("valid_termination", sa.Boolean(), nullable=True),
        sa.Column("billed_to", sa.String(36), nullable=True),
        sa.Column("stop_billing_at", TZ, nullable=True),
        sa.Column("compute_multiplier", sa.Double(), nullable=True),
        sa.Column("hourly_rate", sa.Double(), nullable=True),
        _false("bounty"),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_instance_audit")),
    )
    op.create_index(op.f("ix_instance_audit_chute_id"), "instance_audit", ["chute_id"])
    op.create_index(op.f("ix_instance_audit_miner_hotkey"), "instance_audit", ["miner_hotkey"])

    op.create_table(
        "instance_compute_history",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("instance_id", sa.String(36), nullable=False),
        sa.Column("compute_multiplier", sa.Double(), nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("ended_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance_compute_history")),
    )
    op.create_index("ix_instance_compute_history_instance_started", "instance_compute_history",
                    ["instance_id", "started_at"])
    op.create_index("uq_instance_compute_history_open", "instance_compute_history", ["instance_id"], unique=True,
                    postgresql_where=sa.text("ended_at IS NULL"))


def downgrade() -> None:
    for table in ("instance_compute_history", "instance_audit", "instance_nodes", "instances", "launch_configs",
                  "jobs", "chutes", "images"):
        op.drop_table(table)
