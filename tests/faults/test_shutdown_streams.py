"""Issue 15, defect 5: SIGTERM ends open session watches at once, each with a final message, instead of holding
the stop for the whole grace and then cutting the stream mid-chunk (REST) / cancelling it (gRPC)."""
from __future__ import annotations

import asyncio
import json
import time

import grpc
import httpx
import pytest

from gantry.broker.v1 import sessions_pb2, sessions_pb2_grpc
from gantry_server.app import GantryApp
from gantry_server.clock import ManualClock
from gantry_server.providers.simulated import SimulatedProvider

from ..conftest import make_settings
from ..integration.broker_harness import T0, broker_settings

pytestmark = pytest.mark.timeout(120)

GRACE = 60.0


async def test_sigterm_ends_session_watches_at_once_with_a_final_message(database_url, redis_url, tmp_path,
                                                                         clean_db, redis):
    clock = ManualClock(T0)
    settings = make_settings(database_url, redis_url, tmp_path, broker=broker_settings())
    provider = SimulatedProvider(clock=clock, offer_count=4, boot_seconds=30)
    app = GantryApp(settings, clock=clock, providers={provider.name: provider})
    await app.start()
    stopped = False
    try:
        offer = (await app.rt.inventory.provider_offers())[0].offer_id
        async with grpc.aio.insecure_channel(app.grpc_addr) as channel, \
                httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=30) as http:
            stub = sessions_pb2_grpc.SessionServiceStub(channel)
            s = (await stub.CreateSession(sessions_pb2.CreateSessionRequest(
                consumer_id="app", offer_id=offer, workload_type="llm", reservation_hours=1))).session
            grpc_watch = stub.WatchSession(sessions_pb2.WatchSessionRequest(id=s.id))
            first = await grpc_watch.read()
            assert first.session.status == "provisioning"
            async with http.stream("GET", f"/api/v1/sessions/{s.id}/watch") as rest:
                lines = rest.aiter_lines()
                assert json.loads(await anext(lines))["session"]["status"] == "provisioning"
                started = time.monotonic()
                stopping = asyncio.create_task(app.stop(GRACE))
                rest_rest = [line async for line in lines if line.strip()]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                while True:
                    message = await grpc_watch.read()
                    if message is grpc.aio.EOF:
                        break
            await stopping
            stopped = True
            took = time.monotonic() - started
        print(f"stop took {took:.2f}s")
        assert took < GRACE / 4, f"the stop waited {took:.1f}s on open watches"
        assert len(rest_rest) == 1 and "shutting down" in rest_rest[0], rest_rest  # a whole final line
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in err.value.details()
    finally:
        if not stopped:
            await app.stop(0)
        await provider.shutdown()
