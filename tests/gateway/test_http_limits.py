"""The REST listener closes half-sent and idle connections and caps how many are open (issue 15 defect 6).

Raw sockets against a live Gantry whose limits are short (0.4 s): each closing test really waits for the
deadline (well under a second); nothing sleeps beyond it.
"""
from __future__ import annotations

import asyncio

import pytest

from gantry_server.app import GantryApp
from tests.conftest import make_settings

LIMIT = 0.4
WAIT = 10.0  # upper bound of any read here: a connection the server forgot to close fails the test, not hangs it
CAP = 4


@pytest.fixture(scope="module")
async def server(database_url, redis_url, tmp_path_factory):
    settings = make_settings(database_url, redis_url, tmp_path_factory.mktemp("http-limits"),
                             http_header_timeout_seconds=LIMIT, http_idle_timeout_seconds=LIMIT,
                             http_max_connections=CAP)
    app = GantryApp(settings)
    await app.start()
    host, port = app.http_addr.rsplit(":", 1)
    yield host, int(port)
    await app.stop(0)


async def _connect(server):
    return await asyncio.open_connection(*server)


async def _closed_by_server(reader) -> bytes:
    """Everything the server sent until it closed the connection."""
    return await asyncio.wait_for(reader.read(), WAIT)


async def _response(reader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return head, await asyncio.wait_for(reader.readexactly(length), WAIT)


async def test_half_sent_headers_are_closed(server):
    reader, writer = await _connect(server)
    writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")  # a slowloris that never ends its headers
    await writer.drain()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await _closed_by_server(reader) == b""
    assert loop.time() - started >= LIMIT * 0.9
    writer.close()


async def test_half_sent_body_is_closed_without_running_the_request(server):
    reader, writer = await _connect(server)
    writer.write(b"POST /api/v1/sessions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"offer_id\": ")
    await writer.drain()
    assert await _closed_by_server(reader) == b""  # no answer at all: the truncated body was never dispatched
    writer.close()


async def test_a_connection_that_says_nothing_is_closed(server):
    reader, writer = await _connect(server)
    assert await _closed_by_server(reader) == b""
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_its_requests(server):
    reader, writer = await _connect(server)
    for _ in range(2):  # keep-alive works: two requests on one connection, each answered in full
        writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        head, body = await _response(reader)
        assert head.startswith(b"HTTP/1.1 200") and b'"status"' in body
    assert await _closed_by_server(reader) == b""
    writer.close()


async def test_connections_beyond_the_cap_get_503_and_are_closed(server):
    held = [await _connect(server) for _ in range(CAP)]
    reader, writer = await _connect(server)
    refused = await _closed_by_server(reader)
    assert refused.startswith(b"HTTP/1.1 503") and refused.endswith(b"too many connections")
    writer.close()
    # the held ones are served as usual
    r0, w0 = held[0]
    w0.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await w0.drain()
    head, _ = await _response(r0)
    assert head.startswith(b"HTTP/1.1 200")
    for _, w in held:
        w.close()
    # once they are gone (the server notices each close), a new connection is accepted again
    for _ in range(200):
        reader, writer = await _connect(server)
        writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        first = await asyncio.wait_for(reader.read(12), WAIT)
        writer.close()
        if first == b"HTTP/1.1 200":
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("connections were still refused after the held ones closed")


def test_limits_come_from_the_environment_and_nonsense_is_refused():
    from gantry_gateway import HttpLimits
    from gantry_server.config import ConfigError, Settings

    assert HttpLimits.for_settings(Settings.from_env({})) == HttpLimits(10.0, 60.0, 4096)
    settings = Settings.from_env({"GANTRY_HTTP_HEADER_TIMEOUT_SECONDS": "2.5", "GANTRY_HTTP_IDLE_TIMEOUT_SECONDS": "30",
                                  "GANTRY_HTTP_MAX_CONNECTIONS": "100"})
    assert HttpLimits.for_settings(settings) == HttpLimits(2.5, 30.0, 100)
    for name, value in (("GANTRY_HTTP_HEADER_TIMEOUT_SECONDS", "0"), ("GANTRY_HTTP_IDLE_TIMEOUT_SECONDS", "soon"),
                        ("GANTRY_HTTP_MAX_CONNECTIONS", "-1")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})
