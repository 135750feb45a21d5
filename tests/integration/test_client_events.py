"""gantry_client.MinerEvents against a live server that restarts: every event once, in order, no heartbeats.

The server runs with a 50 ms heartbeat, so a feed that yielded heartbeats could not pass. Events are published
the production way (a committed transaction -> outbox -> relay -> Redis Stream -> hub), including while the
server is down (they wait in the outbox until the restarted relay drains them).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import socket
from pathlib import Path

import grpc
import pytest

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry_client import CursorExpired, MinerEvents, Signer
from gantry_server.app import GantryApp
from gantry_server.config import MinerSettings
from gantry_server.domain import events
from gantry_server.store import redis_keys
from gantry_server.store.db import unit_of_work

from ..conftest import ADMIN_METADATA, make_settings, new_id

ALICE_SEED = "0xe5be9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a"  # //Alice mini secret
ALICE = Signer.from_sr25519_seed(ALICE_SEED)
BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"
WAIT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A Gantry that can be stopped and started again on the same gRPC address."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.app: GantryApp | None = None

    @property
    def addr(self) -> str:
        return self.settings.grpc_addr

    async def start(self) -> None:
        self.app = GantryApp(self.settings)
        await self.app.start()

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.stop(0)
            self.app = None


@pytest.fixture
async def server(database_url, redis_url, tmp_path, clean_db, redis):
    settings = dataclasses.replace(make_settings(database_url, redis_url, tmp_path),
                                   grpc_addr=f"127.0.0.1:{free_port()}",
                                   miner=MinerSettings(events_heartbeat_seconds=0.05))
    srv = Server(settings)
    await srv.start()
    async with grpc.aio.insecure_channel(srv.addr) as channel:
        node = admin_pb2.MetagraphNode(hotkey=ALICE.hotkey, netuid=64, node_id=1, coldkey=BOB, ip="203.0.113.7",
                                       ip_type=4, port=8091, stake=1.0)
        await admin_pb2_grpc.AdminServiceStub(channel).UpsertMetagraphNodes(
            admin_pb2.UpsertMetagraphNodesRequest(nodes=[node]), metadata=ADMIN_METADATA)
    yield srv
    await srv.stop()


async def publish(engine, clock, *batch: events.Event) -> None:
    async with unit_of_work(engine) as conn:
        for event in batch:
            await events.publish(conn, event, now=clock.now())


def chute(tag: str) -> events.Event:
    return events.chute_created(f"chute-{tag}", "v1", False)


async def read_into(feed: MinerEvents, into: asyncio.Queue) -> None:
    async for event in feed:
        await into.put(event)


async def take_queued(queue: asyncio.Queue, n: int) -> list:
    return [await asyncio.wait_for(queue.get(), WAIT) for _ in range(n)]


async def take(feed: MinerEvents, n: int) -> list:
    return [await asyncio.wait_for(anext(feed), WAIT) for _ in range(n)]


async def test_the_feed_resumes_after_a_restart_with_no_gap_and_no_duplicate(server, clean_db):
    clock = server.app.rt.clock
    retries = []
    run = new_id()[:8]
    await publish(clean_db, clock, chute(f"{run}-1"), chute(f"{run}-2"),
                  events.instance_verified(instance_id=f"{run}-bob", miner_hotkey=BOB),
                  events.instance_verified(instance_id=f"{run}-alice", miner_hotkey=ALICE.hotkey))
    async with MinerEvents(server.addr, ALICE, cursor="0", initial_backoff=0.05, max_backoff=0.2,
                           on_retry=lambda error, delay: retries.append(error)) as feed:
        received: asyncio.Queue = asyncio.Queue()
        consumer = asyncio.create_task(read_into(feed, received))  # keeps reading (and retrying) while down
        try:
            before = await take_queued(received, 3)
            await server.stop()
            await publish(clean_db, clock, chute(f"{run}-3"), chute(f"{run}-4"))  # while nobody relays
            await server.start()
            await publish(clean_db, clock, chute(f"{run}-5"))
            after = await take_queued(received, 3)
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
    got = before + after
    assert [(e.reason, e.data["instance_id"] if "instance_id" in e.data else e.data["chute_id"]) for e in got] == [
        ("chute_created", f"chute-{run}-1"), ("chute_created", f"chute-{run}-2"),
        ("instance_verified", f"{run}-alice"),
        ("chute_created", f"chute-{run}-3"), ("chute_created", f"chute-{run}-4"), ("chute_created", f"chute-{run}-5")]
    cursors = [tuple(map(int, e.cursor.split("-"))) for e in got]
    assert cursors == sorted(set(cursors)) and not any(e.heartbeat for e in got)
    assert feed.cursor == got[-1].cursor
    assert retries and all(e.code() == grpc.StatusCode.UNAVAILABLE for e in retries)  # server stopping, then down


async def test_reasons_are_filtered_by_the_server(server, clean_db):
    clock = server.app.rt.clock
    run = new_id()[:8]
    await publish(clean_db, clock, chute(f"{run}-1"), events.bounty_change(f"chute-{run}", 5), chute(f"{run}-2"))
    async with MinerEvents(server.addr, ALICE, cursor="0", reasons=["bounty_change"]) as feed:
        [only] = await take(feed, 1)
        await publish(clean_db, clock, events.bounty_change(f"chute-{run}", 0))
        [last] = await take(feed, 1)
    assert [(e.reason, e.data["bounty"]) for e in (only, last)] == [("bounty_change", 5), ("bounty_change", 0)]


async def test_an_expired_cursor_is_a_clear_error_not_a_retry(server, redis):
    await redis.set(redis_keys.events_trimmed(), "1767225600000-0")  # everything up to then was trimmed
    try:
        async with MinerEvents(server.addr, ALICE, cursor="1767225500000-0") as feed:
            with pytest.raises(CursorExpired) as err:
                await asyncio.wait_for(anext(feed), WAIT)
    finally:
        await redis.delete(redis_keys.events_trimmed())
    assert err.value.cursor == "1767225500000-0" and "older than" in err.value.details
    assert feed.reconnects == 0


async def test_an_unregistered_hotkey_fails_at_once(server):
    stranger = Signer.from_ed25519_seed("11" * 32)
    async with MinerEvents(server.addr, stranger) as feed:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(anext(feed), WAIT)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and feed.reconnects == 0


# -- the Go client (clients/go/gantry/events.go) -----------------------------------------------------------------------
GO_MODULE = Path(__file__).resolve().parents[2] / "clients" / "go"
needs_go = pytest.mark.skipif(shutil.which("go") is None and not os.environ.get("CI"),
                              reason="no go binary on this machine (CI always runs this test)")


async def go(*args: str, env: dict | None = None, timeout: float = 600) -> str:
    """Async subprocess: the server under test runs on this same event loop."""
    proc = await asyncio.create_subprocess_exec("go", *args, cwd=GO_MODULE, env=dict(os.environ, **(env or {})),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, out.decode()
    return out.decode()


@needs_go
async def test_go_event_feed_resumes_by_cursor_and_refuses_what_it_cannot_resume(server, redis):
    await redis.set(redis_keys.events_trimmed(), "1767225600000-0")
    try:
        text = await go("test", "-count=1", "-v", "-run", "TestLiveEvents", "./gantry/", env={
            "GANTRY_TEST_GRPC_ADDR": server.addr, "GANTRY_TEST_ADMIN_TOKEN": server.settings.admin_token,
            "GANTRY_TEST_SR25519_SEED": ALICE_SEED.removeprefix("0x"), "GANTRY_TEST_SR25519_HOTKEY": ALICE.hotkey,
            "GANTRY_TEST_TRIMMED_CURSOR": "1767225500000-0", "CI": "1"})
    finally:
        await redis.delete(redis_keys.events_trimmed())
    for name in ("TestLiveEventsResumeAfterTheirCursor", "TestLiveEventsExpiredCursorIsCursorExpired",
                 "TestLiveEventsUnregisteredHotkeyFailsAtOnce"):
        assert f"--- PASS: {name} " in text, text  # passed, not skipped


@needs_go
async def test_gantry_events_command_prints_every_event_once_across_a_restart(server, clean_db, tmp_path):
    binary = tmp_path / "gantry-events"
    await go("build", "-o", str(binary), "./cmd/gantry-events")
    clock = server.app.rt.clock
    run = new_id()[:8]
    await publish(clean_db, clock, chute(f"{run}-1"), chute(f"{run}-2"))
    proc = await asyncio.create_subprocess_exec(
        str(binary), "-addr", server.addr, "-cursor", "0", "-reasons", "chute_created",
        env=dict(os.environ, GANTRY_MINER_SEED=ALICE_SEED), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)

    async def lines(n: int) -> list[dict]:
        return [json.loads(await asyncio.wait_for(proc.stdout.readline(), 30)) for _ in range(n)]

    try:
        before = await lines(2)
        await server.stop()
        await publish(clean_db, clock, chute(f"{run}-3"))
        await server.start()
        await publish(clean_db, clock, chute(f"{run}-4"))
        after = await lines(2)
    finally:
        proc.terminate()
        await proc.wait()
    got = before + after
    assert [line["data"]["chute_id"] for line in got] == [f"chute-{run}-{i}" for i in range(1, 5)]
    assert all(line["reason"] == "chute_created" and line["message"] for line in got)
    assert len({line["cursor"] for line in got}) == 4
