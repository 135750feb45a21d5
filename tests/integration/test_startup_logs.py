"""StreamStartupLogs (`GET /miner/instance_logs?cursor=`, the miner CLI, miner-contract.md C5, reference §6.14)
against a real log endpoint on loopback (tests/integration/logserver.py): the launch JWT as the raw Authorization
header, each line re-framed with its cursor, resuming without repeats, ending after the activation sentinel or the
time cap, waiting for the instance, and the reference's refusals with their statuses and words.
"""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import grpc
import httpx
import pytest
from sqlalchemy import insert, select

from gantry.instances.v1 import instances_pb2, instances_pb2_grpc
from gantry_server.app import GantryApp
from gantry_server.config import LaunchSettings
from gantry_server.domain.auth.launch_tokens import LaunchTokenKeys
from gantry_server.store.models import chutes, images, instances, launch_configs, users

from ..conftest import make_settings
from .logserver import LogServer, live_line

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
CAP_SECONDS = 1.5
SENTINEL_AT = 3


def startup_line(i: int) -> str:
    if i == SENTINEL_AT:
        return f"2026-03-02T12:00:{i:02d}.{i:06d}Z Instance activated: {{\"instance_id\": \"inst-1\"}}"
    return live_line(i)


def frame(text: str) -> bytes:
    """What the CLI reads for one line: compact JSON with the cursor added."""
    return b"data: " + json.dumps({"log": text, "cursor": text[:19]}, separators=(",", ":")).encode() + b"\n\n"


@pytest.fixture(scope="module")
async def app(database_url, redis_url, tmp_path_factory):
    launch = LaunchSettings(logs_connect_timeout_seconds=2.0, logs_idle_timeout_seconds=5.0,
                            startup_logs_max_seconds=CAP_SECONDS, startup_logs_poll_seconds=0.05)
    gantry = GantryApp(make_settings(database_url, redis_url, tmp_path_factory.mktemp("startup"), launch=launch))
    await gantry.start()
    yield gantry
    await gantry.stop(0)


@pytest.fixture
async def http(app):
    async with httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=10) as client:
        yield client


@pytest.fixture
async def world(app, clean_db, redis):
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(users).values(user_id="u-1", username="owner", created_at=NOW))
        await conn.execute(insert(images).values(image_id="img-1", user_id="u-1", name="vllm", tag="1",
                                                 created_at=NOW, updated_at=NOW))
        for chute_id, public in (("chute-private", False), ("chute-public", True)):
            await conn.execute(insert(chutes).values(chute_id=chute_id, user_id="u-1", name=chute_id,
                                                     image_id="img-1", version="1", public=public,
                                                     created_at=NOW, updated_at=NOW))


async def put_config(app, config_id: str, *, chute_id: str = "chute-public", failed: str | None = None) -> str:
    """A launch config row and its launch JWT."""
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(launch_configs).values(
            config_id=config_id, chute_id=chute_id, env_key="k" * 32, env_type="graval", miner_uid=7,
            miner_hotkey="5miner", miner_coldkey="cold", created_at=NOW,
            failed_at=NOW if failed else None, verification_error=failed))
    return token_for(app, config_id, chute_id)


def token_for(app, config_id: str, chute_id: str, keys: LaunchTokenKeys | None = None) -> str:
    return (keys or app.rt.launch_keys).issue(
        config_id=config_id, chute_id=chute_id, url=f"http://x/instances/launch_config/{config_id}",
        env_key="k" * 32, egress=False, lock_modules=True, env_type="graval",
        now=int(app.rt.clock.now().timestamp()))


async def put_instance(app, config_id: str, log_port: int, *, chute_id: str = "chute-public",
                       activated: bool = False) -> None:
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(instances).values(
            instance_id="inst-1", chute_id=chute_id, version="1", host="127.0.0.1", port=log_port + 1,
            port_mappings=[{"proto": "tcp", "internal_port": 8001, "external_port": log_port}], miner_uid=7,
            miner_hotkey="5miner", miner_coldkey="cold", active=activated, verified=activated, created_at=NOW,
            activated_at=NOW if activated else None, config_id=config_id, symmetric_key_enc=b"envelope"))


