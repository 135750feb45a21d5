"""The Socket.IO adapter's protocol, session by session: what a miner's session is sent, and when it is dropped.

The transport is a recorder with python-socketio's emit/disconnect shape and the hub an in-memory one with the
EventHub API; signatures are real (bittensor_wallet keypairs, as the stock miner signs) and time is a ManualClock.
tests/integration/test_socketio_miner.py runs the same protocol through a real python-socketio client and server.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from bittensor_wallet import Keypair

from gantry_server.clock import ManualClock
from gantry_server.domain import events
from gantry_server.domain.events.hub import HubClosed, StreamEvent, SubscriberTooSlow
from gantry_server.domain.events.socketio_adapter import (BROADCAST, MinerSockets, SocketAuthenticator,
                                                          broadcast_payload)
from gantry_server.errors import PermissionDenied, Unauthenticated

START = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
ALICE = Keypair.create_from_uri("//Alice")
BOB = Keypair.create_from_uri("//Bob")
EVE = Keypair.create_from_uri("//Eve")  # signs correctly but is not registered
MALLORY = Keypair.create_from_uri("//Mallory")  # blacklisted


def auth_payload(kp: Keypair, nonce: int | None = None, purpose: str = "sockets") -> dict:
    nonce = int(START.timestamp()) if nonce is None else nonce
    return {"X-Chutes-Hotkey": kp.ss58_address, "X-Chutes-Nonce": str(nonce),
            "X-Chutes-Signature": kp.sign(f"{kp.ss58_address}:{nonce}:{purpose}".encode()).hex()}


async def check_hotkey(hotkey: str) -> None:
    if hotkey == MALLORY.ss58_address:
        raise PermissionDenied(f"hotkey {hotkey} is blacklisted: abuse", reason="HOTKEY_BLACKLISTED")
    if hotkey not in (ALICE.ss58_address, BOB.ss58_address):
        raise Unauthenticated("Hotkey is not registered on netuid 64", reason="HOTKEY_NOT_REGISTERED")


class Recorder:
    """python-socketio's AsyncServer emit/disconnect, recorded per session."""

    def __init__(self) -> None:
        self.sent: dict[str, list[tuple[str, object]]] = {}
        self.disconnected: list[str] = []
        self.dropped: list[str] = []
        self._changed = asyncio.Event()

    async def emit(self, event, data=None, to=None):
        self.sent.setdefault(to, []).append((event, data))
        self._changed.set()

    async def disconnect(self, sid):
        self.disconnected.append(sid)
        self._changed.set()

    async def drop(self, sid):
        self.dropped.append(sid)
        self._changed.set()

    def broadcasts(self, sid) -> list[dict]:
        return [data for name, data in self.sent.get(sid, []) if name == BROADCAST]

    async def until(self, predicate, timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


class FakeSubscription:
    def __init__(self, hub: "FakeHub", hotkey: str) -> None:
        self.hub, self.hotkey = hub, hotkey
        self.queue: asyncio.Queue = asyncio.Queue()

    async def __aenter__(self):
        if self.hub.closed:
            raise HubClosed("stopped")
        self.hub.subs.add(self)
        return self

    async def __aexit__(self, *exc):
        self.hub.subs.discard(self)

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, Exception):
            raise item
        return item

    async def next(self, timeout: float):
        if not self.queue.empty():
            return await self.__anext__()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except TimeoutError:
            return None


class FakeHub:
    """The EventHub API in memory: subscribe(hotkey) and a publish that honours visibility."""

    def __init__(self) -> None:
        self.subs: set[FakeSubscription] = set()
        self.closed = False
        self._seq = 0

    def subscribe(self, hotkey, *, cursor=None, reasons=frozenset()):
        return FakeSubscription(self, hotkey)

    def publish(self, event: events.Event) -> None:
        self._seq += 1
        item = StreamEvent(f"1-{self._seq}", event.reason, event.message, event.data, event.recipients, START)
        for sub in list(self.subs):
            if item.visible_to(sub.hotkey):
                sub.queue.put_nowait(item)


OPEN_JOB = events.job_created(job_id="job-open", method="train", chute_id="chute-1", image_id="img-1",
                              gpu_count=2, compute_multiplier=1.0, exclude=[], job_args={"_disk_gb": 50})


