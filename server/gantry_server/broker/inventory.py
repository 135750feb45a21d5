"""GPU inventory: every provider's offers, cached per provider, filtered per request.

    inventory = Inventory({"vastai": vast, "tensordock": td}, engine, clock, ttl_seconds=60)
    page = await inventory.list_offers(OfferFilter(gpu_type="RTX 4090", max_price=2, limit=50))
    offer = await inventory.get_offer("vastai-102")              # same adjustments as the list
    await inventory.record_failure(offer, "stale_inventory", str(exc)); inventory.evict(offer.id)

The cache holds one entry per *provider*: its whole offer list, fetched with an empty query, so no filter
can poison it (reference defect 4) and `get_offer` sees exactly what the list sees. Every filter runs here,
in memory, on every request. Freshness per provider (TTL = `provider.offer_ttl_seconds`, else the setting):
- younger than 75 % of the TTL: served as is;
- 75-100 %: served, and one background refresh starts (single-flight: concurrent callers share one fetch);
- older, or nothing yet: refreshed before answering (single-flight). If that fails, older data is served
  (up to `max_stale_seconds`; its staleness lowers availability_confidence) and later refreshes run in the
  background until the provider answers again. A provider error is never cached as the answer: it only
  holds back new fetches for `error_backoff_seconds` (reference defect 20 cached it for 5 min).
One failing provider leaves the others served; only when every provider asked for has no usable data does
the call fail (UNAVAILABLE, REST 503, every provider's error joined). No provider configured is an empty
list (reference defect 8 answered 500).

availability_confidence = base_confidence (provider) x staleness (1.0 up to 2 min old, then linear to 0.5
at 5 min, 0.5 beyond) x failure multiplier (broker/failures.py); unavailable and suppressed offers are left
out. Sorted by availability_confidence descending, then price ascending, then id (a stable order).

Filters: gpu_type ignores case, spaces, '-' and '_' ("RTX4090" finds "RTX 4090"); location is a
case-insensitive substring ("texas" finds "Texas, US"); min_cuda keeps only offers whose provider reports a
CUDA version (Vast.ai, simulated), so any min_cuda > 0 hides TensorDock offers by design (0: no minimum);
template_hash_id applies *every* key of the template's extra_filters (broker/templates.py) to offers of
template providers (Vast.ai).

Hot path (GET /api/v1/inventory over 10,000 offers, bench/inventory.py): a "view" of adjusted, sorted offers
as plain tuples with a GPU-type index is built when a listing arrives (in a worker thread, swapped in
atomically), when the failure multipliers change, or at a staleness step; never per request, and no database
query per request. A request is a few linear passes over the tuples and a slice.
"""
from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import re
from collections.abc import Collection, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ..clock import Clock
from ..domain.validation import Violations
from ..errors import InvalidArgument, NotFound, Unavailable
from ..providers.base import GpuProvider, OfferQuery, ProviderError, ProviderOffer, ProviderTemplate
from .failures import TYPE_FACTOR, FailedOffer, FailureSnapshot, FailureTracker
from .templates import Condition, TemplateCatalog, derive_offer_filters, host_properties, matches

log = logging.getLogger(__name__)

SOFT_TTL_FRACTION = 0.75
STALE_AFTER_SECONDS = 120.0
STALE_FLOOR_SECONDS = 300.0
STALE_FLOOR_FACTOR = 0.5
MISS_REFRESH_MIN_AGE_SECONDS = 5.0  # a GET of an unknown id refreshes the provider at most this often
TEMPLATE_NOTE = "templates are only available for Vast.ai offers"

_GPU_KEY = re.compile(r"[\s_-]+")
_SERIALS = itertools.count(1)


def gpu_key(gpu_type: str) -> str:
    """Comparison key of a GPU name: 'RTX 4090', 'rtx4090' and 'RTX-4090' are one GPU."""
    return _GPU_KEY.sub("", gpu_type).lower()


