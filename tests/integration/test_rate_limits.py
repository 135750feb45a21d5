"""Rate limits (Redis, shared by replicas) on the anonymous and cheap paths, and the cap on open streams.

The server runs with tiny limits (config.RateLimitSettings) on a ManualClock: the window moves only when the test
moves the clock. Each refusal is what a flooding caller sees (429 / RESOURCE_EXHAUSTED with a retry delay) and
leaves nothing behind (no nonce issued, no session rented).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timezone

import grpc
import httpx
import pytest
from bittensor_wallet import Keypair
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import func, select

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry.broker.v1 import inventory_pb2, inventory_pb2_grpc
from gantry.miner.v1 import miner_pb2, miner_pb2_grpc
from gantry.servers.v1 import servers_pb2, servers_pb2_grpc
from gantry_server.app import GantryApp
from gantry_server.clock import ManualClock
from gantry_server.config import ConfigError, MinerSettings, RateLimitSettings, Settings
from gantry_server.store.models import broker_sessions

from ..conftest import ADMIN_METADATA, make_settings

ALICE = Keypair.create_from_uri("//Alice")
BOB = Keypair.create_from_uri("//Bob")
START = datetime(2026, 1, 1, 0, 0, 30, tzinfo=timezone.utc)
LIMITS = RateLimitSettings(rates=(("nonce", 3, 60), ("session_create", 2, 60), ("inventory", 2, 60)),
                           streams_per_caller=2, streams_per_process=3)
CREATE = {"consumer_id": "me", "offer_id": "simulated-1001", "workload_type": "interactive", "reservation_hours": 1}


@pytest.fixture(scope="module")
async def limited(database_url, redis_url, tmp_path_factory):
    gantry = GantryApp(make_settings(database_url, redis_url, tmp_path_factory.mktemp("limits"), limits=LIMITS,
                                     trusted_proxies=("127.0.0.1/32",),
                                     miner=MinerSettings(background_loops=False)), clock=ManualClock(START))
    await gantry.start()
    yield gantry
    await gantry.stop(0)


@pytest.fixture(scope="module")
async def ch(limited):
    async with grpc.aio.insecure_channel(limited.grpc_addr) as channel:
        yield channel


@pytest.fixture(scope="module")
async def rest(limited):
    async with httpx.AsyncClient(base_url=f"http://{limited.http_addr}", timeout=10) as client:
        yield client


@pytest.fixture
async def fresh(limited, ch, clean_db, redis):
    """Empty database and Redis; Alice and Bob registered miners; the clock at a new window."""
    limited.rt.clock.advance(seconds=60)
    await admin_pb2_grpc.AdminServiceStub(ch).UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(nodes=[
        admin_pb2.MetagraphNode(hotkey=kp.ss58_address, netuid=64, node_id=i, ip=f"203.0.113.{i}", ip_type=4)
        for i, kp in enumerate((ALICE, BOB), start=1)]), metadata=ADMIN_METADATA)
    return limited


async def _nonce_keys(redis) -> int:
    from gantry_server.store import redis_keys

    return len([k async for k in redis.scan_iter(match=redis_keys.attestation_nonce("*"))])


async def test_anonymous_nonce_issuer_answers_429_past_the_limit_per_ip_and_issues_nothing(fresh, rest, redis):
    for _ in range(3):
        assert (await rest.get("/servers/nonce")).status_code == 200
    refused = await rest.get("/servers/nonce")
    assert refused.status_code == 429
    assert "rate limit" in refused.json()["detail"] and "at most 3 requests per 60 s" in refused.json()["detail"]
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert await _nonce_keys(redis) == 3
    # /instances/nonce shares the bucket (both issue IP-bound attestation nonces)
    assert (await rest.get("/instances/nonce")).status_code == 429
    # another client behind the trusted proxy has its own count
    assert (await rest.get("/servers/nonce", headers={"X-Forwarded-For": "198.51.100.9"})).status_code == 200
    fresh.rt.clock.advance(seconds=60)  # next window
    assert (await rest.get("/servers/nonce")).status_code == 200


async def test_grpc_nonce_flood_is_resource_exhausted_with_retry_info(fresh, ch):
    stub = servers_pb2_grpc.ServerServiceStub(ch)
    for _ in range(3):
        await stub.GetNonce(servers_pb2.GetNonceRequest())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetNonce(servers_pb2.GetNonceRequest())
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(err.value)
    kinds = {d.type_url.rsplit(".", 1)[-1]: d for d in status.details}
    retry = error_details_pb2.RetryInfo()
    kinds["RetryInfo"].Unpack(retry)
    assert 0 < retry.retry_delay.seconds <= 60


async def _sessions(engine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(broker_sessions))).scalar_one()


async def test_session_create_is_limited_and_the_refused_one_rents_nothing(fresh, rest, clean_db):
    for offer in ("simulated-1001", "simulated-1002"):
        assert (await rest.post("/api/v1/sessions", json={**CREATE, "offer_id": offer})).status_code == 201
    refused = await rest.post("/api/v1/sessions", json={**CREATE, "offer_id": "simulated-1003"})
    assert refused.status_code == 429 and "rate limit" in refused.json()["error"]
    assert await _sessions(clean_db) == 2


async def test_inventory_is_limited_on_both_faces(fresh, rest, ch):
    assert (await rest.get("/api/v1/inventory")).status_code == 200
    await inventory_pb2_grpc.InventoryServiceStub(ch).ListOffers(inventory_pb2.ListOffersRequest())
    assert (await rest.get("/api/v1/inventory")).status_code == 429


def _signed(kp: Keypair, clock) -> tuple:
    nonce = str(int(clock.now().timestamp()))
    sig = kp.sign(f"{kp.ss58_address}:{nonce}:miner".encode()).hex()
    return (("x-chutes-hotkey", kp.ss58_address), ("x-chutes-nonce", nonce), ("x-chutes-signature", sig))


async def _open_watch(app, ch, kp: Keypair):
    """A WatchEvents call that has read its opening heartbeat (open and counted), or the status it failed with."""
    call = miner_pb2_grpc.MinerServiceStub(ch).WatchEvents(miner_pb2.WatchEventsRequest(),
                                                          metadata=_signed(kp, app.rt.clock))
    try:
        async with asyncio.timeout(10):
            first = await call.read()
    except grpc.aio.AioRpcError as err:
        return None, err
    assert first == miner_pb2.WatchEventsResponse(heartbeat=True)
    return call, None


async def test_open_streams_are_capped_per_hotkey_and_per_process(fresh, ch):
    calls = []
    try:
        for _ in range(2):
            call, err = await _open_watch(fresh, ch, ALICE)
            assert err is None
            calls.append(call)
        _, err = await _open_watch(fresh, ch, ALICE)  # a third for Alice
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "per caller" in err.details()
        async with httpx.AsyncClient(base_url=f"http://{fresh.http_addr}", timeout=10) as rest:  # same over REST
            refused = await rest.get("/miner/events", headers=dict(_signed(ALICE, fresh.rt.clock)))
        assert refused.status_code == 429 and "per caller" in refused.text and "retry-after" in refused.headers
        call, err = await _open_watch(fresh, ch, BOB)  # Bob has his own allowance...
        assert err is None
        calls.append(call)
        _, err = await _open_watch(fresh, ch, BOB)  # ...until the process is full (3)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "GANTRY_STREAMS_PER_PROCESS" in err.details()
        calls.pop(0).cancel()  # closing a stream gives its place back
        deadline = time.monotonic() + 10
        while True:
            call, err = await _open_watch(fresh, ch, ALICE)
            if err is None or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert err is None
        calls.append(call)
    finally:
        for call in calls:
            with contextlib.suppress(Exception):
                call.cancel()


def test_limits_are_configured_per_bucket_from_the_environment():
    s = Settings.from_env({"GANTRY_RATE_LIMITS": "nonce=5/10, export=off", "GANTRY_STREAMS_PER_CALLER": "4",
                           "GANTRY_STREAMS_PER_PROCESS": "50000"})
    assert s.limits.rate("nonce") == (5, 10) and s.limits.rate("export") is None
    assert s.limits.rate("session_create") == (30, 60)  # default kept
    assert (s.limits.streams_per_caller, s.limits.streams_per_process) == (4, 50000)
    assert Settings.from_env({}).limits.streams_per_process >= 10_000 * 2  # a stream per miner, and reconnects
    for bad in ("nonce=lots", "nope=1/1", "nonce=0/60"):
        with pytest.raises(ConfigError, match="GANTRY_RATE_LIMITS"):
            Settings.from_env({"GANTRY_RATE_LIMITS": bad})
