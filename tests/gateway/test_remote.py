"""`gantry gateway --upstream`: the same routes over a gRPC channel, rich status decoded from trailers."""
from __future__ import annotations

import httpx
import pytest

from gantry_gateway import HttpServer, remote_gateway


@pytest.fixture(scope="module")
async def remote_http(app):
    gateway = remote_gateway(app.grpc_addr)
    server = HttpServer(gateway, "127.0.0.1:0")
    await server.start()
    async with httpx.AsyncClient(base_url=f"http://{server.bound_addr}", timeout=10) as client:
        yield client
    await server.stop()
    await gateway.dispatcher.close()


async def test_built_routes_answer_the_same_as_in_process(http, remote_http):
    for path in ("/ready", "/miner/metagraph"):
        local, remote = await http.get(path), await remote_http.get(path)
        assert remote.status_code == local.status_code == 200
        assert remote.headers["content-type"] == local.headers["content-type"]
    assert (await remote_http.get("/ready")).json()["ready"] is True


async def test_rich_status_crosses_the_channel(remote_http):
    response = await remote_http.get("/instances/launch_config/cfg-1/nonce", headers={"X-Request-ID": "remote-1"})
    assert response.status_code == 401 and response.headers["x-request-id"] == "remote-1"
    assert "Missing launch config JWT" in response.json()["detail"]
    broker = await remote_http.get("/api/v1/costs?session_id=unknown", headers={"X-Request-ID": "remote-2"})
    assert broker.status_code == 404
    assert broker.json()["request_id"] == "remote-2"  # the server used the gateway's request id
