"""The event-loop lag monitor: each overshoot of its sleep is observed, a stall above 50 ms is logged."""
from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry, Histogram

from gantry_server.looplag import LoopLagMonitor


class _Clock:
    """perf_counter and sleep for the monitor: each sleep lasts what the test scheduled, then the test's turn."""

    def __init__(self, oversleeps: list[float]) -> None:
        self.t = 0.0
        self.oversleeps = list(oversleeps)
        self.done = asyncio.Event()

    def now(self) -> float:
        return self.t

    def cpu(self) -> float:
        return self.t / 2  # the loop's thread had the CPU half of the time

    async def sleep(self, seconds: float) -> None:
        if not self.oversleeps:
            self.done.set()
            await asyncio.Event().wait()  # parked until stop()
        self.t += seconds + self.oversleeps.pop(0)


def _histogram() -> Histogram:
    return Histogram("lag_seconds", "test", registry=CollectorRegistry(), buckets=(0.01, 0.05, 0.5))


async def test_each_overshoot_is_observed_and_a_stall_is_logged(caplog):
    clock = _Clock([0.0, 0.002, 0.4, 0.03])
    histogram = _histogram()
    monitor = LoopLagMonitor(0.1, now=clock.now, sleep=clock.sleep, cpu=clock.cpu, histogram=histogram)
    with caplog.at_level(logging.WARNING, logger="gantry_server.looplag"):
        monitor.start()
        await clock.done.wait()
        await monitor.stop()
    samples = {s.labels.get("le"): s.value for s in histogram.collect()[0].samples if s.name.endswith("_bucket")}
    assert samples == {"0.01": 2.0, "0.05": 3.0, "0.5": 4.0, "+Inf": 4.0}
    assert abs(monitor.worst - 0.4) < 1e-9
    stalls = [r for r in caplog.records if r.getMessage() == "event loop stalled"]
    assert [(r.lag_ms, r.cpu_ms) for r in stalls] == [(400.0, 250.0)]


async def test_the_exported_histogram_is_named_for_the_issue():
    from prometheus_client import REGISTRY, generate_latest

    assert b"gantry_event_loop_lag_seconds_bucket" in generate_latest(REGISTRY)
