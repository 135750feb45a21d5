"""The offer failure tracker: offers that recently failed to provision lose availability confidence.

    tracker = FailureTracker(engine, clock)
    await tracker.record(offer, "stale_inventory", "vastai create failed: no_such_ask")
    snap = await tracker.current(); snap.multiplier(offer.offer_id, offer.provider, offer.gpu_type)   # 0.7

Rules (domain-broker Part 2 §2.6): per offer 0.7^n for the n failures of the last 30 min; x0.3 for every
offer of a provider + GPU type once 3 distinct offers of it failed within 1 h; product floored at 0.05;
3 failures within 30 min suppress the offer (multiplier 0, hidden from inventory) for 30 min after the
latest of them; failures older than 1 h are pruned. The events live in PostgreSQL, so every replica sees the
same health; the multipliers are computed from them in memory (a snapshot, reloaded at most every few
seconds and at once after a local record) so the inventory hot path never waits on the database.
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from ..clock import Clock
from ..store.db import unit_of_work
from ..store.repositories.offer_failures import OfferFailureRepository
from .metrics import OFFER_FAILURES

log = logging.getLogger(__name__)

FAILURE_TYPES = frozenset({"stale_inventory", "unknown", "ssh_timeout", "instance_stopped", "instance_vanished",
                           "auth_failed"})
WINDOW = timedelta(minutes=30)  # failures counted per offer, and the suppression trigger window
SUPPRESS_AT = 3
SUPPRESS_FOR = timedelta(minutes=30)
DECAY = timedelta(hours=1)  # events are kept (and GPU types judged) this long
OFFER_FACTOR = 0.7
TYPE_DEGRADE_AT = 3
TYPE_FACTOR = 0.3
FLOOR = 0.05


class FailedOffer(Protocol):
    """What a failure is recorded against: a ProviderOffer, an inventory offer, or an OfferRef."""

    provider: str
    gpu_type: str

    @property
    def offer_id(self) -> str: ...


@dataclass(frozen=True)
class OfferRef:
    """An offer known only by its session row (after a restart the ProviderOffer may be gone)."""

    offer_id: str
    provider: str
    gpu_type: str
    machine_id: str | None = None


@dataclass(frozen=True)
class FailureEvent:
    offer_id: str
    provider: str
    gpu_type: str
    failure_type: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class OfferHealth:
    offer_id: str
    provider: str
    gpu_type: str
    recent_failures: int
    is_suppressed: bool
    suppressed_at: datetime | None
    suppressed_until: datetime | None
    confidence_multiplier: float
    last_failure: datetime
    last_failure_type: str
    last_failure_reason: str


@dataclass(frozen=True)
class GpuTypeHealth:
    provider: str
    gpu_type: str
    failed_offer_count: int
    is_degraded: bool
    degradation_applied: float | None

    @property
    def key(self) -> str:
        return f"{self.provider}:{self.gpu_type}"


class FailureSnapshot:
    """Every multiplier at one instant, from the failures of the last hour.

    `multipliers`: offer id -> multiplier for offers with a failure in the last hour; `degraded`: the
    (provider, gpu_type) pairs whose other offers get TYPE_FACTOR. Read-only once built (inventory reads it
    from a worker thread).
    """

    def __init__(self, events: Sequence[FailureEvent], now: datetime) -> None:
        self.computed_at = now
        by_offer: dict[str, list[FailureEvent]] = defaultdict(list)
        type_offers: dict[tuple[str, str], set[str]] = defaultdict(set)
        for e in events:
            if now - e.at >= DECAY:
                continue
            by_offer[e.offer_id].append(e)
            type_offers[(e.provider, e.gpu_type)].add(e.offer_id)
        self.degraded = frozenset(k for k, offers in type_offers.items() if len(offers) >= TYPE_DEGRADE_AT)
        self.gpu_types = [GpuTypeHealth(p, g, len(offers), (p, g) in self.degraded,
                                        TYPE_FACTOR if (p, g) in self.degraded else None)
                          for (p, g), offers in sorted(type_offers.items())]
        self.offers: dict[str, OfferHealth] = {}
        for offer_id, evs in by_offer.items():
            evs.sort(key=lambda e: e.at)
            self.offers[offer_id] = self._offer_health(offer_id, evs, now)
        self.multipliers = {oid: h.confidence_multiplier for oid, h in self.offers.items()}
        # Equal signatures mean equal multipliers everywhere: inventory rebuilds its view only on a change.
        self.signature = (frozenset(self.multipliers.items()), self.degraded)

    def _offer_health(self, offer_id: str, evs: list[FailureEvent], now: datetime) -> OfferHealth:
        last = evs[-1]
        recent = sum(1 for e in evs if now - e.at < WINDOW)
        suppressed_at = None
        for i, e in enumerate(evs):  # the latest failure that completed SUPPRESS_AT failures within WINDOW
            if sum(1 for f in evs[:i + 1] if e.at - f.at < WINDOW) >= SUPPRESS_AT:
                suppressed_at = e.at
        suppressed_until = suppressed_at + SUPPRESS_FOR if suppressed_at else None
        suppressed = suppressed_until is not None and now < suppressed_until
        if suppressed:
            multiplier = 0.0
        else:
            multiplier = OFFER_FACTOR ** recent
            if (last.provider, last.gpu_type) in self.degraded:
                multiplier *= TYPE_FACTOR
            multiplier = max(FLOOR, multiplier) if multiplier < 1.0 else 1.0
        return OfferHealth(offer_id, last.provider, last.gpu_type, recent, suppressed,
                           suppressed_at if suppressed else None, suppressed_until if suppressed else None,
                           round(multiplier, 6), last.at, last.failure_type, last.reason)

    def multiplier(self, offer_id: str, provider: str, gpu_type: str) -> float:
        """0 when suppressed, else in [0.05, 1]."""
        got = self.multipliers.get(offer_id)
        if got is not None:
            return got
        return TYPE_FACTOR if (provider, gpu_type) in self.degraded else 1.0

    def visible_health(self) -> list[OfferHealth]:
        """Offers with a failure in the last 30 min or still suppressed (what /offer-health lists)."""
        return [h for h in self.offers.values() if h.recent_failures > 0 or h.is_suppressed]


class FailureTracker:
    def __init__(self, engine: AsyncEngine, clock: Clock, *, refresh_seconds: float = 10.0,
                 max_age_seconds: float = 60.0) -> None:
        self._engine = engine
        self._clock = clock
        self._refresh = timedelta(seconds=refresh_seconds)
        self._max_age = timedelta(seconds=max_age_seconds)
        self._snapshot: FailureSnapshot | None = None
        self._task: asyncio.Task | None = None
        self._listeners: list[Callable[[FailureSnapshot], None]] = []

    def subscribe(self, callback: Callable[[FailureSnapshot], None]) -> None:
        """`callback(snapshot)` after every reload whose multipliers differ from the previous ones."""
        self._listeners.append(callback)

    async def record(self, offer: FailedOffer, failure_type: str, reason: str = "") -> None:
        """Store one failure (and prune old ones); counts gpu_offer_failures_total once; reloads the snapshot."""
        if failure_type not in FAILURE_TYPES:
            raise ValueError(f"unknown failure type {failure_type!r}; one of {sorted(FAILURE_TYPES)}")
        now = self._clock.now()
        async with unit_of_work(self._engine) as conn:
            repo = OfferFailureRepository(conn)
            await repo.insert(offer_id=offer.offer_id, provider=offer.provider, gpu_type=offer.gpu_type,
                              machine_id=getattr(offer, "machine_id", None), failure_type=failure_type,
                              reason=reason, now=now)
            await repo.prune(now - DECAY)
        OFFER_FAILURES.labels(offer.provider, offer.gpu_type, failure_type).inc()
        log.info("offer failure recorded", extra={"offer_id": offer.offer_id, "failure_type": failure_type})
        try:
            await self.reload()
        except Exception:  # noqa: BLE001 - the row is stored; the next periodic reload catches up
            log.exception("failure snapshot reload failed")

    async def reload(self) -> FailureSnapshot:
        """Read the last hour of failures now (every replica's) and publish the snapshot."""
        now = self._clock.now()
        async with unit_of_work(self._engine) as conn:
            rows = await OfferFailureRepository(conn).since(now - DECAY)
        events = [FailureEvent(r["offer_id"], r["provider"], r["gpu_type"], r["failure_type"], r["reason"],
                               r["created_at"]) for r in rows]
        snap = FailureSnapshot(events, now)
        previous, self._snapshot = self._snapshot, snap
        if previous is None or previous.signature != snap.signature:
            for callback in self._listeners:
                callback(snap)
        return snap

    async def current(self) -> FailureSnapshot:
        """The snapshot for the hot path: no database wait unless it is missing or older than max_age;
        older than refresh_seconds starts one background reload and answers the current one."""
        snap = self._snapshot
        age = self._clock.now() - snap.computed_at if snap is not None else None
        if snap is not None and age < self._refresh:
            return snap
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._reload_quietly())
        if snap is not None and age < self._max_age:
            return snap
        await asyncio.shield(self._task)
        if self._snapshot is None:
            raise RuntimeError("the offer failure tracker cannot read the database")
        return self._snapshot

    async def _reload_quietly(self) -> None:
        try:
            await self.reload()
        except Exception:  # noqa: BLE001 - keep serving the last snapshot
            log.exception("failure snapshot reload failed")

    async def health(self, provider: str | None = None,
                     gpu_type: str | None = None) -> tuple[list[OfferHealth], list[GpuTypeHealth]]:
        """Fresh from the database: offers with recent failures or suppression, and GPU-type degradation."""
        snap = await self.reload()

        def keep(p: str, g: str) -> bool:
            return (not provider or p == provider) and (not gpu_type or g == gpu_type)

        offers = sorted((h for h in snap.visible_health() if keep(h.provider, h.gpu_type)),
                        key=lambda h: (h.provider, h.gpu_type, h.offer_id))
        return offers, [g for g in snap.gpu_types if keep(g.provider, g.gpu_type)]

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
