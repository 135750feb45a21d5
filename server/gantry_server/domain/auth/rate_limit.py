"""Fixed-window rate limits in Redis, per (caller, bucket), and the cap on concurrent server streams.

One Lua call per check: INCR the window's counter and set its expiry on first use, atomically, so a crash can
never leave a counter without a TTL. The window index comes from the injected clock, so tests move time.

Streams are capped per process (`StreamGate`), in memory: a counter that must be given back when the stream ends
cannot live in Redis without leaking on a crash, and a process's streams are what exhaust it. A caller may hold
`per_caller` open streams in each replica.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from redis.asyncio import Redis

from ...store import redis_keys

_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


@dataclass(frozen=True)
class Limit:
    requests: int
    per_seconds: int


class RateLimited(Exception):
    def __init__(self, bucket: str, limit: Limit, retry_after: float) -> None:
        super().__init__(f"rate limit for {bucket!r} exceeded: at most {limit.requests} requests per "
                         f"{limit.per_seconds} s; retry in {retry_after:.0f} s")
        self.bucket = bucket
        self.retry_after = retry_after


class RateLimiter:
    def __init__(self, redis: Redis, clock) -> None:
        self.redis = redis
        self.clock = clock
        self._hit = redis.register_script(_HIT)

    async def hit(self, who: str, bucket: str, limit: Limit) -> int:
        """Count one request; raises RateLimited (with the seconds until the window resets) past the limit."""
        now = self.clock.now().timestamp()
        window = int(now // limit.per_seconds)
        count = await self._hit(keys=[redis_keys.rate_limit(who, bucket, window)], args=[limit.per_seconds + 1])
        if count > limit.requests:
            raise RateLimited(bucket, limit, (window + 1) * limit.per_seconds - now)
        return count


class StreamsExhausted(Exception):
    """Too many open streams for this caller or this process; `retry_after` suggests when to try again."""

    def __init__(self, message: str, scope: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.scope = scope
        self.retry_after = retry_after


class StreamGate:
    """Open server streams, per caller and in all, in this process.

    >>> gate = StreamGate(per_caller=1, per_process=10); gate.acquire("5Grw..."); gate.open("5Grw...")
    1
    """

    def __init__(self, per_caller: int, per_process: int) -> None:
        self.per_caller = per_caller
        self.per_process = per_process
        self._open: Counter[str] = Counter()
        self._total = 0

    def acquire(self, who: str) -> None:
        if self._total >= self.per_process:
            raise StreamsExhausted(f"this server has {self._total} streams open, its limit "
                                   "(GANTRY_STREAMS_PER_PROCESS); retry shortly or on another replica", "process")
        if self._open[who] >= self.per_caller:
            raise StreamsExhausted(f"too many open streams: {self._open[who]} of at most {self.per_caller} per "
                                   "caller (GANTRY_STREAMS_PER_CALLER); close one first", "caller")
        self._open[who] += 1
        self._total += 1

    def release(self, who: str) -> None:
        self._total -= 1
        self._open[who] -= 1
        if self._open[who] <= 0:
            del self._open[who]

    def open(self, who: str | None = None) -> int:
        return self._total if who is None else self._open[who]
