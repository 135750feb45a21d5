"""Stats, scores, unique-chute history, thrash cooldowns and metrics on demand: load the rows (one read-only
transaction), compute with domain/miner/scoring.py, and reuse a result for a while through `cached`.

    windows = await stats(rt, per_chute=False, hotkey=None)   # {"past_hour": [StatsRow, ...], ...}
    raw = await cached(rt.redis, redis_keys.miner_scores(), 300, produce)   # bytes, produced at most once a TTL
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from ...store.db import unit_of_work
from ...store.repositories.miner_stats import MinerStatsRepository
from . import scoring
from .reference import gpu_count


async def cached(redis, key: str, ttl_seconds: float, produce: Callable[[], Awaitable[bytes]]) -> bytes:
    """The value under `key`, else `produce()`'s, stored for ttl_seconds. Two callers racing on a cold key
    both compute; the later write wins, and both are correct."""
    hit = await redis.get(key)
    if hit is not None:
        return hit
    value = await produce()
    await redis.set(key, value, px=max(1, int(ttl_seconds * 1000)))
    return value


async def stats(rt, *, per_chute: bool, hotkey: str | None) -> dict[str, list[scoring.StatsRow]]:
    """GetStats: window name -> rows (registered hotkeys with compute > 0, best first)."""
    now = rt.clock.now()
    since = now - max(scoring.WINDOWS.values())
    async with unit_of_work(rt.engine) as conn:
        repo = MinerStatsRepository(conn)
        instances = await repo.audited_since(since, hotkey=hotkey)
        spans = await repo.spans_since(since, hotkey=hotkey)
        registered = await repo.registered(rt.settings.netuid)
    return {name: scoring.stats_window(instances, spans, now, window, registered, per_chute=per_chute)
            for name, window in scoring.WINDOWS.items()}


async def scores(rt) -> scoring.Scores:
    now = rt.clock.now()
    since = now - scoring.SCORING_WINDOW
    async with unit_of_work(rt.engine) as conn:
        repo = MinerStatsRepository(conn)
        instances = await repo.audited_since(since)
        spans = await repo.spans_since(since)
        nodes = await repo.registered(rt.settings.netuid)
    return scoring.scores(instances, spans, now, nodes)


async def is_registered(rt, hotkey: str) -> bool:
    async with unit_of_work(rt.engine) as conn:
        return await MinerStatsRepository(conn).is_registered(rt.settings.netuid, hotkey)


async def unique_chute_history(rt, hotkey: str) -> list[scoring.HistoryPoint]:
    now = rt.clock.now()
    since = scoring.hour_floor(now) - (scoring.HISTORY_POINTS - 1) * scoring.HOUR
    async with unit_of_work(rt.engine) as conn:
        repo = MinerStatsRepository(conn)
        instances = await repo.audited_since(since, hotkey=hotkey)
        selectors = await repo.node_selectors({i.chute_id for i in instances})
    gpus = {chute_id: gpu_count(selector) for chute_id, selector in selectors.items()}
    return scoring.unique_chute_history(instances, gpus, now)


async def thrash_cooldowns(rt, hotkey: str) -> list[tuple[scoring.Cooldown, str]]:
    """(cooldown, chute name) pairs; the name is "" when the chute no longer exists."""
    now = rt.clock.now()
    async with unit_of_work(rt.engine) as conn:
        repo = MinerStatsRepository(conn)
        cooldowns = scoring.thrash_cooldowns(await repo.deleted_since(hotkey, now - scoring.THRASH_WINDOW), now)
        names = await repo.chute_names({c.chute_id for c in cooldowns})
    return [(c, names.get(c.chute_id, "")) for c in cooldowns]


async def metrics(rt) -> list[scoring.ChuteMetrics]:
    now = rt.clock.now()
    since = now - scoring.HOUR
    async with unit_of_work(rt.engine) as conn:
        repo = MinerStatsRepository(conn)
        instances = await repo.audited_since(since)
        spans = await repo.spans_since(since)
    return scoring.chute_metrics(instances, spans, now)