# -- relay --------------------------------------------------------------------------------------------------------
async def test_rest_frames_each_line_with_its_cursor_and_ends_after_the_activation_sentinel(app, http, world):
    token = await put_config(app, "cfg-1")
    async with LogServer(interval=0.01, history=0, lines=startup_line) as logs:
        await put_instance(app, "cfg-1", logs.port)
        r = await asyncio.wait_for(http.get("/miner/instance_logs", headers={"Authorization": token}), 5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.content == b"".join(frame(startup_line(i)) for i in range(SENTINEL_AT + 1))
    assert logs.connections[0].path == "/logs/stream?backfill=10000"
    async with app.rt.engine.connect() as conn:  # reading logs does not spend the one-time claim
        assert (await conn.execute(select(launch_configs.c.retrieved_at))).scalar_one() is None


async def test_resuming_from_a_cursor_sends_only_the_later_lines(app, http, channel, world):
    token = await put_config(app, "cfg-1")
    stub = instances_pb2_grpc.InstanceServiceStub(channel)
    async with LogServer(interval=0.01, history=0, lines=startup_line) as logs:
        await put_instance(app, "cfg-1", logs.port)
        cursor = live_line(1)[:19]
        r = await asyncio.wait_for(http.get(f"/miner/instance_logs?cursor={cursor}",
                                            headers={"Authorization": f"Bearer {token}"}), 5)
        call = stub.StreamStartupLogs(instances_pb2.StreamStartupLogsRequest(cursor=cursor),
                                      metadata=(("authorization", token),))
        got = [m async for m in call]
    assert r.content == frame(startup_line(2)) + frame(startup_line(3))
    assert [(m.log, m.cursor) for m in got] == [(startup_line(i), startup_line(i)[:19]) for i in (2, 3)]


async def test_waits_for_the_instance_then_relays_its_lines(app, http, world):
    token = await put_config(app, "cfg-1")
    async with LogServer(interval=0.01, history=0, lines=startup_line) as logs:
        async with http.stream("GET", "/miner/instance_logs", headers={"Authorization": token}) as r:
            chunks = r.aiter_raw()
            assert await asyncio.wait_for(anext(chunks), 5) == b"data: Waiting for instance to be created...\n\n"
            await put_instance(app, "cfg-1", logs.port)
            body = b"".join([chunk async for chunk in chunks])
    assert body.replace(b"data: Waiting for instance to be created...\n\n", b"") == b"".join(
        frame(startup_line(i)) for i in range(SENTINEL_AT + 1))


async def test_a_stream_without_the_sentinel_ends_at_the_time_cap(app, http, world):
    token = await put_config(app, "cfg-1")
    async with LogServer(interval=0.05, history=0) as logs:
        await put_instance(app, "cfg-1", logs.port)
        started = asyncio.get_running_loop().time()
        r = await asyncio.wait_for(http.get("/miner/instance_logs", headers={"Authorization": token}), 5)
        took = asyncio.get_running_loop().time() - started
        [conn] = logs.connections
        await asyncio.wait_for(conn.closed.wait(), 1.0)  # the upstream connection is closed with it
    assert r.status_code == 200 and CAP_SECONDS - 0.1 < took < CAP_SECONDS + 1.5
    assert r.content.startswith(frame(live_line(0)) + frame(live_line(1)))


# -- refusals -----------------------------------------------------------------------------------------------------
async def test_a_private_chute_is_refused_with_the_reference_words(app, http, world):
    token = await put_config(app, "cfg-1", chute_id="chute-private")
    r = await http.get("/miner/instance_logs", headers={"Authorization": token})
    assert r.status_code == 403 and r.json()["detail"] == "Logs are only available for public chutes."


async def test_an_activated_instance_is_refused_with_the_reference_words(app, http, world):
    token = await put_config(app, "cfg-1")
    await put_instance(app, "cfg-1", 20000, activated=True)
    r = await http.get("/miner/instance_logs", headers={"Authorization": token})
    assert r.status_code == 403
    assert r.json()["detail"] == "Instance has already been activated; logs are no longer available."


async def test_a_failed_launch_without_an_instance_answers_422_with_its_reason(app, http, world):
    token = await put_config(app, "cfg-1", failed="GPU mismatch")
    r = await http.get("/miner/instance_logs", headers={"Authorization": token})
    assert r.status_code == 422 and r.json()["detail"] == "Instance launch failed: GPU mismatch"


async def test_a_malformed_cursor_is_refused(app, http, world):
    token = await put_config(app, "cfg-1")
    r = await http.get("/miner/instance_logs?cursor=yesterday", headers={"Authorization": token})
    assert r.status_code == 400
    assert r.json()["detail"] == "cursor must be an ISO timestamp like 2026-04-01T17:53:05"


async def test_no_token_a_forged_token_and_an_unknown_config_are_refused(app, http, channel, world):
    assert (await http.get("/miner/instance_logs")).status_code == 401
    forged = token_for(app, "cfg-1", "chute-public", keys=LaunchTokenKeys.generate())
    await put_config(app, "cfg-1")
    assert (await http.get("/miner/instance_logs", headers={"Authorization": forged})).status_code == 401
    assert (await http.get("/miner/instance_logs", headers={"Authorization": "not-a-jwt"})).status_code == 401
    stub = instances_pb2_grpc.InstanceServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [m async for m in stub.StreamStartupLogs(instances_pb2.StreamStartupLogsRequest())]
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    unknown = token_for(app, "cfg-unknown", "chute-public")
    r = await http.get("/miner/instance_logs", headers={"Authorization": unknown})
    assert r.status_code == 404 and r.json()["detail"] == "Launch config not found."
