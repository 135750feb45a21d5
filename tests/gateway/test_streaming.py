"""Server streams over REST: framing per family table, written as produced, disconnect cancels the RPC.

Runs the gateway over observable in-process servicers (real uvicorn, real sockets, the server's
observability interceptor); the servicers stand in for endpoints whose real handlers land later.
"""
from __future__ import annotations

import asyncio

import httpx
import pytest
from gantry.instances.v1 import instances_pb2, instances_pb2_grpc
from gantry.miner.v1 import miner_pb2, miner_pb2_grpc

from gantry_gateway import Gateway, HttpServer, InProcessDispatcher
from gantry_server.errors import NotFound, Unavailable
from gantry_server.interceptors import ObservabilityInterceptor


class Miner(miner_pb2_grpc.MinerServiceServicer):
    def __init__(self) -> None:
        self.rows = 2
        self.fail_after = None

    async def ListInstances(self, request, context):
        for i in range(self.rows):
            if self.fail_after == i:
                raise Unavailable("upstream went away")
            yield miner_pb2.ListInstancesResponse(instance=miner_pb2.MinerInstance(instance_id=f"i-{i}"))

    async def ListChutes(self, request, context):
        raise NotFound("no chutes for you")
        yield  # pragma: no cover


class Instances(instances_pb2_grpc.InstanceServiceServicer):
    def __init__(self) -> None:
        self.first_sent = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def StreamLogs(self, request, context):
        try:
            log = f"backfill {request.backfill} for {request.instance_id}"
            yield instances_pb2.StreamLogsResponse(log=log, raw=b'data: {"log":"%s"}\n\n' % log.encode())
            self.first_sent.set()
            await self.release.wait()  # never set in the disconnect test: only cancellation ends this
            yield instances_pb2.StreamLogsResponse(log="second", raw=b'data: {"log":"second"}\n\n')
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def GetInstanceReconciliationCsv(self, request, context):
        yield instances_pb2.GetInstanceReconciliationCsvResponse(data=b"instance_id,hotkey\n")
        yield instances_pb2.GetInstanceReconciliationCsvResponse(data=b"i-1,5Grw\n")


@pytest.fixture
async def servicers():
    return Miner(), Instances()


@pytest.fixture
async def client(servicers):
    miner, instances = servicers
    dispatcher = InProcessDispatcher({"gantry.miner.v1.MinerService": miner,
                                      "gantry.instances.v1.InstanceService": instances},
                                     [ObservabilityInterceptor()])
    gateway = Gateway.for_services([miner_pb2.DESCRIPTOR.services_by_name["MinerService"],
                                    instances_pb2.DESCRIPTOR.services_by_name["InstanceService"]], dispatcher)
    server = HttpServer(gateway, "127.0.0.1:0")
    await server.start()
    async with httpx.AsyncClient(base_url=f"http://{server.bound_addr}", timeout=10) as c:
        yield c
    await server.stop()


async def test_miner_list_rows_are_sse_data_lines(client):
    r = await client.get("/miner/instances/", headers={"X-Request-ID": "rows-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "rows-1"
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = r.text.split("\n\n")
    assert chunks[-1] == "" and len(chunks) == 3
    assert chunks[0].startswith('data: {"instance_id":"i-0"')


async def test_empty_list_with_explicit_null_sends_no_items(client, servicers):
    servicers[0].rows = 0
    assert (await client.get("/miner/instances/?explicit_null=true")).text == "data: NO_ITEMS\n"
    assert (await client.get("/miner/instances/")).text == ""


async def test_error_before_first_row_is_a_normal_error_response(client):
    r = await client.get("/miner/chutes/")
    assert r.status_code == 404 and r.json() == {"detail": "no chutes for you"}


async def test_error_after_first_row_keeps_200_and_ends_with_an_error_event(client, servicers):
    servicers[0].fail_after = 1
    r = await client.get("/miner/instances/")
    assert r.status_code == 200
    first, last = r.text.split("\n\n")[:2]
    assert first.startswith("data: ")
    assert last.startswith("event: error\ndata: ") and '"upstream went away"' in last and '"status":503' in last


async def test_logs_are_event_stream_with_no_buffering_headers(client, servicers):
    servicers[1].release.set()
    r = await client.get("/instances/inst-1/logs?backfill=5")
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
    assert r.text == 'data: {"log":"backfill 5 for inst-1"}\n\ndata: {"log":"second"}\n\n'


async def test_csv_is_an_attachment(client):
    r = await client.get("/instances/reconciliation_csv")
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="audit-reconciliation.csv"'
    assert r.text == "instance_id,hotkey\ni-1,5Grw\n"


async def test_first_message_arrives_before_the_stream_ends_and_disconnect_cancels(client, servicers):
    instances = servicers[1]
    async with client.stream("GET", "/instances/inst-9/logs") as r:
        assert r.status_code == 200
        async for chunk in r.aiter_bytes():
            assert chunk.startswith(b'data: {"log":"backfill 0 for inst-9"}')
            break  # the handler is still blocked: the row was written as produced, not buffered
    # leaving the block closes the connection; the handler sees CancelledError (its finally runs)
    await asyncio.wait_for(instances.cancelled.wait(), timeout=10)
    assert not instances.release.is_set()
