"""broker_sessions: every state change is a conditional UPDATE, so two replicas (or two requests) never both win.

A writer names the statuses it expects (`from_statuses`); zero rows updated means someone else moved the
session first and the caller re-reads instead of acting. Loops claim rows with a lease (lease_owner,
lease_until) taken in the same statement that selects them (FOR UPDATE SKIP LOCKED).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Iterable

from redis.asyncio import Redis
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import redis_keys
from ..models import ACTIVE_SESSION_STATUSES, broker_sessions as t


async def insert_session(conn: AsyncConnection, values: dict[str, Any]) -> Row | None:
    """Insert a new session; None when the active (consumer, offer) or (consumer, request_id) index refuses it."""
    stmt = insert(t).values(**values).on_conflict_do_nothing().returning(t)
    return (await conn.execute(stmt)).first()


async def get(conn: AsyncConnection, session_id: str, *, for_update: bool = False) -> Row | None:
    stmt = select(t).where(t.c.id == session_id)
    if for_update:
        stmt = stmt.with_for_update()
    return (await conn.execute(stmt)).first()


async def by_request_id(conn: AsyncConnection, consumer_id: str, request_id: str) -> Row | None:
    return (await conn.execute(select(t).where(t.c.consumer_id == consumer_id, t.c.request_id == request_id))).first()


async def active_for_offer(conn: AsyncConnection, consumer_id: str, offer_id: str) -> Row | None:
    return (await conn.execute(select(t).where(
        t.c.consumer_id == consumer_id, t.c.offer_id == offer_id,
        t.c.status.in_(ACTIVE_SESSION_STATUSES)))).first()


async def list_sessions(conn: AsyncConnection, *, consumer_id: str = "", status: str = "", provider: str = "",
                        limit: int | None = None, before: tuple[datetime, str] | None = None) -> list[Row]:
    """Newest first (created_at, id descending); `before` continues after a page's last row."""
    stmt = select(t)
    if consumer_id:
        stmt = stmt.where(t.c.consumer_id == consumer_id)
    if status:
        stmt = stmt.where(t.c.status == status)
    if provider:
        stmt = stmt.where(t.c.provider == provider)
    if before is not None:
        created, sid = before
        stmt = stmt.where(or_(t.c.created_at < created, and_(t.c.created_at == created, t.c.id < sid)))
    stmt = stmt.order_by(t.c.created_at.desc(), t.c.id.desc())
    if limit:
        stmt = stmt.limit(limit)
    return list((await conn.execute(stmt)).all())


async def transition(conn: AsyncConnection, session_id: str, from_statuses: Iterable[str], now: datetime,
                     **values: Any) -> Row | None:
    """Set `values` only if the session is still in one of `from_statuses`; the updated row, or None."""
    stmt = (update(t)
            .where(t.c.id == session_id, t.c.status.in_(tuple(from_statuses)))
            .values(**values, updated_at=now, version=t.c.version + 1)
            .returning(t))
    return (await conn.execute(stmt)).first()


async def extend(conn: AsyncConnection, session_id: str, hours: timedelta, hard_max: timedelta,
                 now: datetime) -> Row | None:
    """Add `hours` to an active session's reservation if expires_at stays within created_at + hard_max."""
    new_expiry = t.c.expires_at + hours
    stmt = (update(t)
            .where(t.c.id == session_id, t.c.status.in_(ACTIVE_SESSION_STATUSES),
                   new_expiry <= t.c.created_at + hard_max)
            .values(expires_at=new_expiry, reservation_hours=t.c.reservation_hours + int(hours.total_seconds() // 3600),
                    updated_at=now, version=t.c.version + 1)
            .returning(t))
    return (await conn.execute(stmt)).first()


async def claim(conn: AsyncConnection, session_id: str, owner: str, now: datetime, until: datetime,
                from_statuses: Iterable[str]) -> Row | None:
    """Take the lease of one session if nobody holds a live one, or `owner` (a lease token) already does."""
    stmt = (update(t)
            .where(t.c.id == session_id, t.c.status.in_(tuple(from_statuses)),
                   or_(t.c.lease_until.is_(None), t.c.lease_until < now, t.c.lease_owner == owner))
            .values(lease_owner=owner, lease_until=until)
            .returning(t))
    return (await conn.execute(stmt)).first()


async def release(conn: AsyncConnection, session_id: str, owner: str, **values: Any) -> None:
    await conn.execute(update(t).where(t.c.id == session_id, t.c.lease_owner == owner)
                       .values(lease_owner=None, lease_until=None, **values))


async def due(conn: AsyncConnection, where, now: datetime, limit: int = 100) -> list[str]:
    """Ids matching `where` whose lease is free, oldest first (the loops' work list; claim() decides)."""
    stmt = (select(t.c.id)
            .where(where, or_(t.c.lease_until.is_(None), t.c.lease_until < now))
            .order_by(t.c.created_at).limit(limit))
    return [r.id for r in (await conn.execute(stmt)).all()]


async def with_instances(conn: AsyncConnection, provider: str) -> list[Row]:
    """Sessions that own a provider instance (live, stopping, failed-but-not-destroyed, or preserved)."""
    stmt = select(t).where(t.c.provider == provider, t.c.provider_instance_id.is_not(None))
    return list((await conn.execute(stmt)).all())


async def count_by_provider_status(conn: AsyncConnection) -> list[Row]:
    stmt = (select(t.c.provider, t.c.status, func.count().label("n"))
            .where(t.c.status.in_((*ACTIVE_SESSION_STATUSES, "stopping")))
            .group_by(t.c.provider, t.c.status))
    return list((await conn.execute(stmt)).all())


async def publish_change(redis: Redis, session_id: str, version: int) -> None:
    """Wake WatchSession streams (on any replica); they re-read the row, so a lost message only delays."""
    try:
        await redis.publish(redis_keys.session_changes(session_id), str(version))
    except Exception:  # Redis down must not fail a state change that is already committed
        pass
