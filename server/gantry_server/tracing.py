"""OpenTelemetry tracing: off unless the standard OTEL_* variables turn it on (docs/observability.md, Tracing).

When on, one request is one trace:

    POST /api/v1/sessions               REST gateway, SERVER span (opentelemetry-instrumentation-asgi; W3C
    |                                   `traceparent`/`tracestate` from the HTTP headers continue the caller's trace)
    `- gantry.broker.v1.SessionService/CreateSession
       |                                the RPC (ObservabilityInterceptor): INTERNAL below the gateway, which
       |                                dispatches in-process; SERVER on native gRPC, parent from `traceparent` metadata
       |- INSERT gantry ...             SQL statements (opentelemetry-instrumentation-sqlalchemy, on the engine)
       |- EVALSHA ? ? ?                 Redis commands (opentelemetry-instrumentation-redis, on the client; values "?")
       `- PUT                           provider HTTP calls (opentelemetry-instrumentation-httpx, on each provider's
                                        client; credential query parameters masked in the URL)

`gantry gateway --upstream` forwards the gateway span as `traceparent` metadata, so the upstream's RPC span joins.

Switch: `configure()` (from GantryApp.start and `gantry gateway`) turns tracing on for the process when
OTEL_TRACES_EXPORTER names an exporter (`otlp`, `otlp_proto_grpc`, `otlp_proto_http`, `console`), or when it is
unset and OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set; OTEL_SDK_DISABLED=true or
OTEL_TRACES_EXPORTER=none keeps it off. The SDK reads the rest (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
OTEL_TRACES_SAMPLER[_ARG], OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL|HEADERS|TIMEOUT|..., OTEL_BSP_*, OTEL_PROPAGATORS).

Off, nothing is instrumented: every hook below returns at once (`enabled` is one attribute read per RPC).
"""
from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import logs
from .config import ConfigError

enabled = False  # read per RPC by ObservabilityInterceptor; set by configure()
_provider = None  # opentelemetry.sdk.trace.TracerProvider while enabled
_tracer: trace.Tracer | None = None

_EXPORTERS = ("otlp", "otlp_proto_grpc", "otlp_proto_http", "console")
_OTLP_PROTOCOLS = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
DEFAULT_SERVICE_NAME = "gantry"


def exporter_names(env=None) -> list[str]:
    """The span exporters the OTEL_* variables ask for; [] means tracing stays off."""
    env = os.environ if env is None else env
    get = lambda key: (env.get(key) or "").strip()  # noqa: E731
    if get("OTEL_SDK_DISABLED").lower() == "true":
        return []
    names = [n.strip() for n in get("OTEL_TRACES_EXPORTER").split(",") if n.strip()]
    if not names:
        names = ["otlp"] if get("OTEL_EXPORTER_OTLP_ENDPOINT") or get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") else []
    if "none" in names:
        return []
    for name in names:
        if name not in _EXPORTERS:
            raise ConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} "
                              f"(one of: {', '.join(_EXPORTERS)}, none)")
    protocol = get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if "otlp" in names and protocol not in _OTLP_PROTOCOLS:
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported {protocol!r} (grpc or http/protobuf)")
    return [_OTLP_PROTOCOLS[protocol] if n == "otlp" else n for n in names]


def _exporter(name: str):
    if name == "otlp_proto_grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    if name == "otlp_proto_http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter
    return ConsoleSpanExporter()


def configure(*, exporter=None) -> bool:
    """Turn tracing on for this process if the OTEL_* variables ask for it (or with `exporter`, a SpanExporter that
    receives each span as it ends: tests); True when on. Idempotent: the first call that turns it on wins.

    Raises ConfigError for an exporter or protocol the SDK does not have (one line for the operator)."""
    global enabled, _provider, _tracer
    if enabled:
        return True
    names = [] if exporter is not None else exporter_names()
    if exporter is None and not names:
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER (default parent-based, always on)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        for name in names:
            provider.add_span_processor(BatchSpanProcessor(_exporter(name)))  # OTEL_BSP_*
        trace.set_tracer_provider(provider)  # the process's provider, for any other instrumented library
    _provider, _tracer = provider, provider.get_tracer("gantry_server")
    logs.current_span_context = _current_span_context  # trace and span ids in the JSON log lines
    enabled = True
    return True


def _current_span_context():
    return trace.get_current_span().get_span_context()


def shutdown() -> None:
    """Flush and turn tracing off for this process (tests; a served process flushes at exit by itself)."""
    global enabled, _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    enabled, _provider, _tracer = False, None, None
    logs.current_span_context = None


# ---------------------------------------------------------------------------------------------- library hooks

