"""A stock miner's Socket.IO client against a live Gantry (the REST port, /socket.io/): what it is sent and when.

The client is python-socketio's AsyncClient over the websocket transport, authenticating on connect exactly as
chutes-miner's socket_client.py does (a v1 signature over "{ss58}:{nonce}:sockets" by a bittensor keypair).
Events travel the production path: a committed transaction -> event_outbox -> NOTIFY -> relay -> Redis Stream ->
hub -> session. Nothing sleeps: every wait is for something to arrive, with a timeout.
"""
from __future__ import annotations

import asyncio
import time

import pytest
import socketio
from bittensor_wallet import Keypair

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry_server.domain import events
from gantry_server.store.db import unit_of_work

from ..conftest import ADMIN_METADATA, new_id

ALICE = Keypair.create_from_uri("//Alice")
BOB = Keypair.create_from_uri("//Bob")
EVE = Keypair.create_from_uri("//Eve")  # never registered
WAIT = 5.0  # seconds to wait for something that must arrive


def signed(kp: Keypair, *, purpose: str = "sockets") -> dict:
    nonce = str(int(time.time()))
    return {"X-Chutes-Hotkey": kp.ss58_address, "X-Chutes-Nonce": nonce,
            "X-Chutes-Signature": kp.sign(f"{kp.ss58_address}:{nonce}:{purpose}".encode()).hex()}


class Miner:
    """What chutes-miner's socket client does, recording what the server sends (it never disconnects itself)."""

    def __init__(self, kp: Keypair, *, authenticate=True, payload=None, **client) -> None:
        self.kp = kp
        self.sio = socketio.AsyncClient(**client)
        self.broadcasts: asyncio.Queue = asyncio.Queue()
        self.auth: asyncio.Queue = asyncio.Queue()
        self.disconnects: asyncio.Queue = asyncio.Queue()
        self.received: list[tuple[str, object]] = []

        @self.sio.event
        async def connect():
            if authenticate:
                await self.sio.emit("authenticate", payload() if payload else signed(kp))

        @self.sio.event
        async def disconnect(reason=None):
            await self.disconnects.put(reason)

        @self.sio.on("*")
        async def any_event(name, data=None):
            self.received.append((name, data))
            await (self.broadcasts if name == "miner_broadcast" else self.auth).put((name, data))

    async def connect(self, app) -> "Miner":
        await self.sio.connect(f"http://{app.http_addr}", transports=["websocket"], socketio_path="/socket.io/",
                               wait_timeout=WAIT)
        return self

    async def authenticated(self) -> None:
        assert await self.next_auth() == ("auth_success", {"message": "Authenticated"})

    async def next_auth(self):
        return await asyncio.wait_for(self.auth.get(), WAIT)

    async def next_broadcast(self, timeout: float = WAIT) -> dict:
        name, data = await asyncio.wait_for(self.broadcasts.get(), timeout)
        return data

    async def close(self) -> None:
        await self.sio.shutdown()


@pytest.fixture
async def miners():
    started: list[Miner] = []

    async def start(app, kp: Keypair, **kw) -> Miner:
        miner = Miner(kp, **kw)
        started.append(miner)
        return await miner.connect(app)

    yield start
    for miner in started:
        await miner.close()


@pytest.fixture
async def admin(channel, clean_db):
    stub = admin_pb2_grpc.AdminServiceStub(channel)
    nodes = [admin_pb2.MetagraphNode(hotkey=kp.ss58_address, netuid=64, node_id=uid, coldkey=BOB.ss58_address,
                                     ip="203.0.113.7", ip_type=4, port=8091, stake=1.0)
             for uid, kp in enumerate((ALICE, BOB))]
    await stub.UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(nodes=nodes), metadata=ADMIN_METADATA)
    return stub


async def a_chute(admin) -> tuple[str, str]:
    """(user_id, chute_id) of a new chute jobs can be posted for."""
    user = await admin.CreateUser(admin_pb2.CreateUserRequest(username=f"u{new_id()[:12]}"), metadata=ADMIN_METADATA)
    image_id, chute_id = new_id()[:12], new_id()[:12]
    await admin.UpsertImage(admin_pb2.UpsertImageRequest(image_id=image_id, user_id=user.user_id, name="vllm",
                                                         tag="0.8.4", compute_type="gpu"), metadata=ADMIN_METADATA)
    selector = admin_pb2.UpsertChuteRequest().node_selector
    selector.update({"gpu_count": 2})
    await admin.UpsertChute(admin_pb2.UpsertChuteRequest(chute_id=chute_id, user_id=user.user_id, image_id=image_id,
                                                         name="llama", version="v1", node_selector=selector),
                            metadata=ADMIN_METADATA)
    return user.user_id, chute_id


async def post_job(admin, user_id: str, chute_id: str) -> str:
    args = admin_pb2.CreateJobRequest().job_args
    args.update({"_disk_gb": 120})
    response = await admin.CreateJob(admin_pb2.CreateJobRequest(chute_id=chute_id, user_id=user_id, method="train",
                                                                job_args=args), metadata=ADMIN_METADATA)
    return response.job_id


async def publish(app, event: events.Event) -> None:
    async with unit_of_work(app.rt.engine) as conn:
        await events.publish(conn, event, now=app.rt.clock.now())


async def next_of(miner: Miner, reason: str) -> dict:
    """The next broadcast with `reason` (chute and image announcements from the set-up may come first)."""
    while True:
        broadcast = await miner.next_broadcast()
        if broadcast["reason"] == reason:
            return broadcast


