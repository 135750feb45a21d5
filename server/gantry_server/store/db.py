"""One async engine per process; a unit of work per RPC."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


class DatabaseUnreachable(RuntimeError):
    """PostgreSQL could not be reached at start-up; the message is one line for the operator."""


def async_url(url: str) -> str:
    """Accept plain postgresql:// URLs and use the asyncpg driver."""
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


CONNECT_TIMEOUT_SECONDS = 5.0  # a database that does not answer fails the call (UNAVAILABLE) instead of holding it


def create_engine(url: str, *, pool_size: int = 10, application_name: str | None = None) -> AsyncEngine:
    """`application_name` names this process's connections in pg_stat_activity: other replicas read it to tell
    whether a lease's owner is still alive (store.repositories.sessions)."""
    connect_args: dict = {"timeout": CONNECT_TIMEOUT_SECONDS}
    if application_name:
        connect_args["server_settings"] = {"application_name": application_name}
    return create_async_engine(async_url(url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False,
                               connect_args=connect_args)


async def check_reachable(engine: AsyncEngine, *, timeout: float = 10.0) -> None:
    """Fail fast (one clear line, no traceback) when the configured database cannot be used."""
    try:
        async with asyncio.timeout(timeout):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except TimeoutError:
        raise DatabaseUnreachable(f"cannot reach PostgreSQL at {redacted(str(engine.url))}: timed out after {timeout:g}s") from None
    except Exception as exc:  # asyncpg/OS errors: report the reason, not the stack
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnreachable(f"cannot reach PostgreSQL at {redacted(str(engine.url))}: {reason}") from None


@asynccontextmanager
async def unit_of_work(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One connection and one transaction: committed on success, rolled back on any error."""
    async with engine.begin() as conn:
        yield conn
