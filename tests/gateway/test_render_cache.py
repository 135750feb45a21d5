"""Inventory answers of one snapshot are built and rendered once: same bytes, an ETag, 304 on If-None-Match.

A live Gantry (real PostgreSQL/Redis) with an in-memory Vast-like provider and a ManualClock: moving the clock
past the provider's TTL makes the next request wait for a new listing, which is a new snapshot.
"""
from __future__ import annotations

from datetime import datetime, timezone

import grpc
import httpx
import pytest

from gantry.broker.v1 import inventory_pb2, inventory_pb2_grpc
from gantry_server.app import GantryApp
from gantry_server.clock import ManualClock
from gantry_server.config import BrokerSettings
from tests.conftest import make_settings
from tests.fakes.memory_provider import MemoryProvider, offer

T0 = datetime(2026, 4, 1, 9, 0, tzinfo=timezone.utc)


def offers():
    return [offer("vastai", str(100 + i), gpu_type=("RTX 4090", "A100")[i % 2], price_per_hour=0.4 + i / 10,
                  base_confidence=0.9) for i in range(6)]


@pytest.fixture(scope="module")
async def world(database_url, redis_url, tmp_path_factory):
    clock = ManualClock(T0)
    vast = MemoryProvider("vastai", offers())
    settings = make_settings(database_url, redis_url, tmp_path_factory.mktemp("render-cache"),
                             broker=BrokerSettings(providers=(), fast_verify=False, background_loops=False))
    app = GantryApp(settings, clock=clock, providers={"vastai": vast})
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.grpc_addr) as channel, \
                httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=10) as http:
            yield {"app": app, "clock": clock, "vast": vast, "channel": channel, "http": http}
    finally:
        await app.rt.inventory.drain()
        await app.stop(0)


@pytest.fixture
async def w(world):
    """Each test: two hours later, so the next request waits for a fresh listing (a new snapshot)."""
    world["clock"].advance(hours=2)
    world["vast"].offers = offers()
    return world


async def test_a_second_identical_request_returns_the_same_bytes_and_etag(w):
    first = await w["http"].get("/api/v1/inventory?limit=4")
    second = await w["http"].get("/api/v1/inventory?limit=4")
    assert first.status_code == second.status_code == 200
    assert first.content == second.content and len(first.json()["offers"]) == 4
    assert first.headers["etag"] and first.headers["etag"] == second.headers["etag"]
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-request-id"] != second.headers["x-request-id"]  # per request, never cached


async def test_if_none_match_is_304_without_a_body(w):
    r = await w["http"].get("/api/v1/inventory")
    etag = r.headers["etag"]
    again = await w["http"].get("/api/v1/inventory", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    listed = await w["http"].get("/api/v1/inventory", headers={"If-None-Match": f'W/"other", W/{etag}'})
    assert listed.status_code == 304
    stale = await w["http"].get("/api/v1/inventory", headers={"If-None-Match": '"not-this-one"'})
    assert stale.status_code == 200 and stale.content == r.content


async def test_a_new_snapshot_changes_the_etag_and_the_body(w):
    before = await w["http"].get("/api/v1/inventory")
    w["vast"].update("100", price_per_hour=3.5)
    cached = await w["http"].get("/api/v1/inventory", headers={"If-None-Match": before.headers["etag"]})
    assert cached.status_code == 304  # the provider's change is not seen before its listing expires
    w["clock"].advance(hours=1)  # past the TTL: the next request waits for a new listing
    after = await w["http"].get("/api/v1/inventory", headers={"If-None-Match": before.headers["etag"]})
    assert after.status_code == 200 and after.headers["etag"] != before.headers["etag"]
    assert after.content != before.content
    prices = {o["id"]: o["price_per_hour"] for o in after.json()["offers"]}
    assert prices["vastai-100"] == 3.5
    assert after.json()["offers"][0]["fetched_at"] == w["clock"].now().strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_different_filters_never_share_an_entry(w):
    queries = ["limit=1", "limit=2", "gpu_type=A100", "gpu_type=RTX4090", "gpu_type=A100&limit=1",
               "max_price=0.55", "offset=5", ""]
    for _ in range(2):  # the second round is served from the cache: each answer is still its own filter's
        seen = {}
        for q in queries:
            r = await w["http"].get(f"/api/v1/inventory?{q}")
            assert r.status_code == 200
            seen[q] = r
        ids = {q: [o["id"] for o in r.json()["offers"]] for q, r in seen.items()}
        assert len(ids["limit=1"]) == 1 and len(ids["limit=2"]) == 2
        assert ids["gpu_type=A100"] == ["vastai-101", "vastai-103", "vastai-105"]
        assert ids["gpu_type=RTX4090"] == ["vastai-100", "vastai-102", "vastai-104"]
        assert ids["gpu_type=A100&limit=1"] == ["vastai-101"]
        assert ids["max_price=0.55"] == ["vastai-100", "vastai-101"]
        assert ids["offset=5"] == ["vastai-105"] and len(ids[""]) == 6
        assert len({r.headers["etag"] for r in seen.values()}) == len(queries)


async def test_inventory_item_has_an_etag_and_304(w):
    r = await w["http"].get("/api/v1/inventory/vastai-102")
    assert r.status_code == 200 and r.json()["id"] == "vastai-102"
    again = await w["http"].get("/api/v1/inventory/vastai-102", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    other = await w["http"].get("/api/v1/inventory/vastai-103", headers={"If-None-Match": r.headers["etag"]})
    assert other.status_code == 200 and other.json()["id"] == "vastai-103"
    missing = await w["http"].get("/api/v1/inventory/vastai-999")
    assert missing.status_code == 404 and "etag" not in missing.headers


async def test_grpc_answers_agree_with_rest_across_snapshots(w):
    stub = inventory_pb2_grpc.InventoryServiceStub(w["channel"])
    first = await stub.ListOffers(inventory_pb2.ListOffersRequest(gpu_type="A100"))
    assert first == await stub.ListOffers(inventory_pb2.ListOffersRequest(gpu_type="A100"))
    rest = (await w["http"].get("/api/v1/inventory?gpu_type=A100")).json()
    assert [o.id for o in first.offers] == [o["id"] for o in rest["offers"]]
    w["vast"].update("101", price_per_hour=0.05)
    w["clock"].advance(hours=1)
    second = await stub.ListOffers(inventory_pb2.ListOffersRequest(gpu_type="A100"))
    assert [o.id for o in second.offers][0] == "vastai-101" and second.offers[0].price_per_hour == 0.05
    assert second.offers[0].fetched_at.ToDatetime(tzinfo=timezone.utc) == w["clock"].now()
