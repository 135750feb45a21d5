"""Seed 002's legacy launch over REST, signed the way the stock miner signs it (v1, sr25519, the signature over the
sha256 of the exact body bytes): POST /instances/{chute_id}/ answers 202 with the instance, PATCH
/instances/{chute_id}/{instance_id} answers it with `verified` (false: Gantry has nothing to verify a legacy
instance with, so it stays inactive; docs/instances.md), and an instance something verified is activated through
the launcher's activation (audit, compute history, instance_activated).

The server runs on a ManualClock with the outbox relay off, so the events a step queued are read from the outbox.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import orjson
import pytest
from sqlalchemy import delete, insert, select, update

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry_client import Signer
from gantry_server.app import GantryApp
from gantry_server.clock import ManualClock
from gantry_server.config import MinerSettings
from gantry_server.store.models import (chutes, event_outbox, images, instance_audit, instance_compute_history,
                                        instance_nodes, instances, nodes, servers, users)

from ..conftest import ADMIN_METADATA, make_settings

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
MINER_SEED = bytes(range(32))
OTHER_SEED = bytes(range(9, 41))
HOST, OTHER_HOST = "8.8.8.8", "1.1.1.1"  # public addresses: the create refuses private ones
US = timedelta(microseconds=1)


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture(scope="module")
async def app(database_url, redis_url, tmp_path_factory, clock):
    gantry = GantryApp(make_settings(database_url, redis_url, tmp_path_factory.mktemp("legacy"),
                                     miner=MinerSettings(background_loops=False)), clock=clock)
    await gantry.start()
    yield gantry
    await gantry.stop(0)


@pytest.fixture
async def http(app):
    async with httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=30) as client:
        yield client


def signer(clock, seed: bytes) -> Signer:
    return Signer.from_sr25519_seed(seed, clock=lambda: clock.now().timestamp())


@pytest.fixture
async def miners(app, channel, clean_db, redis, clock):
    """Two registered miners, an owner, an image, a legacy chute (chutes 0.2.9, one GPU), a modern one and a
    server with two verified H100s per miner, verified at the miner's public host."""
    clock.advance(microseconds=(NOW - clock.now()) // US)
    miner, other = signer(clock, MINER_SEED), signer(clock, OTHER_SEED)
    await admin_pb2_grpc.AdminServiceStub(channel).UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(
        nodes=[admin_pb2.MetagraphNode(hotkey=miner.hotkey, netuid=64, node_id=7),
               admin_pb2.MetagraphNode(hotkey=other.hotkey, netuid=64, node_id=8)]),
        metadata=ADMIN_METADATA)
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(users).values(user_id="u-owner", username="owner"))
        await conn.execute(insert(images).values(image_id="img-1", user_id="u-owner", name="vllm", tag="0.9",
                                                 created_at=NOW, updated_at=NOW))
        for chute_id, version in (("chute-legacy", "0.2.9"), ("chute-modern", "0.5.5")):
            await conn.execute(insert(chutes).values(
                chute_id=chute_id, user_id="u-owner", name=chute_id, image_id="img-1", version="1",
                chutes_version=version, public=True, node_selector={"gpu_count": 1}, created_at=NOW,
                updated_at=NOW))
        for i, (who, host) in enumerate(((miner, HOST), (other, OTHER_HOST))):
            await conn.execute(insert(servers).values(server_id=f"srv-{i}", name=f"box-{i}", ip=host,
                                                      miner_hotkey=who.hotkey, netuid=64, created_at=NOW))
            await conn.execute(insert(nodes), [dict(
                uuid=f"GPU-{i}-{g}", miner_hotkey=who.hotkey, server_id=f"srv-{i}", gpu_identifier="h100",
                name="NVIDIA H100", memory=85_899_345_920, processors=132, clock_rate=1980.0,
                max_threads_per_processor=2048, device_index=g, verification_host=host, verification_port=8000 + g,
                created_at=NOW, verified_at=NOW) for g in range(2)])
        await conn.execute(delete(event_outbox))
    return miner, other


def body(**fields) -> bytes:
    """What the stock miner's agent sends: orjson, compact, keys in insertion order."""
    return orjson.dumps(fields)


async def signed(http, method: str, path: str, who: Signer, raw: bytes) -> httpx.Response:
    return await http.request(method, path, content=raw, headers=who.v1_body_headers(raw))


async def create(http, who: Signer, *, chute_id: str = "chute-legacy", gpus=("GPU-0-0",), host: str = HOST,
                 port: int = 32001) -> httpx.Response:
    return await signed(http, "POST", f"/instances/{chute_id}/", who,
                        body(node_ids=list(gpus), host=host, port=port))


async def activate(http, who: Signer, instance_id: str, *, chute_id: str = "chute-legacy") -> httpx.Response:
    return await signed(http, "PATCH", f"/instances/{chute_id}/{instance_id}", who, b'{"active":true}')


async def rows(app, table, *where) -> list[dict]:
    async with app.rt.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(select(table).where(*where))).mappings()]


async def outbox(app) -> list[str]:
    return [r["reason"] for r in await rows(app, event_outbox)]


def field_errors(r: httpx.Response) -> list[str]:
    assert r.status_code == 422, r.text
    return [entry["loc"][-1] for entry in r.json()["detail"]]


