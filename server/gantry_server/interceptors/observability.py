"""Request id, one structured log line per RPC, Prometheus RPC metrics and error mapping, in one pass.

Order inside the pass: request id -> handler -> map errors to rich status -> metrics and log line, so the
metrics and the log see the final status code of every call.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from typing import Any, Callable

import grpc
from grpc import aio
from grpc_interceptor import AsyncServerInterceptor
from grpc_status import rpc_status
from prometheus_client import Counter, Histogram

from .. import tracing
from ..errors import GantryError, internal_status, to_rpc_status, unavailable_for
from ..logs import request_id_var

log = logging.getLogger("gantry.rpc")

RPC_HANDLED = Counter(
    "grpc_server_handled_total", "RPCs completed on the server, by final status code.",
    ["grpc_service", "grpc_method", "grpc_code"])
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds", "Time from RPC start to its final status, server side.",
    ["grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
from ..metadata_keys import REQUEST_ID as REQUEST_ID_KEY


def request_id_from(metadata) -> str:
    """Accept a caller's request id when it is safe to echo, else make one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID.match(value):
            return value
    return str(uuid.uuid4())


def _split(method_name: str) -> tuple[str, str]:
    _, service, method = method_name.split("/", 2) if method_name.count("/") >= 2 else ("", "", method_name)
    return service, method


class _Series:
    """Cache of labelled metric children: label lookup is a measurable cost at thousands of RPCs/s."""

    def __init__(self) -> None:
        self._handled: dict[tuple[str, str], Any] = {}
        self._seconds: dict[str, Any] = {}

    def observe(self, method_name: str, code: grpc.StatusCode, seconds: float) -> None:
        key = (method_name, code.name)
        handled = self._handled.get(key)
        if handled is None:
            service, method = _split(method_name)
            handled = self._handled[key] = RPC_HANDLED.labels(service, method, code.name)
        handled.inc()
        hist = self._seconds.get(method_name)
        if hist is None:
            service, method = _split(method_name)
            hist = self._seconds[method_name] = RPC_SECONDS.labels(service, method)
        hist.observe(seconds)


class ObservabilityInterceptor(AsyncServerInterceptor):
    def __init__(self) -> None:
        self._series = _Series()

    async def intercept(self, method: Callable, request: Any, context: aio.ServicerContext, method_name: str) -> Any:
        rid = request_id_from(context.invocation_metadata())
        token = request_id_var.set(rid)
        started = time.perf_counter()
        rpc = tracing.start_rpc(method_name, context) if tracing.enabled else None  # OpenTelemetry span, when on
        trace_token = rpc.attach() if rpc is not None else None
        try:
            result = method(request, context)
            if hasattr(result, "__aiter__"):
                stream = self._stream(result, context, method_name, rid, started, rpc)
                return stream if rpc is None else rpc.wrap(stream)
            try:
                response = await result
            except BaseException as exc:  # noqa: BLE001 - mapped, then re-raised as an abort
                await self._fail(exc, context, method_name, rid, started, rpc)
                raise  # unreachable: _fail always raises
            context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
            self._done(context, method_name, rid, started, _code_of(context), rpc)
            return response
        finally:
            request_id_var.reset(token)
            if rpc is not None:
                rpc.detach(trace_token)

    async def _stream(self, agen, context, method_name: str, rid: str, started: float, rpc=None):
        token = request_id_var.set(rid)
        try:
            try:
                async for item in agen:
                    yield item
            except BaseException as exc:  # noqa: BLE001
                await self._fail(exc, context, method_name, rid, started, rpc)
            context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
            self._done(context, method_name, rid, started, _code_of(context), rpc)
        finally:
            with contextlib.suppress(ValueError):  # closed by the asyncgen finaliser, in another context
                request_id_var.reset(token)

    async def _fail(self, exc: BaseException, context, method_name: str, rid: str, started: float,
                    rpc=None) -> None:
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):  # GeneratorExit: the stream was closed
            # The call may be gone already (a stream closed by the asyncgen finaliser after the client left):
            # its context must not be touched then (grpc's C core frees it; context.peer() would crash).
            self._done(None, method_name, rid, started, grpc.StatusCode.CANCELLED, rpc)
            raise exc
        if isinstance(exc, aio.AbortError):  # the handler aborted by itself
            self._done(context, method_name, rid, started, _code_of(context, grpc.StatusCode.UNKNOWN), rpc)
            raise exc
        if not isinstance(exc, GantryError) and (down := unavailable_for(exc)) is not None:
            log.warning("dependency unavailable in %s: %s", method_name, str(exc).strip().splitlines()[0][:200]
                        if str(exc).strip() else type(exc).__name__, extra={"method": method_name, "request_id": rid})
            exc = down
        if isinstance(exc, GantryError):
            status = rpc_status.to_status(to_rpc_status(exc, rid))
            code = exc.code
        else:
            log.error("unhandled exception in %s", method_name, exc_info=exc,
                      extra={"method": method_name, "request_id": rid})
            status = rpc_status.to_status(internal_status(rid))
            code = grpc.StatusCode.INTERNAL
            if rpc is not None:
                rpc.span.record_exception(exc)
        self._done(context, method_name, rid, started, code, rpc)
        await context.abort_with_status(_with_request_id(status, rid))

    def _done(self, context, method_name: str, rid: str, started: float, code: grpc.StatusCode, rpc=None) -> None:
        elapsed = time.perf_counter() - started
        self._series.observe(method_name, code, elapsed)
        if log.isEnabledFor(logging.INFO):
            peer = context.peer() if context is not None else ""
            log.info("rpc", extra={"method": method_name, "code": code.name, "duration_ms": round(elapsed * 1000, 3),
                                   "peer": peer, "request_id": rid})
        if rpc is not None:  # after the log line, which carries its trace id
            rpc.end(code)


def _code_of(context, default: grpc.StatusCode = grpc.StatusCode.OK) -> grpc.StatusCode:
    code = context.code()
    if code is None:
        return default
    if isinstance(code, grpc.StatusCode):
        return code
    for candidate in grpc.StatusCode:  # aio may report the raw integer
        if candidate.value[0] == code:
            return candidate
    return default


def _with_request_id(status: grpc.Status, rid: str) -> grpc.Status:
    class _Status(grpc.Status):
        pass

    out = _Status()
    out.code = status.code
    out.details = status.details
    out.trailing_metadata = tuple(status.trailing_metadata) + ((REQUEST_ID_KEY, rid),)
    return out
