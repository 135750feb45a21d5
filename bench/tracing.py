"""What tracing costs per call, off (the default) and on, in process (no network, no database).

    .venv/bin/python bench/tracing.py [-n 5000] [--repeat 10]

Rows (microseconds per call, best of `repeat` runs of `n` calls each; off and on runs alternate):
  rpc unary            a unary RPC through ObservabilityInterceptor (bound as `gantry serve` binds it, trivial
                       handler, GatewayContext, rpc log line below INFO so only tracing differs)
  rpc unary+parent     the same with a `traceparent` in the metadata (a traced gRPC caller)
  rpc stream x10       a server stream of 10 messages
  rest request         a trivial ASGI app behind `tracing.asgi` (the REST face's server span)
  log line             JsonFormatter.format of one rpc record (on: inside a span, so it carries the trace id)
"On" is tracing.configure() with an in-memory exporter (SimpleSpanProcessor: the span is exported as it ends, in
the calling thread); with OTLP the export runs on the BatchSpanProcessor's thread instead.
"""
from __future__ import annotations

import argparse
import gc
import logging
import time

import uvloop
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gantry_gateway.context import GatewayContext
from gantry_server import tracing
from gantry_server.app import GC_THRESHOLDS
from gantry_server.interceptors import ObservabilityInterceptor
from gantry_server.interceptors.chain import bind
from gantry_server.logs import JsonFormatter

PARENT = (("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),)


async def unary_handler(request, context):
    return request


async def stream_handler(request, context):
    for i in range(10):
        yield i


async def asgi_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def time_unary(n: int, metadata: tuple) -> float:
    call = bind([ObservabilityInterceptor()], unary_handler, "/bench.Svc/Unary", streaming=False)
    started = time.perf_counter()
    for _ in range(n):
        await call(b"x", GatewayContext(metadata, "ipv4:127.0.0.1:1"))
    return (time.perf_counter() - started) / n


async def time_stream(n: int) -> float:
    call = bind([ObservabilityInterceptor()], stream_handler, "/bench.Svc/Stream", streaming=True)
    started = time.perf_counter()
    for _ in range(n):
        async for _item in call(b"x", GatewayContext((), "ipv4:127.0.0.1:1")):
            pass
    return (time.perf_counter() - started) / n


async def time_rest(n: int) -> float:
    app = REST_APPS[tracing.enabled]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/api/v1/ops/ready", "raw_path": b"/api/v1/ops/ready", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:8080"), (b"user-agent", b"bench")],
             "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 8080)}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        return None

    started = time.perf_counter()
    for _ in range(n):
        await app(scope, receive, send)
    return (time.perf_counter() - started) / n


def time_log(n: int) -> float:
    formatter = JsonFormatter()
    record = logging.LogRecord("gantry.rpc", logging.INFO, __file__, 1, "rpc", None, None)
    record.__dict__.update({"method": "/bench.Svc/Unary", "code": "OK", "duration_ms": 0.1, "peer": "ipv4:x",
                            "request_id": "r"})
    span = tracing.start_rpc("/bench.Svc/Unary", GatewayContext((), "")) if tracing.enabled else None
    token = span.attach() if span is not None else None  # on: the line carries a trace id
    started = time.perf_counter()
    for _ in range(n):
        formatter.format(record)
    elapsed = (time.perf_counter() - started) / n
    if span is not None:
        span.detach(token)
    return elapsed


async def measure(n: int, exporter: InMemorySpanExporter) -> dict[str, float]:
    """One run of every row with tracing as it is now."""
    rows = {}
    for name, run in (("rpc unary", lambda: time_unary(n, ())), ("rpc unary+parent", lambda: time_unary(n, PARENT)),
                      ("rpc stream x10", lambda: time_stream(n // 10)), ("rest request", lambda: time_rest(n))):
        rows[name] = await run()
        exporter.clear()  # spans kept alive would make each later collection walk them all
    rows["log line"] = time_log(n)
    return rows


REST_APPS: dict[bool, object] = {}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    logging.getLogger("gantry.rpc").setLevel(logging.WARNING)
    gc.set_threshold(*GC_THRESHOLDS)  # as `gantry serve`
    exporter = InMemorySpanExporter()
    REST_APPS[False] = tracing.asgi(asgi_app)  # off: the app itself
    tracing.configure(exporter=exporter)
    REST_APPS[True] = tracing.asgi(asgi_app)
    best: dict[bool, dict[str, float]] = {False: {}, True: {}}
    for _ in range(args.repeat):  # off and on alternate, so a busy machine weighs on both alike
        for on in (False, True):
            tracing.enabled = on
            for name, seconds in (await measure(args.n, exporter)).items():
                best[on][name] = min(best[on].get(name, seconds), seconds)
    print("| call | off µs | on µs | added µs |")
    print("| --- | --- | --- | --- |")
    for name, off in best[False].items():
        on = best[True][name]
        print(f"| {name} | {off * 1e6:.1f} | {on * 1e6:.1f} | {(on - off) * 1e6:+.1f} |")


if __name__ == "__main__":
    uvloop.run(main())