def staleness_factor(age_seconds: float) -> float:
    """1.0 up to 2 min, linear to 0.5 at 5 min, then 0.5; in steps of 0.01 (each step rebuilds the view).

    >>> staleness_factor(60), staleness_factor(210), staleness_factor(600)
    (1.0, 0.75, 0.5)
    """
    if age_seconds <= STALE_AFTER_SECONDS:
        return 1.0
    if age_seconds >= STALE_FLOOR_SECONDS:
        return STALE_FLOOR_FACTOR
    span = STALE_FLOOR_SECONDS - STALE_AFTER_SECONDS
    return round(1.0 - (1.0 - STALE_FLOOR_FACTOR) * (age_seconds - STALE_AFTER_SECONDS) / span, 2)


@dataclass(frozen=True)
class OfferFilter:
    """The query of GET /api/v1/inventory; None means "not given"."""

    provider: str | None = None
    gpu_type: str | None = None
    location: str | None = None
    min_vram: int | None = None
    max_price: float | None = None
    min_gpu_count: int | None = None
    gpu_count: int | None = None  # alias of min_gpu_count (also a minimum)
    min_reliability: float | None = None
    min_availability_confidence: float | None = None
    min_cuda: float | None = None
    template_hash_id: str | None = None
    limit: int | None = None
    offset: int | None = None

    def validate(self, providers: Collection[str]) -> None:
        """Raise InvalidArgument naming every bad field."""
        v = Violations()
        if self.provider:
            v.require(self.provider in providers, "provider",
                      f"provider not found: {self.provider} (configured: {', '.join(sorted(providers)) or 'none'})")
        for name in ("min_vram", "max_price", "min_gpu_count", "gpu_count", "min_cuda"):
            value = getattr(self, name)
            if value is not None:
                v.require(value >= 0, name, "must be non-negative")  # NaN fails too
        for name in ("min_reliability", "min_availability_confidence"):
            value = getattr(self, name)
            if value is not None:
                v.require(0 <= value <= 1, name, "must be between 0 and 1")
        if self.limit is not None:
            v.require(self.limit > 0, "limit", "must be positive")
        if self.offset is not None:
            v.require(self.offset >= 0, "offset", "must be non-negative")
        v.raise_if_any()


# A view row is a plain tuple (cheap to build for 10,000 offers, sorted without a key function, filtered by
# index); an InventoryOffer is made only for the rows a call returns. The sort key leads.
_NEG_CONF, _PRICE, _ID, _PROVIDER, _GPU, _LOCATION, _VRAM, _GPUS, _RELIABILITY, _CUDA, _OFFER, _CONF, _FETCHED = \
    range(13)


@dataclass(frozen=True, slots=True)
class InventoryOffer:
    """One listed offer: the provider's offer plus what inventory adds."""

    offer: ProviderOffer
    id: str
    availability_confidence: float
    fetched_at: datetime

    @classmethod
    def _of(cls, row: tuple) -> "InventoryOffer":
        return cls(row[_OFFER], row[_ID], row[_CONF], row[_FETCHED])

    @property
    def offer_id(self) -> str:
        return self.id

    @property
    def provider(self) -> str:
        return self.offer.provider

    @property
    def gpu_type(self) -> str:
        return self.offer.gpu_type

    @property
    def vram_gb(self) -> int:
        return self.offer.vram_gb

    @property
    def price_per_hour(self) -> float:
        return self.offer.price_per_hour

    @property
    def machine_id(self) -> str | None:
        return self.offer.machine_id

    def host_properties(self) -> dict[str, Any]:
        return host_properties(self.offer)


@dataclass(frozen=True)
class OfferPage:
    offers: Sequence[InventoryOffer]
    total: int  # matches before limit/offset
    # The view (snapshot) the page was cut from: equal generations and equal filters give equal pages, so a
    # caller may cache what it builds from a page under (generation, filter). None: not cacheable (template
    # filters, whose result also depends on the template catalog).
    generation: tuple | None = None


@dataclass(frozen=True)
class CompatibleTemplates:
    offer: InventoryOffer
    templates: Sequence[ProviderTemplate]
    supported: bool  # False: the offer's provider has no templates (note TEMPLATE_NOTE)


