"""A broker under test: a live Gantry (gRPC + REST) on real PostgreSQL/Redis, a ManualClock, loops driven by hand.

The provider is the simulated one (instances are real asyncssh servers on loopback) unless a test passes
its own; the periodic loops and the fast verification path are off, so a test moves time with `clock.advance`
and runs `tick()` / `reconcile()` itself: nothing depends on timing.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import AsyncIterator

import grpc
import httpx
from sqlalchemy import func, select

from gantry.broker.v1 import sessions_pb2, sessions_pb2_grpc
from gantry_server.app import GantryApp
from gantry_server.clock import ManualClock
from gantry_server.config import BrokerSettings
from gantry_server.providers.simulated import SimulatedProvider
from gantry_server.store.models import broker_costs, broker_sessions

from ..conftest import make_settings

T0 = datetime(2026, 3, 2, 9, 15, tzinfo=timezone.utc)


@dataclass
class Harness:
    app: GantryApp
    clock: ManualClock
    provider: SimulatedProvider
    channel: grpc.aio.Channel
    http: httpx.AsyncClient
    keys: dict[str, str] = field(default_factory=dict)  # session id -> private key from the create

    @property
    def stub(self) -> sessions_pb2_grpc.SessionServiceStub:
        return sessions_pb2_grpc.SessionServiceStub(self.channel)

    @property
    def lifecycle(self):
        return self.app.rt.lifecycle

    async def offer(self, **where) -> str:
        offers = await self.app.rt.inventory.provider_offers()
        for o in offers:
            if all(getattr(o, k) == v for k, v in where.items()):
                return o.offer_id
        raise AssertionError(f"no offer with {where}")

    async def create(self, consumer: str = "app", offer_id: str | None = None, **kw) -> sessions_pb2.Session:
        req = sessions_pb2.CreateSessionRequest(consumer_id=consumer, offer_id=offer_id or await self.offer(),
                                                workload_type=kw.pop("workload_type", "llm"),
                                                reservation_hours=kw.pop("reservation_hours", 2), **kw)
        response = await self.stub.CreateSession(req)
        self.keys[response.session.id] = response.ssh_private_key
        return response.session

    async def get(self, session_id: str) -> sessions_pb2.Session:
        return (await self.stub.GetSession(sessions_pb2.GetSessionRequest(id=session_id))).session

    async def boot(self, session_id: str) -> sessions_pb2.Session:
        """Let the simulated instance boot and run the verification step that sees it."""
        self.clock.advance(seconds=self.app.settings.broker.simulated_boot_seconds + 1)
        await self.lifecycle.tick()
        return await self.get(session_id)

    async def row(self, session_id: str):
        async with self.app.rt.engine.connect() as conn:
            return (await conn.execute(select(broker_sessions).where(broker_sessions.c.id == session_id))).first()

    async def cost_rows(self, session_id: str) -> list:
        async with self.app.rt.engine.connect() as conn:
            return list((await conn.execute(select(broker_costs).where(broker_costs.c.session_id == session_id)
                                            .order_by(broker_costs.c.hour))).all())

    async def recorded_cost(self, session_id: str) -> Decimal:
        async with self.app.rt.engine.connect() as conn:
            total = (await conn.execute(select(func.coalesce(func.sum(broker_costs.c.amount), 0))
                                        .where(broker_costs.c.session_id == session_id))).scalar()
        return Decimal(total)


def broker_settings(**kw) -> BrokerSettings:
    kw.setdefault("providers", ("simulated",))
    kw.setdefault("fast_verify", False)
    kw.setdefault("background_loops", False)
    kw.setdefault("simulated_boot_seconds", 30.0)
    kw.setdefault("simulated_offer_count", 12)
    return BrokerSettings(**kw)


@asynccontextmanager
async def providerless_app(database_url: str, redis_url: str, tmp_path, clock: ManualClock,
                           **broker_kw) -> AsyncIterator[GantryApp]:
    """A live Gantry with no GPU provider and no loops, for tests that insert session rows themselves: nothing
    but the test touches them."""
    broker_kw.setdefault("providers", ())
    broker_kw.setdefault("background_loops", False)
    settings = make_settings(database_url, redis_url, tmp_path, broker=BrokerSettings(**broker_kw))
    app = GantryApp(settings, clock=clock)
    await app.start()
    try:
        yield app
    finally:
        await app.stop(0)


@asynccontextmanager
async def running_broker(database_url: str, redis_url: str, tmp_path, *, provider=None, clock=None,
                         **broker_kw) -> AsyncIterator[Harness]:
    clock = clock or ManualClock(T0)
    own_provider = provider is None
    settings = make_settings(database_url, redis_url, tmp_path, broker=broker_settings(**broker_kw))
    provider = provider or SimulatedProvider(clock=clock, offer_count=settings.broker.simulated_offer_count,
                                             boot_seconds=settings.broker.simulated_boot_seconds)
    app = GantryApp(settings, clock=clock, providers={provider.name: provider} if settings.broker.providers else {})
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.grpc_addr) as channel, \
                httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=30) as http:
            yield Harness(app=app, clock=clock, provider=provider, channel=channel, http=http)
    finally:
        await app.stop(0)
        if own_provider:  # a provider passed in outlives this server (restart tests)
            await provider.shutdown()
