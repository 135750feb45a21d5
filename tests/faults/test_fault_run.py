"""The short fault run of the normal suite (fixed seed, bounded): two replicas, real PostgreSQL/Redis stopped,
flushed and restarted, replicas SIGKILLed under load, provider faults through the proxy; zero violations of the
invariants read from the database and the fake provider's records. The long run: `make faults`."""
from __future__ import annotations

import pytest

from .harness import FaultPlan, run_faults

pytestmark = pytest.mark.timeout(240)

SHORT = FaultPlan(seed=15, kills=4, db_restarts=1, redis_restarts=1, redis_flushes=1, provider_faults=2,
                  load_seconds=30.0, concurrency=4, settle_seconds=90.0)


async def test_short_fault_run_holds_every_invariant(tmp_path):
    report = await run_faults(SHORT, tmp_path)
    print(report.summary())
    assert len(report.faults) == 9
    assert report.load.get("created", 0) > 0 and report.load.get("done", 0) > 0, report.summary()
    assert report.violations == [], report.summary()
