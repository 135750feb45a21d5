"""A provider account's rate limit holds across replicas: the token bucket lives in Redis, so two replicas on one
account share one balance (before, each replica had its own and the account got N times its rate). When Redis
does not answer, each replica keeps limiting itself with its own bucket instead of stopping provider calls."""
from __future__ import annotations

from dataclasses import replace

import pytest
from redis.asyncio import Redis

from gantry_server.broker.wiring import share_rate_limits
from gantry_server.clock import ManualClock
from gantry_server.providers.base import OfferQuery, ProviderError
from gantry_server.providers.vastai import POLICY, VastAiProvider
from tests.fakes import FakeVastAi
from tests.fakes.sleep import ManualSleep

from .broker_harness import T0

KEY = "vast-key-0123456789abcdef"
ONE_PER_SECOND = replace(POLICY, rate_per_second=1.0, burst=2)


@pytest.fixture
async def fake():
    async with FakeVastAi(api_key=KEY) as f:
        yield f


def replica(fake, clock, redis, api_key=KEY) -> tuple[VastAiProvider, ManualSleep]:
    """One replica's provider as wiring builds it; its sleeps are recorded, and the clock does not move (the
    replicas call at the same moment)."""
    sleep = ManualSleep(clock, advance=False)
    provider = VastAiProvider(api_key=api_key, base_url=fake.base_url, clock=clock, sleep=sleep,
                              policy=ONE_PER_SECOND)
    share_rate_limits({"vastai": provider}, redis)
    return provider, sleep


async def test_two_replicas_on_one_account_share_its_rate(fake, redis):
    clock = ManualClock(T0)
    (a, a_sleep), (b, b_sleep) = replica(fake, clock, redis), replica(fake, clock, redis)
    try:
        for _ in range(2):
            await a.list_offers(OfferQuery())
        assert a_sleep.take() == []  # replica A spent the account's burst
        for _ in range(2):
            await b.list_offers(OfferQuery())
        assert b_sleep.take() == [1.0, 2.0]  # so replica B waits its turn: one call per second for the account
        clock.advance(seconds=60)  # refilled, never beyond the burst
        for _ in range(3):
            await b.list_offers(OfferQuery())
        assert b_sleep.take() == [1.0]
    finally:
        await a.aclose()
        await b.aclose()


async def test_different_accounts_do_not_share_a_bucket(fake, redis):
    clock = ManualClock(T0)
    (a, a_sleep), (b, b_sleep) = replica(fake, clock, redis), replica(fake, clock, redis, api_key="other-key-98765")
    try:
        for _ in range(2):
            await a.list_offers(OfferQuery())
        with pytest.raises(ProviderError):  # the fake knows only KEY; the call still went out at once
            await b.list_offers(OfferQuery())
        assert a_sleep.take() == [] and b_sleep.take() == []
    finally:
        await a.aclose()
        await b.aclose()


async def test_without_redis_each_replica_still_limits_itself(fake):
    clock = ManualClock(T0)
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    provider, sleep = replica(fake, clock, dead)
    try:
        for _ in range(3):
            assert await provider.list_offers(OfferQuery()) == []  # calls go on
        assert sleep.take() == [1.0]  # the process's own bucket: burst 2, then one per second
    finally:
        await provider.aclose()
        await dead.aclose()