def _describe(name: str, exc: BaseException | None) -> str:
    if isinstance(exc, ProviderError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"{name} list_offers failed: timed out"
    return f"{name} list_offers failed: {exc or 'no data'}"


@dataclass(frozen=True)
class _Listing:
    """One successful listing, prepared once (off the event loop) for every later view build."""

    # (clamped base confidence, row tail) of available offers, best first; the tail is a view row minus its
    # leading -confidence and trailing confidence/fetched_at (see _build)
    entries: tuple[tuple[float, tuple], ...]
    ids: frozenset[str]  # every offer id listed, available or not
    unavailable: frozenset[str]
    fetched_at: datetime


def _prepare(offers: Sequence[ProviderOffer], fetched_at: datetime) -> _Listing:
    with _gc_paused():
        return _prepare_listing(offers, fetched_at)


def _prepare_listing(offers: Sequence[ProviderOffer], fetched_at: datetime) -> _Listing:
    gpu_keys: dict[str, str] = {}
    locations: dict[str, str] = {}
    entries, ids, unavailable = [], set(), set()
    for o in offers:
        oid = f"{o.provider}-{o.provider_id}"
        ids.add(oid)
        if not o.available:
            unavailable.add(oid)
            continue
        gk = gpu_keys.get(o.gpu_type)
        if gk is None:
            gk = gpu_keys[o.gpu_type] = gpu_key(o.gpu_type)
        lk = locations.get(o.location)
        if lk is None:
            lk = locations[o.location] = o.location.lower()
        base = min(1.0, max(0.0, o.base_confidence))
        entries.append((base, (o.price_per_hour, oid, o.provider, gk, lk, o.vram_gb, o.gpu_count, o.reliability,
                               o.cuda_version, o)))
    # Pre-sorted, so that a view build (a uniform staleness factor per listing) sorts nearly sorted runs.
    entries.sort(key=lambda e: (-e[0], e[1][0], e[1][1]))
    return _Listing(tuple(entries), frozenset(ids), frozenset(unavailable), fetched_at)


class _ProviderCache:
    """One provider's offer list and its refresh policy (see the module docstring)."""

    def __init__(self, provider: GpuProvider, clock: Clock, *, ttl: float, backoff: float, max_stale: float,
                 timeout: float, on_listing) -> None:
        self.provider = provider
        self.name = provider.name
        self._clock = clock
        self.ttl = timedelta(seconds=ttl)
        self.soft = timedelta(seconds=ttl * SOFT_TTL_FRACTION)
        self._backoff = timedelta(seconds=backoff)
        self._max_stale = timedelta(seconds=max_stale)
        self._timeout = timeout
        self._on_listing = on_listing  # async (cache, listing): builds the view and commits the listing
        self.listing: _Listing | None = None
        self.evicted: set[str] = set()
        self.error: BaseException | None = None  # of the last attempt, cleared by a success
        self.error_at: datetime | None = None
        self.version = 0  # bumped by every committed listing
        self.fetches = 0
        self.task: asyncio.Task | None = None

    @property
    def fetched_at(self) -> datetime | None:
        return self.listing.fetched_at if self.listing is not None else None

    def usable(self, now: datetime) -> bool:
        return self.listing is not None and now - self.listing.fetched_at <= self._max_stale

    def in_backoff(self, now: datetime) -> bool:
        return self.error_at is not None and now - self.error_at < self._backoff

    def refresh(self) -> asyncio.Task:
        """Start a fetch unless one is running; either way return the running one."""
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._fetch(), name=f"inventory-refresh-{self.name}")
        return self.task

    def must_wait(self, now: datetime) -> bool:
        """Apply the freshness policy; True when the caller has to wait for a fetch before answering."""
        if self.listing is not None:
            age = now - self.listing.fetched_at
            if age < self.soft:
                return False
            if age < self.ttl or (self.error is not None and self.usable(now)):
                if not self.in_backoff(now):
                    self.refresh()  # stale-while-revalidate (or a provider in trouble): answer from cache
                return False
        return not self.in_backoff(now) or (self.task is not None and not self.task.done())

    def may_refresh_on_miss(self, now: datetime) -> bool:
        fetched_at = self.fetched_at
        return not self.in_backoff(now) and (
            fetched_at is None or (now - fetched_at).total_seconds() >= MISS_REFRESH_MIN_AGE_SECONDS)

    def commit(self, listing: _Listing) -> None:
        self.listing = listing
        self.evicted.clear()
        self.error = self.error_at = None
        self.version += 1

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            async with asyncio.timeout(self._timeout):
                offers = await self.provider.list_offers(OfferQuery())
        except Exception as exc:  # noqa: BLE001 - any provider failure is held, reported, and retried later
            self.error, self.error_at = exc, self._clock.now()
            log.warning("provider offer listing failed",
                        extra={"provider": self.name, "error": _describe(self.name, exc)})
            return
        fetched_at = self._clock.now()
        listing = await _off_loop(len(offers), _prepare, offers, fetched_at)
        await self._on_listing(self, listing)


