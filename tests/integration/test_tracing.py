"""Tracing as an operator sees it in their tracing backend: one trace per request across both faces.

A real Gantry (gRPC + REST, real PostgreSQL/Redis) whose GPU provider is the Vast.ai adapter talking HTTP to the
fake Vast.ai server, with spans going to an in-memory exporter instead of OTLP.
"""
from __future__ import annotations

import json
import logging

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gantry.broker.v1 import sessions_pb2
from gantry_gateway import HttpServer, remote_gateway
from gantry_server import tracing
from gantry_server.config import ConfigError
from gantry_server.logs import JsonFormatter
from gantry_server.providers.http import HttpPolicy, Operation, ProviderHttp
from gantry_server.providers.vastai import VastAiProvider

from ..fakes.vastai import FakeVastAi
from .broker_harness import running_broker

pytestmark = pytest.mark.timeout(120)

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
CREATE = "gantry.broker.v1.SessionService/CreateSession"
GET = "gantry.broker.v1.SessionService/GetSession"


@pytest.fixture(scope="module")
def spans():
    if tracing.enabled:
        pytest.skip("tracing already configured in this process (OTEL_* variables set)")
    exporter = InMemorySpanExporter()
    tracing.configure(exporter=exporter)
    yield exporter
    tracing.shutdown()


@pytest.fixture
async def traced(spans, database_url, redis_url, tmp_path, clean_db, redis):
    fake = FakeVastAi(api_key="vast-test-key")
    fake.add_offer(gpu_name="RTX 4090", dph_total=0.4)
    await fake.start()
    provider = VastAiProvider(api_key="vast-test-key", base_url=fake.base_url)  # created while tracing is on
    try:
        async with running_broker(database_url, redis_url, tmp_path, provider=provider) as h:
            h.fake = fake
            yield h
    finally:
        await provider.aclose()
        await fake.stop()


@pytest.fixture
def rpc_log_lines():
    """The JSON lines `gantry serve` writes for RPCs, formatted where they are logged (as its handler does)."""
    lines: list[dict] = []
    formatter = JsonFormatter()

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(formatter.format(record)))

    handler = Capture()
    logger = logging.getLogger("gantry.rpc")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def of_trace(exporter: InMemorySpanExporter, trace_id: str) -> list:
    return [s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]


def descends_from(span, ancestor, by_id: dict) -> bool:
    while span.parent is not None:
        if span.parent.span_id == ancestor.context.span_id:
            return True
        span = by_id.get(span.parent.span_id)
        if span is None:
            return False
    return False


async def test_a_rest_request_is_one_trace_with_gateway_rpc_sql_redis_and_provider_spans(traced, spans):
    h = traced
    offer = (await h.app.rt.inventory.provider_offers())[0].offer_id
    spans.clear()

    response = await h.http.post("/api/v1/sessions", headers={"traceparent": TRACEPARENT}, json={
        "consumer_id": "app", "offer_id": offer, "workload_type": "llm", "reservation_hours": 1})
    assert response.status_code == 201, response.text

    trace = of_trace(spans, CALLER_TRACE)
    by_id = {s.context.span_id: s for s in trace}
    # The gateway continues the caller's trace ...
    gateway = [s for s in trace if s.kind is SpanKind.SERVER and s.name.startswith("POST /api/v1/sessions")]
    assert len(gateway) == 1, [s.name for s in trace]
    gateway = gateway[0]
    assert format(gateway.parent.span_id, "016x") == CALLER_SPAN and gateway.parent.is_remote
    # ... the RPC it dispatches in-process is its child ...
    rpc = next(s for s in trace if s.name == CREATE)
    assert rpc.parent.span_id == gateway.context.span_id and rpc.kind is SpanKind.INTERNAL
    assert rpc.attributes["rpc.system"] == "grpc" and rpc.attributes["rpc.method"] == "CreateSession"
    assert rpc.attributes["rpc.grpc.status_code"] == 0 and rpc.status.status_code is StatusCode.UNSET
    # ... and the SQL statements, Redis commands and provider HTTP calls of that RPC are below it.
    sql = [s for s in trace if s.attributes.get("db.system") == "postgresql"]
    assert any(s.name.startswith("INSERT") for s in sql), [s.name for s in sql]
    redis_spans = [s for s in trace if s.attributes.get("db.system") == "redis"]
    assert redis_spans, [s.name for s in trace]
    provider = [s for s in trace if s.kind is SpanKind.CLIENT and h.fake.base_url in str(s.attributes.get("http.url"))]
    assert any(s.attributes["http.method"] == "PUT" and "/asks/" in s.attributes["http.url"] for s in provider)
    for span in sql + redis_spans + provider:
        assert descends_from(span, rpc, by_id), span.name
    # Nothing of this request started a trace of its own.
    assert {s.context.span_id for s in spans.get_finished_spans() if s.name in (CREATE, gateway.name)} \
        == {gateway.context.span_id, rpc.context.span_id}


