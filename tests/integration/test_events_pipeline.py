"""The event pipeline below WatchEvents: outbox -> relay -> Redis Stream -> hub -> subscriber.

Real PostgreSQL and Redis; the relay is driven by hand (`run_once`) except where its LISTEN wake-up is the
point, and time moves on a ManualClock.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from gantry_server.clock import ManualClock
from gantry_server.config import MinerSettings
from gantry_server.domain import events
from gantry_server.domain.events.hub import CursorTooOld, EventHub, SubscriberTooSlow
from gantry_server.domain.events.relay import OutboxRelay
from gantry_server.store import redis_keys
from gantry_server.store.db import unit_of_work
from gantry_server.store.models import event_outbox

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
ALICE, BOB = "5Alice", "5Bob"


class Crash(Exception):
    pass


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


def make_relay(engine, redis, clock, **miner) -> OutboxRelay:
    miner.setdefault("background_loops", False)
    return OutboxRelay(engine, redis, clock, MinerSettings(**miner))


@pytest.fixture
async def hub(redis):
    h = EventHub(redis, buffer=1000, block_ms=200)
    await h.start()
    yield h
    await h.stop()


async def publish(engine, clock, event: events.Event) -> None:
    async with unit_of_work(engine) as conn:
        await events.publish(conn, event, now=clock.now())


def job(n: int) -> events.Event:
    return events.job_deleted(instance_id=f"inst-{n}", job_id=f"job-{n}")


async def outbox_rows(engine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(event_outbox))).scalar_one()


async def until(predicate, timeout: float = 10.0) -> None:
    """Wait for something another task does (the hub's reader), never for time to pass."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_a_rolled_back_publish_announces_nothing_and_a_commit_reaches_a_subscriber(clean_db, redis, hub,
                                                                                          clock):
    relay = make_relay(clean_db, redis, clock)
    async with hub.subscribe(ALICE) as sub:
        with pytest.raises(Crash):
            async with unit_of_work(clean_db) as conn:
                await events.publish(conn, job(1), now=clock.now())
                raise Crash
        await publish(clean_db, clock, events.bounty_change("chute-1", 7))
        assert await relay.run_once() == 1

        got = await sub.next(10)
    assert (got.reason, got.data, got.recipients) == ("bounty_change", {"chute_id": "chute-1", "bounty": 7}, None)
    assert got.message == "bounty of chute chute-1 is now 7" and got.created_at == START
    assert await redis.xlen(redis_keys.events_stream()) == 1 and await outbox_rows(clean_db) == 0


async def test_a_relay_that_dies_between_append_and_commit_still_delivers_once(clean_db, redis, hub, clock):
    relay = make_relay(clean_db, redis, clock)
    await publish(clean_db, clock, job(1))
    with pytest.raises(Crash):
        async with clean_db.begin() as conn:
            await relay.relay_batch(conn)  # XADD done (the Lua step) ...
            raise Crash  # ... and the process dies before COMMIT: the outbox row is back
    assert await outbox_rows(clean_db) == 1 and await redis.xlen(redis_keys.events_stream()) == 1

    assert await relay.run_once() == 1  # the retry takes the row again and finds it relayed
    await publish(clean_db, clock, job(2))
    await relay.run_once()

    async with hub.subscribe(ALICE, cursor="0") as sub:
        seen = [(await sub.next(10)).data["job_id"] for _ in range(2)]
    assert seen == ["job-1", "job-2"]
    assert await redis.xlen(redis_keys.events_stream()) == 2 and await outbox_rows(clean_db) == 0


async def test_a_commit_wakes_the_relay_without_waiting_for_its_poll(clean_db, redis, hub, clock):
    relay = make_relay(clean_db, redis, clock, background_loops=True, events_relay_poll_seconds=3600)
    await relay.start()
    try:
        await until(lambda: relay.listening)
        async with hub.subscribe(ALICE) as sub:
            await publish(clean_db, clock, job(1))
            got = await sub.next(10)
    finally:
        await relay.stop()
    assert got is not None and got.data["job_id"] == "job-1"


