"""measurement_policies (admin-loaded measurement sets) and tdx_collateral (PCCS collateral cache)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ...domain.attestation.measurements import MeasurementEntry
from ..models import measurement_policies as policies
from ..models import tdx_collateral


class MeasurementRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def put(self, entry: MeasurementEntry, now: datetime) -> bool:
        """Create or replace by name; True when created."""
        values = dict(name=entry.name, version=entry.version, mrtd=entry.mrtd, boot_rtmrs=list(entry.boot_rtmrs),
                      runtime_rtmrs=list(entry.runtime_rtmrs), expected_gpus=list(entry.expected_gpus),
                      gpu_count=entry.gpu_count, created_at=now, updated_at=now)
        stmt = insert(policies).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[policies.c.name],
            set_={k: stmt.excluded[k] for k in values if k not in ("name", "created_at")},
        ).returning(literal_column("(xmax = 0)"))  # PostgreSQL: xmax is 0 on an inserted row
        return bool(await self.conn.scalar(stmt))

    async def all(self) -> list[MeasurementEntry]:
        rows = await self.conn.execute(select(policies).order_by(policies.c.name))
        return [MeasurementEntry(name=r.name, version=r.version, mrtd=r.mrtd, boot_rtmrs=tuple(r.boot_rtmrs),
                                 runtime_rtmrs=tuple(r.runtime_rtmrs), expected_gpus=tuple(r.expected_gpus),
                                 gpu_count=r.gpu_count) for r in rows]


class PgCollateralStore:
    """domain.attestation.collateral.CollateralStore on PostgreSQL: shared by replicas, survives restarts."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def load(self, fmspc: str, ca: str) -> tuple[str, datetime] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(tdx_collateral.c.collateral, tdx_collateral.c.expires_at).where(
                tdx_collateral.c.fmspc == fmspc, tdx_collateral.c.ca == ca))).first()
        return None if row is None else (row.collateral, row.expires_at)

    async def save(self, fmspc: str, ca: str, text: str, fetched_at: datetime, expires_at: datetime) -> None:
        stmt = insert(tdx_collateral).values(fmspc=fmspc, ca=ca, collateral=text, fetched_at=fetched_at,
                                             expires_at=expires_at)
        async with self.engine.begin() as conn:
            await conn.execute(stmt.on_conflict_do_update(
                index_elements=[tdx_collateral.c.fmspc, tdx_collateral.c.ca],
                set_={k: stmt.excluded[k] for k in ("collateral", "fetched_at", "expires_at")}))
