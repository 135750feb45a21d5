"""Key rotation: move every secret at rest (store/encrypted_columns.py) under the active KEK.

Procedure (docs/auth.md): every replica runs with the new key as GANTRY_KEK and the old one in
GANTRY_KEK_PREVIOUS; then `gantry admin rotate-keys` (AdminService.RotateKeys) runs this; when it reports 0
failed, the old key can leave GANTRY_KEK_PREVIOUS.

Each column is walked in primary-key order (keyset pagination, so rows that cannot be decrypted are passed, not
retried forever), one transaction per batch. A row already under the active key id is left alone, so a second
run rewraps 0 and an interrupted run resumes where it matters. The write is `UPDATE ... WHERE pk = :pk AND
column = :old_blob`: a row a server rewrote meanwhile (under its own active key) is not overwritten with the
older secret, only counted. Only the 32-byte data key is re-encrypted (Keyring.rewrap); plaintext stays in this
process's memory and is never logged, and errors name rows by table and key id only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from ..store.encrypted_columns import ENCRYPTED_COLUMNS, EncryptedColumn
from .secrets_at_rest import Keyring, SecretsError

log = logging.getLogger(__name__)
DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 10_000


@dataclass
class ColumnReport:
    column: str
    scanned: int = 0
    rewrapped: int = 0
    current: int = 0
    changed_concurrently: int = 0
    failed: int = 0


async def rewrap_rows(conn, spec: EncryptedColumn, keyring: Keyring, rows, report: ColumnReport) -> None:
    """Rewrap `rows` (mappings with the primary key and the blob as read) in the caller's transaction."""
    keys = spec.key_columns
    for row in rows:
        report.scanned += 1
        old = bytes(row[spec.column_name])
        try:
            if keyring.key_id_of(old) == keyring.active_id:
                report.current += 1
                continue
            new = keyring.rewrap(old, context=spec.context(row))
        except SecretsError as exc:
            report.failed += 1
            log.warning("key rotation: a row of %s cannot be rewrapped: %s", spec.name, exc)
            continue
        result = await conn.execute(
            spec.table.update()
            .where(*(k == row[k.name] for k in keys), spec.column == old)
            .values({spec.column_name: new}))
        if result.rowcount == 1:
            report.rewrapped += 1
        else:
            report.changed_concurrently += 1


async def rotate_column(engine: AsyncEngine, spec: EncryptedColumn, keyring: Keyring, *,
                        batch_size: int = DEFAULT_BATCH_SIZE) -> ColumnReport:
    report = ColumnReport(spec.name)
    keys = spec.key_columns
    after: tuple | None = None
    while True:
        stmt = (select(*keys, spec.column).where(spec.column.is_not(None))
                .order_by(*keys).limit(batch_size))
        if after is not None:
            stmt = stmt.where(tuple_(*keys) > tuple_(*after))
        async with engine.begin() as conn:  # one transaction per batch
            rows = (await conn.execute(stmt)).mappings().all()
            await rewrap_rows(conn, spec, keyring, rows, report)
        if len(rows) < batch_size:
            return report
        after = tuple(rows[-1][k.name] for k in keys)


async def rotate_all(engine: AsyncEngine, keyring: Keyring, *, batch_size: int = DEFAULT_BATCH_SIZE,
                     columns: tuple[EncryptedColumn, ...] = ENCRYPTED_COLUMNS) -> list[ColumnReport]:
    """Rewrap every encrypted column; one report per column (counts only, never a secret)."""
    reports = []
    for spec in columns:
        report = await rotate_column(engine, spec, keyring, batch_size=batch_size)
        log.info("key rotation: %s scanned=%d rewrapped=%d current=%d changed_concurrently=%d failed=%d "
                 "active_key_id=%s", report.column, report.scanned, report.rewrapped, report.current,
                 report.changed_concurrently, report.failed, keyring.active_id)
        reports.append(report)
    return reports
