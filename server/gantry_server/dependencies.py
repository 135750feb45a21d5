"""Is PostgreSQL (and Redis) reachable right now? One cheap probe every few seconds, with a short timeout.

PostgreSQL down makes the process NOT_SERVING (gRPC health, REST /health and /ready 503) until a probe
succeeds again: almost every call needs it, so a load balancer should send traffic elsewhere, and the process
recovers by itself, without a restart. Redis down is reported (log line, `gantry_dependency_up`) but does not take
the process out of service: what needs Redis fails closed on its own (docs/reliability.md), the rest still works.

The probe goes through the process's own connection pool, so the pool keeps at least one open connection, which
is also what tells other replicas this process is alive (broker leases: store.repositories.sessions.claim).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Gauge
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

DEPENDENCY_UP = Gauge("gantry_dependency_up", "1 while the last probe of the dependency succeeded.", ["dependency"])

PROBE_INTERVAL_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 1.5
# A probe that only timed out may be waiting behind a busy pool or a saturated core, not a dead server: that
# counts as "down" after this many in a row (~10 s), while an error (refused, reset, authentication) counts at once.
TIMEOUTS_TO_TRIP = 3
UNDECIDED = "undecided"  # a probe that timed out fewer than TIMEOUTS_TO_TRIP times in a row: the state stays


class DependencyWatcher:
    """Probes each dependency; `on_change(database_ok)` runs when PostgreSQL's reachability flips."""

    def __init__(self, engine: AsyncEngine, redis: Redis, on_change: Callable[[bool], Awaitable[None]], *,
                 interval: float = PROBE_INTERVAL_SECONDS, timeout: float = PROBE_TIMEOUT_SECONDS,
                 timeouts_to_trip: int = TIMEOUTS_TO_TRIP) -> None:
        self.engine = engine
        self.redis = redis
        self.on_change = on_change
        self.interval = interval
        self.timeout = timeout
        self.timeouts_to_trip = timeouts_to_trip
        self.database_ok = True
        self.redis_ok = True
        self._timeouts = {"postgresql": 0, "redis": 0}  # consecutive timed-out probes
        self._task: asyncio.Task | None = None

    async def _probe(self, name: str, call: Callable[[], Awaitable[object]]) -> str | None:
        """None when the dependency answered within the timeout, UNDECIDED when it has only just started timing
        out, else one line saying why not."""
        try:
            async with asyncio.timeout(self.timeout):
                await call()
        except TimeoutError:
            self._timeouts[name] += 1
            if self._timeouts[name] < self.timeouts_to_trip:
                return UNDECIDED
            return f"no answer within {self.timeout:g}s, {self._timeouts[name]} times in a row"
        except Exception as exc:  # noqa: BLE001 - any failure of a probe means "down", said in one line
            self._timeouts[name] = 0
            return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        self._timeouts[name] = 0
        return None

    async def _select_one(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def check(self) -> None:
        """One round of probes (the loop calls it; tests call it directly)."""
        db_error, redis_error = await asyncio.gather(self._probe("postgresql", self._select_one),
                                                   self._probe("redis", self.redis.ping))
        if redis_error is UNDECIDED:
            redis_error = None if self.redis_ok else "still no answer"
        if db_error is UNDECIDED:
            db_error = None if self.database_ok else "still no answer"
        DEPENDENCY_UP.labels("postgresql").set(0 if db_error else 1)
        DEPENDENCY_UP.labels("redis").set(0 if redis_error else 1)
        if (redis_error is None) != self.redis_ok:
            self.redis_ok = redis_error is None
            if redis_error:
                log.warning("redis unreachable: %s", redis_error)
            else:
                log.info("redis reachable again")
        if (db_error is None) != self.database_ok:
            self.database_ok = db_error is None
            if db_error:
                log.warning("postgresql unreachable, not serving: %s", db_error)
            else:
                log.info("postgresql reachable again, serving")
            await self.on_change(self.database_ok)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # the watcher must outlive anything a probe or a health update does
                log.exception("dependency check failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
