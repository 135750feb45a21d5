"""Rolling updates: a chute whose version changes under running instances tells each of their miners to replace
them, one targeted rolling_update event per instance, and records the update (GET /chutes/rolling_updates lists
it; a stock miner holds off reconciling such a chute meanwhile).

    async with unit_of_work(engine) as conn:
        ...the chute's new version is written...
        await rolling_updates.begin(conn, "chute-1", "v1", "v2", now=clock.now())
"""
from __future__ import annotations

from datetime import datetime

from ...store.repositories.chutes import ChuteRepository
from ...store.repositories.instances import InstanceRepository
from .. import events

REASON = "chute updated"  # the event's `reason`: why the miner is asked to replace its instance


async def begin(conn, chute_id: str, old_version: str, new_version: str, *, now: datetime,
                reason: str = REASON) -> int:
    """Start moving the chute's `old_version` instances to `new_version`, in the caller's transaction; answers
    how many instances were told. Without such instances there is nothing to roll and nothing is recorded."""
    stale = await InstanceRepository(conn).of_version(chute_id, old_version)
    if not stale:
        return 0
    await ChuteRepository(conn).start_rolling_update(chute_id, old_version, new_version, now=now)
    for instance in stale:
        await events.publish(conn, events.rolling_update(
            chute_id=chute_id, instance_id=instance["instance_id"], miner_hotkey=instance["miner_hotkey"],
            old_version=old_version, new_version=new_version, reason=reason), now=now)
    return len(stale)