@pytest.fixture
def clock():
    return ManualClock(START)


@pytest.fixture
async def world(clock):
    transport, hub = Recorder(), FakeHub()

    async def open_jobs():
        yield OPEN_JOB

    sockets = MinerSockets(transport, lambda: hub, SocketAuthenticator(clock.now, check_hotkey), open_jobs,
                           auth_timeout=0.05, drop=transport.drop)
    yield transport, hub, sockets
    await sockets.close()


async def connected(sockets: MinerSockets, sid: str, kp: Keypair | None = None, **kw) -> None:
    await sockets.on_connect(sid, {})
    if kp is not None:
        await sockets.on_authenticate(sid, auth_payload(kp, **kw))


def names(transport: Recorder, sid: str) -> list[str]:
    return [name for name, _ in transport.sent.get(sid, [])]


# -- authentication ----------------------------------------------------------------------------------------------
async def test_a_registered_hotkey_is_told_authenticated_then_gets_the_open_jobs(world):
    transport, hub, sockets = world
    await connected(sockets, "s1", ALICE)
    await transport.until(lambda: len(transport.sent.get("s1", [])) >= 2)
    assert transport.sent["s1"][0] == ("auth_success", {"message": "Authenticated"})
    assert transport.sent["s1"][1] == (BROADCAST, broadcast_payload(OPEN_JOB))
    assert transport.sent["s1"][1][1]["data"]["disk_gb"] == 50
    assert sockets.sessions_of(ALICE.ss58_address) == {"s1"} and transport.disconnected == []


@pytest.mark.parametrize("payload, says", [
    ("not a dict", "must be a dict"),
    ({"X-Chutes-Hotkey": ALICE.ss58_address}, "missing X-Chutes-Nonce, X-Chutes-Signature"),
    (auth_payload(ALICE, purpose="miner"), "purpose 'sockets'"),
    (auth_payload(ALICE, nonce=int(START.timestamp()) - 600), "within 600 s"),
    (auth_payload(EVE), "not registered on netuid 64"),
    (auth_payload(MALLORY), "blacklisted: abuse"),
])
async def test_a_refused_authenticate_says_why_and_disconnects(world, payload, says):
    transport, hub, sockets = world
    await sockets.on_connect("s1", {})
    await sockets.on_authenticate("s1", payload)
    [(name, body)] = transport.sent["s1"]
    assert name == "auth_failed" and says in body["error"], body
    assert transport.disconnected == ["s1"] and sockets.session_count == 0 and not hub.subs


async def test_header_names_are_case_insensitive(world):
    transport, hub, sockets = world
    await sockets.on_connect("s1", {})
    await sockets.on_authenticate("s1", {k.lower(): v for k, v in auth_payload(BOB).items()})
    await transport.until(lambda: names(transport, "s1")[:1] == ["auth_success"])


async def test_the_signature_window_follows_the_injected_clock(world, clock):
    transport, hub, sockets = world
    clock.advance(seconds=599)
    await connected(sockets, "s1", ALICE)
    clock.advance(seconds=1)
    await connected(sockets, "s2", ALICE)
    assert names(transport, "s2") == ["auth_failed"]
    await transport.until(lambda: names(transport, "s1")[:1] == ["auth_success"])


async def test_a_session_that_never_authenticates_is_disconnected_and_sent_nothing(world):
    transport, hub, sockets = world
    await sockets.on_connect("lurker", {})
    await connected(sockets, "s1", ALICE)
    hub.publish(events.chute_created("chute-9", "v1", False))
    await transport.until(lambda: "lurker" in transport.disconnected)
    assert "lurker" not in transport.sent
    assert sockets.session_count == 1 and "s1" not in transport.disconnected


