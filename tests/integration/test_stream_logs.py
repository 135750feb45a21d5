"""StreamLogs over gRPC and REST against a real log endpoint on loopback (tests/integration/logserver.py) behind an
instance row: every line relayed in order (REST: the upstream bytes unchanged), validator-signed upstream calls,
a client that goes away closes the upstream connection within a second, an upstream that dies or goes silent ends
the stream with UNAVAILABLE, and the reference's access rules, statuses and words.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import grpc
import httpx
import pytest
from bittensor_wallet import Keypair
from sqlalchemy import insert

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry.instances.v1 import instances_pb2, instances_pb2_grpc
from gantry_server.app import GantryApp
from gantry_server.config import LaunchSettings
from gantry_server.store.models import chutes, images, instances

from ..conftest import ADMIN_METADATA, make_settings
from .logserver import LogServer, event, live_line
from .servers_harness import error_info

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
VALIDATOR = Keypair.create_from_uri("//Alice")
MINER = Keypair.create_from_uri("//Bob")
FORBIDDEN = "You may only view logs for your own (private) chutes."
IDLE_TIMEOUT = 1.0


@pytest.fixture(scope="module")
async def app(database_url, redis_url, tmp_path_factory):
    launch = LaunchSettings(logs_connect_timeout_seconds=2.0, logs_idle_timeout_seconds=IDLE_TIMEOUT,
                            validator_key_uri="//Alice")
    gantry = GantryApp(make_settings(database_url, redis_url, tmp_path_factory.mktemp("logs"), launch=launch))
    await gantry.start()
    yield gantry
    await gantry.stop(0)


@pytest.fixture
async def http(app):
    async with httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=10) as client:
        yield client


@pytest.fixture
async def keys(app, channel, clean_db, redis):
    """API keys of four users (owner of both chutes, a stranger, support, subnet admin) and the chutes."""
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    out = {}
    for name, roles in (("owner", []), ("stranger", []), ("support", ["chutes_support"]),
                        ("admin", ["subnet_admin"])):
        user = await admin.CreateUser(admin_pb2.CreateUserRequest(username=name, roles=roles),
                                      metadata=ADMIN_METADATA)
        key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=user.user_id), metadata=ADMIN_METADATA)
        out[name] = (user.user_id, key.secret_key)
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(images).values(image_id="img-1", user_id=out["owner"][0], name="vllm", tag="1",
                                                 created_at=NOW, updated_at=NOW))
        for chute_id, public in (("chute-private", False), ("chute-public", True)):
            await conn.execute(insert(chutes).values(chute_id=chute_id, user_id=out["owner"][0], name=chute_id,
                                                     image_id="img-1", version="1", public=public,
                                                     created_at=NOW, updated_at=NOW))
    return {name: secret for name, (_, secret) in out.items()}


_PORTS = iter(range(21000, 60000))


async def put_instance(app, instance_id: str, log_port: int, *, chute_id: str = "chute-private",
                       mappings: list | None = None) -> None:
    api_port = next(_PORTS)
    if mappings is None:
        mappings = [{"proto": "tcp", "internal_port": 8000, "external_port": api_port},
                    {"proto": "tcp", "internal_port": 8001, "external_port": log_port}]
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(instances).values(
            instance_id=instance_id, chute_id=chute_id, version="1", host="127.0.0.1", port=api_port,
            port_mappings=mappings, miner_uid=7, miner_hotkey=MINER.ss58_address, miner_coldkey="cold",
            active=True, verified=True, created_at=NOW, symmetric_key_enc=b"envelope"))


def auth(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


async def read_events(response: httpx.Response, count: int) -> bytes:
    """The body up to and including the `count`-th event."""
    body = b""
    async for chunk in response.aiter_raw():
        body += chunk
        if body.count(b"\n\n") >= count:
            break
    return body[:_nth_end(body, count)]


def _nth_end(body: bytes, n: int) -> int:
    end = 0
    for _ in range(n):
        end = body.index(b"\n\n", end) + 2
    return end


# -- relay --------------------------------------------------------------------------------------------------------
async def test_rest_relays_the_upstream_bytes_unchanged_in_order_with_sse_headers_and_a_signed_upstream_call(
        app, http, keys):
    async with LogServer() as logs:
        await put_instance(app, "inst-1", logs.port)
        async with http.stream("GET", "/instances/inst-1/logs?backfill=3", headers=auth(keys["owner"])) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert (r.headers["cache-control"], r.headers["x-accel-buffering"]) == ("no-cache", "no")
            body = await read_events(r, 8)
        [conn] = logs.connections
        assert body == bytes(conn.sent[:len(body)])
        expected = [event(f"2026-03-02T11:00:00.{i:06d} history line {i}") for i in range(3)]
        expected += [event(live_line(i)) for i in range(5)]
        assert body == b"".join(expected)
    assert conn.path == "/logs/stream?backfill=3"
    h = conn.headers
    assert (h["x-chutes-validator"], h["x-chutes-miner"]) == (VALIDATOR.ss58_address, MINER.ss58_address)
    assert abs(int(h["x-chutes-nonce"]) - datetime.now(timezone.utc).timestamp()) < 30
    signed = f"{MINER.ss58_address}:{VALIDATOR.ss58_address}:{h['x-chutes-nonce']}:chutes".encode()
    assert Keypair(ss58_address=VALIDATOR.ss58_address).verify(signed, bytes.fromhex(h["x-chutes-signature"]))


async def test_grpc_sends_one_message_per_line_with_log_timestamp_cursor_and_raw_line(app, channel, keys):
    stub = instances_pb2_grpc.InstanceServiceStub(channel)
    async with LogServer() as logs:
        await put_instance(app, "inst-1", logs.port)
        call = stub.StreamLogs(instances_pb2.StreamLogsRequest(instance_id="inst-1", backfill=2),
                               metadata=(("authorization", f"Bearer {keys['owner']}"),))
        got = []
        async for message in call:
            got.append(message)
            if len(got) == 6:
                break
        call.cancel()
    assert [m.log for m in got] == ([f"2026-03-02T11:00:00.{i:06d} history line {i}" for i in range(2)]
                                    + [live_line(i) for i in range(4)])
    assert [m.raw for m in got] == [event(m.log) for m in got]
    assert [m.cursor for m in got[2:]] == [live_line(i)[:19] for i in range(4)]
    assert got[3].timestamp.ToDatetime(tzinfo=timezone.utc) == datetime(2026, 3, 2, 12, 0, 1, 1,
                                                                          tzinfo=timezone.utc)


async def test_backfill_defaults_to_100_lines(app, http, keys):
    async with LogServer() as logs:
        await put_instance(app, "inst-1", logs.port)
        async with http.stream("GET", "/instances/inst-1/logs", headers=auth(keys["owner"])) as r:
            body = await read_events(r, 101)
    assert logs.connections[0].path == "/logs/stream?backfill=100"
    assert body.endswith(event(live_line(0)))


async def test_a_rest_client_that_goes_away_closes_the_upstream_within_a_second(app, http, keys):
    async with LogServer() as logs:
        await put_instance(app, "inst-1", logs.port)
        async with http.stream("GET", "/instances/inst-1/logs?backfill=0", headers=auth(keys["owner"])) as r:
            await read_events(r, 2)
            left = asyncio.get_running_loop().time()
        # leaving the block closes the client's connection mid-body
        [conn] = logs.connections
        await asyncio.wait_for(conn.closed.wait(), 1.0)
        assert conn.closed_at - left < 1.0


async def test_a_grpc_client_that_cancels_closes_the_upstream_within_a_second(app, channel, keys):
    stub = instances_pb2_grpc.InstanceServiceStub(channel)
    async with LogServer() as logs:
        await put_instance(app, "inst-1", logs.port)
        call = stub.StreamLogs(instances_pb2.StreamLogsRequest(instance_id="inst-1", backfill=0),
                               metadata=(("authorization", f"Bearer {keys['owner']}"),))
        await call.read()
        call.cancel()
        [conn] = logs.connections
        await asyncio.wait_for(conn.closed.wait(), 1.0)


async def test_an_upstream_that_dies_mid_stream_ends_the_stream_with_unavailable(app, http, channel, keys):
    stub = instances_pb2_grpc.InstanceServiceStub(channel)
    async with LogServer(die_after=3) as logs:
        await put_instance(app, "inst-1", logs.port)
        call = stub.StreamLogs(instances_pb2.StreamLogsRequest(instance_id="inst-1", backfill=0),
                               metadata=(("authorization", f"Bearer {keys['owner']}"),))
        got = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for message in call:
                got.append(message.log)
        assert got == [live_line(i) for i in range(3)]
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "broke off" in err.value.details() and error_info(err.value).reason == "LOGS_UNAVAILABLE"

        r = await asyncio.wait_for(http.get("/instances/inst-1/logs?backfill=0", headers=auth(keys["owner"])), 5)
        assert r.status_code == 200
        lines, _, tail = r.content.partition(b"event: error\n")
        assert lines == b"".join(event(live_line(i)) for i in range(3))
        assert b"broke off" in tail


async def test_a_silent_upstream_hits_the_idle_timeout_and_a_closed_port_is_unavailable(app, http, keys):
    async with LogServer(silent=True) as logs:
        await put_instance(app, "inst-1", logs.port)
        started = asyncio.get_running_loop().time()
        r = await http.get("/instances/inst-1/logs", headers=auth(keys["owner"]))
        took = asyncio.get_running_loop().time() - started
        assert r.status_code == 503 and "idle timeout" in r.json()["detail"]
        assert IDLE_TIMEOUT <= took < IDLE_TIMEOUT + 2
        await asyncio.wait_for(logs.connections[0].closed.wait(), 1.0)
    # the server is gone: nothing listens on its port any more
    r = await http.get("/instances/inst-1/logs", headers=auth(keys["owner"]))
    assert r.status_code == 503 and "unreachable" in r.json()["detail"]


async def test_an_instance_without_a_mapped_log_port_is_unavailable(app, http, keys):
    await put_instance(app, "inst-1", 0, mappings=[{"proto": "tcp", "internal_port": 8000, "external_port": 9000}])
    r = await http.get("/instances/inst-1/logs", headers=auth(keys["owner"]))
    assert r.status_code == 503 and "8001" in r.json()["detail"]


# -- access --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("who, chute_id, status", [
    ("owner", "chute-private", 200),
    ("stranger", "chute-private", 403),
    ("owner", "chute-public", 403),
    ("stranger", "chute-public", 403),
    ("support", "chute-private", 200),
    ("support", "chute-public", 200),
    ("admin", "chute-public", 200),
    ("admin", "chute-private", 200),
])
async def test_who_may_read_an_instances_logs(app, http, keys, who, chute_id, status):
    async with LogServer() as logs:
        await put_instance(app, "inst-1", logs.port, chute_id=chute_id)
        async with http.stream("GET", "/instances/inst-1/logs?backfill=1", headers=auth(keys[who])) as r:
            assert r.status_code == status
            if status == 200:
                assert (await read_events(r, 1)) == event("2026-03-02T11:00:00.000000 history line 0")
            else:
                await r.aread()
                assert r.json()["detail"] == FORBIDDEN
                assert logs.connections == []


async def test_unknown_instance_is_404_and_bad_backfill_400_naming_it(app, http, channel, keys):
    r = await http.get("/instances/nope/logs", headers=auth(keys["support"]))
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    for bad in ("-1", "10001"):
        r = await http.get(f"/instances/nope/logs?backfill={bad}", headers=auth(keys["owner"]))
        assert r.status_code == 400 and r.json()["detail"] == "backfill must be between 0 and 10000 (lines of history)"
    stub = instances_pb2_grpc.InstanceServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.StreamLogs(instances_pb2.StreamLogsRequest(instance_id="nope", backfill=10001),
                                       metadata=(("authorization", f"Bearer {keys['owner']}"),)):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "backfill" in err.value.details()
    assert error_info(err.value).metadata["field"] == "backfill"
    r = await http.get("/instances/nope/logs")
    assert r.status_code == 401


# -- framing (no server) -------------------------------------------------------------------------------------------
def test_events_split_on_blank_lines_keep_their_bytes_and_an_endless_line_is_passed_on_in_bounded_pieces():
    from gantry_server.domain.logs import MAX_EVENT_BYTES, EventSplitter

    splitter = EventSplitter()
    stream = b'data: {"log": "2026-03-02 12:00:05 a"}\r\n\r\n: keep-alive\n\ndata: plain text\n\ndata: {"lo'
    events = [e for i in range(len(stream)) for e in splitter.feed(stream[i:i + 1])]  # one byte at a time
    assert b"".join(e.raw for e in events) + splitter.buffer == stream
    assert [(e.log, e.cursor) for e in events] == [("2026-03-02 12:00:05 a", "2026-03-02 12:00:05"), ("", None),
                                                   ("plain text", None)]
    assert events[0].timestamp == datetime(2026, 3, 2, 12, 0, 5, tzinfo=timezone.utc)
    assert [e.raw for e in splitter.rest()] == [b'data: {"lo']

    endless = b"data: " + b"x" * (3 * MAX_EVENT_BYTES)
    pieces = [e for i in range(0, len(endless), 4096) for e in splitter.feed(endless[i:i + 4096])]
    assert all(len(p.raw) <= MAX_EVENT_BYTES + 4096 for p in pieces) and len(splitter.buffer) <= MAX_EVENT_BYTES
    assert b"".join(p.raw for p in pieces) + splitter.buffer == endless


def test_log_timeouts_are_configured_from_the_environment_and_must_be_positive():
    from gantry_server.config import ConfigError, _launch_from_env

    env = {"GANTRY_LOGS_CONNECT_TIMEOUT_SECONDS": "2.5", "GANTRY_LOGS_IDLE_TIMEOUT_SECONDS": "30"}
    launch = _launch_from_env(env.get)
    assert (launch.logs_connect_timeout_seconds, launch.logs_idle_timeout_seconds) == (2.5, 30.0)
    with pytest.raises(ConfigError, match="GANTRY_LOGS_IDLE_TIMEOUT_SECONDS"):
        _launch_from_env({"GANTRY_LOGS_IDLE_TIMEOUT_SECONDS": "0"}.get)
