"""The event outbox: producers insert into it inside their own transaction; the relay drains it to Redis.

    async with unit_of_work(engine) as conn:
        ...the change...
        await EventOutboxRepository(conn).insert(event, now=now)   # committed (and NOTIFYed) with the change

`pg_notify` inside the transaction is delivered only when it commits, so a relay LISTENing on `gantry_events`
wakes exactly for committed events and never for rolled-back ones.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ..models import event_outbox

NOTIFY_CHANNEL = "gantry_events"


class EventOutboxRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def insert(self, event, *, now: datetime) -> int:
        """Queue `event` (domain.events.catalogue.Event) with the caller's transaction; returns the outbox id."""
        recipients = list(event.recipients) if event.recipients is not None else None
        row_id = (await self.conn.execute(
            insert(event_outbox).values(reason=event.reason, message=event.message, data=event.data,
                                        recipients=recipients, created_at=now).returning(event_outbox.c.id)
        )).scalar_one()
        await self.conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, "")))
        return row_id