# -- create ------------------------------------------------------------------------------------------------------
async def test_create_answers_202_with_the_instance_the_miner_reads(app, http, miners):
    miner, _ = miners
    r = await create(http, miner)
    assert r.status_code == 202, r.text
    instance = r.json()
    assert instance["chute_id"] == "chute-legacy" and instance["miner_hotkey"] == miner.hotkey
    assert instance["host"] == HOST and instance["port"] == 32001 and instance["node_ids"] == ["GPU-0-0"]
    assert instance["active"] is False and instance["verified"] is False and instance["config_id"] is None
    [row] = await rows(app, instances, instances.c.instance_id == instance["instance_id"])
    assert row["config_id"] is None and row["miner_uid"] == 7 and row["compute_multiplier"] > 0
    assert [n["node_id"] for n in await rows(app, instance_nodes)] == ["GPU-0-0"]
    assert len(await rows(app, instance_audit, instance_audit.c.instance_id == instance["instance_id"])) == 1
    assert await outbox(app) == []  # instance_created announces launch-config instances only


async def test_a_body_other_than_the_signed_one_is_refused(app, http, miners):
    miner, _ = miners
    signed_body = body(node_ids=["GPU-0-0"], host=HOST, port=32001)
    sent = body(node_ids=["GPU-0-1"], host=HOST, port=32001)
    r = await http.post("/instances/chute-legacy/", content=sent, headers=miner.v1_body_headers(signed_body))
    assert r.status_code == 401, r.text
    assert await rows(app, instances) == []


@pytest.mark.parametrize("fields, named", [
    (dict(host=HOST, port=32001), "node_ids"),
    (dict(node_ids=["GPU-0-0"], host=HOST, port=0), "port"),
    (dict(node_ids=["GPU-0-0"], port=32001), "host"),
    (dict(node_ids=["GPU 0 0"], host=HOST, port=32001), "node_ids[0]"),
    (dict(node_ids=["GPU-0-0"], host="10.0.0.1", port=32001), "host"),
    (dict(node_ids=["GPU-0-0", "GPU-0-1"], host=HOST, port=32001), "node_ids"),
])
async def test_a_bad_create_body_answers_422_naming_the_field(app, http, miners, fields, named):
    miner, _ = miners
    r = await signed(http, "POST", "/instances/chute-legacy/", miner, body(**fields))
    assert field_errors(r) == [named]
    assert await rows(app, instances) == []


async def test_create_refuses_gpus_not_the_callers_or_taken_and_modern_chutes(app, http, miners):
    miner, other = miners
    r = await create(http, miner, gpus=("GPU-1-0",))
    assert r.status_code == 404 and "GPU-1-0 is not one of your registered GPUs" in r.json()["detail"]
    assert (await create(http, miner, chute_id="chute-missing")).status_code == 404
    r = await create(http, miner, chute_id="chute-modern")
    assert r.status_code == 400 and "launch_config" in r.json()["detail"], r.text
    assert (await create(http, miner)).status_code == 202
    r = await create(http, miner, port=32002)
    assert r.status_code == 409 and "already serves another instance" in r.json()["detail"]
    r = await create(http, other, gpus=("GPU-1-0",), host=HOST)
    assert r.status_code == 400 and "another miner" in r.json()["detail"], r.text


# -- activate ------------------------------------------------------------------------------------------------------
async def test_activate_answers_verified_false_and_leaves_an_unverified_instance_inactive(app, http, miners):
    miner, _ = miners
    instance_id = (await create(http, miner)).json()["instance_id"]
    r = await activate(http, miner, instance_id)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["instance_id"] == instance_id and answer["verified"] is False and answer["active"] is False
    [row] = await rows(app, instances, instances.c.instance_id == instance_id)
    assert row["active"] is False and row["activated_at"] is None
    assert await rows(app, instance_compute_history) == [] and await outbox(app) == []


async def test_activating_a_verified_legacy_instance_runs_the_launch_activation(app, http, miners, clock):
    miner, _ = miners
    instance_id = (await create(http, miner)).json()["instance_id"]
    async with app.rt.engine.begin() as conn:  # what a legacy verifier would record; Gantry has none yet
        await conn.execute(update(instances).where(instances.c.instance_id == instance_id).values(verified=True))
    clock.advance(seconds=90)
    r = await activate(http, miner, instance_id)
    assert r.status_code == 200, r.text
    assert r.json()["verified"] is True and r.json()["active"] is True
    [audit] = await rows(app, instance_audit, instance_audit.c.instance_id == instance_id)
    assert audit["activated_at"] == NOW + timedelta(seconds=90)
    history = await rows(app, instance_compute_history, instance_compute_history.c.instance_id == instance_id)
    assert sorted((h["started_at"], h["ended_at"]) for h in history) == [
        (NOW, NOW + timedelta(seconds=90)), (NOW + timedelta(seconds=90), None)]
    assert await outbox(app) == ["instance_activated"]


async def test_activate_answers_404_for_another_miners_instance(app, http, miners):
    miner, other = miners
    instance_id = (await create(http, miner)).json()["instance_id"]
    r = await activate(http, other, instance_id)
    assert r.status_code == 404 and instance_id in r.json()["detail"]
    assert (await activate(http, miner, instance_id, chute_id="chute-modern")).status_code == 404
    assert (await activate(http, miner, "no-such-instance")).status_code == 404


async def test_activate_with_active_false_answers_422_naming_active(app, http, miners):
    miner, _ = miners
    instance_id = (await create(http, miner)).json()["instance_id"]
    raw = b'{"active":false}'
    r = await signed(http, "PATCH", f"/instances/chute-legacy/{instance_id}", miner, raw)
    assert field_errors(r) == ["active"]
