"""Hot reads straight on the asyncpg driver connection under a SQLAlchemy connection.

    rows = await fetch(conn, "SELECT ... WHERE id = $1", session_id)   # asyncpg Records (r["column"])

For the read paths served many times a second (GET /api/v1/sessions, /api/v1/costs): SQLAlchemy Core builds,
caches and compiles a statement per call and adapts every row (~100-300 µs of CPU each call, more than the
query). Here the SQL is a constant string, asyncpg prepares it once per connection (its statement cache) and
decodes rows in C. A connection that has not begun a transaction runs the statement on its own (no BEGIN /
ROLLBACK round trips): one statement is one consistent snapshot. Writes keep using SQLAlchemy.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection


async def fetch(conn: AsyncConnection, sql: str, *args: Any) -> list:
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    try:
        return await driver.fetch(sql, *args)
    except BaseException:
        if driver.is_closed():  # the pool must not hand this connection out again
            await conn.invalidate()
        raise
