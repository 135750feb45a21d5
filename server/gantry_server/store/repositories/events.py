"""The event outbox: producers insert into it inside their own transaction; the relay drains it to Redis.

    async with unit_of_work(engine) as conn:
        ...the change...
        await EventOutboxRepository(conn).insert(event, now=now)   # committed (and NOTIFYed) with the change

`pg_notify` inside the transaction is delivered only when it commits, so a relay LISTENing on `gantry_events`
wakes exactly for committed events and never for rolled-back ones.

The relay (domain/events/relay.py) drains in one transaction, one relayer at a time so the stream keeps the
outbox order:

    async with unit_of_work(engine) as conn:
        outbox = EventOutboxRepository(conn)
        await outbox.lock_relay()
        rows = await outbox.oldest(500)
        ...append rows to the stream...
        await outbox.delete([r.id for r in rows])
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ..models import event_outbox

NOTIFY_CHANNEL = "gantry_events"
# pg_advisory_xact_lock key of the relay ("gantry_events" as a number): one relayer works at a time.
RELAY_LOCK_KEY = int.from_bytes(b"gantry_e", "big") & 0x7FFF_FFFF_FFFF_FFFF


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

    async def lock_relay(self) -> None:
        """Take the relay's lock for this transaction, waiting while another relayer holds it (it then finds
        the rows that relayer took gone, and takes those committed meanwhile)."""
        await self.conn.execute(select(func.pg_advisory_xact_lock(RELAY_LOCK_KEY)))

    async def oldest(self, limit: int):
        """The first `limit` queued events in outbox order, locked until the transaction ends."""
        return (await self.conn.execute(
            select(event_outbox).order_by(event_outbox.c.id).limit(limit).with_for_update()
        )).all()

    async def delete(self, ids: list[int]) -> None:
        if ids:
            await self.conn.execute(delete(event_outbox).where(event_outbox.c.id.in_(ids)))
