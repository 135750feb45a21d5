"""broker_sessions: every state change is a conditional UPDATE, so two replicas (or two requests) never both win.

A writer names the statuses it expects (`from_statuses`); zero rows updated means someone else moved the
session first and the caller re-reads instead of acting. Loops claim rows with a lease (lease_owner,
lease_until) taken in the same statement that selects them (FOR UPDATE SKIP LOCKED).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Iterable

from redis.asyncio import Redis
from sqlalchemy import column, exists, func, literal, or_, select, table, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import redis_keys
from ._driver import fetch
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


# What a session list shows (services/sessions.py session_proto); never the keys or the provider instance id.
LIST_COLUMNS = ("id", "consumer_id", "provider", "gpu_type", "gpu_count", "status", "workload_type",
                "reservation_hours", "price_per_hour", "created_at", "expires_at", "stopped_at",
                "idle_threshold_minutes", "storage_policy", "launch_mode", "ssh_host", "ssh_port", "ssh_user", "error",
                "api_endpoint", "api_port", "model_id", "template_hash_id", "template_name", "disk_gb",
                "retry_parent_id", "retry_child_id", "failed_offers", "auto_retry", "retry_count")
_LIST_SQL: dict[tuple[bool, ...], str] = {}


def _list_sql(consumer: bool, status: bool, provider: bool, before: bool) -> str:
    """One constant statement per combination of filters (16 at most), built once; parameters in the order
    consumer_id, status, provider, (created_at, id) of `before`, then the limit."""
    key = (consumer, status, provider, before)
    sql = _LIST_SQL.get(key)
    if sql is None:
        where, n = [], 0
        for given, name in ((consumer, "consumer_id"), (status, "status"), (provider, "provider")):
            if given:
                n += 1
                where.append(f"{name} = ${n}")
        if before:
            where.append(f"(created_at, id) < (${n + 1}::timestamptz, ${n + 2}::text)")
            n += 2
        sql = _LIST_SQL[key] = (f"SELECT {', '.join(LIST_COLUMNS)} FROM {t.name}"
                                + (" WHERE " + " AND ".join(where) if where else "")
                                + f" ORDER BY created_at DESC, id DESC LIMIT ${n + 1}")
    return sql


async def list_sessions(conn: AsyncConnection, *, consumer_id: str = "", status: str = "", provider: str = "",
                        limit: int | None = None, before: tuple[datetime, str] | None = None) -> list:
    """Newest first (created_at, id descending); `before` continues after a page's last row. Rows have the
    LIST_COLUMNS (r["name"]); read straight through asyncpg (_driver.py). limit None: no limit."""
    args: list = [v for v in (consumer_id, status, provider) if v]
    if before is not None:
        args += before
    sql = _list_sql(bool(consumer_id), bool(status), bool(provider), before is not None)
    return await fetch(conn, sql, *args, limit or None)


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


_activity = table("pg_stat_activity", column("application_name"))


def _owner_gone():
    """The lease's process has no connection to the database any more: it died (SIGKILL, crash, host lost), and
    its lease is free at once instead of after lease_until. A lease token is `<process id>:<unit>`, and each
    process names its connections with its id (store.db.create_engine application_name; its dependency probe
    keeps one open)."""
    return ~exists(select(literal(1)).select_from(_activity).where(
        _activity.c.application_name == func.split_part(t.c.lease_owner, ":", 1)))


def lease_owner_gone():
    """The session's lease names a process that is gone (or no process at all)."""
    return _owner_gone()


def _lease_free(now: datetime):
    return or_(t.c.lease_until.is_(None), t.c.lease_until < now, _owner_gone())


async def claim(conn: AsyncConnection, session_id: str, owner: str, now: datetime, until: datetime,
                from_statuses: Iterable[str]) -> Row | None:
    """Take the lease of one session if nobody holds a live one, or `owner` (a lease token) already does."""
    stmt = (update(t)
            .where(t.c.id == session_id, t.c.status.in_(tuple(from_statuses)),
                   or_(_lease_free(now), t.c.lease_owner == owner))
            .values(lease_owner=owner, lease_until=until)
            .returning(t))
    return (await conn.execute(stmt)).first()


async def release(conn: AsyncConnection, session_id: str, owner: str, **values: Any) -> None:
    await conn.execute(update(t).where(t.c.id == session_id, t.c.lease_owner == owner)
                       .values(lease_owner=None, lease_until=None, **values))


async def due(conn: AsyncConnection, where, now: datetime, limit: int = 100) -> list[str]:
    """Ids matching `where` whose lease is free, oldest first (the loops' work list; claim() decides)."""
    stmt = (select(t.c.id)
            .where(where, _lease_free(now))
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
