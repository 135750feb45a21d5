"""broker_costs: one row per (session, clock hour), written once at termination; read by the cost summaries.

Writes never overwrite (`ON CONFLICT DO NOTHING`), so a second termination path cannot change or add to what
the first one recorded. Reads are one statement per answer, on asyncpg directly: a summary aggregates in SQL
(one GROUPING SETS pass gives the total, per provider and per GPU type) and lists, in the same statement, the
running sessions with their recorded hours; the live part of those is computed by `broker.costs`, not stored.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import exists, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from ..models import TERMINAL_SESSION_STATUSES, broker_costs as c, broker_sessions as s
from ._driver import fetch

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


# ---- reads (GET /api/v1/costs): one constant statement each, straight through asyncpg (_driver.py) -----------------
class CostSession(NamedTuple):
    """What cost accounting reads of a session, with the hours already recorded for it."""

    id: str
    consumer_id: str
    provider: str
    gpu_type: str
    price_per_hour: float
    status: str
    billing_started_at: datetime | None
    recorded: frozenset  # hours (UTC) with a broker_costs row
    recorded_amount: Decimal  # their sum


class Total(NamedTuple):
    """One line of a summary: level 1 per provider (gpu_type None), 2 per GPU type (provider None), 3 the total."""

    provider: str | None
    gpu_type: str | None
    level: int
    amount: Decimal | None
    seconds: float | None
    sessions: int


_SESSION_SQL = (
    f"SELECT s.id, s.consumer_id, s.provider, s.gpu_type, s.price_per_hour, s.status, s.billing_started_at, "
    f"ARRAY(SELECT c.hour FROM {c.name} c WHERE c.session_id = s.id) AS hours, "
    f"(SELECT coalesce(sum(c.amount), 0) FROM {c.name} c WHERE c.session_id = s.id) AS amount "
    f"FROM {s.name} s")
_TERMINAL = ", ".join(f"'{status}'" for status in TERMINAL_SESSION_STATUSES)


def _session(r) -> CostSession:
    return CostSession(r["id"], r["consumer_id"], r["provider"], r["gpu_type"], r["price_per_hour"], r["status"],
                       r["billing_started_at"], frozenset(r["hours"]), r["amount"])


async def cost_session(conn: AsyncConnection, session_id: str) -> CostSession | None:
    """A session with its recorded hours and their sum, in one statement (one snapshot); None if unknown."""
    rows = await fetch(conn, _SESSION_SQL + " WHERE s.id = $1", session_id)
    return _session(rows[0]) if rows else None


def _summary_sql(by_consumer: bool) -> str:
    mine_c = " AND consumer_id = $4" if by_consumer else ""
    mine_s = " AND s.consumer_id = $4" if by_consumer else ""
    return (
        f"SELECT 1 AS part, provider, gpu_type, grouping(provider, gpu_type) AS level, sum(amount) AS total, "
        f"sum(seconds) AS seconds, count(DISTINCT session_id) AS sessions, NULL::text AS id, "
        f"NULL::text AS consumer_id, NULL::float8 AS price_per_hour, NULL::text AS status, "
        f"NULL::timestamptz AS billing_started_at, NULL::timestamptz[] AS hours, NULL::numeric AS amount "
        f"FROM {c.name} WHERE hour >= $1 AND hour < $2{mine_c} "
        f"GROUP BY GROUPING SETS ((provider), (gpu_type), ()) "
        f"UNION ALL "
        f"SELECT 2, s.provider, s.gpu_type, NULL, NULL, NULL, NULL, s.id, s.consumer_id, s.price_per_hour, s.status, "
        f"s.billing_started_at, ARRAY(SELECT c.hour FROM {c.name} c WHERE c.session_id = s.id), NULL "
        f"FROM {s.name} s WHERE s.status NOT IN ({_TERMINAL}) AND s.billing_started_at IS NOT NULL "
        f"AND s.billing_started_at < $3{mine_s}")


_SUMMARY_SQL = {False: _summary_sql(False), True: _summary_sql(True)}


async def summary(conn: AsyncConnection, *, start: datetime, end: datetime, started_before: datetime,
                  consumer_id: str = "") -> tuple[list[Total], list[CostSession]]:
    """In one statement (one snapshot, so a session terminating meanwhile is either live or recorded, never
    both nor neither): the recorded rows with `start <= hour < end` aggregated per provider, per GPU type and
    in total (the total line is always present, zeros as NULL), and the sessions not yet terminal whose
    instance exists (billing started before `started_before`) with the hours already recorded for them."""
    args = (start, end, started_before, consumer_id) if consumer_id else (start, end, started_before)
    totals, live = [], []
    for r in await fetch(conn, _SUMMARY_SQL[bool(consumer_id)], *args):
        if r["part"] == 1:
            totals.append(Total(r["provider"], r["gpu_type"], r["level"], r["total"], r["seconds"], r["sessions"]))
        else:
            live.append(_session(r))
    return totals, live
