"""The grpc.aio server as a client sees it: health, reflection, request ids, errors, metrics."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from google.rpc import error_details_pb2
from prometheus_client import REGISTRY

from gantry.ops.v1 import ops_pb2, ops_pb2_grpc
from gantry_server.auth_policy import policy_for
from gantry_server.app import GantryApp
from gantry_server.services.registry import SERVICES
from gantry_server.store import migrate

from ..conftest import make_settings


async def test_health_is_serving_once_started(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    overall = await stub.Check(health_pb2.HealthCheckRequest())
    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    for spec in SERVICES:
        per_service = await stub.Check(health_pb2.HealthCheckRequest(service=spec.full_name))
        assert per_service.status == health_pb2.HealthCheckResponse.SERVING, spec.full_name


async def test_health_is_not_serving_until_migrations_finish(database_url, redis_url, tmp_path, monkeypatch):
    """Clients see NOT_SERVING (not connection refused) while start-up work runs."""
    release = asyncio.Event()
    real_upgrade = migrate.upgrade

    async def slow_upgrade(engine, revision="head"):
        await release.wait()
        await real_upgrade(engine, revision)

    monkeypatch.setattr(migrate, "upgrade", slow_upgrade)
    app = GantryApp(make_settings(database_url, redis_url, tmp_path))
    starting = asyncio.create_task(app.start())
    try:
        while app.grpc_port is None or app.server is None:
            await asyncio.sleep(0.01)
        async with grpc.aio.insecure_channel(app.grpc_addr) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            await ch.channel_ready()
            before = await stub.Check(health_pb2.HealthCheckRequest())
            assert before.status == health_pb2.HealthCheckResponse.NOT_SERVING
            ready = await ops_pb2_grpc.OpsServiceStub(ch).GetReady(ops_pb2.GetReadyRequest())
            assert ready.ready is False
            release.set()
            await starting
            after = await stub.Check(health_pb2.HealthCheckRequest())
            assert after.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        release.set()
        await app.stop(0)


async def test_reflection_lists_every_service(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = set()
    async for response in stub.ServerReflectionInfo(requests()):
        names |= {s.name for s in response.list_services_response.service}
    expected = {spec.full_name for spec in SERVICES} | {"grpc.health.v1.Health"}
    assert expected <= names


async def test_unbuilt_rpc_answers_unimplemented_naming_the_rpc(channel):
    unbuilt = [(spec, m) for spec in SERVICES for m in spec.descriptor.methods
               if m.full_name not in spec.implemented_methods() and not m.server_streaming
               and policy_for(f"/{spec.full_name}/{m.name}").kind == "none"]  # no credentials needed
    if not unbuilt:
        pytest.skip("every unary RPC is built")
    spec, method = unbuilt[0]
    call = channel.unary_unary(f"/{spec.full_name}/{method.name}",
                               request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=lambda b: b)
    pb2 = method.input_type._concrete_class
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(pb2())
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert method.full_name in err.value.details()
    info = error_details_pb2.ErrorInfo()
    assert rpc_status.from_call(err.value).details[0].Unpack(info)
    assert info.reason == "NOT_IMPLEMENTED" and info.metadata["http_status"] == "501"


async def test_request_id_is_echoed_in_trailing_metadata(channel):
    call = ops_pb2_grpc.OpsServiceStub(channel).GetReady(
        ops_pb2.GetReadyRequest(), metadata=(("x-request-id", "abc-123"),))
    await call
    assert ("x-request-id", "abc-123") in tuple(await call.trailing_metadata())


async def test_unsafe_request_id_is_replaced(channel):
    call = ops_pb2_grpc.OpsServiceStub(channel).GetReady(
        ops_pb2.GetReadyRequest(), metadata=(("x-request-id", "<script>"),))
    await call
    echoed = dict(await call.trailing_metadata())["x-request-id"]
    assert echoed != "<script>" and len(echoed) == 36


def _handled(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value("grpc_server_handled_total", {
        "grpc_service": "gantry.ops.v1.OpsService", "grpc_method": method, "grpc_code": code})
    return value or 0.0


async def test_rpc_metrics_move_once_per_call(channel):
    before = _handled("GetReady", "OK")
    await ops_pb2_grpc.OpsServiceStub(channel).GetReady(ops_pb2.GetReadyRequest())
    assert _handled("GetReady", "OK") == before + 1


async def test_metrics_rpc_exposes_prometheus_text(channel):
    await ops_pb2_grpc.OpsServiceStub(channel).GetReady(ops_pb2.GetReadyRequest())
    response = await ops_pb2_grpc.OpsServiceStub(channel).GetMetrics(ops_pb2.GetMetricsRequest())
    assert response.content_type.startswith("text/plain")
    assert b'grpc_server_handled_total{grpc_code="OK",grpc_method="GetReady"' in response.body


async def test_unexpected_exception_is_internal_with_request_id_and_no_trace(database_url, redis_url, tmp_path,
                                                                             monkeypatch):
    """A bug inside a handler reaches the caller as INTERNAL + request id, never a stack trace."""
    from gantry_server.services import ops

    async def broken(self, request, context):
        raise RuntimeError("secret detail /etc/passwd")

    monkeypatch.setattr(ops.OpsService, "GetReady", broken)
    app = GantryApp(make_settings(database_url, redis_url, tmp_path))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.grpc_addr) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ops_pb2_grpc.OpsServiceStub(ch).GetReady(
                    ops_pb2.GetReadyRequest(), metadata=(("x-request-id", "req-42"),))
    finally:
        await app.stop(0)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "req-42" in err.value.details()
    assert "secret" not in err.value.details() and "Traceback" not in err.value.details()
    status = rpc_status.from_call(err.value)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == "INTERNAL"
    assert info.metadata["request_id"] == "req-42"
