"""VastAiProvider against the fake Vast.ai server: every wire quirk of domain-broker Part 2 §2.2 / §9.5.

Real HTTP on loopback; the clock is manual and the sleep records the delays it is asked for.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from dataclasses import replace
from datetime import datetime, timezone

import asyncssh
import httpx
import pytest
from prometheus_client import REGISTRY

from gantry_server.providers.base import CreateSpec, ErrorKind, InstanceState, OfferQuery, ProviderError
from gantry_server.providers.vastai import POLICY, VastAiProvider
from tests.fakes import RATE_LIMIT_BODY, FakeVastAi
from tests.fakes.ssh_hosts import SshHostPool

KEY = "vast-key-0123456789abcdef"
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFh consumer"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJi broker"
FAST = replace(POLICY, rate_per_second=1000.0, burst=1000)  # the real backoff and breaker, no rate waits


@pytest.fixture
async def fake():
    async with FakeVastAi(api_key=KEY) as f:
        yield f


@pytest.fixture
async def vast(fake, clock, sleep):
    provider = VastAiProvider(api_key=KEY, base_url=fake.base_url, clock=clock, sleep=sleep, policy=FAST)
    yield provider
    await provider.aclose()


async def an_offer(fake: FakeVastAi, vast: VastAiProvider, **fields):
    bundle_id = fake.add_offer(**fields)
    return next(o for o in await vast.list_offers(OfferQuery(min_reliability=0)) if o.provider_id == str(bundle_id))


def spec(offer, label: str = "gantry-dep1-sess1", keys=(KEY_A,), **kw) -> CreateSpec:
    return CreateSpec(offer=offer, label=label, ssh_public_keys=tuple(keys), disk_gb=kw.pop("disk_gb", 50), **kw)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"provider": "vastai", **labels}) or 0.0


# -- auth --------------------------------------------------------------------------------------------------------

async def test_every_call_carries_the_bearer_key(fake, vast):
    offer = await an_offer(fake, vast)
    instance = await vast.create_instance(spec(offer))
    await vast.get_instance(instance.instance_id)
    await vast.list_instances()
    await vast.destroy_instance(instance.instance_id)
    assert fake.requests and all(r.headers["authorization"] == f"Bearer {KEY}" for r in fake.requests)
    assert all(r.headers["accept"] == "application/json" for r in fake.requests)


async def test_a_wrong_key_is_an_auth_error_that_does_not_repeat_the_key(fake, clock, sleep):
    wrong = "vast-wrong-key-zyxwvutsrq"
    provider = VastAiProvider(api_key=wrong, base_url=fake.base_url, clock=clock, sleep=sleep, policy=FAST)
    try:
        with pytest.raises(ProviderError) as err:
            await provider.list_offers(OfferQuery())
    finally:
        await provider.aclose()
    assert err.value.kind is ErrorKind.AUTH and err.value.status == 401
    assert "Invalid user key" in str(err.value) and wrong not in str(err.value)  # the fake echoes the header
    assert sleep.take() == []  # auth errors are not retried


# -- offers ------------------------------------------------------------------------------------------------------

async def test_search_pushes_every_filter_into_the_query(fake, vast):
    await vast.list_offers(OfferQuery(gpu_type="RTX 4090", min_vram=24, max_price=0.5, min_cuda=12.2,
                                      location="Texas, US"))
    await vast.list_offers(OfferQuery(min_reliability=0.8))
    first, second = (json.loads(r.query["q"]) for r in fake.requests if r.route == "GET /bundles/")
    assert first == {"rentable": {"eq": True}, "type": "on-demand", "reliability2": {"gte": 0.95},
                     "gpu_name": {"eq": "RTX 4090"}, "gpu_ram": {"gte": 24576}, "dph_total": {"lte": 0.5},
                     "cuda_max_good": {"gte": 12.2}, "geolocation": {"in": ["Texas, US"]}}
    assert second == {"rentable": {"eq": True}, "type": "on-demand", "reliability2": {"gte": 0.8}}


async def test_only_offers_matching_the_filters_come_back(fake, vast):
    cheap = fake.add_offer(gpu_name="RTX 4090", dph_total=0.40)
    fake.add_offer(gpu_name="A100 SXM4", gpu_ram=81920, dph_total=1.60)
    fake.add_offer(gpu_name="RTX 4090", dph_total=0.30, reliability2=0.90)  # below the default floor
    offers = await vast.list_offers(OfferQuery(max_price=1.0))
    assert [o.provider_id for o in offers] == [str(cheap)]


async def test_a_bundle_maps_to_an_offer(fake, vast):
    offer = await an_offer(fake, vast, gpu_name="Tesla V100", num_gpus=2, gpu_ram=16384 + 1000, dph_total=0.5,
                           min_bid=0.2, reliability2=0.9, geolocation="Quebec, CA", cuda_max_good=12.2,
                           machine_id=4242)
    assert (offer.offer_id, offer.gpu_type, offer.gpu_count, offer.vram_gb) == (
        f"vastai-{offer.provider_id}", "V100", 2, 16)
    assert (offer.price_per_hour, offer.location, offer.reliability, offer.cuda_version) == (
        0.5, "Quebec, CA", 0.9, 12.2)
    assert offer.machine_id == "vastai-machine-4242" and offer.interruptible is True and offer.min_bid == 0.2
    assert offer.available is True
    assert offer.base_confidence == pytest.approx(0.6 * 0.9 + 0.4 * (0.2 / 0.5))
    assert offer.host_properties["num_gpus"] == 2 and isinstance(offer.host_properties["num_gpus"], int)
    assert offer.host_properties["gpu_name"] == "Tesla V100" and offer.host_properties["compute_cap"] == 890


async def test_on_demand_offers_have_full_bid_safety_and_a_rented_bundle_is_unavailable(fake, vast):
    on_demand = await an_offer(fake, vast, gpu_name="NVIDIA GeForce RTX 3090", min_bid=0.0, reliability2=0.98)
    rented = await an_offer(fake, vast, rented=True)
    assert on_demand.gpu_type == "RTX 3090" and on_demand.interruptible is False
    assert on_demand.base_confidence == pytest.approx(0.6 * 0.98 + 0.4)
    assert rented.available is False


# -- create ------------------------------------------------------------------------------------------------------

async def test_create_sends_the_documented_body_and_attaches_every_key(fake, vast):
    offer = await an_offer(fake, vast, dph_total=0.42)
    instance = await vast.create_instance(spec(offer, keys=(KEY_A, KEY_B), disk_gb=80, env={"HF_TOKEN": "x"},
                                               on_start_cmd="echo started"))
    (body,) = fake.bodies("PUT /asks/{id}/")
    assert body == {"client_id": "me", "disk": 80, "label": "gantry-dep1-sess1", "runtype": "ssh_proxy",
                    "onstart": "echo started", "ssh_key": KEY_A, "image": "nvidia/cuda:12.6.3-runtime-ubuntu22.04",
                    "env": {"HF_TOKEN": "x"}}
    assert fake.count("POST /instances/{id}/ssh/") == 2
    held = fake.instances[instance.instance_id]
    assert held.authorized_keys == [KEY_A, KEY_B]
    assert (instance.state, instance.ssh_user, instance.label, instance.price_per_hour) == (
        InstanceState.STARTING, "root", "gantry-dep1-sess1", 0.42)


async def test_create_from_a_template_sends_its_hash_instead_of_an_image(fake, vast):
    fake.add_template("tmpl-hash-1", name="vLLM", image="vllm/vllm-openai")
    offer = await an_offer(fake, vast)
    await vast.create_instance(spec(offer, template_hash_id="tmpl-hash-1", launch_mode="entrypoint"))
    (body,) = fake.bodies("PUT /asks/{id}/")
    assert body["template_hash_id"] == "tmpl-hash-1" and "image" not in body
    assert body["runtype"] == "ssh_proxy" and body["ssh_key"] == KEY_A


async def test_entrypoint_mode_keeps_the_image_entrypoint_and_publishes_ports(fake, vast):
    offer = await an_offer(fake, vast)
    instance = await vast.create_instance(spec(offer, image="vllm/vllm-openai:latest", launch_mode="entrypoint",
                                               exposed_ports=(8000,), env={"VLLM_MODEL": "m"}))
    (body,) = fake.bodies("PUT /asks/{id}/")
    assert body["runtype"] == "args" and body["image"] == "vllm/vllm-openai:latest"
    assert body["env"] == {"VLLM_MODEL": "m", "-p 8000:8000": "1"}
    fake.set_status(instance.instance_id, "running")
    current = await vast.get_instance(instance.instance_id)
    assert current.ports == {8000: fake.instances[instance.instance_id].ports[8000]}


async def test_success_false_with_a_contract_id_is_a_success(fake, vast):
    fake.create_reply = "success_false"
    instance = await vast.create_instance(spec(await an_offer(fake, vast)))
    assert fake.alive == {instance.instance_id}


async def test_no_contract_is_an_error_and_rents_nothing(fake, vast):
    fake.create_reply = "no_contract"
    with pytest.raises(ProviderError) as err:
        await vast.create_instance(spec(await an_offer(fake, vast)))
    assert err.value.kind is ErrorKind.INVALID and "no contract" in err.value.detail
    assert fake.alive == set()


async def test_a_rented_or_withdrawn_offer_is_stale_inventory_at_once(fake, vast, sleep):
    offer = await an_offer(fake, vast)
    withdrawn = await an_offer(fake, vast)
    await vast.create_instance(spec(offer))
    fake.remove_offer(int(withdrawn.provider_id))
    for gone in (offer, withdrawn):
        with pytest.raises(ProviderError) as err:
            await vast.create_instance(spec(gone, label="gantry-dep1-sess2"))
        assert err.value.kind is ErrorKind.STALE_INVENTORY and "no_such_ask" in err.value.detail
    assert fake.count("PUT /asks/{id}/") == 3 and sleep.take() == []
    assert len(fake.alive) == 1


async def test_a_rate_limited_create_is_retried_and_rents_once(fake, vast, sleep):
    offer = await an_offer(fake, vast)
    fake.rate_limit_next(2, route="PUT /asks/{id}/")
    instance = await vast.create_instance(spec(offer))
    assert fake.alive == {instance.instance_id} and fake.count("PUT /asks/{id}/") == 3
    assert sleep.take() == [1.0, 2.0]


async def test_a_create_is_not_repeated_after_a_server_error(fake, vast, sleep):
    offer = await an_offer(fake, vast)
    fake.fail_next(1, status=502, route="PUT /asks/{id}/")
    with pytest.raises(ProviderError) as err:
        await vast.create_instance(spec(offer))
    assert err.value.kind is ErrorKind.TRANSIENT
    assert fake.count("PUT /asks/{id}/") == 1 and sleep.take() == []


async def test_a_failing_key_attach_does_not_fail_the_create(fake, vast):
    offer = await an_offer(fake, vast)
    fake.fail_next(100, status=500, route="POST /instances/{id}/ssh/")
    instance = await vast.create_instance(spec(offer))
    assert fake.alive == {instance.instance_id}
    assert fake.instances[instance.instance_id].authorized_keys == [KEY_A]  # the create-time key
    assert fake.count("POST /instances/{id}/ssh/") == 4  # tried, retried 1 s, 2 s, 4 s, then given up


async def test_a_low_balance_warns_but_never_blocks(fake, vast, caplog):
    fake.credit = 1.25
    caplog.set_level(logging.WARNING, logger="gantry_server.providers.vastai")
    await vast.create_instance(spec(await an_offer(fake, vast)))
    await vast.create_instance(spec(await an_offer(fake, vast), label="gantry-dep1-sess2"))
    assert "balance is low" in caplog.text and len(fake.alive) == 2
    assert fake.count("GET /users/current/") == 1  # checked at most every 10 minutes


# -- status, list, destroy, stop ---------------------------------------------------------------------------------

async def test_status_is_unwrapped_and_loading_turns_running(fake, vast):
    fake.boot_polls = 2
    instance = await vast.create_instance(spec(await an_offer(fake, vast)))
    first, second, third = [await vast.get_instance(instance.instance_id) for _ in range(3)]
    assert (first.state, first.raw_status, second.state) == (InstanceState.STARTING, "loading", InstanceState.STARTING)
    held = fake.instances[instance.instance_id]
    assert (third.state, third.ssh_host, third.ssh_port, third.ssh_user) == (
        InstanceState.RUNNING, "ssh5.vast.ai", held.ssh_port, "root")
    assert third.label == "gantry-dep1-sess1" and third.started_at is not None and third.price_per_hour == 0.40


async def test_the_transient_status_allow_list(fake, vast):
    instance = await vast.create_instance(spec(await an_offer(fake, vast)))
    expected = {None: InstanceState.STARTING, "": InstanceState.STARTING, "loading": InstanceState.STARTING,
                "created": InstanceState.STARTING, "creating": InstanceState.STARTING,
                "starting": InstanceState.STARTING, "provisioning": InstanceState.STARTING,
                "booting": InstanceState.STARTING, "running": InstanceState.RUNNING,
                "exited": InstanceState.STOPPED, "stopped": InstanceState.STOPPED, "error": InstanceState.STOPPED,
                "offline": InstanceState.STOPPED}
    seen = {}
    for status in expected:
        fake.set_status(instance.instance_id, status)
        seen[status] = (await vast.get_instance(instance.instance_id)).state
    assert seen == expected


async def test_a_vanished_instance_reads_gone_from_null_or_404_and_is_no_error(fake, vast):
    instance = await vast.create_instance(spec(await an_offer(fake, vast)))
    await fake.vanish(instance.instance_id)
    errors = metric("gpu_provider_api_errors_total", operation="GetInstanceStatus")
    assert (await vast.get_instance(instance.instance_id)).state is InstanceState.GONE  # 200 {"instances": null}
    fake.gone_reply = "404"
    assert (await vast.get_instance(instance.instance_id)).state is InstanceState.GONE
    assert metric("gpu_provider_api_errors_total", operation="GetInstanceStatus") == errors


async def test_an_open_breaker_is_an_error_never_gone(fake, vast):
    instance = await vast.create_instance(spec(await an_offer(fake, vast)))
    fake.fail_next(100, status=503, route="GET /instances/{id}/")
    with pytest.raises(ProviderError):
        await vast.get_instance(instance.instance_id)  # 4 attempts
    with pytest.raises(ProviderError) as err:
        await vast.get_instance(instance.instance_id)  # the 5th failure opens it; the retry is refused
    assert err.value.kind is ErrorKind.TRANSIENT and "circuit breaker open" in err.value.detail
    assert REGISTRY.get_sample_value("gpu_provider_circuit_breaker_state", {"provider": "vastai"}) == 1
    assert fake.count("GET /instances/{id}/") == 5


async def test_the_listing_keeps_only_gantry_labels(fake, vast):
    fake.add_instance("someone-elses-box")
    fake.add_instance("")
    ours = await vast.create_instance(spec(await an_offer(fake, vast)))
    other_deployment = await vast.create_instance(spec(await an_offer(fake, vast), label="gantry-dep2-sess9"))
    listed = await vast.list_instances()
    assert {i.instance_id for i in listed} == {ours.instance_id, other_deployment.instance_id}
    assert {i.label for i in listed} == {"gantry-dep1-sess1", "gantry-dep2-sess9"}


async def test_a_new_instance_can_be_missing_from_the_listing_for_a_while(fake, vast):
    fake.listing_lag = 2
    instance = await vast.create_instance(spec(await an_offer(fake, vast)))
    seen = [[i.instance_id for i in await vast.list_instances()] for _ in range(3)]
    assert seen == [[], [], [instance.instance_id]]


async def test_a_listing_failure_is_an_error_never_an_empty_list(fake, vast):
    await vast.create_instance(spec(await an_offer(fake, vast)))
    fake.fail_next(4, status=502, route="GET /instances/")
    with pytest.raises(ProviderError) as err:
        await vast.list_instances()
    assert err.value.kind is ErrorKind.TRANSIENT
    fake.fail_next(1, status=200, body={"unexpected": True}, route="GET /instances/")
    fake.fail_next(3, status=200, body="<html>", route="GET /instances/")
    with pytest.raises(ProviderError):
        await vast.list_instances()


async def test_destroy_is_idempotent_and_counted_per_instance(fake, vast):
    destroyed = []

    async def on_destroyed(inst):
        destroyed.append(inst.id)

    fake.on_instance_destroyed = on_destroyed
    instance = await vast.create_instance(spec(await an_offer(fake, vast)))
    await vast.destroy_instance(instance.instance_id)
    await vast.destroy_instance(instance.instance_id)  # HTTP 404: already gone counts as destroyed
    assert fake.delete_calls[instance.instance_id] == 2 and fake.alive == set()
    assert destroyed == [instance.instance_id]
    assert (await vast.get_instance(instance.instance_id)).state is InstanceState.GONE


async def test_stop_keeps_the_instance_but_stops_it(fake, vast):
    instance = await vast.create_instance(spec(await an_offer(fake, vast)))
    await vast.stop_instance(instance.instance_id)
    assert fake.bodies("PUT /instances/{id}/") == [{"state": "stopped"}]
    current = await vast.get_instance(instance.instance_id)
    assert current.state is InstanceState.STOPPED and fake.alive == {instance.instance_id}
    await fake.vanish(instance.instance_id)
    with pytest.raises(ProviderError) as err:
        await vast.stop_instance(instance.instance_id)
    assert err.value.kind is ErrorKind.GONE


@pytest.mark.parametrize("bad", ["", "12/../13", "abc", "12%2f3", "1" * 129])
async def test_malformed_instance_ids_never_reach_the_provider(fake, vast, bad):
    for call in (vast.get_instance, vast.destroy_instance, vast.stop_instance):
        with pytest.raises(ProviderError) as err:
            await call(bad)
        assert err.value.kind is ErrorKind.INVALID
    assert fake.requests == []


# -- rate limit and 429 ------------------------------------------------------------------------------------------

async def test_one_request_per_second_with_a_burst_of_two(fake, clock, sleep):
    provider = VastAiProvider(api_key=KEY, base_url=fake.base_url, clock=clock, sleep=sleep)  # the real policy
    try:
        fake.add_offer()
        for _ in range(3):
            await provider.list_offers(OfferQuery())
        assert sleep.take() == [1.0]
        clock.advance(seconds=60)  # the bucket refills to its burst
        (offer,) = await provider.list_offers(OfferQuery())
        await provider.create_instance(spec(offer))  # balance + create + attach: 3 tokens
        assert sleep.take() == [1.0, 1.0]
    finally:
        await provider.aclose()


async def test_429_is_retried_after_1_2_and_4_seconds(fake, vast, sleep):
    fake.add_offer()
    fake.rate_limit_next(3, route="GET /bundles/")
    calls_error = metric("gpu_provider_api_calls_total", operation="ListOffers", status="error")
    errors = metric("gpu_provider_api_errors_total", operation="ListOffers")
    assert len(await vast.list_offers(OfferQuery())) == 1
    assert sleep.take() == [1.0, 2.0, 4.0]
    assert metric("gpu_provider_api_calls_total", operation="ListOffers", status="error") == calls_error + 3
    assert metric("gpu_provider_api_errors_total", operation="ListOffers") == errors


async def test_429_after_the_final_attempt_is_one_transient_error(fake, vast, sleep):
    fake.rate_limit_next(4, route="GET /bundles/")
    errors = metric("gpu_provider_api_errors_total", operation="ListOffers")
    with pytest.raises(ProviderError) as err:
        await vast.list_offers(OfferQuery())
    assert err.value.kind is ErrorKind.TRANSIENT and err.value.status == 429
    assert RATE_LIMIT_BODY["msg"] in err.value.detail
    assert sleep.take() == [1.0, 2.0, 4.0] and fake.count("GET /bundles/") == 4
    assert metric("gpu_provider_api_errors_total", operation="ListOffers") == errors + 1


# -- templates ---------------------------------------------------------------------------------------------------

async def test_recommended_templates_parsed_and_cached_for_an_hour(fake, vast, clock):
    fake.add_template("h-vllm", name="vLLM", image="vllm/vllm-openai",
                      extra_filters={"cuda_max_good": {"gte": 12.4}, "num_gpus": {"gte": 1}},
                      created_at=1714000000.5, recommended_disk_space=64)
    fake.add_template("h-private", recommended=False)
    (template,) = await vast.list_templates()
    assert (template.hash_id, template.name, template.image, template.recommended_disk_space) == (
        "h-vllm", "vLLM", "vllm/vllm-openai", 64)
    assert json.loads(template.extra_filters) == {"cuda_max_good": {"gte": 12.4}, "num_gpus": {"gte": 1}}
    assert template.created_at == datetime.fromtimestamp(1714000000.5, tz=timezone.utc)
    (request,) = [r for r in fake.requests if r.route == "GET /template/"]
    assert json.loads(request.query["select_filters"]) == {"recommended": {"eq": True}}
    assert (await vast.get_template("h-vllm")) == template and await vast.get_template("nope") is None
    assert fake.count("GET /template/") == 1
    clock.advance(minutes=61)
    await vast.list_templates()
    assert fake.count("GET /template/") == 2


# -- the fake as infrastructure for other tests ------------------------------------------------------------------

async def test_an_ssh_hook_decides_the_reported_endpoint(fake, vast):
    async def backed_by_ssh(inst):
        return ("127.0.0.1", 2222)

    fake.on_instance_created = backed_by_ssh
    instance = await vast.create_instance(spec(await an_offer(fake, vast)))
    fake.set_status(instance.instance_id, "running")
    current = await vast.get_instance(instance.instance_id)
    assert (current.ssh_host, current.ssh_port, current.ports.get(22)) == ("127.0.0.1", 2222, 2222)


async def test_instances_backed_by_real_ssh_accept_attached_keys_and_die_with_destroy(fake, vast, tmp_path):
    create_key, attached_key = (asyncssh.generate_private_key("ssh-ed25519") for _ in range(2))
    pool = SshHostPool(tmp_path).attach(fake)
    try:
        instance = await vast.create_instance(spec(await an_offer(fake, vast), keys=(
            create_key.export_public_key().decode(), attached_key.export_public_key().decode())))
        fake.set_status(instance.instance_id, "running")
        current = await vast.get_instance(instance.instance_id)
        async with asyncssh.connect(current.ssh_host, port=current.ssh_port, username=current.ssh_user,
                                    client_keys=[attached_key], known_hosts=None) as conn:
            assert (await conn.run("echo ok", check=True)).stdout.strip() == "ok"
        await vast.destroy_instance(instance.instance_id)
        with pytest.raises(OSError):
            await asyncssh.connect(current.ssh_host, port=current.ssh_port, username="root",
                                   client_keys=[create_key], known_hosts=None)
    finally:
        await pool.aclose()


async def test_the_fake_serves_threads_and_other_processes():
    fake = FakeVastAi(api_key=KEY)
    fake.add_offer(gpu_name="RTX 4090")
    base_url = fake.start_thread()
    try:
        reply = await asyncio.to_thread(httpx.get, base_url + "/bundles/", params={"q": "{}"},
                                        headers={"Authorization": f"Bearer {KEY}"})
        assert [o["gpu_name"] for o in reply.json()["offers"]] == ["RTX 4090"]
        code = ("import asyncio; from gantry_server.config import Settings; "
                "from gantry_server.providers.base import OfferQuery; "
                "from gantry_server.providers.vastai import VastAiProvider; "
                "b = Settings.from_env().broker; "
                "p = VastAiProvider(api_key=b.vastai_api_key, base_url=b.vastai_base_url); "
                "print([o.gpu_type for o in asyncio.run(p.list_offers(OfferQuery()))])")
        env = {**os.environ, "GANTRY_BROKER_PROVIDERS": "vastai", "GANTRY_VASTAI_API_KEY": KEY,
               "GANTRY_VASTAI_BASE_URL": base_url}
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert out.decode().strip() == "['RTX 4090']"
    finally:
        fake.stop_thread()
