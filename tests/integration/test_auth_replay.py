"""Replaying a single-use signature (v2 over REST, grpc-v1 over gRPC) at the edges of the ±600 s window.

A nonce is accepted while its timestamp is within 600 s of the server clock, so its single-use record must live
until that stops being true (nonce time + window + replica skew), not a fixed 600 s from first use: a client whose
clock runs ahead would otherwise get a second acceptance of the same signature after the record expired.

The server runs on a ManualClock; Redis expires keys on its own clock, so `_age` moves both: it advances the
server clock and takes the same seconds off every signature-nonce record (deleting those whose time is up), which
is what Redis would have done meanwhile.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

import grpc
import httpx
import pytest
from bittensor_wallet import Keypair

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry.miner.v1 import miner_pb2, miner_pb2_grpc
from gantry_server.app import GantryApp
from gantry_server.clock import ManualClock
from gantry_server.domain.auth import signatures as s

from ..conftest import ADMIN_METADATA, make_settings

ALICE = Keypair.create_from_uri("//Alice")
START = datetime(2026, 1, 1, 0, 0, 10, tzinfo=timezone.utc)
RELEASE_JOB = "/gantry.miner.v1.MinerService/ReleaseJob"


@pytest.fixture(scope="module")
async def replay_app(database_url, redis_url, tmp_path_factory):
    gantry = GantryApp(make_settings(database_url, redis_url, tmp_path_factory.mktemp("replay")),
                       clock=ManualClock(START))
    await gantry.start()
    yield gantry
    await gantry.stop(0)


@pytest.fixture(scope="module")
async def ch(replay_app):
    async with grpc.aio.insecure_channel(replay_app.grpc_addr) as channel:
        yield channel


@pytest.fixture(scope="module")
async def rest(replay_app):
    async with httpx.AsyncClient(base_url=f"http://{replay_app.http_addr}", timeout=10) as client:
        yield client


@pytest.fixture
async def alice(ch, clean_db, redis, replay_app):
    await admin_pb2_grpc.AdminServiceStub(ch).UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(nodes=[
        admin_pb2.MetagraphNode(hotkey=ALICE.ss58_address, netuid=64, node_id=1, ip="203.0.113.7", ip_type=4)]),
        metadata=ADMIN_METADATA)
    return replay_app.rt.clock


async def _age(clock: ManualClock, redis, seconds: int) -> None:
    clock.advance(seconds=seconds)
    async for key in redis.scan_iter(match="*signonce*"):
        ttl = await redis.ttl(key)
        if ttl - seconds <= 0:
            await redis.delete(key)
        else:
            await redis.expire(key, ttl - seconds)


def _now(clock) -> int:
    return int(clock.now().timestamp())


async def _release(ch, nonce: str) -> tuple[grpc.StatusCode, str]:
    request = miner_pb2.ReleaseJobRequest(job_id="job-1")
    message = s.grpc_message(ALICE.ss58_address, RELEASE_JOB, nonce, s.request_sha256(request))
    md = (("x-chutes-hotkey", ALICE.ss58_address), ("x-chutes-nonce", nonce), ("x-chutes-sig-version", "2"),
          ("x-chutes-signature", ALICE.sign(message.encode()).hex()))
    try:
        await miner_pb2_grpc.MinerServiceStub(ch).ReleaseJob(request, metadata=md)
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details()
    return grpc.StatusCode.OK, ""


async def test_grpc_nonce_from_a_clock_599_s_ahead_cannot_be_replayed_anywhere_in_its_window(alice, ch, redis):
    nonce = f"{_now(alice) + 599}.{uuid.uuid4().hex[:12]}"
    assert (await _release(ch, nonce))[0] == grpc.StatusCode.NOT_FOUND  # accepted: the handler ran
    await _age(alice, redis, 1198)  # 601 s past the 600 s a fixed record lived; the timestamp is still in window
    code, details = await _release(ch, nonce)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "replay" in details
    await _age(alice, redis, 2)  # the timestamp has left the window: refused as old, never accepted again
    code, details = await _release(ch, nonce)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "old" in details


async def test_grpc_nonce_from_a_clock_599_s_behind_is_refused_on_replay_then_as_old(alice, ch, redis):
    nonce = f"{_now(alice) - 599}.{uuid.uuid4().hex[:12]}"
    assert (await _release(ch, nonce))[0] == grpc.StatusCode.NOT_FOUND
    code, details = await _release(ch, nonce)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "replay" in details
    await _age(alice, redis, 1)
    code, details = await _release(ch, nonce)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "old" in details
    # The record is kept only as long as a replica could still accept the timestamp (window + skew), not 600 s.
    ttls = [await redis.ttl(k) async for k in redis.scan_iter(match="*signonce*")]
    assert ttls and max(ttls) <= s.REPLICA_SKEW_SECONDS + 1


async def test_rest_v2_nonce_from_a_clock_ahead_replayed_late_in_its_window_is_refused(alice, rest, redis):
    nonce = f"{_now(alice) + 599}.{uuid.uuid4().hex[:12]}"
    message = s.v2_message(ALICE.ss58_address, "DELETE", "/miner/jobs/job-1", nonce, None)
    headers = {"X-Chutes-Hotkey": ALICE.ss58_address, "X-Chutes-Nonce": nonce, "X-Chutes-Sig-Version": "2",
               "X-Chutes-Signature": ALICE.sign(message.encode()).hex()}
    assert (await rest.delete("/miner/jobs/job-1", headers=headers)).status_code == 404  # accepted
    await _age(alice, redis, 1150)
    replay = await rest.delete("/miner/jobs/job-1", headers=headers)
    assert replay.status_code == 401 and "replay" in replay.text
