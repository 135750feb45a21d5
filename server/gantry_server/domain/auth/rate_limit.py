"""Fixed-window rate limits in Redis, per (caller, bucket).

One Lua call per check: INCR the window's counter and set its expiry on first use, atomically, so a crash can
never leave a counter without a TTL. The window index comes from the injected clock, so tests move time.
"""
from __future__ import annotations

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
