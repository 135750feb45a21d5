"""A sleep for tests: records each requested delay and moves a ManualClock by it, instantly.

Inject it wherever production code takes `sleep: Callable[[float], Awaitable[None]]` (backoff, rate limits), so a
test runs the whole schedule at once and asserts the delays that were asked for.

    clock = ManualClock(datetime(2026, 1, 1, tzinfo=timezone.utc)); sleep = ManualSleep(clock)
    provider = VastAiProvider(api_key=key, base_url=fake.base_url, clock=clock, sleep=sleep)
"""
from __future__ import annotations

import asyncio

from gantry_server.clock import ManualClock


class ManualSleep:
    def __init__(self, clock: ManualClock | None = None, *, advance: bool = True) -> None:
        self.clock = clock
        self.advance = advance
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.advance and self.clock is not None:
            self.clock.advance(seconds=seconds)
        await asyncio.sleep(0)  # still a suspension point, like a real sleep

    def take(self) -> list[float]:
        """The delays so far, rounded for comparison, and forget them."""
        out = [round(d, 6) for d in self.delays]
        self.delays.clear()
        return out
