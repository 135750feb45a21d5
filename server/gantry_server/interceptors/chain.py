"""Bind the interceptor chain to each RPC handler once, at registration.

Interceptors keep grpc-interceptor's `intercept(method, request, context, method_name)` signature, but the
chain is applied once per method instead of through `grpc.aio.server(interceptors=...)`, which rebuilds a
method handler on every call (measured: -13% unary throughput vs. -4% when bound once). The REST gateway
calls the same bound handlers in-process, so both faces run identical cross-cutting code.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from ..errors import InvalidArgument


def bind(chain: Sequence, handler: Callable, method_name: str, *, streaming: bool) -> Callable:
    """Wrap `handler(request, context)` so `chain[0]` is outermost; `method_name` is `/pkg.Service/Method`.

    A request that could not be decoded (`Malformed`, from `safe_registration`) is refused right inside the
    outermost interceptor (observability: its log line and metrics), before authentication reads it.
    """
    bound = handler
    for interceptor in reversed(chain[1:]):
        bound = _wrap(interceptor, bound, method_name, streaming)
    bound = _refuse_malformed(bound, streaming)
    if chain:
        bound = _wrap(chain[0], bound, method_name, streaming)
    return bound


class Malformed:
    """Stands for a request whose bytes are not a valid message of the method's request type."""

    __slots__ = ("type_name", "error")

    def __init__(self, type_name: str, error: BaseException) -> None:
        self.type_name = type_name
        self.error = error

    def invalid_argument(self) -> InvalidArgument:
        detail = str(self.error).strip().splitlines()[0][:200] if str(self.error).strip() else "cannot be decoded"
        return InvalidArgument(
            f"request body is not a valid {self.type_name} (protobuf wire format, UTF-8 in string fields and "
            f"nesting depth are checked): {detail}", reason="MALFORMED_REQUEST")


def _refuse_malformed(inner: Callable, streaming: bool) -> Callable:
    if streaming:
        async def stream_handler(request, context):
            if isinstance(request, Malformed):
                raise request.invalid_argument()
            async for item in inner(request, context):
                yield item

        return stream_handler

    async def unary_handler(request, context):
        if isinstance(request, Malformed):
            raise request.invalid_argument()
        return await inner(request, context)

    return unary_handler


def _safe_deserializer(deserialize: Callable, type_name: str) -> Callable:
    def decode(data: bytes):
        try:
            return deserialize(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError, RecursionError, UnicodeDecodeError: the caller's bytes
            return Malformed(type_name, exc)

    return decode


class _SafeRegistration:
    """A stand-in for the server handed to a generated `add_*Servicer_to_server`: each method's request
    deserializer answers `Malformed` instead of raising, so grpc does not answer UNKNOWN with the exception's
    class name and log a traceback; the bound handler then answers INVALID_ARGUMENT."""

    def __init__(self, server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        """Registered below, from the same method table, with the safe deserializers."""

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict) -> None:
        safe = {}
        for name, handler in method_handlers.items():
            deserialize = handler.request_deserializer
            if deserialize is not None:
                type_name = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
                type_name = type_name.full_name if type_name is not None else "request message"
                handler = handler._replace(request_deserializer=_safe_deserializer(deserialize, type_name))
            safe[name] = handler
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, safe),))
        self._server.add_registered_method_handlers(service_name, safe)


def safe_registration(server):
    """Wrap `server` for `add_*Servicer_to_server` (app.py) so malformed requests are INVALID_ARGUMENT."""
    return _SafeRegistration(server)


def _wrap(interceptor, inner: Callable, method_name: str, streaming: bool) -> Callable:
    if streaming:
        async def stream_handler(request, context):
            result = await interceptor.intercept(inner, request, context, method_name)
            async for item in result:
                yield item

        return stream_handler

    async def unary_handler(request, context):
        return await interceptor.intercept(inner, request, context, method_name)

    return unary_handler


def instrument(servicer: object, service: ServiceDescriptor, chain: Sequence) -> object:
    """Shadow each RPC method of `servicer` (on the instance) with its chain-bound version."""
    for method in service.methods:
        handler = getattr(servicer, method.name)
        if method.client_streaming:  # no client-streaming RPCs yet; keep them unwrapped rather than wrong
            continue
        setattr(servicer, method.name, bind(chain, handler, f"/{service.full_name}/{method.name}",
                                            streaming=method.server_streaming))
    return servicer