# -- delivery ----------------------------------------------------------------------------------------------------------
async def test_public_events_reach_every_session_and_targeted_ones_only_their_miner(world):
    transport, hub, sockets = world
    await connected(sockets, "alice", ALICE)
    await connected(sockets, "bob", BOB)
    await transport.until(lambda: all(len(transport.broadcasts(s)) == 1 for s in ("alice", "bob")))
    hub.publish(events.instance_verified(instance_id="inst-a", miner_hotkey=ALICE.ss58_address))
    hub.publish(events.chute_deleted("chute-1", "v1"))
    await transport.until(lambda: all(len(transport.broadcasts(s)) >= 2 for s in ("alice", "bob"))
                          and len(transport.broadcasts("alice")) == 3)
    alice = [b["reason"] for b in transport.broadcasts("alice")]
    bob = [b["reason"] for b in transport.broadcasts("bob")]
    assert alice == ["job_created", "instance_verified", "chute_deleted"]
    assert bob == ["job_created", "chute_deleted"]
    verified = transport.broadcasts("alice")[1]
    assert verified == {"reason": "instance_verified", "message": "instance inst-a verified",
                        "data": {"instance_id": "inst-a", "miner_hotkey": ALICE.ss58_address}}


async def test_every_session_of_a_hotkey_gets_its_events(world):
    transport, hub, sockets = world
    await connected(sockets, "a1", ALICE)
    await connected(sockets, "a2", ALICE)
    assert sockets.sessions_of(ALICE.ss58_address) == {"a1", "a2"}
    await transport.until(lambda: len(hub.subs) == 2 and all(transport.broadcasts(s) for s in ("a1", "a2")))
    hub.publish(events.instance_deleted(chute_id="c", miner_hotkey=ALICE.ss58_address, instance_id="i",
                                        config_id=None))
    await transport.until(lambda: all(len(transport.broadcasts(s)) == 2 for s in ("a1", "a2")))


async def test_a_disconnected_session_releases_its_subscription(world):
    transport, hub, sockets = world
    await connected(sockets, "s1", ALICE)
    await transport.until(lambda: transport.broadcasts("s1"))
    assert len(hub.subs) == 1
    await sockets.on_disconnect("s1", "client disconnect")
    await asyncio.sleep(0)
    assert not hub.subs and sockets.sessions_of(ALICE.ss58_address) == frozenset()


async def test_a_session_too_slow_for_the_hub_loses_its_transport(world):
    transport, hub, sockets = world
    await connected(sockets, "s1", ALICE)
    await transport.until(lambda: transport.broadcasts("s1"))
    [sub] = hub.subs
    sub.queue.put_nowait(SubscriberTooSlow("behind"))
    await transport.until(lambda: transport.dropped == ["s1"])
    assert not hub.subs and sockets.session_count == 0 and transport.disconnected == []


async def test_closing_drops_every_transport(world):
    transport, hub, sockets = world
    await connected(sockets, "s1", ALICE)
    await sockets.on_connect("s2", {})
    await sockets.close()
    assert sorted(transport.dropped) == ["s1", "s2"] and sockets.session_count == 0
    await asyncio.sleep(0)
    assert not hub.subs


async def test_an_auth_check_that_cannot_run_lets_the_miner_reconnect(clock):
    transport, hub = Recorder(), FakeHub()

    async def metagraph_down(hotkey):
        raise OSError("connection refused")

    async def no_jobs():
        return
        yield

    sockets = MinerSockets(transport, lambda: hub, SocketAuthenticator(clock.now, metagraph_down), no_jobs,
                           drop=transport.drop)
    await connected(sockets, "s1", ALICE)
    [(name, body)] = transport.sent["s1"]
    assert name == "auth_failed" and "reconnect" in body["error"]
    assert transport.dropped == ["s1"] and transport.disconnected == [] and sockets.session_count == 0


async def test_a_job_announced_while_the_replay_runs_is_sent_once(clock):
    transport, hub = Recorder(), FakeHub()

    async def open_jobs():  # the job's own event reaches the subscription while the replay reads it
        hub.publish(OPEN_JOB)
        hub.publish(events.bounty_change("chute-1", 7))
        yield OPEN_JOB

    sockets = MinerSockets(transport, lambda: hub, SocketAuthenticator(clock.now, check_hotkey), open_jobs,
                           drop=transport.drop)
    await connected(sockets, "s1", ALICE)
    await transport.until(lambda: len(transport.broadcasts("s1")) == 2)
    hub.publish(OPEN_JOB)  # announced again later (ReleaseJob): sent again
    await transport.until(lambda: len(transport.broadcasts("s1")) == 3)
    assert [b["reason"] for b in transport.broadcasts("s1")] == ["job_created", "bounty_change", "job_created"]
    await sockets.close()
