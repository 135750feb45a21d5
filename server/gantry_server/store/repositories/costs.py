"""broker_costs: one row per (session, clock hour), written once at termination; read by the cost summaries.

Writes never overwrite (`ON CONFLICT DO NOTHING`), so a second termination path cannot change or add to what
the first one recorded. Reads aggregate in SQL (one GROUPING SETS pass gives the total, per provider and per
GPU type); the live part of still-running sessions is computed by `broker.costs`, not stored.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import exists, func, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from ..models import TERMINAL_SESSION_STATUSES, broker_costs as c, broker_sessions as s

# What cost accounting needs of a session row.
_SESSION_COLUMNS = (s.c.id, s.c.consumer_id, s.c.provider, s.c.gpu_type, s.c.price_per_hour, s.c.status,
                    s.c.billing_started_at)


async def lock_session(conn: AsyncConnection, session_id: str) -> bool:
    """Take the session row's lock for the rest of the transaction (False: no such session).

    Two termination paths racing on one session then record one after the other, and the second sees the
    first one's rows.
    """
    found = await conn.execute(select(s.c.id).where(s.c.id == session_id).with_for_update())
    return found.first() is not None


async def has_rows(conn: AsyncConnection, session_id: str) -> bool:
    return bool(await conn.scalar(select(exists().where(c.c.session_id == session_id))))


async def insert_rows(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> list[Decimal]:
    """Insert hour rows, skipping hours already recorded; the amounts of the rows really inserted."""
    if not rows:
        return []
    stmt = insert(c).values(list(rows)).on_conflict_do_nothing(
        index_elements=[c.c.session_id, c.c.hour]).returning(c.c.amount)
    return list((await conn.execute(stmt)).scalars())


async def get_session(conn: AsyncConnection, session_id: str) -> Row | None:
    return (await conn.execute(select(*_SESSION_COLUMNS).where(s.c.id == session_id))).first()


async def session_rows(conn: AsyncConnection, session_id: str) -> list[Row]:
    """(hour, amount, seconds) of one session's recorded rows."""
    return list(await conn.execute(
        select(c.c.hour, c.c.amount, c.c.seconds).where(c.c.session_id == session_id).order_by(c.c.hour)))


async def live_sessions(conn: AsyncConnection, *, consumer_id: str = "", started_before: datetime) -> list[Row]:
    """Sessions not yet terminal whose provider instance exists (billing started before `started_before`)."""
    stmt = select(*_SESSION_COLUMNS).where(
        s.c.status.not_in(TERMINAL_SESSION_STATUSES),
        s.c.billing_started_at.is_not(None),
        s.c.billing_started_at < started_before,
    )
    if consumer_id:
        stmt = stmt.where(s.c.consumer_id == consumer_id)
    return list(await conn.execute(stmt))


async def recorded_hours(conn: AsyncConnection, session_ids: Iterable[str]) -> dict[str, set[datetime]]:
    """The hours already recorded for each of these sessions (live accrual must not count them again)."""
    ids = list(session_ids)
    if not ids:
        return {}
    out: dict[str, set[datetime]] = defaultdict(set)
    for sid, hour in await conn.execute(select(c.c.session_id, c.c.hour).where(c.c.session_id.in_(ids))):
        out[sid].add(hour)
    return out


async def totals(conn: AsyncConnection, *, start: datetime, end: datetime, consumer_id: str = "") -> list[Row]:
    """Recorded rows with `start <= hour < end`, aggregated three ways in one pass.

    Each row is (provider, gpu_type, level, amount, seconds, sessions): level 1 is a per-provider line
    (gpu_type NULL), 2 a per-GPU-type line (provider NULL), 3 the grand total (always present, zeros as NULL).
    """
    level = func.grouping(c.c.provider, c.c.gpu_type).label("level")
    stmt = select(c.c.provider, c.c.gpu_type, level, func.sum(c.c.amount).label("amount"),
                  func.sum(c.c.seconds).label("seconds"), func.count(c.c.session_id.distinct()).label("sessions"))
    stmt = stmt.where(c.c.hour >= start, c.c.hour < end)
    if consumer_id:
        stmt = stmt.where(c.c.consumer_id == consumer_id)
    stmt = stmt.group_by(func.grouping_sets(tuple_(c.c.provider), tuple_(c.c.gpu_type), tuple_()))
    return list(await conn.execute(stmt))

