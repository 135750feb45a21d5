"""servers and TDX attestation: servers, nodes (GPUs), attestation records, LUKS passphrases, measurement
policies, cached PCCS collateral.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def _attempt_columns() -> list[sa.Column]:
    return [
        sa.Column("quote_data", sa.Text(), nullable=True),
        sa.Column("verified", sa.Boolean(), nullable=False),
        sa.Column("error_reason", sa.String(64), nullable=True),
        sa.Column("verification_error", sa.Text(), nullable=True),
        sa.Column("tcb_status", sa.String(64), nullable=True),
        sa.Column("measurement_version", sa.String(64), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("verified_at", TZ, nullable=True),
    ]


def upgrade() -> None:
    op.create_table(
        "servers",
        sa.Column("server_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("ip", sa.String(64), nullable=False),
        sa.Column("miner_hotkey", sa.String(64), nullable=False),
        sa.Column("netuid", sa.Integer(), nullable=False),
        sa.Column("is_tee", sa.Boolean(), nullable=False, server_default=sa.text("true")),
        sa.Column("compute_type", sa.String(8), nullable=False, server_default="gpu"),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("maintenance_pending_window_id", sa.String(64), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("server_id", name=op.f("pk_servers")),
        sa.UniqueConstraint("ip", name=op.f("uq_servers_ip")),
        sa.UniqueConstraint("miner_hotkey", "name", name="uq_servers_miner_hotkey_name"),
    )
    op.create_index(op.f("ix_servers_miner_hotkey"), "servers", ["miner_hotkey"])

    op.create_table(
        "nodes",
        sa.Column("uuid", sa.String(255), nullable=False),
        sa.Column("miner_hotkey", sa.String(64), nullable=False),
        sa.Column("server_id", sa.String(255), nullable=False),
        sa.Column("gpu_identifier", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("memory", sa.BigInteger(), nullable=False),
        sa.Column("major", sa.Integer(), nullable=True),
        sa.Column("minor", sa.Integer(), nullable=True),
        sa.Column("processors", sa.Integer(), nullable=False),
        sa.Column("sxm", sa.Boolean(), nullable=True),
        sa.Column("clock_rate", sa.Double(), nullable=False),
        sa.Column("max_threads_per_processor", sa.Integer(), nullable=False),
        sa.Column("concurrent_kernels", sa.Boolean(), nullable=True),
        sa.Column("ecc", sa.Boolean(), nullable=True),
        sa.Column("device_index", sa.Integer(), nullable=False),
        sa.Column("verification_host", sa.String(255), nullable=False),
        sa.Column("verification_port", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("verified_at", TZ, nullable=True),
        sa.Column("verification_error", sa.Text(), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_nodes")),
        sa.ForeignKeyConstraint(["server_id"], ["servers.server_id"], ondelete="CASCADE",
                                name=op.f("fk_nodes_server_id_servers")),
    )
    op.create_index(op.f("ix_nodes_miner_hotkey"), "nodes", ["miner_hotkey"])
    op.create_index(op.f("ix_nodes_server_id"), "nodes", ["server_id"])

    op.create_table(
        "server_attestations",
        sa.Column("attestation_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("server_id", sa.String(255), nullable=False),
        sa.Column("miner_hotkey", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("server_ip", sa.String(64), nullable=False),
        *_attempt_columns(),
        sa.PrimaryKeyConstraint("attestation_id", name=op.f("pk_server_attestations")),
    )
    op.create_index("ix_server_attestations_server_created", "server_attestations", ["server_id", "created_at"])

    op.create_table(
        "boot_attestations",
        sa.Column("attestation_id", sa.String(36), nullable=False),
        sa.Column("server_ip", sa.String(64), nullable=False),
        sa.Column("miner_hotkey", sa.String(64), nullable=True),
        sa.Column("vm_name", sa.String(255), nullable=True),
        *_attempt_columns(),
        sa.PrimaryKeyConstraint("attestation_id", name=op.f("pk_boot_attestations")),
    )
    op.create_index(op.f("ix_boot_attestations_server_ip"), "boot_attestations", ["server_ip"])

    op.create_table(
        "vm_cache_configs",
        sa.Column("miner_hotkey", sa.String(64), nullable=False),
        sa.Column("vm_name", sa.String(255), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=True),
        sa.Column("last_boot_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("miner_hotkey", "vm_name", name=op.f("pk_vm_cache_configs")),
    )
    op.create_table(
        "vm_luks_passphrases",
        sa.Column("miner_hotkey", sa.String(64), nullable=False),
        sa.Column("vm_name", sa.String(255), nullable=False),
        sa.Column("volume", sa.String(64), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("miner_hotkey", "vm_name", "volume", name=op.f("pk_vm_luks_passphrases")),
        sa.ForeignKeyConstraint(["miner_hotkey", "vm_name"], ["vm_cache_configs.miner_hotkey", "vm_cache_configs.vm_name"],
                                ondelete="CASCADE", name="fk_vm_luks_passphrases_vm_cache_configs"),
    )

    op.create_table(
        "measurement_policies",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("mrtd", sa.String(96), nullable=False),
        sa.Column("boot_rtmrs", sa.ARRAY(sa.String(96)), nullable=False),
        sa.Column("runtime_rtmrs", sa.ARRAY(sa.String(96)), nullable=False),
        sa.Column("expected_gpus", sa.ARRAY(sa.String(64)), nullable=False, server_default="{}"),
        sa.Column("gpu_count", sa.Integer(), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_measurement_policies")),
    )
    op.create_table(
        "tdx_collateral",
        sa.Column("fmspc", sa.String(12), nullable=False),
        sa.Column("ca", sa.String(16), nullable=False),
        sa.Column("collateral", sa.Text(), nullable=False),
        sa.Column("fetched_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("fmspc", "ca", name=op.f("pk_tdx_collateral")),
    )


def downgrade() -> None:
    op.drop_table("tdx_collateral")
    op.drop_table("measurement_policies")
    op.drop_table("vm_luks_passphrases")
    op.drop_table("vm_cache_configs")
    op.drop_index(op.f("ix_boot_attestations_server_ip"), table_name="boot_attestations")
    op.drop_table("boot_attestations")
    op.drop_index("ix_server_attestations_server_created", table_name="server_attestations")
    op.drop_table("server_attestations")
    op.drop_index(op.f("ix_nodes_server_id"), table_name="nodes")
    op.drop_index(op.f("ix_nodes_miner_hotkey"), table_name="nodes")
    op.drop_table("nodes")
    op.drop_index(op.f("ix_servers_miner_hotkey"), table_name="servers")
    op.drop_table("servers")
