"""Issue 15, defects 3, 4 and 11: what a killed process leaves behind is carried on at once by a live one.

3: a lease whose process is dead (no connection to PostgreSQL any more) is free at once, not after its 90 s; a
   live process's lease is still respected. 11: a crash does not count `instance_vanished` against the offer,
   and the simulated provider's work folders of dead processes are removed.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from gantry_server.providers.simulated import ROOT_PREFIX, SimulatedProvider, remove_stale_roots
from gantry_server.store.models import broker_offer_failures, broker_sessions

from ..integration.broker_harness import running_broker

pytestmark = pytest.mark.timeout(120)

DEAD = "gantry-0000deadbeef"  # a process id with no connection: the process was SIGKILLed


@pytest.fixture
async def broker(database_url, redis_url, tmp_path, clean_db, redis):
    async with running_broker(database_url, redis_url, tmp_path) as h:
        yield h


async def _as_left_by(h, session_id: str, owner: str, **values) -> None:
    """The row as `done` leaves it when its process dies inside the destroy: stopping, lease held 90 s."""
    now = h.clock.now()
    async with h.app.rt.engine.begin() as conn:
        await conn.execute(update(broker_sessions).where(broker_sessions.c.id == session_id).values(
            status="stopping", stop_reason="done", lease_owner=f"{owner}:1a2b3c4d",
            lease_until=now + timedelta(seconds=90), next_check_at=now, **values))


async def test_a_stop_left_by_a_killed_process_is_finished_at_once_and_billed_to_then(broker):
    h = broker
    s = await h.create()
    await h.boot(s.id)
    h.clock.advance(minutes=30)
    await _as_left_by(h, s.id, DEAD)
    done_at = h.clock.now()
    h.clock.advance(seconds=3)  # the next lifecycle pass of a live replica
    await h.lifecycle.tick()
    row = await h.row(s.id)
    assert row.status == "stopped", "the dead process's lease was waited out"
    billed = sum(r.seconds for r in await h.cost_rows(s.id))
    assert billed == pytest.approx((done_at - row.billing_started_at).total_seconds() + 3, abs=1)
    assert h.provider.instance_state(h.provider.instances_of_label_suffix(s.id)) == "gone"


async def test_a_live_process_lease_is_still_respected(broker):
    h = broker
    s = await h.create()
    await h.boot(s.id)
    await _as_left_by(h, s.id, h.app.rt.process_id)  # this process is alive: its connections say so
    h.clock.advance(seconds=3)
    await h.lifecycle.tick()
    assert (await h.row(s.id)).status == "stopping"
    h.clock.advance(seconds=90)  # the lease's own deadline still frees it (a hung process)
    await h.lifecycle.tick()
    assert (await h.row(s.id)).status == "stopped"


async def test_an_instance_lost_with_a_crashed_simulator_is_not_the_offer_s_fault(broker):
    """After a crash the new process's simulated cloud has none of the old instances: the provisioning session
    fails (no instance), but the offer's health is not lowered for it."""
    h = broker
    s = await h.create()
    async with h.app.rt.engine.begin() as conn:  # as created by the dead process's simulated cloud
        await conn.execute(update(broker_sessions).where(broker_sessions.c.id == s.id).values(
            provider_instance_id="sim-0000lostlost"))
    h.clock.advance(seconds=5)
    await h.lifecycle.tick()
    assert (await h.row(s.id)).status == "failed"
    async with h.app.rt.engine.connect() as conn:
        recorded = (await conn.execute(select(func.count()).select_from(broker_offer_failures))).scalar()
    assert recorded == 0


def test_work_folders_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = tmp_path / f"{ROOT_PREFIX}{dead}-abcd"
    live = tmp_path / f"{ROOT_PREFIX}{os.getpid()}-efgh"
    for p in (stale, live):
        (p / "sim-1").mkdir(parents=True)
    assert remove_stale_roots(tmp_path) == [stale]
    assert live.exists() and not stale.exists()


async def test_a_new_simulated_cloud_cleans_what_a_killed_one_left(tmp_path):
    """A real SIGKILL: the child made an instance folder and died without its at-exit cleanup."""
    code = ("import asyncio, os, signal\n"
            "from gantry_server.providers.simulated import SimulatedProvider\n"
            "p = SimulatedProvider(boot_seconds=0)\n"
            "print(p._root(), flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    left = Path(out)
    assert left.exists() and left.parent == Path(tempfile.gettempdir())
    provider = SimulatedProvider(boot_seconds=0)
    try:
        provider._root()
        assert not left.exists()
    finally:
        await provider.shutdown()
