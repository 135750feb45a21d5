"""WatchEvents as a miner sees it, over gRPC and over REST (`GET /miner/events`), on real PostgreSQL and Redis.

Each test starts its own server with the event settings it needs (tiny heartbeat, tiny buffer, short retention)
and, unless the relay's own loop is the point, drives the relay by hand. Every stream opens with a heartbeat once
its subscription is in place, so a test publishes only after reading it.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import grpc
import httpx
import pytest
from bittensor_wallet import Keypair
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry.miner.v1 import miner_pb2, miner_pb2_grpc
from gantry_server.app import GantryApp
from gantry_server.config import MinerSettings
from gantry_server.domain import events
from gantry_server.store import redis_keys
from gantry_server.store.db import unit_of_work

from ..conftest import ADMIN_METADATA, TEST_KEK, make_settings

ALICE = Keypair.create_from_uri("//Alice")
BOB = Keypair.create_from_uri("//Bob")


def signed(kp: Keypair) -> tuple:
    nonce = str(int(time.time()))
    sig = kp.sign(f"{kp.ss58_address}:{nonce}:miner".encode()).hex()
    return (("x-chutes-hotkey", kp.ss58_address), ("x-chutes-nonce", nonce), ("x-chutes-signature", sig))


@pytest.fixture
async def start(database_url, redis_url, tmp_path, clean_db, redis):
    """start(**miner_settings) -> a running GantryApp with Alice and Bob registered miners; stopped after."""
    apps: list[GantryApp] = []

    async def _start(**miner) -> GantryApp:
        miner.setdefault("background_loops", False)
        app = GantryApp(make_settings(database_url, redis_url, tmp_path / f"app{len(apps)}",
                                      miner=MinerSettings(**miner)))
        await app.start()
        apps.append(app)
        async with grpc.aio.insecure_channel(app.grpc_addr) as ch:
            await admin_pb2_grpc.AdminServiceStub(ch).UpsertMetagraphNodes(
                admin_pb2.UpsertMetagraphNodesRequest(nodes=[
                    admin_pb2.MetagraphNode(hotkey=kp.ss58_address, netuid=64, node_id=i, ip=f"203.0.113.{i}",
                                            ip_type=4) for i, kp in enumerate((ALICE, BOB), start=1)]),
                metadata=ADMIN_METADATA)
        return app

    yield _start
    for app in reversed(apps):
        await app.stop(0)


@contextlib.asynccontextmanager
async def watching(addr: str, kp: Keypair = ALICE, *, options: tuple = (), **request):
    """An open WatchEvents call on the server at `addr` whose opening heartbeat was read (it is subscribed)."""
    async with grpc.aio.insecure_channel(addr, options=list(options)) as ch:
        call = miner_pb2_grpc.MinerServiceStub(ch).WatchEvents(miner_pb2.WatchEventsRequest(**request),
                                                              metadata=signed(kp))
        opening = await call.read()
        assert opening == miner_pb2.WatchEventsResponse(heartbeat=True)
        try:
            yield call
        finally:
            call.cancel()


async def next_events(call, n: int) -> list[miner_pb2.WatchEventsResponse]:
    out = []
    async with asyncio.timeout(20):
        while len(out) < n:
            msg = await call.read()
            assert msg is not grpc.aio.EOF
            if not msg.heartbeat:
                out.append(msg)
    return out


async def publish(app: GantryApp, *evs: events.Event, relay: bool = True) -> None:
    async with unit_of_work(app.rt.engine) as conn:
        for ev in evs:
            await events.publish(conn, ev, now=app.rt.clock.now())
    if relay:
        await app.rt.events_relay.drain()


def job(n: int) -> events.Event:
    return events.job_deleted(instance_id=f"inst-{n}", job_id=f"job-{n}")


async def failure(call) -> tuple[grpc.StatusCode, error_details_pb2.ErrorInfo, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async with asyncio.timeout(20):
            while True:
                await call.read()
    status = await rpc_status.aio.from_call(call)
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return err.value.code(), info, err.value.details()


async def until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


# -- gRPC -----------------------------------------------------------------------------------------------------------
async def test_reconnecting_with_the_last_cursor_gets_the_100_events_published_meanwhile_once_in_order(start):
    app = await start()
    async with watching(app.grpc_addr) as call:
        await publish(app, job(-1))
        (last,) = await next_events(call, 1)
    await publish(app, *(job(n) for n in range(100)))  # while disconnected

    async with watching(app.grpc_addr, cursor=last.cursor) as call:
        got = await next_events(call, 100)
        await publish(app, job(100))
        (live,) = await next_events(call, 1)
    assert [e.data["job_id"] for e in got] == [f"job-{n}" for n in range(100)]
    assert len({e.cursor for e in got}) == 100 and live.data["job_id"] == "job-100"
    first = got[0]
    assert first.reason == "job_deleted" and first.message == "job job-0 ended with instance inst-0"
    assert dict(first.data) == {"instance_id": "inst-0", "job_id": "job-0"} and first.created_at.seconds > 0


async def test_a_cursor_older_than_retention_is_out_of_range(start):
    app = await start(events_max_len=3)
    async with watching(app.grpc_addr) as call:
        await publish(app, *(job(n) for n in range(3)))
        first = (await next_events(call, 3))[0]
    await publish(app, job(3), job(4))  # the stream keeps 2, 3, 4: what followed job-0 (job-1) is gone
    async with grpc.aio.insecure_channel(app.grpc_addr) as ch:
        call = miner_pb2_grpc.MinerServiceStub(ch).WatchEvents(
            miner_pb2.WatchEventsRequest(cursor=first.cursor), metadata=signed(ALICE))
        code, info, _ = await failure(call)
    assert code == grpc.StatusCode.OUT_OF_RANGE and info.reason == "CURSOR_EXPIRED"
    assert info.metadata["http_status"] == "410"


async def test_targeted_events_reach_only_their_recipient(start):
    app = await start()
    async with watching(app.grpc_addr, ALICE) as alice, watching(app.grpc_addr, BOB) as bob:
        await publish(app, events.instance_verified(instance_id="i-bob", miner_hotkey=BOB.ss58_address), job(1))
        (a,) = await next_events(alice, 1)
        b = await next_events(bob, 2)
    assert a.data["job_id"] == "job-1"
    assert [m.reason for m in b] == ["instance_verified", "job_deleted"]


async def test_reasons_narrow_the_feed(start):
    app = await start()
    async with watching(app.grpc_addr, reasons=["instance_verified"]) as call:
        await publish(app, job(1), events.instance_verified(instance_id="i-1", miner_hotkey=ALICE.ss58_address))
        (got,) = await next_events(call, 1)
    assert got.reason == "instance_verified" and got.data["instance_id"] == "i-1"


@pytest.mark.parametrize("request_, field", [({"cursor": "yesterday"}, "cursor"),
                                             ({"cursor": "12-x"}, "cursor"),
                                             ({"reasons": ["job_created", "jobs_created"]}, "reasons")])
async def test_a_malformed_cursor_or_unknown_reason_is_an_invalid_argument_naming_the_field(start, request_, field):
    app = await start()
    async with grpc.aio.insecure_channel(app.grpc_addr) as ch:
        call = miner_pb2_grpc.MinerServiceStub(ch).WatchEvents(miner_pb2.WatchEventsRequest(**request_),
                                                              metadata=signed(ALICE))
        code, _, details = await failure(call)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(f"{field}: ")
    assert app.rt.events.subscriber_count == 0


async def test_an_idle_stream_gets_heartbeats(start):
    app = await start(events_heartbeat_seconds=0.05)
    async with watching(app.grpc_addr) as call, asyncio.timeout(10):
        beat = await call.read()
    assert beat == miner_pb2.WatchEventsResponse(heartbeat=True)


async def test_a_subscriber_that_stops_reading_is_dropped_with_resource_exhausted(start):
    app = await start(events_subscriber_buffer=4)
    # A tiny HTTP/2 window: the server's writes block as soon as this client stops reading.
    small = (("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0))
    async with watching(app.grpc_addr, options=small) as slow, watching(app.grpc_addr, BOB) as fast:
        for batch in range(10):
            await publish(app, *(job(batch * 10 + n) for n in range(3)))
            await next_events(fast, 3)  # a reader that keeps up is never dropped
        await until(lambda: app.rt.events.subscriber_count == 1)
        code, info, details = await failure(slow)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and info.reason == "SUBSCRIBER_TOO_SLOW"
    assert "reconnect with the last cursor" in details


async def test_two_processes_on_one_database_and_redis_both_deliver_every_event(start, database_url, redis_url,
                                                                                 tmp_path):
    app = await start(background_loops=True)
    addr = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
    env.update(GANTRY_DATA_DIR=str(tmp_path / "second"), GANTRY_KEK=TEST_KEK, GANTRY_DATABASE_URL=database_url,
               GANTRY_REDIS_URL=redis_url, GANTRY_GRPC_ADDR=addr, GANTRY_HTTP_ADDR="127.0.0.1:0",
               GANTRY_ADMIN_TOKEN="second-process-admin-token-0123456789abcdef", GANTRY_MIGRATE_ON_START="false",
               GANTRY_WORKERS="1")
    proc = subprocess.Popen([sys.executable, "-m", "gantry_server.cli", "serve"], env=env,
                            stderr=subprocess.DEVNULL)
    try:
        await _wait_serving(addr, proc)
        async with watching(app.grpc_addr) as here, watching(addr, BOB) as there:
            for n in range(20):  # separate commits: both relays race for them
                await publish(app, job(n), relay=False)
            got_here = await next_events(here, 20)
            got_there = await next_events(there, 20)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert [e.data["job_id"] for e in got_here] == [f"job-{n}" for n in range(20)]
    assert [(e.cursor, e.data["job_id"]) for e in got_there] == [(e.cursor, e.data["job_id"]) for e in got_here]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait_serving(addr: str, proc: subprocess.Popen) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(addr) as ch, asyncio.timeout(60):
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            assert proc.poll() is None, "the second server exited"
            with contextlib.suppress(grpc.RpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)


# -- REST -----------------------------------------------------------------------------------------------------------
def rest_headers(kp: Keypair = ALICE, **extra) -> dict:
    return dict(signed(kp)) | extra


async def test_rest_answers_ndjson_lines_by_default(start):
    app = await start()
    async with httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=20) as http:
        async with http.stream("GET", "/miner/events", headers=rest_headers()) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"] == "application/x-ndjson"
            lines = resp.aiter_lines()
            assert json.loads(await anext(lines)) == {"heartbeat": True}
            await publish(app, job(1))
            row = json.loads(await anext(lines))
    assert row["reason"] == "job_deleted" and row["data"] == {"instance_id": "inst-1", "job_id": "job-1"}
    assert row["cursor"] and row["heartbeat"] is False


async def test_rest_answers_sse_when_asked_with_the_cursor_as_id_and_heartbeats_as_comments(start):
    app = await start(events_heartbeat_seconds=0.05)
    async with httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=20) as http:
        async with http.stream("GET", "/miner/events?reasons=job_deleted",
                               headers=rest_headers(accept="text/event-stream")) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            lines = resp.aiter_lines()
            assert await anext(lines) == ": keep-alive"
            await publish(app, job(1))
            event = []
            async for line in lines:
                if line.startswith(":") or (not line and not event):
                    continue  # heartbeats, and the blank line after each
                if not line:
                    break
                event.append(line)
    assert event[0].startswith("id: ") and event[1].startswith("data: ")
    data = json.loads(event[1].removeprefix("data: "))
    assert event[0] == f"id: {data['cursor']}" and data["data"]["job_id"] == "job-1"


async def test_rest_client_disconnect_ends_the_subscription_at_once(start):
    app = await start()
    async with httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=20) as http:
        async with http.stream("GET", "/miner/events", headers=rest_headers()) as resp:
            await anext(resp.aiter_lines())
            assert app.rt.events.subscriber_count == 1
    await until(lambda: app.rt.events.subscriber_count == 0)


async def test_rest_cursor_older_than_retention_is_410_gone(start):
    app = await start(events_max_len=2)
    await publish(app, *(job(n) for n in range(4)))
    trimmed = (await app.rt.redis.get(redis_keys.events_trimmed())).decode()  # job-1: job-0 is lost after it
    ms, seq = map(int, trimmed.split("-"))
    too_old = f"{ms}-{seq - 1}" if seq else f"{ms - 1}-0"
    async with httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=20) as http:
        resp = await http.get("/miner/events", params={"cursor": too_old}, headers=rest_headers())
    assert resp.status_code == 410 and "cursor" in resp.json()["detail"]
