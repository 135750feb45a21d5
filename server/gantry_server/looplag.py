"""Event-loop lag: how late the loop runs a callback that was due, i.e. how long nothing else could run.

`gantry serve` runs one `LoopLagMonitor` per process (every worker): a task that sleeps INTERVAL and measures by
how much it overslept. Each overshoot goes into the histogram `gantry_event_loop_lag_seconds`; one above
STALL_SECONDS is also logged (`event loop stalled`, with `lag_ms`), so a benchmark or an operator sees stalls in
the log of every worker, not only in the metrics of the worker that answered a scrape (bench/run.py counts them).

A lag is either this process's own work (a long callback, a GC pass) or a machine too busy to give it a core.
The log line tells them apart with `cpu_ms`, the CPU the loop's thread used over the same window (the
interval plus the lag): about the window for a busy loop, far less when the process was waiting for a core.
"""
from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import Histogram

log = logging.getLogger(__name__)

INTERVAL = 0.1
STALL_SECONDS = 0.05  # the aim: no lag above 50 ms under any benchmark
LOOP_LAG = Histogram("gantry_event_loop_lag_seconds", "How late the event loop ran a timer that was due",
                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))


class LoopLagMonitor:
    """`start()` in a running loop, `await stop()`; `now`/`sleep` are injectable for tests."""

    def __init__(self, interval: float = INTERVAL, *, now=time.perf_counter, sleep=asyncio.sleep,
                 cpu=time.thread_time, histogram: Histogram = LOOP_LAG, stall_seconds: float = STALL_SECONDS) -> None:
        self.interval = interval
        self._now = now
        self._cpu = cpu
        self._sleep = sleep
        self._histogram = histogram
        self._stall = stall_seconds
        self._task: asyncio.Task | None = None
        self.worst = 0.0  # the largest lag seen

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="gantry-loop-lag")

    async def run(self) -> None:
        while True:
            before, cpu = self._now(), self._cpu()
            await self._sleep(self.interval)
            self.observe(self._now() - before - self.interval, self._cpu() - cpu)

    def observe(self, lag: float, cpu: float = 0.0) -> None:
        lag = max(0.0, lag)
        self._histogram.observe(lag)
        self.worst = max(self.worst, lag)
        if lag > self._stall:
            log.warning("event loop stalled", extra={"lag_ms": round(lag * 1000, 1), "cpu_ms": round(cpu * 1000, 1)})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
