"""InventoryService: GPU offers of every provider (seed 004 /api/v1/inventory*, /api/v1/offer-health).

Proto <-> domain only; caching, filtering, confidence and failure health live in broker/inventory.py and
broker/failures.py.

Answers of one inventory snapshot do not change: ListOffers keeps the response it built per (snapshot
generation, normalised filter) and GetOffer per (generation, id), in a bounded LRU, and returns the same message
object again, so neither face rebuilds `Offer` messages per request and the REST gateway renders each such
response once (gantry_gateway/app.py, ETag). A new listing, an eviction, a failure change or a staleness step
is a new generation; template-filtered lists are not cached.
"""
from __future__ import annotations

from datetime import datetime

from gantry.broker.v1 import inventory_pb2, inventory_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from ..broker.inventory import TEMPLATE_NOTE, InventoryOffer, OfferFilter
from ..errors import InvalidArgument
from ..lru import Lru
from ..runtime import Runtime

RESPONSE_CACHE_SIZE = 256  # distinct (generation, filter) answers kept; old generations age out
RESPONSE_CACHE_OFFERS = 100_000  # and at most this many Offer messages in them (~30 MB)


def inventory_of(rt: Runtime):
    """The process's Inventory; built on first use from `rt.providers` when start-up did not build one."""
    if rt.inventory is None:
        from ..broker.inventory import Inventory  # noqa: PLC0415

        rt.inventory = Inventory(rt.providers, rt.engine, rt.clock,
                                 ttl_seconds=rt.settings.broker.inventory_ttl_seconds)
    return rt.inventory


def timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


class _Timestamps:
    """Offers of one provider listing share fetched_at: convert each instant once."""

    def __init__(self) -> None:
        self._cache: dict[datetime, Timestamp] = {}

    def __call__(self, value: datetime) -> Timestamp:
        ts = self._cache.get(value)
        if ts is None:
            if len(self._cache) > 64:
                self._cache.clear()
            ts = self._cache[value] = timestamp(value)
        return ts


_timestamps = _Timestamps()


def offer_pb(o: InventoryOffer) -> inventory_pb2.Offer:
    p = o.offer
    msg = inventory_pb2.Offer(
        id=o.id, provider=p.provider, provider_id=p.provider_id, gpu_type=p.gpu_type, gpu_count=p.gpu_count,
        vram_gb=p.vram_gb, price_per_hour=p.price_per_hour, location=p.location, reliability=p.reliability,
        available=p.available, max_duration_hours=0, fetched_at=_timestamps(o.fetched_at),
        availability_confidence=o.availability_confidence)
    if p.cuda_version is not None:
        msg.cuda_version = p.cuda_version
    if p.machine_id is not None:
        msg.machine_id = p.machine_id
    if p.interruptible is not None:
        msg.interruptible = p.interruptible
    if p.min_bid is not None:
        msg.min_bid = p.min_bid
    return msg


def _optional(request, name: str):
    return getattr(request, name) if request.HasField(name) else None


def offer_filter(request: inventory_pb2.ListOffersRequest) -> OfferFilter:
    return OfferFilter(
        provider=request.provider.strip().lower() or None,
        gpu_type=request.gpu_type.strip() or None,
        location=request.location.strip() or None,
        template_hash_id=request.template_hash_id.strip() or None,
        **{name: _optional(request, name) for name in (
            "min_vram", "max_price", "min_gpu_count", "gpu_count", "min_reliability", "min_availability_confidence",
            "min_cuda", "limit", "offset")})


def _required_id(value: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument.field("id", "is required")
    return value


class InventoryService(inventory_pb2_grpc.InventoryServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        # Shared messages, never mutated once cached; weighed by their offers.
        self._responses: Lru = Lru(RESPONSE_CACHE_SIZE, max_weight=RESPONSE_CACHE_OFFERS)

    async def ListOffers(self, request, context):
        f = offer_filter(request)
        page = await inventory_of(self.rt).list_offers(f)
        key = ("list", page.generation, f) if page.generation is not None else None
        if key is not None and (cached := self._responses.get(key)) is not None:
            return cached
        response = inventory_pb2.ListOffersResponse(offers=[offer_pb(o) for o in page.offers],
                                                    count=len(page.offers), total=page.total)
        if key is not None:
            self._responses.put(key, response, weight=len(page.offers) + 1)
        return response

    async def GetOffer(self, request, context):
        inventory = inventory_of(self.rt)
        offer_id = _required_id(request.id)
        offer = await inventory.get_offer(offer_id)
        key = ("get", inventory.generation, offer_id)  # the view get_offer just read (no await since)
        if (cached := self._responses.get(key)) is not None:
            return cached
        response = inventory_pb2.GetOfferResponse(offer=offer_pb(offer))
        self._responses.put(key, response)
        return response

    async def ListCompatibleTemplates(self, request, context):
        found = await inventory_of(self.rt).compatible_templates(_required_id(request.id))
        out = inventory_pb2.ListCompatibleTemplatesResponse(
            offer_id=found.offer.id, count=len(found.templates),
            compatible_templates=[inventory_pb2.CompatibleTemplate(
                hash_id=t.hash_id, name=t.name, image=t.image, recommended_disk_space=t.recommended_disk_space)
                for t in found.templates])
        if found.supported:
            out.gpu_type, out.vram_gb = found.offer.gpu_type, found.offer.vram_gb
        else:
            out.provider, out.note = found.offer.provider, TEMPLATE_NOTE
        return out

    async def ListOfferHealth(self, request, context):
        offers, gpu_types = await inventory_of(self.rt).failures.health(
            request.provider.strip() or None, request.gpu_type.strip() or None)
        out = inventory_pb2.ListOfferHealthResponse(count=len(offers))
        for h in offers:
            item = out.offers.add(offer_id=h.offer_id, provider=h.provider, gpu_type=h.gpu_type,
                                  recent_failures=h.recent_failures, is_suppressed=h.is_suppressed,
                                  confidence_multiplier=h.confidence_multiplier,
                                  last_failure=timestamp(h.last_failure), last_failure_type=h.last_failure_type,
                                  last_failure_reason=h.last_failure_reason)
            if h.suppressed_at is not None:
                item.suppressed_at.CopyFrom(timestamp(h.suppressed_at))
                item.suppressed_until.CopyFrom(timestamp(h.suppressed_until))
        for g in gpu_types:
            item = out.gpu_types.add(gpu_type_key=g.key, failed_offer_count=g.failed_offer_count,
                                     is_degraded=g.is_degraded)
            if g.degradation_applied is not None:
                item.degradation_applied = g.degradation_applied
        return out