# -- authentication ----------------------------------------------------------------------------------------------------
async def test_a_registered_miner_is_authenticated_and_gets_a_new_job_within_a_second(app, admin, miners):
    user_id, chute_id = await a_chute(admin)
    alice = await miners(app, ALICE)
    await alice.authenticated()
    job_id = await post_job(admin, user_id, chute_id)
    posted = time.monotonic()
    broadcast = await next_of(alice, "job_created")
    assert time.monotonic() - posted < 1.0
    assert broadcast["data"]["job_id"] == job_id and broadcast["data"]["chute_id"] == chute_id
    assert broadcast["data"]["disk_gb"] == 120 and type(broadcast["data"]["disk_gb"]) is int
    assert broadcast["data"]["gpu_count"] == 2 and broadcast["data"]["excluded"] == []
    assert set(broadcast) == {"reason", "message", "data"} and "validator" not in broadcast["data"]


async def test_open_jobs_are_replayed_right_after_authentication(app, admin, miners):
    user_id, chute_id = await a_chute(admin)
    first, second = await post_job(admin, user_id, chute_id), await post_job(admin, user_id, chute_id)
    bob = await miners(app, BOB)
    await bob.authenticated()
    replayed = [await bob.next_broadcast(), await bob.next_broadcast()]
    assert [(b["reason"], b["data"]["job_id"]) for b in replayed] == [("job_created", first),
                                                                      ("job_created", second)]
    assert all(b["data"]["disk_gb"] == 120 for b in replayed)


@pytest.mark.parametrize("who, payload, says", [
    (ALICE, lambda: dict(signed(BOB), **{"X-Chutes-Hotkey": ALICE.ss58_address}), "signature does not verify"),
    (ALICE, lambda: signed(ALICE, purpose="miner"), "purpose 'sockets'"),
    (EVE, lambda: signed(EVE), "not registered on netuid 64"),
])
async def test_a_refused_miner_is_told_why_and_disconnected(app, admin, miners, who, payload, says):
    miner = await miners(app, who, payload=payload, reconnection=False)
    name, body = await miner.next_auth()
    assert name == "auth_failed" and says in body["error"], body
    await asyncio.wait_for(miner.disconnects.get(), WAIT)
    assert miner.broadcasts.empty()


async def test_a_session_that_does_not_authenticate_is_disconnected_after_the_timeout(app, admin, miners):
    sockets = app.http.app.sockets
    sockets.auth_timeout, before = 0.3, sockets.auth_timeout
    try:
        lurker = await miners(app, ALICE, authenticate=False, reconnection=False)
        await asyncio.wait_for(lurker.disconnects.get(), WAIT)
    finally:
        sockets.auth_timeout = before
    assert lurker.received == []


# -- delivery ----------------------------------------------------------------------------------------------------------
async def test_an_unauthenticated_session_receives_nothing(app, admin, miners):
    lurker = await miners(app, BOB, authenticate=False)
    alice = await miners(app, ALICE)
    await alice.authenticated()
    await publish(app, events.chute_created("chute-public", "v1", False))
    await publish(app, events.instance_verified(instance_id="inst-lurked", miner_hotkey=BOB.ss58_address))
    await publish(app, events.chute_deleted("chute-public", "v1"))
    # The first events had all the time the last one needed to reach Alice.
    assert (await next_of(alice, "chute_deleted"))["data"]["chute_id"] == "chute-public"
    assert lurker.received == [] and lurker.sio.connected


async def test_targeted_events_reach_only_their_miner(app, admin, miners):
    alice, bob = await miners(app, ALICE), await miners(app, BOB)
    await alice.authenticated()
    await bob.authenticated()
    await publish(app, events.instance_verified(instance_id="inst-alice", miner_hotkey=ALICE.ss58_address))
    await publish(app, events.instance_activated(chute_id="c1", miner_hotkey=BOB.ss58_address,
                                                 instance_id="inst-bob", config_id="cfg-bob"))
    mine = await next_of(alice, "instance_verified")
    assert mine == {"reason": "instance_verified", "message": "instance inst-alice verified",
                    "data": {"instance_id": "inst-alice", "miner_hotkey": ALICE.ss58_address}}
    # Bob's own event was published after Alice's: had hers been sent to him, it would have come first.
    his = await bob.next_broadcast()
    assert (his["reason"], his["data"]["instance_id"]) == ("instance_activated", "inst-bob")
    assert all(d["data"].get("miner_hotkey") != ALICE.ss58_address for n, d in bob.received if n == "miner_broadcast")


async def test_every_session_of_a_miner_gets_its_events(app, admin, miners):
    first, second = await miners(app, ALICE), await miners(app, ALICE)
    await first.authenticated()
    await second.authenticated()
    await publish(app, events.instance_deleted(chute_id="c1", miner_hotkey=ALICE.ss58_address, instance_id="i1",
                                               config_id="cfg-1"))
    for session in (first, second):
        assert (await next_of(session, "instance_deleted"))["data"]["instance_id"] == "i1"


async def test_a_dropped_session_reconnects_and_authenticates_again(app, admin, miners):
    alice = await miners(app, ALICE, reconnection_delay=0.05, reconnection_delay_max=0.1)
    await alice.authenticated()
    await app.http.app.close()  # what a stopping server does: transports end without a goodbye
    await asyncio.wait_for(alice.disconnects.get(), WAIT)
    await alice.authenticated()  # python-socketio reconnected and the connect handler signed again
    await publish(app, events.bounty_change("chute-b", 3))
    assert (await next_of(alice, "bounty_change"))["data"] == {"chute_id": "chute-b", "bounty": 3}
