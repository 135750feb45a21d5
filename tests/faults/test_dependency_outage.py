"""Issue 15, defect 1: PostgreSQL or Redis down while serving, with real servers stopped and started again.

PostgreSQL down: gRPC health NOT_SERVING, REST /health and /ready 503, database-backed calls UNAVAILABLE / 503
(not INTERNAL / 500) within their deadline, and SERVING again once it is back, without a restart. Redis down:
WatchSession UNAVAILABLE. The dependency watcher's probe is called directly (its loop runs every 2 s on its own).
"""
from __future__ import annotations

import logging
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gantry.broker.v1 import sessions_pb2, sessions_pb2_grpc
from gantry_server.app import GantryApp
from gantry_server.config import BrokerSettings

from ..conftest import make_settings
from .services import StoppablePostgres, StoppableRedis

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def own_services(tmp_path_factory):
    root = tmp_path_factory.mktemp("outage")
    pg = StoppablePostgres(root)
    redis = StoppableRedis(root)
    yield pg, redis
    redis.close()
    pg.close()


@pytest.fixture(scope="module")
async def served(own_services, tmp_path_factory):
    pg, redis = own_services
    settings = make_settings(pg.url, redis.url, tmp_path_factory.mktemp("outage-app"),
                             broker=BrokerSettings(providers=(), background_loops=False, fast_verify=False))
    app = GantryApp(settings)
    await app.start()
    app.dependencies.interval = 3600  # the test probes by hand
    async with grpc.aio.insecure_channel(app.grpc_addr) as channel, \
            httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=30) as http:
        yield app, channel, http
    await app.stop(0)


async def _health(channel) -> int:
    return (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))).status


async def test_postgres_down_is_not_serving_and_unavailable_then_recovers(served, own_services, caplog):
    app, channel, http = served
    pg, _ = own_services
    stub = sessions_pb2_grpc.SessionServiceStub(channel)
    assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    assert (await http.get("/ready")).status_code == 200

    pg.stop()
    try:
        caplog.clear()
        await app.dependencies.check()
        assert await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        health = await http.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert (await http.get("/ready")).status_code == 503

        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetSession(sessions_pb2.GetSessionRequest(id="s-1"), timeout=8)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        assert "PostgreSQL is unavailable" in err.value.details()
        assert time.monotonic() - started < 6  # failed fast, well within the deadline
        rest = await http.get("/api/v1/sessions/s-1")
        assert rest.status_code == 503, rest.text
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback per call
    finally:
        pg.start()
    await app.dependencies.check()
    assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    assert (await http.get("/ready")).status_code == 200
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetSession(sessions_pb2.GetSessionRequest(id="s-1"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # the database answers again: no restart needed


async def _a_session(app) -> str:
    """A running session row (this server has no provider: written as a create would leave it)."""
    import uuid
    from datetime import timedelta

    from sqlalchemy import insert

    from gantry_server.broker.keys import generate_keypair
    from gantry_server.store.models import broker_sessions

    sid, key, now = str(uuid.uuid4()), generate_keypair(), app.rt.clock.now()
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(broker_sessions).values(
            id=sid, consumer_id="watcher", provider="vastai", offer_id="o-1", gpu_type="RTX 4090", status="running",
            ssh_user="root", ssh_public_key=key.public_openssh,
            ssh_private_key_enc=app.rt.keyring.encrypt(key.private_pem.encode(),
                                                       context=f"broker-session-key:{sid}".encode()),
            workload_type="llm", reservation_hours=1, price_per_hour=0.5, created_at=now,
            expires_at=now + timedelta(hours=1), provision_deadline=now + timedelta(minutes=10), updated_at=now))
    return sid


async def test_redis_down_watch_session_is_unavailable(served, own_services, caplog):
    app, channel, http = served
    _, redis = own_services
    stub = sessions_pb2_grpc.SessionServiceStub(channel)
    sid = await _a_session(app)
    redis.stop()
    try:
        caplog.clear()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.WatchSession(sessions_pb2.WatchSessionRequest(id=sid), timeout=10):
                pass
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        assert "Redis is unavailable" in err.value.details()
        await app.dependencies.check()
        assert not app.dependencies.redis_ok
        # Redis down does not take the process out of service (what needs it fails closed by itself).
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        redis.start()
    await app.dependencies.check()
    assert app.dependencies.redis_ok


async def test_postgres_lost_during_migrations_is_one_line_not_a_traceback(own_services, tmp_path, monkeypatch):
    """A `serve` started while PostgreSQL restarts (seen by the fault harness): the start fails with the same
    one-line DatabaseUnreachable as an unreachable database (the CLI prints it and exits 2), not a traceback."""
    from gantry_server import app as app_module
    from gantry_server.store.db import DatabaseUnreachable

    pg, redis = own_services
    upgrade = app_module.migrate.upgrade

    async def upgrade_after_a_restart_began(engine, *args, **kwargs):
        pg.stop()  # the real server goes away between the reachability check and the migrations
        return await upgrade(engine, *args, **kwargs)

    monkeypatch.setattr(app_module.migrate, "upgrade", upgrade_after_a_restart_began)
    gantry = GantryApp(make_settings(pg.url, redis.url, tmp_path, migrate_on_start=True,
                                     broker=BrokerSettings(providers=(), background_loops=False)))
    try:
        with pytest.raises(DatabaseUnreachable) as err:
            await gantry.start()
        message = str(err.value)
        assert message.startswith("PostgreSQL became unreachable while starting: ") and "\n" not in message
        assert gantry.rt is None and gantry.server is None  # what was started is undone
    finally:
        pg.start()
    # The module's server then stops cleanly although its pooled connections were closed by the restart (its
    # fixture's teardown: releasing the broker's leases retries on a fresh connection instead of failing the stop).
