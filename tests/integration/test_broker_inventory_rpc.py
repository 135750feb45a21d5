"""InventoryService and TemplateService over gRPC and through the REST gateway (legacy seed 004 bodies).

One live Gantry per module with in-memory providers (a Vast-like one with templates, a TensorDock-like one
without) and a ManualClock; each test starts two hours later, so caches and failure windows are fresh.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gantry.broker.v1 import inventory_pb2, inventory_pb2_grpc, templates_pb2, templates_pb2_grpc
from gantry_server.app import GantryApp
from gantry_server.broker.inventory import Inventory
from gantry_server.clock import ManualClock
from gantry_server.config import BrokerSettings
from tests.conftest import make_settings
from tests.fakes.memory_provider import MemoryProvider, offer, template, transient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def vast_offers():
    return [
        offer("vastai", "101", gpu_type="RTX 4090", price_per_hour=0.45, base_confidence=0.95, cuda_version=12.9,
              machine_id="vastai-machine-7", interruptible=False, min_bid=0.0, location="Texas, US",
              host_properties={"num_gpus": "1", "cpu_arch": "amd64"}),
        offer("vastai", "102", gpu_type="RTX 4090", price_per_hour=1.9, base_confidence=0.95, cuda_version=12.4,
              gpu_count=2, host_properties={"num_gpus": "2", "cpu_arch": "amd64"}),
        offer("vastai", "103", gpu_type="A100", vram_gb=80, price_per_hour=1.6, base_confidence=0.9,
              cuda_version=12.9, host_properties={"num_gpus": "1", "cpu_arch": "amd64"}),
    ]


TEMPLATES = [
    template("a8a44c7363cbca20056020397e3bf072", name="Ollama", image="vastai/ollama", tag="0.15.4", use_ssh=True,
             recommended=True, recommended_disk_space=32, runtype="jupyter", id=338630,
             extra_filters='{"cpu_arch": {"in": ["arm64", "amd64"]}}', created_at=T0),
    template("vllm0001", name="vLLM", image="vllm/vllm-openai", recommended=True, use_ssh=False,
             recommended_disk_space=80, extra_filters='{"cuda_max_good": {"gte": 12.8}, "num_gpus": {"gte": 2}}'),
    template("pytorch01", name="PyTorch", image="pytorch/pytorch", recommended=False, use_ssh=True),
]


@pytest.fixture(scope="module")
async def world(database_url, redis_url, tmp_path_factory):
    clock = ManualClock(T0)
    vast = MemoryProvider("vastai", vast_offers(), templates=TEMPLATES)
    td = MemoryProvider("tensordock", [offer("tensordock", "loc1-rtx4090", gpu_type="RTX 4090", price_per_hour=0.6,
                                             base_confidence=0.3, location="Chubbuck, Idaho, US")],
                        offer_ttl_seconds=30)
    settings = make_settings(database_url, redis_url, tmp_path_factory.mktemp("inventory-rpc"),
                             broker=BrokerSettings(providers=(), fast_verify=False, background_loops=False))
    app = GantryApp(settings, clock=clock, providers={"vastai": vast, "tensordock": td})
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.grpc_addr) as channel, \
                httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=10) as http:
            yield {"app": app, "clock": clock, "vast": vast, "td": td, "channel": channel, "http": http}
    finally:
        if app.rt is not None and app.rt.inventory is not None:
            await app.rt.inventory.drain()
        await app.stop(0)


@pytest.fixture
async def w(world, engine):
    """Each test: two hours later (every cache and failure window expired), providers reset, no failures."""
    from sqlalchemy import delete

    from gantry_server.store.models import broker_offer_failures

    world["clock"].advance(hours=2)
    world["vast"].offers, world["vast"].fail_with, world["vast"].fail_templates_with = vast_offers(), None, None
    world["td"].fail_with = None
    async with engine.begin() as conn:
        await conn.execute(delete(broker_offer_failures))
    return world


def inventory(w) -> inventory_pb2_grpc.InventoryServiceStub:
    return inventory_pb2_grpc.InventoryServiceStub(w["channel"])


def templates(w) -> templates_pb2_grpc.TemplateServiceStub:
    return templates_pb2_grpc.TemplateServiceStub(w["channel"])


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    bad = error_details_pb2.BadRequest()
    for detail in rpc_status.from_call(err).details:
        if detail.Unpack(bad):
            return {v.field: v.description for v in bad.field_violations}
    return {}


# ---------------------------------------------------------------- ListOffers

async def test_list_offers_over_grpc(w):
    response = await inventory(w).ListOffers(inventory_pb2.ListOffersRequest(gpu_type="RTX4090", max_price=2))
    assert [o.id for o in response.offers] == ["vastai-101", "vastai-102", "tensordock-loc1-rtx4090"]
    assert (response.count, response.total) == (3, 3)
    first = response.offers[0]
    assert first.availability_confidence == pytest.approx(0.95) and first.cuda_version == 12.9
    assert first.fetched_at.ToDatetime(tzinfo=timezone.utc) == w["clock"].now()
    assert not response.offers[2].HasField("cuda_version")


async def test_list_offers_over_rest_has_the_legacy_shape(w):
    r = await w["http"].get("/api/v1/inventory", params={"gpu_type": "RTX 4090", "max_price": "2", "limit": "1",
                                                         "offset": "1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["count"], body["total"]) == (1, 3)
    (o,) = body["offers"]
    assert o["id"] == "vastai-102" and o["provider"] == "vastai" and o["provider_id"] == "102"
    assert (o["gpu_type"], o["gpu_count"], o["vram_gb"], o["price_per_hour"]) == ("RTX 4090", 2, 24, 1.9)
    assert o["available"] is True and o["max_duration_hours"] == 0 and RFC3339.match(o["fetched_at"])
    assert o["cuda_version"] == 12.4 and o["machine_id"] is None and o["compatible_templates"] == []
    td = (await w["http"].get("/api/v1/inventory", params={"provider": "tensordock"})).json()["offers"][0]
    assert td["cuda_version"] is None and td["location"] == "Chubbuck, Idaho, US"


async def test_rest_filters_min_cuda_and_template(w):
    cuda = (await w["http"].get("/api/v1/inventory?min_cuda=12.8")).json()
    assert [o["id"] for o in cuda["offers"]] == ["vastai-101", "vastai-103"]  # TensorDock reports no CUDA
    vllm = (await w["http"].get("/api/v1/inventory?template_hash_id=vllm0001")).json()
    assert vllm["total"] == 0  # needs CUDA >= 12.8 and >= 2 GPUs: 102 has 2 GPUs but CUDA 12.4
    w["vast"].update("102", cuda_version=12.8)
    w["clock"].advance(seconds=61)
    vllm = (await w["http"].get("/api/v1/inventory?template_hash_id=vllm0001")).json()
    assert [o["id"] for o in vllm["offers"]] == ["vastai-102"]


@pytest.mark.parametrize(("query", "field", "message"), [
    ("min_vram=-1", "min_vram", "min_vram: must be non-negative"),
    ("max_price=-0.5", "max_price", "max_price: must be non-negative"),
    ("min_reliability=1.5", "min_reliability", "min_reliability: must be between 0 and 1"),
    ("min_availability_confidence=2", "min_availability_confidence",
     "min_availability_confidence: must be between 0 and 1"),
    ("min_cuda=-2", "min_cuda", "min_cuda: must be non-negative"),
    ("gpu_count=-1", "gpu_count", "gpu_count: must be non-negative"),
    ("limit=0", "limit", "limit: must be positive"),
    ("offset=-3", "offset", "offset: must be non-negative"),
    ("provider=nimbus", "provider", "provider: provider not found: nimbus (configured: tensordock, vastai)"),
])
async def test_bad_filters_are_400_naming_the_field(w, query, field, message):
    r = await w["http"].get(f"/api/v1/inventory?{query}", headers={"X-Request-ID": "inv-bad"})
    assert r.status_code == 400 and r.json() == {"error": message, "request_id": "inv-bad"}


async def test_a_filter_that_is_not_a_number_is_400_naming_the_field(w):
    r = await w["http"].get("/api/v1/inventory?min_vram=x")
    assert r.status_code == 400 and "min_vram" in r.json()["error"]


async def test_bad_filters_over_grpc_carry_field_violations(w):
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await inventory(w).ListOffers(inventory_pb2.ListOffersRequest(limit=-1, min_reliability=-1))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(exc.value) == {"limit": "must be positive", "min_reliability": "must be between 0 and 1"}


async def test_unknown_template_is_404_and_template_for_tensordock_is_400(w):
    r = await w["http"].get("/api/v1/inventory?template_hash_id=nope", headers={"X-Request-ID": "t-404"})
    assert r.status_code == 404 and r.json() == {"error": "template not found: nope", "request_id": "t-404"}
    r = await w["http"].get("/api/v1/inventory?template_hash_id=vllm0001&provider=tensordock")
    assert r.status_code == 400 and r.json()["error"].startswith("provider: template filters apply only to")


async def test_every_provider_failing_is_503_and_one_failing_is_not(w):
    w["td"].fail_with = transient("tensordock", "No available public IPs")
    ok = await w["http"].get("/api/v1/inventory")
    assert ok.status_code == 200 and ok.json()["total"] == 3
    w["vast"].fail_with = transient("vastai")
    w["clock"].advance(minutes=20)  # older than any data we may still serve
    r = await w["http"].get("/api/v1/inventory", headers={"X-Request-ID": "all-down"})
    assert r.status_code == 503
    assert r.json() == {"error": "all providers failed: vastai list_offers failed: HTTP 502 bad gateway; "
                                 "tensordock list_offers failed: No available public IPs", "request_id": "all-down"}
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await inventory(w).ListOffers(inventory_pb2.ListOffersRequest(provider="vastai"))
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert exc.value.details() == "vastai list_offers failed: HTTP 502 bad gateway"


# ---------------------------------------------------------------- GetOffer

async def test_get_offer_is_the_bare_offer_and_agrees_with_the_list(w):
    listed = (await w["http"].get("/api/v1/inventory?max_price=1")).json()["offers"]
    for o in listed:
        r = await w["http"].get(f"/api/v1/inventory/{o['id']}")
        assert r.status_code == 200 and r.json() == o
    expensive = await w["http"].get("/api/v1/inventory/vastai-103")  # filtered out above, still there (defect 4)
    assert expensive.status_code == 200 and expensive.json()["gpu_type"] == "A100"
    got = await inventory(w).GetOffer(inventory_pb2.GetOfferRequest(id="vastai-101"))
    assert got.offer.price_per_hour == 0.45


async def test_unknown_offer_is_404(w):
    r = await w["http"].get("/api/v1/inventory/vastai-999", headers={"X-Request-ID": "o-404"})
    assert r.status_code == 404 and r.json() == {"error": "offer not found: vastai-999", "request_id": "o-404"}
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await inventory(w).GetOffer(inventory_pb2.GetOfferRequest(id="nimbus-1"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------- ListCompatibleTemplates

async def test_compatible_templates_of_a_vast_offer(w):
    r = await w["http"].get("/api/v1/inventory/vastai-101/compatible-templates")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["offer_id"] == "vastai-101" and body["gpu_type"] == "RTX 4090" and body["vram_gb"] == 24
    assert [t["hash_id"] for t in body["compatible_templates"]] == ["a8a44c7363cbca20056020397e3bf072", "pytorch01"]
    assert body["count"] == 2 and body["compatible_templates"][0] == {
        "hash_id": "a8a44c7363cbca20056020397e3bf072", "name": "Ollama", "image": "vastai/ollama",
        "recommended_disk_space": 32}


async def test_compatible_templates_of_another_provider_is_an_empty_list_with_a_note(w):
    body = (await w["http"].get("/api/v1/inventory/tensordock-loc1-rtx4090/compatible-templates")).json()
    assert body["compatible_templates"] == [] and body["count"] == 0
    assert body["provider"] == "tensordock" and body["note"] == "templates are only available for Vast.ai offers"
    r = await w["http"].get("/api/v1/inventory/vastai-999/compatible-templates")
    assert r.status_code == 404 and r.json()["error"] == "offer not found: vastai-999"
    grpc_answer = await inventory(w).ListCompatibleTemplates(
        inventory_pb2.ListCompatibleTemplatesRequest(id="tensordock-loc1-rtx4090"))
    assert grpc_answer.note and not grpc_answer.HasField("gpu_type")


# ---------------------------------------------------------------- ListOfferHealth

async def test_offer_health_after_a_failure(w):
    inv = w["app"].rt.inventory
    await inv.record_failure(await inv.get_offer("vastai-101"), "stale_inventory", "no_such_ask")
    body = (await w["http"].get("/api/v1/offer-health")).json()
    assert body["count"] == 1
    (h,) = body["offers"]
    assert (h["offer_id"], h["recent_failures"], h["confidence_multiplier"], h["last_failure_type"]) == (
        "vastai-101", 1, 0.7, "stale_inventory")
    assert h["is_suppressed"] is False and h["suppressed_until"] is None and RFC3339.match(h["last_failure"])
    assert body["gpu_types"] == [{"gpu_type_key": "vastai:RTX 4090", "failed_offer_count": 1, "is_degraded": False,
                                  "degradation_applied": None}]
    listed = (await w["http"].get("/api/v1/inventory/vastai-101")).json()
    assert listed["availability_confidence"] == pytest.approx(0.95 * 0.7)
    empty = await inventory(w).ListOfferHealth(inventory_pb2.ListOfferHealthRequest(provider="tensordock"))
    assert (empty.count, list(empty.offers), list(empty.gpu_types)) == (0, [], [])


# ---------------------------------------------------------------- TemplateService

async def test_list_templates_with_filters(w):
    all_ = (await w["http"].get("/api/v1/templates")).json()
    assert all_["count"] == 3 and [t["name"] for t in all_["templates"]] == ["Ollama", "vLLM", "PyTorch"]
    ollama = all_["templates"][0]
    assert ollama["id"] == 338630 and ollama["tag"] == "0.15.4" and ollama["use_ssh"] is True
    assert ollama["extra_filters"] == '{"cpu_arch": {"in": ["arm64", "amd64"]}}' and RFC3339.match(ollama["created_at"])
    assert all_["templates"][1]["created_at"] is None

    async def names(query: str) -> list[str]:
        return [t["name"] for t in (await w["http"].get(f"/api/v1/templates?{query}")).json()["templates"]]

    assert await names("name=OLL") == ["Ollama"]
    assert await names("image=pytorch") == ["PyTorch"]
    assert await names("recommended=true") == ["Ollama", "vLLM"]
    assert await names("use_ssh=false") == ["vLLM"]
    assert await names("recommended=true&use_ssh=true") == ["Ollama"]
    grpc_answer = await templates(w).ListTemplates(templates_pb2.ListTemplatesRequest(recommended=False))
    assert [t.hash_id for t in grpc_answer.templates] == ["pytorch01"]


async def test_get_template_and_404(w):
    r = await w["http"].get("/api/v1/templates/vllm0001")
    assert r.status_code == 200 and r.json()["image"] == "vllm/vllm-openai"
    missing = await w["http"].get("/api/v1/templates/nope", headers={"X-Request-ID": "tpl-404"})
    assert missing.status_code == 404 and missing.json() == {"error": "template not found: nope",
                                                             "request_id": "tpl-404"}


async def test_template_provider_failure_serves_the_last_catalogue_else_503(w, engine):
    assert (await w["http"].get("/api/v1/templates")).json()["count"] == 3
    w["vast"].fail_templates_with = transient("vastai", operation="list_templates")
    w["clock"].advance(hours=1, seconds=1)  # the catalogue is cached for an hour: this asks the provider again
    assert (await w["http"].get("/api/v1/templates")).json()["count"] == 3  # older catalogue beats an error
    app = w["app"]
    saved = app.rt.inventory
    app.rt.inventory = Inventory({"vastai": w["vast"]}, engine, w["clock"])  # a replica that never had one
    try:
        r = await w["http"].get("/api/v1/templates")
        assert r.status_code == 503 and r.json()["error"] == (
            "failed to list templates: vastai list_templates failed: HTTP 502 bad gateway")
    finally:
        await app.rt.inventory.aclose()
        app.rt.inventory = saved


async def test_without_a_template_provider_templates_are_a_clear_400(w, engine):
    app = w["app"]
    saved = app.rt.inventory
    app.rt.inventory = Inventory({"tensordock": w["td"]}, engine, w["clock"])
    try:
        for path in ("/api/v1/templates", "/api/v1/templates/vllm0001", "/api/v1/inventory?template_hash_id=x"):
            r = await w["http"].get(path, headers={"X-Request-ID": "no-vast"})
            assert r.status_code == 400, path
            assert r.json() == {"error": "no template provider configured (vastai)", "request_id": "no-vast"}
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await templates(w).ListTemplates(templates_pb2.ListTemplatesRequest())
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await app.rt.inventory.aclose()
        app.rt.inventory = saved
