"""What miners are paid by: instance compute units per stats window, scores, and the hourly unique-chute history,
as pure functions of audit rows, compute-history spans and the clock (reference §4.9, §4.10, §6.13). No I/O.

Every instance is judged from its `instance_audit` row (it outlives the instance) and earns, over its billing
interval, the multipliers of its `instance_compute_history` spans:

    >>> from datetime import datetime, timedelta, timezone
    >>> now = datetime(2026, 3, 2, 12, tzinfo=timezone.utc)
    >>> inst = Audited("i1", "hk", "c1", created_at=now - timedelta(hours=3), activated_at=now - timedelta(hours=2))
    >>> spans = [Span(2.0, now - timedelta(hours=2), None)]
    >>> [(r.compute_seconds, r.compute_units) for r in instance_compute([inst], {"i1": spans}, now, HOUR)]
    [(3600.0, 7200.0)]

Scores normalise the 7-day compute units of the eligible hotkeys (registered, not blacklisted, one per coldkey):

    >>> normalise({"a": 3.0, "b": 1.0})
    {'a': 0.75, 'b': 0.25}
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
WEEK = timedelta(days=7)
# GetStats windows, in response order; scores use the widest ("all").
WINDOWS: dict[str, timedelta] = {"past_hour": HOUR, "past_day": DAY, "all": WEEK}
SCORING_WINDOW = WEEK
# A public instance deleted for an ordinary reason counts only if it served at least this long.
MIN_PUBLIC_LIFETIME = HOUR
THRASH_WINDOW = timedelta(hours=2)  # reference THRASH_WINDOW_HOURS
THRASH_PENALTY = timedelta(hours=2)  # reference THRASH_PENALTY_HOURS
HISTORY_POINTS = 168  # hours in the unique-chute history (7 days)

# Deletions the miner is not to blame for, so the instance counts however short it lived. These are the
# reference's three "user/billing" reasons, kept verbatim. Gantry itself writes none of them today: the reasons
# its code writes are "miner initialized" (the miner's own DeleteInstance, services/instance_records.py),
# "not activated within 3.5 h of its claim" (store/repositories/instances.py expire_pending) and a refused
# claim's message (domain/launch/launcher.py), and none of those is the user's or billing's doing (the last two
# never activated, so they never count anyway). The set is here so that audit rows carried over from the
# reference score as they did there, and so that a future user- or billing-initiated deletion in Gantry (a
# private chute idling past shutdown_after_seconds, a user out of balance) writes one of these exact strings.
USER_OR_BILLING_REASONS = frozenset({
    "job has been terminated due to insufficient user balance",
    "user-defined/private chute instance has not been used since shutdown_after_seconds",
    "user has zero/negative balance (private chute)",
})
OLD_VERSION_MARKER = "has an old version"  # a rolling update replaced the instance: counts too


@dataclass(frozen=True)
class Audited:
    """One `instance_audit` row (the columns scoring reads)."""
    instance_id: str
    miner_hotkey: str
    chute_id: str
    created_at: datetime
    activated_at: datetime | None = None
    deleted_at: datetime | None = None
    stop_billing_at: datetime | None = None
    billed_to: str | None = None  # null = a public instance (private and job instances bill their user)
    deletion_reason: str | None = None
    valid_termination: bool | None = None
    compute_multiplier: float | None = None
    bounty: bool = False
    hourly_rate: float | None = None


@dataclass(frozen=True)
class Span:
    """One `instance_compute_history` row: a multiplier from started_at until ended_at (None: still open)."""
    compute_multiplier: float
    started_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True)
class InstanceCompute:
    """What one instance earned in a window."""
    instance: Audited
    start: datetime
    end: datetime
    compute_seconds: float
    compute_units: float


@dataclass(frozen=True)
class StatsRow:
    """One row of a GetStats window: per hotkey, or per (hotkey, chute) with per_chute."""
    miner_hotkey: str
    chute_id: str | None
    total_instances: int
    bounty_count: int
    compute_seconds: float
    compute_units: float


@dataclass(frozen=True)
class Node:
    """The metagraph facts scoring needs about a registered hotkey."""
    coldkey: str
    blacklisted: bool = False


@dataclass
class Scores:
    raw_values: dict[str, StatsRow] = field(default_factory=dict)  # hotkey -> 7-day totals (chute_id None)
    final_scores: dict[str, float] = field(default_factory=dict)  # hotkey -> weight, summing to 1


# -- inclusion and intervals --------------------------------------------------------------------------------------
def counts(inst: Audited) -> bool:
    """Whether an instance earns at all (reference §4.10): it was activated, and it is still alive, or it was
    public and served at least an hour (activation to deletion), or its deletion was not the miner's fault (a
    valid termination, a user/billing reason, or a rolling update to a newer version)."""
    if inst.activated_at is None:
        return False
    if inst.deleted_at is None or inst.valid_termination is True:
        return True
    if inst.billed_to is None and inst.deleted_at - inst.activated_at >= MIN_PUBLIC_LIFETIME:
        return True
    reason = inst.deletion_reason or ""
    return reason in USER_OR_BILLING_REASONS or OLD_VERSION_MARKER in reason


def billing_interval(inst: Audited, now: datetime, window: timedelta) -> tuple[datetime, datetime] | None:
    """[start, end] the instance is paid for in the window ending now, or None when it earns nothing there:
    start = max(created_at, now - window) (so the warmup counts), end = min(stop_billing_at, deleted_at, now).
    An instance deleted before the window started, or whose interval is empty, earns nothing."""
    since = now - window
    if not counts(inst) or (inst.deleted_at is not None and inst.deleted_at < since):
        return None
    start = max(inst.created_at, since)
    end = min(t for t in (inst.stop_billing_at, inst.deleted_at, now) if t is not None)
    return (start, end) if end > start else None


def weighted_seconds(start: datetime, end: datetime, spans: Iterable[Span], fallback_multiplier: float | None,
                     now: datetime) -> float:
    """Σ over the spans overlapping [start, end] of overlap seconds × multiplier (an open span runs until now).
    When no span overlaps, (end - start) × fallback_multiplier (1 when null): the reference's fallback for
    instances without history."""
    total, overlapped = 0.0, False
    for span in spans:
        span_end = span.ended_at if span.ended_at is not None else now
        if span.started_at < end and span_end > start:
            overlapped = True
            total += (min(span_end, end) - max(span.started_at, start)).total_seconds() * span.compute_multiplier
    if overlapped:
        return total
    multiplier = 1.0 if fallback_multiplier is None else fallback_multiplier
    return (end - start).total_seconds() * multiplier


def instance_compute(instances: Iterable[Audited], spans: Mapping[str, list[Span]], now: datetime,
                     window: timedelta) -> list[InstanceCompute]:
    """Each counting instance with what it earned in the window ending now."""
    out = []
    for inst in instances:
        interval = billing_interval(inst, now, window)
        if interval is None:
            continue
        start, end = interval
        out.append(InstanceCompute(inst, start, end, (end - start).total_seconds(),
                                   weighted_seconds(start, end, spans.get(inst.instance_id, ()),
                                                    inst.compute_multiplier, now)))
    return out


def aggregate(computed: Iterable[InstanceCompute], *, per_chute: bool = False) -> list[StatsRow]:
    """Totals per hotkey (or per hotkey and chute), sorted by compute_units descending (ties by key)."""
    groups: dict[tuple[str, str | None], list[InstanceCompute]] = defaultdict(list)
    for c in computed:
        groups[(c.instance.miner_hotkey, c.instance.chute_id if per_chute else None)].append(c)
    rows = [StatsRow(hotkey, chute_id, len(items), sum(1 for c in items if c.instance.bounty),
                     sum(c.compute_seconds for c in items), sum(c.compute_units for c in items))
            for (hotkey, chute_id), items in groups.items()]
    rows.sort(key=lambda r: (-r.compute_units, r.miner_hotkey, r.chute_id or ""))
    return rows


def stats_window(instances: Iterable[Audited], spans: Mapping[str, list[Span]], now: datetime, window: timedelta,
                 registered: Iterable[str], *, per_chute: bool = False) -> list[StatsRow]:
    """One GetStats window: rows of registered hotkeys with compute_units > 0, best first."""
    registered = set(registered)
    return [r for r in aggregate(instance_compute(instances, spans, now, window), per_chute=per_chute)
            if r.miner_hotkey in registered and r.compute_units > 0]


# -- scores ---------------------------------------------------------------------------------------------------------
def one_hotkey_per_coldkey(score: Mapping[str, float], nodes: Mapping[str, Node]) -> set[str]:
    """The hotkeys kept after the multi-hotkey purge: per coldkey, the highest-scoring hotkey (ties: the
    smallest hotkey, so the choice is stable). An empty coldkey is unknown, not shared: such a hotkey stands
    alone rather than being merged with every other hotkey whose coldkey is unknown."""
    best: dict[str, str] = {}
    for hotkey in sorted(score):
        group = nodes[hotkey].coldkey or f"hotkey:{hotkey}"
        if group not in best or score[hotkey] > score[best[group]]:
            best[group] = hotkey
    return set(best.values())


def normalise(score: Mapping[str, float]) -> dict[str, float]:
    """final = max(0, s) / Σ max(0, s); uniform over the hotkeys when that sum is 0 (empty in, empty out)."""
    clipped = {hk: max(0.0, s) for hk, s in score.items()}
    total = sum(clipped.values())
    if total <= 0:
        return {hk: 1.0 / len(clipped) for hk in clipped}
    return {hk: s / total for hk, s in clipped.items()}


def scores(instances: Iterable[Audited], spans: Mapping[str, list[Span]], now: datetime,
           nodes: Mapping[str, Node]) -> Scores:
    """GetScores: 7-day compute units per registered hotkey (the same basis as stats "all", including hotkeys
    whose units are 0), blacklisted hotkeys left out entirely; raw_values keep every other hotkey with data,
    final_scores only the one hotkey per coldkey that scores highest, normalised to sum to 1."""
    totals = {r.miner_hotkey: r for r in aggregate(instance_compute(instances, spans, now, SCORING_WINDOW))
              if r.miner_hotkey in nodes and not nodes[r.miner_hotkey].blacklisted}
    score = {hk: r.compute_units for hk, r in totals.items()}
    kept = one_hotkey_per_coldkey(score, nodes)
    return Scores(raw_values=totals, final_scores=normalise({hk: s for hk, s in score.items() if hk in kept}))


# -- unique chute history -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HistoryPoint:
    time: datetime  # start of the hour
    count: int  # distinct chutes with an instance of the hotkey active in the hour
    total_count: int  # the same, each chute weighted by its gpu_count


def hour_floor(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def unique_chute_history(instances: Iterable[Audited], gpu_counts: Mapping[str, int],
                         now: datetime) -> list[HistoryPoint]:
    """168 hourly points, oldest first; the last is the current (partial) hour. An instance is active from
    activated_at until deleted_at (half-open: deleted exactly at an hour's start is not active in it); a chute
    missing from gpu_counts weighs 1."""
    first = hour_floor(now) - (HISTORY_POINTS - 1) * HOUR
    chutes: list[set[str]] = [set() for _ in range(HISTORY_POINTS)]
    for inst in instances:
        if inst.activated_at is None:
            continue
        begin, stop = inst.activated_at, inst.deleted_at if inst.deleted_at is not None else now + HOUR
        lo = max(0, int((hour_floor(begin) - first) / HOUR))
        for i in range(lo, HISTORY_POINTS):
            hour = first + i * HOUR
            if begin >= hour + HOUR:
                continue
            if stop <= hour:
                break
            chutes[i].add(inst.chute_id)
    return [HistoryPoint(first + i * HOUR, len(ids), sum(gpu_counts.get(c, 1) for c in ids))
            for i, ids in enumerate(chutes)]


# -- thrash cooldowns ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cooldown:
    chute_id: str
    deleted_at: datetime
    cooldown_expires_at: datetime


def is_thrash(inst: Audited, now: datetime) -> bool:
    """An activated instance deleted within the thrash window without a valid termination (reference §4.9)."""
    return (inst.activated_at is not None and inst.deleted_at is not None and inst.valid_termination is not True
            and now - THRASH_WINDOW < inst.deleted_at <= now)


def thrash_cooldowns(instances: Iterable[Audited], now: datetime) -> list[Cooldown]:
    """Per chute, the most recent thrash deletion and when its cooldown ends (deleted_at + 2 h, strictly after
    now); most recent first."""
    latest: dict[str, datetime] = {}
    for inst in instances:
        if is_thrash(inst, now) and (inst.chute_id not in latest or inst.deleted_at > latest[inst.chute_id]):
            latest[inst.chute_id] = inst.deleted_at
    out = [Cooldown(chute_id, at, at + THRASH_PENALTY) for chute_id, at in latest.items()]
    out.sort(key=lambda c: (-c.deleted_at.timestamp(), c.chute_id))
    return out


# -- metrics --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChuteMetrics:
    chute_id: str
    start: datetime
    end: datetime
    compute_multiplier: float
    instance_count: int
    per_second_price_usd: float


def chute_metrics(instances: Iterable[Audited], spans: Mapping[str, list[Span]], now: datetime) -> list[ChuteMetrics]:
    """Per chute with an activated instance alive at some time in the last hour (sorted by chute_id):
    compute_multiplier is the time-weighted average of its instances' compute-history spans over the hour (the
    mean of their audit multipliers, 1 when null, if no span overlaps); per_second_price_usd is the mean
    hourly_rate / 3600 over the instances that have one (0 when none)."""
    start = now - HOUR
    by_chute: dict[str, list[Audited]] = defaultdict(list)
    for inst in instances:
        if inst.activated_at is not None and inst.activated_at < now and (
                inst.deleted_at is None or inst.deleted_at > start):
            by_chute[inst.chute_id].append(inst)
    out = []
    for chute_id in sorted(by_chute):
        insts = by_chute[chute_id]
        seconds = weighted = 0.0
        for inst in insts:
            for span in spans.get(inst.instance_id, ()):
                lo = max(span.started_at, start)
                hi = min(span.ended_at if span.ended_at is not None else now, now)
                if hi > lo:
                    seconds += (hi - lo).total_seconds()
                    weighted += (hi - lo).total_seconds() * span.compute_multiplier
        multiplier = weighted / seconds if seconds > 0 else sum(
            1.0 if i.compute_multiplier is None else i.compute_multiplier for i in insts) / len(insts)
        rates = [i.hourly_rate for i in insts if i.hourly_rate is not None]
        out.append(ChuteMetrics(chute_id, start, now, multiplier, len(insts),
                                sum(rates) / len(rates) / 3600.0 if rates else 0.0))
    return out
