"""Inventory behaviour a broker user notices: caching, freshness, filters, order, failure health.

Providers are in-memory fakes at the GpuProvider edge; the failure tracker runs on the real PostgreSQL;
time is a ManualClock, so TTLs and failure windows are crossed by moving it, never by sleeping.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from gantry_server.broker.inventory import Inventory, OfferFilter
from gantry_server.clock import ManualClock
from gantry_server.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from gantry_server.providers.base import OfferQuery
from gantry_server.store.models import broker_offer_failures
from tests.fakes.memory_provider import MemoryProvider, offer, template, transient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def make(clean_db, clock):
    made: list[Inventory] = []

    def build(*providers: MemoryProvider, **kw) -> Inventory:
        inv = Inventory({p.name: p for p in providers}, clean_db, clock, **kw)
        made.append(inv)
        return inv

    yield build
    for inv in made:
        await inv.drain()
        await inv.aclose()


def vast_with_four() -> MemoryProvider:
    return MemoryProvider("vastai", [
        offer("vastai", "101", price_per_hour=0.4), offer("vastai", "102", price_per_hour=0.8),
        offer("vastai", "103", price_per_hour=1.5), offer("vastai", "104", price_per_hour=2.5)])


async def ids(inv: Inventory, **filters) -> list[str]:
    return [o.id for o in (await inv.list_offers(OfferFilter(**filters))).offers]


# ---------------------------------------------------------------- cache keyed correctly (defect 4)

async def test_a_filtered_query_does_not_hide_offers_from_later_queries(make):
    vast = vast_with_four()
    inv = make(vast)
    assert await ids(inv, max_price=1) == ["vastai-101", "vastai-102"]
    assert sorted(await ids(inv)) == ["vastai-101", "vastai-102", "vastai-103", "vastai-104"]
    assert (await inv.get_offer("vastai-104")).price_per_hour == 2.5
    assert await ids(inv, gpu_type="RTX 4090", location="texas", max_price=2) == [
        "vastai-101", "vastai-102", "vastai-103"]
    assert vast.list_calls == 1 and vast.queries == [OfferQuery()]  # one fetch, never a filtered one


async def test_get_offer_agrees_with_the_list(make, clock):
    vast = vast_with_four()
    inv = make(vast)
    await ids(inv)
    vast.fail_with = transient("vastai")
    clock.advance(seconds=210)  # 3.5 min old, refresh failing: staleness lowers every confidence
    listed = {o.id: o for o in (await inv.list_offers(OfferFilter())).offers}
    for offer_id, o in listed.items():
        got = await inv.get_offer(offer_id)
        assert (got.availability_confidence, got.fetched_at) == (o.availability_confidence, o.fetched_at)


# ---------------------------------------------------------------- freshness

async def test_stale_while_revalidate_answers_from_cache_and_refreshes_once(make, clock):
    vast = vast_with_four()
    inv = make(vast)
    await ids(inv)
    vast.update("101", price_per_hour=0.3)
    clock.advance(seconds=46)  # past 75 % of the 60 s TTL
    answers = await asyncio.gather(*(inv.list_offers(OfferFilter()) for _ in range(5)))
    assert all(a.offers[0].price_per_hour == 0.4 for a in answers)  # served from the cache at once
    await inv.drain()
    assert vast.list_calls == 2  # exactly one background refresh for five callers
    assert (await inv.get_offer("vastai-101")).price_per_hour == 0.3


async def test_past_the_ttl_the_refresh_happens_before_answering(make, clock):
    vast = vast_with_four()
    inv = make(vast)
    await ids(inv)
    vast.update("101", price_per_hour=0.3)
    clock.advance(seconds=61)
    assert (await inv.list_offers(OfferFilter(limit=1))).offers[0].price_per_hour == 0.3


async def test_concurrent_callers_share_one_fetch(make):
    vast = vast_with_four()
    vast.gate = asyncio.Event()
    inv = make(vast)
    calls = [asyncio.create_task(inv.list_offers(OfferFilter())) for _ in range(8)]
    await asyncio.sleep(0)
    vast.gate.set()
    pages = await asyncio.gather(*calls)
    assert vast.list_calls == 1 and all(p.total == 4 for p in pages)


async def test_each_provider_has_its_own_ttl(make, clock):
    vast, td = vast_with_four(), MemoryProvider("tensordock", [offer("tensordock", "t1")], offer_ttl_seconds=30)
    inv = make(vast, td)
    await ids(inv)
    clock.advance(seconds=31)
    await ids(inv)
    await inv.drain()
    assert (vast.list_calls, td.list_calls) == (1, 2)


async def test_a_provider_error_is_not_cached_for_minutes(make, clock):
    """Reference defect 20: a 2-second outage became 5 minutes of errors."""
    vast = vast_with_four()
    vast.fail_with = transient("vastai")
    inv = make(vast)
    with pytest.raises(Unavailable, match="vastai list_offers failed: HTTP 502"):
        await ids(inv)
    vast.fail_with = None
    with pytest.raises(Unavailable):  # within the short backoff the provider is not hammered
        await ids(inv)
    assert vast.list_calls == 1
    clock.advance(seconds=6)
    assert len(await ids(inv)) == 4


async def test_a_failed_refresh_serves_older_data_with_lower_confidence(make, clock):
    vast = MemoryProvider("vastai", [offer("vastai", "1", base_confidence=0.8)])
    inv = make(vast)
    assert (await inv.get_offer("vastai-1")).availability_confidence == 0.8
    vast.fail_with = transient("vastai")
    clock.advance(seconds=61)
    assert (await inv.get_offer("vastai-1")).availability_confidence == 0.8  # still under 2 min old
    clock.advance(seconds=149)  # 3.5 min old: staleness factor 0.75
    page = await inv.list_offers(OfferFilter())
    assert page.total == 1 and page.offers[0].availability_confidence == pytest.approx(0.6)
    clock.advance(minutes=5)
    assert (await inv.get_offer("vastai-1")).availability_confidence == pytest.approx(0.4)  # floor 0.5
    vast.fail_with = None
    clock.advance(seconds=6)
    await ids(inv)  # a provider in trouble is refreshed in the background: this call answers at once
    await inv.drain()
    assert (await inv.get_offer("vastai-1")).availability_confidence == 0.8


async def test_data_older_than_the_stale_limit_is_not_served(make, clock):
    vast = vast_with_four()
    inv = make(vast, max_stale_seconds=600)
    await ids(inv)
    vast.fail_with = transient("vastai")
    clock.advance(minutes=11)
    with pytest.raises(Unavailable, match="all providers failed"):
        await ids(inv)


# ---------------------------------------------------------------- providers configured and failing

async def test_zero_providers_is_an_empty_list_not_an_error(make):
    """Reference defect 8: zero providers answered 500."""
    inv = make()
    page = await inv.list_offers(OfferFilter())
    assert (list(page.offers), page.total) == ([], 0)
    with pytest.raises(NotFound, match="offer not found: vastai-1"):
        await inv.get_offer("vastai-1")


async def test_one_failing_provider_leaves_the_others_served(make):
    td = MemoryProvider("tensordock", [offer("tensordock", "t1")])
    td.fail_with = transient("tensordock", "connection refused")
    inv = make(vast_with_four(), td)
    assert len(await ids(inv)) == 4
    with pytest.raises(Unavailable) as named:
        await ids(inv, provider="tensordock")
    assert named.value.message == "tensordock list_offers failed: connection refused"


async def test_every_provider_failing_is_unavailable_with_every_error(make):
    vast, td = vast_with_four(), MemoryProvider("tensordock", [offer("tensordock", "t1")])
    vast.fail_with, td.fail_with = transient("vastai"), transient("tensordock", "connection refused")
    inv = make(vast, td)
    with pytest.raises(Unavailable) as exc:
        await ids(inv)
    assert exc.value.message == ("all providers failed: vastai list_offers failed: HTTP 502 bad gateway; "
                                 "tensordock list_offers failed: connection refused")
    assert exc.value.http_status == 503


# ---------------------------------------------------------------- filters, order, paging, validation

async def test_offers_are_sorted_by_confidence_then_price_then_id(make):
    vast = MemoryProvider("vastai", [
        offer("vastai", "a", base_confidence=0.5, price_per_hour=0.1),
        offer("vastai", "b", base_confidence=0.9, price_per_hour=0.9),
        offer("vastai", "c", base_confidence=0.9, price_per_hour=0.2),
        offer("vastai", "e", base_confidence=0.9, price_per_hour=0.9),
        offer("vastai", "d", base_confidence=0.9, price_per_hour=0.9)])
    inv = make(vast)
    assert await ids(inv) == ["vastai-c", "vastai-b", "vastai-d", "vastai-e", "vastai-a"]


async def test_limit_and_offset_page_through_the_matches(make):
    inv = make(vast_with_four())
    page = await inv.list_offers(OfferFilter(limit=2, offset=1))
    assert [o.id for o in page.offers] == ["vastai-102", "vastai-103"] and page.total == 4
    beyond = await inv.list_offers(OfferFilter(offset=10))
    assert (list(beyond.offers), beyond.total) == ([], 4)


async def test_gpu_type_ignores_case_and_spaces_and_location_is_a_substring(make):
    vast = MemoryProvider("vastai", [offer("vastai", "1", gpu_type="RTX 4090", location="Texas, US"),
                                     offer("vastai", "2", gpu_type="A100", location="Quebec, CA")])
    inv = make(vast)
    assert await ids(inv, gpu_type="RTX4090") == ["vastai-1"]  # reference #41: exact match only
    assert await ids(inv, gpu_type="rtx 4090") == ["vastai-1"]
    assert await ids(inv, gpu_type="RTX 409") == []
    assert await ids(inv, location="us") == ["vastai-1"]
    assert await ids(inv, location="QUEBEC") == ["vastai-2"]


async def test_numeric_filters_are_minimums_or_maximums(make):
    vast = MemoryProvider("vastai", [
        offer("vastai", "1", vram_gb=24, gpu_count=1, reliability=0.99, price_per_hour=0.4),
        offer("vastai", "2", vram_gb=80, gpu_count=4, reliability=0.95, price_per_hour=6.0),
        offer("vastai", "3", vram_gb=48, gpu_count=2, reliability=0.90, price_per_hour=1.2)])
    inv = make(vast)
    assert await ids(inv, min_vram=48) == ["vastai-3", "vastai-2"]
    assert await ids(inv, min_gpu_count=2) == ["vastai-3", "vastai-2"]
    assert await ids(inv, gpu_count=4) == ["vastai-2"]  # an alias, also a minimum
    assert await ids(inv, min_reliability=0.95) == ["vastai-1", "vastai-2"]
    assert await ids(inv, max_price=1.2) == ["vastai-1", "vastai-3"]
    assert await ids(inv, min_vram=0, max_price=0) == []


async def test_min_cuda_keeps_only_offers_that_report_cuda(make):
    """Offers without CUDA data (TensorDock) never match a CUDA minimum: stated, not a silent surprise."""
    vast = MemoryProvider("vastai", [offer("vastai", "1", cuda_version=12.4), offer("vastai", "2", cuda_version=12.9)])
    td = MemoryProvider("tensordock", [offer("tensordock", "t1")])
    inv = make(vast, td)
    assert await ids(inv, min_cuda=12.9) == ["vastai-2"]
    assert sorted(await ids(inv, min_cuda=12.0)) == ["vastai-1", "vastai-2"]
    assert len(await ids(inv, min_cuda=0)) == 3  # 0: no minimum


async def test_unavailable_offers_are_left_out_everywhere(make):
    vast = MemoryProvider("vastai", [offer("vastai", "1"), offer("vastai", "2", available=False)])
    inv = make(vast)
    assert await ids(inv) == ["vastai-1"]
    with pytest.raises(NotFound):
        await inv.get_offer("vastai-2")


async def test_every_bad_filter_is_named(make):
    inv = make(vast_with_four())
    with pytest.raises(InvalidArgument) as exc:
        await inv.list_offers(OfferFilter(
            provider="nimbus", min_vram=-1, max_price=-0.5, min_gpu_count=-2, gpu_count=-1, min_reliability=1.5,
            min_availability_confidence=-0.1, min_cuda=-1, limit=0, offset=-1))
    assert {v.field: v.description for v in exc.value.violations} == {
        "provider": "provider not found: nimbus (configured: vastai)",
        "min_vram": "must be non-negative", "max_price": "must be non-negative",
        "min_gpu_count": "must be non-negative", "gpu_count": "must be non-negative",
        "min_reliability": "must be between 0 and 1", "min_availability_confidence": "must be between 0 and 1",
        "min_cuda": "must be non-negative", "limit": "must be positive", "offset": "must be non-negative"}


# ---------------------------------------------------------------- get by id, evict

async def test_an_offer_missing_from_the_cache_triggers_one_provider_refresh(make, clock):
    vast = vast_with_four()
    inv = make(vast)
    await ids(inv)
    vast.add("105")
    with pytest.raises(NotFound):  # just fetched: no refresh for every unknown id
        await inv.get_offer("vastai-105")
    clock.advance(seconds=6)
    assert (await inv.get_offer("vastai-105")).id == "vastai-105"
    with pytest.raises(NotFound, match="offer not found: vastai-999"):
        await inv.get_offer("vastai-999")
    with pytest.raises(NotFound):
        await inv.get_offer("nimbus-1")
    assert vast.list_calls == 2


async def test_an_evicted_offer_is_hidden_until_the_next_listing(make, clock):
    vast = vast_with_four()
    inv = make(vast)
    offer_102 = await inv.provider_offer("vastai-102")
    assert inv.evict("vastai-102") and not inv.evict("vastai-102") and not inv.evict("vastai-999")
    assert "vastai-102" not in await ids(inv)
    with pytest.raises(NotFound):
        await inv.get_offer(offer_102.offer_id)
    clock.advance(seconds=61)
    assert "vastai-102" in await ids(inv)


# ---------------------------------------------------------------- templates

def vast_with_templates() -> MemoryProvider:
    return MemoryProvider("vastai", [
        offer("vastai", "1", cuda_version=12.9, gpu_count=2, host_properties={"num_gpus": "2", "cpu_arch": "amd64"}),
        offer("vastai", "2", cuda_version=12.9, gpu_count=1, host_properties={"num_gpus": "1", "cpu_arch": "amd64"}),
        offer("vastai", "3", cuda_version=12.9, gpu_count=4, host_properties={"num_gpus": "4", "cpu_arch": "arm64"}),
        offer("vastai", "4", cuda_version=12.4, gpu_count=2, host_properties={"num_gpus": "2", "cpu_arch": "amd64"}),
    ], templates=[
        template("multi", extra_filters='{"cuda_max_good": {"gte": 12.8}, "num_gpus": {"gte": 2}, '
                                        '"cpu_arch": {"in": ["amd64"]}}'),
        template("any", name="Plain"),
        template("broken", name="Broken", extra_filters="{oops"),
    ])


async def test_a_template_applies_every_extra_filter_key(make):
    td = MemoryProvider("tensordock", [offer("tensordock", "t1", gpu_count=2)])
    inv = make(vast_with_templates(), td)
    assert await ids(inv, template_hash_id="multi") == ["vastai-1"]
    assert sorted(await ids(inv, template_hash_id="any")) == ["vastai-1", "vastai-2", "vastai-3", "vastai-4"]
    assert len(await ids(inv, template_hash_id="broken")) == 4  # unusable filters: logged, no filtering
    assert await ids(inv, template_hash_id="multi", provider="vastai") == ["vastai-1"]


async def test_template_filter_errors(make):
    td = MemoryProvider("tensordock", [offer("tensordock", "t1")])
    inv = make(vast_with_templates(), td)
    with pytest.raises(NotFound, match="template not found: nope"):
        await ids(inv, template_hash_id="nope")
    with pytest.raises(InvalidArgument) as exc:
        await ids(inv, template_hash_id="multi", provider="tensordock")
    assert exc.value.violations[0].field == "provider"
    with pytest.raises(FailedPrecondition, match=r"no template provider configured \(vastai\)"):
        await ids(make(td), template_hash_id="multi")


async def test_compatible_templates_of_an_offer(make):
    inv = make(vast_with_templates(), MemoryProvider("tensordock", [offer("tensordock", "t1")]))
    one = await inv.compatible_templates("vastai-1")
    assert one.supported and [t.hash_id for t in one.templates] == ["multi", "any", "broken"]
    four = await inv.compatible_templates("vastai-4")
    assert [t.hash_id for t in four.templates] == ["any", "broken"]
    other = await inv.compatible_templates("tensordock-t1")
    assert not other.supported and list(other.templates) == []
    with pytest.raises(NotFound):
        await inv.compatible_templates("vastai-404")


# ---------------------------------------------------------------- failure tracker

def failures_metric(provider: str, gpu_type: str, failure_type: str) -> float:
    return REGISTRY.get_sample_value("gpu_offer_failures_total", {
        "provider": provider, "gpu_type": gpu_type, "failure_type": failure_type}) or 0.0


async def test_each_failure_lowers_confidence_and_three_suppress_for_30_minutes(make, clock):
    vast = MemoryProvider("vastai", [offer("vastai", "1", base_confidence=1.0, gpu_type="L4"),
                                     offer("vastai", "2", base_confidence=0.5, gpu_type="L4")])
    inv = make(vast)
    target = await inv.get_offer("vastai-1")
    before = failures_metric("vastai", "L4", "stale_inventory")
    await inv.record_failure(target, "stale_inventory", "no_such_ask")
    assert failures_metric("vastai", "L4", "stale_inventory") == before + 1
    assert (await inv.get_offer("vastai-1")).availability_confidence == pytest.approx(0.7)
    offers, _ = await inv.failures.health()
    assert [(h.offer_id, h.recent_failures, h.confidence_multiplier, h.last_failure_type) for h in offers] == [
        ("vastai-1", 1, 0.7, "stale_inventory")]

    clock.advance(minutes=1)
    await inv.record_failure(target, "ssh_timeout", "verification timeout")
    assert (await inv.get_offer("vastai-1")).availability_confidence == pytest.approx(0.49)
    assert await ids(inv) == ["vastai-2", "vastai-1"]  # 0.49 < 0.5: the order follows the confidence
    assert await ids(inv, min_availability_confidence=0.5) == ["vastai-2"]  # applied after the adjustment

    clock.advance(minutes=1)
    await inv.record_failure(target, "instance_stopped", "stopped")
    assert await ids(inv) == ["vastai-2"]
    with pytest.raises(NotFound):
        await inv.get_offer("vastai-1")
    (health,), _ = await inv.failures.health()
    assert health.is_suppressed and health.confidence_multiplier == 0
    assert health.suppressed_until == T0 + timedelta(minutes=2 + 30)

    clock.advance(minutes=29)
    assert await ids(inv) == ["vastai-2"]
    clock.advance(minutes=2)  # 33 min after the first failure: suppression over, no failure in the window
    assert (await inv.get_offer("vastai-1")).availability_confidence == 1.0
    assert (await inv.failures.health())[0] == []


async def test_three_failed_offers_of_a_gpu_type_degrade_the_type_for_an_hour(make, clock):
    vast = MemoryProvider("vastai", [offer("vastai", str(i), base_confidence=1.0, gpu_type="RTX 5080")
                                     for i in range(1, 5)] + [offer("vastai", "9", base_confidence=1.0, gpu_type="A10")])
    td = MemoryProvider("tensordock", [offer("tensordock", "t1", base_confidence=1.0, gpu_type="RTX 5080")])
    inv = make(vast, td)
    for offer_id in ("vastai-1", "vastai-2", "vastai-3"):
        await inv.record_failure(await inv.get_offer(offer_id), "unknown", "driver")
        clock.advance(minutes=1)
    conf = {o.id: o.availability_confidence for o in (await inv.list_offers(OfferFilter())).offers}
    assert conf["vastai-1"] == pytest.approx(0.21) and conf["vastai-4"] == pytest.approx(0.3)
    assert conf["vastai-9"] == 1.0 and conf["tensordock-t1"] == 1.0  # other type, other provider
    _, types = await inv.failures.health(provider="vastai")
    assert [(g.key, g.failed_offer_count, g.is_degraded, g.degradation_applied) for g in types] == [
        ("vastai:RTX 5080", 3, True, 0.3)]
    clock.advance(minutes=31)  # own failures out of the 30 min window, the type still degraded (1 h)
    assert (await inv.get_offer("vastai-1")).availability_confidence == pytest.approx(0.3)
    clock.advance(minutes=30)
    assert (await inv.get_offer("vastai-1")).availability_confidence == 1.0


async def test_failures_are_shared_by_replicas_and_pruned_after_an_hour(make, clock, clean_db):
    vast_a, vast_b = vast_with_four(), vast_with_four()
    replica_a, replica_b = make(vast_a), make(vast_b)
    await ids(replica_b)
    await replica_a.record_failure(await replica_a.get_offer("vastai-101"), "auth_failed", "permission denied")
    clock.advance(seconds=61)  # replica B reloads failure health at least every minute
    assert (await replica_b.get_offer("vastai-101")).availability_confidence == pytest.approx(0.9 * 0.7)
    clock.advance(minutes=61)
    await replica_b.record_failure(await replica_b.get_offer("vastai-102"), "unknown", "")
    async with clean_db.connect() as conn:
        offers = (await conn.execute(select(broker_offer_failures.c.offer_id))).scalars().all()
    assert offers == ["vastai-102"]  # the hour-old failure was pruned


async def test_an_unknown_failure_type_is_a_programming_error(make):
    inv = make(vast_with_four())
    with pytest.raises(ValueError, match="unknown failure type"):
        await inv.record_failure(await inv.get_offer("vastai-101"), "cosmic_rays")


async def test_health_filters_by_provider_and_gpu_type(make, clean_db):
    vast = MemoryProvider("vastai", [offer("vastai", "1", gpu_type="A10"), offer("vastai", "2", gpu_type="L4")])
    inv = make(vast)
    for offer_id in ("vastai-1", "vastai-2"):
        await inv.record_failure(await inv.get_offer(offer_id), "unknown")
    assert [h.offer_id for h in (await inv.failures.health(gpu_type="L4"))[0]] == ["vastai-2"]
    assert (await inv.failures.health(provider="tensordock")) == ([], [])
    async with clean_db.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(broker_offer_failures))).scalar_one() == 2