_THREAD_MIN = 2000  # below this many offers, preparing/building on the loop is cheaper than a thread hop


@contextmanager
def _gc_paused():
    """Bulk allocation of many long-lived tuples: without this the cyclic GC runs (and walks the heap of
    offers) dozens of times per build, which costs more than the build itself."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


async def _off_loop(size: int, fn, *args):
    """Run CPU work for big lists in a thread: the GIL still serialises it, but the event loop gets a turn
    every switch interval (5 ms) instead of waiting for the whole build."""
    if size < _THREAD_MIN:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


@dataclass
class _View:
    key: tuple
    rows: list[tuple]  # sorted
    by_gpu: dict[str, list[tuple]]
    by_id: dict[str, tuple]
    hidden: frozenset[str]  # offers a provider lists that inventory does not show (unavailable, suppressed, evicted)
    host: dict[str, dict] = field(default_factory=dict)  # offer id -> host properties, filled on first use

    def host_properties(self, row: tuple) -> dict[str, Any]:
        props = self.host.get(row[_ID])
        if props is None:
            props = self.host[row[_ID]] = host_properties(row[_OFFER])
        return props


# What a view is built from, per provider: (name, version, staleness factor, listing, evicted ids).
_Source = tuple[str, int, float, _Listing, frozenset]


def _build(key: tuple, sources: list[_Source], snap: FailureSnapshot | None) -> _View:
    """The adjusted, sorted offers of every usable listing (pure: safe to run in a thread)."""
    with _gc_paused():
        return _build_view(key, sources, snap)


def _build_view(key: tuple, sources: list[_Source], snap: FailureSnapshot | None) -> _View:
    rows: list[tuple] = []
    hidden: set[str] = set()
    multipliers = snap.multipliers if snap is not None else {}
    degraded = snap.degraded if snap is not None else frozenset()
    for _, _, factor, listing, evicted in sources:
        hidden |= listing.unavailable
        fetched_at = listing.fetched_at
        if not multipliers and not degraded:  # the common case: no failure anywhere
            for base, tail in listing.entries:
                if evicted and tail[1] in evicted:
                    hidden.add(tail[1])
                    continue
                conf = int(base * factor * 10000 + 0.5) / 10000  # round() with digits is ~10x slower
                rows.append((-conf,) + tail + (conf, fetched_at))
            continue
        for base, tail in listing.entries:
            oid, o = tail[1], tail[-1]
            if oid in evicted:
                hidden.add(oid)
                continue
            m = multipliers.get(oid)
            if m is None:
                m = TYPE_FACTOR if (o.provider, o.gpu_type) in degraded else 1.0
            if m <= 0:
                hidden.add(oid)
                continue
            conf = int(base * factor * m * 10000 + 0.5) / 10000
            rows.append((-conf,) + tail + (conf, fetched_at))
    rows.sort()  # confidence desc, price asc, id asc: ids are unique, so later elements never compare
    by_gpu: dict[str, list[tuple]] = {}
    for r in rows:
        group = by_gpu.get(r[_GPU])
        if group is None:
            by_gpu[r[_GPU]] = [r]
        else:
            group.append(r)
    return _View(key, rows, by_gpu, {r[_ID]: r for r in rows}, frozenset(hidden))


class Inventory:
    def __init__(self, providers: Mapping[str, GpuProvider], engine: AsyncEngine, clock: Clock, *,
                 ttl_seconds: float = 60.0, failures: FailureTracker | None = None,
                 templates: TemplateCatalog | None = None, error_backoff_seconds: float = 5.0,
                 max_stale_seconds: float = 900.0, provider_timeout_seconds: float = 30.0) -> None:
        self._clock = clock
        self.providers: dict[str, GpuProvider] = dict(providers)
        self.failures = failures or FailureTracker(engine, clock)
        self.templates = templates or TemplateCatalog(self.providers, clock)
        self._caches: dict[str, _ProviderCache] = {
            name: _ProviderCache(p, clock, ttl=getattr(p, "offer_ttl_seconds", None) or ttl_seconds,
                                 backoff=error_backoff_seconds, max_stale=max_stale_seconds,
                                 timeout=provider_timeout_seconds, on_listing=self._on_listing)
            for name, p in self.providers.items()}
        self._snapshot: FailureSnapshot | None = None
        self._failure_gen = 0
        self._view_cache: _View | None = None
        self._serial = next(_SERIALS)  # view keys of two Inventory objects must never compare equal
        self.failures.subscribe(self._failures_changed)

    # ------------------------------------------------------------------ public API

    async def list_offers(self, f: OfferFilter) -> OfferPage:
        """Filtered, sorted offers of every (or the named) provider; see the module docstring."""
        f.validate(self._caches.keys())
        names: Sequence[str] = (f.provider,) if f.provider else tuple(self._caches)
        conditions: tuple[Condition, ...] = ()
        min_cuda = f.min_cuda or None
        if f.template_hash_id:
            tnames = self.templates.provider_names
            self.templates.require_provider()
            if f.provider and f.provider not in tnames:
                raise InvalidArgument.field("provider", f"template filters apply only to offers of "
                                                        f"{', '.join(tnames)}, not {f.provider}")
            template = await self.templates.get(f.template_hash_id)
            conditions = self.templates.conditions(template)
            derived = derive_offer_filters(conditions)
            if derived.min_cuda is not None:
                min_cuda = max(min_cuda or 0.0, derived.min_cuda)
            names = names if f.provider else tnames
        await self._ensure(names, named=bool(f.provider))
        view = self._view(self._clock.now())

        rows = view.by_gpu.get(gpu_key(f.gpu_type), []) if f.gpu_type else view.rows
        # One pass per given filter, over tuples, with the bound in a local: the cheapest Python can do.
        if len(names) < len(self._caches):
            wanted = frozenset(names)
            rows = [r for r in rows if r[_PROVIDER] in wanted]
        if f.location and (needle := f.location.strip().lower()):
            rows = [r for r in rows if needle in r[_LOCATION]]
        if (bound := f.max_price) is not None:
            rows = [r for r in rows if r[_PRICE] <= bound]
        if bound := f.min_vram:
            rows = [r for r in rows if r[_VRAM] >= bound]
        if bound := max(f.min_gpu_count or 0, f.gpu_count or 0):
            rows = [r for r in rows if r[_GPUS] >= bound]
        if bound := f.min_reliability:
            rows = [r for r in rows if r[_RELIABILITY] >= bound]
        if bound := f.min_availability_confidence:
            rows = [r for r in rows if r[_CONF] >= bound]
        if min_cuda:
            rows = [r for r in rows if r[_CUDA] is not None and r[_CUDA] >= min_cuda]
        if conditions:
            rows = [r for r in rows if matches(conditions, view.host_properties(r))]
        start = f.offset or 0
        end = start + f.limit if f.limit else None
        return OfferPage([InventoryOffer._of(r) for r in rows[start:end]], len(rows),
                         None if conditions or f.template_hash_id else (self._serial, view.key))

    async def get_offer(self, offer_id: str) -> InventoryOffer:
        """The offer as the list shows it. Not cached: refresh its provider once (at most every 5 s), then
        NotFound("offer not found: <id>"). Unavailable when its provider has no usable data at all."""
        if not offer_id:
            raise InvalidArgument.field("id", "is required")
        name = self._provider_of(offer_id)
        if name is None:
            raise NotFound(f"offer not found: {offer_id}", reason="OFFER_NOT_FOUND")
        await self._ensure((name,), named=True)
        view = self._view(self._clock.now())
        row = view.by_id.get(offer_id)
        if row is not None:
            return InventoryOffer._of(row)
        cache = self._caches[name]
        if offer_id not in view.hidden and cache.may_refresh_on_miss(self._clock.now()):
            await asyncio.shield(cache.refresh())
            row = self._view(self._clock.now()).by_id.get(offer_id)
            if row is not None:
                return InventoryOffer._of(row)
        raise NotFound(f"offer not found: {offer_id}", reason="OFFER_NOT_FOUND")

    @property
    def generation(self) -> tuple | None:
        """The current view's key: it changes with every listing, eviction, failure change and staleness step,
        so an answer built from the view (get_offer's just now) may be cached under it."""
        view = self._view_cache
        return (self._serial, view.key) if view is not None else None

    async def provider_offer(self, offer_id: str) -> ProviderOffer:
        """The provider's own offer behind an inventory id (what create_instance takes); errors as get_offer."""
        return (await self.get_offer(offer_id)).offer

    async def provider_offers(self) -> list[ProviderOffer]:
        """Every listed offer as the providers gave it (unfiltered list order)."""
        return [r.offer for r in (await self.list_offers(OfferFilter())).offers]

    async def template(self, hash_id: str) -> ProviderTemplate:
        """A template by hash id (session creation); NotFound / FailedPrecondition without a template provider."""
        return await self.templates.get(hash_id)

    def evict(self, offer_id: str) -> bool:
        """Hide an offer until its provider's next successful listing (after a failed create); True if cached."""
        name = self._provider_of(offer_id)
        cache = self._caches.get(name) if name else None
        if cache is None or cache.listing is None or offer_id not in cache.listing.ids or offer_id in cache.evicted:
            return False
        now = self._clock.now()
        view = self._view_cache
        current = view is not None and view.key == self._key(now)
        cache.evicted.add(offer_id)
        if current:  # patch the current view in place rather than rebuild it; a stale one rebuilds anyway
            row = view.by_id.pop(offer_id, None)
            if row is not None:
                view.rows = [r for r in view.rows if r is not row]
                view.by_gpu[row[_GPU]] = [r for r in view.by_gpu[row[_GPU]] if r is not row]
            view.hidden = view.hidden | {offer_id}
            view.key = self._key(now)
        return True

    async def record_failure(self, offer: FailedOffer, failure_type: str, reason: str = "", *,
                             evict: bool = False) -> None:
        """Record a failure in the tracker (shared by replicas; lowers or suppresses the offer everywhere);
        `evict=True` also hides it here until the next listing."""
        await self.failures.record(offer, failure_type, reason)
        if evict:
            self.evict(offer.offer_id)

    async def compatible_templates(self, offer_id: str) -> CompatibleTemplates:
        """Templates whose extra_filters the offer's host satisfies (NotFound for an unknown offer)."""
        row = await self.get_offer(offer_id)
        if row.provider not in self.templates.provider_names:
            return CompatibleTemplates(row, (), supported=False)
        props = row.host_properties()
        found = [t for t in await self.templates.list() if matches(self.templates.conditions(t), props)]
        return CompatibleTemplates(row, found, supported=True)

    async def drain(self) -> None:
        """Wait for every running refresh (background ones included)."""
        tasks = [c.task for c in self._caches.values() if c.task is not None and not c.task.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        for cache in self._caches.values():
            if cache.task is not None and not cache.task.done():
                cache.task.cancel()
        await self.templates.aclose()
        await self.failures.aclose()

    def health(self) -> str:
        """For /health: "ok", "degraded" (a provider's last listing failed) or "no providers" (BUG-003: a
        broker without providers must say so, never look healthy in a silent demo mode)."""
        if not self._caches:
            return "no providers"
        return "degraded" if any(c.error is not None for c in self._caches.values()) else "ok"

    def fetch_counts(self) -> dict[str, int]:
        """Provider list calls started so far, per provider (observability, tests)."""
        return {name: c.fetches for name, c in self._caches.items()}

    # ------------------------------------------------------------------ internals

    def _provider_of(self, offer_id: str) -> str | None:
        best = None
        for name in self._caches:
            if offer_id.startswith(name + "-") and (best is None or len(name) > len(best)):
                best = name
        return best

    async def _ensure(self, names: Sequence[str], *, named: bool) -> None:
        """Freshen the providers per policy; Unavailable when none of them has usable data (`named`: the caller
        asked for one provider, so its own error is the message)."""
        try:
            snap = await self.failures.current()
        except Exception:  # noqa: BLE001 - no failure data: serve offers unadjusted rather than nothing
            log.exception("failure tracker unavailable; confidence not adjusted")
            snap = self._snapshot
        if snap is not None and snap is not self._snapshot:
            self._snapshot = snap
        now = self._clock.now()
        waiting = [self._caches[n] for n in names if self._caches[n].must_wait(now)]
        if waiting:
            await asyncio.gather(*(asyncio.shield(c.refresh()) for c in waiting))
            now = self._clock.now()
        failed = [n for n in names if not self._caches[n].usable(now)]
        if names and len(failed) == len(names):
            errors = "; ".join(_describe(n, self._caches[n].error) for n in failed)
            raise Unavailable(errors if named else f"all providers failed: {errors}", reason="PROVIDERS_UNAVAILABLE")

    def _failures_changed(self, snap: FailureSnapshot) -> None:
        self._snapshot = snap
        self._failure_gen += 1

    def _sources(self, now: datetime) -> list[_Source]:
        return [(name, c.version, staleness_factor((now - c.listing.fetched_at).total_seconds()), c.listing,
                 frozenset(c.evicted)) for name, c in self._caches.items() if c.usable(now)]

    @staticmethod
    def _key_of(sources: list[_Source], failure_gen: int) -> tuple:
        return tuple((name, version, factor, len(evicted)) for name, version, factor, _, evicted in sources), failure_gen

    def _key(self, now: datetime) -> tuple:
        return self._key_of(self._sources(now), self._failure_gen)

    def _view(self, now: datetime) -> _View:
        """The current view; rebuilt here only when something changed outside a listing (failure multipliers,
        a staleness step): listings build theirs off the loop (`_on_listing`)."""
        sources = self._sources(now)
        key = self._key_of(sources, self._failure_gen)
        view = self._view_cache
        if view is None or view.key != key:
            view = self._view_cache = _build(key, sources, self._snapshot)
        return view

    async def _on_listing(self, cache: _ProviderCache, listing: _Listing) -> None:
        """Build the view with the new listing before committing it, so that requests meanwhile keep a
        consistent (older) view instead of rebuilding it themselves."""
        now = self._clock.now()
        sources = [s for s in self._sources(now) if s[0] != cache.name]
        sources.append((cache.name, cache.version + 1, staleness_factor((now - listing.fetched_at).total_seconds()),
                        listing, frozenset()))
        sources.sort(key=lambda s: list(self._caches).index(s[0]))
        key = self._key_of(sources, self._failure_gen)
        view = await _off_loop(sum(len(s[3].entries) for s in sources), _build, key, sources, self._snapshot)
        cache.commit(listing)
        if self._key(self._clock.now()) == view.key:
            self._view_cache = view
