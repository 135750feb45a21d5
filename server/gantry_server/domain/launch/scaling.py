"""Scaling gates (reference §4.8): how many instances a chute wants, and whether it has them.

Used when a launch config is issued, claimed and activated, and by GET /chutes/utilization (`scalable`).
"""
from __future__ import annotations

import logging

from ...store import redis_keys

log = logging.getLogger(__name__)


async def target(redis, chute) -> int | None:
    """The chute's target instance count: the autoscaler's (Redis), else the chute's max_instances, else
    unbounded (None). (The reference falls back to the current count, which refuses every launch of a chute no
    autoscaler has seen.)"""
    raw = await redis.get(redis_keys.scale_target(chute["chute_id"]))
    if raw is not None:
        try:
            return max(0, int(raw))
        except ValueError:
            log.warning("ignoring non-integer scale target for chute %s", chute["chute_id"])
    return chute["max_instances"]


def at_capacity(chute, counts, target_count: int | None, *, activation: bool = False) -> bool:
    """True when one more instance would exceed the target (`counts`: store.repositories.instances.ChuteCounts)."""
    if target_count is None:
        return False
    if activation:
        if chute["public"] and chute["tee"]:
            return False  # public TEE chutes always pass activation (reference)
        return counts.active >= target_count
    if chute["public"] and chute["tee"] and counts.live >= target_count + 1:
        return True
    return counts.active >= target_count