async def test_the_stream_keeps_outbox_order_across_batches(clean_db, redis, hub, clock):
    relay = make_relay(clean_db, redis, clock)
    relay.batch = 3
    for n in range(10):
        await publish(clean_db, clock, job(n))
    assert await relay.drain() == 10
    async with hub.subscribe(ALICE, cursor="0") as sub:
        seen = [(await sub.next(10)).data["job_id"] for _ in range(10)]
    assert seen == [f"job-{n}" for n in range(10)]


async def test_targeted_events_reach_only_their_recipient_and_reasons_narrow_the_feed(clean_db, redis, hub, clock):
    relay = make_relay(clean_db, redis, clock)
    async with hub.subscribe(ALICE) as alice, hub.subscribe(BOB) as bob, \
            hub.subscribe(BOB, reasons=frozenset({"instance_verified"})) as bob_verified:
        await publish(clean_db, clock, events.instance_verified(instance_id="i-1", miner_hotkey=ALICE))
        await publish(clean_db, clock, job(1))
        await publish(clean_db, clock, events.instance_verified(instance_id="i-2", miner_hotkey=BOB))
        await relay.run_once()
        assert [(await alice.next(10)).reason for _ in range(2)] == ["instance_verified", "job_deleted"]
        assert [(await bob.next(10)).reason for _ in range(2)] == ["job_deleted", "instance_verified"]
        assert (await bob_verified.next(10)).data == {"instance_id": "i-2", "miner_hotkey": BOB}

        await publish(clean_db, clock, events.instance_verified(instance_id="i-3", miner_hotkey=BOB))
        await publish(clean_db, clock, job(2))
        await relay.run_once()
        assert (await alice.next(10)).data["job_id"] == "job-2"  # Bob's i-3 never reached Alice
        assert (await bob_verified.next(10)).data["instance_id"] == "i-3"


async def test_resuming_replays_then_switches_to_live_without_gaps_or_repeats(clean_db, redis, hub, clock):
    relay = make_relay(clean_db, redis, clock)
    for n in range(10):
        await publish(clean_db, clock, job(n))
    await relay.run_once()
    first = (await redis.xrange(redis_keys.events_stream(), count=1))[0][0].decode()

    async with hub.subscribe(ALICE, cursor=first) as sub:
        for n in range(10, 15):  # arrive live while the subscriber has not replayed yet: in Redis and in its buffer
            await publish(clean_db, clock, job(n))
        await relay.run_once()
        newest = (await redis.xrevrange(redis_keys.events_stream(), count=1))[0][0].decode()
        await until(lambda: hub.last_read == newest)  # the hub has handed them to the subscriber too
        seen = [(await sub.next(10)).data["job_id"] for _ in range(14)]
        assert await sub.next(0) is None  # caught up: the 5 also held live are not repeated
        await publish(clean_db, clock, job(15))
        await relay.run_once()
        seen.append((await sub.next(10)).data["job_id"])
    assert seen == [f"job-{n}" for n in range(1, 16)]


async def test_a_subscriber_catching_up_is_not_dropped_for_events_arriving_meanwhile(clean_db, redis, clock):
    hub = EventHub(redis, buffer=3, block_ms=200)
    await hub.start()
    relay = make_relay(clean_db, redis, clock)
    try:
        async with hub.subscribe(ALICE, cursor="0") as sub:
            for n in range(8):
                await publish(clean_db, clock, job(n))
                await relay.run_once()
            newest = (await redis.xrevrange(redis_keys.events_stream(), count=1))[0][0].decode()
            await until(lambda: hub.last_read == newest)  # all 8 offered live: more than its buffer of 3
            seen = [(await sub.next(10)).data["job_id"] for _ in range(8)]
    finally:
        await hub.stop()
    assert seen == [f"job-{n}" for n in range(8)]


async def test_a_subscriber_that_falls_behind_is_dropped_and_memory_stays_bounded(clean_db, redis, clock):
    hub = EventHub(redis, buffer=3, block_ms=200)
    await hub.start()
    relay = make_relay(clean_db, redis, clock)
    try:
        async with hub.subscribe(ALICE) as slow, hub.subscribe(BOB) as keeping_up:
            for n in range(3):  # fills the slow subscriber's buffer
                await publish(clean_db, clock, job(n))
            await relay.run_once()
            seen = [(await keeping_up.next(10)).data["job_id"] for _ in range(3)]
            await publish(clean_db, clock, job(3))  # one more than it can hold
            await relay.run_once()
            seen.append((await keeping_up.next(10)).data["job_id"])
            assert hub.subscriber_count == 1
            with pytest.raises(SubscriberTooSlow):
                await slow.next(10)
    finally:
        await hub.stop()
    assert seen == [f"job-{n}" for n in range(4)]


