"""The outbox relay: committed `event_outbox` rows -> the Redis Stream, exactly once and in outbox order.

Every process runs one. It wakes on LISTEN `gantry_events` (NOTIFY is delivered only on commit) and every
`events_relay_poll_seconds` (a lost notification, or rows left by a relayer that died). One relayer works at a
time (a transaction-scoped advisory lock; the others wait for it, then find those rows gone), so the stream holds
events in outbox order. A batch is appended and deleted in one transaction; the append script skips rows that
are already in the stream, so dying between XADD and COMMIT delivers nothing twice.

    relay = OutboxRelay(engine, redis, clock, settings.miner)
    await relay.run_once()      # tests drive it by hand; `start()` runs the loop (off without background_loops)
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ...store.db import unit_of_work
from ...store.repositories.events import NOTIFY_CHANNEL, EventOutboxRepository
from . import stream

log = logging.getLogger(__name__)

BATCH = 500


def listen_dsn(engine: AsyncEngine) -> str:
    """The engine's URL as a plain libpq DSN for asyncpg (password kept, driver name dropped)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class OutboxRelay:
    def __init__(self, engine: AsyncEngine, redis: Redis, clock, settings, *, batch: int = BATCH) -> None:
        self.engine = engine
        self.redis = redis
        self.clock = clock
        self.settings = settings  # config.MinerSettings
        self.batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._listener: asyncpg.Connection | None = None

    @property
    def listening(self) -> bool:
        """True while the LISTEN connection is up (commits wake the relay at once, not at the next poll)."""
        return self._listener is not None and not self._listener.is_closed()

    async def relay_batch(self, conn: AsyncConnection) -> int:
        """Append up to one batch to the stream and delete it from the outbox, in `conn`'s transaction.
        Returns the rows taken."""
        outbox = EventOutboxRepository(conn)
        await outbox.lock_relay()
        rows = await outbox.oldest(self.batch)
        s = self.settings
        await stream.append(self.redis, rows, now=self.clock.now(), max_len=s.events_max_len,
                            max_age_seconds=s.events_max_age_seconds)
        await outbox.delete([r.id for r in rows])
        return len(rows)

    async def run_once(self) -> int:
        """One batch in its own transaction (trims by age even when the outbox is empty)."""
        async with unit_of_work(self.engine) as conn:
            return await self.relay_batch(conn)

    async def drain(self) -> int:
        """Batches until the outbox is empty."""
        total = 0
        while (n := await self.run_once()) == self.batch:
            total += n
        return total + n

    # -- the loop -----------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="event-outbox-relay")

    async def stop(self, *, timeout: float = 5.0) -> None:
        """Stop the loop (bounded: a batch stuck in PostgreSQL or Redis is left behind with a warning; its
        transaction rolls back and the rows stay in the outbox for the next relayer)."""
        if self._task is not None:
            self._task.cancel()
            _, pending = await asyncio.wait({self._task}, timeout=timeout)
            if pending:
                log.warning("event relay: the loop did not stop within %.0f s", timeout)
            self._task = None
        await self._unlisten()

    async def _loop(self) -> None:
        poll = self.settings.events_relay_poll_seconds
        while True:
            if not self.listening:
                await self._listen()
            self._wake.clear()
            try:
                await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception:  # PostgreSQL or Redis away for a moment: the next wake-up retries
                log.warning("event relay: draining the outbox failed; retrying", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)

    async def _listen(self) -> None:
        """A dedicated connection LISTENing on the channel; without one the relay still polls."""
        await self._unlisten()
        try:
            conn = await asyncpg.connect(listen_dsn(self.engine))
            await conn.add_listener(NOTIFY_CHANNEL, self._notified)
            self._listener = conn
        except Exception:
            log.warning("event relay: cannot LISTEN on %s; polling only", NOTIFY_CHANNEL, exc_info=True)

    def _notified(self, *_args) -> None:
        self._wake.set()

    async def _unlisten(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