def instrument_stores(engine, redis) -> None:
    """SQL statements of `engine` (an AsyncEngine) and commands of `redis` (redis.asyncio.Redis) become spans."""
    if not enabled:
        return
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.sqlalchemy.version import __version__
    from opentelemetry.metrics import NoOpMeterProvider

    # What SQLAlchemyInstrumentor().instrument(engine=...) builds; per engine, because the instrumentor's
    # instrument() works once per process and its global wrappers miss engines created from a bound import.
    meter = NoOpMeterProvider().get_meter("opentelemetry.instrumentation.sqlalchemy")
    EngineTracer(_provider.get_tracer("opentelemetry.instrumentation.sqlalchemy", __version__), engine.sync_engine,
                 meter.create_up_down_counter("db.client.connections.usage"))
    RedisInstrumentor.instrument_client(redis, tracer_provider=_provider)


def instrument_httpx(client, mask_url: Callable | None = None) -> None:
    """Requests of `client` (an httpx client) become CLIENT spans; `mask_url(httpx.URL)` cleans the URL recorded."""
    if not enabled:
        return
    import httpx
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    async def masked(span, request) -> None:
        if mask_url is None or not span.is_recording():
            return
        url = str(mask_url(httpx.URL(str(request.url))))
        for key in ("http.url", "url.full"):
            if key in (getattr(span, "attributes", None) or {}):
                span.set_attribute(key, url)

    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=_provider, request_hook=masked)


def asgi(app):
    """The REST face: a SERVER span per HTTP request (websockets, e.g. the miners' Socket.IO feed, are not traced)."""
    if not enabled:
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.util.http import get_excluded_urls

    traced = OpenTelemetryMiddleware(app, tracer_provider=_provider, exclude_spans=["receive", "send"],
                                     excluded_urls=get_excluded_urls("ASGI"))  # OTEL_PYTHON_ASGI_EXCLUDED_URLS

    async def entry(scope, receive, send) -> None:
        if scope["type"] == "http":
            await traced(scope, receive, send)
        else:
            await app(scope, receive, send)

    return entry


def outgoing_metadata() -> tuple:
    """gRPC metadata carrying the current span to an upstream server (`traceparent`, ...); () when off."""
    if not enabled:
        return ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


# ---------------------------------------------------------------------------------------------- RPC spans

class _MetadataGetter:
    """Reads W3C headers from gRPC invocation metadata (a sequence of (key, value) pairs)."""

    @staticmethod
    def get(carrier, key: str):
        values = [v for k, v in carrier if k == key and isinstance(v, str)]
        return values or None

    @staticmethod
    def keys(carrier):
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()
# Server span statuses that are errors (OpenTelemetry semantic conventions for gRPC); the others leave it unset.
_SERVER_ERRORS = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
                            grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS})
_NAMES: dict[str, tuple[str, dict]] = {}  # method path -> (span name, attributes)


def _name(method_name: str) -> tuple[str, dict]:
    found = _NAMES.get(method_name)
    if found is None:
        service, _, method = method_name.lstrip("/").partition("/")
        found = _NAMES[method_name] = (f"{service}/{method}", {"rpc.system": "grpc", "rpc.service": service,
                                                               "rpc.method": method})
    return found


class RpcSpan:
    """The span of one RPC. Its parent: the caller's `traceparent` metadata when sent (native gRPC), else the
    current span (the REST gateway's, when it dispatches in-process)."""

    __slots__ = ("span", "_context")

    def __init__(self, method_name: str, context) -> None:
        name, attributes = _name(method_name)
        extracted = propagate.extract(context.invocation_metadata() or (), getter=_GETTER)
        parent = trace.get_current_span(extracted).get_span_context()
        if parent.is_valid:  # a caller's trace over gRPC
            base, kind = extracted, SpanKind.SERVER
        else:
            base = otel_context.get_current()
            local = trace.get_current_span(base).get_span_context()
            kind = SpanKind.INTERNAL if local.is_valid and not local.is_remote else SpanKind.SERVER
        self.span = _tracer.start_span(name, context=base, kind=kind, attributes=attributes)
        self._context = trace.set_span_in_context(self.span, base)

    def attach(self) -> object:
        """Make this span current (SQL, Redis, provider spans and log lines see it); returns the token for detach."""
        return otel_context.attach(self._context)

    def detach(self, token: object) -> None:
        otel_context.detach(token)

    async def wrap(self, stream: AsyncIterator) -> AsyncIterator:
        """Run each step of a server stream (and its close) with this span current: attached and detached around
        each step, never across a yield, so the consumer's context is never left changed."""
        try:
            while True:
                token = otel_context.attach(self._context)
                try:
                    item = await stream.__anext__()
                except StopAsyncIteration:
                    return
                finally:
                    otel_context.detach(token)
                yield item
        finally:
            token = otel_context.attach(self._context)
            try:
                await stream.aclose()
            finally:
                otel_context.detach(token)

    def end(self, code: grpc.StatusCode, error: BaseException | None = None) -> None:
        span = self.span
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if error is not None:
            span.record_exception(error)
        if code in _SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()


def start_rpc(method_name: str, context) -> RpcSpan:
    """Only while `enabled` (the caller checks, so an untraced RPC pays one attribute read)."""
    return RpcSpan(method_name, context)