async def test_a_cursor_trimmed_by_length_is_too_old_and_the_next_one_still_resumes(clean_db, redis, hub, clock):
    relay = make_relay(clean_db, redis, clock, events_max_len=3)
    for n in range(5):
        await publish(clean_db, clock, job(n))
    await relay.run_once()
    assert await redis.xlen(redis_keys.events_stream()) == 3
    async with hub.subscribe(ALICE, cursor="0") as sub:
        kept = [await sub.next(10) for _ in range(3)]
    assert [e.data["job_id"] for e in kept] == ["job-2", "job-3", "job-4"]
    gone_last = (await redis.get(redis_keys.events_trimmed())).decode()  # job-1's id

    with pytest.raises(CursorTooOld):
        async with hub.subscribe(ALICE, cursor=_before(gone_last)):
            pass
    async with hub.subscribe(ALICE, cursor=gone_last) as sub:  # job-1 was received: nothing after it is lost
        assert (await sub.next(10)).data["job_id"] == "job-2"


async def test_a_cursor_trimmed_by_age_is_too_old(clean_db, redis, hub, clock):
    relay = make_relay(clean_db, redis, clock, events_max_age_seconds=60)
    await publish(clean_db, clock, job(0))
    await relay.run_once()
    old = (await redis.xrange(redis_keys.events_stream()))[0][0].decode()
    clock.advance(seconds=30)
    await publish(clean_db, clock, job(1))
    await relay.run_once()
    assert await redis.xlen(redis_keys.events_stream()) == 2
    clock.advance(seconds=40)  # job-0 is now 70 s old, job-1 40 s
    await relay.run_once()  # an idle relay still trims by age
    assert await redis.xlen(redis_keys.events_stream()) == 1

    with pytest.raises(CursorTooOld):
        async with hub.subscribe(ALICE, cursor=_before(old)):
            pass
    async with hub.subscribe(ALICE, cursor=old) as sub:
        assert (await sub.next(10)).data["job_id"] == "job-1"


def _before(cursor: str) -> str:
    ms, seq = map(int, cursor.split("-"))
    return f"{ms}-{seq - 1}" if seq else f"{ms - 1}-0"


async def test_stream_ids_follow_the_injected_clock_and_never_go_back(clean_db, redis, hub, clock):
    relay = make_relay(clean_db, redis, clock)
    await publish(clean_db, clock, job(0))
    await relay.run_once()
    clock.advance(seconds=-10)  # another replica's clock behind this one
    await publish(clean_db, clock, job(1))
    await relay.run_once()
    ids = [i.decode() for i, _ in await redis.xrange(redis_keys.events_stream())]
    start_ms = int(START.timestamp() * 1000)
    assert ids == [f"{start_ms}-0", f"{start_ms}-1"]


async def test_a_live_subscriber_that_missed_trimmed_events_is_told_to_resync(clean_db, redis, hub, clock):
    relay = make_relay(clean_db, redis, clock, events_max_len=3)
    async with hub.subscribe(ALICE) as sub:
        for n in range(5):  # one append of 5 that keeps 3: job-0 and job-1 are gone before the hub reads
            await publish(clean_db, clock, job(n))
        await relay.run_once()
        with pytest.raises(CursorTooOld):
            await sub.next(10)


async def test_the_hub_follows_a_stream_that_was_reset(clean_db, redis, hub, clock):
    relay = make_relay(clean_db, redis, clock)
    clock.advance(hours=1)
    async with hub.subscribe(ALICE) as sub:
        await publish(clean_db, clock, job(1))
        await relay.run_once()
        assert (await sub.next(10)).data["job_id"] == "job-1"
        await redis.flushdb()  # Redis lost its data; the new stream's ids start below what the hub had read
        clock.advance(hours=-1)
        await publish(clean_db, clock, job(2))
        await relay.run_once()
        assert (await sub.next(10)).data["job_id"] == "job-2"
