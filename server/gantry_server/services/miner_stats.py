"""MinerService RPCs: stats, scores, unique chute history, thrash cooldowns and metrics (composed into
services/miner.py). Proto <-> domain only: the formulas are domain/miner/scoring.py, the loading and caching
domain/miner/stats.py.

Stats, scores and unique-chute history are computed on demand and reused for miner.stats_cache_seconds (Redis,
keyed by the arguments that change the computation). The reference serves only what its cron cached (503
"Waiting for cache to populate." for scores, 404 for an uncached history); Gantry computes on a miss instead.
"""
from __future__ import annotations

import re
from datetime import datetime

from gantry.miner.v1 import miner_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from ..domain.auth.caller import current_caller
from ..domain.miner import stats
from ..domain.miner.scoring import StatsRow
from ..errors import InvalidArgument, NotFound
from ..store import redis_keys

HOTKEY_PATTERN = re.compile(r"[a-zA-Z0-9]{48}")  # GetStats miner_hotkey (reference: ^[a-zA-Z0-9]{48}$)


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _stats_row(r: StatsRow, per_chute: bool) -> miner_pb2.InstanceStatsRow:
    row = miner_pb2.InstanceStatsRow(miner_hotkey=r.miner_hotkey, total_instances=r.total_instances,
                                     bounty_count=r.bounty_count, compute_seconds=r.compute_seconds,
                                     compute_units=r.compute_units, invocation_count=r.total_instances)
    if per_chute:
        row.chute_id = r.chute_id
    else:
        row.total_bounty = r.bounty_count
    return row


def _window(rows: list[StatsRow], per_chute: bool) -> miner_pb2.StatsWindow:
    converted = [_stats_row(r, per_chute) for r in rows]
    bounties = [] if per_chute else [miner_pb2.BountyTotal(miner_hotkey=r.miner_hotkey, total_bounty=r.bounty_count)
                                     for r in rows]
    return miner_pb2.StatsWindow(instance_stats=converted, bounties=bounties, compute_units=converted)


class MinerStatsMixin:
    rt: object  # Runtime, set by MinerService

    @property
    def _ttl(self) -> float:
        return self.rt.settings.miner.stats_cache_seconds

    async def GetStats(self, request, context):
        """Unauthenticated. Instance compute per hotkey (or hotkey and chute) over the past hour, day and 7 days,
        the basis of scoring. The hotkey filter is validated on every call (the reference checks it only when
        its cache misses)."""
        hotkey = request.miner_hotkey if request.HasField("miner_hotkey") else None
        if hotkey is not None and not HOTKEY_PATTERN.fullmatch(hotkey):
            raise InvalidArgument.field("miner_hotkey", "must be 48 letters or digits (^[a-zA-Z0-9]{48}$)")
        per_chute = request.per_chute

        async def produce() -> bytes:
            windows = await stats.stats(self.rt, per_chute=per_chute, hotkey=hotkey)
            return miner_pb2.GetStatsResponse(
                **{name: _window(rows, per_chute) for name, rows in windows.items()}).SerializeToString()

        raw = await stats.cached(self.rt.redis, redis_keys.miner_stats(per_chute, hotkey), self._ttl, produce)
        return miner_pb2.GetStatsResponse.FromString(raw)

    async def GetScores(self, request, context):
        """Unauthenticated. raw_values: 7-day totals of every registered, non-blacklisted hotkey with counted
        instances; final_scores: the normalised weights (one hotkey per coldkey). With `hotkey`, both maps hold
        at most that hotkey (absent when it has no data; the reference's REST answers {hotkey: null})."""

        async def produce() -> bytes:
            result = await stats.scores(self.rt)
            return miner_pb2.GetScoresResponse(
                raw_values={hk: miner_pb2.RawScore(total_instances=r.total_instances, bounty_score=r.bounty_count,
                                                   instance_seconds=r.compute_seconds,
                                                   instance_compute_units=r.compute_units)
                            for hk, r in result.raw_values.items()},
                final_scores=result.final_scores).SerializeToString()

        response = miner_pb2.GetScoresResponse.FromString(
            await stats.cached(self.rt.redis, redis_keys.miner_scores(), self._ttl, produce))
        if request.HasField("hotkey"):
            hk = request.hotkey
            raw = {hk: response.raw_values[hk]} if hk in response.raw_values else {}
            final = {hk: response.final_scores[hk]} if hk in response.final_scores else {}
            response = miner_pb2.GetScoresResponse(raw_values=raw, final_scores=final)
        return response

    async def GetUniqueChuteHistory(self, request, context):
        """Unauthenticated. 168 hourly points (oldest first, the current hour last) of the distinct chutes the
        hotkey had an active instance of, plain and GPU-weighted. NOT_FOUND unless the hotkey is registered."""
        hotkey = request.hotkey
        if not hotkey:
            raise InvalidArgument.field("hotkey", "required")
        if not await stats.is_registered(self.rt, hotkey):
            raise NotFound(f"hotkey {hotkey} is not in the metagraph", reason="MINER_NOT_FOUND",
                           metadata={"field": "hotkey"})

        async def produce() -> bytes:
            points = await stats.unique_chute_history(self.rt, hotkey)
            return miner_pb2.GetUniqueChuteHistoryResponse(items=[
                miner_pb2.UniqueChuteHistoryPoint(time=_ts(p.time), count=p.count, total_count=p.total_count)
                for p in points]).SerializeToString()

        raw = await stats.cached(self.rt.redis, redis_keys.miner_unique_chute_history(hotkey), self._ttl, produce)
        return miner_pb2.GetUniqueChuteHistoryResponse.FromString(raw)

    async def GetThrashCooldowns(self, request, context):
        """The caller's chutes still in a thrash cooldown: per chute, its most recent activated instance deleted
        in the last 2 h without a valid termination, until deleted_at + 2 h; most recent first. Not cached."""
        hotkey = current_caller.get().hotkey
        rows = await stats.thrash_cooldowns(self.rt, hotkey)
        return miner_pb2.GetThrashCooldownsResponse(items=[
            miner_pb2.ThrashCooldown(chute_id=c.chute_id, chute_name=name, deleted_at=_ts(c.deleted_at),
                                     cooldown_expires_at=_ts(c.cooldown_expires_at)) for c, name in rows])

    async def GetMetrics(self, request, context):
        """Unauthenticated. One row per chute with an activated instance alive in the last hour (by chute_id):
        the time-weighted compute multiplier, the instance count and the mean price per second. Gantry does not
        route invocations, so total_invocations, total_compute_time, error_count and rate_limit_count are
        always 0."""
        for m in await stats.metrics(self.rt):
            yield miner_pb2.GetMetricsResponse(metrics=miner_pb2.ChuteMetrics(
                chute_id=m.chute_id, start_date=_ts(m.start), end_date=_ts(m.end),
                compute_multiplier=m.compute_multiplier, instance_count=m.instance_count,
                per_second_price_usd=m.per_second_price_usd))
