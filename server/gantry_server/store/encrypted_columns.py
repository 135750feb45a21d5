"""Every column that holds a Keyring envelope (domain/secrets_at_rest.py), with how to compute its context.

The one list key rotation (domain/key_rotation.py) walks. A new encrypted column is added here and nowhere else
for rotation to cover it; tests/integration/test_rotate_keys.py fails when a LargeBinary column of the schema is
neither listed here nor declared not secret in PLAIN_BINARY_COLUMNS. The context functions are the very ones the
writers use (imported, not copied), so a blob's context cannot drift between its writer and the rotation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sqlalchemy import Column, Table
from sqlalchemy.engine import RowMapping

from ..broker.sessions import _key_context as _session_key_context
from ..domain.attestation import passphrases
from ..domain.launch import secrets as instance_secrets
from . import service_keys
from .models import broker_sessions, instances, service_keys as service_keys_table, vm_luks_passphrases


@dataclass(frozen=True)
class EncryptedColumn:
    table: Table
    column_name: str
    context: Callable[[RowMapping], bytes]  # from the row's primary key columns

    @property
    def column(self) -> Column:
        return self.table.c[self.column_name]

    @property
    def name(self) -> str:
        return f"{self.table.name}.{self.column_name}"

    @property
    def key_columns(self) -> list[Column]:
        return list(self.table.primary_key.columns)


ENCRYPTED_COLUMNS: tuple[EncryptedColumn, ...] = (
    EncryptedColumn(broker_sessions, "ssh_private_key_enc", lambda r: _session_key_context(r["id"])),
    EncryptedColumn(vm_luks_passphrases, "ciphertext",
                    lambda r: passphrases.context(r["miner_hotkey"], r["vm_name"], r["volume"])),
    EncryptedColumn(service_keys_table, "key_enc", lambda r: service_keys.context(r["name"])),
    EncryptedColumn(instances, "symmetric_key_enc", lambda r: instance_secrets.symmetric_key_context(r["instance_id"])),
    EncryptedColumn(instances, "rint_session_key_enc",
                    lambda r: instance_secrets.rint_session_key_context(r["instance_id"])),
)

# LargeBinary columns that hold no secret (none yet); listed so the completeness test can tell them apart.
PLAIN_BINARY_COLUMNS: frozenset[str] = frozenset()
