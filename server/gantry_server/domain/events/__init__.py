"""Events for miner agents: the catalogue (what is announced, to whom), the outbox relay to a Redis Stream, and
the per-process fan-out that WatchEvents and the Socket.IO adapter read.

    from gantry_server.domain import events
    async with unit_of_work(engine) as conn:
        ...change...
        await events.publish(conn, events.job_created(...), now=clock.now())
"""
from __future__ import annotations

from datetime import datetime

from ...store.repositories.events import EventOutboxRepository
from .catalogue import (CATALOGUE, REASONS, Event, bounty_change, chute_created, chute_deleted, chute_updated,
                        image_created, image_deleted, image_updated, instance_activated, instance_created,
                        instance_deleted, instance_verified, job_created, job_deleted, rolling_update)

__all__ = ["CATALOGUE", "REASONS", "Event", "publish", "bounty_change", "chute_created", "chute_deleted",
           "chute_updated", "image_created", "image_deleted", "image_updated", "instance_activated",
           "instance_created", "instance_deleted", "instance_verified", "job_created", "job_deleted",
           "rolling_update"]


async def publish(conn, event: Event, *, now: datetime) -> None:
    """Announce `event` with the transaction `conn` is in: it reaches miners if and only if that commits."""
    await EventOutboxRepository(conn).insert(event, now=now)