async def test_a_native_grpc_call_with_traceparent_continues_the_trace_and_its_log_line_carries_it(
        traced, spans, rpc_log_lines):
    h = traced
    created = await h.create(offer_id=await h.offer())
    spans.clear()

    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    got = await h.stub.GetSession(sessions_pb2.GetSessionRequest(id=created.id),
                                  metadata=(("traceparent", f"00-{trace_id}-{parent}-01"),))
    assert got.session.id == created.id

    trace = of_trace(spans, trace_id)
    rpc = next(s for s in trace if s.name == GET)
    assert rpc.kind is SpanKind.SERVER and format(rpc.parent.span_id, "016x") == parent and rpc.parent.is_remote
    sql = [s for s in trace if s.attributes.get("db.system") == "postgresql"]
    assert sql and all(s.parent.span_id == rpc.context.span_id for s in sql)

    line = next(line for line in rpc_log_lines if line.get("method") == f"/{GET}")
    assert line["trace_id"] == trace_id and line["span_id"] == format(rpc.context.span_id, "016x")
    assert line["code"] == "OK" and line["request_id"]


async def test_a_refused_rpc_is_one_span_with_its_code_and_without_a_parent_it_starts_a_trace(traced, spans):
    h = traced
    spans.clear()
    response = await h.http.get("/api/v1/sessions/no-such-session")
    assert response.status_code == 404
    gateway = next(s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER)
    assert gateway.parent is None  # no traceparent: a new trace
    rpc = next(s for s in spans.get_finished_spans() if s.name == GET)
    assert rpc.parent.span_id == gateway.context.span_id
    assert rpc.attributes["rpc.grpc.status_code"] == 5  # NOT_FOUND: a client error, the span status stays unset
    assert rpc.status.status_code is StatusCode.UNSET


async def test_a_streamed_rpc_through_rest_is_a_child_of_the_gateway_span(traced, spans):
    h = traced
    created = await h.create(offer_id=await h.offer())
    await h.stub.DestroySession(sessions_pb2.DestroySessionRequest(id=created.id))
    spans.clear()
    async with h.http.stream("GET", f"/api/v1/sessions/{created.id}/watch",
                             headers={"traceparent": TRACEPARENT}) as response:
        body = (await response.aread()).decode()
    assert response.status_code == 200, body
    trace = of_trace(spans, CALLER_TRACE)
    gateway = next(s for s in trace if s.kind is SpanKind.SERVER)
    rpc = next(s for s in trace if s.name == "gantry.broker.v1.SessionService/WatchSession")
    assert rpc.parent.span_id == gateway.context.span_id
    sql = [s for s in trace if s.attributes.get("db.system") == "postgresql"]
    assert sql and all(descends_from(s, rpc, {x.context.span_id: x for x in trace}) for s in sql)


async def test_gantry_gateway_upstream_passes_its_span_to_the_remote_server(traced, spans):
    """`gantry gateway --upstream`: the gateway's span travels as `traceparent` metadata; the RPC span joins it."""
    h = traced
    created = await h.create(offer_id=await h.offer())
    gateway_app = remote_gateway(h.app.grpc_addr)
    server = HttpServer(gateway_app, "127.0.0.1:0")
    await server.start()
    try:
        spans.clear()
        async with httpx.AsyncClient(base_url=f"http://{server.bound_addr}", timeout=30) as client:
            response = await client.get(f"/api/v1/sessions/{created.id}", headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200, response.text
    finally:
        await server.stop()
        await gateway_app.dispatcher.close()
    trace = of_trace(spans, CALLER_TRACE)
    gateway = next(s for s in trace if s.kind is SpanKind.SERVER and s.name.startswith("GET /api/v1/sessions/"))
    rpc = next(s for s in trace if s.name == GET)
    assert rpc.kind is SpanKind.SERVER and rpc.parent.is_remote  # crossed a real gRPC hop
    assert rpc.parent.span_id == gateway.context.span_id


async def test_provider_call_spans_never_show_credentials_from_the_query_string(spans):
    fake = FakeVastAi(api_key="vast-test-key")
    await fake.start()
    http = ProviderHttp("tensordock", fake.base_url, policy=HttpPolicy(100, 10, ()),
                        headers={"Authorization": "Bearer vast-test-key"}, secrets=["secret-token-123"])
    try:
        spans.clear()
        await http.call(Operation("ListOffers", 5), "GET", "/bundles/", params={"api_token": "secret-token-123"})
    finally:
        await http.aclose()
        await fake.stop()
    (span,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert "/bundles/?api_token=" in span.attributes["http.url"] and span.attributes["http.status_code"] == 200
    assert "secret-token-123" not in json.dumps(dict(span.attributes))


def test_tracing_is_off_unless_the_otel_variables_turn_it_on():
    assert tracing.exporter_names({}) == []
    assert tracing.exporter_names({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}) == ["otlp_proto_grpc"]
    assert tracing.exporter_names({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}) \
        == ["otlp_proto_http"]
    assert tracing.exporter_names({"OTEL_TRACES_EXPORTER": "console"}) == ["console"]
    assert tracing.exporter_names({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}) \
        == []
    assert tracing.exporter_names({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) == []
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER: unknown exporter 'jaeger'"):
        tracing.exporter_names({"OTEL_TRACES_EXPORTER": "jaeger"})
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        tracing.exporter_names({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
