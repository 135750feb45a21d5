"""broker_offer_failures: one row per recorded offer failure, kept for the decay window (1 h), shared by replicas."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from ..models import broker_offer_failures as t

_REASON_MAX = 2048


class OfferFailureRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def insert(self, *, offer_id: str, provider: str, gpu_type: str, machine_id: str | None,
                     failure_type: str, reason: str, now: datetime) -> None:
        await self.conn.execute(t.insert().values(
            offer_id=offer_id, provider=provider, gpu_type=gpu_type, machine_id=machine_id,
            failure_type=failure_type, reason=(reason or "")[:_REASON_MAX], created_at=now))

    async def since(self, since: datetime) -> Sequence[RowMapping]:
        """Failures newer than `since`, oldest first."""
        result = await self.conn.execute(
            select(t.c.offer_id, t.c.provider, t.c.gpu_type, t.c.failure_type, t.c.reason, t.c.created_at)
            .where(t.c.created_at > since).order_by(t.c.created_at, t.c.id))
        return result.mappings().all()

    async def prune(self, before: datetime) -> int:
        """Delete failures at or before `before`; returns how many."""
        result = await self.conn.execute(delete(t).where(t.c.created_at <= before))
        return result.rowcount or 0
